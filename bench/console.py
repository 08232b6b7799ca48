"""Console capture: throughput and CPU cost of the capture process.

    python -m bench.console [--quick]

vmops side: N MiB pushed through a UNIX socket (this process plays QEMU)
into the capture process, which writes them to the two rotating 512 KiB
files; timed from the first byte sent until the capture process has
stored the last one (it closes its end only after writing all it read).
Baseline: the same bytes, in the same 64 KiB writes, appended straight to
one file, as QEMU does with a ``file`` chardev.

Reported per size: wall time of both (medians; ``ratio`` = capture /
baseline), MiB/s, CPU time of the capture process (from
/proc/<pid>/schedstat), CPU of the sender and of the baseline writer, and
the capture process's CPU per second while idle (waiting for a QEMU, and
connected with nothing to read). No target and no assertion: for
information.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vmops.console import release_holds, start_capture, stop_capture, wait_connected

CHUNK = 64 * 1024
MAX_BYTES = 512 * 1024
_BOUND = 60.0  # seconds: only a bound against hanging


def run(quick: bool) -> list[dict[str, Any]]:
    sizes_mib = [8] if quick else [16, 128]
    reps = 3 if quick else 5
    root = Path(tempfile.mkdtemp(prefix="vmops-bench-console-", dir="/tmp"))
    try:
        rows = [_compare(root, mib, reps) for mib in sizes_mib]
        rows[0].update(_idle_cost(root, seconds=1.0 if quick else 3.0))
        return rows
    finally:
        release_holds()  # its console process stays for us otherwise
        shutil.rmtree(root, ignore_errors=True)


def _compare(root: Path, mib: int, reps: int) -> dict[str, Any]:
    payload = bytes(range(256)) * (CHUNK // 256)
    chunks = mib * 1024 * 1024 // CHUNK
    capture: list[dict[str, float]] = []
    baseline: list[dict[str, float]] = []
    for rep in range(reps):
        # Alternate which side goes first, so warm caches favour neither.
        sides = [(capture, _through_capture), (baseline, _straight_to_file)]
        for samples, side in sides if rep % 2 == 0 else sides[::-1]:
            samples.append(side(root / f"{mib}-{rep}-{side.__name__}", payload, chunks))
    wall = [s["wall_ms"] for s in capture]
    base = [s["wall_ms"] for s in baseline]
    vmops_ms, baseline_ms = statistics.median(wall), statistics.median(base)
    return {
        "scenario": f"console.capture_{mib}MiB",
        "vmops_median_ms": round(vmops_ms, 2),
        "baseline_median_ms": round(baseline_ms, 2),
        "ratio": round(vmops_ms / baseline_ms, 3) if baseline_ms else None,
        "target": "",
        "passed": None,
        "samples": reps,
        "vmops_ms": [round(x, 2) for x in wall],
        "baseline_ms": [round(x, 2) for x in base],
        "mib": mib,
        "max_bytes": MAX_BYTES,
        "vmops_mib_per_s": round(mib / (vmops_ms / 1000), 1),
        "baseline_mib_per_s": round(mib / (baseline_ms / 1000), 1),
        "capture_cpu_ms": _median(capture, "capture_cpu_ms"),
        "capture_cpu_ms_per_mib": round(_median(capture, "capture_cpu_ms") / mib, 3),
        "sender_cpu_ms": _median(capture, "sender_cpu_ms"),
        "baseline_cpu_ms": _median(baseline, "sender_cpu_ms"),
    }


def _through_capture(work: Path, payload: bytes, chunks: int) -> dict[str, float]:
    sock_path, log_dir = work.with_suffix(".sock"), work
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    try:
        pid = start_capture(sock_path, log_dir, MAX_BYTES)
        try:
            wait_connected(log_dir, 0, timeout=_BOUND)
            listener.settimeout(_BOUND)
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(_BOUND)
                cpu0, sender0, t0 = _cpu_ns(pid), time.thread_time_ns(), time.perf_counter()
                for _ in range(chunks):
                    conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)  # EOF once the capture process has stored everything
                t1, sender1, cpu1 = time.perf_counter(), time.thread_time_ns(), _cpu_ns(pid)
        finally:
            stop_capture(log_dir)
    finally:
        listener.close()
        sock_path.unlink(missing_ok=True)
    shutil.rmtree(log_dir, ignore_errors=True)
    return {
        "wall_ms": (t1 - t0) * 1000,
        "capture_cpu_ms": (cpu1 - cpu0) / 1e6,
        "sender_cpu_ms": (sender1 - sender0) / 1e6,
    }


def _straight_to_file(work: Path, payload: bytes, chunks: int) -> dict[str, float]:
    work.mkdir()
    fd = os.open(work / "console.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        cpu0, t0 = time.thread_time_ns(), time.perf_counter()
        for _ in range(chunks):
            os.write(fd, payload)
        t1, cpu1 = time.perf_counter(), time.thread_time_ns()
    finally:
        os.close(fd)
    shutil.rmtree(work, ignore_errors=True)
    return {"wall_ms": (t1 - t0) * 1000, "sender_cpu_ms": (cpu1 - cpu0) / 1e6}


def _idle_cost(root: Path, seconds: float) -> dict[str, float]:
    """CPU the capture process burns per second with nothing to do."""
    sock_path, log_dir = root / "idle.sock", root / "idle"
    pid = start_capture(sock_path, log_dir, MAX_BYTES)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        waiting = _cpu_over(pid, seconds)  # retrying connect() every 50 ms
        listener.bind(str(sock_path))
        listener.listen(1)
        wait_connected(log_dir, 0, timeout=_BOUND)
        connected = _cpu_over(pid, seconds)  # blocked in poll()
    finally:
        stop_capture(log_dir)
        listener.close()
    return {
        "idle_waiting_cpu_ms_per_s": round(waiting / seconds, 3),
        "idle_connected_cpu_ms_per_s": round(connected / seconds, 3),
    }


def _cpu_over(pid: int, seconds: float) -> float:
    before = _cpu_ns(pid)
    time.sleep(seconds)
    return (_cpu_ns(pid) - before) / 1e6


def _cpu_ns(pid: int) -> int:
    """CPU time of a process so far, in ns (schedstat: ns resolution)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _median(samples: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(s[key] for s in samples), 3)


def main(argv: list[str]) -> int:
    for row in run(quick="--quick" in argv):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
