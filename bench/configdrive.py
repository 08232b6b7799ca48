"""How long building a typical config drive takes in a warm process.

    python -m bench.configdrive [--quick]

``run(quick)`` returns one row per scenario for a bench runner:
``{"scenario", "median_ms", "p90_ms", "target", "pass"}``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmops.configdrive import InstanceMetadata, Limits, Nic, build_config_drive, build_tree

TARGET_MEDIAN_MS = 10.0
_WARMUP = 5


def typical_instance() -> InstanceMetadata:
    """What a usual spawn puts on the drive: one key, one NIC, cloud-config, a file."""
    return InstanceMetadata(
        uuid="3f9a1c52-7d4e-4b8a-a0c1-5e6f7a8b9c0d",
        name="web-1",
        hostname="web-1",
        project_id="demo",
        properties={"role": "web", "owner": "ops"},
        public_keys={"default": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchKey user@host\n"},
        injected_files=[("/etc/motd", b"welcome\n" * 64)],
        user_data=b"#cloud-config\n" + b"runcmd:\n  - [echo, hello]\n" * 80,
        admin_password="bench-password",
        nics=[Nic(mac="52:54:00:12:34:56", address="192.0.2.10", prefix=24, gateway="192.0.2.1")],
        vendor_data={"cloud-init": "#cloud-config\n"},
        random_seed=bytes(512),
    )


def _timings_ms(action: Callable[[], object], rounds: int) -> list[float]:
    for _ in range(_WARMUP):
        action()
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        timings.append((time.perf_counter() - start) * 1000.0)
    return timings


def _row(scenario: str, timings: list[float]) -> dict[str, Any]:
    median = statistics.median(timings)
    p90 = statistics.quantiles(timings, n=10)[-1]
    return {
        "scenario": scenario,
        "median_ms": round(median, 3),
        "p90_ms": round(p90, 3),
        "target": f"median < {TARGET_MEDIAN_MS:g} ms",
        "pass": median < TARGET_MEDIAN_MS,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Time the metadata tree alone and the whole drive (validate, tree, ISO, fsync)."""
    rounds = 20 if quick else 200
    md = typical_instance()
    rows = [_row("configdrive.build_tree", _timings_ms(lambda: build_tree(md, True), rounds))]
    with tempfile.TemporaryDirectory(prefix="vmops-bench-") as workdir:
        dest = Path(workdir) / "disk.config"

        def whole_drive() -> None:
            build_config_drive(md, dest, Limits(), include_admin_password=True)

        rows.append(_row("configdrive.build_config_drive", _timings_ms(whole_drive, rounds)))
    return rows


def main(argv: list[str]) -> int:
    rows = run(quick="--quick" in argv)
    for row in rows:
        verdict = "PASS" if row["pass"] else "FAIL"
        print(
            f"{row['scenario']:<34} median {row['median_ms']:7.3f} ms  "
            f"p90 {row['p90_ms']:7.3f} ms  ({row['target']}) {verdict}"
        )
    return 0 if all(row["pass"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
