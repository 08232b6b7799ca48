"""Spawns at once: vmops against as many parallel libvirt-python creates.

    python -m bench --only concurrency [--quick]     (or: python -m bench.concurrency)

8 at once, and in a full run also 32 at once (``VMOPS_BENCH_WIDE_SPAWNS``
sets that number, e.g. 4 to try the code path with few guests; 0 leaves
it out). Targets (issue #17): the 8, <= 1.2x the libvirt makespan; the
32, <= 1.25x, no API connection refused (not even one retried) and no
spawn failed.

- vmops: one thread per spawn, each ``POST /servers?vmops:wait=600`` at the
  same moment; each answer comes once its spawn has ended, ACTIVE (until
  2026-12-02 a poller read ``GET /servers/detail`` every 20 ms instead).
- libvirt: as many threads, each ``defineXML`` + ``create`` of vmops' domain
  XML (renamed, on fresh disk copies made beforehand) on the baseline root.

Reported: the makespan (start to the last one running) as the compared
time, throughput (spawns per second over the makespan) and spread (last
minus first to finish), and the median of each step of the spawns
(``vmops:timings``; ``outside vmops``: from the release until the
spawn's answer, minus vmops' total).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
from collections.abc import Callable
from typing import Any

from bench import session, timings
from bench.common import Row, Target, alternate, make_row, median, now
from bench.virt import make_disks, new_uuid, rewrite_domain_xml

WIDTH = 8
WIDE = 32
TARGET = Target(1.2)
WIDE_TARGET = Target(1.25)
TIMEOUT_S = 600.0


def wide_width(quick: bool) -> int:
    """How many spawns at once in the wide round (0: none)."""
    given = os.environ.get("VMOPS_BENCH_WIDE_SPAWNS", "")
    if given:
        return int(given)
    return 0 if quick else WIDE


def run(quick: bool) -> list[Row]:
    rows = [_width_row(WIDTH, 1 if quick else 4, TARGET)]
    wide = wide_width(quick)
    if wide:
        rows.append(judge_wide(_width_row(wide, 1 if quick else 2, WIDE_TARGET)))
    return rows


def judge_wide(row: Row) -> Row:
    """The wide round's verdict: the makespan ratio, and no API connection
    refused (a failed spawn raises before: the row is then an ERROR)."""
    if row["passed"] is not None:
        row["passed"] = bool(row["passed"]) and row["api_eagain_retries"] == 0
    row["target"] = f"{WIDE_TARGET.text()}, no refused connection, no failure"
    return row


def _width_row(width: int, reps: int, target: Target | None) -> Row:
    s = session.get()
    svc = s.vmops
    lv = s.baseline
    tpl = s.template(config_drive=False)
    retries_before = svc.client.eagain_retries
    vm_make: list[float] = []
    vm_spread: list[float] = []
    lv_make: list[float] = []
    lv_spread: list[float] = []
    steps: list[dict[str, float]] = []  # each spawn's vmops:timings

    def vmops_side(r: int) -> None:
        names = [f"cc{width}-{r}-{k}" for k in range(width)]
        ids: list[str] = []
        done: dict[str, float] = {}

        def spawn(name: str) -> None:
            ids.append(svc.spawn_waited(name, timeout=TIMEOUT_S))  # answers once ACTIVE
            done[name] = now()

        try:
            t0 = _all_at_once([functools.partial(spawn, n) for n in names])
            ends = sorted(done.values())
            vm_make.append((ends[-1] - t0) * 1000.0)
            vm_spread.append((ends[-1] - ends[0]) * 1000.0)
            for server_id in ids:  # where each spawn's time went, read after the clock
                server = svc.client.get(f"/servers/{server_id}")["server"]
                own = timings.steps_of(server, "spawn")
                if own is not None:
                    steps.append(timings.phases(own, (done[server["name"]] - t0) * 1000.0))
        finally:  # by name: a spawn that failed has no id here
            _parallel([lambda n=n: svc.destroy(n) for n in names])

    def libvirt_side(r: int) -> None:
        xmls = []
        dirs = []
        for k in range(width):
            wd = s.workdir(f"cc{width}-lv-{r}-{k}")
            dirs.append(wd)
            disks = make_disks(tpl.disks, wd)
            xmls.append(rewrite_domain_xml(tpl.domain_xml, f"cc{width}-lv-{r}-{k}", new_uuid(),
                                           disks, lv.run_dir / f"cc{k}.sock"))
        doms: list[Any] = []
        ends: list[float] = []
        lock = threading.Lock()

        def create(xml: str) -> None:
            dom = lv.define(xml)
            with lock:
                doms.append(dom)
            dom.create()
            with lock:
                ends.append(now())

        try:
            t0 = _all_at_once([functools.partial(create, x) for x in xmls])
            ends.sort()
            lv_make.append((ends[-1] - t0) * 1000.0)
            lv_spread.append((ends[-1] - ends[0]) * 1000.0)
        finally:
            _parallel([lambda d=d: lv.remove(d) for d in doms])
            for wd in dirs:
                shutil.rmtree(wd, ignore_errors=True)

    alternate(reps, vmops_side, libvirt_side)
    vm_m = median(vm_make)
    lv_m = median(lv_make)
    return make_row(
        f"concurrency_{width}_spawns", vm_make, lv_make, target,
        vmops_throughput_per_s=round(width / (vm_m / 1000.0), 3) if vm_m else None,
        baseline_throughput_per_s=round(width / (lv_m / 1000.0), 3) if lv_m else None,
        vmops_spread_ms=round(median(vm_spread) or 0.0, 1),
        api_eagain_retries=svc.client.eagain_retries - retries_before,
        baseline_spread_ms=round(median(lv_spread) or 0.0, 1),
        timings_verb=f"spawn ({width} at once)", timings_steps_ms=timings.median_phases(steps),
        timings_samples=len(steps), width=width)


def _all_at_once(actions: list[Callable[[], object]]) -> float:
    """Run ``actions`` in threads released together; when all have ended,
    return the release time, or raise the first error one of them raised."""
    go = threading.Barrier(len(actions) + 1)
    errors: list[BaseException] = []

    def run(action: Callable[[], object]) -> None:
        go.wait()
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a,)) for a in actions]
    for t in threads:
        t.start()
    go.wait()
    released = now()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return released


def _parallel(actions: list[Any]) -> None:
    threads = [threading.Thread(target=a) for a in actions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    from bench.runner import main

    sys.exit(main(["--only", "concurrency", *sys.argv[1:]]))
