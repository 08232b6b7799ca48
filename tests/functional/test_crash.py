"""A QEMU killed under a running guest is reported as a crash, not a clean
stop, and the guest is started again on service start when
resume_guests_state_on_host_boot is on."""

from __future__ import annotations

import re
from pathlib import Path

from tests.functional.conftest import separate_service, start_service, stop_service
from tests.functional.test_recovery import BOOT, _capture_pids, _kill, _qemu_pids


def test_qemu_killed_is_a_crash_and_is_resumed_on_service_start(test_image_dir: Path) -> None:
    with separate_service(test_image_dir, resume_guests_state_on_host_boot="true") as vm:
        vm.run("spawn", "crash1", "--image", "tiny", "--flavor", "m1.tiny")
        vm.wait_console("crash1", BOOT)
        qemu = _qemu_pids(vm, "crash1")
        assert len(qemu) == 1, qemu
        _kill(qemu)  # SIGKILL, with the service running

        server = vm.wait_status("crash1", "SHUTOFF")
        assert server["vmops:power_state"] == "crashed"
        assert server["OS-EXT-STS:power_state"] == 6  # Nova's CRASHED
        assert "QEMU died" in server["vmops:fault"]  # Nova's fault: in ERROR only

        stop_service(vm.service)  # type: ignore[attr-defined]
        vm.service = start_service(vm.state_dir, vm.env)  # type: ignore[attr-defined]
        server = vm.wait_status("crash1", "ACTIVE")
        assert server["vmops:power_state"] == "running"
        assert server["vmops:fault"] == "" and "fault" not in server
        vm.wait_console("crash1", BOOT, count=2)  # booted again, and captured
        assert len(_qemu_pids(vm, "crash1")) == 1
        assert len(_capture_pids(vm, server["id"])) == 1
        assert len(re.findall(BOOT.encode(), vm.console("crash1"))) == 2
