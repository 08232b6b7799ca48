"""A real ``vmops serve`` (fake hypervisor) prunes the records of servers
destroyed more than ``deleted_rows_max_age_days`` ago when it starts, and
keeps those of recent ones (vmops/compute/retention.py; the rules are unit
tested in tests/unit/test_retention.py)."""

from __future__ import annotations

import sqlite3

import pytest

from tests.integration.test_faults_service_killed import Harness
from tests.integration.test_faults_service_killed import harness as harness  # noqa: F401
from vmops.cli.client import ApiError

pytestmark = pytest.mark.integration

DAY = 86400.0


def _spawned_and_destroyed(h: Harness, name: str) -> str:
    instance_id = h.spawn(name)
    h.wait_for(instance_id, "ACTIVE")
    h.client.delete(f"/servers/{instance_id}")
    return instance_id


def _actions(h: Harness, instance_id: str) -> list[str] | None:
    """Its actions as Nova's API shows a deleted server's (2.21); None: 404."""
    client = h.client
    client.microversion = "2.21"
    try:
        body = client.get(f"/servers/{instance_id}/os-instance-actions")
    except ApiError as exc:
        assert exc.status == 404, exc
        return None
    return [a["action"] for a in body["instanceActions"]]


def test_the_service_prunes_old_destroyed_servers_at_start(harness: Harness) -> None:
    h = harness
    h.serve()
    old = _spawned_and_destroyed(h, "old")
    recent = _spawned_and_destroyed(h, "recent")
    assert _actions(h, old) == ["delete", "create"]
    h.stop()
    db = sqlite3.connect(h.state / "vmops.db")  # as if destroyed 91 days ago
    with db:
        db.execute("UPDATE instance_usage SET deleted_at = deleted_at - ? "
                   "WHERE instance_id = ?", (91 * DAY, old))
        db.execute("UPDATE instance_actions SET start_time = start_time - ? "
                   "WHERE instance_id = ?", (91 * DAY, old))
    db.close()

    h.serve()

    assert _actions(h, old) is None
    assert _actions(h, recent) == ["delete", "create"]
    h.stop()
    db = sqlite3.connect(h.state / "vmops.db")
    try:
        rows = db.execute("SELECT instance_id FROM instance_usage").fetchall()
        left = db.execute("SELECT COUNT(*) FROM instance_actions WHERE instance_id = ?",
                          (old,)).fetchone()[0]
    finally:
        db.close()
    assert rows == [(recent,)] and left == 0
    assert "pruned the records of servers destroyed more than 90 days ago: 2 instance " \
        "actions, 1 usage rows" in (h.state / "vmops.log").read_text()
