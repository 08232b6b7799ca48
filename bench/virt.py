"""The baselines: the same domain through libvirt-python directly, in an
embed root of the bench's own, and the same disks under a bare
``qemu-system-x86_64``.

The libvirt root gets vmops' own ``qemu.conf`` (``prepare_embed_root``), so
both sides run QEMU with the same settings. Only one process may hold an
embed root, and a process can hold only one: the bench process holds the
baseline's root, the vmops service holds its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import kill_pids, now, pids_mentioning, short_tmpdir, wait_until
from bench.quiet_libvirt import libvirt
from vmops import serial_pipes
from vmops.hypervisor.libvirt import prepare_embed_root

ET.register_namespace("vmops", "https://vmops.dev/xmlns/instance/1")

_event_loop_started = False
_event_loop_lock = threading.Lock()


def _ensure_event_loop() -> None:
    """libvirt's default event loop on a daemon thread, once per process,
    before the first connection (the embedded driver needs it)."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt.virEventRegisterDefaultImpl()

        def loop() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=loop, name="bench-libvirt-events", daemon=True).start()
        _event_loop_started = True


# -- disks -----------------------------------------------------------------------

def qemu_img_info(path: Path) -> dict[str, Any]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    info: dict[str, Any] = json.loads(out)
    return info


@dataclass(frozen=True)
class DiskTemplate:
    """How to make a fresh copy of one of vmops' disks for a baseline."""

    source: Path  # vmops' file
    format: str
    virtual_size: int
    backing: Path | None  # the baseline's own copy of the base image
    backing_format: str | None

    def make(self, dest: Path) -> None:
        if self.backing is not None:
            subprocess.run(["qemu-img", "create", "-q", "-f", self.format, "-b",
                            str(self.backing), "-F", str(self.backing_format), str(dest),
                            str(self.virtual_size)], check=True)
        elif self.format == "qcow2":
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(dest),
                            str(self.virtual_size)], check=True)
        else:
            shutil.copyfile(self.source, dest)


def disk_templates(domain_xml: str, bases_dir: Path) -> dict[str, DiskTemplate]:
    """For each disk of the domain (by target dev): how to copy it. A qcow2
    overlay becomes a fresh overlay on a copy of its base, taken once into
    ``bases_dir`` so the baseline never reads vmops' image cache."""
    templates = {}
    for disk in ET.fromstring(domain_xml).iter("disk"):
        source = disk.find("source")
        target = disk.find("target")
        if source is None or target is None or "file" not in source.attrib:
            continue
        path = Path(source.attrib["file"])
        info = qemu_img_info(path)
        backing = None
        backing_format = None
        if info.get("backing-filename"):
            original = Path(info.get("full-backing-filename") or info["backing-filename"])
            backing_format = str(info.get("backing-filename-format") or
                                 qemu_img_info(original)["format"])
            bases_dir.mkdir(parents=True, exist_ok=True)
            backing = bases_dir / f"{original.name}.{backing_format}"
            if not backing.exists():
                shutil.copyfile(original, backing)
        fmt = str(info["format"])
        if backing is None and fmt != "qcow2":
            # A file with content of its own (the config drive): keep a copy,
            # vmops removes its own with the instance.
            bases_dir.mkdir(parents=True, exist_ok=True)
            kept = bases_dir / f"{target.attrib['dev']}-{path.name}"
            shutil.copyfile(path, kept)
            path = kept
        templates[target.attrib["dev"]] = DiskTemplate(
            source=path, format=fmt, virtual_size=int(info["virtual-size"]),
            backing=backing, backing_format=backing_format)
    return templates


def make_disks(templates: dict[str, DiskTemplate], workdir: Path) -> dict[str, Path]:
    """Fresh copies of every disk in ``workdir``; maps target dev to path."""
    workdir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for dev, template in templates.items():
        dest = workdir / f"{dev}.{template.format}"
        dest.unlink(missing_ok=True)
        template.make(dest)
        paths[dev] = dest
    return paths


def rewrite_domain_xml(domain_xml: str, name: str, uuid: str, disks: dict[str, Path],
                       console_socket: Path, serial_file: Path | None = None) -> str:
    """vmops' domain with another name, UUID, disk files and serial socket
    (or, with ``serial_file``, the serial port written to that file)."""
    root = ET.fromstring(domain_xml)
    for tag, value in (("name", name), ("uuid", uuid)):
        element = root.find(tag)
        if element is None:
            raise ValueError(f"domain XML without <{tag}>")
        element.text = value
    for disk in root.iter("disk"):
        source = disk.find("source")
        target = disk.find("target")
        if source is not None and target is not None and target.attrib["dev"] in disks:
            source.set("file", str(disks[target.attrib["dev"]]))
    for kind in ("serial", "console"):
        for dev in root.iter(kind):
            source = dev.find("source")
            if source is None or "path" not in source.attrib:
                continue
            if serial_file is None:
                source.set("path", str(console_socket))
            else:
                dev.set("type", "file")
                source.attrib.clear()
                source.set("path", str(serial_file))
    return ET.tostring(root, encoding="unicode")


# -- libvirt ---------------------------------------------------------------------

class LibvirtBaseline:
    """libvirt-python on an embed root of its own, warmed up before any timing."""

    def __init__(self) -> None:
        self.dir = short_tmpdir("lv")
        self.root = self.dir / "root"
        self.run_dir = self.dir / "run"
        self.run_dir.mkdir()
        self.conn: Any = None
        self.drain = SerialDrain()

    @property
    def uri(self) -> str:
        return f"qemu:///embed?root={self.root}"

    def open(self) -> None:
        prepare_embed_root(self.root)
        _ensure_event_loop()
        self.conn = libvirt.open(self.uri)
        self._warm_up()

    def _warm_up(self) -> None:
        """The first define in a new root probes QEMU's capabilities (seconds)."""
        xml = ("<domain type='qemu'><name>bench-warmup</name><memory unit='MiB'>64</memory>"
               "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>")
        self.conn.defineXML(xml).undefine()

    def define(self, xml: str) -> Any:
        """Define ``xml``; a serial port of FIFOs (vmops' domains) gets them
        made and read (``SerialDrain``), as vmops' console process does."""
        for source in ET.fromstring(xml).iterfind("devices/serial[@type='pipe']/source"):
            base = Path(source.attrib["path"])
            serial_pipes.make(base)
            self.drain.add(serial_pipes.paths(base)[1])
        return self.conn.defineXML(xml)

    def domains(self) -> list[Any]:
        return list(self.conn.listAllDomains(0))

    def remove(self, dom: Any) -> None:
        """Power off and undefine, saved memory included; no error if gone."""
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)

    def remove_all(self) -> None:
        if self.conn is None:
            return
        for dom in self.domains():
            self.remove(dom)

    def close(self) -> None:
        try:
            self.remove_all()
            if self.conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self.conn.close()
                self.conn = None
        finally:
            kill_pids(pids_mentioning(str(self.dir)))
            self.drain.close()
            shutil.rmtree(self.dir, ignore_errors=True)


class SerialDrain:
    """Reads and drops what the baseline's guests write to their serial
    port's FIFO, so that, as under vmops, a guest never waits for a reader
    (a pipe nobody reads stalls the guest's UART once full). One thread,
    one epoll; each FIFO opened read-write, so it never reports an end
    between two QEMUs."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.fds: dict[Path, int] = {}
        self.stop_r, self.stop_w = os.pipe()
        self.epoll.register(self.stop_r, select.EPOLLIN)
        self.thread: threading.Thread | None = None

    def add(self, fifo: Path) -> None:
        if fifo in self.fds:  # a path used again (the next round's domain)
            return
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.fds[fifo] = fd
        self.epoll.register(fd, select.EPOLLIN)
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="serial-drain", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while True:
            for fd, _ in self.epoll.poll():
                if fd == self.stop_r:
                    return
                with contextlib.suppress(BlockingIOError):
                    os.read(fd, 65536)

    def close(self) -> None:
        if self.thread is not None:
            os.write(self.stop_w, b"x")
            self.thread.join(timeout=5)
        for fd in (*self.fds.values(), self.stop_r, self.stop_w):
            os.close(fd)
        self.epoll.close()


def new_uuid() -> str:
    return str(uuidlib.uuid4())


# -- bare QEMU -------------------------------------------------------------------

def qemu_command(domain_xml: str, disks: dict[str, Path], qmp: Path,
                 serial: list[str]) -> list[str]:
    """The QEMU command line for what vmops' domain XML describes (machine,
    memory, vCPUs, CPU model, disks with their formats and cache mode, the
    NIC, the balloon), without libvirt: TCG, no display, no defaults."""
    root = ET.fromstring(domain_xml)
    memory_kib = int(root.findtext("memory", "524288"))
    vcpus = int(root.findtext("vcpu", "1"))
    os_type = root.find("os/type")
    machine = os_type.get("machine", "pc") if os_type is not None else "pc"
    cpu = root.find("cpu")
    cpu_model = "max"
    if cpu is not None and cpu.get("mode") == "custom":
        cpu_model = cpu.findtext("model", "max")
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-machine", machine,
           "-cpu", cpu_model, "-m", f"{memory_kib // 1024}M", "-smp", str(vcpus),
           "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
           "-qmp", f"unix:{qmp},server=on,wait=off", *serial]
    for disk in root.iter("disk"):
        target = disk.find("target")
        driver = disk.find("driver")
        if target is None or target.attrib["dev"] not in disks:
            continue
        dev = target.attrib["dev"]
        fmt = driver.get("type", "raw") if driver is not None else "raw"
        cache = driver.get("cache", "writeback") if driver is not None else "writeback"
        opts = [f"file={disks[dev]}", f"format={fmt}", f"cache={cache}"]
        if disk.get("device") == "cdrom":
            index = "abcd".index(dev[-1])
            opts += ["media=cdrom", "if=ide", f"index={index}", "readonly=on"]
        else:
            opts += ["if=virtio"]
            if disk.find("readonly") is not None:
                opts.append("readonly=on")
            if driver is not None and driver.get("discard"):
                opts.append(f"discard={driver.get('discard')}")
        cmd += ["-drive", ",".join(opts)]
    for nic in root.iter("interface"):
        mac = nic.find("mac")
        model = nic.find("model")
        kind = model.get("type", "virtio") if model is not None else "virtio"
        device = "virtio-net-pci" if kind == "virtio" else kind
        address = f",mac={mac.get('address')}" if mac is not None else ""
        cmd += ["-nic", f"user,model={device}{address}"]
    if root.find("devices/memballoon[@model='virtio']") is not None:
        cmd += ["-device", "virtio-balloon-pci"]
    return cmd


class Qmp:
    """Just enough of the QEMU Machine Protocol: connect, execute."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX)
            try:
                sock.connect(str(path))
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.002)
        sock.settimeout(timeout)
        self.sock = sock
        self.reader = sock.makefile("r")
        self.reader.readline()  # greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str) -> Any:
        self.sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
        while True:
            reply = json.loads(self.reader.readline())
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@dataclass
class QemuGuest:
    """A bare QEMU process, its QMP socket and (optionally) its serial log."""

    proc: subprocess.Popen[bytes]
    qmp_path: Path
    serial_log: Path | None
    started: float
    qmp: Qmp | None = field(default=None)

    def wait_running(self, timeout: float = 60.0) -> None:
        self.qmp = Qmp(self.qmp_path, timeout)
        wait_until(lambda: self._status() == "running", timeout, 0.002, "QEMU running")

    def _status(self) -> str:
        if self.proc.poll() is not None:
            raise RuntimeError(f"QEMU exited with status {self.proc.returncode}")
        assert self.qmp is not None
        return str(self.qmp.execute("query-status")["status"])

    def console(self) -> bytes:
        if self.serial_log is None or not self.serial_log.exists():
            return b""
        return self.serial_log.read_bytes()

    def stop(self) -> None:
        if self.qmp is not None:
            with contextlib.suppress(OSError):
                self.qmp.close()
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)


def launch_qemu(domain_xml: str, disks: dict[str, Path], workdir: Path,
                serial_to_file: bool) -> QemuGuest:
    """Start QEMU for the domain's devices on ``disks``. The serial port goes
    to a file (to watch the guest boot) or to a listening socket like
    libvirt's (nothing reads it)."""
    qmp = workdir / "qmp.sock"
    qmp.unlink(missing_ok=True)
    log = workdir / "serial.log" if serial_to_file else None
    if log is not None:
        log.unlink(missing_ok=True)
        serial = ["-serial", f"file:{log}"]
    else:
        sock = workdir / "serial.sock"
        sock.unlink(missing_ok=True)
        serial = ["-chardev", f"socket,id=ser0,path={sock},server=on,wait=off",
                  "-serial", "chardev:ser0"]
    cmd = qemu_command(domain_xml, disks, qmp, serial)
    started = now()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=(workdir / "qemu.err").open("ab"), start_new_session=True)
    return QemuGuest(proc=proc, qmp_path=qmp, serial_log=log, started=started)
