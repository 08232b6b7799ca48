"""The console capture's memory and start cost for N instances, no guests.

    python -m bench.console_memory [N]      (default 20; not in the runner)

N fake QEMU serial sockets (UNIX listeners in this process, as
tests/integration's ``FakeQemu``), ``start_capture`` for each, the capture
connected, 100 KB written through each; then the RSS and PSS
(``/proc/PID/smaps_rollup``) of every capturing process, once with one
capture process per instance (vmops before the console process) and once
with the console process (``process.USE_CONSOLE_PROCESS``). Also the time
of each ``start_capture``. It isolates the capture's part of
``host_memory`` (which needs 20 guests) and prints one line per mode.
"""

from __future__ import annotations

import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.host_memory import Memory, memory_of
from vmops.console import process, start_capture, stop_capture, wait_connected

BOUND_S = 20.0  # a bound against hanging


def measure(count: int, console_process: bool) -> str:
    process.USE_CONSOLE_PROCESS = console_process
    root = Path(tempfile.mkdtemp(prefix="vmcm-", dir="/tmp"))  # short socket paths
    listeners: list[socket.socket] = []
    conns: list[socket.socket] = []
    dirs: list[Path] = []
    pids: set[int] = set()
    starts: list[float] = []
    try:
        for i in range(count):
            path = root / f"{i}.sock"
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(path))
            listener.listen(1)
            listeners.append(listener)
            dirs.append(root / f"log{i}")
            t0 = time.perf_counter()
            pids.add(start_capture(path, dirs[-1], 512 * 1024))
            starts.append(time.perf_counter() - t0)
            wait_connected(dirs[-1], 0, BOUND_S)
            listener.settimeout(BOUND_S)
            conn, _ = listener.accept()
            conns.append(conn)
            conn.sendall(b"x" * 100_000)
        time.sleep(1.0)
        total = sum((memory_of(pid) for pid in pids), Memory(0, 0))
    finally:
        for log_dir in dirs:
            stop_capture(log_dir)
        process.release_holds()  # its console process stays for us otherwise
        for sock in conns + listeners:
            sock.close()
        shutil.rmtree(root, ignore_errors=True)
    mode = "console process" if console_process else "per-instance"
    later = statistics.median(starts[1:]) if len(starts) > 1 else starts[0]
    return (f"{mode}, {count} instances: {len(pids)} processes, PSS {total.pss_kib / 1024:.1f} "
            f"MiB ({total.pss_kib / 1024 / count:.2f} per instance), RSS "
            f"{total.rss_kib / 1024:.1f} MiB; start_capture: first {starts[0] * 1000:.1f} ms, "
            f"median of the rest {later * 1000:.1f} ms")


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv else 20
    for console_process in (False, True):
        print(measure(count, console_process))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
