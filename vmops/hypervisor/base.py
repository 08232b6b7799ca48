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


class Accel(enum.Enum):
    KVM = "kvm"
    TCG = "tcg"


class DiskBus(enum.Enum):
    VIRTIO = "virtio"
    SATA = "sata"
    IDE = "ide"


class DiskDevice(enum.Enum):
    DISK = "disk"
    CDROM = "cdrom"


@dataclass(frozen=True)
class DiskSpec:
    path: Path
    format: str  # "qcow2" | "raw": always explicit, never probed
    target: str  # "vda", "vdb", "sda" (cdrom)
    bus: DiskBus = DiskBus.VIRTIO
    device: DiskDevice = DiskDevice.DISK
    readonly: bool = False


@dataclass(frozen=True)
class NicSpec:
    mac: str
    model: str = "virtio"
    # "user" (QEMU user-mode networking, no host set-up needed), "network"
    # (a libvirt network by name) or "bridge" (a host bridge by name).
    kind: str = "user"
    source: str | None = None


@dataclass(frozen=True)
class DomainSpec:
    """Everything needed to define one domain. The UUID is the instance id."""

    uuid: str
    name: str
    memory_mib: int
    vcpus: int
    disks: tuple[DiskSpec, ...]
    nics: tuple[NicSpec, ...]
    console_socket: Path  # QEMU serves the serial port here; the capture process reads it
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


EventCallback = Callable[[LifecycleEvent], None]


class Hypervisor(Protocol):
    """Operations on domains vmops created. Others are invisible to it."""

    def connect(self) -> None: ...

    def close(self) -> None: ...

    def capabilities_check(self) -> list[tuple[str, bool, str]]:
        """(item, ok, advice) for doctor: what this hypervisor needs from the host."""
        ...

    def define(self, spec: DomainSpec) -> None: ...

    def domain_xml(self, uuid: str) -> str: ...

    def list_uuids(self) -> list[str]:
        """UUIDs of domains carrying vmops' metadata mark only."""
        ...

    def exists(self, uuid: str) -> bool: ...

    def info(self, uuid: str) -> DomainInfo: ...

    def start(self, uuid: str, paused: bool = False) -> None:
        """Boot (or restore from a managed save image, if one exists)."""
        ...

    def shutdown(self, uuid: str) -> None:
        """Ask the guest to shut down (ACPI power button). Returns at once."""
        ...

    def power_off(self, uuid: str) -> None:
        """Pull the plug (virDomainDestroy). No error if already off."""
        ...

    def reboot_hard(self, uuid: str) -> None: ...

    def pause(self, uuid: str) -> None: ...

    def unpause(self, uuid: str) -> None: ...

    def suspend(self, uuid: str) -> None:
        """Save memory to a managed save image; the QEMU process ends."""
        ...

    def has_saved_memory(self, uuid: str) -> bool: ...

    def undefine(self, uuid: str) -> None:
        """Remove the definition, its managed save image and NVRAM. No error if gone."""
        ...

    def qemu_pid(self, uuid: str) -> int | None: ...

    def on_lifecycle_event(self, callback: EventCallback) -> None: ...
