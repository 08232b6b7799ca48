"""Failure paths of compute: a step that fails, then a clean-up step that
fails too. Whatever fails, the record ends out of its task state (ERROR with
the first failure's reason), the instance is released, and every other
clean-up step still runs.

The fake hypervisor fails at chosen calls (``fail_next``); the disks are
real (qemu-img), hence this tier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_compute import _spawn
from tests.integration.test_compute import env as env  # noqa: F401 - the fixture, shared
from vmops import serial_pipes
from vmops.compute import states
from vmops.compute.manager import Compute, SpawnRequest
from vmops.console.fake import FakeConsole
from vmops.errors import HypervisorError
from vmops.hypervisor.fake import FakeHypervisor
from vmops.service import build

pytestmark = pytest.mark.integration


class FailingCapture(FakeConsole):
    """A capture whose stop fails once (a capture process that survives SIGKILL)."""

    def __init__(self) -> None:
        super().__init__()
        self.stop_failures = 1

    def stop_capture(self, log_dir: Path) -> None:
        if self.stop_failures:
            self.stop_failures -= 1
            raise HypervisorError(reason="capture survived SIGKILL")
        super().stop_capture(log_dir)


def _released(c: Compute, instance_id: str) -> bool:
    return c.tasks.current(instance_id) is None


def test_spawn_rollback_goes_on_past_a_failed_power_off(env: dict[str, Any]) -> None:
    hv: FakeHypervisor = env["hv"]
    c: Compute = env["compute"]
    hv.fail_next("start", HypervisorError(reason="no QEMU"))
    hv.fail_next("power_off", HypervisorError(reason="power off refused"))
    inst = _spawn(env)
    assert (inst.vm_state, inst.task_state) == (states.ERROR, None)
    assert inst.fault.startswith("hypervisor error: no QEMU")  # the first failure's reason
    assert "power off refused" in inst.fault  # and what the rollback left
    assert _released(c, inst.id)
    # The steps after the failed one still ran.
    assert env["capture"].running == set()
    assert not c.instance_dir(inst).exists()
    # What is left (the domain) goes with the next destroy.
    c.destroy(inst.id)
    assert hv.list_uuids() == [] and env["store"].instances() == []


def test_spawn_rollback_goes_on_past_a_failed_capture_stop(env: dict[str, Any]) -> None:
    capture = FailingCapture()
    c = build(env["settings"], hypervisor=env["hv"], store=env["store"], capture=capture).compute
    env["hv"].fail_next("define", HypervisorError(reason="boom"))
    inst = c.create(SpawnRequest("web1", "base", "m1.tiny"), background=False)
    assert inst.vm_state == states.ERROR and inst.fault.startswith("hypervisor error: boom")
    assert "capture survived SIGKILL" in inst.fault
    assert not c.instance_dir(inst).exists()
    assert _released(c, inst.id)


def test_spawn_failure_whose_rollback_cannot_even_look_up_the_domain(
        env: dict[str, Any]) -> None:
    hv: FakeHypervisor = env["hv"]
    hv.fail_next("start", RuntimeError("QEMU vanished"))
    hv.fail_next("exists", RuntimeError("connection lost"))
    inst = _spawn(env)
    assert inst.vm_state == states.ERROR and inst.task_state is None
    assert inst.fault.startswith("RuntimeError: QEMU vanished")
    assert not env["compute"].instance_dir(inst).exists()


def test_action_whose_state_cannot_be_read_after_it_still_ends(env: dict[str, Any]) -> None:
    hv: FakeHypervisor = env["hv"]
    c: Compute = env["compute"]
    inst = _spawn(env)
    # The first info() is pause's state check; the second is its outcome.
    hv.fail_next("info", HypervisorError(reason="monitor timed out"), skip=1)
    after = c.pause("web1")
    assert (after.vm_state, after.task_state) == (states.ERROR, None)
    assert "monitor timed out" in after.fault
    assert _released(c, inst.id)
    # The next action reads the state again and goes ahead.
    assert c.unpause("web1").vm_state == states.ACTIVE


def test_failed_action_keeps_its_own_reason_when_the_state_read_fails(
        env: dict[str, Any]) -> None:
    hv: FakeHypervisor = env["hv"]
    c: Compute = env["compute"]
    inst = _spawn(env)
    hv.fail_next("pause", HypervisorError(reason="pause refused"))
    hv.fail_next("info", HypervisorError(reason="monitor timed out"), skip=1)
    with pytest.raises(HypervisorError, match="pause refused"):
        c.pause("web1")
    record = c.instance("web1")
    assert (record.vm_state, record.task_state) == (states.ERROR, None)
    assert record.fault == "hypervisor error: pause refused"
    assert _released(c, inst.id)


def test_background_action_whose_work_and_state_read_fail_is_released(
        env: dict[str, Any]) -> None:
    hv: FakeHypervisor = env["hv"]
    c: Compute = env["compute"]
    inst = _spawn(env)
    c.background_actions = True
    hv.fail_next("suspend", RuntimeError("save failed"))
    hv.fail_next("info", RuntimeError("gone"), skip=1)
    c.suspend("web1")
    assert c.wait_idle(inst.id, timeout=60)
    record = c.instance("web1")
    assert (record.vm_state, record.task_state) == (states.ERROR, None)
    assert record.fault == "RuntimeError: save failed"


def test_destroy_that_cannot_power_off_keeps_the_record_in_error(env: dict[str, Any]) -> None:
    hv: FakeHypervisor = env["hv"]
    c: Compute = env["compute"]
    inst = _spawn(env)
    hv.fail_next("power_off", HypervisorError(reason="power off refused"))
    with pytest.raises(HypervisorError, match="power off refused"):
        c.destroy("web1")
    record = c.instance("web1")  # kept: its domain still exists
    assert (record.vm_state, record.task_state) == (states.ERROR, None)
    assert "power off refused" in record.fault
    assert _released(c, inst.id)
    assert not c.instance_dir(inst).exists()  # the other steps ran
    c.destroy("web1")  # a second try finishes the job
    assert hv.list_uuids() == [] and env["store"].instances() == []


def test_a_destroy_that_leaves_the_domain_keeps_its_serial_port(env: dict[str, Any]) -> None:
    # QEMU's pipe chardev opens the FIFOs the define made (serial_pipes.py)
    # and fails to start without them; nothing but a define makes them
    # again. A destroy that could not remove the domain keeps them, so the
    # domain still starts (a hard reboot from ERROR) and a capture still
    # connects to a QEMU that survived; the next destroy removes them.
    hv: FakeHypervisor = env["hv"]
    c: Compute = env["compute"]
    inst = _spawn(env)
    port = c.console_socket(inst)
    serial_pipes.make(port)  # as the libvirt driver's define does
    hv.fail_next("undefine", HypervisorError(reason="undefine refused"))
    with pytest.raises(HypervisorError, match="undefine refused"):
        c.destroy("web1")
    assert c.instance("web1").vm_state == states.ERROR
    assert serial_pipes.exist(port)
    c.destroy("web1")
    assert env["store"].instances() == [] and hv.list_uuids() == []
    assert list(port.parent.glob(f"{port.name}*")) == []


def test_recovery_of_a_spawn_whose_rollback_fails(env: dict[str, Any]) -> None:
    hv: FakeHypervisor = env["hv"]
    inst = _spawn(env)
    env["store"].update_instance(inst, vm_state=states.BUILDING, task_state=states.SPAWNING)
    hv.fail_next("power_off", HypervisorError(reason="power off refused"))
    env["compute"].recover()
    record = env["store"].instance("web1")
    assert (record.vm_state, record.task_state) == (states.ERROR, None)
    assert record.fault.startswith("spawn was interrupted")
    assert "power off refused" in record.fault
    assert not env["compute"].instance_dir(inst).exists()


def test_recovery_of_a_destroy_whose_undefine_fails(env: dict[str, Any]) -> None:
    hv: FakeHypervisor = env["hv"]
    inst = _spawn(env)
    env["store"].update_instance(inst, task_state=states.DELETING)
    hv.fail_next("undefine", HypervisorError(reason="undefine refused"))
    env["compute"].recover()
    record = env["store"].instance("web1")
    assert (record.vm_state, record.task_state) == (states.ERROR, None)
    assert "undefine refused" in record.fault
    env["compute"].destroy("web1")
    assert env["store"].instances() == [] and hv.list_uuids() == []


def test_qemu_killed_is_a_crash_with_a_fault_not_a_clean_stop(env: dict[str, Any]) -> None:
    inst = _spawn(env)
    env["hv"].guest_crash(inst.id)
    record = env["store"].instance("web1")
    assert (record.vm_state, record.power_state) == (states.STOPPED, "crashed")
    assert "QEMU died" in record.fault
    assert record.desired_running is True  # it was meant to run
    # A restart without resume_guests_state_on_host_boot leaves it crashed.
    env["compute"].recover()
    record = env["store"].instance("web1")
    assert (record.vm_state, record.power_state) == (states.STOPPED, "crashed")
    # Started by hand, it runs and the fault is gone.
    started = env["compute"].start("web1")
    assert (started.vm_state, started.fault) == (states.ACTIVE, "")


def test_qemu_killed_during_a_suspend_is_a_crash(env: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU dies while the managed save runs (tests/functional/test_qemu_killed.py
    does it to a real one): the suspend fails with libvirt's error, and the
    instance ends stopped and crashed, as the lifecycle event said, not just
    shut off (libvirt's state after the kill)."""
    from vmops.errors import HypervisorError

    _spawn(env)
    hv: FakeHypervisor = env["hv"]

    def killed_while_saving(uuid: str) -> None:
        hv.guest_crash(uuid)
        raise HypervisorError(reason="internal error: End of file from qemu monitor")

    monkeypatch.setattr(hv, "suspend", killed_while_saving)
    with pytest.raises(HypervisorError):
        env["compute"].suspend("web1")
    record = env["store"].instance("web1")
    assert (record.vm_state, record.task_state, record.power_state) == \
        (states.STOPPED, None, "crashed")
    assert "End of file from qemu monitor" in record.fault
    assert env["compute"].start("web1").vm_state == states.ACTIVE


def test_crashed_guest_meant_to_run_is_restarted_when_asked(env: dict[str, Any]) -> None:
    from vmops import config

    inst = _spawn(env)
    hv: FakeHypervisor = env["hv"]
    hv.guest_crash(inst.id)
    settings = config.load(env["settings"].state_dir, env={},
                           resume_guests_state_on_host_boot=True)
    c = build(settings, hypervisor=hv, store=env["store"], capture=env["capture"]).compute
    c.recover()
    assert c.instance("web1").vm_state == states.ACTIVE
    assert hv.domains[inst.id].boots == 2


def test_guest_poweroff_is_still_a_clean_stop(env: dict[str, Any]) -> None:
    inst = _spawn(env)
    env["hv"].guest_shutdown(inst.id)
    record = env["store"].instance("web1")
    assert (record.power_state, record.fault, record.desired_running) == ("shutoff", "", False)


def test_spawn_without_a_drive_still_refuses_unprintable_metadata(env: dict[str, Any]) -> None:
    from vmops.errors import ConfigDriveInvalid

    with pytest.raises(ConfigDriveInvalid, match="bidirectional override"):
        _spawn(env, properties={"role": "web\u202e"})
    assert env["store"].instances() == []
