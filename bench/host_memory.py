"""Host memory per running instance beyond QEMU's own.

    python -m bench --only host_memory      (full run only; or: python -m bench.host_memory)

vmops' own processes grow with the instances it runs: the service (its
records, threads and libvirt objects) and the console capture: one console
process for all instances (``python -m vmops.console.daemon``), or, from a
vmops before it, one capture process per running instance. This spawns
20 running instances of the smallest flavor (``m1.tiny``;
``VMOPS_BENCH_MEMORY_GUESTS`` sets how many) and reads, from
``/proc/PID/smaps_rollup``:

- the service's RSS and PSS before the first spawn and with all of them
  running (its growth);
- every capture process's RSS and PSS (``vmops.console.capture`` or
  ``vmops.console.daemon`` with the service's state directory on its command
  line, or named by an instance's ``capture.pid``).

Per instance = (the service's growth + the sum over the capture
processes) / the number of instances, in MiB, for RSS and for PSS. PSS
divides the pages the capture processes share (the interpreter, the
libraries) among them, so their PSS sum is what they cost the host
together; RSS counts shared pages in every process. QEMU itself is not
counted. Target: <= 2 MiB per instance (PSS); no baseline.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import session
from bench.common import Row, pids_mentioning

GUESTS = 20
TARGET_MIB = 2.0
CAPTURE_MODULES = (b"vmops.console.capture", b"vmops.console.daemon")


@dataclass(frozen=True)
class Memory:
    rss_kib: int
    pss_kib: int
    # The process's own pages (heap, stacks, ...): unlike PSS, not moved by
    # other processes mapping the same libraries, starting or exiting.
    anon_kib: int = 0

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.rss_kib + other.rss_kib, self.pss_kib + other.pss_kib,
                      self.anon_kib + other.anon_kib)


def memory_of(pid: int, proc: Path = Path("/proc")) -> Memory:
    """RSS, PSS and anonymous memory of one process (kB in smaps_rollup are KiB)."""
    found = {"Rss": 0, "Pss": 0, "Anonymous": 0}
    for line in (proc / str(pid) / "smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in found:
            found[key] = int(rest.split()[0])
    return Memory(found["Rss"], found["Pss"], found["Anonymous"])


def capture_pids(state_dir: Path) -> list[int]:
    """The console capture processes of the service on ``state_dir``."""
    candidates = set(pids_mentioning(str(state_dir)))
    for pid_file in state_dir.glob("instances/*/capture.pid"):
        with contextlib.suppress(OSError, ValueError):
            candidates.add(int(pid_file.read_text()))
    found = []
    for pid in sorted(candidates):
        with contextlib.suppress(OSError):
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if any(module in args for module in CAPTURE_MODULES):
                found.append(pid)
    return found


def per_instance_mib(service_before: Memory, service_after: Memory,
                     captures: list[Memory], instances: int) -> dict[str, float]:
    """vmops' memory per running instance, in MiB (RSS and PSS)."""
    total = sum(captures, Memory(0, 0))
    return {kind: round((getattr(service_after, f"{kind}_kib")
                         - getattr(service_before, f"{kind}_kib")
                         + getattr(total, f"{kind}_kib")) / 1024 / instances, 3)
            for kind in ("rss", "pss")}


def guests() -> int:
    return int(os.environ.get("VMOPS_BENCH_MEMORY_GUESTS", GUESTS))


def run(quick: bool) -> list[Row]:
    s = session.get()
    svc = s.vmops
    assert svc.proc is not None
    count = guests()
    names = [f"hm-{i}" for i in range(count)]
    ids: list[str] = []
    try:
        time.sleep(1.0)  # let the warm-up's threads and garbage settle
        before = memory_of(svc.proc.pid)
        for start in range(0, count, 5):  # 5 at a time: the host has 2 cores
            batch = names[start:start + 5]
            ids += [svc.post_server(n) for n in batch]
            for n in batch:
                svc.wait_built(n, interval=0.2)
        time.sleep(1.0)
        after = memory_of(svc.proc.pid)
        pids = capture_pids(svc.state_dir)
        captures = [memory_of(p) for p in pids]
    finally:
        for server_id in ids:
            svc.destroy(server_id)
    per = per_instance_mib(before, after, captures, count)
    capture_pss = sorted(c.pss_kib for c in captures)
    return [{
        "scenario": f"host_memory_per_instance_{count}_running",
        "vmops_median_ms": None, "baseline_median_ms": None, "ratio": None,
        "target": f"<= {TARGET_MIB:g} MiB per instance (PSS)",
        "passed": per["pss"] <= TARGET_MIB,
        "instances": count, "capture_processes": len(pids),
        "per_instance_mib": per,
        "service_rss_kib": [before.rss_kib, after.rss_kib],
        "service_pss_kib": [before.pss_kib, after.pss_kib],
        "capture_pss_kib_median": capture_pss[len(capture_pss) // 2] if capture_pss else None,
        "capture_rss_kib_sum": sum(c.rss_kib for c in captures),
        "capture_pss_kib_sum": sum(c.pss_kib for c in captures),
        "how": "smaps_rollup of the service (growth from 0 to N running) and of every "
               "capture process, divided by N; QEMU not counted",
    }]


if __name__ == "__main__":
    from bench.runner import main

    sys.exit(main(["--only", "host_memory", *sys.argv[1:]]))
