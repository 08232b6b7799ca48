"""scripts/soak: spawn/stop/start/destroy cycles through a real ``vmops
serve``, first on the fake hypervisor, then with real guests (the test
image under TCG, each cycle holding /tmp/vmops-guest.lock so only one
guest-booting run goes at a time, and letting it go between cycles);
prints the service's open descriptors, threads, RSS and the state
directory's files at start, after warm-up and at the end, and exits 1
when one grew beyond its bound (tools/soak/measure.py)."""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from tools.soak import measure
from tools.soak.run import (
    FAKE_SETTINGS,
    GUEST_SETTINGS,
    REPO,
    Soak,
    fake_cycle,
    guest_cycle,
    run_cycles,
    soak_dir,
)

GUEST_LOCK = Path("/tmp/vmops-guest.lock")
LOCK_PAUSE_S = 3.0  # between guest cycles, for a waiting run to take the lock


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__)
    parser.add_argument("--cycles", type=int, default=500,
                        help="cycles on the fake hypervisor (default 500)")
    parser.add_argument("--guest-cycles", type=int, default=50,
                        help="cycles with real guests (default 50; 0: none)")
    args = parser.parse_args()
    print(f"bounds from warm-up to end: fds +{measure.MAX_FD_GROWTH}, threads "
          f"+{measure.MAX_THREAD_GROWTH}, files +{measure.MAX_FILE_GROWTH}, RSS "
          f"+{measure.MAX_RSS_GROWTH_KIB // 1024} MiB, no QEMU or capture process left")
    failures: list[str] = []
    if args.cycles:
        print(f"fake hypervisor: {args.cycles} cycles")
        with soak_dir(FAKE_SETTINGS) as soak:
            failures += [f"fake: {g}" for g in
                         run_cycles(soak, fake_cycle, args.cycles, _warmup(args.cycles))]
    if args.guest_cycles:
        image_dir = Path(os.environ.get("VMOPS_TEST_IMAGE_DIR", REPO / ".cache" / "test-image"))
        subprocess.run([sys.executable, str(REPO / "tools" / "testimage" / "build.py"),
                        "--out", str(image_dir)], check=True, stdout=subprocess.DEVNULL)
        print(f"real guests: {args.guest_cycles} cycles (each holding {GUEST_LOCK})",
              flush=True)
        with soak_dir(GUEST_SETTINGS, ("tiny", image_dir / "tiny.qcow2")) as soak:
            failures += [f"guests: {g}" for g in run_cycles(
                soak, _one_guest_boot_at_a_time, args.guest_cycles,
                _warmup(args.guest_cycles))]
    for failure in failures:
        print(f"GREW: {failure}")
    print("FAILED" if failures else "passed: nothing grew beyond its bound")
    return 1 if failures else 0


def _one_guest_boot_at_a_time(soak: Soak) -> None:
    """A guest cycle holding the guest lock, then a pause without it: the
    soak measures growth, not speed, so it takes turns with other
    guest-booting runs on the machine instead of blocking them for an hour."""
    with GUEST_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            guest_cycle(soak)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    time.sleep(LOCK_PAUSE_S)


def _warmup(cycles: int) -> int:
    """The cycles before the reference sample: a tenth, at least one."""
    return max(1, cycles // 10)


if __name__ == "__main__":
    sys.exit(main())
