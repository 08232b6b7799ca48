"""A real guest flooding its console while the state directory's disk is
full (issue #15): the console logs stay within their cap, the capture
process keeps reading (drops what it cannot write rather than stalling the
guest's serial port), the service keeps answering, and once there is room
again the log goes on, in order. The state directory is a small tmpfs
mounted for the test (root only; skipped, saying why, elsewhere). The
fake-hypervisor version of this, with the import, spawn and snapshot on a
full disk, is tests/integration/test_faults_disk_full.py."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.conftest import Vmops, leftovers, processes_of, start_service, stop_service
from vmops import console

pytestmark = [pytest.mark.extended, pytest.mark.faults]

TMPFS_SIZE = 160 * 1024 * 1024
MAX_BYTES = 512 * 1024  # console_log_max_bytes' default: each of the two files
BALLAST = "ballast"


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(state: Path, leave: int) -> None:
    with (state / BALLAST).open("wb") as f:
        for _ in range(100):  # the capture writes meanwhile
            size = os.fstat(f.fileno()).st_size + _free(state) - leave
            try:
                os.posix_fallocate(f.fileno(), 0, max(size, 1))
                return
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    raise AssertionError("could not fill the file system")


@pytest.fixture
def on_tmpfs(test_image_dir: Path) -> Iterator[Vmops]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the state directory needs root")
    state = Path(tempfile.mkdtemp(prefix="vmops-", dir="/tmp"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700",
                           "tmpfs", str(state)], capture_output=True, text=True)
    if done.returncode != 0:
        state.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    vm = Vmops(state)
    vm.env["VMOPS_IMAGE_IMPORT_RESERVE_BYTES"] = "0"  # the test fills the disk itself
    try:
        vm.service = start_service(state, vm.env)  # type: ignore[attr-defined]
        try:
            vm.import_image("tiny-flood", test_image_dir / "tiny-flood.qcow2")
            yield vm
        finally:
            (state / BALLAST).unlink(missing_ok=True)
            try:
                for server in vm.client.get("/servers")["servers"]:
                    vm.client.delete(f"/servers/{server['id']}")
            finally:
                stop_service(vm.service)  # type: ignore[attr-defined]
        left = leftovers(state) + processes_of(state)
        assert not left, f"left behind: {left}"
    finally:
        for pid_file in state.glob("instances/*/capture.pid"):
            console.stop_capture(pid_file.parent)
        subprocess.run(["umount", str(state)], check=False)
        shutil.rmtree(state, ignore_errors=True)


def _numbers(data: bytes) -> list[int]:
    return [int(n) for n in re.findall(rb"VMOPS-FLOOD (\d+) ", data)]


def test_a_console_flood_on_a_full_disk(on_tmpfs: Vmops) -> None:
    vm = on_tmpfs
    vm.run("spawn", "fl1", "--image", "tiny-flood", "--flavor", "m1.tiny")
    vm.wait_console("fl1", r"VMOPS-FLOOD 2000 ", timeout=300)
    server = vm.server("fl1")
    folder = vm.state_dir / "instances" / server["id"]
    capture = console.capture_pid(folder)
    assert capture is not None
    _fill(vm.state_dir, leave=0)
    time.sleep(10)  # the guest floods on while nothing more fits (not a timing assertion)
    for log in folder.glob("console.log*"):
        assert log.stat().st_size <= MAX_BYTES, log
    assert console.capture_pid(folder) == capture, "the capture process died of the full disk"
    server = vm.server("fl1")  # the service answers, the guest runs
    assert server["status"] == "ACTIVE" and server["OS-EXT-STS:task_state"] is None, server
    assert server["OS-EXT-STS:power_state"] == 1, server  # running: QEMU did not pause it
    kept = _numbers(vm.console("fl1"))[-1]  # the last line written before the disk was full
    (vm.state_dir / BALLAST).unlink()
    deadline = time.monotonic() + 300
    while (numbers := _numbers(vm.console("fl1")))[-1] < kept + 1000:
        assert time.monotonic() < deadline, f"the log did not go on: {numbers[-5:]}"
        time.sleep(0.25)
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    # Lines were dropped while the disk was full (the capture kept reading
    # and the guest kept printing), not held back until there was room.
    assert kept in numbers[:-1], f"{kept} rotated out of the log already: {numbers[:3]}"
    assert numbers[numbers.index(kept) + 1] > kept + 1, \
        "no line was dropped: did the capture stop reading while the disk was full?"
    for log in folder.glob("console.log*"):
        assert log.stat().st_size <= MAX_BYTES, log
    db = sqlite3.connect(f"file:{vm.state_dir / 'vmops.db'}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()
    for disk in folder.glob("*.qcow2"):
        info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(disk)],
                                         check=True, capture_output=True, text=True).stdout)
        assert info["format"] == "qcow2"
        subprocess.run(["qemu-img", "check", "-U", "-q", str(disk)], check=True)
