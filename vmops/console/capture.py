"""The per-VM serial capture process.

    python -m vmops.console.capture --socket SOCK --log-dir DIR [--max-bytes N]

Connects to the UNIX socket QEMU serves the guest's serial port on and
appends every byte it reads to ``DIR/console.log`` (rotating into
``console.log.0``). It lives as long as the instance: when QEMU exits the
socket closes, and the process retries every ``RETRY_INTERVAL`` until a new
QEMU serves it again. Each connection bumps a generation counter in
``DIR/capture.state`` so vmops can wait for "connected to the new QEMU"
before it resumes a paused guest. SIGTERM: store what is readable, exit 0.

It also listens on ``DIR/console.sock`` for interactive clients
(``fanout.py``): each gets the guest's output from the moment it connects,
and what they write goes to the guest; the log still gets every byte.

It runs detached from the vmops service so that restarting the service
loses no console output; see docs/console.md for the design.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from vmops.console.fanout import MAX_CLIENTS, FanOut
from vmops.console.layout import DEFAULT_MAX_BYTES, EXIT_ALREADY_RUNNING, LogFiles
from vmops.console.rotation import RotatingLog
from vmops.socket_paths import socket_address

RETRY_INTERVAL = 0.05
# Written into the log by a capture process that finds its predecessor ended
# without cleaning up (killed): what the guest wrote in between was lost.
# Starts a line of its own (the guest's last line may be unfinished).
GAP_MARKER = (b"\r\n[vmops: the console capture was restarted at %s; guest output since "
              b"the previous capture process stopped may be missing]\r\n")
RECV_BYTES = 64 * 1024
# On SIGTERM, read what is already queued on the socket, but not forever if
# the guest keeps writing.
DRAIN_LIMIT = 16 * 1024 * 1024
# connect() errors that only mean "no QEMU is serving the socket right now".
_NOT_SERVING = {errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN, errno.ECONNRESET}


class StopSignal:
    """SIGTERM/SIGINT set a flag and wake any wait through a self-pipe."""

    def __init__(self) -> None:
        self.requested = False
        self.fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(write_fd)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)
        # SIGUSR1 only wakes a wait (through the pipe): vmops sends it once
        # QEMU serves the socket, so we connect now rather than at the next retry.
        signal.signal(signal.SIGUSR1, self._wake)
        # Own session, so no terminal can hang us up; ignore it anyway.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def _wake(self, signum: int, frame: FrameType | None) -> None:
        pass

    def sleep(self, seconds: float, wake_on: socket.socket | None = None) -> None:
        """Sleep, but return at once when a stop signal arrives (or
        ``wake_on`` is readable)."""
        if not self.requested:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            if wake_on is not None:
                poller.register(wake_on, select.POLLIN)
            poller.poll(seconds * 1000)
        self.clear()

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 512):
                pass


class Capture:
    """One capture process's state: the log, the lock, the generation."""

    def __init__(self, socket_path: Path, files: LogFiles, max_bytes: int) -> None:
        self.socket_path = socket_path
        self.files = files
        self.log = RotatingLog(files.current, files.old, max_bytes)
        self.generation = 0
        self.connected = False
        self.error: str | None = None
        self.fanout: FanOut | None = None

    def run(self) -> int:
        self.stop = StopSignal()
        self.files.dir.mkdir(parents=True, exist_ok=True)
        lock_fd = _try_lock(self.files.lock)
        if lock_fd is None:
            return EXIT_ALREADY_RUNNING
        try:
            # Continue the count of a previous capture process so that
            # "generation > G" keeps meaning "a newer connection".
            self.generation = _saved_generation(self.files.state)
            if self.files.pid.exists():
                # The previous process removes its pid file as it exits; we
                # hold the lock, so it is dead: it was killed.
                self._store(GAP_MARKER % _utc_now())
            self._save_state()
            self.fanout = self._listen()
            _write_atomically(self.files.pid, f"{os.getpid()}\n")
            self._serve()
        finally:
            if self.fanout is not None:
                self.fanout.close()
                self.files.console_socket.unlink(missing_ok=True)
            self.log.close()
            self.connected = False
            self._save_state()
            self.files.pid.unlink(missing_ok=True)
            os.close(lock_fd)
        return 0

    def _serve(self) -> None:
        while not self.stop.requested:
            sock = self._connect()
            if sock is None:
                return
            with sock:
                self.generation += 1
                self.connected = True
                self.error = None
                self._save_state()
                self._pump(sock)
            self.connected = False
            self._save_state()

    def _listen(self) -> FanOut | None:
        """The socket interactive clients connect to (only the owner may:
        what they type reaches the guest). Without it the log is still kept."""
        path = self.files.console_socket
        path.unlink(missing_ok=True)  # a killed predecessor's; we hold the lock
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o077)
        try:
            with socket_address(path) as address:
                listener.bind(address)
            listener.listen(MAX_CLIENTS)
        except OSError as exc:
            listener.close()
            self._note_error(f"listening on {path}: {exc}")
            return None
        finally:
            os.umask(old_umask)
        return FanOut(listener)

    def _connect(self) -> socket.socket | None:
        """Connect to the socket, retrying until it is served or we must stop."""
        while not self.stop.requested:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # Non-blocking: a full backlog gives EAGAIN instead of a wait
            # that SIGTERM could not interrupt.
            sock.setblocking(False)
            try:
                sock.connect(str(self.socket_path))
                return sock
            except OSError as exc:
                sock.close()
                if exc.errno not in _NOT_SERVING:
                    self._note_error(f"connecting to {self.socket_path}: {exc}")
            if self.fanout is None:
                self.stop.sleep(RETRY_INTERVAL)
            else:
                self.stop.sleep(RETRY_INTERVAL, wake_on=self.fanout.listener)
                self.fanout.accept(None, connected=False)  # no guest: closed at once
        return None

    def _pump(self, sock: socket.socket) -> None:
        """Copy from the socket to the log (and the clients) until EOF or a
        stop signal; what clients write goes to the socket."""
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self.stop.fd, select.POLLIN)
        fanout = self.fanout
        if fanout is not None:
            fanout.register(poller)
        try:
            while not self.stop.requested:
                if fanout is not None:
                    poller.modify(sock, select.POLLIN | (select.POLLOUT if fanout.to_guest
                                                         else 0))
                    fanout.update(poller)
                # The timeout only backs up the wake-up pipe (a signal handled
                # between our check and poll()); it costs one wake-up a second.
                events = poller.poll(1000)
                self.stop.clear()
                if self.stop.requested:
                    break
                if not self._round(poller, sock, events):
                    return
            self._drain(sock)
        finally:
            if fanout is not None:
                fanout.close_clients()  # they belong to this QEMU connection

    def _round(self, poller: select.poll, sock: socket.socket,
               events: list[tuple[int, int]]) -> bool:
        """Handle one poll's events; False once QEMU's socket has ended."""
        fanout = self.fanout
        for fd, event in events:
            if fd == sock.fileno():
                if event & select.POLLOUT and fanout is not None:
                    fanout.send_to_guest(sock)
                if event & (select.POLLIN | select.POLLHUP | select.POLLERR) and \
                        not self._read_guest(poller, sock):
                    return False
            elif fanout is not None:
                fanout.handle(poller, fd, event, connected=True)
        if fanout is not None:
            fanout.send_to_guest(sock)  # what was typed this round, at once
        return True

    def _read_guest(self, poller: select.poll, sock: socket.socket) -> bool:
        try:
            data = sock.recv(RECV_BYTES)
        except BlockingIOError:
            return True
        except ConnectionResetError:
            return False
        if not data:
            return False
        self._store(data)
        if self.fanout is not None:
            self.fanout.output(poller, data)
        return True

    def _drain(self, sock: socket.socket) -> None:
        taken = 0
        while taken < DRAIN_LIMIT:
            try:
                data = sock.recv(RECV_BYTES)
            except OSError:  # BlockingIOError: nothing more queued
                return
            if not data:
                return
            self._store(data)
            taken += len(data)

    def _store(self, data: bytes) -> None:
        try:
            self.log.write(data)
        except OSError as exc:
            # Keep reading and drop: a reader that stops reading stalls the
            # guest's serial port, which can hang the guest's kernel.
            self._note_error(f"writing the console log: {exc}")

    def _note_error(self, message: str) -> None:
        if message != self.error:
            self.error = message
            self._save_state()

    def _save_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "connected": self.connected,
            "generation": self.generation,
            "error": self.error,
        }
        # Best effort: if it cannot be written, vmops times out waiting for
        # the connection and says so.
        with contextlib.suppress(OSError):
            _write_atomically(self.files.state, json.dumps(state) + "\n")


def _utc_now() -> bytes:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()


def _try_lock(path: Path) -> int | None:
    """The directory's lock, or None if another capture process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _saved_generation(state_path: Path) -> int:
    try:
        generation = json.loads(state_path.read_bytes())["generation"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return generation if isinstance(generation, int) and generation >= 0 else 0


def _write_atomically(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all; on failure (a full disk) no
    temporary file is left."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name if __spec__ else 'vmops.console.capture'}",
        description="Copy a VM's serial socket into rotating console log files.",
    )
    parser.add_argument("--socket", required=True, type=Path, help="QEMU's serial socket")
    parser.add_argument("--log-dir", required=True, type=Path, help="where the logs go")
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help="size limit of each of the two log files (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.max_bytes < 1:
        parser.error("--max-bytes must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    return Capture(args.socket, LogFiles(args.log_dir), args.max_bytes).run()


if __name__ == "__main__":
    sys.exit(main())
