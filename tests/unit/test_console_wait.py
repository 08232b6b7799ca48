"""wait_connected's reads of the state file: soon after the poke, then
less often (the clock and the console process are stood in for)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from vmops.console import process
from vmops.errors import HypervisorError


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(time, "monotonic", clock.monotonic)
    monkeypatch.setattr(time, "sleep", clock.sleep)
    monkeypatch.setattr(process, "capture_pid", lambda log_dir: 42)
    monkeypatch.setattr(process, "_raise_if_unwritable", lambda pid, log_dir: None)
    return clock


def _connected_after(monkeypatch: pytest.MonkeyPatch, reads: int) -> None:
    """The state file says connected (generation 2) from its ``reads``-th read."""
    seen = [0]

    def read_state(files: object) -> object:
        seen[0] += 1
        return process._State(pid=42, connected=seen[0] >= reads,
                              generation=2 if seen[0] >= reads else 1, error=None)

    monkeypatch.setattr(process, "_read_state", read_state)


def test_it_reads_again_soon_then_less_often(clock: _Clock,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _connected_after(monkeypatch, reads=9)
    assert process.wait_connected(Path("/x"), 1, timeout=30.0) == 2
    assert clock.sleeps[0] == process._FIRST_POLL
    assert clock.sleeps == sorted(clock.sleeps)  # never sooner than the last time
    assert clock.sleeps[-1] == process._POLL_INTERVAL  # up to the usual interval
    assert len(clock.sleeps) == 8


def test_connected_at_the_first_read_does_not_sleep(clock: _Clock,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _connected_after(monkeypatch, reads=1)
    assert process.wait_connected(Path("/x"), 1, timeout=30.0) == 2
    assert clock.sleeps == []


def test_it_still_gives_up_at_the_timeout(clock: _Clock,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _connected_after(monkeypatch, reads=10**9)
    with pytest.raises(HypervisorError, match="did not connect .* within 1s"):
        process.wait_connected(Path("/x"), 1, timeout=1.0)
    assert 1.0 <= clock.now <= 1.0 + process._POLL_INTERVAL
