"""Root disk creation: what vmops adds over the bare tools, and what base size costs.

    python -m bench.disks [--quick]

Scenarios (each alternates the two sides, several repetitions, medians):
- cow_root_vs_bare_qemu_img: create_root_disk(use_cow=True) against
  ``qemu-img create -f qcow2 -b base -F fmt`` of the same overlay. vmops adds
  the O_EXCL claim and prlimit; target <= 1.5x.
- cow_root_4GiB_vs_64MiB_base: the same call on a 4 GiB and a 64 MiB base
  (sparse raw files). An overlay writes metadata only, so the base size must
  not matter; target <= 1.2x.
- full_copy_vs_cp: create_root_disk(use_cow=False), a qemu-img convert to a
  standalone qcow2, against ``cp`` of the same base with real data. Reported
  with a loose target (<= 2x): convert does more (qcow2 metadata) to give one
  root disk format.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmops.disks.instance_disks import BaseImage, create_root_disk

MiB = 1 << 20
GiB = 1 << 30
ROOT_SIZE = 10 * GiB

Step = Callable[[Path], None]


def _timed(step: Step, dest: Path) -> float:
    start = time.perf_counter()
    step(dest)
    elapsed = (time.perf_counter() - start) * 1000
    dest.unlink()
    return elapsed


def _alternate(first: Step, second: Step, reps: int, work: Path) -> tuple[float, float]:
    """Median ms of each side, run one after the other so drift hits both."""
    a: list[float] = []
    b: list[float] = []
    for i in range(reps):
        a.append(_timed(first, work / f"a{i}.qcow2"))
        b.append(_timed(second, work / f"b{i}.qcow2"))
    return statistics.median(a), statistics.median(b)


def _row(scenario: str, vmops_ms: float, baseline_ms: float, limit: float) -> dict[str, Any]:
    ratio = vmops_ms / baseline_ms
    return {
        "scenario": scenario,
        "vmops_median_ms": round(vmops_ms, 2),
        "baseline_median_ms": round(baseline_ms, 2),
        "ratio": round(ratio, 2),
        "target": f"<= {limit}x",
        "pass": ratio <= limit,
    }


def _sparse_raw(path: Path, size: int) -> BaseImage:
    with path.open("wb") as f:
        f.truncate(size)
    return BaseImage(path=path, format="raw", virtual_size=size)


def _raw_with_data(path: Path, size: int) -> BaseImage:
    with path.open("wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    return BaseImage(path=path, format="raw", virtual_size=size)


def _cow(base: BaseImage) -> Step:
    return lambda dest: _ignore(create_root_disk(base, dest, ROOT_SIZE, True, "bench", "bench"))


def _ignore(_: object) -> None:
    pass


def _bare_overlay(base: BaseImage) -> Step:
    def step(dest: Path) -> None:
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base.path), "-F", base.format]
            + [str(dest), str(ROOT_SIZE)],
            check=True,
        )

    return step


def _full_copy(base: BaseImage) -> Step:
    return lambda dest: _ignore(create_root_disk(base, dest, None, False, "bench", "bench"))


def _cp(base: BaseImage) -> Step:
    return lambda dest: _ignore(subprocess.run(["cp", str(base.path), str(dest)], check=True))


def run(quick: bool) -> list[dict[str, Any]]:
    reps = 5 if quick else 15
    with tempfile.TemporaryDirectory(prefix="vmops-bench-disks-") as tmp:
        work = Path(tmp)
        small = _sparse_raw(work / "small.raw", 64 * MiB)
        large = _sparse_raw(work / "large.raw", 4 * GiB)
        data = _raw_with_data(work / "data.raw", (64 if quick else 256) * MiB)
        rows = [
            _row(
                "cow_root_vs_bare_qemu_img",
                *_alternate(_cow(small), _bare_overlay(small), reps, work),
                1.5,
            ),
            _row(
                "cow_root_4GiB_vs_64MiB_base",
                *_alternate(_cow(large), _cow(small), reps, work),
                1.2,
            ),
            _row(
                f"full_copy_vs_cp_{data.virtual_size // MiB}MiB",
                *_alternate(_full_copy(data), _cp(data), max(3, reps // 3), work),
                2.0,
            ),
        ]
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller copy")
    _print_table(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
