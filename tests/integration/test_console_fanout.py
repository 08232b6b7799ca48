"""The capture process's interactive clients for real: a fake QEMU (no
guest), real capture processes, real UNIX sockets (vmops/console/fanout.py).
Timeouts are only bounds against hanging."""

from __future__ import annotations

import contextlib
import os
import resource
import select
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import websocket

from tests.integration.test_console_capture import BOUND, Console, _lines, _wait_for, consoles
from tests.unit.test_api import start_api
from vmops.console import attach, read_log, wait_connected
from vmops.console.fanout import CLIENT_BUFFER_BYTES, MAX_CLIENTS, REFUSED_FULL, FanOut
from vmops.console.layout import LogFiles
from vmops.errors import Conflict
from vmops.socket_paths import socket_address

pytestmark = pytest.mark.integration
__all__ = ["consoles"]  # the fixture, shared with the capture tests


def _running(console: Console, max_bytes: int = 512 * 1024) -> None:
    console.start(max_bytes)
    console.qemu.start()
    wait_connected(console.log_dir, 0, timeout=BOUND)
    console.qemu.accept()


def _client(log_dir: Path) -> socket.socket:
    sock = attach(log_dir)
    sock.settimeout(BOUND)
    return sock


def _read_until(sock: socket.socket, wanted: bytes) -> bytes:
    got = bytearray()
    while wanted not in got:
        chunk = sock.recv(65536)
        assert chunk, f"the console closed before {wanted!r}; got {bytes(got)[-200:]!r}"
        got += chunk
    return bytes(got)


def _qemu_reads(console: Console, wanted: bytes) -> bytes:
    assert console.qemu.conn is not None
    return _read_until(console.qemu.conn, wanted)


def test_a_client_types_to_the_guest_and_reads_from_the_moment_it_joined(
        consoles: Callable[[], Console]) -> None:
    console = consoles()
    _running(console)
    console.qemu.send(b"before anyone listened\n")
    _wait_for("the early line in the log", lambda: b"listened" in read_log(console.log_dir))
    client = _client(console.log_dir)
    other = _client(console.log_dir)
    other.sendall(b"\r")
    _qemu_reads(console, b"\r")  # taken in (the first client is by its own typing)
    client.sendall(b"uname -a\r")
    assert _qemu_reads(console, b"uname -a\r") == b"uname -a\r"
    console.qemu.send(b"uname -a\r\nLinux guest\r\n")
    for sock in (client, other):
        got = _read_until(sock, b"Linux guest\r\n")
        assert got == b"uname -a\r\nLinux guest\r\n"  # nothing from before it joined
    assert read_log(console.log_dir) == b"before anyone listened\nuname -a\r\nLinux guest\r\n"
    client.close()
    other.close()


def test_a_client_whose_input_ended_still_reads(consoles: Callable[[], Console]) -> None:
    console = consoles()
    _running(console)
    client = _client(console.log_dir)
    client.sendall(b"echo hi\n")
    client.shutdown(socket.SHUT_WR)  # piped input that ran out
    _qemu_reads(console, b"echo hi\n")
    console.qemu.send(b"hi\n")
    assert _read_until(client, b"hi\n") == b"hi\n"
    client.close()


def test_a_stuck_client_is_dropped_and_stalls_neither_the_guest_nor_the_log(
        consoles: Callable[[], Console]) -> None:
    console = consoles()
    _running(console, max_bytes=4 * 1024 * 1024)  # the log keeps the whole flood
    stuck = _client(console.log_dir)  # never reads
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader = _client(console.log_dir)
    for sock in (stuck, reader):
        sock.sendall(b"\r")
    _qemu_reads(console, b"\r\r")  # both taken in before the flood starts
    data = _lines(0, 40_000, width=60)  # about 3 MiB: more than a client may fall behind
    assert len(data) > 2 * CLIENT_BUFFER_BYTES
    received = bytearray()
    assert console.qemu.conn is not None
    console.qemu.conn.setblocking(False)
    sent = 0
    while sent < len(data) or len(received) < len(data):
        if sent < len(data):
            with contextlib.suppress(BlockingIOError):
                sent += console.qemu.conn.send(data[sent:sent + 65536])
        with contextlib.suppress(BlockingIOError):
            received += reader.recv(65536, socket.MSG_DONTWAIT)
    assert bytes(received) == data  # the live reader got every byte, in order
    _wait_for("the whole flood in the log", lambda: read_log(console.log_dir) == data)
    # The stuck client was dropped: what it can still read ends before the flood did.
    stuck.settimeout(BOUND)
    leftover = bytearray()
    while chunk := stuck.recv(65536):
        leftover += chunk
    assert len(leftover) < len(data) and data.startswith(bytes(leftover))
    stuck.close()
    reader.close()


def test_clients_end_with_their_qemu_and_none_join_without_one(
        consoles: Callable[[], Console]) -> None:
    console = consoles()
    _running(console)
    client = _client(console.log_dir)
    console.qemu.exit()  # the guest powered off, or a hard reboot's first half
    assert client.recv(1) == b""
    late = _client(console.log_dir)  # the capture process listens on, but has no QEMU
    assert late.recv(1) == b""
    console.qemu.start()
    wait_connected(console.log_dir, 1, timeout=BOUND)
    console.qemu.accept()
    again = _client(console.log_dir)
    again.sendall(b"\r")
    _qemu_reads(console, b"\r")  # so it has been taken in before the guest writes
    console.qemu.send(b"second boot\n")
    assert _read_until(again, b"second boot\n") == b"second boot\n"
    for sock in (client, late, again):
        sock.close()


def test_attach_without_a_capture_process_is_a_conflict(tmp_path: Path) -> None:
    with pytest.raises(Conflict, match="no console capture process listens"):
        attach(tmp_path)


def test_the_socket_is_the_owners_only_and_goes_with_the_process(
        consoles: Callable[[], Console]) -> None:
    from vmops.console import stop_capture

    console = consoles()
    _running(console)
    path = LogFiles(console.log_dir).console_socket
    assert path.stat().st_mode & 0o077 == 0  # what is typed there reaches the guest
    stop_capture(console.log_dir, timeout=BOUND)
    assert not path.exists()


def test_a_client_over_the_limit_is_told_the_console_is_full(
        consoles: Callable[[], Console], tmp_path: Path) -> None:
    """Through the capture process itself and through the API's WebSocket,
    which closes with 1013 and says why (not 1000, as when the guest goes)."""
    api, servers = start_api(tmp_path)
    console = consoles()
    try:
        inst = api.add_instance("web1")
        console.log_dir = api.compute.instance_dir(inst)  # where the API looks
        _running(console)
        clients = [_client(console.log_dir) for _ in range(MAX_CLIENTS)]
        for sock in clients:
            sock.sendall(b"\r")
        _qemu_reads(console, b"\r" * MAX_CLIENTS)  # all of them taken in
        extra = _client(console.log_dir)
        assert _read_until_end(extra) == REFUSED_FULL
        extra.close()
        url = api.post("/v2.1/servers/web1/remote-consoles",
                       {"remote_console": {"protocol": "serial", "type": "serial"}},
                       headers={"OpenStack-API-Version": "compute 2.6"}
                       ).body["remote_console"]["url"]
        ws = websocket.create_connection(url, timeout=BOUND)
        try:
            ws.send_binary(b"typed at once\r")  # as piped input is: no answer to it
            frame = ws.recv_frame()
            assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
            assert int.from_bytes(frame.data[:2], "big") == 1013
            assert frame.data[2:] == b"the console has 16 clients already: try again later"
        finally:
            ws.close()
        console.qemu.send(b"still served\n")  # the refusals disturbed no one
        for sock in clients:
            assert _read_until(sock, b"still served\n") == b"still served\n"
            sock.close()
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()
        api.store.close()


def _read_until_end(sock: socket.socket) -> bytes:
    got = bytearray()
    while chunk := sock.recv(65536):
        got += chunk
    return bytes(got)


def test_a_client_it_has_no_descriptor_for_waits_without_spinning_the_loop(
        tmp_path: Path) -> None:
    """accept() failing for want of a descriptor leaves the client in the
    backlog and the listener readable: polled, every turn would find it
    ready at once (a full core while it lasts). It is left out of the poll
    for ACCEPT_PAUSE, then polled again, and the waiting client taken."""
    path = tmp_path / "c.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with socket_address(path) as address:
        listener.bind(address)
    listener.listen(MAX_CLIENTS)
    fanout = FanOut(listener)
    poller = select.poll()
    fanout.register(poller)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with socket_address(path) as address:
            client.connect(address)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        probe = os.dup(0)  # the lowest free descriptor: the next one made gets it
        os.close(probe)
        resource.setrlimit(resource.RLIMIT_NOFILE, (probe, hard))  # which is now too many
        try:
            fanout.accept(poller, connected=True)  # EMFILE
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert fanout.clients == {}
        assert listener.fileno() not in dict(poller.poll(0))  # was ready again at once
        fanout.resume(poller, fanout.paused_until)
        assert listener.fileno() in dict(poller.poll(0))
        fanout.accept(poller, connected=True)
        assert len(fanout.clients) == 1
    finally:
        client.close()
        fanout.close()
