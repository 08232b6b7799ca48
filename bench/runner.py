"""Run the bench scenarios, print the table, write the results.

    python -m bench [--quick] [--out DIR] [--only SCENARIO,...]

Each scenario is a module with ``run(quick) -> list[dict]``. Rows from the
older modules (``configdrive``: ``median_ms``/``pass``; ``disks``:
``pass``) are brought to the common keys here. A scenario that raises is
reported as an ERROR row and the run goes on; every VM and process the
bench started is removed at the end, on Ctrl-C and SIGTERM too.

Exit status: 0 when every scenario ran (whatever the timings: nothing here
asserts speed), 1 when one failed to run, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import report, session
from bench.common import CLEANUP, REPO, Row, raise_on_sigterm

# In the order they run: cheap in-process ones first, the one that fills
# the service with 200 instances last.
SCENARIOS: dict[str, str] = {
    "configdrive": "bench.configdrive",
    "disks": "bench.disks",
    "console": "bench.console",
    "spawn_running": "bench.spawn_running",
    "spawn_boot": "bench.spawn_boot",
    "spawn_address": "bench.spawn_address",
    "net_throughput": "bench.net_throughput",
    "lifecycle": "bench.lifecycle",
    "guest_stop": "bench.guest_stop",
    "console_flood": "bench.console_flood",
    "snapshot": "bench.snapshot",
    "volume_io": "bench.volume_io",
    "concurrency": "bench.concurrency",
    "host_memory": "bench.host_memory",
    "mgmt_plane": "bench.mgmt_plane",
    "service_flat": "bench.service_flat",
}
# Guest-heavy scenarios left out of a whole --quick run (CI's smoke run,
# whose time counts against CI's 45 minutes) unless named with --only:
# their parsing and arithmetic are tested in bench/tests, their guests run
# in the full run.
FULL_RUN_ONLY = {"snapshot", "volume_io", "guest_stop", "host_memory", "console_flood",
                 "service_flat"}
DEFAULT_OUT = REPO / "bench" / "results"

log = logging.getLogger("bench")


def normalize(row: dict[str, Any], scenario: str) -> Row:
    """The common keys, whatever the module called them; the rest kept."""
    out: Row = dict(row)
    out["module"] = scenario
    out["scenario"] = str(row.get("scenario", scenario))
    out["vmops_median_ms"] = row.get("vmops_median_ms", row.get("median_ms"))
    out["baseline_median_ms"] = row.get("baseline_median_ms")
    ratio = row.get("ratio")
    if ratio is None and out["vmops_median_ms"] and out["baseline_median_ms"]:
        ratio = round(out["vmops_median_ms"] / out["baseline_median_ms"], 3)
    out["ratio"] = ratio
    out["target"] = str(row.get("target") or "")
    passed = row.get("passed", row.get("pass"))
    out["passed"] = None if passed is None else bool(passed)
    out.pop("pass", None)
    return out


def run_scenario(name: str, quick: bool, named: bool = False) -> list[Row]:
    if quick and name in FULL_RUN_ONLY and not named:
        return [normalize({"scenario": name, "skipped": "full run only (not in --quick)"}, name)]
    try:
        module = importlib.import_module(SCENARIOS[name])
    except ModuleNotFoundError as exc:
        if exc.name != SCENARIOS[name]:
            raise
        log.warning("%s: no module %s yet; skipped", name, SCENARIOS[name])
        return [normalize({"scenario": name, "skipped": f"no module {SCENARIOS[name]}"}, name)]
    return [normalize(r, name) for r in module.run(quick)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench",
                                     description="vmops against raw libvirt and QEMU")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions and smaller sizes (CI smoke run, ~2 min)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"where to write results (default {DEFAULT_OUT})")
    parser.add_argument("--only", default="",
                        help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    args.names = names
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="bench: %(message)s", stream=sys.stderr)
    raise_on_sigterm()
    started = time.monotonic()
    rows: list[Row] = []
    status = 0
    try:
        for name in args.names:
            t0 = time.monotonic()
            log.info("== %s%s", name, " (quick)" if args.quick else "")
            try:
                got = run_scenario(name, args.quick, named=bool(args.only))
            except Exception as exc:  # noqa: BLE001 - report it, run the rest
                traceback.print_exc()
                got = [normalize({"scenario": name, "error": f"{type(exc).__name__}: {exc}"},
                                 name)]
                status = 1
            rows += got
            log.info("   %s took %.0f s", name, time.monotonic() - t0)
            for r in got:
                log.info("   %s", " | ".join(report.table_rows([r])[0]))
    except KeyboardInterrupt:
        log.warning("interrupted: cleaning up, writing what was measured")
        status = 130
    finally:
        t0 = time.monotonic()
        try:
            session.close()
        finally:
            CLEANUP.run_all()
        log.info("clean-up took %.0f s", time.monotonic() - t0)
    results = {"machine": report.machine_info(), "quick": args.quick,
               "scenarios": args.names, "duration_s": round(time.monotonic() - started, 1),
               "rows": rows}
    print(report.format_table(rows))
    written = report.write(args.out, results)
    print(f"total {results['duration_s']:.0f} s; wrote " + ", ".join(str(p) for p in written))
    return status
