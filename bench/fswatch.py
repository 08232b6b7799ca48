"""Timestamps of files appearing under directories, from inotify.

vmops has no per-phase timing of its own, so the spawn benchmark watches,
from outside, the files each phase leaves behind (instance directory, root
disk, config drive, libvirt's saved domain XML, console capture files,
QEMU's serial socket) and stamps each event when it is read.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_ISDIR = 0x40000000
_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE
_HEADER = struct.Struct("iIII")

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class FsEvent:
    t: float  # time.perf_counter() when read
    path: Path
    mask: int


class FsWatch:
    """Watch directories (and, for ``auto`` ones, directories made in them)."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._fd = fd
        self._dirs: dict[int, Path] = {}
        self._auto: set[Path] = set()
        self._lock = threading.Lock()
        self._events: list[FsEvent] = []
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._loop, name="bench-inotify", daemon=True)
        self._thread.start()

    def watch(self, directory: Path, auto: bool = False) -> None:
        wd = _libc.inotify_add_watch(self._fd, os.fsencode(directory), _MASK)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        with self._lock:
            self._dirs[wd] = directory
            if auto:
                self._auto.add(directory)

    def events(self) -> list[FsEvent]:
        with self._lock:
            return list(self._events)

    def clear(self) -> None:
        with self._lock:
            self._events.clear()

    def first(self, path: Path, mask: int, after: float = 0.0) -> float | None:
        for ev in self.events():
            if ev.path == path and ev.mask & mask and ev.t >= after:
                return ev.t
        return None

    def last(self, path: Path, mask: int, before: float) -> float | None:
        found = None
        for ev in self.events():
            if ev.path == path and ev.mask & mask and ev.t <= before:
                found = ev.t
        return found

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        for fd in (self._fd, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _loop(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            stamp = time.perf_counter()
            self._parse(data, stamp)

    def _parse(self, data: bytes, stamp: float) -> None:
        offset = 0
        new_dirs = []
        with self._lock:
            while offset + _HEADER.size <= len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                name = data[offset:offset + length].rstrip(b"\0").decode(errors="replace")
                offset += length
                parent = self._dirs.get(wd)
                if parent is None or not name:
                    continue
                path = parent / name
                self._events.append(FsEvent(stamp, path, mask))
                if mask & IN_ISDIR and mask & IN_CREATE and parent in self._auto:
                    new_dirs.append(path)
        for path in new_dirs:
            with contextlib.suppress(OSError):
                self.watch(path)
                # Entries made before the watch was in place: stamped now,
                # an upper bound of when they appeared.
                seen = time.perf_counter()
                with self._lock:
                    known = {ev.path for ev in self._events}
                    self._events.extend(FsEvent(seen, entry, IN_CREATE)
                                        for entry in path.iterdir() if entry not in known)
