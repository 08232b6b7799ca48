"""One contract for the Hypervisor protocol, run on every implementation.

As Nova runs one driver suite on its fake and its libvirt driver, each test
here runs on ``hypervisor/fake.py`` and on the libvirt driver against
libvirt's in-process ``test:///default`` driver, so the fake that compute's
tests rely on cannot drift from the real driver. Only what both support is
here; what one alone does (the fake's guest hooks, libvirt's flag fallbacks,
unmarked domains made through the raw connection) stays in
tests/unit/test_fake_hypervisor.py and tests/integration/test_libvirt_driver.py.

Two known differences are stated, not hidden: a start that restores saved
memory is "restored" on QEMU and the fake but "started" on the test driver,
and suspending a running domain sends "paused" first on QEMU and the fake but
not on the test driver. The contract checks what compute relies on: the
state each event carries, and that the last one is the state info() reports.
"""

from __future__ import annotations

import dataclasses
import queue
import sys
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmops.errors import AlreadyExists, InstanceNotFound, InvalidState
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

pytestmark = pytest.mark.integration

EVENT_TIMEOUT_S = 5.0
LIBVIRT_TEST_URI = "test:///default"
# A domain made behind vmops' back, as each implementation can have one.
FOREIGN_XML = """<domain type='test'>
  <name>{name}</name><uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
</domain>"""


@dataclass
class Driver:
    hv: Hypervisor
    add_foreign: Callable[[str, str], None]  # (uuid, name): a domain vmops did not make
    foreign_still_defined: Callable[[str], bool]


def _fake_driver() -> Iterator[Driver]:
    fake = FakeHypervisor()
    fake.connect()
    yield Driver(fake, fake.add_foreign_domain, lambda uuid: uuid in fake.foreign)
    fake.close()


def _libvirt_driver() -> Iterator[Driver]:
    from vmops.hypervisor.libvirt.driver import LibvirtHypervisor

    libvirt_hv = LibvirtHypervisor(LIBVIRT_TEST_URI, Accel.TCG)
    libvirt_hv.connect()
    foreign: list[str] = []

    def add_foreign(uuid: str, name: str) -> None:
        libvirt_hv.conn.defineXML(FOREIGN_XML.format(name=name, uuid=uuid))
        foreign.append(uuid)

    def still_defined(uuid: str) -> bool:
        return bool(libvirt_hv.conn.lookupByUUIDString(uuid).isPersistent())

    yield Driver(libvirt_hv, add_foreign, still_defined)
    for uuid in foreign:
        dom = libvirt_hv.conn.lookupByUUIDString(uuid)
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    libvirt_hv.close()


@pytest.fixture(params=["fake", "libvirt-test"])
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    """Each implementation; the test fails if it leaves a vmops domain behind
    (the test driver's state is shared by the whole process)."""
    made = _fake_driver() if request.param == "fake" else _libvirt_driver()
    d = next(made)
    yield d
    left = d.hv.list_uuids()
    for uuid in left:
        d.hv.power_off(uuid)
        d.hv.undefine(uuid)
    next(made, None)
    assert left == [], "the test left vmops domains behind"


@pytest.fixture
def hv(driver: Driver) -> Hypervisor:
    return driver.hv


# define makes the serial port's FIFOs beside this path (serial_pipes.py):
# each test's own directory (the autouse fixture below), not /nonexistent,
# which exists only where a test has made it.
SERIAL_DIR = Path("/nonexistent")


@pytest.fixture(autouse=True)
def serial_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(sys.modules[__name__], "SERIAL_DIR", tmp_path)
    return tmp_path


def _spec(label: str = "web1") -> DomainSpec:
    uuid = str(uuidlib.uuid4())
    return DomainSpec(
        uuid=uuid, name=f"vmops-{label}-{uuid[:8]}", memory_mib=256, vcpus=1,
        disks=(DiskSpec(path=Path(f"/nonexistent/{label}.qcow2"), format="qcow2",
                        target="vda"),),
        nics=(NicSpec(mac="52:54:00:12:34:56"),),
        console_socket=SERIAL_DIR / f"{label}.sock", metadata={"name": label})


@pytest.fixture
def uuid(hv: Hypervisor) -> Iterator[str]:
    """A defined vmops domain, shut off; removed afterwards."""
    spec = _spec()
    hv.define(spec)
    yield spec.uuid
    if hv.exists(spec.uuid):  # not if the test undefined it
        hv.power_off(spec.uuid)
        hv.undefine(spec.uuid)


class Events:
    """Lifecycle events as delivered (synchronously by the fake, from an
    event thread by libvirt), with waiting."""

    def __init__(self) -> None:
        self._queue: queue.Queue[LifecycleEvent] = queue.Queue()

    def __call__(self, event: LifecycleEvent) -> None:
        self._queue.put(event)

    def until(self, uuid: str, state: PowerState) -> list[tuple[PowerState, str]]:
        """The events up to and including the first one carrying ``state``."""
        seen: list[tuple[PowerState, str]] = []
        while not seen or seen[-1][0] is not state:
            try:
                event = self._queue.get(timeout=EVENT_TIMEOUT_S)
            except queue.Empty:
                raise AssertionError(f"no {state} event; saw {seen}") from None
            assert event.uuid == uuid
            seen.append((event.state, event.detail))
        return seen

    def assert_none(self) -> None:
        try:
            unexpected = self._queue.get(timeout=0.3)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected event {unexpected}")


@pytest.fixture
def events(hv: Hypervisor) -> Events:
    received = Events()
    hv.on_lifecycle_event(received)
    return received


def _put_in(hv: Hypervisor, uuid: str, state: PowerState) -> None:
    if state is not PowerState.SHUTOFF:
        hv.start(uuid, paused=state is PowerState.PAUSED)
    if state is PowerState.SUSPENDED:
        hv.suspend(uuid)
    assert hv.info(uuid).state is state


# -- definitions ----------------------------------------------------------------------
def test_define_list_and_info(hv: Hypervisor) -> None:
    spec = _spec()
    hv.define(spec)
    try:
        assert spec.uuid in hv.list_uuids() and hv.exists(spec.uuid)
        info = hv.info(spec.uuid)
        assert (info.uuid, info.name, info.state, info.max_memory_kib, info.vcpus) == (
            spec.uuid, spec.name, PowerState.SHUTOFF, 256 * 1024, 1)
        assert "https://vmops.dev/xmlns/instance/1" in hv.domain_xml(spec.uuid)
        hv.define(dataclasses.replace(spec, vcpus=2))  # its own UUID: an update
        assert hv.info(spec.uuid).vcpus == 2
        with pytest.raises(AlreadyExists):
            hv.define(dataclasses.replace(_spec(), name=spec.name))  # another's name
    finally:
        hv.undefine(spec.uuid)
    assert spec.uuid not in hv.list_uuids() and not hv.exists(spec.uuid)


def test_foreign_domains_are_invisible_refused_and_kept(driver: Driver) -> None:
    hv, other = driver.hv, str(uuidlib.uuid4())
    name = f"users-{other[:8]}"
    driver.add_foreign(other, name)
    assert other not in hv.list_uuids() and not hv.exists(other)
    assert other not in hv.bulk_stats()
    for call in (hv.info, hv.start, hv.pause, hv.power_off, hv.suspend, hv.domain_xml):
        with pytest.raises(InstanceNotFound):
            call(other)
    with pytest.raises(AlreadyExists):
        hv.define(dataclasses.replace(_spec(), uuid=other))
    with pytest.raises(AlreadyExists):
        hv.define(dataclasses.replace(_spec(), name=name))
    hv.undefine(other)  # "no error if gone", and it is not ours to remove
    assert driver.foreign_still_defined(other)


def test_missing_domain(hv: Hypervisor) -> None:
    missing = str(uuidlib.uuid4())
    assert not hv.exists(missing)
    for call in (hv.info, hv.start, hv.shutdown, hv.pause, hv.unpause, hv.suspend,
                 hv.reboot_hard, hv.power_off, hv.domain_xml, hv.qemu_pid, hv.inject_nmi):
        with pytest.raises(InstanceNotFound):
            call(missing)
    hv.undefine(missing)
    hv.undefine(missing)


# -- power states ---------------------------------------------------------------------
OPERATIONS: dict[str, Callable[[Hypervisor, str], None]] = {
    "start": lambda hv, uuid: hv.start(uuid),
    "shutdown": lambda hv, uuid: hv.shutdown(uuid),
    "reboot_hard": lambda hv, uuid: hv.reboot_hard(uuid),
    "pause": lambda hv, uuid: hv.pause(uuid),
    "unpause": lambda hv, uuid: hv.unpause(uuid),
    "suspend": lambda hv, uuid: hv.suspend(uuid),
    "undefine": lambda hv, uuid: hv.undefine(uuid),
    "inject_nmi": lambda hv, uuid: hv.inject_nmi(uuid),
    "discard_saved_memory": lambda hv, uuid: hv.discard_saved_memory(uuid),
}
# From each state: the state an operation leaves, or None where it is refused.
# Written out, not read from base.ALLOWED_STATES, so a change there shows here.
OFF, ON, PAUSED, SAVED = (PowerState.SHUTOFF, PowerState.RUNNING, PowerState.PAUSED,
                          PowerState.SUSPENDED)
OUTCOMES: dict[str, dict[PowerState, PowerState | None]] = {
    "start": {OFF: ON, ON: None, PAUSED: None, SAVED: ON},
    "shutdown": {OFF: None, ON: OFF, PAUSED: None, SAVED: None},
    "reboot_hard": {OFF: None, ON: ON, PAUSED: PAUSED, SAVED: None},
    "pause": {OFF: None, ON: PAUSED, PAUSED: None, SAVED: None},
    "unpause": {OFF: None, ON: None, PAUSED: ON, SAVED: None},
    "suspend": {OFF: None, ON: SAVED, PAUSED: SAVED, SAVED: None},
    "undefine": {OFF: OFF, ON: None, PAUSED: None, SAVED: SAVED},
    "inject_nmi": {OFF: None, ON: ON, PAUSED: None, SAVED: None},  # no state change
    "discard_saved_memory": {OFF: OFF, ON: None, PAUSED: None, SAVED: OFF},
}


@pytest.mark.parametrize("state", [OFF, ON, PAUSED, SAVED], ids=lambda s: s.value)
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_state_rules(hv: Hypervisor, uuid: str, operation: str, state: PowerState) -> None:
    _put_in(hv, uuid, state)
    outcome = OUTCOMES[operation][state]
    if outcome is None:
        with pytest.raises(InvalidState):
            OPERATIONS[operation](hv, uuid)
        assert hv.info(uuid).state is state  # a refusal changes nothing
        return
    OPERATIONS[operation](hv, uuid)
    if operation == "undefine":
        assert not hv.exists(uuid)
        return
    assert hv.info(uuid).state is outcome


@pytest.mark.parametrize("state", [OFF, ON, PAUSED, SAVED], ids=lambda s: s.value)
def test_power_off_is_tolerant_and_keeps_saved_memory(hv: Hypervisor, uuid: str,
                                                     state: PowerState) -> None:
    _put_in(hv, uuid, state)
    hv.power_off(uuid)
    hv.power_off(uuid)
    assert hv.qemu_pid(uuid) is None
    assert hv.info(uuid).state is (SAVED if state is SAVED else OFF)


def test_start_restores_saved_memory_once(hv: Hypervisor, uuid: str) -> None:
    _put_in(hv, uuid, SAVED)
    assert hv.info(uuid).state is SAVED and hv.qemu_pid(uuid) is None
    hv.start(uuid, paused=True)
    assert hv.info(uuid).state is PAUSED
    hv.unpause(uuid)
    assert hv.info(uuid).state is ON


def test_discarding_saved_memory_makes_the_next_start_a_boot(hv: Hypervisor, uuid: str,
                                                            events: Events) -> None:
    _put_in(hv, uuid, SAVED)
    events.until(uuid, SAVED)
    hv.discard_saved_memory(uuid)
    hv.discard_saved_memory(uuid)  # none left: not an error
    assert hv.info(uuid).state is OFF
    events.assert_none()  # libvirt sends no lifecycle event for it
    hv.start(uuid)
    # "started", not "restored" (the test driver says "started" either way;
    # QEMU and the fake tell them apart).
    assert events.until(uuid, ON) == [(ON, "started")]


# -- events and statistics ------------------------------------------------------------
def test_events_carry_each_new_state(hv: Hypervisor, uuid: str, events: Events) -> None:
    hv.start(uuid, paused=True)
    assert events.until(uuid, PAUSED) == [(ON, "started"), (PAUSED, "paused")]
    hv.unpause(uuid)
    assert events.until(uuid, ON) == [(ON, "unpaused")]
    hv.reboot_hard(uuid)  # a reset changes no state: libvirt sends no event
    events.assert_none()
    hv.suspend(uuid)
    # QEMU (and the fake) pause the vCPUs first and say so; the test driver does not.
    assert events.until(uuid, SAVED)[-1] == (SAVED, "suspended")
    hv.start(uuid)
    # Restoring: "restored" on QEMU and the fake, "started" on the test driver.
    assert events.until(uuid, ON)[-1][1] in ("restored", "started")
    hv.shutdown(uuid)
    assert events.until(uuid, OFF) == [(OFF, "shutdown")]
    hv.start(uuid)
    hv.power_off(uuid)
    assert events.until(uuid, OFF) == [(ON, "started"), (OFF, "destroyed")]
    hv.power_off(uuid)  # already off: no event
    events.assert_none()
    assert hv.info(uuid).state is OFF


def test_callbacks_may_call_back_into_the_hypervisor(hv: Hypervisor, uuid: str) -> None:
    seen: queue.Queue[PowerState] = queue.Queue()
    hv.on_lifecycle_event(lambda event: seen.put(hv.info(event.uuid).state))
    hv.start(uuid)
    assert seen.get(timeout=EVENT_TIMEOUT_S) is ON


def test_bulk_stats_has_every_vmops_domain(hv: Hypervisor, uuid: str) -> None:
    assert hv.bulk_stats()[uuid]["state.state"] == 5  # VIR_DOMAIN_SHUTOFF
    hv.start(uuid)
    stats = hv.bulk_stats()
    assert set(stats) == set(hv.list_uuids())
    assert stats[uuid]["state.state"] == 1  # VIR_DOMAIN_RUNNING
    # The test driver reports only the state group; QEMU also cpu.*, balloon.*,
    # vcpu.*, net.* and block.* (the fake a few of them); the metrics check in
    # tests/functional/test_openstack_clients.py reads them from QEMU.
    assert all(isinstance(v, int | float) for v in stats[uuid].values())


def test_capabilities_check_passes(hv: Hypervisor) -> None:
    checks = hv.capabilities_check()
    assert checks and all(c.ok for c in checks)
