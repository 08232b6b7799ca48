"""How long each step of a verb took: vmops times itself (issue #17).

A :class:`Timings` is started when a verb is accepted and made the current
one (:func:`active`) in the thread that does the work. Each crash point the
verb passes (``vmops/compute/crash_points.py``: ``after-disks``, ...) ends a
step named without its ``after-`` (``disks``: from the step before it to
there). Some work shared by several verbs marks steps of its own inside
the step it is part of (:func:`part`: booting's ``start-paused``,
``capture-connect``, ``resume-vcpus``), so the crash point's step after
them is what is left of it. What is left when the verb ends is ``finish`` (recording the
outcome) or, when it failed, the step it failed in (the next one it would
have passed) and then ``rollback`` (undoing and recording the failure).

Times come from ``time.perf_counter`` (monotonic); ``ms`` are milliseconds.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

STEP_PREFIX = "after-"
FINISH = "finish"      # after the last step: the outcome is recorded
ROLLBACK = "rollback"  # after a failure: undone, the failure recorded

_current: contextvars.ContextVar[Timings | None] = contextvars.ContextVar(
    "vmops_timings", default=None)


class Timings:
    """The steps of one verb, in order, with how long each took.

    ``expected``: the crash points the verb passes, in order, so a failure
    can name the step it happened in."""

    def __init__(self, verb: str, expected: tuple[str, ...] = (),
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.verb = verb
        self._expected = tuple(_step_name(s) for s in expected)
        self._clock = clock
        self._started = self._last = clock()
        self._steps: list[dict[str, Any]] = []
        self._passed = 0  # crash points passed: the index of the step in progress
        self._failed_step: str | None = None
        self._done: dict[str, Any] | None = None

    def step(self, name: str) -> None:
        """End the step named ``name`` (a crash point: ``after-`` is dropped)."""
        self._passed += 1
        self._end(name)

    def part(self, name: str) -> None:
        """End ``name``, a part of the step in progress (not one of ``expected``)."""
        self._end(name)

    def _end(self, name: str) -> None:
        now = self._clock()
        self._steps.append({"step": _step_name(name), "ms": _ms(now - self._last)})
        self._last = now

    def failed(self) -> None:
        """The verb failed in the step it was in: end that step as failed.
        Only the first call counts."""
        if self._failed_step is not None or self._done is not None:
            return
        done = self._passed
        name = self._expected[done] if done < len(self._expected) else "work"
        self.step(name)
        self._steps[-1]["failed"] = True
        self._failed_step = name

    def finish(self) -> dict[str, Any]:
        """End the verb (once; later calls return the same) and log one line."""
        if self._done is not None:
            return self._done
        self.step(ROLLBACK if self._failed_step is not None else FINISH)
        done: dict[str, Any] = {
            "verb": self.verb, "result": "error" if self._failed_step else "ok",
            "total_ms": _ms(self._last - self._started), "steps": list(self._steps)}
        if self._failed_step is not None:
            done["failed_step"] = self._failed_step
        self._done = done
        return done

    def summary(self) -> str:
        """The steps on one line: ``record 1.2 ms, disks 40.0 ms, ...``."""
        done = self.finish()
        steps = ", ".join(f"{s['step']} {s['ms']:.1f} ms" + (" (failed)" if s.get("failed")
                                                               else "")
                          for s in done["steps"])
        return f"{done['result']} in {done['total_ms']:.1f} ms: {steps}"


def _step_name(crash_point: str) -> str:
    return crash_point.removeprefix(STEP_PREFIX)


def _ms(seconds: float) -> float:
    return round(max(seconds, 0.0) * 1000.0, 3)


@contextmanager
def active(timings: Timings) -> Iterator[Timings]:
    """Make ``timings`` the current verb's in this thread (or context)."""
    token = _current.set(timings)
    try:
        yield timings
    finally:
        _current.reset(token)


def part(name: str) -> None:
    """The current verb (if one is timed), whichever it is, ended ``name``."""
    timings = _current.get()
    if timings is not None:
        timings.part(name)


def reached(verb: str, step: str) -> None:
    """``verb`` passed ``step``: a step of the current verb if it is ``verb``."""
    timings = _current.get()
    if timings is not None and timings.verb == verb:
        timings.step(step)
