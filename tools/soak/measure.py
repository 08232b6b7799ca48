"""What the soak measures and the bounds it holds them to."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vmops import socket_paths
from vmops.console import shared

# Growth allowed between the sample after warm-up and the last one. Counts
# are read with the service idle (no instance, no request in flight), so
# descriptors, threads and files must come back to what they were; memory
# may move a little with the allocator.
MAX_FD_GROWTH = 0
MAX_THREAD_GROWTH = 0
MAX_FILE_GROWTH = 0
MAX_RSS_GROWTH_KIB = 8 * 1024
# Files whose count is not the service's doing: the soak's own logs.
IGNORED_FILES = frozenset({"service.log"})
# How long an idle service may take to let its last request threads end.
SETTLE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Sample:
    fds: int
    threads: int
    rss_kib: int
    files: int
    processes: int  # QEMU and console capture processes naming the state dir

    def row(self, label: str) -> str:
        return (f"{label:<14} fds {self.fds:>4}  threads {self.threads:>3}  "
                f"rss {self.rss_kib / 1024:>7.1f} MiB  files {self.files:>4}  "
                f"processes {self.processes:>2}")


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def count_files(state_dir: Path) -> int:
    return sum(1 for root, _, files in os.walk(state_dir) for name in files
               if name not in IGNORED_FILES and not (root == str(state_dir)
                                                      and name.startswith("vmops.log")))


def guest_processes(state_dir: Path, service: int) -> int:
    """QEMU and console processes of ``state_dir``, but for its console
    process while it watches nothing and only ``service`` (running) holds
    it: it stays for the service's life (docs/console.md)."""
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True,
                        check=True).stdout
    idle = shared.held_idle_pid(socket_paths.socket_root(state_dir) / "run", service)
    return sum(1 for line in ps.splitlines()
               if str(state_dir) in line and ("qemu-system" in line or "vmops.console" in line)
               and line.split(maxsplit=1)[0] != str(idle))


def sample(pid: int, state_dir: Path) -> Sample:
    status = _status(pid)
    return Sample(fds=len(os.listdir(f"/proc/{pid}/fd")), threads=int(status["Threads"]),
                  rss_kib=int(status["VmRSS"].split()[0]), files=count_files(state_dir),
                  processes=guest_processes(state_dir, pid))


def settled(pid: int, state_dir: Path, floor: Sample | None = None) -> Sample:
    """A sample once the idle service's counts stop falling (request threads
    ending, sockets closing): the lowest of a few, read 0.2 s apart, or the
    first at or below ``floor``."""
    best = sample(pid, state_dir)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        if floor is not None and best.fds <= floor.fds and best.threads <= floor.threads \
                and best.files <= floor.files and best.processes == 0:
            break
        time.sleep(0.2)
        now = sample(pid, state_dir)
        best = Sample(min(best.fds, now.fds), min(best.threads, now.threads), now.rss_kib,
                      min(best.files, now.files), min(best.processes, now.processes))
    return best


def growth(warm: Sample, end: Sample) -> list[str]:
    """What grew beyond its bound from ``warm`` to ``end``."""
    found = []
    for name, bound in (("fds", MAX_FD_GROWTH), ("threads", MAX_THREAD_GROWTH),
                        ("files", MAX_FILE_GROWTH), ("rss_kib", MAX_RSS_GROWTH_KIB)):
        grown = getattr(end, name) - getattr(warm, name)
        if grown > bound:
            found.append(f"{name} grew by {grown} (bound {bound}): "
                         f"{getattr(warm, name)} -> {getattr(end, name)}")
    if end.processes:
        found.append(f"{end.processes} QEMU or capture process(es) left")
    return found
