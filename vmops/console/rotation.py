"""Two-file log rotation: the arithmetic, and the writer that applies it.

The writer keeps at most two files of at most ``max_bytes`` each, and
``old + current`` is always a contiguous suffix of everything written: a
chunk that does not fit is split, its head fills the current file exactly,
then current becomes old (``os.replace``) and the rest starts a new current.
"""

from __future__ import annotations

import os
from pathlib import Path


def split_for_rotation(current_size: int, chunk_len: int, max_bytes: int) -> tuple[int, int]:
    """How much of a chunk fits in the current file: ``(head, rest)``.

    ``head`` bytes go to the current file; if ``rest`` is not zero the file
    is then full (or was already over a since-lowered limit) and must be
    rotated before the rest is written.
    """
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, not {max_bytes}")
    if current_size < 0 or chunk_len < 0:
        raise ValueError("sizes cannot be negative")
    head = min(chunk_len, max(0, max_bytes - current_size))
    return head, chunk_len - head


class RotatingLog:
    """Appends bytes to ``current``, rotating into ``old`` at ``max_bytes``.

    Every write goes straight to the kernel (``os.write`` on an ``O_APPEND``
    descriptor, no user-space buffer), so whatever ``write`` was given is in
    the file even if the process is killed right after it returns.
    Not thread-safe; meant for the single capture process that holds the
    directory's lock.
    """

    def __init__(self, current: Path, old: Path, max_bytes: int) -> None:
        split_for_rotation(0, 0, max_bytes)  # validates max_bytes
        self.current = current
        self.old = old
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self._size = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            fd = self._open()
            head, rest = split_for_rotation(self._size, len(view), self.max_bytes)
            self._write_all(fd, view[:head])
            view = view[head:]
            if rest:
                self._rotate()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        if self._fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(self.current, flags, 0o640)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def _write_all(self, fd: int, data: memoryview) -> None:
        try:
            while data:
                written = os.write(fd, data)
                self._size += written
                data = data[written:]
        except OSError:
            # Reopen next time: the size we track may no longer be the file's.
            self.close()
            raise

    def _rotate(self) -> None:
        # The head was written before the rename, so a reader that finds the
        # file under the old name sees it complete.
        try:
            os.replace(self.current, self.old)
        finally:
            self.close()
