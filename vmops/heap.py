"""The service process's C heap: glibc's malloc, kept near what it holds.

Measured for issue #17 (docs/performance.md, "Service flatness"): most of
what ``vmops serve`` grew by while it made 1,000 instances was memory
already freed, kept by glibc's malloc. glibc gives threads arenas of
their own (up to 8 per core) and keeps what is freed in each for reuse,
handing the system back only the free top of a heap. The service runs a
thread per spawn, per action and per API request, and every one of them
touches memory (libvirt's XML, SQLite, the JSON of a list), so each
burst of work leaves pages behind in many arenas: free, but resident.

Three things keep it near what is in use, all for the service alone (not
the CLI or Nova's driver, which call nothing here):

- :func:`limit_arenas`, once, before the service starts its threads: at
  most :data:`ARENAS` arenas, so what one thread frees another reuses;
- :func:`fix_mmap_threshold`, once: a block of :data:`MMAP_THRESHOLD`
  bytes or more is a mapping of its own, unmapped when freed. glibc's
  threshold starts there too but rises to the size of each mapped block
  freed (up to 32 MiB), after which a big short-lived buffer (the JSON of
  a list of 1,000 servers: 1.8 MB) comes from an arena; once freed, its
  room is cut up for small long-lived blocks, and the pages left partly
  in use between them cannot be handed back. Measured with 1,000 records
  (docs/performance.md, "The service's memory per record: where the rest
  goes"): 2.7-5.6 MiB free but resident in the arenas at 1,000 records
  with the rising threshold, 0.4-1.2 MiB with it fixed;
- :class:`Trimmer`: a thread that every :data:`TRIM_INTERVAL_S` has glibc
  hand the free pages of every arena back (``malloc_trim(0)``: it walks
  the free chunks, 0.2-1.1 ms measured on the service's heap with 1,010
  instances, 0.02-0.3 ms when it has just run; a page given back costs
  a page fault when it is used again).

With another C library (musl) neither has anything to call and both do
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Callable
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

ARENAS = 2  # the main heap and one more: the service's threads mostly wait on the GIL
TRIM_INTERVAL_S = 2.0  # soon after a burst, cheap when nothing is free
MMAP_THRESHOLD = 128 << 10  # glibc's own starting value, kept from rising
_M_MMAP_THRESHOLD = -3  # mallopt's parameter numbers (glibc's malloc.h)
_M_ARENA_MAX = -8


@cache
def _glibc() -> Any | None:
    """The C library, if it is glibc (it alone has mallopt's M_ARENA_MAX and
    malloc_trim); else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
        return None
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


def limit_arenas(count: int = ARENAS) -> bool:
    """At most ``count`` malloc arenas in this process; False if not glibc or
    refused. glibc settles its limit when a thread first needs an arena of
    its own, so call this before the process starts threads."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, count))


def fix_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Blocks of ``size`` bytes or more mapped on their own, and the
    threshold kept there (glibc raises it as mapped blocks are freed unless
    it was set); False if not glibc or refused."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, size))


def give_back() -> bool:
    """Hand the free pages of every arena back to the system; True if glibc
    released any."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


class Trimmer:
    """:func:`give_back` every ``interval`` seconds on a daemon thread, until
    :meth:`stop`. ``trim`` stands in for it in tests."""

    def __init__(self, interval: float = TRIM_INTERVAL_S,
                 trim: Callable[[], bool] = give_back) -> None:
        self.interval = interval
        self._trim = trim
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heap-trim", daemon=True)

    def start(self) -> Trimmer:
        if _glibc() is not None or self._trim is not give_back:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._trim()
            except Exception:  # noqa: BLE001 - trimming must never stop the service
                log.exception("giving freed memory back failed")
                return
