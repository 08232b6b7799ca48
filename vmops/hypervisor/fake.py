"""The Hypervisor protocol in memory, for unit tests of compute logic.

It refuses exactly what the libvirt driver refuses (both use
``base.ALLOWED_STATES``) and emits the lifecycle events libvirt emits, but
synchronously, on the calling thread, after the change; a callback that
fails is logged, as the libvirt driver's event thread does, and never
fails the call that emitted the event. Test hooks stand in
for the guest and for failures: :meth:`guest_shutdown`, :meth:`guest_crash`,
``obey_power_button``, :meth:`fail_next` and :meth:`add_foreign_domain`.
Every call of a protocol method that names a domain, or lists them, is
recorded in ``calls`` (its method name), and any of them can be made to fail:
the fault-injection tests find the calls a verb makes there, then fail each.
"""

from __future__ import annotations

import itertools
import logging
import threading
import uuid as uuidlib
from dataclasses import dataclass, field, replace

from vmops.errors import AlreadyExists, DetachTimeout, HypervisorError, InstanceNotFound
from vmops.hypervisor.base import (
    ACTIVE_STATES,
    Check,
    DiskErrorCallback,
    DiskErrorEvent,
    DiskSpec,
    DomainInfo,
    DomainSpec,
    EventCallback,
    LifecycleEvent,
    PowerState,
    check_state,
)
from vmops.hypervisor.libvirt.domain_xml import build_domain_xml

log = logging.getLogger(__name__)

# libvirt's virDomainState numbers, for bulk_stats' "state.state".
_LIBVIRT_STATE = {
    PowerState.NOSTATE: 0, PowerState.RUNNING: 1, PowerState.BLOCKED: 2,
    PowerState.PAUSED: 3, PowerState.SHUTDOWN: 4, PowerState.SHUTOFF: 5,
    PowerState.CRASHED: 6, PowerState.PMSUSPENDED: 7, PowerState.SUSPENDED: 5,
}


@dataclass
class FakeDomain:
    spec: DomainSpec
    state: PowerState = PowerState.SHUTOFF
    saved_memory: bool = False
    pid: int | None = None
    boots: int = 0
    resets: int = 0
    nmis: int = 0  # non-maskable interrupts injected (the guest's kernel would see them)
    cpu_time_ns: int = 0
    disk_sizes: dict[str, int] = field(default_factory=dict)  # target -> bytes, once resized


class FakeHypervisor:
    def __init__(self, obey_power_button: bool = True) -> None:
        # False: the guest ignores the ACPI button (tests of the hard fallback).
        self.obey_power_button = obey_power_button
        # False: the guest never releases a hot-unplugged disk (detach times out).
        self.guest_releases_disks = True
        self.connected = False
        self.domains: dict[str, FakeDomain] = {}
        self.foreign: dict[str, str] = {}  # UUID -> name of domains vmops did not make
        self._failures: dict[str, tuple[int, Exception]] = {}  # operation -> (skip, error)
        self.calls: list[str] = []  # method names, in call order
        self._callbacks: list[EventCallback] = []
        self._disk_error_callbacks: list[DiskErrorCallback] = []
        self._lock = threading.RLock()
        self._pids = itertools.count(40000)
        self.secret_values: dict[str, tuple[str, bytes]] = {}  # uuid -> (usage, value)

    # -- test hooks ------------------------------------------------------------
    def fail_next(self, operation: str, error: Exception, skip: int = 0) -> None:
        """Make a call of method ``operation`` raise ``error``: the next one,
        or the one after ``skip`` calls that succeed. Once only."""
        self._failures[operation] = (skip, error)

    def add_foreign_domain(self, uuid: str, name: str) -> None:
        """A domain without vmops' mark: invisible, and its UUID/name are taken."""
        self.foreign[uuid.lower()] = name

    def guest_shutdown(self, uuid: str) -> None:
        """The guest powers itself off (``poweroff`` inside it)."""
        with self._lock:
            check_state("shut down", uuid, self._domain(uuid).state)
        self._stop(uuid, PowerState.SHUTOFF, "shutdown")

    def disk_error(self, uuid: str, target: str, reason: str = "") -> None:
        """QEMU could not read or write disk ``target`` of a running domain
        (its target went away): the I/O error event, as libvirt sends it;
        "enospc" pauses the guest first, as QEMU's default error policy does."""
        paused = reason == "enospc"
        with self._lock:
            d = self._domain(uuid)
            if d.state not in ACTIVE_STATES:
                raise AssertionError(f"domain {uuid} has no QEMU process: no disk I/O")
            if target not in {disk.target for disk in d.spec.disks}:
                target = ""  # libvirt names no disk it does not know
            pause = paused and d.state is not PowerState.PAUSED
        if pause:
            self._change(uuid, "pause", PowerState.PAUSED, "io-error")
        event = DiskErrorEvent(uuid=uuid.lower(), target=target, reason=reason, paused=paused)
        for callback in list(self._disk_error_callbacks):
            callback(event)

    def guest_crash(self, uuid: str) -> None:
        """QEMU is killed (SIGKILL): libvirt says STOPPED_FAILED, and the
        domain is shut off."""
        with self._lock:
            check_state("hard-reboot", uuid, self._domain(uuid).state)  # any running state
        self._stop(uuid, PowerState.SHUTOFF, "failed",
                   event_state=PowerState.CRASHED, fault="QEMU died (fake: killed)")

    # -- connection ------------------------------------------------------------
    def connect(self) -> None:
        self.connected = True

    def close(self) -> None:
        self.connected = False

    def capabilities_check(self) -> list[Check]:
        return [Check(name="fake hypervisor", ok=True, required=True,
                      detail="in memory; no VM runs")]

    # -- domains ---------------------------------------------------------------
    def define(self, spec: DomainSpec) -> None:
        self._maybe_fail("define")
        build_domain_xml(spec)  # the same validation as the libvirt driver
        uuid = spec.uuid.lower()
        with self._lock:
            if uuid in self.foreign:
                raise AlreadyExists(f"a libvirt domain that vmops did not create "
                                    f"({self.foreign[uuid]!r}) has UUID {uuid}",
                                    kind="domain", name=uuid)
            taken = set(self.foreign.values()) | {
                d.spec.name for u, d in self.domains.items() if u != uuid}
            if spec.name in taken:
                raise AlreadyExists(kind="libvirt domain", name=spec.name)
            if uuid in self.domains:
                self.domains[uuid].spec = spec
            else:
                self.domains[uuid] = FakeDomain(spec=spec)

    def domain_xml(self, uuid: str) -> str:
        return build_domain_xml(self._domain(uuid, "domain_xml").spec)

    def list_uuids(self) -> list[str]:
        self._maybe_fail("list_uuids")
        with self._lock:
            return sorted(self.domains)

    def exists(self, uuid: str) -> bool:
        self._maybe_fail("exists")
        return uuid.lower() in self.domains

    def info(self, uuid: str) -> DomainInfo:
        self._maybe_fail("info")
        d = self._domain(uuid)
        spec = d.spec
        memory_kib = int(spec.memory_mib / spec.dynamic_memory_ratio) * 1024
        return DomainInfo(uuid=spec.uuid.lower(), name=spec.name, state=d.state,
                          max_memory_kib=spec.memory_mib * 1024, memory_kib=memory_kib,
                          vcpus=spec.vcpus, cpu_time_ns=d.cpu_time_ns)

    # -- power -----------------------------------------------------------------
    def start(self, uuid: str, paused: bool = False) -> None:
        with self._lock:
            d = self._checked(uuid, "start")
            restored = d.saved_memory
            d.saved_memory = False
            d.state = PowerState.PAUSED if paused else PowerState.RUNNING
            d.pid = next(self._pids)
            if not restored:
                d.boots += 1
        self._emit(uuid, PowerState.RUNNING, "restored" if restored else "started")
        if paused:
            self._emit(uuid, PowerState.PAUSED, "paused")

    def shutdown(self, uuid: str) -> None:
        with self._lock:
            self._checked(uuid, "shut down")
        if self.obey_power_button:
            self._stop(uuid, PowerState.SHUTOFF, "shutdown")

    def power_off(self, uuid: str) -> None:
        with self._lock:
            d = self._domain(uuid, "power_off")
            if d.state not in ACTIVE_STATES:
                return
        self._stop(uuid, PowerState.SHUTOFF, "destroyed")

    def reboot_hard(self, uuid: str) -> None:
        with self._lock:
            self._checked(uuid, "hard-reboot").resets += 1  # no lifecycle event, as libvirt

    def pause(self, uuid: str) -> None:
        self._change(uuid, "pause", PowerState.PAUSED, "paused")

    def unpause(self, uuid: str) -> None:
        self._change(uuid, "unpause", PowerState.RUNNING, "unpaused")

    def suspend(self, uuid: str) -> None:
        with self._lock:
            d = self._checked(uuid, "suspend")
            was_running = d.state is not PowerState.PAUSED
            d.state, d.saved_memory = PowerState.PAUSED, True
        if was_running:  # libvirt pauses the vCPUs before saving memory
            self._emit(uuid, PowerState.PAUSED, "paused")
        self._stop(uuid, PowerState.SUSPENDED, "suspended")

    def discard_saved_memory(self, uuid: str) -> None:
        with self._lock:
            d = self._checked(uuid, "discard the saved memory of")
            if d.saved_memory:  # no lifecycle event, as libvirt
                d.state, d.saved_memory = PowerState.SHUTOFF, False

    def inject_nmi(self, uuid: str) -> None:
        with self._lock:
            self._checked(uuid, "inject an NMI into").nmis += 1  # no lifecycle event

    def undefine(self, uuid: str) -> None:
        self._maybe_fail("undefine")
        with self._lock:
            d = self.domains.get(uuid.lower())
            if d is None:
                return
            check_state("undefine", uuid, d.state)  # not _checked: one call, one record
            del self.domains[uuid.lower()]

    def qemu_pid(self, uuid: str) -> int | None:
        return self._domain(uuid, "qemu_pid").pid

    # -- disks -----------------------------------------------------------------
    def attach_disk(self, uuid: str, disk: DiskSpec) -> None:
        with self._lock:
            d = self._checked(uuid, "attach a disk to")
            if any(x.target == disk.target for x in d.spec.disks):
                raise AlreadyExists(kind=f"disk of domain {d.spec.name}", name=disk.target)
            spec = replace(d.spec, disks=(*d.spec.disks, disk))
            build_domain_xml(spec)  # the same validation as the libvirt driver
            d.spec = spec

    def detach_disk(self, uuid: str, target: str, timeout: float) -> None:
        with self._lock:
            d = self._checked(uuid, "detach a disk from")
            if not any(x.target == target for x in d.spec.disks):
                return
            # A paused guest's vCPUs cannot answer the unplug request either.
            if d.state in ACTIVE_STATES and (not self.guest_releases_disks
                                             or d.state is PowerState.PAUSED):
                raise DetachTimeout(instance=d.spec.name, target=target, seconds=timeout)
            d.spec = replace(d.spec, disks=tuple(x for x in d.spec.disks if x.target != target))

    def resize_disk(self, uuid: str, target: str, size_bytes: int) -> None:
        with self._lock:
            d = self._checked(uuid, "resize a disk of")
            if target not in {disk.target for disk in d.spec.disks}:
                raise HypervisorError(reason=f"domain {d.spec.name} has no disk {target}")
            d.disk_sizes[target] = size_bytes

    def disk_targets(self, uuid: str) -> dict[str, str]:
        spec = self._domain(uuid, "disk_targets").spec
        return {x.target: x.source for x in spec.disks}

    # -- secrets ---------------------------------------------------------------
    def define_secret(self, usage: str, value: bytes) -> str:
        self._maybe_fail("define_secret")
        with self._lock:
            for uuid, (name, _) in list(self.secret_values.items()):
                if name == usage:
                    del self.secret_values[uuid]
            uuid = str(uuidlib.uuid4())
            self.secret_values[uuid] = (usage, value)
            return uuid

    def undefine_secret(self, uuid: str) -> None:
        self._maybe_fail("undefine_secret")
        with self._lock:
            self.secret_values.pop(uuid, None)

    def secrets(self) -> dict[str, str]:
        with self._lock:
            return {uuid: usage for uuid, (usage, _) in self.secret_values.items()}

    # -- events and statistics -------------------------------------------------
    def on_lifecycle_event(self, callback: EventCallback) -> None:
        self._callbacks.append(callback)

    def on_disk_error(self, callback: DiskErrorCallback) -> None:
        self._disk_error_callbacks.append(callback)

    def bulk_stats(self) -> dict[str, dict[str, int | float]]:
        self._maybe_fail("bulk_stats")
        with self._lock:
            return {uuid: {"state.state": _LIBVIRT_STATE[d.state],
                           "cpu.time": d.cpu_time_ns,
                           "balloon.maximum": d.spec.memory_mib * 1024,
                           "vcpu.current": d.spec.vcpus}
                    for uuid, d in self.domains.items()}

    # -- helpers ---------------------------------------------------------------
    def _maybe_fail(self, operation: str) -> None:
        """Record a call of ``operation``; raise if a failure is planned for it."""
        with self._lock:
            self.calls.append(operation)
            planned = self._failures.pop(operation, None)
            if planned is None:
                return
            skip, error = planned
            if skip > 0:
                self._failures[operation] = (skip - 1, error)
                return
        raise error

    def _domain(self, uuid: str, operation: str | None = None) -> FakeDomain:
        if operation is not None:
            self._maybe_fail(operation)
        d = self.domains.get(uuid.lower())
        if d is None:
            raise InstanceNotFound(instance=uuid)
        return d

    def _checked(self, uuid: str, action: str) -> FakeDomain:
        operation = {"shut down": "shutdown", "hard-reboot": "reboot_hard",
                     "attach a disk to": "attach_disk",
                     "detach a disk from": "detach_disk",
                     "resize a disk of": "resize_disk",
                     "inject an NMI into": "inject_nmi",
                     "discard the saved memory of":
                         "discard_saved_memory"}.get(action, action)
        d = self._domain(uuid, operation)
        check_state(action, uuid, d.state)
        return d

    def _change(self, uuid: str, action: str, state: PowerState, detail: str) -> None:
        with self._lock:
            self._checked(uuid, action).state = state
        self._emit(uuid, state, detail)

    def _stop(self, uuid: str, state: PowerState, detail: str,
              event_state: PowerState | None = None, fault: str = "") -> None:
        with self._lock:
            d = self._domain(uuid)
            d.state, d.pid = state, None
        self._emit(uuid, event_state or state, detail, fault)

    def _emit(self, uuid: str, state: PowerState, detail: str, fault: str = "") -> None:
        event = LifecycleEvent(uuid=uuid.lower(), state=state, detail=detail, fault=fault)
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:  # noqa: BLE001 - as libvirt's driver: never the caller's error
                log.exception("delivering a lifecycle event (%s)", event)

    def spec_of(self, uuid: str) -> DomainSpec:
        """The spec last defined (tests compare what compute asked for)."""
        return self._domain(uuid).spec
