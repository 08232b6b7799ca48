"""DomainSpec -> libvirt domain XML, one small dataclass per element group.

Each dataclass knows how to append its elements to a parent; nothing here
formats XML as text, so values are always escaped. Choices (see the tests'
golden files under ``tests/unit/golden/domain/`` for the result):

- machine ``pc`` (i440fx): every guest knows its IDE controller, so a config
  drive CD-ROM can sit on the IDE bus without extra controllers.
- a virtio memballoon always: with ``dynamic_memory_ratio`` > 1 it is what
  lets the guest grow from its starting memory (``autodeflate``: the guest
  deflates it under memory pressure); at ratio 1 it still reports the guest's
  memory statistics, which the metrics read.
- disk cache ``writeback``: it honours guest flushes, and unlike ``none``
  (O_DIRECT) it works on every file system, tmpfs included.
- ``limit_cpu_features``: the named model ``Nehalem`` (x86-64-v2, which
  current distributions need), runnable under TCG and on any x86 host of the
  last 15 years, so the guest sees the same CPU wherever it runs.
  ``check='none'``: libvirt does not compare it to the host's CPU.
  Without the limit: ``host-passthrough`` under KVM, ``maximum`` (QEMU's
  ``-cpu max``: everything TCG can emulate) under TCG.
- no USB controller (``<controller type='usb' model='none'/>``): libvirt
  would add a PIIX3 UHCI one that nothing of vmops uses (no tablet, no USB
  disk, no graphics), and it costs a TCG boot ~0.3 s (5 %) before the
  guest's userspace (docs/performance.md, "Spawn to userspace: where
  libvirt's domain differs from bare QEMU"). The PS/2 keyboard and mouse
  stay: they are part of the ``pc`` machine itself.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from vmops.hypervisor.base import (
    Accel,
    DiskDevice,
    DiskSpec,
    DomainSpec,
    NetworkSource,
    NicSpec,
)

# The mark that tells vmops' domains from a user's other domains.
VMOPS_XMLNS = "https://vmops.dev/xmlns/instance/1"
VMOPS_XMLNS_PREFIX = "vmops"
VMOPS_METADATA_ROOT = "instance"

CPU_BASELINE_MODEL = "Nehalem"
MACHINE_TYPE = "pc"
DISK_CACHE = "writeback"
NETWORK_PROTOCOLS = ("nbd", "iscsi")
BALLOON_STATS_PERIOD_S = 10

_METADATA_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

ET.register_namespace(VMOPS_XMLNS_PREFIX, VMOPS_XMLNS)


def _sub(parent: ET.Element, tag: str, attrs: dict[str, str] | None = None,
         text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs or {})
    if text is not None:
        element.text = text
    return element


@dataclass(frozen=True)
class Memory:
    max_kib: int
    current_kib: int

    @classmethod
    def from_spec(cls, spec: DomainSpec) -> Memory:
        if spec.memory_mib < 1:
            raise ValueError(f"memory_mib must be positive, not {spec.memory_mib}")
        if spec.dynamic_memory_ratio < 1:
            raise ValueError(
                f"dynamic_memory_ratio must be 1 or more, not {spec.dynamic_memory_ratio}")
        current_mib = max(1, int(spec.memory_mib / spec.dynamic_memory_ratio))
        return cls(max_kib=spec.memory_mib * 1024, current_kib=current_mib * 1024)

    def append_to(self, domain: ET.Element) -> None:
        _sub(domain, "memory", {"unit": "KiB"}, str(self.max_kib))
        _sub(domain, "currentMemory", {"unit": "KiB"}, str(self.current_kib))


@dataclass(frozen=True)
class Cpu:
    mode: str  # "custom" | "host-passthrough" | "maximum"
    model: str | None = None

    @classmethod
    def from_spec(cls, spec: DomainSpec) -> Cpu:
        if spec.limit_cpu_features:
            return cls(mode="custom", model=CPU_BASELINE_MODEL)
        if spec.accel is Accel.KVM:
            return cls(mode="host-passthrough")
        return cls(mode="maximum")

    def append_to(self, domain: ET.Element) -> None:
        if self.model is None:
            _sub(domain, "cpu", {"mode": self.mode})
            return
        cpu = _sub(domain, "cpu", {"mode": self.mode, "match": "exact", "check": "none"})
        _sub(cpu, "model", {"fallback": "forbid"}, self.model)


@dataclass(frozen=True)
class Disk:
    spec: DiskSpec

    def append_to(self, devices: ET.Element) -> None:
        s = self.spec
        cdrom = s.device is DiskDevice.CDROM
        kind = "file" if s.network is None else "network"
        disk = _sub(devices, "disk", {"type": kind, "device": s.device.value})
        driver = {"name": "qemu", "type": s.format, "cache": DISK_CACHE}
        if not cdrom and not s.readonly:
            driver["discard"] = "unmap"  # a trimmed block frees space in the qcow2 file
        _sub(disk, "driver", driver)
        if s.network is None:
            _sub(disk, "source", {"file": str(s.path)})
        else:
            NetworkDiskSource(s.network).append_to(disk)
        _sub(disk, "target", {"dev": s.target, "bus": s.bus.value})
        if cdrom or s.readonly:
            _sub(disk, "readonly")


@dataclass(frozen=True)
class NetworkDiskSource:
    """``<source protocol=...>`` of a network disk: its host (or NBD's UNIX
    socket) and, for CHAP, ``<auth>`` naming the libvirt secret by uuid."""

    source: NetworkSource

    def append_to(self, disk: ET.Element) -> None:
        n = self.source
        if n.protocol not in NETWORK_PROTOCOLS:
            raise ValueError(f"unknown disk protocol {n.protocol!r}: nbd or iscsi")
        element = _sub(disk, "source", {"protocol": n.protocol, "name": n.name})
        if n.socket:
            _sub(element, "host", {"transport": "unix", "socket": n.socket})
        else:
            _sub(element, "host", {"name": n.host, "port": str(n.port)})
        if n.auth_user:
            if not n.secret_uuid:
                raise ValueError(f"CHAP user {n.auth_user!r} without a secret")
            auth = _sub(element, "auth", {"username": n.auth_user})
            _sub(auth, "secret", {"type": "iscsi", "uuid": n.secret_uuid})

    @staticmethod
    def parse(element: ET.Element) -> NetworkSource:
        """The network source libvirt kept (the inverse of append_to)."""
        host = element.find("host")
        auth, secret = element.find("auth"), element.find("auth/secret")
        return NetworkSource(
            protocol=element.get("protocol") or "", name=element.get("name") or "",
            host=(host.get("name") or "") if host is not None else "",
            port=int(host.get("port") or 0) if host is not None else 0,
            socket=(host.get("socket") or "") if host is not None else "",
            auth_user=(auth.get("username") or "") if auth is not None else "",
            secret_uuid=(secret.get("uuid") or "") if secret is not None else "")


@dataclass(frozen=True)
class Interface:
    spec: NicSpec

    def append_to(self, devices: ET.Element) -> None:
        s = self.spec
        if s.kind not in ("user", "network", "bridge"):
            raise ValueError(f"unknown NIC kind {s.kind!r}: user, network or bridge")
        nic = _sub(devices, "interface", {"type": s.kind})
        _sub(nic, "mac", {"address": s.mac.lower()})
        if s.kind != "user":
            if not s.source:
                raise ValueError(f"a {s.kind!r} NIC needs a source (the {s.kind}'s name)")
            _sub(nic, "source", {s.kind: s.source})
        if s.target:
            _sub(nic, "target", {"dev": s.target})
        _sub(nic, "model", {"type": s.model})


@dataclass(frozen=True)
class SerialConsole:
    """Serial port 0 as QEMU's pipe chardev: the FIFOs ``path.in`` and
    ``path.out`` (``vmops/serial_pipes.py``), read and written by the
    console process."""

    path: Path

    def append_to(self, devices: ET.Element) -> None:
        serial = _sub(devices, "serial", {"type": "pipe"})
        _sub(serial, "source", {"path": str(self.path)})
        _sub(serial, "target", {"port": "0"})
        console = _sub(devices, "console", {"type": "pipe"})
        _sub(console, "source", {"path": str(self.path)})
        _sub(console, "target", {"type": "serial", "port": "0"})


@dataclass(frozen=True)
class Balloon:
    autodeflate: bool

    def append_to(self, devices: ET.Element) -> None:
        attrs = {"model": "virtio"}
        if self.autodeflate:
            attrs["autodeflate"] = "on"
        balloon = _sub(devices, "memballoon", attrs)
        _sub(balloon, "stats", {"period": str(BALLOON_STATS_PERIOD_S)})


@dataclass(frozen=True)
class Metadata:
    """vmops' mark, with the spec's key/value pairs as child elements."""

    items: tuple[tuple[str, str], ...]

    @classmethod
    def from_spec(cls, spec: DomainSpec) -> Metadata:
        for key in spec.metadata:
            if not _METADATA_KEY.match(key):
                raise ValueError(f"metadata key {key!r} is not [a-z][a-z0-9_-]*")
        return cls(items=tuple(sorted(spec.metadata.items())))

    def append_to(self, domain: ET.Element) -> None:
        metadata = _sub(domain, "metadata")
        mark = _sub(metadata, f"{{{VMOPS_XMLNS}}}{VMOPS_METADATA_ROOT}")
        for key, value in self.items:
            _sub(mark, f"{{{VMOPS_XMLNS}}}{key}", text=value)


@dataclass(frozen=True)
class Domain:
    virt_type: str
    name: str
    uuid: str
    metadata: Metadata
    memory: Memory
    vcpus: int
    cpu: Cpu
    disks: tuple[Disk, ...]
    interfaces: tuple[Interface, ...]
    console: SerialConsole
    balloon: Balloon
    emulator: str | None

    @classmethod
    def from_spec(cls, spec: DomainSpec) -> Domain:
        if spec.vcpus < 1:
            raise ValueError(f"vcpus must be positive, not {spec.vcpus}")
        return cls(
            virt_type="kvm" if spec.accel is Accel.KVM else "qemu",
            name=spec.name,
            uuid=spec.uuid.lower(),
            metadata=Metadata.from_spec(spec),
            memory=Memory.from_spec(spec),
            vcpus=spec.vcpus,
            cpu=Cpu.from_spec(spec),
            disks=tuple(Disk(d) for d in spec.disks),
            interfaces=tuple(Interface(n) for n in spec.nics),
            console=SerialConsole(spec.console_socket),
            balloon=Balloon(autodeflate=spec.dynamic_memory_ratio > 1),
            emulator=spec.emulator,
        )

    def element(self) -> ET.Element:
        domain = ET.Element("domain", {"type": self.virt_type})
        _sub(domain, "name", text=self.name)
        _sub(domain, "uuid", text=self.uuid)
        self.metadata.append_to(domain)
        self.memory.append_to(domain)
        _sub(domain, "vcpu", {"placement": "static"}, str(self.vcpus))
        os_ = _sub(domain, "os")
        _sub(os_, "type", {"arch": "x86_64", "machine": MACHINE_TYPE}, "hvm")
        _sub(os_, "boot", {"dev": "hd"})
        features = _sub(domain, "features")
        _sub(features, "acpi")
        _sub(features, "apic")
        self.cpu.append_to(domain)
        _sub(domain, "clock", {"offset": "utc"})
        _sub(domain, "on_poweroff", text="destroy")
        _sub(domain, "on_reboot", text="restart")
        _sub(domain, "on_crash", text="destroy")
        self._append_devices(domain)
        return domain

    def _append_devices(self, domain: ET.Element) -> None:
        devices = _sub(domain, "devices")
        if self.emulator:
            _sub(devices, "emulator", text=self.emulator)
        for disk in self.disks:
            disk.append_to(devices)
        for nic in self.interfaces:
            nic.append_to(devices)
        _sub(devices, "controller", {"type": "usb", "model": "none"})
        self.console.append_to(devices)
        self.balloon.append_to(devices)


def build_domain_xml(spec: DomainSpec) -> str:
    """The domain XML for ``spec``: deterministic, indented, no XML declaration."""
    root = Domain.from_spec(spec).element()
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def disk_xml(spec: DiskSpec) -> str:
    """One ``<disk>`` element, as in a domain, for attach and detach calls."""
    holder = ET.Element("devices")
    Disk(spec).append_to(holder)
    return ET.tostring(holder[0], encoding="unicode")


def disks_of(domain_xml: str) -> dict[str, tuple[str, str]]:
    """The disks of a domain's XML: target -> (source file or network URL,
    alias); the alias is only in a running domain's live XML ('' otherwise)."""
    found: dict[str, tuple[str, str]] = {}
    for disk in ET.fromstring(domain_xml).iterfind("./devices/disk"):
        target = disk.find("target")
        if target is None or not target.get("dev"):
            continue
        source, alias = disk.find("source"), disk.find("alias")
        if source is None:
            where = ""
        elif disk.get("type") == "network":
            where = NetworkDiskSource.parse(source).url
        else:
            where = source.get("file") or ""
        found[str(target.get("dev"))] = (
            where, (alias.get("name") or "") if alias is not None else "")
    return found


def disk_element(domain_xml: str, target: str) -> str | None:
    """The ``<disk>`` element of ``target`` in a domain's XML, as libvirt
    wrote it (what a detach call is given back); None if there is none."""
    for disk in ET.fromstring(domain_xml).iterfind("./devices/disk"):
        found = disk.find("target")
        if found is not None and found.get("dev") == target:
            return ET.tostring(disk, encoding="unicode")
    return None


def serial_pipe_of(domain_xml: str) -> Path | None:
    """The chardev path of the domain's serial port if it is a ``pipe``
    (``serial_pipes``: the FIFOs are that path plus ``.in`` and ``.out``);
    None for any other serial port or none."""
    for serial in ET.fromstring(domain_xml).iterfind("./devices/serial"):
        source = serial.find("source")
        if serial.get("type") == "pipe" and source is not None and source.get("path"):
            return Path(str(source.get("path")))
    return None


def secret_xml(usage: str, description: str) -> str:
    """A persistent, private libvirt secret of usage type iscsi (CHAP):
    libvirt keeps its value on disk and never hands it out over its API."""
    secret = ET.Element("secret", {"ephemeral": "no", "private": "yes"})
    _sub(secret, "description", text=description)
    _sub(_sub(secret, "usage", {"type": "iscsi"}), "target", text=usage)
    return ET.tostring(secret, encoding="unicode")
