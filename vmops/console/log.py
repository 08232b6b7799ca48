"""Reading an instance's console log: whole, tailed, or followed live.

The capture process (``capture.py``) is the only writer. It may rotate at
any moment: ``console.log`` is renamed over ``console.log.0`` and a new
``console.log`` starts. Readers open both files and check, by inode, that
no rotation slipped in between the two opens; holding the descriptors then
gives a consistent pair however long the reading takes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from vmops.console.layout import LogFiles
from vmops.console.process import stop_capture
from vmops.errors import HypervisorError

_READ_BYTES = 64 * 1024
# Rotations between two open() calls are rare (one per max_bytes of output);
# this many in a row means the guest writes faster than we can open files.
_OPEN_ATTEMPTS = 100

_FileId = tuple[int, int]  # (st_dev, st_ino)


def read_log(log_dir: Path, tail_lines: int | None = None, tail_bytes: int | None = None) -> bytes:
    """Old + current log, in order; optionally only the last lines/bytes.

    With both limits the shorter result wins. A line is what ends in
    ``\\n``; an unterminated last line counts as one. A missing directory
    or missing files read as empty.
    """
    old_fd, current_fd = _open_pair(LogFiles(log_dir))
    try:
        current = _read_from(current_fd, 0)
        old_start = 0
        if tail_bytes is not None and old_fd is not None:
            # Read only the part of the old file the tail can reach.
            old_start = max(0, os.fstat(old_fd).st_size - max(0, tail_bytes - len(current)))
        data = _read_from(old_fd, old_start) + current
    finally:
        _close(old_fd, current_fd)
    if tail_lines is not None:
        data = tail_of_lines(data, tail_lines)
    if tail_bytes is not None:
        data = data[-tail_bytes:] if tail_bytes > 0 else b""
    return data


def tail_of_lines(data: bytes, lines: int) -> bytes:
    """The last ``lines`` lines of ``data`` (like ``tail -n``)."""
    if lines <= 0:
        return b""
    pos = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(lines):
        pos = data.rfind(b"\n", 0, pos)
        if pos < 0:
            return data
    return data[pos + 1 :]


def follow(
    log_dir: Path,
    from_offset_end: bool = True,
    poll: float = 0.1,
    stop: threading.Event | None = None,
) -> Iterator[bytes]:
    """Yield console output as it is written, across rotations.

    Starts at the end of the log as it is when ``follow`` is called, or
    with the whole log when ``from_offset_end`` is false. Ends when
    ``stop`` is set or the log directory disappears. A reader that falls
    more than one whole file behind the writer misses what was rotated
    away in between: it never sees a byte twice.
    """
    files = LogFiles(log_dir)
    # Opened now, not at the first next(): "from the end" means from the
    # end at the time of the call.
    reader = _Follower(files)
    if from_offset_end:
        reader.start_at_end()
    else:
        reader.start_at_beginning()
    return _follow(reader, poll, stop or threading.Event())


def _follow(reader: _Follower, poll: float, stop: threading.Event) -> Iterator[bytes]:
    try:
        while not stop.is_set():
            yield from reader.read_new()
            if not reader.files.dir.is_dir():
                return
            stop.wait(poll)
    finally:
        reader.close()


def remove_logs(log_dir: Path) -> None:
    """Stop the capture process if it still runs, then delete its files.

    The directory itself is removed if nothing else is left in it.
    Missing files or directory are fine: destroy may call this twice.
    """
    stop_capture(log_dir)
    files = LogFiles(log_dir)
    for path in files.all():
        path.unlink(missing_ok=True)
    if files.dir.is_dir():
        for leftover in files.dir.glob(".capture.*.tmp"):
            leftover.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: not only ours
            files.dir.rmdir()


class _Follower:
    """Where ``follow`` is: one open file and the offset read up to."""

    def __init__(self, files: LogFiles) -> None:
        self.files = files
        self.fd: int | None = None
        self.unread_old_fd: int | None = None

    def start_at_end(self) -> None:
        self.fd = _open_or_none(self.files.current)
        if self.fd is not None:
            os.lseek(self.fd, 0, os.SEEK_END)

    def start_at_beginning(self) -> None:
        self.unread_old_fd, self.fd = _open_pair(self.files)

    def read_new(self) -> Iterator[bytes]:
        """Everything written since the last call, following rotations."""
        if self.unread_old_fd is not None:
            yield from _chunks(self.unread_old_fd)
            _close(self.unread_old_fd)
            self.unread_old_fd = None
        while True:
            if self.fd is None:
                # No file yet, or between a rotation's rename and the next
                # write: whatever appears is new, read it from its start.
                self.fd = _open_or_none(self.files.current)
                if self.fd is None:
                    return
            yield from _chunks(self.fd)
            if _file_id(self.files.current) == _fd_id(self.fd):
                return
            yield from self._next_file()

    def _next_file(self) -> Iterator[bytes]:
        """Our file was rotated away: finish it and move to its successor."""
        assert self.fd is not None
        # The writer completes a file before renaming it, so this is the rest.
        yield from _chunks(self.fd)
        ours = _fd_id(self.fd)
        old_fd, current_fd = _open_pair(self.files)
        try:
            if old_fd is not None and _fd_id(old_fd) != ours:
                # More than one rotation went by: the old file is a later
                # one we have not read at all. What lay between is gone.
                yield from _chunks(old_fd)
        finally:
            # Closed only now: holding it kept its inode number from being
            # reused by a new file, which would fool the comparison above.
            _close(old_fd, self.fd)
        self.fd = current_fd

    def close(self) -> None:
        _close(self.fd, self.unread_old_fd)
        self.fd = self.unread_old_fd = None

    def __del__(self) -> None:
        # A follow() iterator dropped before its first next() never runs
        # its finally clause.
        self.close()


def _open_pair(files: LogFiles) -> tuple[int | None, int | None]:
    """Open old, then current, such that current directly follows old.

    If the old file's name still points at the file we opened after we
    opened current, no rotation happened in between (the descriptor keeps
    the inode number from being reused).
    """
    for _ in range(_OPEN_ATTEMPTS):
        old_fd = _open_or_none(files.old)
        current_fd = _open_or_none(files.current)
        if _file_id(files.old) == (None if old_fd is None else _fd_id(old_fd)):
            return old_fd, current_fd
        _close(old_fd, current_fd)
    raise HypervisorError(
        reason=f"the console log in {files.dir} rotated {_OPEN_ATTEMPTS} times while "
        "being opened; the guest writes faster than it can be read"
    )


def _open_ro(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _open_or_none(path: Path) -> int | None:
    try:
        return _open_ro(path)
    except FileNotFoundError:
        return None


def _file_id(path: Path) -> _FileId | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _fd_id(fd: int) -> _FileId:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _chunks(fd: int | None) -> Iterator[bytes]:
    """Read from the descriptor's position to the current end of file."""
    if fd is None:
        return
    while chunk := os.read(fd, _READ_BYTES):
        yield chunk


def _read_from(fd: int | None, offset: int) -> bytes:
    if fd is None:
        return b""
    os.lseek(fd, offset, os.SEEK_SET)
    return b"".join(_chunks(fd))


def _close(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)
