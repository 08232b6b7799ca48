"""What the service finds when it starts again: guests that changed while it
was down, an interrupted spawn, and a simulated host reboot."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.functional.conftest import (
    Vmops,
    separate_service,
    service_pid,
    settled_leftovers,
    start_service,
    stop_service,
)
from vmops.compute import states
from vmops.store import Store

BOOT = r"VMOPS-BOOT-COMPLETE"


# -- helpers ------------------------------------------------------------------
def _pids(*words: str) -> list[int]:
    """Processes whose command line contains every one of ``words``."""
    # -ww: never cut at 80 columns, before the words we look for.
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True,
                        check=True).stdout
    found = []
    for line in ps.splitlines()[1:]:
        pid, _, args = line.strip().partition(" ")
        if all(w in args for w in words):
            found.append(int(pid))
    return found


def _qemu_pids(vm: Vmops, name: str) -> list[int]:
    return _pids("qemu-system", f"guest=vmops-{name},", str(vm.state_dir))


def _capture_pids(vm: Vmops, instance_id: str) -> list[int]:
    """The process capturing the instance's console (the state dir's one
    console process, or an old per-instance capture process): its pid file."""
    try:
        pid = int((vm.state_dir / "instances" / instance_id / "capture.pid").read_text())
        args = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return []
    return [] if _gone(pid) or b"vmops.console." not in args else [pid]


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is gone too


def _kill(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in pids):
        if time.monotonic() > deadline:  # a bound on the wait, not a speed check
            pytest.fail(f"{pids} still alive after SIGKILL")
        time.sleep(0.1)


def _log_file(vm: Vmops, instance_id: str) -> Path:
    return vm.state_dir / "instances" / instance_id / "console.log"


def _wait_in_file(path: Path, pattern: str, timeout: float = 60) -> None:
    """For while the service is down: read the capture's log file directly."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern.encode(), path.read_bytes()):
        if time.monotonic() > deadline:  # a bound on the wait, not a speed check
            pytest.fail(f"{pattern!r} not in {path} after {timeout:g}s")
        time.sleep(0.25)


def _beats(vm: Vmops, name: str) -> list[int]:
    return [int(n) for n in re.findall(rb"VMOPS-HEARTBEAT (\d+)", vm.console(name))]


class HostSignal:
    """A TCP port on the host the guest can poll (10.0.2.2 with user-mode
    networking): refused until ``fire()``, then it answers "go". Lets a
    guest act at a moment the test chooses, e.g. while the service is down."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))  # bound, not listening: connections refused
        self.port = self._sock.getsockname()[1]

    def fire(self) -> None:
        self._sock.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"go\n")

    def close(self) -> None:
        self._sock.close()

    def script(self, then: str) -> str:
        """A user_data script: wait for the signal, then run ``then``."""
        return ("#!/bin/sh\n"
                f"until [ \"$(nc 10.0.2.2 {self.port} < /dev/null 2> /dev/null)\" = go ]; do\n"
                "    sleep 1\n"
                "done\n"
                # Computed in the guest, so the dump of this script does not match.
                "echo VMOPS-SIGNAL-$((6 * 7))-SEEN\n"
                f"{then}\n")


def _simulate_host_reboot(vm: Vmops, name: str) -> None:
    """Stop the service, then kill what a host reboot ends: QEMU and the capture."""
    instance_id = vm.server(name)["id"]
    stop_service(vm.service)  # type: ignore[attr-defined]
    qemu = _qemu_pids(vm, name)
    capture = _capture_pids(vm, instance_id)
    assert len(qemu) == 1 and len(capture) == 1, (qemu, capture)
    _kill(qemu + capture)
    vm.service = start_service(vm.state_dir, vm.env)  # type: ignore[attr-defined]


# -- tests ----------------------------------------------------------------------
def test_restart_finds_guest_poweroff_and_keeps_running_vm(vmops: Vmops,
                                                          tmp_path: Path) -> None:
    host = HostSignal()
    try:
        script = tmp_path / "off.sh"
        script.write_text(host.script("sync; poweroff -f"))
        vmops.run("spawn", "rcoff", "--image", "tiny", "--flavor", "m1.tiny", "--config-drive",
                  "--user-data", str(script))
        vmops.run("spawn", "rcrun", "--image", "tiny", "--flavor", "m1.tiny")
        vmops.wait_console("rcoff", r"VMOPS-USER-SCRIPT-START")
        vmops.wait_console("rcrun", r"VMOPS-HEARTBEAT 2\b")
        off_id = vmops.server("rcoff")["id"]

        stop_service(vmops.service)  # type: ignore[attr-defined]
        host.fire()  # the guest powers itself off while nobody serves the API
        _wait_in_file(_log_file(vmops, off_id), r"VMOPS-SIGNAL-42-SEEN")
        _wait_in_file(_log_file(vmops, off_id), r"reboot: Power down")
        vmops.service = start_service(vmops.state_dir, vmops.env)  # type: ignore[attr-defined]
    finally:
        host.close()

    server = vmops.wait_status("rcoff", "SHUTOFF", timeout=60)
    assert server["vmops:power_state"] == "shutoff"
    assert vmops.wait_status("rcrun", "ACTIVE")["vmops:power_state"] == "running"
    # Its capture kept going: the heartbeat continues, every beat logged once.
    last = _beats(vmops, "rcrun")[-1]
    vmops.wait_console("rcrun", rf"VMOPS-HEARTBEAT {last + 2}\b")
    beats = _beats(vmops, "rcrun")
    assert beats == list(range(1, len(beats) + 1))
    assert len(_capture_pids(vmops, vmops.server("rcrun")["id"])) == 1


@pytest.mark.parametrize("moment", ["request-answered", "qemu-started"])
def test_spawn_interrupted_by_service_kill_is_rolled_back(vmops: Vmops, moment: str) -> None:
    """SIGKILL the service while a spawn is in progress: at once after the
    request was answered, or once the spawn has started QEMU (the disks, the
    domain and the capture process exist). The restarted service rolls it back."""
    for attempt in range(3):
        name = f"rcint{attempt}"
        created = vmops.json("spawn", name, "--image", "tiny", "--flavor", "m1.tiny",
                             "--no-wait")
        assert created["status"] == "BUILD"
        if moment == "qemu-started":
            deadline = time.monotonic() + 60
            while not _qemu_pids(vmops, name):
                if time.monotonic() > deadline:  # a bound on the wait, not a speed check
                    pytest.fail("QEMU never started")
                time.sleep(0.01)
        vmops.service.kill()  # type: ignore[attr-defined]
        vmops.service.wait()  # type: ignore[attr-defined]
        store = Store(vmops.state_dir / "vmops.db")
        try:
            interrupted = store.instance(name).task_state == states.SPAWNING
        finally:
            store.close()
        vmops.service = start_service(vmops.state_dir, vmops.env)  # type: ignore[attr-defined]
        if interrupted:
            break
        vmops.run("destroy", name)  # it finished before the kill: try again
    else:
        raise AssertionError("every spawn finished before the service was killed")

    servers = {s["name"]: s for s in vmops.client.get("/servers/detail")["servers"]}
    if name in servers:
        server = servers[name]
        assert server["status"] == "ERROR", server["status"]
        assert server["OS-EXT-STS:task_state"] is None
        assert "interrupted" in server["fault"]["message"]
        assert server["vmops:disks"] == []
    assert not list((vmops.state_dir / "libvirt").rglob(f"vmops-{name}.xml"))  # no domain
    assert not list((vmops.state_dir / "run").glob(f"{created['id']}.sock*"))  # FIFOs, socket
    assert _capture_pids(vmops, created["id"]) == []
    # No disk, no QEMU, no capture (the console process may wait, idle,
    # for the restarted service).
    assert settled_leftovers(vmops.state_dir, service=service_pid(vmops)) == []
    vmops.run("destroy", name)
    assert name not in [s["name"] for s in vmops.json("list")]


@pytest.mark.extended
def test_host_reboot_without_resume_leaves_vm_shutoff(vmops: Vmops) -> None:
    vmops.run("spawn", "rhoff", "--image", "tiny", "--flavor", "m1.tiny")
    vmops.wait_console("rhoff", BOOT)
    _simulate_host_reboot(vmops, "rhoff")
    server = vmops.wait_status("rhoff", "SHUTOFF")
    assert server["vmops:power_state"] == "shutoff"
    assert _qemu_pids(vmops, "rhoff") == []
    assert _capture_pids(vmops, server["id"]) == []
    assert len(re.findall(BOOT.encode(), vmops.console("rhoff"))) == 1
    # It can still be started by hand.
    vmops.run("start", "rhoff")
    vmops.wait_console("rhoff", BOOT, count=2)


def test_host_reboot_with_resume_starts_vm_again(test_image_dir: Path) -> None:
    with separate_service(test_image_dir, resume_guests_state_on_host_boot="true") as vm:
        vm.run("spawn", "rhon", "--image", "tiny", "--flavor", "m1.tiny")
        vm.wait_console("rhon", BOOT)
        _simulate_host_reboot(vm, "rhon")
        server = vm.wait_status("rhon", "ACTIVE")
        assert server["vmops:power_state"] == "running"
        vm.wait_console("rhon", BOOT, count=2)  # a second boot, captured
        assert len(_qemu_pids(vm, "rhon")) == 1
        assert len(_capture_pids(vm, server["id"])) == 1
