"""The service's memory as it makes records without guests (issue #17's
"Service flatness" breakdown; not a scenario of the runner).

    python -m bench.service_memory [--records 1000] [--source DIR] [--trace N]

A fresh ``vmops serve`` (bench/vmopsd.py: TCG, user-mode NICs, its own
state directory), the test image imported, then, one second after each
step, the service's RSS and PSS from ``/proc/PID/smaps_rollup``:

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
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

from bench.common import REPO, remove_tree, short_tmpdir, test_image
from bench.host_memory import memory_of
from bench.vmopsd import VmopsService

# Runs ``python -m vmops serve`` with a thread that, when the file
# ``<dir>/<n>.want`` appears, writes a tracemalloc snapshot to ``<n>.snap``.
_TRACED_SERVE = """
import gc, os, runpy, sys, threading, time, tracemalloc
sys.path.insert(0, os.getcwd())
where = sys.argv[1]
def watch():
    n = 0
    while True:
        if os.path.exists(os.path.join(where, f"{n}.want")):
            gc.collect()
            path = os.path.join(where, f"{n}.snap")
            tracemalloc.take_snapshot().dump(path + ".tmp")
            os.rename(path + ".tmp", path)
            n += 1
        time.sleep(0.2)
threading.Thread(target=watch, name="bench-snapshots", daemon=True).start()
sys.argv = ["vmops", "serve"]
runpy.run_module("vmops", run_name="__main__", alter_sys=True)
"""


class _TracedService(VmopsService):
    """The bench's service, run under tracemalloc with snapshots on request."""

    def __init__(self, frames: int, source: Path) -> None:
        super().__init__(settings_env={"PYTHONTRACEMALLOC": str(frames)}, source=source)
        self.snapshots = short_tmpdir("snap")
        self._taken = 0

    def command(self) -> list[str]:
        return [sys.executable, "-c", _TRACED_SERVE, str(self.snapshots)]

    def snapshot(self, timeout: float = 300.0) -> tracemalloc.Snapshot:
        n, self._taken = self._taken, self._taken + 1
        (self.snapshots / f"{n}.want").touch()
        path = self.snapshots / f"{n}.snap"
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the service took no tracemalloc snapshot")
            time.sleep(0.2)
        return tracemalloc.Snapshot.load(str(path))

    def close(self) -> None:
        try:
            super().close()
        finally:
            remove_tree(self.snapshots)


def _show(svc: VmopsService, step: str) -> None:
    assert svc.proc is not None
    time.sleep(1.0)  # as service_flat: let the last requests' threads end
    mem = memory_of(svc.proc.pid)
    print(f"{time.strftime('%H:%M:%S')} {step}: RSS {mem.rss_kib / 1024:.1f} MiB, "
          f"PSS {mem.pss_kib / 1024:.1f} MiB", flush=True)


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
    parser.add_argument("--top", type=int, default=25,
                        help="with --trace: how many lines and files to print")
    args = parser.parse_args(argv)
    traced = _TracedService(args.trace, args.source.resolve()) if args.trace else None
    svc = traced or VmopsService(source=args.source.resolve())
    try:
        svc.start()
        svc.ensure_image(test_image())
        _show(svc, "started")
        svc.define_many("warm-", 10)
        _show(svc, "10 instances")
        before = traced.snapshot() if traced else None
        svc.define_many("rec-", args.records)
        _show(svc, f"{args.records + 10} instances")
        svc.client.get("/servers/detail")
        _show(svc, "listed")
        listed = traced.snapshot() if traced else None
        svc.destroy_all()
        _show(svc, "all destroyed")
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
