"""The libvirt driver against libvirt's in-process test:///default driver.

Real libvirt library, real XML parsing, real events; no daemon, no QEMU.
The test driver accepts domain type 'qemu' as-is, so the production XML is
used unchanged. It lacks three flags the driver uses (START_PAUSED,
SHUTDOWN_ACPI_POWER_BTN, UNDEFINE_NVRAM); the driver falls back for any
driver that rejects them, and the functional test covers QEMU's paths.
"""

from __future__ import annotations

import dataclasses
import queue
import sys
import threading
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from vmops.errors import AlreadyExists, InstanceNotFound, InvalidState
from vmops.hypervisor.base import (
    Accel,
    DiskSpec,
    DomainSpec,
    LifecycleEvent,
    NicSpec,
    PowerState,
)
from vmops.hypervisor.libvirt.driver import LibvirtHypervisor

pytestmark = pytest.mark.integration

URI = "test:///default"
EVENT_TIMEOUT_S = 5.0
Define = Callable[[DomainSpec], DomainSpec]

UNMARKED_XML = """<domain type='test'>
  <name>{name}</name><uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
</domain>"""


# define makes the serial port's FIFOs beside this path (serial_pipes.py):
# each test's own directory (the autouse fixture below), not /nonexistent,
# which exists only where a test has made it.
SERIAL_DIR = Path("/nonexistent")


@pytest.fixture(autouse=True)
def serial_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(sys.modules[__name__], "SERIAL_DIR", tmp_path)
    return tmp_path


def _spec(label: str) -> DomainSpec:
    return DomainSpec(
        uuid=str(uuidlib.uuid4()), name=f"vmops-{label}", memory_mib=256, vcpus=1,
        disks=(DiskSpec(path=Path(f"/nonexistent/{label}.qcow2"), format="qcow2",
                        target="vda"),),
        nics=(NicSpec(mac="52:54:00:12:34:56"),),
        console_socket=SERIAL_DIR / f"{label}.sock", metadata={"name": label})


class Events:
    """Lifecycle events as delivered, with waiting."""

    def __init__(self) -> None:
        self._queue: queue.Queue[LifecycleEvent] = queue.Queue()

    def __call__(self, event: LifecycleEvent) -> None:
        self._queue.put(event)

    def expect(self, uuid: str, *wanted: tuple[PowerState, str]) -> None:
        got = [self._next() for _ in wanted]
        assert [(e.uuid, e.state, e.detail) for e in got] == [(uuid, *w) for w in wanted]

    def _next(self) -> LifecycleEvent:
        try:
            return self._queue.get(timeout=EVENT_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError("expected a lifecycle event, none came") from None

    def assert_none(self) -> None:
        try:
            unexpected = self._queue.get(timeout=0.5)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected event {unexpected}")


@pytest.fixture
def hv() -> Iterator[LibvirtHypervisor]:
    hypervisor = LibvirtHypervisor(URI, Accel.TCG)
    hypervisor.connect()
    yield hypervisor
    hypervisor.close()


@pytest.fixture
def events(hv: LibvirtHypervisor) -> Events:
    received = Events()
    hv.on_lifecycle_event(received)
    return received


@pytest.fixture
def define(hv: LibvirtHypervisor) -> Iterator[Define]:
    """Define vmops domains; every one is removed afterwards, pass or fail,
    and the test fails if the driver left any vmops domain behind."""
    made: list[str] = []

    def make(spec: DomainSpec) -> DomainSpec:
        hv.define(spec)
        made.append(spec.uuid)
        return spec

    yield make
    for uuid in made:
        if hv.exists(uuid):
            hv.power_off(uuid)
            hv.undefine(uuid)
    assert hv.list_uuids() == []


@pytest.fixture
def unmarked(hv: LibvirtHypervisor) -> Iterator[str]:
    """A domain defined directly through libvirt, without vmops' mark."""
    uuid = str(uuidlib.uuid4())
    dom = hv.conn.defineXML(UNMARKED_XML.format(name=f"users-{uuid[:8]}", uuid=uuid))
    yield uuid
    if dom.isActive():
        dom.destroy()
    dom.undefine()


def test_lists_only_marked_domains(hv: LibvirtHypervisor, define: Define,
                                   unmarked: str) -> None:
    ours = define(_spec("web1"))
    assert hv.list_uuids() == [ours.uuid]  # not the test driver's own 'test' domain either
    assert hv.exists(ours.uuid) and not hv.exists(unmarked)
    info = hv.info(ours.uuid)
    assert (info.name, info.state, info.max_memory_kib) == ("vmops-web1", PowerState.SHUTOFF,
                                                            256 * 1024)


def test_unmarked_domain_is_never_touched(hv: LibvirtHypervisor, unmarked: str) -> None:
    for call in (hv.info, hv.start, hv.pause, hv.power_off, hv.suspend, hv.domain_xml,
                 hv.qemu_pid):
        with pytest.raises(InstanceNotFound):
            call(unmarked)
    hv.undefine(unmarked)  # "no error if gone": and it must stay defined
    assert hv.conn.lookupByUUIDString(unmarked).isPersistent()
    assert unmarked not in hv.bulk_stats()


def test_define_refuses_uuid_or_name_of_unmarked_domain(
        hv: LibvirtHypervisor, define: Define, unmarked: str) -> None:
    with pytest.raises(AlreadyExists, match="vmops did not create"):
        define(dataclasses.replace(_spec("web1"), uuid=unmarked))
    name = hv.conn.lookupByUUIDString(unmarked).name()
    with pytest.raises(AlreadyExists):
        define(dataclasses.replace(_spec("web2"), name=name))
    assert "vmops" not in hv.conn.lookupByUUIDString(unmarked).XMLDesc(0)


def test_redefine_updates_own_domain(hv: LibvirtHypervisor,
                                     define: Define) -> None:
    spec = define(_spec("web1"))
    define(dataclasses.replace(spec, vcpus=2))
    assert hv.info(spec.uuid).vcpus == 2
    with pytest.raises(AlreadyExists):
        define(_spec("web1"))  # same name, another UUID


def test_domain_xml_carries_the_mark(hv: LibvirtHypervisor,
                                     define: Define) -> None:
    spec = define(_spec("web1"))
    xml = hv.domain_xml(spec.uuid)
    assert "https://vmops.dev/xmlns/instance/1" in xml and ">web1<" in xml


def test_power_cycle(hv: LibvirtHypervisor, define: Define,
                     events: Events) -> None:
    uuid = define(_spec("web1")).uuid
    hv.start(uuid, paused=True)
    events.expect(uuid, (PowerState.RUNNING, "started"), (PowerState.PAUSED, "paused"))
    assert hv.info(uuid).state is PowerState.PAUSED
    hv.unpause(uuid)
    hv.pause(uuid)
    hv.unpause(uuid)
    events.expect(uuid, (PowerState.RUNNING, "unpaused"), (PowerState.PAUSED, "paused"),
                  (PowerState.RUNNING, "unpaused"))
    hv.reboot_hard(uuid)
    hv.suspend(uuid)
    events.expect(uuid, (PowerState.SUSPENDED, "suspended"))
    assert hv.info(uuid).state is PowerState.SUSPENDED
    assert hv.qemu_pid(uuid) is None
    hv.start(uuid)
    events.expect(uuid, (PowerState.RUNNING, "started"))  # QEMU says "restored"
    assert hv.info(uuid).state is PowerState.RUNNING
    hv.shutdown(uuid)
    events.expect(uuid, (PowerState.SHUTOFF, "shutdown"))
    hv.start(uuid)
    hv.power_off(uuid)
    hv.power_off(uuid)
    events.expect(uuid, (PowerState.RUNNING, "started"), (PowerState.SHUTOFF, "destroyed"))
    hv.undefine(uuid)
    hv.undefine(uuid)
    assert not hv.exists(uuid)
    events.assert_none()


@pytest.mark.parametrize(("setup", "operation"), [
    ([], "pause"), ([], "unpause"), ([], "shutdown"), ([], "reboot_hard"), ([], "suspend"),
    (["start"], "start"), (["start"], "unpause"), (["start"], "undefine"),
    (["start", "pause"], "pause"), (["start", "pause"], "shutdown"),
    (["start", "suspend"], "pause"), (["start", "suspend"], "suspend"),
])
def test_refusals_are_invalid_state_and_change_nothing(
        hv: LibvirtHypervisor, define: Define,
        setup: list[str], operation: str) -> None:
    uuid = define(_spec("web1")).uuid
    for step in setup:
        getattr(hv, step)(uuid)
    before = hv.info(uuid).state
    with pytest.raises(InvalidState):
        getattr(hv, operation)(uuid)
    assert hv.info(uuid).state is before


def test_no_events_for_unmarked_domains(hv: LibvirtHypervisor, events: Events,
                                        unmarked: str) -> None:
    dom = hv.conn.lookupByUUIDString(unmarked)
    dom.create()
    dom.suspend()
    dom.destroy()
    events.assert_none()


def test_callbacks_may_call_back_into_the_hypervisor(
        hv: LibvirtHypervisor, define: Define) -> None:
    uuid = define(_spec("web1")).uuid
    seen: list[PowerState] = []
    done = threading.Event()

    def on_event(event: LifecycleEvent) -> None:
        seen.append(hv.info(event.uuid).state)  # a libvirt call inside the callback
        done.set()

    hv.on_lifecycle_event(on_event)
    hv.start(uuid)
    assert done.wait(EVENT_TIMEOUT_S)
    assert seen[0] is PowerState.RUNNING


def test_bulk_stats_has_only_vmops_domains(hv: LibvirtHypervisor,
                                           define: Define,
                                           unmarked: str) -> None:
    uuid = define(_spec("web1")).uuid
    hv.start(uuid)
    stats = hv.bulk_stats()
    assert list(stats) == [uuid]
    assert stats[uuid]["state.state"] == 1  # VIR_DOMAIN_RUNNING
    assert all(isinstance(v, int | float) for v in stats[uuid].values())


def test_missing_domain(hv: LibvirtHypervisor) -> None:
    uuid = str(uuidlib.uuid4())
    assert not hv.exists(uuid)
    with pytest.raises(InstanceNotFound, match=uuid):
        hv.info(uuid)
    hv.undefine(uuid)


def test_capabilities_check(hv: LibvirtHypervisor) -> None:
    checks = hv.capabilities_check()
    assert checks and all(c.ok for c in checks)
