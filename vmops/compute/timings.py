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

What a verb leaves (:meth:`Timings.finish`) is a :class:`Finished`, kept
with the instance until its next verb: a read-only mapping with the keys
the server view shows (``verb``, ``result``, ``total_ms``, ``steps``, and
``failed_step`` after a failure), held compactly (issue #17: the dicts it
was took ~1 KiB per instance): the step names as one tuple shared by every
verb that passed the same steps, the times in an ``array`` of doubles.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from array import array
from collections.abc import Callable, Iterator, Mapping
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
        self._names: list[str] = []
        self._ms: list[float] = []
        self._passed = 0  # crash points passed: the index of the step in progress
        self._failed_step: str | None = None
        self._failed_at = -1  # the index of the failed step; -1: none failed
        self._done: Finished | None = None

    def step(self, name: str) -> None:
        """End the step named ``name`` (a crash point: ``after-`` is dropped)."""
        self._passed += 1
        self._end(name)

    def part(self, name: str) -> None:
        """End ``name``, a part of the step in progress (not one of ``expected``)."""
        self._end(name)

    def _end(self, name: str) -> None:
        now = self._clock()
        self._names.append(_step_name(name))
        self._ms.append(_ms(now - self._last))
        self._last = now

    def failed(self) -> None:
        """The verb failed in the step it was in: end that step as failed.
        Only the first call counts."""
        if self._failed_step is not None or self._done is not None:
            return
        done = self._passed
        name = self._expected[done] if done < len(self._expected) else "work"
        self.step(name)
        self._failed_at = len(self._names) - 1
        self._failed_step = name

    def finish(self) -> Finished:
        """End the verb (once; later calls return the same) and log one line."""
        if self._done is not None:
            return self._done
        self.step(ROLLBACK if self._failed_step is not None else FINISH)
        self._done = Finished(self.verb, _ms(self._last - self._started), self._names,
                              self._ms, self._failed_at)
        return self._done

    def summary(self) -> str:
        """The steps on one line: ``record 1.2 ms, disks 40.0 ms, ...``."""
        done = self.finish()
        steps = ", ".join(f"{s['step']} {s['ms']:.1f} ms" + (" (failed)" if s.get("failed")
                                                               else "")
                          for s in done["steps"])
        return f"{done['result']} in {done['total_ms']:.1f} ms: {steps}"


_SHARED_NAMES: dict[tuple[str, ...], tuple[str, ...]] = {}
_SHARED_MAX = 4096  # distinct step sequences kept shared (verbs x where they failed)


def _shared(names: list[str]) -> tuple[str, ...]:
    """``names`` as a tuple of interned strings, the same tuple for every
    verb that passed the same steps (while fewer than ``_SHARED_MAX``
    sequences were seen: past that, a tuple of its own)."""
    key = tuple(sys.intern(n) for n in names)
    shared = _SHARED_NAMES.get(key)
    if shared is None:
        shared = key
        if len(_SHARED_NAMES) < _SHARED_MAX:
            _SHARED_NAMES[key] = key
    return shared


_KEYS = ("verb", "result", "total_ms", "steps")
_FAILED_KEYS = (*_KEYS, "failed_step")


class Finished(Mapping[str, Any]):
    """One verb's steps, ended: a read-only mapping equal to the dict the
    server view shows as ``vmops:timings``::

        {"verb": "spawn", "result": "ok", "total_ms": 752.0,
         "steps": [{"step": "record", "ms": 2.0}, ...]}

    with ``"failed": True`` in the step a failed verb failed in, and
    ``failed_step`` naming it. ``steps`` is built when asked for; what is
    kept is the shared names and an array of the times."""

    __slots__ = ("verb", "total_ms", "_names", "_ms", "_failed_at")

    def __init__(self, verb: str, total_ms: float, names: list[str], ms: list[float],
                 failed_at: int = -1) -> None:
        if len(names) != len(ms) or not -1 <= failed_at < len(names):
            raise ValueError("one time per step, and a failed step among them")
        self.verb = sys.intern(verb)
        self.total_ms = total_ms
        self._names = _shared(names)
        self._ms = array("d", ms)
        self._failed_at = failed_at

    @property
    def result(self) -> str:
        return "error" if self._failed_at >= 0 else "ok"

    @property
    def failed_step(self) -> str | None:
        return self._names[self._failed_at] if self._failed_at >= 0 else None

    def steps(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"step": n, "ms": ms}
                                     for n, ms in zip(self._names, self._ms, strict=True)]
        if self._failed_at >= 0:
            out[self._failed_at]["failed"] = True
        return out

    def __getitem__(self, key: str) -> Any:
        if key == "steps":
            return self.steps()
        if key in ("verb", "result", "total_ms") or (key == "failed_step"
                                                      and self._failed_at >= 0):
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(_FAILED_KEYS if self._failed_at >= 0 else _KEYS)

    def __len__(self) -> int:
        return len(_FAILED_KEYS if self._failed_at >= 0 else _KEYS)

    def to_json(self) -> dict[str, Any]:
        """As a dict (what the server view sends)."""
        return dict(self.items())

    def __repr__(self) -> str:
        return f"Finished({self.to_json()!r})"


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
