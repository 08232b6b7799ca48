"""The files of one instance's console log directory.

    DIR/console.log      the current file; the capture process appends to it
    DIR/console.log.0    the previous file, replaced whole at each rotation
    DIR/capture.state    JSON {"pid", "connected", "generation", "error"}
    DIR/capture.pid      pid of the running capture process
    DIR/capture.lock     flock-ed by the capture process for its whole life
    DIR/console.sock     the capture process's own socket: interactive clients

Only the capture process writes here; vmops reads (``log.py``) and manages
the process (``process.py``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CAPTURE_MODULE = "vmops.console.capture"
DEFAULT_MAX_BYTES = 512 * 1024
# Exit status of a capture process that found another one holding the lock.
EXIT_ALREADY_RUNNING = 3
# sockaddr_un.sun_path is 108 bytes, including the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class LogFiles:
    """Paths of everything the capture process keeps in one log directory."""

    dir: Path

    @property
    def current(self) -> Path:
        return self.dir / "console.log"

    @property
    def old(self) -> Path:
        return self.dir / "console.log.0"

    @property
    def state(self) -> Path:
        return self.dir / "capture.state"

    @property
    def pid(self) -> Path:
        return self.dir / "capture.pid"

    @property
    def lock(self) -> Path:
        return self.dir / "capture.lock"

    @property
    def console_socket(self) -> Path:
        return self.dir / "console.sock"

    def all(self) -> tuple[Path, ...]:
        return (self.current, self.old, self.state, self.pid, self.lock, self.console_socket)


@contextlib.contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """An address for the UNIX socket ``path`` that fits ``sun_path``: the
    path itself, or, when it is longer than that, the same file reached
    through ``/proc/self/fd/N`` of its directory (for bind and connect)."""
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
