"""`vmops console`'s terminal side (vmops/cli/console.py): on a terminal
(a pty here) keys go to the guest raw and Ctrl-] detaches; piped input is
sent, then the output lingers; the terminal is restored."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import termios
import threading
import time
from typing import BinaryIO

import pytest

from vmops.cli import console
from vmops.websocket import CloseCode, Connection


def _service_end(sock: socket.socket, got: list[bytes], greeting: bytes) -> threading.Thread:
    """The service's end of the WebSocket: it greets, then records what comes."""
    end = Connection(sock.recv, sock.sendall, client=False)

    def serve() -> None:
        end.send(greeting)
        with contextlib.suppress(OSError):  # the CLI may be gone before our close reply
            while (messages := end.recv()) is not None:
                got.extend(messages)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_split_at_detach() -> None:
    assert console.split_at_detach(b"ls\r") == (b"ls\r", False)
    assert console.split_at_detach(b"ab\x1dcd") == (b"ab", True)


def test_on_a_terminal_keys_go_raw_and_ctrl_bracket_detaches() -> None:
    ours, theirs = socket.socketpair()
    got: list[bytes] = []
    service = _service_end(theirs, got, b"login: ")
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)

    def type_once_raw() -> None:  # setraw flushes what was typed before it
        deadline = time.monotonic() + 10
        while termios.tcgetattr(slave)[3] & termios.ICANON and time.monotonic() < deadline:
            time.sleep(0.01)
        os.write(master, b"root\x03\r\x1dnot sent")

    threading.Thread(target=type_once_raw, daemon=True).start()
    out = io.BytesIO()
    with os.fdopen(slave, "rb", buffering=0, closefd=False) as stdin:
        status = console.run(ours, Connection(ours.recv, ours.sendall, client=True), "web1",
                             linger=1, stdin=stdin, stdout=out)
    service.join(10)
    assert status == 0
    assert b"".join(got) == b"root\x03\r"  # ^C is the guest's, raw; nothing after Ctrl-]
    assert termios.tcgetattr(slave) == before
    os.close(master)
    os.close(slave)
    theirs.close()


def test_piped_input_is_sent_then_the_output_lingers() -> None:
    ours, theirs = socket.socketpair()
    got: list[bytes] = []
    service = _service_end(theirs, got, b"hello\r\n")
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"uname -a\n")
    os.close(write_fd)
    out = io.BytesIO()
    with os.fdopen(read_fd, "rb", buffering=0) as stdin:
        piped: BinaryIO = stdin
        status = console.run(ours, Connection(ours.recv, ours.sendall, client=True), "web1",
                             linger=0.2, stdin=piped, stdout=out)
    service.join(10)
    assert status == 0 and b"".join(got) == b"uname -a\n"
    assert out.getvalue() == b"hello\r\n"
    theirs.close()


def test_a_full_console_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    ours, theirs = socket.socketpair()
    end = Connection(theirs.recv, theirs.sendall, client=False)
    end.close(CloseCode.TRY_AGAIN_LATER, "the console has 16 clients already: try again later")
    read_fd, write_fd = os.pipe()  # input that never ends: only the close ends the console
    with os.fdopen(read_fd, "rb", buffering=0) as stdin:
        status = console.run(ours, Connection(ours.recv, ours.sendall, client=True), "web1",
                             linger=1, stdin=stdin, stdout=io.BytesIO())
    os.close(write_fd)
    assert status == 1
    assert "the console has 16 clients already" in capsys.readouterr().err
    theirs.close()
