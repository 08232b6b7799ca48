"""The Tempest harness (scripts/tempest); docs/tempest.md."""
