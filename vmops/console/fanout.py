"""The interactive clients of one capture process (docs/console.md).

The capture process listens on ``console.sock`` in the log directory. Each
client gets the guest's output from the moment it connects, and what it
writes goes to the guest. The guest and the log come first: nothing here
ever blocks. A client's unsent output is bounded (``CLIENT_BUFFER_BYTES``):
a client that falls that far behind is dropped, never waited for. Input
waits in one bounded buffer for QEMU's socket; while it is full, clients
are not read (they wait, the guest does not).

A client whose writing side ends (``shutdown(SHUT_WR)``, piped input that
ran out) keeps receiving output until it closes. Clients live as long as
the QEMU connection they joined: the end of it closes them all, and a
client that connects while no QEMU is connected is closed at once.

A client that connects when ``MAX_CLIENTS`` are attached is sent one line,
``REFUSED_FULL``, and closed: the way a client (the API's WebSocket proxy)
tells "too many clients" from the end of the guest's QEMU.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

CLIENT_BUFFER_BYTES = 1024 * 1024
GUEST_INPUT_BYTES = 64 * 1024
MAX_CLIENTS = 16
FULL = f"the console has {MAX_CLIENTS} clients already"
REFUSED_FULL = f"vmops: {FULL}\r\n".encode()
_RECV_BYTES = 4096
# After a client could not be accepted for want of a descriptor (it waits
# in the backlog), the listener is left out of the poll for this long: it
# stays readable, and polling it would spin the loop at a full core.
ACCEPT_PAUSE = 0.5
# accept()'s errors that a free descriptor or some memory later cures.
_STARVED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Poller(Protocol):
    """``select.poll``, or the console process's view of its shared epoll."""

    def register(self, fd: FileDescriptorLike, eventmask: int = ..., /) -> None: ...

    def modify(self, fd: FileDescriptorLike, eventmask: int, /) -> None: ...

    def unregister(self, fd: FileDescriptorLike, /) -> None: ...


class Guest(Protocol):
    """Where typed input goes: QEMU's serial socket, or the console
    process's connection to its FIFOs (``daemon.PipeSerial``)."""

    def send(self, data: bytes | bytearray, /) -> int: ...


@dataclass
class Client:
    sock: socket.socket
    pending: bytearray = field(default_factory=bytearray)
    reading: bool = True  # False once it has shut down its writing side


class FanOut:
    """The listening socket, its clients and the input bound for the guest."""

    def __init__(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self.listener = listener
        self.clients: dict[int, Client] = {}
        self.to_guest = bytearray()
        self.dropped = 0  # clients dropped for falling behind (for tests and logs)
        self.paused_until = 0.0  # the listener is not polled until then (0: it is)

    # -- what to poll -------------------------------------------------------------
    def register(self, poller: Poller) -> None:
        poller.register(self.listener, select.POLLIN)
        for fd, client in self.clients.items():
            poller.register(fd, self._events(client))

    def _events(self, client: Client) -> int:
        events = 0
        if client.reading and len(self.to_guest) < GUEST_INPUT_BYTES:
            events |= select.POLLIN
        if client.pending:
            events |= select.POLLOUT
        return events

    def update(self, poller: Poller) -> None:
        """Re-arm each client's events after a round (buffers changed), and
        the listener once its pause is over."""
        self.resume(poller, time.monotonic())
        for fd, client in self.clients.items():
            poller.modify(fd, self._events(client))

    # -- events ---------------------------------------------------------------------
    def handle(self, poller: Poller, fd: int, events: int, connected: bool) -> bool:
        """Handle a poll event if ``fd`` is ours; False if it is not."""
        if fd == self.listener.fileno():
            self.accept(poller, connected)
            return True
        client = self.clients.get(fd)
        if client is None:
            return False
        if events & (select.POLLERR | select.POLLNVAL):
            self._drop(poller, fd)
            return True
        if events & (select.POLLIN | select.POLLHUP) and client.reading:
            self._read(poller, fd, client, connected)
        if fd in self.clients and client.pending:
            self._flush(poller, fd, client)
        if fd in self.clients and events & select.POLLHUP and not client.reading:
            self._drop(poller, fd)  # both directions are gone
        return True

    def accept(self, poller: Poller | None, connected: bool) -> None:
        """Take every waiting client; close them at once if no QEMU is
        connected (or too many are attached)."""
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: they wait in the backlog
                if exc.errno in _STARVED and poller is not None:
                    poller.modify(self.listener, 0)
                    self.paused_until = time.monotonic() + ACCEPT_PAUSE
                return
            if not connected:
                sock.close()
                continue
            if len(self.clients) >= MAX_CLIENTS:
                _refuse(sock)
                continue
            sock.setblocking(False)
            self.clients[sock.fileno()] = Client(sock)
            if poller is not None:
                poller.register(sock, select.POLLIN)

    def resume(self, poller: Poller, now: float) -> None:
        """Poll the listener again once its pause (see ACCEPT_PAUSE) is over."""
        if self.paused_until and now >= self.paused_until:
            self.paused_until = 0.0
            poller.modify(self.listener, select.POLLIN)

    def _read(self, poller: Poller, fd: int, client: Client, connected: bool) -> None:
        try:
            data = client.sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(poller, fd)
            return
        if not data:
            client.reading = False  # its input ended: it may still read output
            return
        if connected:
            self.to_guest += data

    def output(self, poller: Poller | None, data: bytes) -> None:
        """The guest wrote ``data``: queue it for every client, dropping any
        whose backlog would pass the bound, and send what can go now."""
        for fd, client in list(self.clients.items()):
            if len(client.pending) + len(data) > CLIENT_BUFFER_BYTES:
                self.dropped += 1
                self._drop(poller, fd)
                continue
            client.pending += data
            self._flush(poller, fd, client)

    def _flush(self, poller: Poller | None, fd: int, client: Client) -> None:
        try:
            sent = client.sock.send(client.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(poller, fd)
            return
        del client.pending[:sent]

    def send_to_guest(self, guest: Guest) -> None:
        """Write what clients typed to QEMU's socket, as much as it takes now."""
        if not self.to_guest:
            return
        try:
            sent = guest.send(self.to_guest)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.to_guest.clear()  # QEMU is gone: reading its socket will see the end
            return
        del self.to_guest[:sent]

    def _drop(self, poller: Poller | None, fd: int) -> None:
        client = self.clients.pop(fd, None)
        if client is None:
            return
        if poller is not None:
            with contextlib.suppress(KeyError, ValueError):
                poller.unregister(fd)
        client.sock.close()

    def close_clients(self) -> None:
        """QEMU went away (or we stop): send what each client can still take
        at once, then close them all; input not yet sent is dropped."""
        for fd, client in list(self.clients.items()):
            if client.pending:
                with contextlib.suppress(OSError):
                    client.sock.send(client.pending)
            self._drop(None, fd)
        self.to_guest.clear()

    def close(self) -> None:
        self.close_clients()
        self.listener.close()


def _refuse(sock: socket.socket) -> None:
    """Tell a client over ``MAX_CLIENTS`` why, then close it. The line fits
    a new connection's empty buffer, so it never waits."""
    sock.setblocking(False)
    with contextlib.suppress(OSError):
        sock.send(REFUSED_FULL)
    sock.close()
