"""What every bench scenario shares: rows, statistics, targets, clean-up, paths.

A scenario module exposes ``run(quick: bool) -> list[dict]``; each row has
``scenario, vmops_median_ms, baseline_median_ms, ratio, target, passed``
(``passed`` is None when the scenario has no target) and may carry more keys
(samples, phases, counts) that the report and the plots read.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TMP_PREFIX = "vmops-bench-"

log = logging.getLogger("bench")

Row = dict[str, Any]


def now() -> float:
    return time.perf_counter()


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio_interval(vmops_ms: list[float], baseline_ms: list[float], level: float = 0.95,
                   draws: int = 2000, seed: int = 17) -> tuple[float, float] | None:
    """A bootstrap interval of the ratio of the medians: each side's samples
    drawn again with replacement, ``draws`` times (a fixed seed: the same
    samples give the same interval). It tells whether a run's ratio can
    tell a target apart from the boots' own spread: a 1.08x whose interval
    is 0.97-1.19 cannot."""
    if len(vmops_ms) < 2 or len(baseline_ms) < 2:
        return None
    draw = random.Random(seed).choices
    ratios = sorted(
        statistics.median(draw(vmops_ms, k=len(vmops_ms)))
        / statistics.median(draw(baseline_ms, k=len(baseline_ms)))
        for _ in range(draws))
    return _tails(ratios, level)


def paired_ratio(vmops_ms: list[float], baseline_ms: list[float]
                 ) -> tuple[float, tuple[float, float]] | None:
    """The median of the rounds' own ratios (sample i of each side ran in
    round i, one right after the other: :func:`alternate`) and its 95 %
    bootstrap interval, rounds drawn again with replacement. A slow hour
    of the host slows both sides of its rounds, so what it adds to both
    medians cancels here; noise within a round does not. For information
    beside the ratio of the medians, which the verdict uses."""
    if len(vmops_ms) != len(baseline_ms) or not all(baseline_ms):
        return None
    return _median_and_interval([v / b for v, b in zip(vmops_ms, baseline_ms, strict=True)])


def paired_difference(vmops_ms: list[float], baseline_ms: list[float]
                      ) -> tuple[float, tuple[float, float]] | None:
    """As :func:`paired_ratio`, of each round's difference (ms): for the
    targets of the form baseline + N ms."""
    if len(vmops_ms) != len(baseline_ms):
        return None
    return _median_and_interval([v - b for v, b in zip(vmops_ms, baseline_ms, strict=True)])


def _median_and_interval(values: list[float], level: float = 0.95, draws: int = 2000,
                         seed: int = 17) -> tuple[float, tuple[float, float]] | None:
    if len(values) < 2:
        return None
    draw = random.Random(seed).choices
    medians = sorted(statistics.median(draw(values, k=len(values))) for _ in range(draws))
    return round(statistics.median(values), 3), _tails(medians, level)


def _tails(drawn: list[float], level: float) -> tuple[float, float]:
    """The central ``level`` of ``drawn`` (sorted bootstrap draws): its ends."""
    tail = (1.0 - level) / 2
    return (round(drawn[int(tail * len(drawn))], 3),
            round(drawn[min(len(drawn) - 1, int((1.0 - tail) * len(drawn)))], 3))


def spread(values: list[float]) -> float | None:
    return max(values) - min(values) if values else None


@dataclass(frozen=True)
class Target:
    """vmops passes when ``vmops <= ratio * baseline`` or, with ``slack_ms``,
    when ``vmops <= baseline + slack_ms``: fast operations where a fixed cost
    (an HTTP round trip, a record write) would dominate a ratio."""

    ratio: float
    slack_ms: float | None = None

    def text(self) -> str:
        if self.slack_ms is None:
            return f"<= {self.ratio:g}x"
        if self.ratio == 1.0:
            return f"<= baseline + {self.slack_ms:g} ms"
        return f"<= {self.ratio:g}x or baseline + {self.slack_ms:g} ms"

    def passed(self, vmops_ms: float, baseline_ms: float) -> bool:
        if vmops_ms <= self.ratio * baseline_ms:
            return True
        return self.slack_ms is not None and vmops_ms <= baseline_ms + self.slack_ms


def make_row(scenario: str, vmops_ms: list[float], baseline_ms: list[float],
             target: Target | None, **extra: Any) -> Row:
    """A result row from the samples of both sides (medians, ratio, verdict)."""
    v = median(vmops_ms)
    b = median(baseline_ms)
    ratio = v / b if v is not None and b else None
    passed = target.passed(v, b) if target and v is not None and b is not None else None
    return {
        "scenario": scenario,
        "vmops_median_ms": _round(v),
        "baseline_median_ms": _round(b),
        "ratio": _round(ratio, 3),
        "target": target.text() if target else "",
        "passed": passed,
        "samples": len(vmops_ms),
        "vmops_ms": [_round(x) for x in vmops_ms],
        "baseline_ms": [_round(x) for x in baseline_ms],
        **extra,
    }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def alternate(reps: int, *sides: Callable[[int], None]) -> None:
    """Run every side ``reps`` times, rotating which goes first each time so
    that warm caches and drift do not always favour the same side."""
    for i in range(reps):
        k = i % len(sides)
        for side in sides[k:] + sides[:k]:
            side(i)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float,
               what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def test_image_dir() -> Path:
    return Path(os.environ.get("VMOPS_TEST_IMAGE_DIR", REPO / ".cache" / "test-image"))


def test_image() -> Path:
    """The tiny guest (tools/testimage), built on first use (cached after)."""
    out = test_image_dir()
    image = out / "tiny.qcow2"
    if not image.exists():
        subprocess.run([sys.executable, str(REPO / "tools" / "testimage" / "build.py"),
                        "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    return image


def short_tmpdir(tag: str) -> Path:
    """A fresh directory directly under /tmp: UNIX socket paths below it must
    stay under 107 bytes."""
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{tag}-", dir="/tmp"))


# -- processes and clean-up ----------------------------------------------------

def pids_mentioning(marker: str) -> list[int]:
    """Processes whose command line contains ``marker`` (a directory this
    bench created, so only processes the bench started, directly or through
    libvirt, can match)."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry.name))
    return found


def kill_pids(pids: list[int], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL what is still there after ``grace`` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def remove_tree(path: Path) -> None:
    """Kill what still runs from ``path``, then remove it."""
    kill_pids(pids_mentioning(str(path)))
    shutil.rmtree(path, ignore_errors=True)


class Cleanup:
    """Last-in first-out clean-up actions, run once even if some fail; also
    run at exit so that an exception or Ctrl-C leaves no VM behind."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], None]]] = []
        atexit.register(self.run_all)

    def push(self, what: str, action: Callable[[], None]) -> None:
        self._actions.append((what, action))

    def run_all(self) -> None:
        while self._actions:
            what, action = self._actions.pop()
            try:
                action()
            except BaseException as exc:  # noqa: BLE001 - clean the rest up anyway
                print(f"bench: clean-up of {what} failed: {exc!r}", file=sys.stderr)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        try:
            yield
        finally:
            self.run_all()


CLEANUP = Cleanup()


def raise_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so ``finally`` blocks clean up."""
    def handler(_signo: int, _frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, handler)
