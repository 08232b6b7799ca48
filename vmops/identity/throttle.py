"""Password guessing, slowed per user.

After ``max_failures`` wrong passwords for one user (failures further apart
than ``WINDOW_S`` start the count again), every further attempt for that
user is refused (401, without checking the password) until a delay has
passed since the last failure: 1 s, then twice as long after each new
failure, at most ``MAX_DELAY_S``. A right password after the delay clears
the count. Nothing sleeps: a refused attempt answers at once, so a guesser
holds no server thread.

Kept in memory: a restart forgets the counts, which costs a guesser a
restart of the service per few guesses. Attempts for names that are not
users are counted too (bounded), so the refusals do not tell which users
exist.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from vmops.errors import TooManyAttempts

WINDOW_S = 300.0
FIRST_DELAY_S = 1.0
MAX_DELAY_S = 300.0
MAX_TRACKED = 10_000


@dataclass
class _Failures:
    count: int
    last: float
    locked_until: float = 0.0


class Throttle:
    def __init__(self, max_failures: int = 5, clock: Callable[[], float] | None = None) -> None:
        self.max_failures = max_failures
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def check(self, key: str) -> None:
        """Raise TooManyAttempts while ``key`` must wait."""
        if self.max_failures <= 0:
            return
        now = self._clock()
        with self._lock:
            entry = self._failures.get(key)
            if entry is not None and entry.locked_until > now:
                raise TooManyAttempts(seconds=max(1, round(entry.locked_until - now)))

    def failed(self, key: str) -> None:
        if self.max_failures <= 0:
            return
        now = self._clock()
        with self._lock:
            entry = self._failures.pop(key, None)
            if entry is None or now - entry.last > WINDOW_S:
                entry = _Failures(0, now)
            entry.count += 1
            entry.last = now
            over = entry.count - self.max_failures
            if over >= 0:
                entry.locked_until = now + min(MAX_DELAY_S, FIRST_DELAY_S * 2 ** min(over, 16))
            self._failures[key] = entry  # the most recent last
            while len(self._failures) > MAX_TRACKED:
                self._failures.popitem(last=False)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)
