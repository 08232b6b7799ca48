"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_api import Api, start_api, stop_api
from vmops import console


@pytest.fixture(autouse=True)
def _let_go_of_console_processes() -> Iterator[None]:
    """A test that ran the real console capture in-process (the default
    of ``service.build``, as the ``api`` fixture does) lets go of the
    console processes it used as it ends, as the service does when it
    stops: each stays for its user's life otherwise (docs/console.md), so
    for the rest of this run. One that still watches an instance stays."""
    yield
    console.release_holds()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The API of a service on the fake hypervisor, over TCP."""
    service, servers = start_api(tmp_path)
    yield service
    stop_api(service, servers)
