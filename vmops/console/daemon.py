"""The console process: one per run directory, capturing every instance.

    python -m vmops.console.daemon --run-dir DIR

One long-lived process (as libvirt's virtlogd) with one event loop over
every watched instance's serial socket, its ``console.sock`` listener and
its interactive clients. Per instance it keeps what the per-instance
capture process (``capture.py``) keeps, in the same files of the
instance's log directory (``layout.LogFiles``): the rotating log, the
generation/state file, the pid file (this process's pid), the directory's
lock, the console socket. So everything that reads those files
(``process.py``, ``log.py``) works unchanged.

The service tells it what to watch over ``DIR/console.ctl`` (a 0600 UNIX
socket, one JSON request and one JSON answer per connection: ``shared.py``
is the client); the watch list is kept in ``DIR/console.watch``, so a
console process started again (after a crash) adopts every instance again,
marking the gap in each log.

Each process that asks for a watch (the service, or any process using
vmops in-process) becomes a **holder**: the console process takes a pidfd
on it (its pid from ``SO_PEERCRED``, not from the request) and keeps running,
even watching nothing, while a holder lives, so the next spawn asks a
running process instead of starting an interpreter. It exits once it
watches nothing and no holder is alive (a holder that exits, is killed or
sends ``release``), or START_GRACE seconds after a start that got neither.

SIGUSR1: try to connect every disconnected instance now. SIGTERM: store
what is queued on every socket, exit. SIGHUP (or the ``upgrade``
request): re-exec itself (the code on disk, e.g. after an upgrade of
vmops), passing every open descriptor (serial connections, listeners,
clients, locks) and each instance's state, so no byte is lost.
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
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from vmops import serial_pipes
from vmops.console import capture as single
from vmops.console.fanout import MAX_CLIENTS, Client, FanOut
from vmops.console.layout import (
    CAPTURE_MODULE,
    DAEMON_MODULE,
    DAEMON_VERSION,
    EXIT_ALREADY_RUNNING,
    ConsoleProcessFiles,
    LogFiles,
)
from vmops.console.rotation import RotatingLog
from vmops.socket_paths import listen_private

# While an instance is disconnected its socket is tried every RETRY_FAST
# seconds for RETRY_FAST_FOR seconds, then every RETRY_SLOW (vmops pokes us
# with SIGUSR1 as soon as it starts a QEMU, so the slow period only matters
# for a QEMU started behind vmops' back).
RETRY_FAST = 0.05
RETRY_FAST_FOR = 2.0
RETRY_SLOW = 0.5
CONTROL_TIMEOUT = 5.0
# After a control connection could not be accepted for want of a descriptor
# (it stays queued), the control socket is not polled for this long: it
# stays readable, and polling it would spin the loop at a full core.
CONTROL_PAUSE = 0.5
# accept()'s errors that a free descriptor or some memory later cures.
_STARVED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# How long an old per-instance capture process gets to hand over.
ADOPT_TIMEOUT = 10.0
START_GRACE = 10.0
# The most processes that hold it at once (a pidfd each). Its users are the
# service, nova-compute and a few tools; without a bound, holders (a loop
# of short-lived ones, or many long-lived) would take the descriptors its
# captures need, and a watch would then be refused for want of one.
MAX_HOLDERS = 32
WATCH_LIST_RETRY = 1.0  # seconds between tries to save the watch list (a full disk)
# While guest output comes often (again less than GATHER_S after the end of
# the last turn that read some), a loop turn that read some makes the next
# turn wait until GATHER_S after its own wake-up, so bytes that QEMU passes
# on a few at a time (a UART: QEMU 7.2 writes its output one byte per
# write) gather in the sockets' kernel buffers and are read, logged and
# fanned out in one batch per socket per turn: a wake-up (the scheduler's
# switch, epoll_wait, recv, write and the Python around them) then happens
# at most 1/GATHER_S times a second, not once per few bytes. Output after a
# quiet spell is read at once (waiting then would only add a wake-up); no
# byte waits longer than GATHER_S for it (interactive echo included), and
# none is lost: they wait in the kernel (docs/console.md).
GATHER_S = 0.005
# But the kernel queues only about 278 writes on a UNIX socket whatever
# their size (each is a buffer charged ~760 bytes against the writer's
# net.core.wmem_default, 208 KiB), and then QEMU must wait to write. So a
# turn waits no longer than the fastest socket read in it takes to bring
# GATHER_SAFE_BYTES (one-byte writes: well under a full queue): a stream
# that fast is read as often as it needs, never held to GATHER_S's pace.
GATHER_SAFE_BYTES = 200


# A pipe (the serial port of a domain vmops defines: serial_pipes.py)
# appends one-byte writes to its last page and holds PIPE_BYTES (asked of
# the kernel; 64 KiB if refused): a turn may gather until a quarter of it
# came, which at a TCG guest's full rate (~1 MiB/s) is never before GATHER_S.
PIPE_BYTES = 1024 * 1024


def gather_wait(read_bytes: int, interval: float, safe_bytes: int = GATHER_SAFE_BYTES) -> float:
    """How long the next turn waits, after one that read at most
    ``read_bytes`` from one serial port that can safely gather
    ``safe_bytes``, gathered over ``interval`` seconds: ``GATHER_S``, less
    for a fast stream, 0 when that is under a tenth of it."""
    if read_bytes <= 0:
        return GATHER_S
    wait = min(GATHER_S, safe_bytes * max(0.0, interval) / read_bytes)
    return wait if wait >= GATHER_S / 10 else 0.0
# Where a console process that was killed left off, on a serial port of
# FIFOs: the guest's output waited in the pipe (or the guest waited),
# unless its QEMU ended before a reader came (a pipe empties with its
# last holder).
PIPE_GAP_MARKER = (b"\r\n[vmops: the console capture was restarted at %s; guest output "
                   b"since the previous capture process stopped waited in the serial "
                   b"port's pipe, and is missing only if the guest stopped meanwhile]\r\n")
# Connecting to a serial port that is not served (yet): retried quietly.
# ENXIO: FIFOs no QEMU holds.
_NOT_SERVING = single._NOT_SERVING | {errno.ENXIO}
_EVENTS_IN = select.EPOLLIN
_EVENTS_OUT = select.EPOLLOUT


class _Poller:
    """What ``FanOut`` registers, on the shared epoll, for one instance."""

    def __init__(self, loop: Loop, watch: Watch) -> None:
        self.loop = loop
        self.watch = watch

    def register(self, fd: Any, eventmask: int = _EVENTS_IN, /) -> None:
        self.watch.add_client_fd(_fileno(fd), eventmask)

    def modify(self, fd: Any, eventmask: int, /) -> None:
        self.loop.modify(_fileno(fd), eventmask)

    def unregister(self, fd: Any, /) -> None:
        self.loop.remove(_fileno(fd))


def _fileno(fd: Any) -> int:
    return fd if isinstance(fd, int) else int(fd.fileno())


class PipeSerial:
    """A connection to QEMU's pipe chardev (``serial_pipes``), shaped as
    the socket of a ``<serial type='unix'>``: ``fileno``, ``recv`` and
    ``send``. It reads the guest's output from ``P.out`` (``fileno``) and
    writes its input to ``P.in`` (``input_fd``).

    A FIFO has no connection: QEMU is there while it holds ``P.in`` open
    for reading (our open for writing fails with ``ENXIO`` otherwise), and
    gone once it is not (``EPOLLERR`` on ``input_fd``; ``P.out`` then
    reads to its end). The FIFOs outlive both sides: what QEMU wrote while
    nobody read, up to the pipe's size, is read by the next connection."""

    def __init__(self, input_fd: int, output_fd: int) -> None:
        self.input_fd = input_fd
        self.output_fd = output_fd
        self.capacity = _pipe_capacity(output_fd)

    @classmethod
    def open(cls, base: Path) -> PipeSerial:
        """Connect; ``OSError`` (``ENXIO``) while no QEMU holds the FIFOs."""
        to_guest, from_guest = serial_pipes.paths(base)
        input_fd = os.open(to_guest, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            output_fd = os.open(from_guest, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            os.close(input_fd)
            raise
        return cls(input_fd, output_fd)

    def fileno(self) -> int:
        return self.output_fd

    def recv(self, size: int) -> bytes:
        return os.read(self.output_fd, size)

    def send(self, data: bytes | bytearray) -> int:
        return os.write(self.input_fd, data)

    def close(self) -> None:
        for fd in (self.input_fd, self.output_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _pipe_capacity(fd: int) -> int:
    """Make the pipe hold PIPE_BYTES if the kernel lets us (an unprivileged
    user may be held to less: ``fs.pipe-max-size``, its pipe pages); what
    it holds."""
    with contextlib.suppress(OSError):
        return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


Serial = socket.socket | PipeSerial


def connect_serial(path: Path) -> Serial:
    """Connect to the serial port QEMU serves at ``path``: its FIFOs if
    there are some and a QEMU holds them, else its socket (a domain from
    an older vmops). ``OSError`` if neither is served now."""
    if serial_pipes.exist(path):
        try:
            return PipeSerial.open(path)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def _safe_bytes(serial: Serial) -> int:
    """How much of the guest's output may gather on ``serial`` between
    two reads without QEMU having to wait."""
    return serial.capacity // 4 if isinstance(serial, PipeSerial) else GATHER_SAFE_BYTES


@dataclass
class WatchSpec:
    log_dir: Path
    socket: Path
    max_bytes: int

    def as_json(self) -> dict[str, Any]:
        return {"log_dir": str(self.log_dir), "socket": str(self.socket),
                "max_bytes": self.max_bytes}

    @staticmethod
    def from_json(raw: Any) -> WatchSpec:
        if not isinstance(raw, dict):
            raise ValueError("a watch must be an object")
        max_bytes = raw.get("max_bytes")
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be an integer of at least 1, not {max_bytes!r}")
        log_dir, sock = raw.get("log_dir"), raw.get("socket")
        if not isinstance(log_dir, str) or not os.path.isabs(log_dir):
            raise ValueError(f"log_dir must be an absolute path, not {log_dir!r}")
        if not isinstance(sock, str) or not os.path.isabs(sock):
            raise ValueError(f"socket must be an absolute path, not {sock!r}")
        return WatchSpec(Path(log_dir), Path(sock), max_bytes)


class Watch:
    """One instance's capture inside the console process."""

    def __init__(self, loop: Loop, spec: WatchSpec, lock_fd: int) -> None:
        self.loop = loop
        self.spec = spec
        self.files = LogFiles(spec.log_dir)
        self.lock_fd = lock_fd
        self.log = RotatingLog(self.files.current, self.files.old, spec.max_bytes)
        self.generation = single._saved_generation(self.files.state)
        self.connected = False
        self.error: str | None = None
        # The files of ours that the last try could not write (a full
        # disk): the service, which reads them, is told (``state_error``).
        self.unwritten: dict[Path, str] = {}
        self.serial: Serial | None = None
        self.fanout: FanOut | None = None
        self.poller = _Poller(loop, self)
        self.retry_at = 0.0
        self.disconnected_at = time.monotonic()

    # -- start, stop --------------------------------------------------------------
    def open(self, killed_predecessor: bool) -> None:
        if killed_predecessor:
            marker = PIPE_GAP_MARKER if serial_pipes.exist(self.spec.socket) else single.GAP_MARKER
            self.store(marker % single._utc_now())
        self.listen()
        self.save_state()
        self._write(self.files.pid, f"{os.getpid()}\n")

    def listen(self, listener: socket.socket | None = None) -> None:
        if listener is None:
            listener = self._bind()
        if listener is not None:
            self.fanout = FanOut(listener)
            self.add_client_fd(listener.fileno(), _EVENTS_IN)

    def _bind(self) -> socket.socket | None:
        path = self.files.console_socket
        try:
            return listen_private(path, MAX_CLIENTS)
        except OSError as exc:
            self.note_error(f"listening on {path}: {exc}")
            return None

    def close(self, remove_pid: bool = True) -> None:
        """Store what is queued, close everything, release the directory."""
        if self.serial is not None:
            self._drain(self.serial)
            self.disconnect()
        if self.fanout is not None:
            self.loop.remove(self.fanout.listener.fileno())
            self.fanout.close()
            self.files.console_socket.unlink(missing_ok=True)
            self.fanout = None
        self.log.close()
        self.connected = False
        self.save_state()
        if remove_pid:
            self.files.pid.unlink(missing_ok=True)
        os.close(self.lock_fd)

    # -- the serial socket ------------------------------------------------------
    def try_connect(self, now: float) -> None:
        if self.serial is not None or now < self.retry_at:
            return
        try:
            serial = connect_serial(self.spec.socket)
        except OSError as exc:
            if exc.errno not in _NOT_SERVING:
                self.note_error(f"connecting to {self.spec.socket}: {exc}")
            fast = now - self.disconnected_at < RETRY_FAST_FOR
            self.retry_at = now + (RETRY_FAST if fast else RETRY_SLOW)
            return
        self.attach_serial(serial, new=True)

    def attach_serial(self, serial: Serial, new: bool) -> None:
        self.serial = serial
        if new:
            self.generation += 1
        self.connected = True
        self.error = None
        self.save_state()
        self.loop.add(serial.fileno(), _EVENTS_IN, self.on_serial)
        if isinstance(serial, PipeSerial):  # its errors say QEMU is gone
            self.loop.add(serial.input_fd, 0, self.on_serial_input)
        self.rearm()

    def disconnect(self) -> None:
        sock = self.serial
        if sock is None:
            return
        self.loop.remove(sock.fileno())
        if isinstance(sock, PipeSerial):
            self.loop.remove(sock.input_fd)
        sock.close()
        self.serial = None
        if self.fanout is not None:
            for fd in list(self.fanout.clients):
                self.loop.remove(fd)
            self.fanout.close_clients()  # they belong to this QEMU connection
        self.connected = False
        self.disconnected_at = time.monotonic()
        self.retry_at = 0.0
        self.save_state()

    def on_serial(self, events: int) -> None:
        sock = self.serial
        if sock is None:
            return
        if events & _EVENTS_OUT and self.fanout is not None:
            self.fanout.send_to_guest(sock)
        if events & (_EVENTS_IN | select.EPOLLHUP | select.EPOLLERR) and not self._read(sock):
            self.disconnect()
            return
        self.rearm()

    def on_serial_input(self, events: int) -> None:
        """The pipe the guest's input goes to: room for what was typed, or
        QEMU gone (it no longer reads it): its last output, then the end."""
        sock = self.serial
        if not isinstance(sock, PipeSerial):
            return
        if events & (select.EPOLLERR | select.EPOLLHUP):
            self._drain(sock)
            self.disconnect()
            return
        if events & _EVENTS_OUT and self.fanout is not None:
            self.fanout.send_to_guest(sock)
        self.rearm()

    def _read(self, sock: Serial) -> bool:
        try:
            data = sock.recv(single.RECV_BYTES)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        self.loop.note_read(len(data), _safe_bytes(sock))
        self.store(data)
        if self.fanout is not None:
            self.fanout.output(self.poller, data)
        return True

    def _drain(self, sock: Serial) -> None:
        taken = 0
        while taken < single.DRAIN_LIMIT:
            try:
                data = sock.recv(single.RECV_BYTES)
            except OSError:  # BlockingIOError: nothing more queued
                return
            if not data:
                return
            self.store(data)
            taken += len(data)

    # -- interactive clients ---------------------------------------------------
    def add_client_fd(self, fd: int, events: int) -> None:
        """The console listener or a client: their events go to ``on_client``."""
        self.loop.add(fd, events, lambda got: self.on_client(fd, got))

    def on_client(self, fd: int, events: int) -> None:
        if self.fanout is None:
            return
        self.fanout.handle(self.poller, fd, events,
                           connected=self.serial is not None)
        if self.serial is not None:
            self.fanout.send_to_guest(self.serial)  # what was typed, at once
        self.rearm()

    def rearm(self) -> None:
        if self.serial is None or self.fanout is None:
            return
        typed = _EVENTS_OUT if self.fanout.to_guest else 0
        if isinstance(self.serial, PipeSerial):
            self.loop.modify(self.serial.input_fd, typed)
        else:
            self.loop.modify(self.serial.fileno(), _EVENTS_IN | typed)
        self.fanout.update(self.poller)

    # -- the files ----------------------------------------------------------------
    def store(self, data: bytes) -> None:
        try:
            self.log.write(data)
        except OSError as exc:
            # Keep reading and drop (see capture.py: a stalled serial port
            # can hang the guest's kernel).
            self.note_error(f"writing the console log: {exc}")

    def note_error(self, message: str) -> None:
        if message != self.error:
            self.error = message
            self.save_state()

    def save_state(self) -> None:
        state = {"pid": os.getpid(), "connected": self.connected,
                 "generation": self.generation, "error": self.error}
        self._write(self.files.state, json.dumps(state) + "\n")

    def _write(self, path: Path, text: str) -> None:
        """Write one of the files the service reads; a failure is kept (and
        reported through ``state_error``), never raised: capture goes on."""
        try:
            single._write_atomically(path, text)
        except OSError as exc:
            self.unwritten[path] = f"cannot write {path}: {exc.strerror or exc}"
        else:
            self.unwritten.pop(path, None)

    @property
    def state_error(self) -> str | None:
        """Why a file the service reads (pid, state) is not as it should be."""
        return next(iter(self.unwritten.values()), None)

    def write_again(self) -> None:
        """Try the files that could not be written once more (there may be
        room now), so that ``state_error`` says how things are, not were."""
        if self.files.state in self.unwritten:
            self.save_state()
        if self.files.pid in self.unwritten:
            self._write(self.files.pid, f"{os.getpid()}\n")

    # -- upgrade --------------------------------------------------------------------
    def handoff(self) -> dict[str, Any]:
        """What the re-exec'ed process needs; every descriptor made inheritable."""
        fds = [self.lock_fd]
        clients = []
        listener = None
        if self.fanout is not None:
            listener = self.fanout.listener.fileno()
            fds.append(listener)
            for fd, client in self.fanout.clients.items():
                fds.append(fd)
                clients.append({"fd": fd, "pending": client.pending.hex(),
                                "reading": client.reading})
        serial = self.serial.fileno() if self.serial is not None else None
        if serial is not None:
            fds.append(serial)
        serial_input = self.serial.input_fd if isinstance(self.serial, PipeSerial) else None
        if serial_input is not None:
            fds.append(serial_input)
        for fd in fds:
            os.set_inheritable(fd, True)
        return {"spec": self.spec.as_json(), "lock": self.lock_fd, "serial": serial,
                "serial_input": serial_input,
                "listener": listener, "clients": clients, "generation": self.generation,
                "connected": self.connected, "error": self.error,
                "to_guest": self.fanout.to_guest.hex() if self.fanout is not None else ""}

    @staticmethod
    def resume(loop: Loop, raw: dict[str, Any]) -> Watch:
        watch = Watch(loop, WatchSpec.from_json(raw["spec"]), int(raw["lock"]))
        watch.generation = int(raw["generation"])
        watch.error = raw.get("error")
        if raw.get("listener") is not None:
            listener = socket.socket(fileno=int(raw["listener"]))
            watch.listen(listener)
            assert watch.fanout is not None
            watch.fanout.to_guest += bytes.fromhex(raw.get("to_guest", ""))
            for client in raw.get("clients", []):
                sock = socket.socket(fileno=int(client["fd"]))
                sock.setblocking(False)
                watch.fanout.clients[sock.fileno()] = Client(
                    sock, bytearray.fromhex(client["pending"]), bool(client["reading"]))
                watch.add_client_fd(sock.fileno(), _EVENTS_IN)
        for fd in _handed_fds(raw):
            os.set_inheritable(fd, False)
        if raw.get("serial_input") is not None:  # the FIFOs (none from a vmops before them)
            watch.attach_serial(PipeSerial(int(raw["serial_input"]), int(raw["serial"])),
                                new=False)
        elif raw.get("serial") is not None:
            sock = socket.socket(fileno=int(raw["serial"]))
            sock.setblocking(False)
            watch.attach_serial(sock, new=False)
        else:
            watch.save_state()
        return watch


def _handed_fds(raw: dict[str, Any]) -> list[int]:
    fds = [int(raw["lock"])]
    fds += [int(raw[k]) for k in ("listener", "serial", "serial_input")
            if raw.get(k) is not None]
    fds += [int(c["fd"]) for c in raw.get("clients", [])]
    return fds


class TooManyHolders(Exception):
    """A hold refused: MAX_HOLDERS processes hold the console process."""


class Loop:
    """The console process: the control socket, the watches, one epoll."""

    def __init__(self, run_dir: Path) -> None:
        self.files = ConsoleProcessFiles(run_dir)
        self.epoll = select.epoll()
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.masks: dict[int, int] = {}  # what each fd is registered for
        self.watch_list_stale = False  # not saved as it is (a full disk)
        self.watch_list_retry_at = 0.0
        # The guest output this turn read from one serial port that came
        # nearest to what that port can safely gather (note_read).
        self.turn_bytes = 0
        self.turn_safe_bytes = GATHER_SAFE_BYTES
        self.read_woke = 0.0  # when the last turn that read guest output woke
        self.last_read = -GATHER_S  # and when it ended
        self.watches: dict[Path, Watch] = {}
        self.stopping = False
        self.upgrading = False
        self.poked = False
        self.control: socket.socket | None = None
        self.control_paused_until = 0.0  # not polled until then (0: polled)
        self.lock_fd = -1
        # The processes it serves (pid: pidfd): it stays while one lives.
        self.holders: dict[int, int] = {}
        # It exits once it watches nothing and no holder lives: after its
        # last unwatch, release or holder's end, or START_GRACE seconds
        # after a start that got neither a watch nor a holder.
        self.started = time.monotonic()
        self.emptied = False

    def add(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        self.handlers[fd] = handler
        try:
            self.epoll.register(fd, events)
        except FileExistsError:
            self.epoll.modify(fd, events)
        self.masks[fd] = events

    def modify(self, fd: int, events: int) -> None:
        """Change what ``fd`` is polled for; no system call if unchanged
        (each turn re-arms every socket it handled)."""
        if self.masks.get(fd) != events:
            self.epoll.modify(fd, events)
            self.masks[fd] = events

    def note_read(self, size: int, safe_bytes: int) -> None:
        """A serial port that can safely gather ``safe_bytes`` gave ``size``
        bytes this turn: the fullest one sets the next gather (GATHER_S)."""
        if size * self.turn_safe_bytes > self.turn_bytes * safe_bytes:
            self.turn_bytes, self.turn_safe_bytes = size, safe_bytes

    def remove(self, fd: int) -> None:
        self.handlers.pop(fd, None)
        self.masks.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self.epoll.unregister(fd)

    # -- start --------------------------------------------------------------------
    def start(self) -> bool:
        self.files.dir.mkdir(parents=True, exist_ok=True)
        lock_fd = single._try_lock(self.files.lock)
        if lock_fd is None:
            return False
        self.lock_fd = lock_fd
        self.control = self._bind_control()
        for spec in self.saved_watches():
            with contextlib.suppress(OSError, RuntimeError):
                self.adopt(spec)
        self.try_save_watches(time.monotonic())
        single._write_atomically(self.files.pid, f"{os.getpid()}\n")
        return True

    def _bind_control(self) -> socket.socket:
        listener = listen_private(self.files.control, 64)
        listener.setblocking(False)
        self.add(listener.fileno(), _EVENTS_IN, self.on_control)
        return listener

    def resume(self, handoff: Path) -> None:
        raw = json.loads(handoff.read_bytes())
        handoff.unlink(missing_ok=True)
        self.lock_fd = int(raw["lock"])
        self.control = socket.socket(fileno=int(raw["control"]))
        self.control.setblocking(False)
        for fd in (self.lock_fd, self.control.fileno()):
            os.set_inheritable(fd, False)
        self.add(self.control.fileno(), _EVENTS_IN, self.on_control)
        for item in raw["watches"]:
            watch = Watch.resume(self, item)
            self.watches[watch.spec.log_dir] = watch
        for holder in raw.get("holders", []):  # none from a vmops before them
            pidfd = int(holder["pidfd"])
            os.set_inheritable(pidfd, False)
            self._add_holder(int(holder["pid"]), pidfd)
        self.emptied = True  # had something: exit as soon as nothing is left

    # -- the watch list -----------------------------------------------------------
    def saved_watches(self) -> list[WatchSpec]:
        try:
            raw = json.loads(self.files.watch_list.read_bytes())
        except (OSError, ValueError):
            return []
        specs = []
        for item in raw if isinstance(raw, list) else []:
            with contextlib.suppress(ValueError):
                specs.append(WatchSpec.from_json(item))
        return specs

    def save_watches(self) -> None:
        """Write the watch list (removed when empty: that needs no room)."""
        items = [w.spec.as_json() for w in self.watches.values()]
        if not items:
            self.files.watch_list.unlink(missing_ok=True)
        else:
            single._write_atomically(self.files.watch_list, json.dumps(items) + "\n")
        self.watch_list_stale = False

    def try_save_watches(self, now: float) -> None:
        """Save the watch list, or try again WATCH_LIST_RETRY later (a full
        disk): what this process watches is right either way."""
        try:
            self.save_watches()
        except OSError:
            self.watch_list_stale = True
            self.watch_list_retry_at = now + WATCH_LIST_RETRY

    def adopt(self, spec: WatchSpec, asked: bool = False) -> Watch:
        """Start capturing ``spec``'s instance (a no-op if we do).

        ``asked`` (a ``watch`` request): if the watch list or the
        instance's pid and state files cannot be written (a full disk), the
        watch is undone and ``OSError`` says why, so the service fails now
        rather than wait for a connection its files would never show. On a
        start again (the saved list) capture goes on regardless."""
        watch = self.watches.get(spec.log_dir)
        if watch is not None:
            watch.spec.max_bytes = watch.log.max_bytes = spec.max_bytes
            return watch
        files = LogFiles(spec.log_dir)
        files.dir.mkdir(parents=True, exist_ok=True)
        handed_over: socket.socket | None = None
        lock_fd = single._try_lock(files.lock)
        if lock_fd is None:
            lock_fd, handed_over = _take_over(spec, files)
        killed = files.pid.exists()  # a clean exit removes it: ours was killed
        watch = Watch(self, spec, lock_fd)
        self.watches[spec.log_dir] = watch
        try:
            if asked:
                self.save_watches()
            watch.open(killed_predecessor=killed)
            if asked and watch.state_error is not None:
                raise OSError(watch.state_error)
        except BaseException:
            self.watches.pop(spec.log_dir, None)
            self.try_save_watches(time.monotonic())
            watch.close()
            if handed_over is not None:
                handed_over.close()
            raise
        if handed_over is not None:
            watch.attach_serial(handed_over, new=True)
        else:
            watch.try_connect(time.monotonic())
        return watch

    def forget(self, log_dir: Path) -> None:
        watch = self.watches.pop(log_dir, None)
        if watch is not None:
            watch.close()
        self.try_save_watches(time.monotonic())

    # -- holders --------------------------------------------------------------------
    def hold(self, conn: socket.socket) -> bool:
        """Keep running while the process that sent the request on ``conn``
        lives (a no-op if it holds already); False if it is gone.
        ``TooManyHolders`` if MAX_HOLDERS other processes hold it."""
        pid = _peer_pid(conn)
        held = self.holders.get(pid)
        if held is not None:
            if not _ended(held):
                return True
            self.let_go(pid)  # that process ended (its event not handled yet): a new one
        if len(self.live_holders()) >= MAX_HOLDERS:
            raise TooManyHolders(
                f"{MAX_HOLDERS} processes hold this console process already (at most "
                f"{MAX_HOLDERS}: pids {', '.join(map(str, sorted(self.holders)))}); "
                f"process {pid} is not made one")
        try:
            pidfd = os.pidfd_open(pid)
        except (OSError, ValueError):
            return False
        if _hung_up(conn):  # it exited before the pidfd: the pid may be another's
            os.close(pidfd)
            return False
        self._add_holder(pid, pidfd)
        return True

    def _add_holder(self, pid: int, pidfd: int) -> None:
        self.holders[pid] = pidfd
        # A pidfd becomes readable when its process exits.
        self.add(pidfd, _EVENTS_IN, lambda events: self.let_go(pid))

    def let_go(self, pid: int) -> None:
        """``pid`` no longer holds this process (it released it or ended)."""
        pidfd = self.holders.pop(pid, None)
        if pidfd is not None:
            self.remove(pidfd)
            os.close(pidfd)
        self.emptied = True

    def live_holders(self) -> list[int]:
        """The holders, after letting go of those that have exited (their
        pidfd's event may not have been handled yet in this turn)."""
        if self.holders:
            poller = select.poll()  # not select(): descriptors past 1023
            for pidfd in self.holders.values():
                poller.register(pidfd, select.POLLIN)
            ended = {fd for fd, _ in poller.poll(0)}
            for pid, pidfd in list(self.holders.items()):
                if pidfd in ended:
                    self.let_go(pid)
        return sorted(self.holders)

    def idle(self) -> bool:
        """Nothing to do: no watch, and no live holder."""
        return not self.watches and not self.live_holders()

    # -- control requests -----------------------------------------------------------
    def on_control(self, events: int) -> None:
        assert self.control is not None
        while True:
            try:
                conn, _ = self.control.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _STARVED:
                    self.pause_control(time.monotonic())
                return
            with conn:
                conn.settimeout(CONTROL_TIMEOUT)
                with contextlib.suppress(OSError):
                    answer = self.answer(_read_line(conn), conn)
                    conn.sendall(json.dumps(answer).encode() + b"\n")

    def pause_control(self, now: float) -> None:
        """Stop polling the control socket for CONTROL_PAUSE seconds."""
        assert self.control is not None
        self.modify(self.control.fileno(), 0)
        self.control_paused_until = now + CONTROL_PAUSE

    def resume_control(self, now: float) -> None:
        """Poll the control socket again once its pause is over."""
        if self.control_paused_until and now >= self.control_paused_until:
            self.control_paused_until = 0.0
            if self.control is not None:
                self.modify(self.control.fileno(), _EVENTS_IN)

    def answer(self, line: bytes, conn: socket.socket | None = None) -> dict[str, Any]:
        """The answer to one request; ``conn`` (the request's connection)
        names the process that asks, which a ``watch`` or ``hold`` makes a
        holder and a ``release`` lets go."""
        try:
            request = json.loads(line)
            op = request.get("op") if isinstance(request, dict) else None
            if op == "watch":
                spec = WatchSpec.from_json(request)
                try:
                    watch = self.adopt(spec, asked=True)
                except BaseException:
                    self.emptied = True  # started for it: do not linger
                    raise
                held, hold_error = False, None
                if conn is not None:
                    try:
                        held = self.hold(conn)
                    except TooManyHolders as exc:  # the watch stands: only the hold is refused
                        hold_error = str(exc)
                return {"pid": os.getpid(), "error": None, "log_error": watch.error,
                        "state_error": watch.state_error, "held": held,
                        "hold_error": hold_error, "version": DAEMON_VERSION}
            if op == "hold":
                held = conn is not None and self.hold(conn)
                return {"pid": os.getpid(), "error": None, "held": held}
            if op == "release":
                if conn is not None:
                    self.let_go(_peer_pid(conn))
                self.emptied = True
                return {"pid": os.getpid(), "error": None, "exiting": self.idle()}
            if op == "state":
                return self.state_of(request.get("log_dir"))
            if op == "unwatch":
                log_dir = request.get("log_dir")
                if not isinstance(log_dir, str):
                    raise ValueError("unwatch needs a log_dir")
                self.forget(Path(log_dir))
                self.emptied = True
                return {"pid": os.getpid(), "error": None, "exiting": self.idle()}
            if op == "status":
                return {"pid": os.getpid(), "error": None,
                        "watching": sorted(str(p) for p in self.watches),
                        "holders": self.live_holders(), "version": DAEMON_VERSION}
            if op == "upgrade":
                self.upgrading = True
                return {"pid": os.getpid(), "error": None}
            raise ValueError(f"unknown request {op!r}")
        except Exception as exc:  # noqa: BLE001 - one bad request must not end every capture
            return {"pid": os.getpid(), "error": str(exc) or type(exc).__name__}

    def state_of(self, log_dir: Any) -> dict[str, Any]:
        """What a watch's state file would say, and why it may not."""
        if not isinstance(log_dir, str):
            raise ValueError("state needs a log_dir")
        watch = self.watches.get(Path(log_dir))
        if watch is None:
            return {"pid": os.getpid(), "error": None, "watching": False}
        watch.write_again()
        return {"pid": os.getpid(), "error": None, "watching": True,
                "connected": watch.connected, "generation": watch.generation,
                "log_error": watch.error, "state_error": watch.state_error}

    # -- the loop -------------------------------------------------------------------
    def serve(self, wakeup_fd: int) -> None:
        self.add(wakeup_fd, _EVENTS_IN, lambda events: _clear(wakeup_fd))
        while not self.stopping and not self.upgrading:
            now = time.monotonic()
            if not self.watches and not self.holders \
                    and (self.emptied or now - self.started > START_GRACE):
                break
            if self.watch_list_stale and now >= self.watch_list_retry_at:
                self.try_save_watches(now)
            if self.poked:
                self.poked = False
                for watch in self.watches.values():
                    watch.retry_at = 0.0
                    watch.disconnected_at = now
            for watch in list(self.watches.values()):
                watch.try_connect(now)
            self.resume_control(now)
            waiting = [w.retry_at for w in self.watches.values() if w.serial is None]
            if self.control_paused_until:
                waiting.append(self.control_paused_until)
            for watch in self.watches.values():
                if watch.fanout is not None and watch.fanout.paused_until:
                    watch.fanout.resume(watch.poller, now)
                    if watch.fanout.paused_until:
                        waiting.append(watch.fanout.paused_until)
            timeout = max(0.0, min(waiting) - now) if waiting else 1.0
            ready = self.epoll.poll(min(timeout, 1.0))
            woke = time.monotonic()
            self.turn_bytes, self.turn_safe_bytes = 0, GATHER_SAFE_BYTES
            for fd, events in ready:
                handler = self.handlers.get(fd)
                if handler is not None:
                    handler(events)
            if self.turn_bytes:
                self._let_output_gather(woke)
        self.remove(wakeup_fd)

    def _let_output_gather(self, woke: float) -> None:
        """After a turn that read guest output: if the output comes often,
        wait until up to ``GATHER_S`` after this turn's wake-up (see GATHER_S)."""
        wait = gather_wait(self.turn_bytes, woke - self.read_woke, self.turn_safe_bytes)
        self.read_woke = woke
        if woke - self.last_read < GATHER_S and wait and not (self.stopping or self.upgrading):
            time.sleep(max(0.0, woke + wait - time.monotonic()))
        self.last_read = time.monotonic()

    def shut_down(self) -> None:
        """Stop: store what is queued everywhere; the watch list stays."""
        for watch in list(self.watches.values()):
            watch.close()
        self.watches.clear()
        self._release()

    def _release(self) -> None:
        if self.control is not None:
            self.remove(self.control.fileno())
            self.control.close()
        self.files.control.unlink(missing_ok=True)
        self.files.pid.unlink(missing_ok=True)
        os.close(self.lock_fd)

    def exec_new(self) -> None:
        """Re-exec the code on disk with every descriptor and state handed over."""
        assert self.control is not None
        for watch in self.watches.values():
            watch.log.close()
        raw = {"lock": self.lock_fd, "control": self.control.fileno(),
               "watches": [w.handoff() for w in self.watches.values()],
               "holders": [{"pid": pid, "pidfd": fd} for pid, fd in self.holders.items()]}
        for fd in (self.lock_fd, self.control.fileno(), *self.holders.values()):
            os.set_inheritable(fd, True)
        single._write_atomically(self.files.handoff, json.dumps(raw) + "\n")
        argv = [sys.executable, "-m", DAEMON_MODULE, "--run-dir", str(self.files.dir),
                "--handoff", str(self.files.handoff)]
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)  # until _signals
        os.execv(sys.executable, argv)


def _take_over(spec: WatchSpec, files: LogFiles) -> tuple[int, socket.socket | None]:
    """The directory's lock, from the per-instance capture process that holds
    it (a vmops from before the console process): connect to QEMU first (we
    wait in its backlog), then stop that process (it stores what it read),
    so QEMU takes our connection as soon as it drops that one."""
    pid = _capture_process_of(files)
    if pid is None:
        raise RuntimeError(f"{files.lock} is locked by a process that is not a console "
                           "capture process")
    sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    assert sock is not None
    sock.setblocking(False)
    try:
        sock.connect(str(spec.socket))
    except OSError:
        sock.close()
        sock = None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + ADOPT_TIMEOUT
    while time.monotonic() < deadline:
        lock_fd = single._try_lock(files.lock)
        if lock_fd is not None:
            return lock_fd, sock
        time.sleep(0.01)
    if sock is not None:
        sock.close()
    raise RuntimeError(f"the console capture process {pid} for {files.dir} did not hand "
                       f"over within {ADOPT_TIMEOUT:g}s")


def _capture_process_of(files: LogFiles) -> int | None:
    try:
        text = files.pid.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    try:
        args = Path(f"/proc/{text}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return int(text) if CAPTURE_MODULE.encode() in args else None


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _peer_pid(conn: socket.socket) -> int:
    """The pid of the process at the other end of ``conn`` (as it connected)."""
    pid, _, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                              _UCRED.size))
    return int(pid)


def _ended(pidfd: int) -> bool:
    """Has the process of ``pidfd`` exited?"""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def _hung_up(conn: socket.socket) -> bool:
    """Has the other end closed ``conn`` (its process exited)? It waits for
    our answer otherwise."""
    poller = select.poll()
    poller.register(conn, select.POLLRDHUP)
    return any(events & (select.POLLRDHUP | select.POLLHUP) for _, events in poller.poll(0))


def _read_line(conn: socket.socket) -> bytes:
    data = bytearray()
    while b"\n" not in data and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _clear(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 512):
            pass


def _signals(loop: Loop) -> int:
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_fd)

    def stop(signum: int, frame: FrameType | None) -> None:
        loop.stopping = True

    def poke(signum: int, frame: FrameType | None) -> None:
        loop.poked = True

    def upgrade(signum: int, frame: FrameType | None) -> None:
        loop.upgrading = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    signal.signal(signal.SIGUSR1, poke)
    signal.signal(signal.SIGHUP, upgrade)
    # Blocked by exec_new across the exec (see there): what came meanwhile
    # is handled now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED_SIGNALS)
    return read_fd


# The signals _signals handles. An exec resets their handlers to the
# default action (to terminate, for each), and vmops pokes (SIGUSR1) after
# every QEMU start: exec_new blocks them until the new code has its
# handlers (a blocked signal stays pending through the exec).
_HANDLED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP})


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {DAEMON_MODULE}",
        description="Capture every instance's serial socket into rotating console logs.")
    parser.add_argument("--run-dir", required=True, type=Path,
                        help="where the control socket, lock and watch list are")
    parser.add_argument("--handoff", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    loop = Loop(args.run_dir.absolute())
    wakeup = _signals(loop)
    if args.handoff is not None:
        loop.resume(args.handoff)
    elif not loop.start():
        return EXIT_ALREADY_RUNNING
    loop.serve(wakeup)
    if loop.upgrading and not loop.stopping:
        loop.exec_new()  # does not return
    if loop.stopping:
        loop.shut_down()
    else:  # nothing left to watch
        loop.save_watches()
        loop._release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
