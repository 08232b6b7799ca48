"""Any state directory works: one whose path is 150 bytes long, far past the
107 bytes of a UNIX socket path, with a real guest booted and its console
captured and typed into. QEMU's monitor socket and serial port are named
under the state directory's short alias (vmops/socket_paths.py), the API
and console sockets are reached through /proc/self/fd."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.functional.conftest import separate_service, start_service, stop_service
from vmops import serial_pipes, socket_paths
from vmops.socket_paths import MAX_SOCKET_PATH

LENGTH = 150


def _qemu_cmdline(name: str, state_dir: Path) -> str:
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True,
                        check=True).stdout
    lines = [line for line in ps.splitlines()
             if "qemu-system" in line and f"guest=vmops-{name}," in line
             and str(state_dir) in line]  # its disks are named by their own paths
    assert len(lines) == 1, lines
    return lines[0]


def test_a_150_byte_state_dir_boots_a_guest_and_captures_its_console(
        test_image_dir: Path) -> None:
    with separate_service(test_image_dir, state_dir_length=LENGTH) as vm:
        state_dir = vm.state_dir
        assert len(os.fsencode(state_dir)) == LENGTH
        assert len(os.fsencode(state_dir / "vmops.sock")) > MAX_SOCKET_PATH
        alias = socket_paths.alias_path(state_dir)
        assert alias.is_symlink() and os.readlink(alias) == os.path.realpath(state_dir)
        assert alias.parent == socket_paths.runtime_base()
        assert (alias.parent.stat().st_mode & 0o777) == 0o700

        vm.run("spawn", "long1", "--image", "tiny", "--flavor", "m1.tiny")
        vm.wait_console("long1", r"VMOPS-HEARTBEAT 1\b")
        server_id = vm.server("long1")["id"]
        # QEMU was given the short names; the files are in the state dir.
        assert f"{alias}/libvirt/lib/qemu/domain-" in _qemu_cmdline("long1", state_dir)
        domain_xml = (state_dir / "libvirt" / "etc" / "qemu" / "vmops-long1.xml").read_text()
        assert f"{alias}/run/{server_id}.sock" in domain_xml
        assert serial_pipes.exist(state_dir / "run" / f"{server_id}.sock")  # its FIFOs
        assert list((state_dir / "libvirt" / "lib" / "qemu").glob("domain-*-vmops-long1"))
        assert (state_dir / "instances" / server_id / "console.log").stat().st_size > 0

        # the interactive console: through console.sock, a 200-byte path
        typed = subprocess.run(
            [sys.executable, "-m", "vmops", "console", "long1", "--linger", "3"],
            input=b"echo VMOPS-LONG-$((6*7))\n", env=vm.env, capture_output=True,
            timeout=120)
        assert typed.returncode == 0, typed.stderr
        vm.wait_console("long1", r"VMOPS-LONG-42")

        # a restart finds the alias as it left it, and the guest running
        stop_service(vm.service)  # type: ignore[attr-defined]
        vm.service = start_service(state_dir, vm.env)  # type: ignore[attr-defined]
        assert os.readlink(alias) == os.path.realpath(state_dir)
        assert vm.server("long1")["status"] == "ACTIVE"
        beats = vm.heartbeat("long1")
        vm.wait_console("long1", rf"VMOPS-HEARTBEAT {beats + 1}\b")

        vm.run("stop", "long1")
        vm.wait_status("long1", "SHUTOFF")
        vm.run("start", "long1")
        vm.wait_console("long1", r"VMOPS-HEARTBEAT 1\b", count=2)
        vm.run("destroy", "long1")
        assert not list((state_dir / "run").glob(f"{server_id}.sock*"))  # FIFOs or socket
        assert not (state_dir / "instances" / server_id).exists()
    assert not alias.is_symlink(), "the test's alias is removed with its state dir"
