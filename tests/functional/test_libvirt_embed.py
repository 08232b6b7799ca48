"""The libvirt driver on a real embedded QEMU driver, with a real QEMU under TCG.

The guest has a blank qcow2 disk and no OS: SeaBIOS runs and finds nothing
to boot, which is all the power operations need.

This test opens an embedded root in the pytest process itself. A process
can only ever open one embedded root, so no other test in this process may
open a different one (the other functional tests drive a ``vmops serve``
child process).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmops import serial_pipes
from vmops.hypervisor import embed_uri
from vmops.hypervisor.base import (
    Accel,
    DiskSpec,
    DomainSpec,
    LifecycleEvent,
    NicSpec,
    PowerState,
)
from vmops.hypervisor.libvirt import embed_root
from vmops.hypervisor.libvirt.driver import LibvirtHypervisor

pytestmark = [pytest.mark.extended, pytest.mark.functional]

UUID = "5d0c8a4e-7b1f-4c39-9e2a-6f3b2d1c0e9a"
EXIT_TIMEOUT_S = 10.0


def _process_ended(pid: int) -> bool:
    """Gone, or a zombie waiting for init to reap it (it runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _open_files(pid: int) -> set[str]:
    """The paths of the files ``pid`` holds open."""
    paths = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            paths.add(os.readlink(fd))
    return paths


def _qemu_processes_using(root: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and str(root).encode() in cmdline \
                and not _process_ended(int(proc.name)):
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """Short, unlike tmp_path: QEMU's monitor socket lives below the root and
    UNIX socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="vmops-embed-", dir="/tmp"))
    yield path
    shutil.rmtree(path)


@pytest.fixture
def hv(state_dir: Path) -> Iterator[LibvirtHypervisor]:
    hypervisor = LibvirtHypervisor(embed_uri(state_dir), Accel.TCG)
    hypervisor.connect()
    try:
        yield hypervisor
    finally:
        if hypervisor.exists(UUID):
            hypervisor.power_off(UUID)
            hypervisor.undefine(UUID)
        hypervisor.close()
    root = embed_root(hypervisor.uri)
    assert root is not None
    assert _qemu_processes_using(root) == []


def test_tcg_guest_power_cycle(hv: LibvirtHypervisor, state_dir: Path) -> None:
    disk = state_dir / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    spec = DomainSpec(
        uuid=UUID, name="vmops-smoke", memory_mib=128, vcpus=1,
        disks=(DiskSpec(path=disk, format="qcow2", target="vda"),),
        nics=(NicSpec(mac="52:54:00:12:34:56"),),
        console_socket=state_dir / "console.sock", metadata={"name": "smoke"})
    events: queue.Queue[LifecycleEvent] = queue.Queue()
    hv.on_lifecycle_event(events.put)

    started = time.monotonic()
    hv.define(spec)
    print(f"first define (QEMU capability probe): {time.monotonic() - started:.1f} s")
    root = embed_root(hv.uri)
    assert root is not None
    assert list((root / "cache" / "qemu" / "capabilities").glob("*.xml")), \
        "the probe result is cached in the root"
    assert "stdio_handler" in (root / "etc" / "qemu.conf").read_text()

    hv.start(UUID, paused=True)
    info = hv.info(UUID)
    assert (info.state, info.vcpus, info.max_memory_kib) == (PowerState.PAUSED, 1, 128 * 1024)
    pid = hv.qemu_pid(UUID)
    assert pid is not None
    assert (root / "run" / "qemu" / "vmops-smoke.pid").read_text().strip() == str(pid)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    assert b"-accel tcg" in cmdline and b"guest=vmops-smoke" in cmdline
    # QEMU holds the serial port's FIFOs that define made (serial_pipes.py).
    assert {str(p) for p in serial_pipes.paths(spec.console_socket)} <= _open_files(pid)
    assert [_next(events) for _ in range(2)] == [(PowerState.RUNNING, "started"),
                                                 (PowerState.PAUSED, "paused")]

    hv.unpause(UUID)
    hv.reboot_hard(UUID)
    hv.shutdown(UUID)  # pressed; SeaBIOS ignores the button
    assert hv.info(UUID).state is PowerState.RUNNING
    hv.suspend(UUID)
    assert hv.info(UUID).state is PowerState.SUSPENDED and hv.qemu_pid(UUID) is None
    assert _wait(lambda: _process_ended(pid))
    hv.start(UUID, paused=True)
    assert hv.info(UUID).state is PowerState.PAUSED
    assert [_next(events) for _ in range(5)] == [
        (PowerState.RUNNING, "unpaused"),
        (PowerState.PAUSED, "paused"), (PowerState.SUSPENDED, "suspended"),  # managed save
        (PowerState.RUNNING, "restored"), (PowerState.PAUSED, "paused")]

    restored_pid = hv.qemu_pid(UUID)
    assert restored_pid is not None
    hv.power_off(UUID)
    hv.power_off(UUID)
    assert hv.info(UUID).state is PowerState.SHUTOFF and hv.qemu_pid(UUID) is None
    assert _next(events) == (PowerState.SHUTOFF, "destroyed")
    assert _wait(lambda: _process_ended(restored_pid))
    hv.undefine(UUID)
    assert not hv.exists(UUID) and hv.list_uuids() == []


def _next(events: queue.Queue[LifecycleEvent]) -> tuple[PowerState, str]:
    event = events.get(timeout=EXIT_TIMEOUT_S)
    assert event.uuid == UUID
    return event.state, event.detail


def _wait(condition: object) -> bool:
    assert callable(condition)
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())
