"""The soak: many spawn/stop/start/destroy cycles through a real ``vmops
serve`` and its HTTP API, measuring what the service holds (open file
descriptors, threads, resident memory) and what the state directory holds
(files), to show that nothing grows (issue #15). ``scripts/soak`` runs it;
``tests/integration/test_soak.py`` runs a short version in CI."""
