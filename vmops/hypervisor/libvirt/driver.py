"""The Hypervisor protocol on libvirt: the only module that calls libvirt.

Every libvirt error is converted into vmops' error tree in one place,
:func:`error_for`, applied to every public method by :func:`_translated`.
Only domains carrying vmops' metadata mark are visible.

With the embedded URI (``qemu:///embed?root=DIR``) libvirt's QEMU driver
runs inside this process, without a daemon: QEMU processes outlive the
process and are found again when the root is reopened. Only one process can
hold a root, and a process can only ever open one root.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import libvirt

from vmops import serial_pipes
from vmops.errors import (
    AlreadyExists,
    DetachTimeout,
    HostNotReady,
    HypervisorError,
    InstanceNotFound,
    InvalidState,
    VmopsError,
)
from vmops.hypervisor import threads
from vmops.hypervisor.base import (
    ACTIVE_STATES,
    Accel,
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
from vmops.hypervisor.libvirt import (
    embed_root,
    embed_root_too_long,
    missing_qemu_driver_user,
    pid_file_dir,
    prepare_embed_root,
)
from vmops.hypervisor.libvirt.domain_xml import (
    VMOPS_XMLNS,
    build_domain_xml,
    disk_element,
    disk_xml,
    disks_of,
    secret_xml,
    serial_pipe_of,
)

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# What bulk_stats asks for in its one getAllDomainStats call (bench's baseline
# makes the same call).
BULK_STATS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
              | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU
              | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK)

_POWER_STATE = {
    libvirt.VIR_DOMAIN_NOSTATE: PowerState.NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.BLOCKED,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.PMSUSPENDED,
}

# (event, detail) -> (new power state, detail word); detail None: any detail.
# Not delivered: DEFINED and UNDEFINED (no power change), and SHUTDOWN, which
# QEMU sends when it has finished (guest poweroff, or killed by destroy),
# always just before the STOPPED event that carries the new state; its
# detail is kept to tell a signal to QEMU from a guest poweroff.
# STOPPED_FAILED is what libvirt sends when QEMU's monitor closed without a
# shutdown (QEMU killed by SIGKILL, or it aborted); STOPPED_CRASHED when the
# guest crashed and on_crash stopped it. Both are a crash, as Nova reports it.
_EVENTS: dict[tuple[int, int | None], tuple[PowerState, str]] = {
    (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_RESTORED):
        (PowerState.RUNNING, "restored"),
    (libvirt.VIR_DOMAIN_EVENT_STARTED, None): (PowerState.RUNNING, "started"),
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR):
        (PowerState.PAUSED, "io-error"),
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, None): (PowerState.PAUSED, "paused"),
    (libvirt.VIR_DOMAIN_EVENT_RESUMED, None): (PowerState.RUNNING, "unpaused"),
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN):
        (PowerState.SHUTOFF, "shutdown"),
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED):
        (PowerState.SHUTOFF, "destroyed"),
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED):
        (PowerState.CRASHED, "crashed"),
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED):
        (PowerState.SUSPENDED, "suspended"),
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED):
        (PowerState.CRASHED, "failed"),
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, None): (PowerState.SHUTOFF, "stopped"),
    (libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED, None): (PowerState.PMSUSPENDED, "pmsuspended"),
    (libvirt.VIR_DOMAIN_EVENT_CRASHED, None): (PowerState.CRASHED, "crashed"),
}


# Faults of the stops nobody asked for, by libvirt's (event, detail).
_FAULTS: dict[tuple[int, int | None], str] = {
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED):
        "QEMU died: its process ended without the guest shutting down (killed by a "
        "signal, or it failed); libvirt reports the emulator failed",
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED):
        "QEMU stopped because the guest crashed; libvirt reports a guest crash",
    (libvirt.VIR_DOMAIN_EVENT_CRASHED, libvirt.VIR_DOMAIN_EVENT_CRASHED_PANICKED):
        "the guest crashed: its kernel panicked",
    (libvirt.VIR_DOMAIN_EVENT_CRASHED, None): "the guest crashed",
}
# A STOPPED_SHUTDOWN that follows SHUTDOWN_HOST: QEMU shut down because a
# process on the host signalled it (SIGTERM, SIGINT, SIGHUP), not the guest.
# Seconds between two requests to a running guest to release a disk.
UNPLUG_REPEAT_S = 5.0
_FAULT_HOST_SIGNAL = ("QEMU died: it was stopped by a signal from the host, not by the "
                      "guest or vmops; libvirt reports a host-initiated shutdown")


def library_version() -> str:
    """The version of the libvirt library this process loaded."""
    return _version(libvirt.getVersion())


def lifecycle_event(uuid: str, event: int, detail: int,
                    shutdown_detail: int | None = None) -> LifecycleEvent | None:
    """libvirt's lifecycle (event, detail) as vmops' event, or None to drop it.

    ``shutdown_detail``: the detail of the SHUTDOWN event that came just
    before, if one did (QEMU sends it before it stops).
    """
    found = _EVENTS.get((event, detail)) or _EVENTS.get((event, None))
    if found is None:
        return None
    fault = _FAULTS.get((event, detail)) or _FAULTS.get((event, None), "")
    if (event, detail) == (libvirt.VIR_DOMAIN_EVENT_STOPPED,
                           libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN) \
            and shutdown_detail == libvirt.VIR_DOMAIN_EVENT_SHUTDOWN_HOST:
        fault = _FAULT_HOST_SIGNAL
    return LifecycleEvent(uuid=uuid, state=found[0], detail=found[1], fault=fault)


def error_for(code: int, message: str, action: str, uuid: str | None) -> VmopsError:
    """The vmops error for a libvirt error code. Never looks at the message."""
    subject = uuid or "?"
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return InstanceNotFound(instance=subject)
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        return InvalidState(action=action, instance=subject,
                            state=f"in a state that does not allow it ({message})")
    where = f"{action} {uuid}" if uuid else action
    return HypervisorError(reason=f"{where}: {message}")


def _translated(action: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Convert libvirt errors raised by the decorated method (whose first
    argument after self is a UUID or a DomainSpec) with :func:`error_for`."""

    def decorate(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(*args, **kwargs)
            except libvirt.libvirtError as e:
                subject = args[1] if len(args) > 1 else None
                uuid = subject if isinstance(subject, str) else getattr(subject, "uuid", None)
                code = e.get_error_code() or libvirt.VIR_ERR_INTERNAL_ERROR
                raise error_for(code, e.get_error_message() or str(e), action, uuid) from e

        return call

    return decorate


_event_loop_lock = threading.Lock()
_event_loop_running = False


def ensure_event_loop() -> None:
    """Register libvirt's default event loop and run it on a daemon OS
    thread (:func:`vmops.hypervisor.threads.current`'s, a real one even
    under eventlet), once per process. Must happen before any connection
    is opened."""
    global _event_loop_running
    with _event_loop_lock:
        if _event_loop_running:
            return
        # libvirt prints every error to stderr by default, even those we
        # expect and handle (a domain without our metadata); we raise them.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt.virEventRegisterDefaultImpl()
        threads.current().start_native(_run_event_loop, "libvirt-event-loop")
        _event_loop_running = True


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


class LibvirtHypervisor:
    def __init__(self, uri: str, accel: Accel,
                 wrap_connection: Callable[[Any], Any] | None = None) -> None:
        self.uri = uri
        self.accel = accel
        # Called with the libvirt connection once opened; what it returns is
        # used in its place (bench/api.py counts the calls vmops makes).
        self._wrap_connection = wrap_connection
        self._conn: Any = None
        # The secret driver: with the embedded URI its own embedded instance
        # on the same root (secret:///embed), which the embedded QEMU driver
        # then uses; otherwise the QEMU connection's.
        self._secret_conn: Any = None
        self._secret_threads = threading.local()  # .ready: this thread's QEMU driver uses it
        self._callback_id: int | None = None
        self._callbacks: list[EventCallback] = []
        self._disk_error_callbacks: list[DiskErrorCallback] = []
        # Deliveries from libvirt's event loop (a native thread) to the
        # dispatcher thread, in event order; None ends it.
        self._events: threads.Handoff[Callable[[], None] | None] = \
            threads.current().handoff()
        self._dispatcher: threading.Thread | None = None
        self._marked: set[str] = set()  # vmops' domains seen, for UNDEFINED events
        # UUID -> detail of its last SHUTDOWN event, until its STOPPED event;
        # only the dispatcher thread touches it.
        self._shutdown_details: dict[str, int] = {}
        # (UUID, device alias) -> the unplug waiting for the guest to release it.
        self._unplugs: dict[tuple[str, str], _Unplug] = {}
        self._device_callback_ids: list[int] = []

    # -- connection ------------------------------------------------------------
    def connect(self) -> None:
        if self._conn is not None:
            return
        root = embed_root(self.uri)
        if root is not None:
            too_long = embed_root_too_long(root)
            if too_long is not None:
                raise HostNotReady(reason=too_long)
            user = missing_qemu_driver_user()
            if user is not None:
                raise HostNotReady(reason=(
                    f"libvirt's QEMU driver needs the system user {user!r}: "
                    f"useradd --system --no-create-home --shell /usr/sbin/nologin {user}"))
            prepare_embed_root(root)
        ensure_event_loop()
        try:
            if root is not None:  # first, so that the QEMU driver finds it
                self._secret_conn = libvirt.open(f"secret:///embed?root={root}")
            conn = libvirt.open(self.uri)
            self._conn = conn if self._wrap_connection is None else self._wrap_connection(conn)
        except libvirt.libvirtError as e:
            raise HypervisorError(
                reason=f"cannot open {self.uri}: {e.get_error_message() or e}") from e
        self._dispatcher = threading.Thread(target=self._dispatch_events,
                                            name="libvirt-lifecycle", daemon=True)
        self._dispatcher.start()
        self._callback_id = self._conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._queue_event, None)
        self._device_callback_ids = [
            self._conn.domainEventRegisterAny(None, event, self._device_event, released)
            for event, released in ((libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, True),
                                    (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED, False))]
        self._device_callback_ids.append(self._conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON, self._queue_disk_error, None))

    def close(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            if self._callback_id is not None:
                conn.domainEventDeregisterAny(self._callback_id)
            for callback_id in self._device_callback_ids:
                conn.domainEventDeregisterAny(callback_id)
            conn.close()
            if self._secret_conn is not None:
                self._secret_conn.close()
        except libvirt.libvirtError as e:
            log.warning("closing %s: %s", self.uri, e.get_error_message())
        finally:
            self._secret_conn = None
            self._callback_id = None
            self._device_callback_ids = []
            self._events.put(None)
            if self._dispatcher not in (None, threading.current_thread()):
                self._dispatcher.join(timeout=5)  # a callback may be the one closing

    @property
    def conn(self) -> Any:
        if self._conn is None:
            raise HypervisorError(reason=f"not connected to {self.uri}")
        return self._conn

    def capabilities_check(self) -> list[Check]:
        checks = [self._connection_check()]
        if urlsplit(self.uri).scheme == "qemu":
            checks.append(self._virt_type_check())
        return checks

    @_translated("check the connection")
    def _connection_check(self) -> Check:
        hv_version = _version(self.conn.getVersion())
        lib_version = _version(self.conn.getLibVersion())
        return Check(name="libvirt connection", ok=True, required=True,
                     detail=f"{self.uri}: libvirt {lib_version}, "
                            f"{self.conn.getType()} {hv_version}")

    def _virt_type_check(self) -> Check:
        virt_type = "kvm" if self.accel is Accel.KVM else "qemu"
        name = f"libvirt domain type {virt_type!r}"
        try:
            self.conn.getDomainCapabilities(None, "x86_64", None, virt_type, 0)
        except libvirt.libvirtError as e:
            return Check(name=name, ok=False, required=True,
                         detail=e.get_error_message() or str(e),
                         advice="set accel=tcg" if self.accel is Accel.KVM else
                         "apt-get install qemu-system-x86")
        return Check(name=name, ok=True, required=True,
                     detail=f"libvirt can run x86_64 guests with {self.accel.value}")

    # -- domains ---------------------------------------------------------------
    @_translated("define")
    def define(self, spec: DomainSpec) -> None:
        xml = build_domain_xml(spec)
        self._refuse_foreign(spec)
        # No VIR_DOMAIN_DEFINE_VALIDATE: libvirt would load its RelaxNG schema
        # on every define (~8-12 ms of a spawn, #17). The builder's output is
        # checked against that schema by tests/integration/test_domain_xml_schema.py.
        serial_pipes.make(spec.console_socket)  # QEMU opens them; it would not start without
        self.conn.defineXML(xml)
        self._marked.add(spec.uuid.lower())

    def _refuse_foreign(self, spec: DomainSpec) -> None:
        """AlreadyExists if the UUID or the name is taken by another domain."""
        by_uuid = self._lookup(spec.uuid)
        if by_uuid is not None and not self._is_marked(by_uuid):
            raise AlreadyExists(
                f"a libvirt domain that vmops did not create ({by_uuid.name()!r}) "
                f"has UUID {spec.uuid}", kind="domain", name=spec.uuid)
        try:
            by_name = self.conn.lookupByName(spec.name)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise
        if by_name.UUIDString() != spec.uuid.lower():
            raise AlreadyExists(kind="libvirt domain", name=spec.name)

    @_translated("read the XML of")
    def domain_xml(self, uuid: str) -> str:
        return str(self._domain(uuid).XMLDesc(0))

    @_translated("list domains")
    def list_uuids(self) -> list[str]:
        return sorted(str(d.UUIDString()) for d in self.conn.listAllDomains(0)
                      if self._is_marked(d))

    @_translated("look up")
    def exists(self, uuid: str) -> bool:
        dom = self._lookup(uuid)
        return dom is not None and self._is_marked(dom)

    @_translated("read the state of")
    def info(self, uuid: str) -> DomainInfo:
        dom = self._domain(uuid)
        _state, max_kib, kib, vcpus, cpu_ns = dom.info()
        return DomainInfo(uuid=str(dom.UUIDString()), name=str(dom.name()),
                          state=self._power_state(dom), max_memory_kib=int(max_kib),
                          memory_kib=int(kib), vcpus=int(vcpus), cpu_time_ns=int(cpu_ns))

    # -- power -----------------------------------------------------------------
    @_translated("start")
    def start(self, uuid: str, paused: bool = False) -> None:
        dom = self._checked(uuid, "start")
        self._use_embedded_secrets()
        try:
            _create(dom, paused)
        except libvirt.libvirtError:
            if not _serial_pipes_made_again(dom):
                raise
            _create(dom, paused)

    @_translated("shut down")
    def shutdown(self, uuid: str) -> None:
        dom = self._checked(uuid, "shut down")
        _unless_flag_unsupported(
            lambda: dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN),
            lambda: dom.shutdown())

    @_translated("power off")
    def power_off(self, uuid: str) -> None:
        dom = self._domain(uuid)
        if self._power_state(dom) not in ACTIVE_STATES:
            return
        try:
            dom.destroy()
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                raise  # OPERATION_INVALID: it stopped by itself meanwhile

    @_translated("hard-reboot")
    def reboot_hard(self, uuid: str) -> None:
        dom = self._checked(uuid, "hard-reboot")
        dom.reset(0)

    @_translated("pause")
    def pause(self, uuid: str) -> None:
        self._checked(uuid, "pause").suspend()

    @_translated("unpause")
    def unpause(self, uuid: str) -> None:
        self._checked(uuid, "unpause").resume()

    @_translated("suspend")
    def suspend(self, uuid: str) -> None:
        self._checked(uuid, "suspend").managedSave(0)

    @_translated("discard the saved memory of")
    def discard_saved_memory(self, uuid: str) -> None:
        dom = self._checked(uuid, "discard the saved memory of")
        if dom.hasManagedSaveImage(0):
            dom.managedSaveRemove(0)

    @_translated("inject an NMI into")
    def inject_nmi(self, uuid: str) -> None:
        self._checked(uuid, "inject an NMI into").injectNMI(0)

    @_translated("undefine")
    def undefine(self, uuid: str) -> None:
        try:
            dom = self._checked(uuid, "undefine")
        except InstanceNotFound:
            return
        flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        try:
            _unless_flag_unsupported(
                lambda: dom.undefineFlags(flags | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM),
                lambda: dom.undefineFlags(flags))
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise  # NO_DOMAIN: undefined meanwhile, which is what we wanted

    @_translated("find the QEMU process of")
    def qemu_pid(self, uuid: str) -> int | None:
        dom = self._domain(uuid)
        pid_dir = pid_file_dir(self.uri)
        if pid_dir is None or self._power_state(dom) not in ACTIVE_STATES:
            return None
        try:
            return int((pid_dir / f"{dom.name()}.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    # -- disks -----------------------------------------------------------------
    @_translated("attach a disk to")
    def attach_disk(self, uuid: str, disk: DiskSpec) -> None:
        dom = self._checked(uuid, "attach a disk to")
        if disk.target in disks_of(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)):
            raise AlreadyExists(kind=f"disk of domain {dom.name()}", name=disk.target)
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if self._power_state(dom) in ACTIVE_STATES:
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        self._use_embedded_secrets()
        dom.attachDeviceFlags(disk_xml(disk), flags)

    @_translated("detach a disk from")
    def detach_disk(self, uuid: str, target: str, timeout: float) -> None:
        dom = self._checked(uuid, "detach a disk from")
        if self._power_state(dom) in ACTIVE_STATES:
            self._unplug(dom, target, timeout)
        # Only once the guest has let go: until then the disk stays in the
        # definition too, so a restart gives the guest the disk it still uses.
        element = disk_element(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), target)
        if element is not None:
            dom.detachDeviceFlags(element, libvirt.VIR_DOMAIN_AFFECT_CONFIG)

    def _unplug(self, dom: Any, target: str, timeout: float) -> None:
        """Ask the running guest to release ``target`` and wait for libvirt's
        device-removed event (the live XML is looked at too, in case the
        event came before we listened). The request is sent again every
        UNPLUG_REPEAT_S seconds meanwhile, as Nova's libvirt driver does: a
        guest still booting ignores one that comes before its hotplug
        driver is up."""
        live = dom.XMLDesc(0)
        element = disk_element(live, target)
        if element is None:
            return
        key = (str(dom.UUIDString()), disks_of(live)[target][1])
        unplug = self._unplugs[key] = _Unplug()
        try:
            dom.detachDeviceFlags(element, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            asked = time.monotonic()
            deadline = asked + timeout
            while not unplug.done.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                if target not in disks_of(dom.XMLDesc(0)):
                    return
                if time.monotonic() >= deadline:
                    raise DetachTimeout(instance=dom.name(), target=target, seconds=timeout)
                if time.monotonic() - asked >= UNPLUG_REPEAT_S:
                    asked = time.monotonic()
                    _ask_again(dom, element, target)
            if not unplug.released:
                raise DetachTimeout(f"the guest of {dom.name()} refused to release disk "
                                    f"{target}; it stays attached", instance=dom.name(),
                                    target=target, seconds=timeout)
        finally:
            self._unplugs.pop(key, None)

    def _device_event(self, _conn: Any, dom: Any, alias: str, released: bool) -> None:
        # On libvirt's event loop thread: only queue. The waiter's Event is
        # set on the dispatcher thread, the kind of thread that waits on it
        # (a green one under eventlet, where a native thread must not set it).
        self._events.put(functools.partial(self._release, (str(dom.UUIDString()), str(alias)),
                                           released))

    def _release(self, key: tuple[str, str], released: bool) -> None:
        unplug = self._unplugs.get(key)
        if unplug is not None:
            unplug.released = released
            unplug.done.set()

    @_translated("resize a disk of")
    def resize_disk(self, uuid: str, target: str, size_bytes: int) -> None:
        dom = self._checked(uuid, "resize a disk of")
        dom.blockResize(target, size_bytes, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)

    @_translated("read the disks of")
    def disk_targets(self, uuid: str) -> dict[str, str]:
        xml = self._domain(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        return {target: source for target, (source, _) in disks_of(xml).items()}

    # -- secrets ---------------------------------------------------------------
    @property
    def _secrets(self) -> Any:
        return self._secret_conn if self._secret_conn is not None else self.conn

    def _use_embedded_secrets(self) -> None:
        """Make the embedded QEMU driver, on this thread, find the embedded
        secret driver. When QEMU needs a secret (a disk's CHAP password, at
        start or hot-plug) libvirt's QEMU driver opens ``secret:///system``
        unless the calling thread has a secret connection set, and the
        embedded secret driver refuses that URI ("Missing URI parameter
        'root'", libvirt 9.0 and later); and reading a secret's value for
        QEMU needs a current identity, which only libvirt's daemons set.
        They set both per thread (``virSetConnectSecret``,
        ``virIdentitySetCurrent`` with the system identity), with symbols
        libvirt exports for its own modules only; we call them the same
        way, once per thread, with our ``secret:///embed`` connection,
        which lives as long as this process's libvirt root."""
        if self._secret_conn is None or getattr(self._secret_threads, "ready", False):
            return
        capsule = ctypes.pythonapi.PyCapsule_GetPointer
        capsule.argtypes, capsule.restype = [ctypes.py_object, ctypes.c_char_p], ctypes.c_void_p
        pointer = capsule(self._secret_conn._o, b"virConnectPtr")
        lib = ctypes.CDLL("libvirt.so.0")  # the library libvirt-python loaded
        lib.virSetConnectSecret.argtypes = [ctypes.c_void_p]
        lib.virIdentityGetSystem.restype = ctypes.c_void_p
        lib.virIdentitySetCurrent.argtypes = [ctypes.c_void_p]
        system = lib.virIdentityGetSystem()
        if lib.virSetConnectSecret(pointer) < 0 or not system \
                or lib.virIdentitySetCurrent(system) < 0:
            raise HypervisorError(reason="cannot give libvirt's QEMU driver the embedded "
                                  "secret driver (virSetConnectSecret or "
                                  "virIdentitySetCurrent failed)")
        self._secret_threads.ready = True

    @_translated("define the secret")
    def define_secret(self, usage: str, value: bytes) -> str:
        try:
            old = self._secrets.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_ISCSI, usage)
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_SECRET:
                raise
        else:
            self.undefine_secret(str(old.UUIDString()))
        secret = self._secrets.secretDefineXML(
            secret_xml(usage, "CHAP password of a vmops volume"), 0)
        try:
            secret.setValue(value, 0)
        except libvirt.libvirtError:
            secret.undefine()
            raise
        return str(secret.UUIDString())

    @_translated("undefine the secret")
    def undefine_secret(self, uuid: str) -> None:
        try:
            secret = self._secrets.secretLookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_SECRET:
                raise
            return
        root = embed_root(self.uri)
        if root is None:
            secret.undefine()
            return
        # The embedded secret driver of libvirt 9.0 crashes the process on
        # undefine (a call through a null pointer in virSecretUndefine). So
        # the value is overwritten, then the secret's files are removed: it
        # is gone from the disk now, and from libvirt's memory at the next
        # start, which loads the secrets from those files.
        secret.setValue(b"forgotten", 0)
        for suffix in (".xml", ".base64"):
            (root / "etc" / "secrets" / f"{uuid}{suffix}").unlink(missing_ok=True)

    @_translated("list secrets")
    def secrets(self) -> dict[str, str]:
        try:
            found = self._secrets.listAllSecrets(0)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                return {}  # a driver without secrets (test:///default) has none
            raise
        return {str(s.UUIDString()): str(s.usageID()) for s in found}

    # -- events and statistics -------------------------------------------------
    def on_lifecycle_event(self, callback: EventCallback) -> None:
        self._callbacks.append(callback)

    def on_disk_error(self, callback: DiskErrorCallback) -> None:
        self._disk_error_callbacks.append(callback)

    @_translated("read statistics")
    def bulk_stats(self) -> dict[str, dict[str, int | float]]:
        stats: dict[str, dict[str, int | float]] = {}
        for dom, values in self.conn.getAllDomainStats(BULK_STATS, 0):
            # A domain's mark only goes with an undefine (which drops it from
            # _marked), so a known one needs no metadata call: one call per scrape.
            if str(dom.UUIDString()) in self._marked or self._is_marked(dom):
                stats[str(dom.UUIDString())] = {
                    k: (v if isinstance(v, float) else int(v))
                    for k, v in values.items() if isinstance(v, int | float)}
        return stats

    def _queue_event(self, _conn: Any, dom: Any, event: int, detail: int,
                     _opaque: Any) -> None:
        # On libvirt's event loop thread, which with the embedded driver also
        # runs the QEMU monitors: only queue, never call libvirt from here.
        self._events.put(functools.partial(self._deliver, dom, event, detail))

    def _queue_disk_error(self, _conn: Any, dom: Any, _source: str, alias: str, action: int,
                          reason: str, _opaque: Any) -> None:
        # On libvirt's event loop thread too: only queue.
        self._events.put(functools.partial(self._deliver_disk_error, dom, str(alias or ""),
                                           int(action), str(reason or "")))

    def _dispatch_events(self) -> None:
        while (deliver := self._events.get()) is not None:
            try:
                deliver()
            except Exception:  # noqa: BLE001 - one bad callback must not end delivery
                log.exception("delivering a libvirt event (%s)", deliver)

    def _deliver_disk_error(self, dom: Any, alias: str, action: int, reason: str) -> None:
        uuid = str(dom.UUIDString())
        if uuid not in self._marked and not self._is_marked(dom):
            return
        target = ""
        if alias:
            with contextlib.suppress(libvirt.libvirtError):  # the domain ended meanwhile
                target = next((t for t, (_, a) in disks_of(dom.XMLDesc(0)).items()
                               if a == alias), "")
        event = DiskErrorEvent(uuid=uuid, target=target, reason=reason,
                               paused=action == libvirt.VIR_DOMAIN_EVENT_IO_ERROR_PAUSE)
        log.debug("I/O error on disk %s (%s) of %s: reason %r, %s", target or "?", alias,
                  uuid, reason, "guest paused" if event.paused else "reported to the guest")
        for callback in list(self._disk_error_callbacks):
            callback(event)

    def _deliver(self, dom: Any, event: int, detail: int) -> None:
        uuid = str(dom.UUIDString())
        if event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED:
            self._marked.discard(uuid)
            return
        if event == libvirt.VIR_DOMAIN_EVENT_SHUTDOWN:
            self._shutdown_details[uuid] = detail
            return
        shutdown_detail = self._shutdown_details.pop(uuid, None) \
            if event == libvirt.VIR_DOMAIN_EVENT_STOPPED else None
        if uuid not in self._marked and not self._is_marked(dom):
            return
        lifecycle = lifecycle_event(uuid, event, detail, shutdown_detail)
        if lifecycle is None:
            return
        for callback in list(self._callbacks):
            callback(lifecycle)

    # -- helpers ---------------------------------------------------------------
    def _lookup(self, uuid: str) -> Any:
        """The domain with this UUID, marked or not; None if there is none."""
        try:
            return self.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _domain(self, uuid: str) -> Any:
        """vmops' domain with this UUID; InstanceNotFound for others."""
        dom = self._lookup(uuid)
        if dom is None or not self._is_marked(dom):
            raise InstanceNotFound(instance=uuid)
        return dom

    def _checked(self, uuid: str, action: str) -> Any:
        dom = self._domain(uuid)
        check_state(action, uuid, self._power_state(dom))
        return dom

    def _is_marked(self, dom: Any) -> bool:
        uuid = str(dom.UUIDString())
        try:
            dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, VMOPS_XMLNS, 0)
        except libvirt.libvirtError as e:
            if e.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN_METADATA,
                                      libvirt.VIR_ERR_NO_DOMAIN):
                self._marked.discard(uuid)
                return False
            raise
        self._marked.add(uuid)
        return True

    def _power_state(self, dom: Any) -> PowerState:
        state = _POWER_STATE.get(dom.state(0)[0], PowerState.NOSTATE)
        if state is PowerState.SHUTOFF and dom.hasManagedSaveImage(0):
            return PowerState.SUSPENDED
        return state


def _ask_again(dom: Any, element: str, target: str) -> None:
    """The unplug request once more; refused (the device went meanwhile, an
    unplug already under way), the wait goes on and tells."""
    try:
        dom.detachDeviceFlags(element, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    except libvirt.libvirtError as e:
        log.debug("asking again to unplug %s: %s", target, e.get_error_message())


class _Unplug:
    """A live detach waiting for the guest: ``done`` is set by the event."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.released = False


def _create(dom: libvirt.virDomain, paused: bool) -> None:
    if not paused:
        dom.createWithFlags(0)
        return
    _unless_flag_unsupported(lambda: dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED),
                             lambda: (dom.createWithFlags(0), dom.suspend()))


def _serial_pipes_made_again(dom: libvirt.virDomain) -> bool:
    """After a failed start: were the FIFOs of the domain's serial port
    gone (removed behind vmops' back; they live in the state directory's
    ``run``)? Made again if so, and True: QEMU failed for want of them,
    with an error naming neither (``Could not open '....sock'``). A path
    there that is not a FIFO is a HypervisorError naming it."""
    try:
        base = serial_pipe_of(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    except libvirt.libvirtError:
        return False
    if base is None or serial_pipes.exist(base):
        return False
    serial_pipes.make(base)
    log.warning("%s: the FIFOs of its serial port (%s.in, .out) were missing; made "
                "them again to start it again", dom.name(), base)
    return True


def _unless_flag_unsupported(call: Callable[[], object],
                             fallback: Callable[[], object]) -> None:
    """``call``; ``fallback`` if the driver rejects its flags. QEMU takes every
    flag used here; libvirt's test:// driver lacks START_PAUSED,
    SHUTDOWN_ACPI_POWER_BTN and UNDEFINE_NVRAM."""
    try:
        call()
    except libvirt.libvirtError as e:
        if e.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            raise
        fallback()


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"
