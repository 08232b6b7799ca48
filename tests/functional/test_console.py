"""Console capture: bounded rotation, and nothing lost across a service restart."""

from __future__ import annotations

import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.functional.conftest import Vmops, start_service, stop_service

MAX_BYTES = 512 * 1024


def test_flooding_guest_cannot_fill_the_disk(vmops: Vmops, test_image_dir: Path) -> None:
    vmops.import_image("tiny-flood", test_image_dir / "tiny-flood.qcow2")
    vmops.run("spawn", "fl1", "--image", "tiny-flood", "--flavor", "m1.tiny")
    # Enough lines to rotate twice: 12,000 lines of ~98 bytes are ~1.15 MiB,
    # more than the two files' 1 MiB, so the oldest lines must be gone.
    vmops.wait_console("fl1", r"VMOPS-FLOOD 12000 ", timeout=300)
    inst_dir = vmops.state_dir / "instances" / vmops.server("fl1")["id"]
    logs = sorted(inst_dir.glob("console.log*"))
    assert [p.name for p in logs] == ["console.log", "console.log.0"]
    assert all(p.stat().st_size <= MAX_BYTES for p in logs)
    vmops.run("stop", "fl1", "--hard")
    data = vmops.console("fl1")
    assert len(data) <= 2 * MAX_BYTES
    numbers = [int(n) for n in re.findall(rb"VMOPS-FLOOD (\d+) ", data)]
    # old + new read back in order, contiguous across the file boundary,
    # and the newest output is what was kept.
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert numbers[-1] >= 12000 and numbers[0] > 1


@pytest.mark.extended
def test_console_tail(vmops: Vmops) -> None:
    vmops.run("spawn", "tl1", "--image", "tiny", "--flavor", "m1.tiny")
    vmops.wait_console("tl1", r"VMOPS-HEARTBEAT 3\b")
    out = vmops.run("console-log", "tl1", "--tail", "2").stdout
    assert len(out.splitlines()) == 2


def test_service_restart_loses_no_console_output(vmops: Vmops) -> None:
    vmops.run("spawn", "rs1", "--image", "tiny", "--flavor", "m1.tiny")
    vmops.wait_console("rs1", r"VMOPS-HEARTBEAT 2\b")
    stop_service(vmops.service)  # type: ignore[attr-defined]
    time.sleep(4)  # the guest keeps writing while nobody serves the API
    vmops.service = start_service(vmops.state_dir, vmops.env)  # type: ignore[attr-defined]
    assert vmops.server("rs1")["status"] == "ACTIVE"
    before = int(re.findall(rb"VMOPS-HEARTBEAT (\d+)", vmops.console("rs1"))[-1])
    vmops.wait_console("rs1", rf"VMOPS-HEARTBEAT {before + 2}\b")
    beats = [int(n) for n in re.findall(rb"VMOPS-HEARTBEAT (\d+)", vmops.console("rs1"))]
    assert beats == list(range(1, len(beats) + 1))


@pytest.mark.extended
def test_console_log_follow_streams_new_output(vmops: Vmops) -> None:
    vmops.run("spawn", "fo1", "--image", "tiny", "--flavor", "m1.tiny")
    vmops.wait_console("fo1", r"VMOPS-HEARTBEAT 2\b")
    last = int(re.findall(rb"VMOPS-HEARTBEAT (\d+)", vmops.console("fo1"))[-1])
    proc = subprocess.Popen([sys.executable, "-m", "vmops", "console-log", "fo1", "--follow"],
                            env=vmops.env, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        seen = b""
        wanted = f"VMOPS-HEARTBEAT {last + 3}".encode()
        deadline = time.monotonic() + 60
        while wanted not in seen:
            if time.monotonic() > deadline:  # a bound on the wait, not a speed check
                pytest.fail(f"--follow did not show {wanted!r}; got {seen[-300:]!r}")
            ready, _, _ = select.select([proc.stdout], [], [], 5)
            if not ready:
                continue  # nothing yet: check the bound again
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"--follow ended early; got {seen[-300:]!r}")
            seen += line
        # What was already there first, then the new lines, in order, once each.
        beats = [int(n) for n in re.findall(rb"VMOPS-HEARTBEAT (\d+)", seen)]
        assert beats == list(range(1, last + 4))
    finally:
        proc.kill()
        proc.wait()
