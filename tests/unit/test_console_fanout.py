"""The capture process's client fan-out (vmops/console/fanout.py) on socket
pairs: bounds, back-pressure, who is kept and who is dropped."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmops.console import fanout
from vmops.console.fanout import CLIENT_BUFFER_BYTES, GUEST_INPUT_BYTES, FanOut


@pytest.fixture
def fan() -> Iterator[FanOut]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"\0vmops-fanout-test-{id(listener)}")  # abstract: no file
    listener.listen(8)
    out = FanOut(listener)
    yield out
    out.close()


def _join(fan: FanOut, poller: select.poll, connected: bool = True) -> socket.socket:
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.connect(fan.listener.getsockname())
    fan.accept(poller, connected)
    return peer


def test_output_reaches_every_client_and_input_is_queued_for_the_guest(fan: FanOut) -> None:
    poller = select.poll()
    a, b = _join(fan, poller), _join(fan, poller)
    fan.output(poller, b"hello\r\n")
    assert a.recv(100) == b"hello\r\n" and b.recv(100) == b"hello\r\n"
    a.sendall(b"ls\r")
    for fd in list(fan.clients):
        fan.handle(poller, fd, select.POLLIN, connected=True)
    assert bytes(fan.to_guest) == b"ls\r"
    guest, qemu = socket.socketpair()
    fan.send_to_guest(guest)
    assert qemu.recv(100) == b"ls\r" and not fan.to_guest


def test_a_client_too_far_behind_is_dropped_not_waited_for(fan: FanOut) -> None:
    poller = select.poll()
    stuck = _join(fan, poller)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    chunk = b"x" * 65536
    for _ in range(4 * CLIENT_BUFFER_BYTES // len(chunk)):
        fan.output(poller, chunk)  # never blocks, whatever the client does
    assert not fan.clients and fan.dropped == 1
    stuck.close()


def test_full_guest_input_stops_reading_clients(fan: FanOut) -> None:
    poller = select.poll()
    _join(fan, poller)
    (client,) = fan.clients.values()
    assert fan._events(client) & select.POLLIN
    fan.to_guest += b"y" * GUEST_INPUT_BYTES  # QEMU is not taking input
    assert not fan._events(client) & select.POLLIN


def test_input_that_ends_keeps_the_output_coming(fan: FanOut) -> None:
    poller = select.poll()
    peer = _join(fan, poller)
    peer.shutdown(socket.SHUT_WR)
    (fd,) = fan.clients
    fan.handle(poller, fd, select.POLLIN, connected=True)
    assert fd in fan.clients and not fan.clients[fd].reading
    fan.output(poller, b"still here\n")
    assert peer.recv(100) == b"still here\n"


def test_without_a_guest_clients_are_closed_at_once(fan: FanOut) -> None:
    poller = select.poll()
    peer = _join(fan, poller, connected=False)
    assert not fan.clients and peer.recv(1) == b""


def test_at_most_max_clients(fan: FanOut, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "MAX_CLIENTS", 2)
    poller = select.poll()
    peers = [_join(fan, poller) for _ in range(3)]
    assert len(fan.clients) == 2
    peers[2].settimeout(10)
    refusal = peers[2].recv(100)  # told why, then closed
    assert refusal == fanout.REFUSED_FULL and peers[2].recv(1) == b""


def test_closing_clients_sends_what_they_can_take_and_drops_input(fan: FanOut) -> None:
    poller = select.poll()
    peer = _join(fan, poller)
    (client,) = fan.clients.values()
    client.pending += b"last words"
    fan.to_guest += b"typed too late"
    fan.close_clients()
    assert peer.recv(100) == b"last words" and peer.recv(1) == b""
    assert not fan.to_guest


def test_a_socket_path_longer_than_an_address_still_binds_and_connects(tmp_path: Path) -> None:
    from vmops.socket_paths import MAX_SOCKET_PATH, socket_address

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "console.sock"
    assert len(str(path)) > MAX_SOCKET_PATH
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with socket_address(path) as address:
        server.bind(address)
    server.listen(1)
    assert path.exists()  # the socket is where it was meant to be
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with socket_address(path) as address:
        client.connect(address)
    conn, _ = server.accept()
    client.sendall(b"x")
    assert conn.recv(1) == b"x"
    for sock in (client, conn, server):
        sock.close()
