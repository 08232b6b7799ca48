"""Smoke tests for the test guest image (tools/testimage), booted with bare QEMU.

No libvirt here: this checks the image itself, so that libvirt-level tests can
trust its VMOPS-* markers. Always TCG (nested KVM is unreliable on CI hosts).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tools" / "testimage" / "build.py"
MAC = "52:54:00:12:34:56"
BOOT_TIMEOUT = 90.0  # a wait bound only; a TCG boot normally takes ~6-7 s

pytestmark = [
    pytest.mark.functional,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed"
    ),
]


@pytest.fixture(scope="session")
def images() -> dict[str, Path]:
    """Build (or reuse the cached) images; maps file name to path."""
    proc = subprocess.run(
        [sys.executable, str(BUILD)], capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stderr
    paths = [Path(line) for line in proc.stdout.split()]
    return {p.name: p for p in paths}


class Qmp:
    """Just enough of the QEMU Machine Protocol to send commands."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.sock.settimeout(timeout)
        self.reader = self.sock.makefile("r")
        self.reader.readline()  # greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str) -> object:
        self.sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
        while True:
            reply = json.loads(self.reader.readline())
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(reply["error"])
            # anything else is an asynchronous event: skip it

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class Guest:
    """A QEMU process booting a test image, with its serial log and QMP."""

    def __init__(self, workdir: Path, disk: Path, extra: list[str], machine: str = "pc") -> None:
        self.log = workdir / "serial.log"
        qmp_path = workdir / "qmp.sock"
        cmd = [
            "qemu-system-x86_64", "-accel", "tcg", "-machine", machine, "-m", "256",
            "-display", "none", "-monitor", "none",
            "-serial", f"file:{self.log}",
            "-qmp", f"unix:{qmp_path},server=on,wait=off",
            "-drive", f"file={disk},format=qcow2,if=virtio",
            "-nic", f"user,model=virtio-net-pci,mac={MAC}",
            *extra,
        ]  # fmt: skip
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.qmp = Qmp(qmp_path)

    def output(self) -> str:
        if not self.log.exists():
            return ""
        return self.log.read_bytes().decode(errors="replace").replace("\r\n", "\n")

    def wait_for(self, pattern: str, timeout: float = BOOT_TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern, re.MULTILINE)
        while time.monotonic() < deadline:
            match = regex.search(self.output())
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} not seen; console:\n{self.output()[-3000:]}")

    def heartbeats(self) -> list[int]:
        return [int(n) for n in re.findall(r"^VMOPS-HEARTBEAT (\d+)$", self.output(), re.M)]

    def stop(self) -> None:
        self.qmp.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        if self.proc.stderr:
            self.proc.stderr.close()


def overlay(tmp_path: Path, base: Path, size: str = "64M") -> Path:
    """A throwaway qcow2 on top of the cached image, with its own size."""
    disk = tmp_path / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
         str(disk), size],
        check=True,
    )  # fmt: skip
    return disk


def virtual_size(disk: Path) -> int:
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(disk)], check=True, capture_output=True
    )
    return int(json.loads(info.stdout)["virtual-size"])


Boot = Callable[..., Guest]


@pytest.fixture
def boot(tmp_path: Path, images: dict[str, Path]) -> Iterator[Boot]:
    guests: list[Guest] = []

    def start(image: str = "tiny.qcow2", extra: list[str] | None = None, **kw: str) -> Guest:
        disk = overlay(tmp_path, images[image])
        guest = Guest(tmp_path, disk, extra or [], **kw)
        guests.append(guest)
        return guest

    yield start
    for guest in guests:
        guest.stop()


def test_boot_markers_and_acpi_powerdown(boot: Boot, tmp_path: Path) -> None:
    guest = boot()
    guest.wait_for(r"^VMOPS-BOOT-COMPLETE$")
    boot_seconds = time.monotonic() - guest.started
    print(f"QEMU start to VMOPS-BOOT-COMPLETE: {boot_seconds:.1f} s")

    size = virtual_size(tmp_path / "disk.qcow2")
    guest.wait_for(rf"^VMOPS-DISK vda {size}$")
    guest.wait_for(rf"^VMOPS-NIC eth0 {MAC}$")
    guest.wait_for(r"^VMOPS-IP eth0 10\.0\.2\.15/24$")
    guest.wait_for(r"^VMOPS-CONFIGDRIVE-NONE$")
    guest.wait_for(r"^VMOPS-HEARTBEAT 3$")
    beats = guest.heartbeats()
    assert beats == list(range(1, len(beats) + 1))

    guest.qmp.execute("system_powerdown")
    guest.wait_for(r"^VMOPS-POWERBUTTON$", timeout=30)
    assert guest.proc.wait(timeout=30) == 0


@pytest.mark.extended
def test_cpus_memory_and_an_nmi(boot: Boot) -> None:
    """The guest reports its CPUs and memory, and its kernel reports an NMI
    from outside and carries on (what a crash dump request sends)."""
    guest = boot(extra=["-smp", "2"])
    assert guest.wait_for(r"^VMOPS-CPUS (\d+)$").group(1) == "2"
    memtotal_kib = int(guest.wait_for(r"^VMOPS-MEMTOTAL (\d+)$").group(1))
    assert 128 * 1024 < memtotal_kib < 256 * 1024  # -m 256, less the kernel's own
    guest.wait_for(r"^VMOPS-HEARTBEAT 1$")
    guest.qmp.execute("inject-nmi")
    guest.wait_for(r"NMI received for unknown reason [0-9a-f]+ on CPU \d+", timeout=30)
    last = max(guest.heartbeats())
    guest.wait_for(rf"^VMOPS-HEARTBEAT {last + 2}$", timeout=30)


@pytest.mark.extended
def test_nopower_variant_ignores_power_button(boot: Boot) -> None:
    guest = boot("tiny-nopower.qcow2")
    guest.wait_for(r"^VMOPS-HEARTBEAT 1$")
    guest.qmp.execute("system_powerdown")
    guest.wait_for(r"^VMOPS-POWERBUTTON-IGNORED$", timeout=30)
    last = max(guest.heartbeats())
    guest.wait_for(rf"^VMOPS-HEARTBEAT {last + 2}$", timeout=30)
    assert guest.proc.poll() is None


@pytest.mark.extended
def test_flood_variant(boot: Boot) -> None:
    guest = boot("tiny-flood.qcow2")
    guest.wait_for(r"^VMOPS-FLOOD 2000 x{80}$")
    assert "VMOPS-HEARTBEAT" not in guest.output()


def make_config_iso(path: Path, files: dict[str, bytes], joliet: bool = True) -> None:
    """An OpenStack-style config drive ISO: label config-2, Rock Ridge (+ Joliet)."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(
        interchange_level=4, rock_ridge="1.09", joliet=3 if joliet else None, vol_ident="config-2"
    )
    jpath = (lambda p: "/" + p) if joliet else (lambda p: None)
    made: set[str] = set()
    for rel, body in files.items():
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            sub = "/".join(parts[:depth])
            if sub not in made:
                made.add(sub)
                iso.add_directory(
                    "/" + sub.upper(), rr_name=parts[depth - 1], joliet_path=jpath(sub)
                )
        iso.add_fp(
            io.BytesIO(body), len(body), "/" + rel.upper() + ";1",
            rr_name=parts[-1], joliet_path=jpath(rel),
        )  # fmt: skip
    iso.write(str(path))
    iso.close()


def make_config_vfat(path: Path, files: dict[str, bytes]) -> None:
    """The vfat flavour of a config drive (whole disk, label config-2), via mtools."""
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    subprocess.run(["mkfs.vfat", "-n", "config-2", "-C", str(path), "4096"],
                   check=True, capture_output=True)  # fmt: skip
    made: set[str] = set()
    for rel, body in files.items():
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            sub = "/".join(parts[:depth])
            if sub not in made:
                made.add(sub)
                subprocess.run(["mmd", "-i", str(path), "::/" + sub], check=True, env=env)
        src = path.parent / "payload"
        src.write_bytes(body)
        subprocess.run(["mcopy", "-i", str(path), str(src), "::/" + rel], check=True, env=env)


CONFIG_FILES = {
    "openstack/latest/meta_data.json": b'{"uuid": "abc"}',
    "openstack/latest/user_data": b"#cloud-config\nhostname: tiny\n",
    "openstack/content/0000": b"injected file\n",
}

# name: (machine type, how the drive is built, QEMU args with {path})
CONFIG_DRIVE_SETUPS = {
    # libvirt's "pc" machine type puts CD-ROMs on the PIIX IDE controller
    "iso-ide-cdrom-pc": ("pc", "iso", ["-drive", "file={path},format=raw,media=cdrom,if=ide"]),
    # q35 maps if=ide to its built-in AHCI (SATA) controller
    "iso-sata-cdrom-q35": ("q35", "iso", ["-drive", "file={path},format=raw,media=cdrom,if=ide"]),
    "iso-sata-cdrom-ahci-pc": (
        "pc",
        "iso",
        [
            "-device",
            "ahci,id=ahci0",
            "-drive",
            "if=none,id=cd0,file={path},format=raw,media=cdrom",
            "-device",
            "ide-cd,bus=ahci0.0,drive=cd0",
        ],
    ),
    # Rock Ridge only, and smaller than busybox findfs' probe buffer
    "small-iso-virtio-disk": (
        "pc",
        "iso-rr-only",
        ["-drive", "file={path},format=raw,if=virtio,readonly=on"],
    ),
    "vfat-virtio-disk": ("pc", "vfat", ["-drive", "file={path},format=raw,if=virtio"]),
}


def make_config_drive(kind: str, path: Path) -> None:
    if kind == "vfat":
        make_config_vfat(path, CONFIG_FILES)
    else:
        make_config_iso(path, CONFIG_FILES, joliet=kind == "iso")


@pytest.mark.extended
@pytest.mark.parametrize("setup", sorted(CONFIG_DRIVE_SETUPS))
def test_config_drive(boot: Boot, tmp_path: Path, setup: str) -> None:
    machine, kind, extra = CONFIG_DRIVE_SETUPS[setup]
    drive = tmp_path / "config.img"
    make_config_drive(kind, drive)
    if kind == "iso-rr-only":
        assert drive.stat().st_size < 68 * 1024
    guest = boot(extra=[a.format(path=drive) for a in extra], machine=machine)

    dev = guest.wait_for(r"^VMOPS-CONFIGDRIVE-FOUND (/dev/\S+)$").group(1)
    assert dev == ("/dev/vdb" if "virtio" in setup else "/dev/sr0")
    for rel, body in CONFIG_FILES.items():
        name = re.escape(rel)
        block = guest.wait_for(rf"^VMOPS-FILE-BEGIN {name}\n((?s:.*?))\nVMOPS-FILE-END {name}$")
        assert block.group(1) == body.decode()
