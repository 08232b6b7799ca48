"""Fault injection: resize, rescue and rebuild on a full state directory
(issue #15), each with free space from none to all it needs; the harness
(a small tmpfs, a real ``vmops serve`` on the fake hypervisor, real disk
files) is in test_faults_disk_full.py.

Each try: the service answers; the verb either works or fails with a fault
naming the full disk, leaving the instance as it was (its status, flavor,
root disk byte for byte) and no half-made directory (``resize-old``,
``rescue``, ``rebuild``); then the ballast goes, the verb's result is undone
(revert, unrescue) and at the end the verb works, with ``PRAGMA
integrity_check`` and ``qemu-img check`` passing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_faults_disk_full import (
    FullHarness,
    _gone,
    _not_corrupted,
    _spawn,
    full,
    sources,
)
from vmops.cli.client import ApiError
from vmops.store import RECORDS_RESERVE_BYTES

pytestmark = [pytest.mark.integration, pytest.mark.faults]

__all__ = ["full", "sources"]  # the fixtures

STEPS = 10
# A bound on the wait, not a speed check (a boot waits up to 30 s for the
# console capture to connect, and the rollback's boot as long again).
SETTLE_TIMEOUT_S = 150.0
# How a boot on a disk without a free page used to fail: the console process
# could not write capture.state (a temp file renamed) as it connected, so
# compute waited 30 s for a connection the file never showed, and the fault
# did not name the disk. It now fails at once saying so (CONSOLE_FULL;
# test_faults_disk_full_spawn.py makes that happen on purpose).
CAPTURE_STALLED = "did not connect to the guest's serial port"
CONSOLE_FULL = "cannot keep its files"
# What an instance's folder holds only while a verb is under way.
HALF_MADE = ("resize-old", "rescue", "rebuild")


@dataclass(frozen=True)
class Verb:
    """A verb's request body, the status it ends in when it works, and the
    request that brings the instance back (None: nothing to undo)."""

    body: dict[str, Any]
    done: str
    undo: dict[str, Any] | None


VERBS = {
    "resize": Verb({"resize": {"flavorRef": "m1.small"}}, "VERIFY_RESIZE",
                   {"revertResize": None}),
    "rescue": Verb({"rescue": {}}, "RESCUE", {"unrescue": None}),
    "rebuild": Verb({"rebuild": {"imageRef": "base"}}, "ACTIVE", None),
}


def _settled(h: FullHarness, instance_id: str) -> dict[str, Any]:
    """Wait until ``instance_id`` is out of its task; it must say the truth
    (the statuses of test_faults_disk_full, and those these verbs end in)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        server = h.server(instance_id)
        if server["OS-EXT-STS:task_state"] is None and server["status"] != "BUILD":
            break
        assert time.monotonic() < deadline, f"stuck: {server}; {h.log_tail()}"
        time.sleep(0.05)
    assert server["status"] in ("ACTIVE", "SHUTOFF", "ERROR", "VERIFY_RESIZE", "RESCUE"), \
        server
    if server["status"] == "ERROR":
        assert server["fault"]["message"], server
    return server


def _act(h: FullHarness, instance_id: str, body: dict[str, Any]) -> str | None:
    """Send the action; None if accepted, else the refusal (507 only)."""
    try:
        h.client.post(f"/servers/{instance_id}/action", body)
    except ApiError as exc:
        assert exc.status == 507 and "no space left" in str(exc).lower(), exc
        return "refused"
    return None


def _last_action(h: FullHarness, instance_id: str) -> dict[str, Any]:
    actions = h.client.get(f"/servers/{instance_id}/os-instance-actions")["instanceActions"]
    return dict(max(actions, key=lambda a: (a["start_time"], a["request_id"])))


def _root(h: FullHarness, instance_id: str) -> Path:
    disks = h.server(instance_id)["vmops:disks"]
    return Path(next(d["path"] for d in disks if d["role"] == "root"))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _half_made(h: FullHarness, instance_id: str) -> list[str]:
    folder = h.state / "instances" / instance_id
    return [name for name in HALF_MADE if (folder / name).exists()]


def _undo(h: FullHarness, instance_id: str, verb: Verb) -> None:
    if verb.undo is not None:
        assert _act(h, instance_id, verb.undo) is None
    server = _settled(h, instance_id)
    assert (server["status"], server["vmops:flavor"]["name"]) == ("ACTIVE", "m1.tiny"), \
        server


def _room_taken(h: FullHarness, instance_id: str, verb: Verb) -> int:
    """Bytes the verb takes here (at its peak no less than at its end)."""
    before = h.free_bytes()
    assert _act(h, instance_id, verb.body) is None
    assert _settled(h, instance_id)["status"] == verb.done, h.log_tail()
    used = before - h.free_bytes()
    _undo(h, instance_id, verb)
    return max(used, 64 * 1024)


def _try_with(h: FullHarness, instance_id: str, verb: Verb, leave: int) -> str:
    """Run the verb with ``leave`` bytes free; what happened: 'refused',
    'done' or 'failed' (each checked)."""
    root = _digest(_root(h, instance_id))
    h.fill(leave)
    refused = _act(h, instance_id, verb.body)
    h.answers()
    server = _settled(h, instance_id)
    off = False  # left off by a rollback that could not boot it on the full disk
    if refused is None and server["status"] == verb.done \
            and _last_action(h, instance_id)["message"] is None:
        outcome = "done"
    else:
        outcome = refused or "failed"
        fault = server["vmops:fault"]
        assert CAPTURE_STALLED not in fault, (leave, fault)
        # As it was: running, the old flavor, the same root disk; the reason
        # said. But if the disk was still full when the rollback booted the
        # old guest, its console's files could not be written either: then
        # it is left off, saying so, and started again below once there is room.
        off = CONSOLE_FULL in fault and server["status"] == "SHUTOFF"
        if CONSOLE_FULL in fault:
            assert "no space left on device" in fault.lower() and "capture.state" in fault
        assert (server["status"], server["vmops:flavor"]["name"]) == \
            ("SHUTOFF" if off else "ACTIVE", "m1.tiny"), (leave, server, h.log_tail())
        if refused is None:
            assert "no space left" in server["vmops:fault"].lower(), server["vmops:fault"]
            assert _last_action(h, instance_id)["message"] == "Error"
        assert _digest(_root(h, instance_id)) == root, "a failed verb changed the root disk"
    assert _half_made(h, instance_id) == [] or outcome == "done" and verb.undo, \
        (outcome, _half_made(h, instance_id))
    h.empty()
    if outcome == "done":
        _undo(h, instance_id, verb)
    elif outcome == "failed" and off:
        assert _act(h, instance_id, {"os-start": None}) is None
        assert _settled(h, instance_id)["status"] == "ACTIVE"
    assert _half_made(h, instance_id) == []
    _reserve_is_back(h, instance_id)
    return outcome


def _reserve_is_back(h: FullHarness, instance_id: str) -> None:
    """Once there is room, the first write makes the records' reserve again
    (a failure may have given it up), so the next try has it too."""
    h.client.post(f"/servers/{instance_id}/metadata", {"metadata": {"written": "yes"}})
    assert (h.state / "vmops.db.reserve").stat().st_size == RECORDS_RESERVE_BYTES


def _sweep(h: FullHarness, name: str, verb: Verb,
           check_after: Callable[[FullHarness, str], None] | None = None) -> None:
    instance_id = _spawn(h, "web1")
    assert instance_id is not None and _settled(h, instance_id)["status"] == "ACTIVE"
    needed = _room_taken(h, instance_id, verb)
    outcomes = {}
    for step in range(STEPS):
        leave = needed * 3 * step // (STEPS - 1)  # its peak is above what it keeps
        outcomes[leave] = _try_with(h, instance_id, verb, leave)
    assert "done" in outcomes.values(), outcomes
    assert set(outcomes.values()) - {"done"}, f"{name} never ran out of room: {outcomes}"
    assert _try_with(h, instance_id, verb, needed * 4) == "done"
    _not_corrupted(h)
    h.client.delete(f"/servers/{instance_id}")
    _gone(h, instance_id)


@pytest.mark.parametrize("name", sorted(VERBS))
def test_a_verb_on_a_full_disk(full: FullHarness, name: str) -> None:
    _sweep(full, name, VERBS[name])
