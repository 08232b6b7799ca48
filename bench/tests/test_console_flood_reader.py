"""console_flood's ``--reader`` (the chardev comparison's reader), without QEMU:
every byte written into the chardev reaches its log, in order, and it ends
at end of file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = b"".join(b"VMOPS-FLOOD %d xxxx\r\n" % n for n in range(2000))


def _reader(kind: str, path: Path, log: Path, gather: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.console_flood", "--reader",
                             kind, str(path), str(log), gather], cwd=REPO)


@pytest.mark.parametrize("gather", ["-1", "0.005"])
def test_the_reader_logs_every_byte_of_a_pipe_written_a_byte_at_a_time(
        tmp_path: Path, gather: str) -> None:
    fifo, log = tmp_path / "p.out", tmp_path / "log"
    os.mkfifo(fifo)
    reader = _reader("pipe", fifo, log, gather)
    try:
        fd = os.open(fifo, os.O_WRONLY)  # waits for the reader's open
        for i in range(len(PAYLOAD)):
            os.write(fd, PAYLOAD[i:i + 1])  # as QEMU 7.2's UART does
        os.close(fd)  # end of file: the reader exits
        assert reader.wait(timeout=30) == 0
    finally:
        reader.kill()
        reader.wait()
    assert log.read_bytes() == PAYLOAD


def test_the_reader_logs_every_byte_of_a_socket_it_connects_to(tmp_path: Path) -> None:
    path, log = tmp_path / "serial.sock", tmp_path / "log"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(30)
    reader = _reader("socket", path, log, "-1")
    try:
        conn, _ = listener.accept()
        with conn:
            for i in range(len(PAYLOAD)):
                conn.sendall(PAYLOAD[i:i + 1])
        assert reader.wait(timeout=30) == 0
    finally:
        reader.kill()
        reader.wait()
        listener.close()
    assert log.read_bytes() == PAYLOAD
