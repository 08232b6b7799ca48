"""The hypervisor protocol: what compute/ needs from libvirt, in vmops' own types.

Only ``hypervisor/libvirt/`` imports libvirt. ``hypervisor/fake.py``
implements the same protocol in memory for unit tests.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vmops.errors import InvalidState


class PowerState(enum.Enum):
    """A fixed mapping of libvirt's domain states (virDomainState)."""

    NOSTATE = "nostate"
    RUNNING = "running"
    BLOCKED = "blocked"  # running, but idle in the hypervisor
    PAUSED = "paused"
    SHUTDOWN = "shutting-down"  # guest is shutting down
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    PMSUSPENDED = "pmsuspended"
    SUSPENDED = "suspended"  # shut off with a managed save image: memory on disk


# States in which a QEMU process exists for the domain.
ACTIVE_STATES = frozenset({
    PowerState.RUNNING, PowerState.BLOCKED, PowerState.PAUSED, PowerState.SHUTDOWN,
    PowerState.PMSUSPENDED,
})

# The power states each operation is allowed from: one table, so the libvirt
# driver and the fake refuse exactly the same things.
ALLOWED_STATES: dict[str, frozenset[PowerState]] = {
    "start": frozenset({PowerState.SHUTOFF, PowerState.CRASHED, PowerState.SUSPENDED,
                        PowerState.NOSTATE}),
    "shut down": frozenset({PowerState.RUNNING, PowerState.BLOCKED, PowerState.SHUTDOWN}),
    "hard-reboot": ACTIVE_STATES,
    "pause": frozenset({PowerState.RUNNING, PowerState.BLOCKED}),
    "unpause": frozenset({PowerState.PAUSED}),
    "suspend": frozenset({PowerState.RUNNING, PowerState.BLOCKED, PowerState.PAUSED}),
    "inject an NMI into": frozenset({PowerState.RUNNING, PowerState.BLOCKED}),
    "undefine": frozenset(PowerState) - ACTIVE_STATES,
    "discard the saved memory of": frozenset(PowerState) - ACTIVE_STATES,
    "attach a disk to": frozenset(PowerState) - {PowerState.SUSPENDED},
    "detach a disk from": frozenset(PowerState) - {PowerState.SUSPENDED},
    "resize a disk of": ACTIVE_STATES,
}


def check_state(action: str, uuid: str, state: PowerState) -> None:
    """Raise InvalidState unless ``action`` (a key of ALLOWED_STATES) is allowed."""
    if state not in ALLOWED_STATES[action]:
        raise InvalidState(action=action, instance=uuid, state=state.value)


class Accel(enum.Enum):
    KVM = "kvm"
    TCG = "tcg"


class DiskBus(enum.Enum):
    VIRTIO = "virtio"
    IDE = "ide"


class DiskDevice(enum.Enum):
    DISK = "disk"
    CDROM = "cdrom"


@dataclass(frozen=True)
class NetworkSource:
    """A disk QEMU opens over the network itself (libvirt's ``<disk
    type='network'>``): an NBD export or an iSCSI LUN. The CHAP password is
    never here: only the uuid of the libvirt secret holding it."""

    protocol: str  # "nbd" | "iscsi"
    name: str  # the NBD export name; for iSCSI "IQN/LUN"
    host: str = ""
    port: int = 0
    socket: str = ""  # NBD over a UNIX socket instead of host and port
    auth_user: str = ""  # CHAP (iSCSI): the user, and the secret with its password
    secret_uuid: str = ""

    @property
    def url(self) -> str:
        """QEMU's URL for it (nbd://, nbd+unix://, iscsi://), without the secret."""
        if self.socket:
            return f"nbd+unix:///{self.name}?socket={self.socket}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol}://{host}:{self.port}/{self.name}"


@dataclass(frozen=True)
class DiskSpec:
    path: Path  # a file (unused when ``network`` is set)
    format: str  # "qcow2" | "raw": always explicit, never probed
    target: str  # "vda", "vdb", "sda" (cdrom)
    bus: DiskBus = DiskBus.VIRTIO
    device: DiskDevice = DiskDevice.DISK
    readonly: bool = False
    network: NetworkSource | None = None

    @property
    def source(self) -> str:
        """What the disk is: its file's path, or its network source's URL."""
        return self.network.url if self.network is not None else str(self.path)


@dataclass(frozen=True)
class NicSpec:
    mac: str
    model: str = "virtio"
    # "user" (QEMU user-mode networking, no host set-up needed), "network"
    # (a libvirt network by name) or "bridge" (a host bridge by name).
    kind: str = "user"
    source: str | None = None
    # The tap's name (bridge NICs): chosen by vmops, so its firewall rules
    # can name the tap before the domain exists.
    target: str | None = None


@dataclass(frozen=True)
class DomainSpec:
    """Everything needed to define one domain. The UUID is the instance id."""

    uuid: str
    name: str
    memory_mib: int
    vcpus: int
    disks: tuple[DiskSpec, ...]
    nics: tuple[NicSpec, ...]
    # The serial port's chardev path: the FIFOs path.in and path.out
    # (vmops/serial_pipes.py), which the console process reads and writes.
    console_socket: Path
    accel: Accel = Accel.TCG
    # dynamic_memory_ratio > 1: the guest starts with memory_mib / ratio and a
    # balloon lets it grow up to memory_mib.
    dynamic_memory_ratio: float = 1.0
    limit_cpu_features: bool = False
    metadata: dict[str, str] = field(default_factory=dict)  # stored in vmops' namespace
    emulator: str | None = None


@dataclass(frozen=True)
class DomainInfo:
    uuid: str
    name: str
    state: PowerState
    max_memory_kib: int
    memory_kib: int
    vcpus: int
    cpu_time_ns: int


@dataclass(frozen=True)
class LifecycleEvent:
    uuid: str
    state: PowerState
    detail: str  # e.g. "shutdown", "crashed", "started", "suspended"
    # Why the domain stopped when neither the guest nor vmops asked it to
    # (QEMU killed, the guest crashed), in the user's words; "" otherwise.
    fault: str = ""


EventCallback = Callable[[LifecycleEvent], None]


@dataclass(frozen=True)
class DiskErrorEvent:
    """QEMU could not read or write a disk of a running domain (libvirt's
    I/O error event): for a network disk, usually its target went away."""

    uuid: str
    target: str  # the disk's target ("vdb"); "" when libvirt could not name it
    reason: str  # libvirt's: "enospc" (no space left); "" for an EIO (what QEMU 7.2 gives)
    # True: QEMU paused the guest for it (the error policy "stop", QEMU's
    # default for ENOSPC); False: the guest got the error (an EIO).
    paused: bool


DiskErrorCallback = Callable[[DiskErrorEvent], None]


@dataclass(frozen=True)
class Check:
    """One host check, as ``vmops doctor`` prints it.

    ``required``: the service refuses to spawn while it fails; otherwise it
    is informational. ``advice`` says how to fix a failure.
    """

    name: str
    ok: bool
    required: bool
    detail: str
    advice: str = ""


class Hypervisor(Protocol):
    """Operations on domains vmops created. Others are invisible to it.

    Every method taking a UUID raises InstanceNotFound when no vmops domain
    has it, and InvalidState when the domain's power state does not allow
    the operation (the states allowed are named on each method). Any other
    failure is a HypervisorError.
    """

    def connect(self) -> None: ...

    def close(self) -> None: ...

    def capabilities_check(self) -> list[Check]:
        """For doctor: what this hypervisor needs from the host, checked live."""
        ...

    def define(self, spec: DomainSpec) -> None:
        """Create the persistent definition, or update vmops' own domain with
        this UUID. Refused (AlreadyExists) if the UUID or the name belongs to
        a domain that is not vmops'."""
        ...

    def domain_xml(self, uuid: str) -> str: ...

    def list_uuids(self) -> list[str]:
        """UUIDs of domains carrying vmops' metadata mark only."""
        ...

    def exists(self, uuid: str) -> bool: ...

    def info(self, uuid: str) -> DomainInfo: ...

    def start(self, uuid: str, paused: bool = False) -> None:
        """Boot (or restore from a managed save image, if one exists).

        From SHUTOFF, CRASHED or SUSPENDED."""
        ...

    def shutdown(self, uuid: str) -> None:
        """Ask the guest to shut down (ACPI power button). Returns at once.

        From RUNNING, BLOCKED or SHUTDOWN (pressing the button again)."""
        ...

    def power_off(self, uuid: str) -> None:
        """Pull the plug (virDomainDestroy). No error if already off.

        A managed save image is kept: a SUSPENDED domain stays SUSPENDED, and
        undefine removes the image with the definition."""
        ...

    def reboot_hard(self, uuid: str) -> None:
        """Reset the virtual machine at once, like its reset button; the QEMU
        process stays and a paused domain stays paused. From any running state."""
        ...

    def pause(self, uuid: str) -> None:
        """Stop the vCPUs; memory stays in QEMU. From RUNNING or BLOCKED."""
        ...

    def unpause(self, uuid: str) -> None:
        """From PAUSED."""
        ...

    def suspend(self, uuid: str) -> None:
        """Save memory to a managed save image; the QEMU process ends.

        From RUNNING, BLOCKED or PAUSED; afterwards the state is SUSPENDED."""
        ...

    def discard_saved_memory(self, uuid: str) -> None:
        """Remove the managed save image (libvirt's managedSaveRemove), so
        the next start boots the guest afresh: a SUSPENDED domain becomes
        SHUTOFF, with no lifecycle event (libvirt sends none). No error if
        there is none. Refused while the domain runs."""
        ...

    def inject_nmi(self, uuid: str) -> None:
        """Send a non-maskable interrupt to the guest's CPUs (what a crash
        dump is triggered with: the guest kernel decides what it does).

        From RUNNING or BLOCKED."""
        ...

    def undefine(self, uuid: str) -> None:
        """Remove the definition, its managed save image and NVRAM. No error if gone.

        Refused while the domain runs: power it off first."""
        ...

    def qemu_pid(self, uuid: str) -> int | None:
        """The QEMU process of a running domain; None when it has none."""
        ...

    def attach_disk(self, uuid: str, disk: DiskSpec) -> None:
        """Add ``disk`` to the persistent definition and, while QEMU runs,
        hot-plug it into the guest (libvirt's attach with CONFIG|LIVE).

        From any state but SUSPENDED (the saved memory knows the old
        devices). AlreadyExists if the domain has a disk with its target."""
        ...

    def detach_disk(self, uuid: str, target: str, timeout: float) -> None:
        """Take the disk ``target`` out: from the running guest first, waiting
        up to ``timeout`` seconds for the guest to release it (libvirt's
        device-removed event), then from the persistent definition.

        If the guest does not release it in time, DetachTimeout is raised
        and the disk stays in the definition (the guest may still write to
        it). A disk the domain does not have is not an error. Not while
        SUSPENDED."""
        ...

    def resize_disk(self, uuid: str, target: str, size_bytes: int) -> None:
        """Grow disk ``target`` of a domain whose QEMU runs to ``size_bytes``:
        QEMU grows its image and tells the guest (libvirt's block resize).
        From any state with a QEMU process; a disk the domain does not have
        is a HypervisorError."""
        ...

    def disk_targets(self, uuid: str) -> dict[str, str]:
        """The disks of the persistent definition: target -> source
        (:attr:`DiskSpec.source`: a path, or a network disk's URL)."""
        ...

    def define_secret(self, usage: str, value: bytes) -> str:
        """Keep ``value`` (a CHAP password) as a private, persistent libvirt
        secret of usage type iscsi named ``usage``; its uuid. A disk's
        network source names it by uuid: the value never enters the domain
        XML. A secret with this usage already is replaced."""
        ...

    def undefine_secret(self, uuid: str) -> None:
        """Forget a secret; no error if it is gone."""
        ...

    def secrets(self) -> dict[str, str]:
        """Every secret: uuid -> usage name."""
        ...

    def on_lifecycle_event(self, callback: EventCallback) -> None:
        """Call ``callback`` for every state change of a vmops domain.

        Callbacks run on one vmops thread, in event order, never on the
        hypervisor's own event loop: they may call back into the hypervisor.
        """
        ...

    def on_disk_error(self, callback: DiskErrorCallback) -> None:
        """Call ``callback`` each time QEMU reports an I/O error on a disk of
        a vmops domain; on the same thread, and with the same rules, as the
        lifecycle callbacks."""
        ...

    def bulk_stats(self) -> dict[str, dict[str, int | float]]:
        """Numeric statistics of every vmops domain, by UUID, in one query.

        Keys are libvirt's (``state.state``, ``cpu.time``, ``balloon.current``,
        ``vcpu.0.time``, ``net.0.rx.bytes``, ``block.0.rd.bytes``, ...).
        """
        ...
