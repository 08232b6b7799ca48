"""Fault injection: a spawn on a full state directory (issue #15), from no
room to all it needs; the harness and the other operations are in
test_faults_disk_full.py. Found: the ERROR record of a spawn that failed on
the full disk could not be written either, so the instance stayed
BUILD/spawning until the service restarted; the records' reserve
(``vmops.db.reserve``, vmops/store.py) fixes that."""

from __future__ import annotations

import contextlib
import time

import pytest

from tests.integration.test_faults_disk_full import (
    FullHarness,
    _gone,
    _not_corrupted,
    _spawn,
    full,
    sources,
)
from tools.soak.run import ConsoleSocket

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


def test_a_disk_that_fills_before_the_boot_fails_the_spawn_naming_it(
        full: FullHarness) -> None:
    """The disk fills after the console capture started and the guest's
    disks were made, as its QEMU starts (paused; this test serves QEMU's
    serial socket only then): the console process cannot write the
    instance's capture.state (a temp file renamed) as it connects, and
    tells the service, so the spawn fails at once with a fault naming the
    full disk (not after waiting 30 s for a connection its state file would
    never show), the instance ends ERROR with that reason, and nothing is
    left behind: no instance directory, no watch, no process."""
    h = full
    server = h.client.post("/servers", {"server": {
        "name": "late", "imageRef": "base", "flavorRef": "m1.tiny"}})["server"]
    instance_id = str(server["id"])
    deadline = time.monotonic() + 60.0
    while h.server(instance_id)["vmops:power_state"] != "paused":  # waits for the capture
        assert time.monotonic() < deadline, (h.server(instance_id), h.log_tail())
        time.sleep(0.01)
    assert (h.state / "instances" / instance_id / "capture.state").exists()
    h.fill(0)
    with contextlib.suppress(OSError):  # the socket needs no data blocks, only an inode
        h.consoles.append(ConsoleSocket(h.state / "run" / f"{instance_id}.sock"))
    server = h.settled(instance_id)
    h.answers()
    fault = server["fault"]["message"] if server["status"] == "ERROR" else ""
    assert "no space left on device" in fault.lower(), (server, h.log_tail())
    assert "capture.state" in fault and "did not connect" not in fault, fault
    assert not (h.state / "instances" / instance_id).exists(), \
        "a failed spawn left its disks or console files"
    assert not (h.state / "run" / "console.watch").exists()  # it watches nothing
    h.empty()
    h.client.delete(f"/servers/{instance_id}")
    _gone(h, instance_id)
    assert list((h.state / "run").glob("*.tmp")) == []
