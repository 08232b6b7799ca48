"""The CLI's client keeps its connection to the service for the thread's
next request (HTTP/1.1 keep-alive), and never sends a request that changes
something twice: a server on a unix socket that plays the service here."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmops.cli import client as client_module
from vmops.cli.client import Client
from vmops.errors import ServiceUnavailable


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with self.server.lock:
            self.server.requests.append((self.command, id(self.connection)))
            drop = self.server.drop_next
            self.server.drop_next = False
        if drop:  # as a service that stopped before it answered
            self.close_connection = True
            return
        body = json.dumps({"seen": len(self.server.requests)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.server.close_after_answer:  # an idle close, seen before the next request
            self.close_connection = True

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path) -> None:
        super().__init__(str(path), _Handler)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, int]] = []
        self.accepted = 0
        self.drop_next = False
        self.close_after_answer = False

        self.closed = threading.Semaphore(0)  # released once per connection closed

    def get_request(self) -> Any:
        got = super().get_request()
        with self.lock:
            self.accepted += 1
        return got

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        self.closed.release()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[_Server, Client]]:
    srv = _Server(tmp_path / "vmops.sock")
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    cli = Client(tmp_path, autostart=False, timeout=10.0)
    try:
        yield srv, cli
    finally:
        cli.close()
        srv.shutdown()
        srv.server_close()
        thread.join()


def test_one_thread_sends_its_requests_on_one_connection(
        served: tuple[_Server, Client]) -> None:
    srv, cli = served
    assert [cli.get("/flavors")["seen"] for _ in range(5)] == [1, 2, 3, 4, 5]
    assert cli.post("/servers", {"server": {}})["seen"] == 6
    assert srv.accepted == 1
    assert len({conn for _, conn in srv.requests}) == 1


def test_a_connection_idle_too_long_is_not_used_again(
        served: tuple[_Server, Client], monkeypatch: pytest.MonkeyPatch) -> None:
    srv, cli = served
    monkeypatch.setattr(client_module, "REUSE_IDLE_S", 0.0)
    cli.get("/flavors")
    cli.get("/flavors")
    assert srv.accepted == 2


def test_a_connection_the_service_closed_is_not_used_again(
        served: tuple[_Server, Client]) -> None:
    srv, cli = served
    srv.close_after_answer = True
    assert cli.get("/flavors")["seen"] == 1
    assert srv.closed.acquire(timeout=5)  # as an idle close, some time before the next
    assert cli.post("/servers", {})["seen"] == 2  # on a new connection, sent once
    assert srv.accepted == 2
    assert [method for method, _ in srv.requests] == ["GET", "POST"]


def test_a_get_the_service_dropped_on_a_kept_connection_is_sent_again(
        served: tuple[_Server, Client]) -> None:
    srv, cli = served
    cli.get("/flavors")
    srv.drop_next = True
    assert cli.get("/flavors")["seen"] == 3  # dropped once, answered on a new connection
    assert srv.accepted == 2


def test_a_post_the_service_dropped_is_not_sent_again(served: tuple[_Server, Client]) -> None:
    """It may have been done: the caller hears of the failure instead."""
    srv, cli = served
    cli.get("/flavors")
    srv.drop_next = True
    with pytest.raises(ServiceUnavailable, match="before answering POST "
                       "/v2.1/servers/web1/action, which may or may not have been done"):
        cli.post("/servers/web1/action", {"pause": None})
    assert [method for method, _ in srv.requests] == ["GET", "POST"]
    assert cli.get("/flavors")["seen"] == 3  # the next request works


def test_threads_keep_a_connection_each(served: tuple[_Server, Client]) -> None:
    srv, cli = served
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                cli.get("/flavors")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(srv.requests) == 120
    assert srv.accepted <= 7  # one per thread (threads that ended may leave theirs open)


def test_a_stream_has_a_connection_of_its_own(served: tuple[_Server, Client]) -> None:
    srv, cli = served
    cli.get("/flavors")
    assert b"".join(cli.stream("/flavors")) == b'{"seen": 2}'
    assert cli.get("/flavors")["seen"] == 3
    assert srv.accepted == 2  # the kept one served the first and the last
