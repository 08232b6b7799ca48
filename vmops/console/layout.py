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

from dataclasses import dataclass
from pathlib import Path

CAPTURE_MODULE = "vmops.console.capture"
DAEMON_MODULE = "vmops.console.daemon"
DEFAULT_MAX_BYTES = 512 * 1024
# Exit status of a capture process that found another one holding the lock.
EXIT_ALREADY_RUNNING = 3
# What the console process's code can do, in its ``watch`` and ``status``
# answers ("version"): 1, read a serial port of FIFOs (serial_pipes.py). One
# from before says nothing; a service that finds one asks it to upgrade
# (``shared.watch``): it would never connect to a domain defined now.
DAEMON_VERSION = 1


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


@dataclass(frozen=True)
class ConsoleProcessFiles:
    """The console process's own files, in the run directory (daemon.py)."""

    dir: Path

    @property
    def control(self) -> Path:
        return self.dir / "console.ctl"

    @property
    def lock(self) -> Path:
        return self.dir / "console.lock"

    @property
    def pid(self) -> Path:
        return self.dir / "console.pid"

    @property
    def watch_list(self) -> Path:
        return self.dir / "console.watch"

    @property
    def handoff(self) -> Path:
        return self.dir / "console.handoff"
