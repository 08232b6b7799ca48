"""What compute needs from the console capture: the ``ConsoleCapture`` seam.

``vmops.console`` (the module) is the real implementation; ``fake.py``
next to this file is the in-memory one for tests that run no QEMU.
Every call names the instance by its log directory.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Protocol


class ConsoleCapture(Protocol):
    def start_capture(self, socket: Path, log_dir: Path, max_bytes: int) -> int:
        """Make sure ``log_dir``'s capture runs (a no-op if it does); the
        pid of the process that captures it."""
        ...

    def stop_capture(self, log_dir: Path) -> None:
        """Stop capturing ``log_dir`` (what is queued on the socket is
        stored first); fine if it is not captured."""
        ...

    def capture_pid(self, log_dir: Path) -> int | None:
        """The pid of the process capturing ``log_dir``; None if none does."""
        ...

    def capture_generation(self, log_dir: Path) -> tuple[bool, int]:
        """``(connected, generation)``: connected to a QEMU now, and how many
        connections the log has had."""
        ...

    def poke_capture(self, log_dir: Path) -> None:
        """QEMU now serves the socket: try to connect at once."""
        ...

    def wait_connected(self, log_dir: Path, after_generation: int, timeout: float) -> int:
        """Wait for a connection newer than ``after_generation``; its
        generation. Raises ``HypervisorError`` when none comes in time."""
        ...

    def read_log(self, log_dir: Path, tail_lines: int | None = None) -> bytes:
        """The log (both files), or its last ``tail_lines`` lines."""
        ...

    def attach(self, log_dir: Path) -> socket.socket:
        """A blocking connection to the interactive console; ``Conflict``
        when it cannot be reached."""
        ...
