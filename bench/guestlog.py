"""What a guest of the bench reports on its serial console, and when.

The scenarios that measure inside the guest (``snapshot``, ``volume_io``)
give it a user-data script (the test image runs a ``#!`` user-data as a
script, its output on the console) that prints ``VMOPS-BENCH-*`` lines.
:class:`ConsoleTail` follows an instance's console log files on the host
and stamps each complete line with the host's monotonic clock when it was
first seen (polled every 10 ms: that is the resolution of those stamps);
the functions below read those lines. No timing is asserted anywhere.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vmops.console.layout import LogFiles

POLL_S = 0.01
TICK = re.compile(rb"^VMOPS-BENCH-TICK (\d+) (\d+(?:\.\d+)?)\s*$")
DD = re.compile(rb"^VMOPS-BENCH-DD (read|write) (\d+) (\d+) (\d+(?:\.\d+)?) "
                rb"(\d+(?:\.\d+)?) (\d+)\s*$")


@dataclass(frozen=True)
class Line:
    at: float  # host time.monotonic() when the line was first seen
    text: bytes


class ConsoleTail:
    """Follow ``<log_dir>/console.log`` from its start (and across the
    capture process's rotation to ``console.log.0``) in a thread."""

    def __init__(self, log_dir: Path, interval: float = POLL_S) -> None:
        self.files = LogFiles(log_dir)
        self.interval = interval
        self.lines: list[Line] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._partial = b""
        self._fd: int | None = None
        self._thread = threading.Thread(target=self._run, name="bench-console-tail",
                                        daemon=True)

    def __enter__(self) -> ConsoleTail:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def poll(self) -> None:
        """Read what was added since the last call (public for tests)."""
        now = time.monotonic()
        if self._fd is None:
            try:
                self._fd = os.open(self.files.current, os.O_RDONLY)
            except FileNotFoundError:
                return
        data = self._read_all(self._fd)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.files.current).st_ino != os.fstat(self._fd).st_ino:
                # Rotated: what is left of the old file is read, then the new one.
                data += self._read_all(self._fd)
                os.close(self._fd)
                self._fd = os.open(self.files.current, os.O_RDONLY)
                data += self._read_all(self._fd)
        self.feed(data, now)

    @staticmethod
    def _read_all(fd: int) -> bytes:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)

    def feed(self, data: bytes, at: float) -> None:
        """Split ``data`` into complete lines, all stamped ``at``."""
        if not data:
            return
        text = self._partial + data
        *complete, self._partial = text.split(b"\n")
        with self._lock:
            self.lines += [Line(at, line.rstrip(b"\r")) for line in complete]

    def matching(self, pattern: re.Pattern[bytes]) -> list[tuple[float, re.Match[bytes]]]:
        with self._lock:
            lines = list(self.lines)
        return [(ln.at, m) for ln in lines if (m := pattern.match(ln.text))]

    def wait_for(self, pattern: re.Pattern[bytes], count: int, timeout: float,
                 what: str) -> list[tuple[float, re.Match[bytes]]]:
        """Until ``count`` lines match; all of them."""
        deadline = time.monotonic() + timeout
        while len(found := self.matching(pattern)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what} on the "
                                   f"guest's console (last line: {self.last_line()!r})")
            time.sleep(0.05)
        return found

    def last_line(self) -> bytes:
        with self._lock:
            return self.lines[-1].text if self.lines else b""


# -- heartbeat ticks: how long the guest stood still ----------------------------------

@dataclass(frozen=True)
class Tick:
    seq: int
    host_at: float  # host monotonic seconds, when seen
    guest_uptime: float  # the guest's /proc/uptime when it printed the line


def ticks(found: list[tuple[float, re.Match[bytes]]]) -> list[Tick]:
    return [Tick(int(m.group(1)), at, float(m.group(2))) for at, m in found]


@dataclass(frozen=True)
class Stall:
    """The longest the guest went without a tick during a window.

    ``gap_ms``: the longest host-side interval between two consecutive
    ticks that overlaps the window; ``usual_ms``: the median interval
    before it; ``stall_ms``: the difference (0 when not longer than
    usual); ``guest_gap_ms``: how much the guest's own clock moved between
    those two ticks (equal to ``gap_ms`` when the guest's clock ran through
    the stall, near ``usual_ms`` when it stood still with the vCPUs)."""

    gap_ms: float
    usual_ms: float
    stall_ms: float
    guest_gap_ms: float


def stall_during(all_ticks: list[Tick], start: float, end: float) -> Stall:
    """The stall of the guest between host times ``start`` and ``end``.
    Needs ticks before ``start`` and one after ``end``."""
    ordered = sorted(all_ticks, key=lambda t: t.seq)
    pairs = [(a, b) for a, b in zip(ordered, ordered[1:], strict=False) if b.seq == a.seq + 1]
    before = [b.host_at - a.host_at for a, b in pairs if b.host_at <= start]
    during = [(a, b) for a, b in pairs if b.host_at > start and a.host_at < end]
    if not before:
        raise ValueError("no ticks before the window: cannot tell the usual interval")
    if not during or max(b.host_at for _, b in during) <= end:
        raise ValueError("no tick after the window: the stall is not over yet")
    usual = statistics.median(before[-20:])
    a, b = max(during, key=lambda p: p[1].host_at - p[0].host_at)
    gap = b.host_at - a.host_at
    return Stall(gap_ms=round(gap * 1000, 1), usual_ms=round(usual * 1000, 1),
                 stall_ms=round(max(0.0, gap - usual) * 1000, 1),
                 guest_gap_ms=round((b.guest_uptime - a.guest_uptime) * 1000, 1))


# -- dd inside the guest ---------------------------------------------------------------

@dataclass(frozen=True)
class DdRun:
    """One ``dd`` the guest ran: direction, round, bytes, and the guest's
    /proc/uptime before and after (10 ms resolution)."""

    op: str
    round: int
    nbytes: int
    seconds: float
    status: int

    @property
    def mib_per_s(self) -> float | None:
        return self.nbytes / 2**20 / self.seconds if self.seconds > 0 else None


def dd_runs(found: list[tuple[float, re.Match[bytes]]]) -> list[DdRun]:
    return [DdRun(op=m.group(1).decode(), round=int(m.group(2)), nbytes=int(m.group(3)),
                  seconds=round(float(m.group(5)) - float(m.group(4)), 3),
                  status=int(m.group(6)))
            for _at, m in found]
