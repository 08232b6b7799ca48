"""QEMU killed under a paused guest (with the service running, and while it
is down) and under a suspending one (issue #15's fault suite; QEMU killed
under a running guest: test_crash.py; QEMU and the capture both killed
while the service is down: test_recovery.py's host reboot; the capture
killed under a running guest: test_console_watch.py).

Each time the same three things: the service keeps answering, the instance
ends in a state that says the truth (never in a task) and a later start
works, and nothing is left behind (no QEMU, no managed-save image; once
destroyed, no capture process or file).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.functional.conftest import Vmops, leftovers, service_pid, start_service, stop_service
from tests.functional.test_recovery import BOOT, _capture_pids, _kill, _qemu_pids

pytestmark = pytest.mark.extended

SUSPEND_TRIES = 4


def _spawn(vm: Vmops, name: str) -> str:
    vm.run("spawn", name, "--image", "tiny", "--flavor", "m1.tiny")
    vm.wait_console(name, BOOT)
    return str(vm.server(name)["id"])


def _save_images(vm: Vmops) -> list[Path]:
    """libvirt's managed-save images in the embedded root."""
    return sorted((vm.state_dir / "libvirt" / "lib" / "qemu" / "save").glob("*.save"))


def _settled(vm: Vmops, name: str, timeout: float = 120.0) -> dict[str, object]:
    """The server once no task holds it (the service answering all along)."""
    deadline = time.monotonic() + timeout
    while True:
        server = vm.server(name)
        if server["OS-EXT-STS:task_state"] is None:
            return server
        if time.monotonic() > deadline:  # a bound on the wait, not a speed check
            pytest.fail(f"{name} still in {server['OS-EXT-STS:task_state']}")
        time.sleep(0.1)


def _starts_again(vm: Vmops, name: str, boots: int) -> None:
    """A later start works: a new QEMU, a new boot on the same console."""
    vm.run("start", name)
    vm.wait_console(name, BOOT, count=boots)
    assert vm.wait_status(name, "ACTIVE")["vmops:power_state"] == "running"
    assert len(_qemu_pids(vm, name)) == 1


def _destroyed_leaves_nothing(vm: Vmops, name: str, instance_id: str) -> None:
    vm.run("destroy", name)
    assert _qemu_pids(vm, name) == [] and _capture_pids(vm, instance_id) == []
    assert not list((vm.state_dir / "run").glob(f"{instance_id}.sock*"))  # FIFOs, socket
    assert _save_images(vm) == []
    # The state dir's console process, watching nothing, stays only for
    # the service: the instance's watch goes within the destroy.
    deadline = time.monotonic() + 30
    while left := leftovers(vm.state_dir, service_pid(vm)):
        if time.monotonic() > deadline:  # a bound on the wait, not a speed check
            pytest.fail(f"left behind: {left}")
        time.sleep(0.2)


def test_qemu_killed_under_a_paused_guest(vmops: Vmops) -> None:
    instance_id = _spawn(vmops, "qkp1")
    vmops.run("pause", "qkp1")
    assert vmops.wait_status("qkp1", "PAUSED")["vmops:power_state"] == "paused"
    qemu = _qemu_pids(vmops, "qkp1")
    assert len(qemu) == 1, qemu
    _kill(qemu)

    server = vmops.wait_status("qkp1", "SHUTOFF")
    assert server["vmops:power_state"] == "crashed"
    assert "QEMU died" in str(server["vmops:fault"])
    assert _qemu_pids(vmops, "qkp1") == []
    _starts_again(vmops, "qkp1", boots=2)
    assert vmops.server("qkp1")["vmops:fault"] == ""
    _destroyed_leaves_nothing(vmops, "qkp1", instance_id)


def test_qemu_of_a_paused_guest_killed_while_the_service_is_down(vmops: Vmops) -> None:
    instance_id = _spawn(vmops, "qkp2")
    vmops.run("pause", "qkp2")
    vmops.wait_status("qkp2", "PAUSED")
    stop_service(vmops.service)  # type: ignore[attr-defined]
    qemu = _qemu_pids(vmops, "qkp2")
    assert len(qemu) == 1, qemu
    _kill(qemu)
    vmops.service = start_service(vmops.state_dir, vmops.env)  # type: ignore[attr-defined]

    server = vmops.wait_status("qkp2", "SHUTOFF")
    assert server["vmops:power_state"] in ("shutoff", "crashed")
    _starts_again(vmops, "qkp2", boots=2)
    _destroyed_leaves_nothing(vmops, "qkp2", instance_id)


def test_qemu_killed_while_its_guest_is_suspending(vmops: Vmops) -> None:
    """SIGKILL QEMU once libvirt has begun writing the managed-save image:
    the suspend fails, saying so; the instance is SHUTOFF (its memory is
    lost, so it is not SUSPENDED), no image of half a save stays, and a
    start boots it afresh. A save is quick, so a try whose save ended
    before the kill (SUSPENDED) is resumed and tried again."""
    instance_id = _spawn(vmops, "qks1")
    boots = 1
    for _attempt in range(SUSPEND_TRIES):
        qemu = _qemu_pids(vmops, "qks1")
        assert len(qemu) == 1, qemu
        vmops.client.post(f"/servers/{instance_id}/action", {"suspend": None})
        deadline = time.monotonic() + 60
        while not _save_images(vmops) and _qemu_pids(vmops, "qks1"):
            if time.monotonic() > deadline:  # a bound on the wait, not a speed check
                pytest.fail("the suspend never began writing its image")
            time.sleep(0.002)
        _kill(qemu)
        server = _settled(vmops, "qks1")
        if server["status"] != "SUSPENDED":
            break
        vmops.run("resume", "qks1")  # the save finished first: again
        vmops.wait_status("qks1", "ACTIVE")
    else:
        pytest.fail(f"every one of {SUSPEND_TRIES} saves finished before QEMU was killed")

    assert server["status"] == "SHUTOFF", server
    assert server["vmops:power_state"] in ("shutoff", "crashed")
    assert str(server["vmops:fault"]), "the failed suspend gives no reason"
    print(f"suspend try {_attempt + 1}: {server['vmops:fault']}")
    actions = vmops.client.get(f"/servers/{instance_id}/os-instance-actions")
    suspend = actions["instanceActions"][0]
    assert suspend["action"] == "suspend" and suspend["message"] == "Error", suspend
    assert _qemu_pids(vmops, "qks1") == []
    assert _save_images(vmops) == []  # no half-written memory image to "resume" from
    _starts_again(vmops, "qks1", boots=boots + 1)
    _destroyed_leaves_nothing(vmops, "qks1", instance_id)
