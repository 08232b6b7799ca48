"""Fault injection: a spawn on a full state directory (issue #15), from no
room to all it needs; the harness and the other operations are in
test_faults_disk_full.py. Found: the ERROR record of a spawn that failed on
the full disk could not be written either, so the instance stayed
BUILD/spawning until the service restarted; the records' reserve
(``vmops.db.reserve``, vmops/store.py) fixes that."""

from __future__ import annotations

import pytest

from tests.integration.test_faults_disk_full import (
    FullHarness,
    _gone,
    _not_corrupted,
    _spawn,
    full,
    sources,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

__all__ = ["full", "sources"]  # the fixtures


# -- spawn ----------------------------------------------------------------------------------
def _room_a_spawn_takes(h: FullHarness) -> int:
    """Bytes one spawn (record, disks, config drive, console files) takes here."""
    before = h.free_bytes()
    instance_id = _spawn(h, "measure")
    assert instance_id is not None
    assert h.settled(instance_id)["status"] == "ACTIVE"
    used = before - h.free_bytes()
    h.client.delete(f"/servers/{instance_id}")
    _gone(h, instance_id)
    return used


def test_a_spawn_on_a_full_disk(full: FullHarness) -> None:
    """Spawn with less and less room, from none to all it needs: each one
    either works or ends ERROR with a reason and leaves nothing behind."""
    h = full
    needed = _room_a_spawn_takes(h)
    outcomes: dict[int, str] = {}
    for step in range(10):
        leave = needed * step // 9
        h.fill(leave)
        instance_id = _spawn(h, f"full{step}")
        h.answers()
        if instance_id is None:
            outcomes[leave] = "refused"
            continue
        server = h.settled(instance_id)
        outcomes[leave] = server["status"]
        if server["status"] == "ERROR":
            assert "no space left" in server["fault"]["message"].lower(), server["fault"]
            assert not (h.state / "instances" / instance_id).exists(), \
                "a failed spawn left its disks or config drive"
        h.empty()
        h.client.delete(f"/servers/{instance_id}")
        _gone(h, instance_id)
    assert "ACTIVE" in outcomes.values(), outcomes
    assert set(outcomes.values()) - {"ACTIVE"}, f"never ran out of room: {outcomes}"
    h.empty()
    instance_id = _spawn(h, "after")
    assert instance_id is not None and h.settled(instance_id)["status"] == "ACTIVE"
    _not_corrupted(h)
    h.client.delete(f"/servers/{instance_id}")
    _gone(h, instance_id)
