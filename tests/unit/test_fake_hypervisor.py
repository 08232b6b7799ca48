"""FakeHypervisor: the state rules compute relies on, and the events it emits."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from vmops.errors import AlreadyExists, HypervisorError, InstanceNotFound, InvalidState
from vmops.hypervisor import FAKE_URI, open_hypervisor
from vmops.hypervisor.base import (
    Accel,
    DiskSpec,
    DomainSpec,
    Hypervisor,
    LifecycleEvent,
    NicSpec,
    PowerState,
)
from vmops.hypervisor.fake import FakeHypervisor

UUID = "0b5e6a3c-8f3e-4c4e-9d7a-1f2b3c4d5e6f"
SPEC = DomainSpec(
    uuid=UUID, name="vmops-web1", memory_mib=512, vcpus=1,
    disks=(DiskSpec(path=Path("/nonexistent/root.qcow2"), format="qcow2", target="vda"),),
    nics=(NicSpec(mac="52:54:00:12:34:56"),),
    console_socket=Path("/nonexistent/web1.sock"), metadata={"name": "web1"})


@pytest.fixture
def hv() -> FakeHypervisor:
    fake = FakeHypervisor()
    fake.connect()
    fake.define(SPEC)
    return fake


def _events(hv: FakeHypervisor) -> list[tuple[PowerState, str]]:
    seen: list[tuple[PowerState, str]] = []

    def record(event: LifecycleEvent) -> None:
        assert event.uuid == UUID
        seen.append((event.state, event.detail))

    hv.on_lifecycle_event(record)
    return seen


def _put_in(hv: FakeHypervisor, state: PowerState) -> None:
    if state is not PowerState.SHUTOFF:
        hv.start(UUID, paused=state is PowerState.PAUSED)
    if state is PowerState.SUSPENDED:
        hv.suspend(UUID)
    assert hv.info(UUID).state is state


OPERATIONS: dict[str, Callable[[FakeHypervisor], None]] = {
    "start": lambda hv: hv.start(UUID),
    "shutdown": lambda hv: hv.shutdown(UUID),
    "reboot_hard": lambda hv: hv.reboot_hard(UUID),
    "pause": lambda hv: hv.pause(UUID),
    "unpause": lambda hv: hv.unpause(UUID),
    "suspend": lambda hv: hv.suspend(UUID),
    "undefine": lambda hv: hv.undefine(UUID),
    "discard_saved_memory": lambda hv: hv.discard_saved_memory(UUID),
}

# What libvirt allows, written out here rather than read from ALLOWED_STATES,
# so that a change to the table is a change to this test too.
ALLOWED = {
    "start": {PowerState.SHUTOFF, PowerState.SUSPENDED},
    "shutdown": {PowerState.RUNNING},
    "reboot_hard": {PowerState.RUNNING, PowerState.PAUSED},
    "pause": {PowerState.RUNNING},
    "unpause": {PowerState.PAUSED},
    "suspend": {PowerState.RUNNING, PowerState.PAUSED},
    "undefine": {PowerState.SHUTOFF, PowerState.SUSPENDED},
    "discard_saved_memory": {PowerState.SHUTOFF, PowerState.SUSPENDED},
}
STATES = (PowerState.SHUTOFF, PowerState.RUNNING, PowerState.PAUSED, PowerState.SUSPENDED)


@pytest.mark.parametrize("state", STATES, ids=lambda s: s.value)
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_state_rules(hv: FakeHypervisor, operation: str, state: PowerState) -> None:
    _put_in(hv, state)
    if state in ALLOWED[operation]:
        OPERATIONS[operation](hv)
        return
    with pytest.raises(InvalidState) as refused:
        OPERATIONS[operation](hv)
    assert state.value in refused.value.message
    assert hv.info(UUID).state is state  # a refusal changes nothing


def test_power_off_is_tolerant_in_every_state(hv: FakeHypervisor) -> None:
    for state in STATES:
        _put_in(hv, state)
        hv.power_off(UUID)
        hv.power_off(UUID)
        assert hv.info(UUID).state in (PowerState.SHUTOFF, PowerState.SUSPENDED)


def test_power_off_keeps_saved_memory(hv: FakeHypervisor) -> None:
    _put_in(hv, PowerState.SUSPENDED)
    hv.power_off(UUID)
    assert hv.info(UUID).state is PowerState.SUSPENDED


def test_events_follow_libvirt(hv: FakeHypervisor) -> None:
    seen = _events(hv)
    hv.start(UUID, paused=True)
    hv.unpause(UUID)
    hv.pause(UUID)
    hv.suspend(UUID)
    hv.start(UUID)
    hv.reboot_hard(UUID)  # libvirt sends no lifecycle event for a reset
    hv.shutdown(UUID)
    assert seen == [
        (PowerState.RUNNING, "started"), (PowerState.PAUSED, "paused"),
        (PowerState.RUNNING, "unpaused"), (PowerState.PAUSED, "paused"),
        (PowerState.SUSPENDED, "suspended"), (PowerState.RUNNING, "restored"),
        (PowerState.SHUTOFF, "shutdown"),
    ]


def test_suspending_a_running_domain_pauses_it_first(hv: FakeHypervisor) -> None:
    hv.start(UUID)
    seen = _events(hv)
    hv.suspend(UUID)
    assert seen == [(PowerState.PAUSED, "paused"), (PowerState.SUSPENDED, "suspended")]


def test_suspend_then_start_restores_instead_of_booting(hv: FakeHypervisor) -> None:
    hv.start(UUID)
    hv.suspend(UUID)
    assert hv.info(UUID).state is PowerState.SUSPENDED and hv.qemu_pid(UUID) is None
    hv.start(UUID, paused=True)
    assert hv.domains[UUID].boots == 1
    assert hv.info(UUID).state is PowerState.PAUSED


def test_discarding_saved_memory_makes_the_next_start_a_boot(hv: FakeHypervisor) -> None:
    hv.start(UUID)
    hv.suspend(UUID)
    seen = _events(hv)
    hv.discard_saved_memory(UUID)
    hv.discard_saved_memory(UUID)  # none left: not an error
    assert hv.info(UUID).state is PowerState.SHUTOFF and seen == []  # libvirt sends none
    hv.start(UUID)
    assert hv.domains[UUID].boots == 2 and seen == [(PowerState.RUNNING, "started")]


def test_guest_ignoring_the_power_button_stays_up(hv: FakeHypervisor) -> None:
    hv.obey_power_button = False
    hv.start(UUID)
    hv.shutdown(UUID)
    hv.shutdown(UUID)
    assert hv.info(UUID).state is PowerState.RUNNING


def test_guest_side_stops(hv: FakeHypervisor) -> None:
    seen = _events(hv)
    hv.start(UUID)
    hv.guest_crash(UUID)
    hv.start(UUID)
    hv.guest_shutdown(UUID)
    assert seen[1] == (PowerState.CRASHED, "failed")
    assert seen[3] == (PowerState.SHUTOFF, "shutdown")
    with pytest.raises(InvalidState):
        hv.guest_shutdown(UUID)


def test_qemu_pid_only_while_running(hv: FakeHypervisor) -> None:
    assert hv.qemu_pid(UUID) is None
    hv.start(UUID)
    assert isinstance(hv.qemu_pid(UUID), int)
    hv.power_off(UUID)
    assert hv.qemu_pid(UUID) is None


def test_undefine_twice_and_missing_domain(hv: FakeHypervisor) -> None:
    hv.undefine(UUID)
    hv.undefine(UUID)
    assert not hv.exists(UUID) and hv.list_uuids() == []
    for call in (hv.info, hv.start, hv.pause, hv.power_off, hv.qemu_pid, hv.domain_xml):
        with pytest.raises(InstanceNotFound):
            call(UUID)


def test_foreign_domains_are_invisible_and_refused() -> None:
    hv = FakeHypervisor()
    other = "11111111-2222-4333-8444-555555555555"
    hv.add_foreign_domain(other, "users-vm")
    assert hv.list_uuids() == [] and not hv.exists(other)
    with pytest.raises(InstanceNotFound):
        hv.info(other)
    with pytest.raises(AlreadyExists):
        hv.define(dataclasses.replace(SPEC, uuid=other))
    with pytest.raises(AlreadyExists):
        hv.define(dataclasses.replace(SPEC, name="users-vm"))


def test_name_of_another_vmops_domain_is_refused(hv: FakeHypervisor) -> None:
    with pytest.raises(AlreadyExists):
        hv.define(dataclasses.replace(SPEC, uuid="22222222-2222-4333-8444-555555555555"))
    hv.define(dataclasses.replace(SPEC, vcpus=4))  # redefining its own UUID updates it
    assert hv.info(UUID).vcpus == 4


def test_fail_next_fails_once(hv: FakeHypervisor) -> None:
    hv.fail_next("start", HypervisorError(reason="injected"))
    with pytest.raises(HypervisorError):
        hv.start(UUID)
    assert hv.info(UUID).state is PowerState.SHUTOFF
    hv.start(UUID)


def test_every_call_is_recorded_once_and_can_fail(hv: FakeHypervisor) -> None:
    """The fault-injection tests rely on it: what ``calls`` lists is exactly
    what was called, and ``fail_next`` can fail each of those."""
    hv.calls.clear()
    calls: list[tuple[str, Callable[[], object]]] = [
        ("list_uuids", hv.list_uuids), ("exists", lambda: hv.exists(UUID)),
        ("info", lambda: hv.info(UUID)), ("domain_xml", lambda: hv.domain_xml(UUID)),
        ("start", lambda: hv.start(UUID)), ("qemu_pid", lambda: hv.qemu_pid(UUID)),
        ("pause", lambda: hv.pause(UUID)), ("unpause", lambda: hv.unpause(UUID)),
        ("reboot_hard", lambda: hv.reboot_hard(UUID)), ("bulk_stats", hv.bulk_stats),
        ("suspend", lambda: hv.suspend(UUID)),
        ("discard_saved_memory", lambda: hv.discard_saved_memory(UUID)),
        ("start", lambda: hv.start(UUID)), ("shutdown", lambda: hv.shutdown(UUID)),
        ("power_off", lambda: hv.power_off(UUID)), ("undefine", lambda: hv.undefine(UUID)),
        ("define", lambda: hv.define(SPEC)),
    ]
    for name, call in calls:
        hv.fail_next(name, HypervisorError(reason=name))
        with pytest.raises(HypervisorError, match=name):
            call()
        call()
    assert hv.calls == [name for name, _ in calls for _ in range(2)]


def test_info_and_stats(hv: FakeHypervisor) -> None:
    hv.define(dataclasses.replace(SPEC, memory_mib=1024, dynamic_memory_ratio=2.0))
    info = hv.info(UUID)
    assert (info.max_memory_kib, info.memory_kib) == (1024 * 1024, 512 * 1024)
    hv.start(UUID)
    assert hv.bulk_stats()[UUID]["state.state"] == 1
    assert "vmops" in hv.domain_xml(UUID)


def test_factory_gives_the_fake_for_its_uri() -> None:
    hv: Hypervisor = open_hypervisor(FAKE_URI, Accel.TCG)
    assert isinstance(hv, FakeHypervisor)
    assert all(c.ok for c in hv.capabilities_check())
