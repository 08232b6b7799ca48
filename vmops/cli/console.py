"""``vmops console NAME``: the guest's serial console, read-write.

It asks the service for a console URL (Nova's remote-consoles, as any
client does) and opens that WebSocket over the state directory's unix
socket. On a terminal the terminal is raw (every key, ^C included, goes to
the guest) and Ctrl-] detaches. With piped input it sends the input, then
keeps printing the guest's output for ``--linger`` seconds and detaches.
The console log keeps every byte either way (the capture process serves
both).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import termios
import time
import tty
from typing import BinaryIO
from urllib.parse import urlsplit

from vmops.cli.client import Client
from vmops.errors import ServiceUnavailable
from vmops.socket_paths import socket_address
from vmops.websocket import (
    CloseCode,
    Connection,
    HandshakeRefused,
    ProtocolError,
    client_handshake,
)

DETACH_KEY = b"\x1d"  # Ctrl-]
DETACH_NAME = "Ctrl-]"
REMOTE_CONSOLES = "2.6"


def open_console(client: Client, name: str) -> tuple[socket.socket, Connection]:
    """Ask for a console URL and open its WebSocket over the unix socket."""
    previous, client.microversion = client.microversion, REMOTE_CONSOLES
    try:
        answer = client.post(f"/servers/{name}/remote-consoles",
                             {"remote_console": {"protocol": "serial", "type": "serial"}})
    finally:
        client.microversion = previous
    url = urlsplit(answer["remote_console"]["url"])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with socket_address(client.socket) as address:
            sock.connect(address)
        conn = client_handshake(sock.recv, sock.sendall, "vmops", f"{url.path}?{url.query}")
    except HandshakeRefused as exc:
        sock.close()
        raise ServiceUnavailable(reason=f"the console did not open (HTTP {exc.status}): "
                                 f"{exc.body[:300].decode(errors='replace')}") from None
    except OSError as exc:
        sock.close()
        raise ServiceUnavailable(reason=f"cannot reach the service: {exc}") from None
    return sock, conn


def split_at_detach(data: bytes) -> tuple[bytes, bool]:
    """What to send of a terminal's input, and whether it asked to detach."""
    before, key, _ = data.partition(DETACH_KEY)
    return before, bool(key)


def run(sock: socket.socket, conn: Connection, name: str, linger: float,
        stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> int:
    """The console until the user detaches, the input ends (and the linger
    passes) or the guest's console closes."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    terminal = os.isatty(stdin.fileno())
    how = f"detach with {DETACH_NAME}" if terminal else \
        f"detach {linger:g} s after the input ends"
    print(f"vmops: connected to the serial console of {name}; {how}", file=sys.stderr)
    saved = termios.tcgetattr(stdin.fileno()) if terminal else None
    try:
        if terminal:
            tty.setraw(stdin.fileno())
        ended = _pump(sock, conn, stdin, stdout, terminal, linger)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin.fileno(), termios.TCSADRAIN, saved)
        with contextlib.suppress(OSError):
            conn.close()
        sock.close()
    print(f"\r\nvmops: {ended}", file=sys.stderr)
    refused = conn.close_received is not None and \
        conn.close_received[0] == CloseCode.TRY_AGAIN_LATER  # the console is full
    return 1 if refused else 0


def _pump(sock: socket.socket, conn: Connection, stdin: BinaryIO, stdout: BinaryIO,
          terminal: bool, linger: float) -> str:
    reading: int | None = stdin.fileno()
    deadline: float | None = None
    while True:
        watched = [sock.fileno()] + ([reading] if reading is not None else [])
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select(watched, [], [], timeout)
        if not ready:
            return "detached (the input ended)"
        if reading is not None and reading in ready:
            data = os.read(reading, 4096)
            if terminal:
                data, detach = split_at_detach(data)
                if data:
                    conn.send(data)
                if detach:
                    return "detached"
            elif data:
                conn.send(data)
            else:
                reading, deadline = None, time.monotonic() + linger
        if sock.fileno() in ready:
            ended = _from_guest(sock, conn, stdout)
            if ended is not None:
                return ended


def _from_guest(sock: socket.socket, conn: Connection, stdout: BinaryIO) -> str | None:
    try:
        data = sock.recv(65536)
    except OSError as exc:
        return f"the console connection broke: {exc}"
    if not data:
        return "the console connection closed"
    try:
        messages = conn.receive(data)
    except ProtocolError as exc:
        return f"the console broke the WebSocket protocol: {exc}"
    for message in messages:
        stdout.write(message)
    stdout.flush()
    if conn.close_received is not None:
        code, reason = conn.close_received
        return f"the console closed: {reason or code}"
    return None
