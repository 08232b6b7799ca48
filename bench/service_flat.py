"""The service's memory and API latency with 20 running guests and 1,000
records, against the same service with none.

    python -m bench --only service_flat      (full run only; or: python -m bench.service_flat)

One running instance (the probe, booted) is there in both states:

- at 0: the probe alone;
- loaded: the probe, ``GUESTS - 1`` more running m1.tiny instances (spawned
  5 at a time, booted) and ``RECORDS`` instances made without booting
  (``"vmops:start": false``, SHUTOFF, as ``mgmt_plane`` makes them).

In each state, one second after it settles: the service's RSS, PSS and
anonymous memory (``/proc/PID/smaps_rollup``, as ``host_memory``; PSS also
moves with other processes mapping the same libraries, the anonymous
memory is the service's own) and, ``REPS`` times each,
alternating: ``GET /servers/{probe}`` (show: the record, its network rows
and, as the CLI asks with ``X-Vmops-Extra``, the domain's live state from
libvirt), ``GET /flavors/detail`` (no instance involved: the HTTP and
policy path alone) and ``pause`` then ``unpause`` of the probe (an action
through the compute layer and libvirt, answered when done: ``vmops:wait``),
and the same two calls made directly with libvirt-python on a control
domain (vmops' domain XML on the bench's own embed root, running in both
states): what the running guests do to libvirt's and QEMU's own time.

Pause+unpause gives three rows: the time through vmops, vmops' own part of
it (that time less the hypervisor calls' step in ``vmops:timings``, read
after each call, outside the clock) and the control's direct calls (no
target: the noise the guests' CPU brings to anything that waits on QEMU).

Rows: each operation's latency loaded ("vmops" column) against at 0
("baseline"), target ``<= 1.25x or + 2 ms`` ("flat within noise"), and the
service's RSS and PSS in both states. ``VMOPS_BENCH_FLAT_GUESTS`` and
``VMOPS_BENCH_FLAT_RECORDS`` set the 20 and the 1,000 (e.g. 3 and 50 to try
the code path). The running guests load the machine's CPU (TCG) as well:
that is part of what the loaded latency sees, and the report says so.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

from bench import session, timings
from bench.common import Row, Target, alternate, make_row, ms_since, now
from bench.host_memory import Memory, memory_of
from bench.virt import make_disks, new_uuid, rewrite_domain_xml

log = logging.getLogger("bench")

GUESTS = 20
RECORDS = 1000
REPS = 25
TARGET = Target(1.25, slack_ms=2.0)
MEMORY_TARGET = 1.1  # "flat within noise": at most 10 % more when loaded
BOOT_MARK = b"VMOPS-BOOT-COMPLETE"
PANIC_MARK = b"Kernel panic"
BOOT_TIMEOUT_S = 600.0
# The step of a quick verb's vmops:timings that is the hypervisor's call
# (between the crash points after-begin and after-work).
HYPERVISOR_STEP = "work"
# Rows shown without a target: the control's direct libvirt calls.
UNTARGETED = ("pause_unpause_libvirt",)


def sizes() -> tuple[int, int]:
    return (int(os.environ.get("VMOPS_BENCH_FLAT_GUESTS", GUESTS)),
            int(os.environ.get("VMOPS_BENCH_FLAT_RECORDS", RECORDS)))


def run(quick: bool) -> list[Row]:
    s = session.get()
    svc = s.vmops
    lv = s.baseline
    guests, records = sizes()
    reps = 8 if quick else REPS
    wd = s.workdir("sf-lv")
    tpl = s.template(config_drive=False)
    control = lv.define(rewrite_domain_xml(tpl.domain_xml, "sf-lv", new_uuid(),
                                           make_disks(tpl.disks, wd), lv.run_dir / "sf.sock"))
    try:
        control.create()  # boots beside the probe
        probe = svc.spawn("sf-probe")
        if not _wait_booted(svc, [probe]):
            raise RuntimeError("the probe guest did not boot")
        idle = _measure(svc, probe, control, reps)
        running = [probe]
        names = [f"sf-guest-{i}" for i in range(1, guests)]
        for start in range(0, len(names), 5):  # 5 at a time: the host has 2 cores
            batch = names[start:start + 5]
            running += [svc.post_server(n) for n in batch]
            for n in batch:
                svc.wait_built(n, interval=0.2)
        if records:
            svc.define_many("sf-rec-", records)
        booted = _wait_booted(svc, running)
        loaded = _measure(svc, probe, control, reps)
        count = svc.server_count()
    finally:
        lv.remove(control)
        shutil.rmtree(wd, ignore_errors=True)
        svc.destroy_all()
    return [{**row, "guests_booted": booted} for row in _rows(idle, loaded, guests, records,
                                                                count)]


def _wait_booted(svc: Any, ids: list[str]) -> int:
    """Until every guest has booted or stopped trying (a kernel panic: under
    TCG on a starved host the guest's timer check can fail); how many
    booted. Their QEMUs run either way, which is what the scenario needs."""
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    waiting = list(ids)
    while waiting and time.monotonic() < deadline:
        logs = {i: svc.console_log(i) for i in waiting}
        waiting = [i for i, text in logs.items()
                   if BOOT_MARK not in text and PANIC_MARK not in text]
        time.sleep(0.5)
    booted = sum(BOOT_MARK in svc.console_log(i) for i in ids)
    if booted < len(ids):
        log.warning("service_flat: %d of %d guests booted", booted, len(ids))
    return booted


def _measure(svc: Any, probe: str, control: Any, reps: int) -> dict[str, Any]:
    """The service's memory, then each operation's latencies."""
    assert svc.proc is not None
    time.sleep(1.0)  # let the last spawns' threads and garbage settle
    memory = memory_of(svc.proc.pid)
    samples: dict[str, list[float]] = {"show": [], "flavors": [], "pause_unpause": [],
                                       "pause_unpause_own": [], "pause_unpause_libvirt": []}

    def timed(op: str, call: Callable[[], Any]) -> Callable[[int], None]:
        def side(_i: int) -> None:
            t0 = now()
            call()
            samples[op].append(ms_since(t0))
        return side

    def pause_unpause(_i: int) -> None:
        total = hypervisor = 0.0
        for verb in ("pause", "unpause"):
            t0 = now()
            svc.action(probe, {verb: None})
            took = ms_since(t0)
            total += took
            steps = timings.steps_of(svc.client.get(f"/servers/{probe}")["server"], verb)
            if steps is None:
                raise RuntimeError(f"the probe's {verb} left no timings of it")
            hypervisor += timings.phases(steps, took).get(HYPERVISOR_STEP, 0.0)
        samples["pause_unpause"].append(total)
        samples["pause_unpause_own"].append(total - hypervisor)

    def direct() -> None:
        control.suspend()
        control.resume()

    sides = [timed("show", lambda: svc.client.get(f"/servers/{probe}")),
             timed("flavors", lambda: svc.client.get("/flavors/detail")),
             pause_unpause,
             timed("pause_unpause_libvirt", direct)]
    for side in sides:  # warm-up, not kept
        side(0)
    for values in samples.values():
        values.clear()
    alternate(reps, *sides)
    return {"memory": memory, "samples": samples}


def _rows(idle: dict[str, Any], loaded: dict[str, Any], guests: int, records: int,
          count: int) -> list[Row]:
    common = {"guests_running": guests, "records": records, "instances_listed": count}
    rows = [make_row(f"service_flat_{op}_{guests}_guests_{records}_records",
                     loaded["samples"][op], idle["samples"][op],
                     None if op in UNTARGETED else TARGET, op=op,
                     vs="the same with one running instance and no records", **common)
            for op in idle["samples"]]
    before: Memory = idle["memory"]
    after: Memory = loaded["memory"]
    rows.append({
        "scenario": f"service_flat_memory_{guests}_guests_{records}_records",
        "vmops_median_ms": None, "baseline_median_ms": None,
        "ratio": round(after.pss_kib / before.pss_kib, 3) if before.pss_kib else None,
        "target": f"service PSS <= {MEMORY_TARGET:g}x the same at 0",
        "passed": after.pss_kib <= MEMORY_TARGET * before.pss_kib,
        "service_rss_kib": [before.rss_kib, after.rss_kib],
        "service_pss_kib": [before.pss_kib, after.pss_kib],
        "service_anon_kib": [before.anon_kib, after.anon_kib],
        "growth_mib": {"rss": round((after.rss_kib - before.rss_kib) / 1024, 2),
                       "pss": round((after.pss_kib - before.pss_kib) / 1024, 2),
                       "anon": round((after.anon_kib - before.anon_kib) / 1024, 2)},
        **common,
    })
    return rows


if __name__ == "__main__":
    from bench.runner import main

    sys.exit(main(["--only", "service_flat", *sys.argv[1:]]))
