"""The service's memory as it makes records without guests (issue #17's
"Service flatness" breakdown; not a scenario of the runner).

    python -m bench.service_memory [--records 1000] [--source DIR] [--trace N | --breakdown]

A fresh ``vmops serve`` (bench/vmopsd.py: TCG, user-mode NICs, its own
state directory), the test image imported, then, one second after each
step, the service's RSS, PSS and anonymous memory from
``/proc/PID/smaps_rollup`` (PSS also moves with other processes mapping
the same libraries; the anonymous memory is the service's own):

- started: the image imported, no instance;
- 10 instances made with ``"vmops:start": false`` (the first defines load
  libvirt's QEMU capabilities and every code path);
- ``--records`` more made the same way (``define_many``: 100 per request,
  polling the unfiltered list until all are SHUTOFF), as ``mgmt_plane``
  and ``service_flat`` make theirs;
- after one more unfiltered list;
- after every instance is destroyed.

No guest boots: no guest lock needed. ``--source`` runs the service from
another checkout of vmops (e.g. ``git archive COMMIT`` unpacked), to
compare two commits on the same machine state. Prints one line per step.

``--trace N`` attributes the Python objects instead: the service runs
under ``tracemalloc`` (``N`` frames per allocation; tracing slows it 3-4x
and doubles its memory, so its RSS and PSS are not comparable with an
untraced run's), and after the 10 instances, after the list and after
the destroy it takes a snapshot (after a ``gc.collect()``); the growth
between them is printed by line and by file (``--top`` lines each).

``--breakdown`` has the service say, at each step, where its memory is
(bench/memory_probe.py): its anonymous memory, glibc malloc's bytes in use
and free (each arena's), Python's small-object arenas and the bytes in
their blocks, and SQLite's own allocations (part of malloc's in use); then
the growth from 10 instances to listed, split the same way. Untraced: its
RSS and PSS are an ordinary run's (the probe's thread and module aside).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench import memory_probe
from bench.common import REPO, remove_tree, short_tmpdir, test_image
from bench.host_memory import memory_of
from bench.vmopsd import VmopsService

MIB = 1 << 20


class _ProbedService(VmopsService):
    """The bench's service, run by bench/memory_probe.py: a tracemalloc
    snapshot (``trace``) or a breakdown (``breakdown``) on request."""

    def __init__(self, mode: str, source: Path, frames: int = 0) -> None:
        settings = {"PYTHONTRACEMALLOC": str(frames)} if mode == "trace" else {}
        super().__init__(settings_env=settings, source=source)
        self.mode = mode
        self.requests = short_tmpdir("probe")
        self._taken = 0

    def command(self) -> list[str]:
        # The probe of this checkout, whatever vmops --source names.
        return [sys.executable, memory_probe.__file__, str(self.requests), self.mode]

    def _ask(self, suffix: str, timeout: float) -> Path:
        n, self._taken = self._taken, self._taken + 1
        (self.requests / f"{n}.want").touch()
        path = self.requests / f"{n}{suffix}"
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the service did not answer {n}.want")
            time.sleep(0.1)
        return path

    def snapshot(self, timeout: float = 300.0) -> tracemalloc.Snapshot:
        return tracemalloc.Snapshot.load(str(self._ask(".snap", timeout)))

    def breakdown(self, timeout: float = 60.0) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self._ask(".json", timeout).read_text())
        return found

    def close(self) -> None:
        try:
            super().close()
        finally:
            remove_tree(self.requests)


def breakdown_line(b: dict[str, Any]) -> str:
    """One step's breakdown, in MiB."""
    mi, py = b.get("mallinfo2", {}), b["pymalloc"]
    arenas = ", ".join(f"{a['size'] / MIB:.1f}/{a['free'] / MIB:.1f}" for a in b.get("arenas", []))
    return (f"    anon {b['rollup'].get('Anonymous', 0) / 1024:.1f}; malloc in use "
            f"{mi.get('uordblks', 0) / MIB:.1f}, free {mi.get('fordblks', 0) / MIB:.1f} "
            f"(arenas size/free: {arenas}), mapped {mi.get('hblkhd', 0) / MIB:.1f}; "
            f"pymalloc {py.get('arenas', 0)} arenas, {py.get('allocated', 0) / MIB:.1f} in "
            f"blocks; sqlite {b['sqlite'].get('memory_used', 0) / MIB:.2f}")


def growth_line(new: dict[str, Any], old: dict[str, Any], per: int) -> str:
    """What grew from ``old`` to ``new``, split: malloc's bytes in use (SQLite's
    among them) and free, Python's arenas, and the rest of the anonymous
    memory (libraries' data, stacks, ...); KiB per record after the MiB."""
    def d(get: Any) -> float:
        return float(get(new) - get(old)) / MIB

    anon = d(lambda b: b["rollup"].get("Anonymous", 0) * 1024)
    inuse = d(lambda b: b.get("mallinfo2", {}).get("uordblks", 0))
    free = d(lambda b: b.get("mallinfo2", {}).get("fordblks", 0))
    arenas = d(lambda b: b["pymalloc"].get("arena_bytes", 0))
    blocks = d(lambda b: b["pymalloc"].get("allocated", 0))
    sqlite = d(lambda b: b["sqlite"].get("memory_used", 0))
    rest = anon - inuse - free - arenas

    def each(mib: float) -> str:
        return f"{mib:+.1f} ({mib * 1024 / max(per, 1):+.1f} KiB/rec)"

    return (f"anon {each(anon)} = malloc in use {each(inuse)} [sqlite {each(sqlite)}] "
            f"+ malloc free {each(free)} + pymalloc arenas {each(arenas)} "
            f"[in blocks {each(blocks)}] + rest {each(rest)} (MiB; free counted "
            "as if resident)")


def _show(svc: VmopsService, step: str) -> None:
    assert svc.proc is not None
    time.sleep(1.0)  # as service_flat: let the last requests' threads end
    mem = memory_of(svc.proc.pid)
    print(f"{time.strftime('%H:%M:%S')} {step}: RSS {mem.rss_kib / 1024:.1f} MiB, "
          f"PSS {mem.pss_kib / 1024:.1f} MiB, anon {mem.anon_kib / 1024:.1f} MiB", flush=True)


def _growth(title: str, new: tracemalloc.Snapshot, old: tracemalloc.Snapshot,
            per: int, top: int) -> None:
    """What grew from ``old`` to ``new``, by line and by file; ``per``: the
    number of records it is divided by."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]
    new, old = new.filter_traces(ignore), old.filter_traces(ignore)
    total = sum(s.size_diff for s in new.compare_to(old, "filename"))
    print(f"\n== {title}: {total / 1e6:+.2f} MB of Python objects "
          f"({total / max(per, 1):+.0f} B per record)")
    for key in ("lineno", "filename"):
        print(f"-- by {key}")
        for stat in new.compare_to(old, key)[:top]:
            frame = stat.traceback[0]
            print(f"{stat.size_diff / 1e3:+10.1f} kB {stat.size_diff / max(per, 1):+8.0f} B/rec "
                  f"{stat.count_diff:+8d} objs  {_short(frame.filename)}:"
                  f"{frame.lineno if key == 'lineno' else ''}")


def _short(filename: str) -> str:
    for marker in ("/vmops/", "/site-packages/", "/lib/python3"):
        if marker in filename:
            return filename[filename.index(marker) + 1:]
    return filename


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.service_memory",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--source", type=Path, default=REPO,
                        help="the vmops checkout to run the service from")
    parser.add_argument("--trace", type=int, default=0, metavar="FRAMES",
                        help="attribute with tracemalloc (FRAMES per allocation) instead")
    parser.add_argument("--breakdown", action="store_true",
                        help="the service says where its memory is at each step")
    parser.add_argument("--top", type=int, default=25,
                        help="with --trace: how many lines and files to print")
    args = parser.parse_args(argv)
    if args.trace and args.breakdown:
        parser.error("--trace or --breakdown, not both")
    source = args.source.resolve()
    traced = _ProbedService("trace", source, args.trace) if args.trace else None
    probed = _ProbedService("breakdown", source) if args.breakdown else None
    svc = traced or probed or VmopsService(source=source)
    seen: dict[str, dict[str, Any]] = {}

    def show(step: str) -> None:
        _show(svc, step)
        if probed:
            seen[step] = probed.breakdown()
            print(breakdown_line(seen[step]), flush=True)

    try:
        svc.start()
        svc.ensure_image(test_image())
        show("started")
        svc.define_many("warm-", 10)
        show("10 instances")
        before = traced.snapshot() if traced else None
        svc.define_many("rec-", args.records)
        show(f"{args.records + 10} instances")
        svc.client.get("/servers/detail")
        show("listed")
        listed = traced.snapshot() if traced else None
        svc.destroy_all()
        show("all destroyed")
        if probed:
            print(f"\n== 10 instances -> listed: "
                  f"{growth_line(seen['listed'], seen['10 instances'], args.records)}")
        if traced and before and listed:
            gone = traced.snapshot()
            _growth(f"{args.records} records, listed", listed, before, args.records, args.top)
            _growth("after all destroyed, against 10 instances", gone, before,
                    args.records, args.top)
    finally:
        svc.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
