"""The soak kills the guests of its state directory when it ends early."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools.soak.run import kill_guests

SLEEPER = "import sys, time; time.sleep(60)"


def _sleeper(*args: str) -> subprocess.Popen[bytes]:
    """A process whose command line reads like a QEMU or console process's."""
    return subprocess.Popen([sys.executable, "-c", SLEEPER, *args])


def test_a_cut_short_soak_leaves_no_guest_of_its_own(tmp_path: Path) -> None:
    ours = _sleeper("qemu-system-x86_64", f"file={tmp_path}/instances/x/root.qcow2")
    console = _sleeper("-m", "vmops.console.daemon", "--run-dir", f"{tmp_path}/run")
    others = _sleeper("qemu-system-x86_64", "file=/elsewhere/root.qcow2")
    try:
        kill_guests(tmp_path)
        assert ours.wait(timeout=10) == -9
        assert console.wait(timeout=10) == -9
        assert others.poll() is None  # another state directory's guest is not the soak's
    finally:
        for proc in (ours, console, others):
            proc.kill()
            proc.wait()
