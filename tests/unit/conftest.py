"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_api import Api, start_api


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The API of a service on the fake hypervisor, over TCP."""
    service, servers = start_api(tmp_path)
    yield service
    for srv in servers:
        srv.shutdown()
        srv.server_close()
    service.store.close()
