"""What unauthenticated TCP clients can hold (issue 16, defect 7), against the
real API server in its own process, on loopback: idle and slow clients are
dropped, connections are capped per address, and with a low descriptor
limit the unix socket still answers while TCP clients pile up."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SERVER = """
import resource, sys, time
from pathlib import Path
from vmops.api import discovery, server
limit = int(sys.argv[3])
if limit:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
router = server.Router()
router.add("GET", "/v2.1", discovery.compute_current)
limits = server.Limits(request_timeout=float(sys.argv[5]), body_timeout=1.0,
                       max_connections=1000, max_connections_per_client=int(sys.argv[4]),
                       descriptor_reserve=int(sys.argv[6]))
server.serve(router, Path(sys.argv[1]), "127.0.0.1:" + sys.argv[2], "tok", limits)
print("ready", flush=True)
time.sleep(600)
"""
RESERVE = 16
# Every wait below is a bound for a failure, not a measured duration.
PATIENCE_S = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("vmops", timeout=PATIENCE_S)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(PATIENCE_S)
        self.sock.connect(str(self.path))


def start(tmp_path: Path, fd_limit: int = 0, per_client: int = 1000, idle: float = 1.0,
          reserve: int = 16) -> tuple[subprocess.Popen[str], Path, int]:
    sock, port = tmp_path / "api.sock", _free_port()
    args = [sock, port, fd_limit, per_client, idle, reserve]
    proc = subprocess.Popen([sys.executable, "-c", SERVER, *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc, sock, port


@pytest.fixture
def stop() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def _tcp(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)
    return conn


def _read_all(conn: socket.socket) -> bytes:
    """Everything until the server closes (a reset counts as closed)."""
    data = b""
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_idle_connection_is_closed(tmp_path: Path, stop: list[subprocess.Popen[str]]) -> None:
    proc, _, port = start(tmp_path)
    stop.append(proc)
    with _tcp(port) as conn:
        assert _read_all(conn) == b""  # closed by the server, before our patience ran out


def test_trickling_headers_are_cut_off(tmp_path: Path,
                                       stop: list[subprocess.Popen[str]]) -> None:
    proc, _, port = start(tmp_path)
    stop.append(proc)
    with _tcp(port) as conn:
        request = b"GET /v2.1 HTTP/1.1\r\nX-Padding: " + b"a" * 10_000
        for byte in request:
            try:
                conn.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.05)  # each byte well inside any per-read timeout
        else:
            pytest.fail("the server kept reading a request trickled for "
                        f"{len(request) * 0.05:.0f}s")


def test_slow_body_is_answered_408(tmp_path: Path, stop: list[subprocess.Popen[str]]) -> None:
    proc, _, port = start(tmp_path)
    stop.append(proc)
    with _tcp(port) as conn:
        conn.sendall(b"POST /v2.1 HTTP/1.1\r\nHost: x\r\nX-Auth-Token: tok\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        answer = _read_all(conn)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_connections_per_address_are_capped(tmp_path: Path,
                                            stop: list[subprocess.Popen[str]]) -> None:
    proc, _, port = start(tmp_path, per_client=3)
    stop.append(proc)
    held = [_tcp(port) for _ in range(3)]
    try:
        with _tcp(port) as extra:
            answer = _read_all(extra)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"from 127.0.0.1" in answer
    finally:
        for conn in held:
            conn.close()


def test_unix_socket_answers_while_tcp_clients_exhaust_descriptors(
        tmp_path: Path, stop: list[subprocess.Popen[str]]) -> None:
    # Idle clients are not dropped in time here: only the reserve keeps the
    # unix socket answering.
    proc, sock, port = start(tmp_path, fd_limit=64, idle=3600, reserve=RESERVE)
    stop.append(proc)
    held = []
    try:
        for _ in range(150):  # far more than the server may open
            held.append(_tcp(port))
        conn = UnixConnection(sock)
        conn.request("GET", "/v2.1")
        assert conn.getresponse().status == 200
        conn.close()
        assert proc.poll() is None
    finally:
        for c in held:
            c.close()
