"""A suspended instance's saved memory (libvirt's managed save image) and
the verbs that meet it, on the fake hypervisor with real disks and records.

Resume restores the saved memory. A hard reboot, as Nova's, discards it and
boots the guest afresh (Nova allows a hard reboot from SUSPENDED; its
libvirt driver removes the managed save with the definition). The verbs
that boot a guest from disks they (re)make, rebuild and rescue, and start
and resize refuse a suspended instance, as Nova does; an instance left in
ERROR by a suspend whose record did not settle is SUSPENDED again at the
next verb (the record is refreshed from the hypervisor first), so none of
them ever meets the image. What a real guest sees: tests/functional/
test_lifecycle.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vmops import config
from vmops.compute import states
from vmops.compute.actions import ERROR, SUCCESS
from vmops.compute.manager import Compute, SpawnRequest
from vmops.console.fake import FakeConsole
from vmops.errors import HypervisorError, InvalidState
from vmops.hypervisor.base import PowerState
from vmops.hypervisor.fake import FakeHypervisor
from vmops.service import build
from vmops.store import Instance

pytestmark = pytest.mark.integration


@pytest.fixture
def hv() -> FakeHypervisor:
    return FakeHypervisor()


@pytest.fixture
def compute(tmp_path: Path, hv: FakeHypervisor) -> Compute:
    settings = config.load(tmp_path / "state", env={}, shutdown_retry_interval=1)
    engine = build(settings, hypervisor=hv, capture=FakeConsole(), host_problems=lambda: [])
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    engine.catalog.import_image("base", str(base), background=False)
    return engine.compute


def _suspended(compute: Compute) -> Instance:
    inst = compute.create(SpawnRequest(name="web1", image="base", flavor="m1.tiny"),
                          background=False)
    assert compute.suspend(inst.id).vm_state == states.SUSPENDED
    return inst


def _last_action(compute: Compute, inst: Instance) -> tuple[str, str | None]:
    action = compute.actions.actions(inst.id)[0]
    return action.action, action.result


def test_resume_restores_the_saved_memory(compute: Compute, hv: FakeHypervisor) -> None:
    inst = _suspended(compute)
    resumed = compute.resume(inst.id)
    assert (resumed.vm_state, resumed.power_state) == (states.ACTIVE, "running")
    assert hv.domains[inst.id].boots == 1  # restored, not booted again


def test_hard_reboot_of_a_suspended_instance_discards_its_memory_and_boots_afresh(
        compute: Compute, hv: FakeHypervisor) -> None:
    inst = _suspended(compute)
    hv.calls.clear()
    rebooted = compute.reboot(inst.id, hard=True)
    assert (rebooted.vm_state, rebooted.task_state, rebooted.power_state, rebooted.fault) \
        == (states.ACTIVE, None, "running", "")
    domain = hv.domains[inst.id]
    assert (domain.boots, domain.saved_memory) == (2, False)
    assert hv.calls.index("discard_saved_memory") < hv.calls.index("start")
    assert _last_action(compute, inst) == ("reboot", SUCCESS)


def test_a_suspend_whose_record_did_not_settle_is_suspended_again_then_rebooted_afresh(
        compute: Compute, hv: FakeHypervisor) -> None:
    """The suspend saved the memory, but reading the domain's state after it
    failed: the record says ERROR. The next verb sees SUSPENDED; a hard
    reboot boots afresh rather than restoring the memory."""
    inst = compute.create(SpawnRequest(name="web1", image="base", flavor="m1.tiny"),
                          background=False)
    hv.fail_next("info", HypervisorError(reason="injected"), skip=1)  # _begin's passes
    errored = compute.suspend(inst.id)
    assert (errored.vm_state, hv.domains[inst.id].saved_memory) == (states.ERROR, True)
    rebooted = compute.reboot(inst.id, hard=True)
    assert (rebooted.vm_state, rebooted.power_state, rebooted.fault) == (
        states.ACTIVE, "running", "")
    assert (hv.domains[inst.id].boots, hv.domains[inst.id].saved_memory) == (2, False)


@pytest.mark.parametrize("verb", ["start", "rebuild", "rescue", "resize"])
def test_verbs_that_boot_from_disk_refuse_a_suspended_instance(
        compute: Compute, hv: FakeHypervisor, verb: str) -> None:
    inst = _suspended(compute)
    act = {"start": lambda: compute.start(inst.id),
           "rebuild": lambda: compute.rebuild(inst.id, "base"),
           "rescue": lambda: compute.rescue(inst.id),
           "resize": lambda: compute.resize(inst.id, "m1.small")}[verb]
    with pytest.raises(InvalidState, match="while it is suspended"):
        act()
    assert compute.instance(inst.id).vm_state == states.SUSPENDED
    assert hv.domains[inst.id].saved_memory  # kept for resume


def test_a_hard_reboot_that_fails_after_the_discard_says_the_memory_is_gone(
        compute: Compute, hv: FakeHypervisor) -> None:
    """The saved memory is discarded first; if the boot then fails the
    instance is what the hypervisor says, stopped (not suspended), with
    the fault, and a start boots it."""
    inst = _suspended(compute)
    hv.fail_next("start", HypervisorError(reason="injected start failure"))
    with pytest.raises(HypervisorError):
        compute.reboot(inst.id, hard=True)
    failed = compute.instance(inst.id)
    assert (failed.vm_state, failed.power_state) == (states.STOPPED, "shutoff")
    assert "injected start failure" in failed.fault
    assert hv.info(inst.id).state is PowerState.SHUTOFF
    assert _last_action(compute, inst) == ("reboot", ERROR)
    assert compute.start(inst.id).vm_state == states.ACTIVE
    assert hv.domains[inst.id].boots == 2


def test_a_failed_discard_leaves_the_instance_suspended(compute: Compute,
                                                        hv: FakeHypervisor) -> None:
    inst = _suspended(compute)
    hv.fail_next("discard_saved_memory", HypervisorError(reason="injected"))
    with pytest.raises(HypervisorError):
        compute.reboot(inst.id, hard=True)
    kept = compute.instance(inst.id)
    assert (kept.vm_state, kept.task_state, kept.power_state) == (
        states.SUSPENDED, None, "suspended")
    assert hv.domains[inst.id].saved_memory
    assert compute.resume(inst.id).vm_state == states.ACTIVE
    assert hv.domains[inst.id].boots == 1


def _console_fails(compute: Compute, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_connection(log_dir: Path, after_generation: int, timeout: float) -> int:
        raise HypervisorError(reason="injected: the capture did not connect")
    monkeypatch.setattr(compute.console, "wait_connected", no_connection)


def test_a_resume_whose_capture_does_not_connect_saves_the_memory_again(
        compute: Compute, hv: FakeHypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU has restored the saved memory (paused) when the capture fails to
    connect: it is saved again rather than powered off, so the instance
    stays suspended with the fault and the next resume restores it."""
    inst = _suspended(compute)
    _console_fails(compute, monkeypatch)
    with pytest.raises(HypervisorError, match="did not connect"):
        compute.resume(inst.id)
    kept = compute.instance(inst.id)
    assert (kept.vm_state, kept.task_state, kept.power_state) == (
        states.SUSPENDED, None, "suspended")
    assert "injected: the capture did not connect" in kept.fault
    assert hv.domains[inst.id].saved_memory
    assert _last_action(compute, inst) == ("resume", ERROR)
    monkeypatch.undo()
    resumed = compute.resume(inst.id)
    assert (resumed.vm_state, resumed.power_state, resumed.fault) == (
        states.ACTIVE, "running", "")
    assert hv.domains[inst.id].boots == 1  # the first boot's memory, restored


def test_a_resume_that_cannot_save_the_memory_again_powers_off(
        compute: Compute, hv: FakeHypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    inst = _suspended(compute)
    _console_fails(compute, monkeypatch)
    hv.fail_next("suspend", HypervisorError(reason="injected save failure"))
    with pytest.raises(HypervisorError, match="did not connect"):
        compute.resume(inst.id)
    stopped = compute.instance(inst.id)
    assert (stopped.vm_state, stopped.power_state) == (states.STOPPED, "shutoff")
    assert "injected: the capture did not connect" in stopped.fault
    assert not hv.domains[inst.id].saved_memory
