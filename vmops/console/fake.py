"""An in-memory ``ConsoleCapture`` for tests that run no QEMU: a capture
"connects" as soon as it is waited for and the log is empty."""

from __future__ import annotations

import socket
from pathlib import Path

from vmops.errors import Conflict

FAKE_PID = 1


class FakeConsole:
    """The log directories being captured; a test may empty ``running`` to
    play a killed capture process."""

    def __init__(self) -> None:
        self.running: set[Path] = set()
        self.generation = 0
        self.starts = 0

    def start_capture(self, socket: Path, log_dir: Path, max_bytes: int) -> int:
        self.starts += 1
        self.running.add(log_dir)
        return FAKE_PID

    def stop_capture(self, log_dir: Path) -> None:
        self.running.discard(log_dir)

    def capture_pid(self, log_dir: Path) -> int | None:
        return FAKE_PID if log_dir in self.running else None

    def capture_generation(self, log_dir: Path) -> tuple[bool, int]:
        return log_dir in self.running, self.generation

    def poke_capture(self, log_dir: Path) -> None:
        pass

    def wait_connected(self, log_dir: Path, after_generation: int, timeout: float) -> int:
        self.generation += 1
        return self.generation

    def read_log(self, log_dir: Path, tail_lines: int | None = None) -> bytes:
        return b""

    def attach(self, log_dir: Path) -> socket.socket:
        raise Conflict(reason=f"the fake console has no interactive console for {log_dir}")
