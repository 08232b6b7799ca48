"""Power operations on real guests, checked from what the guest printed."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.functional.conftest import Vmops
from vmops import serial_pipes

BOOT = r"VMOPS-BOOT-COMPLETE"


def _spawn(vmops: Vmops, name: str, image: str = "tiny", *extra: str) -> None:
    vmops.run("spawn", name, "--image", image, "--flavor", "m1.tiny", *extra)
    vmops.wait_console(name, BOOT)


def _beats(vmops: Vmops, name: str) -> list[int]:
    return [int(n) for n in re.findall(rb"VMOPS-HEARTBEAT (\d+)", vmops.console(name))]


def _qemu_running(vmops: Vmops, name: str) -> bool:
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return any("qemu-system" in line and f"guest=vmops-{name}," in line
               for line in ps.splitlines())


def test_soft_reboot_boots_twice(vmops: Vmops) -> None:
    _spawn(vmops, "rb1")
    vmops.run("reboot", "rb1")
    vmops.wait_console("rb1", BOOT, count=2)
    assert vmops.server("rb1")["status"] == "ACTIVE"
    assert b"VMOPS-POWERBUTTON\n" in vmops.console("rb1").replace(b"\r\n", b"\n")


def test_soft_reboot_falls_back_to_hard(vmops: Vmops, nopower_image: str) -> None:
    _spawn(vmops, "rb2", nopower_image)
    vmops.run("reboot", "rb2")
    vmops.wait_console("rb2", BOOT, count=2)
    log = vmops.console("rb2")
    assert b"VMOPS-POWERBUTTON-IGNORED" in log
    assert vmops.server("rb2")["status"] == "ACTIVE"


def test_hard_reboot(vmops: Vmops) -> None:
    _spawn(vmops, "rb3")
    vmops.run("reboot", "rb3", "--hard")
    vmops.wait_console("rb3", BOOT, count=2)
    assert b"VMOPS-POWERBUTTON" not in vmops.console("rb3")
    assert vmops.server("rb3")["status"] == "ACTIVE"


def test_stop_gracefully_then_start(vmops: Vmops) -> None:
    _spawn(vmops, "st1")
    vmops.run("stop", "st1", "--timeout", "60")
    server = vmops.server("st1")
    assert (server["status"], server["vmops:power_state"]) == ("SHUTOFF", "shutoff")
    assert b"VMOPS-POWERBUTTON" in vmops.console("st1")
    assert not _qemu_running(vmops, "st1")
    vmops.run("start", "st1")
    vmops.wait_console("st1", BOOT, count=2)
    assert vmops.server("st1")["status"] == "ACTIVE"


@pytest.mark.extended
def test_stop_timeout_pulls_the_plug(vmops: Vmops, nopower_image: str) -> None:
    _spawn(vmops, "st2", nopower_image)
    vmops.run("stop", "st2", "--timeout", "3")
    assert vmops.server("st2")["status"] == "SHUTOFF"
    assert b"VMOPS-POWERBUTTON-IGNORED" in vmops.console("st2")


def test_stop_hard(vmops: Vmops) -> None:
    _spawn(vmops, "st3")
    vmops.run("stop", "st3", "--hard")
    assert vmops.server("st3")["status"] == "SHUTOFF"
    assert b"VMOPS-POWERBUTTON" not in vmops.console("st3")


def test_pause_stops_the_heartbeat_and_unpause_continues_it(vmops: Vmops) -> None:
    _spawn(vmops, "pa1")
    vmops.wait_console("pa1", r"VMOPS-HEARTBEAT 2\b")
    vmops.run("pause", "pa1")
    assert vmops.server("pa1")["status"] == "PAUSED"
    frozen = _beats(vmops, "pa1")
    time.sleep(3)
    assert _beats(vmops, "pa1") == frozen  # not one beat while paused
    vmops.run("unpause", "pa1")
    vmops.wait_console("pa1", rf"VMOPS-HEARTBEAT {frozen[-1] + 2}\b")
    beats = _beats(vmops, "pa1")
    assert beats == list(range(1, len(beats) + 1))  # continued, never restarted


def test_suspend_ends_qemu_and_resume_keeps_memory(vmops: Vmops) -> None:
    _spawn(vmops, "su1")
    vmops.wait_console("su1", r"VMOPS-HEARTBEAT 2\b")
    vmops.run("suspend", "su1")
    server = vmops.server("su1")
    assert (server["status"], server["vmops:power_state"]) == ("SUSPENDED", "suspended")
    assert not _qemu_running(vmops, "su1")
    last = _beats(vmops, "su1")[-1]
    vmops.run("resume", "su1")
    vmops.wait_console("su1", rf"VMOPS-HEARTBEAT {last + 2}\b")
    beats = _beats(vmops, "su1")
    assert beats == list(range(1, len(beats) + 1))  # the counter came back from memory
    assert len(re.findall(BOOT.encode(), vmops.console("su1"))) == 1  # no second boot
    assert vmops.server("su1")["status"] == "ACTIVE"


def _type(vmops: Vmops, name: str, line: str) -> None:
    """Type ``line`` on the guest's serial console (its console shell runs it)."""
    typed = subprocess.run([sys.executable, "-m", "vmops", "console", name, "--linger", "1"],
                           input=line.encode() + b"\n", env=vmops.env, capture_output=True,
                           timeout=120)
    assert typed.returncode == 0, typed.stderr


def _memory_marks(vmops: Vmops, name: str, count: int) -> list[tuple[str, str]]:
    """Have the guest say its boot id and whether /run/vmops-mark exists (the
    root is its initramfs: a file there lives in the guest's memory only);
    the (boot id, yes|no) of each time asked, ``count`` of them so far."""
    _type(vmops, name, 'echo "VMOPS-MARK $(cat /proc/sys/kernel/random/boot_id) '
                       '$(test -e /run/vmops-mark && echo yes || echo no)"')
    found = vmops.wait_console(name, r"VMOPS-MARK ([0-9a-f-]{36}) (yes|no)", count=count)
    return [(m.group(1).decode(), m.group(2).decode()) for m in found]


def test_hard_reboot_of_a_suspended_instance_boots_it_afresh(vmops: Vmops) -> None:
    """Resume restores the saved memory; a hard reboot of a suspended
    instance (allowed, as in Nova) discards it and boots the guest again:
    a new boot id, and a file written to the guest's memory before the
    suspend is gone. Rebuild and rescue refuse a suspended instance."""
    _spawn(vmops, "su2")
    vmops.wait_console("su2", r"VMOPS-HEARTBEAT 1\b")  # its console shell runs
    _type(vmops, "su2", "echo saved > /run/vmops-mark")
    first = _memory_marks(vmops, "su2", 1)[-1]
    assert first[1] == "yes"
    vmops.run("suspend", "su2")
    vmops.run("resume", "su2")
    assert _memory_marks(vmops, "su2", 2)[-1] == first  # restored: same boot, file kept

    vmops.run("suspend", "su2")
    saved = vmops.state_dir / "libvirt" / "lib" / "qemu" / "save" / "vmops-su2.save"
    assert saved.is_file()  # libvirt's managed-save image
    for verb in (("rebuild", "su2", "--image", "tiny"), ("rescue", "su2")):
        proc = vmops.run(*verb, check=False)
        assert proc.returncode != 0 and "while it is suspended" in proc.stderr, proc.stderr
    vmops.run("reboot", "su2", "--hard")
    vmops.wait_console("su2", BOOT, count=2)
    server = vmops.server("su2")
    assert (server["status"], server["vmops:power_state"]) == ("ACTIVE", "running")
    vmops.wait_console("su2", r"VMOPS-HEARTBEAT 1\b", count=2)  # counting afresh
    boot_id, marked = _memory_marks(vmops, "su2", 3)[-1]
    assert boot_id != first[0] and marked == "no"
    assert not saved.exists()


@pytest.mark.extended
def test_operations_refused_in_the_wrong_state(vmops: Vmops) -> None:
    _spawn(vmops, "ws1")
    refusals = [("resume", "while it is running"), ("unpause", "while it is running"),
                ("start", "while it is running")]
    for verb, words in refusals:
        proc = vmops.run(verb, "ws1", check=False)
        assert proc.returncode != 0 and words in proc.stderr, (verb, proc.stderr)
    vmops.run("stop", "ws1", "--hard")
    for verb in ("pause", "suspend", "unpause", "resume"):
        proc = vmops.run(verb, "ws1", check=False)
        assert proc.returncode != 0 and "while it is stopped" in proc.stderr, verb
    assert vmops.server("ws1")["status"] == "SHUTOFF"  # nothing changed
    vmops.run("start", "ws1")
    vmops.wait_console("ws1", BOOT, count=2)
    vmops.run("suspend", "ws1")
    proc = vmops.run("start", "ws1", check=False)
    assert proc.returncode != 0 and "while it is suspended" in proc.stderr
    assert vmops.server("ws1")["status"] == "SUSPENDED"


@pytest.mark.extended
def test_second_operation_on_a_busy_instance_is_refused(vmops: Vmops,
                                                        nopower_image: str) -> None:
    _spawn(vmops, "bz1", nopower_image)
    _spawn(vmops, "bz2")
    server_id = vmops.server("bz1")["id"]
    vmops.client.post(f"/servers/{server_id}/action", {"os-stop": {"vmops:timeout": 8}})
    proc = vmops.run("pause", "bz1", check=False)
    assert proc.returncode != 0 and "busy" in proc.stderr and "powering-off" in proc.stderr
    # Another instance is not held up by it.
    vmops.run("pause", "bz2")
    assert vmops.server("bz2")["status"] == "PAUSED"
    vmops.wait_status("bz1", "SHUTOFF", timeout=60)


def test_guest_initiated_poweroff_shows_as_shutoff(vmops: Vmops, tmp_path: Path) -> None:
    script = tmp_path / "halt.sh"
    script.write_text("#!/bin/sh\nsleep 2\npoweroff -f\n")
    vmops.run("spawn", "gp1", "--image", "tiny", "--flavor", "m1.tiny", "--config-drive",
              "--user-data", str(script))
    vmops.wait_console("gp1", BOOT)
    server = vmops.wait_status("gp1", "SHUTOFF", timeout=60)
    assert server["vmops:power_state"] == "shutoff"


@pytest.fixture
def nopower_image(vmops: Vmops, test_image_dir: Path) -> str:
    vmops.import_image("tiny-nopower", test_image_dir / "tiny-nopower.qcow2")
    return "tiny-nopower"


def test_create_without_start_defines_the_domain_and_start_boots_it(vmops: Vmops) -> None:
    """vmops:start false: built (disks, config drive, domain) but not booted,
    SHUTOFF; a later start boots the guest to userspace."""
    created = vmops.client.post("/servers", {"server": {
        "name": "ns1", "imageRef": "tiny", "flavorRef": "m1.tiny", "config_drive": True,
        "vmops:start": False}})["server"]
    server = vmops.wait_status("ns1", "SHUTOFF", timeout=120)
    assert server["id"] == created["id"] and server["OS-EXT-STS:vm_state"] == "stopped"
    assert server["vmops:power_state"] == "shutoff"
    # The domain is defined in libvirt (its saved definition) and not running.
    assert server["vmops:live"]["state"] == "shutoff"
    assert (vmops.state_dir / "libvirt" / "etc" / "qemu" / "vmops-ns1.xml").is_file()
    assert not any("vmops-ns1" in p for p in _qemu_processes())
    assert vmops.console("ns1") == b""  # nothing ran: no capture, no output
    vmops.run("start", "ns1")
    vmops.wait_console("ns1", BOOT)  # the guest reached userspace
    assert vmops.server("ns1")["status"] == "ACTIVE"
    assert any("vmops-ns1" in p for p in _qemu_processes())


@pytest.mark.extended
def test_start_makes_again_the_serial_fifos_removed_behind_its_back(vmops: Vmops) -> None:
    """The serial port's FIFOs (``run/<id>.sock.in`` and ``.out``, made at
    define) removed while the guest is off: start makes them again instead
    of failing with QEMU's "Could not open '<id>.sock'", and the guest's
    output is captured."""
    created = vmops.client.post("/servers", {"server": {
        "name": "ff1", "imageRef": "tiny", "flavorRef": "m1.tiny", "vmops:start": False}})
    vmops.wait_status("ff1", "SHUTOFF", timeout=120)
    fifos = serial_pipes.paths(vmops.state_dir / "run" / f"{created['server']['id']}.sock")
    assert all(stat.S_ISFIFO(path.lstat().st_mode) for path in fifos)
    for path in fifos:
        path.unlink()
    vmops.run("start", "ff1")
    vmops.wait_console("ff1", BOOT)
    assert vmops.server("ff1")["status"] == "ACTIVE"
    assert all(stat.S_ISFIFO(path.lstat().st_mode) for path in fifos)


def _qemu_processes() -> list[str]:
    """The command lines of the QEMU processes on the host."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if cmdline.startswith(b"/usr/bin/qemu-system") or b"qemu-system-x86_64" in \
                    cmdline.split(b" ")[0]:
                found.append(cmdline.decode(errors="replace"))
    return found
