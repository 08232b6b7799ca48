"""The HTTP server: a unix socket (and optionally TCP), routing, errors.

Request and response shapes live in ``routes.py`` and ``views.py``; this
module only moves bytes, checks the token and turns errors into Nova's
fault bodies (``{"itemNotFound": {"code": 404, "message": ...}}``).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from vmops.errors import Invalid, NotFound, VmopsError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MICROVERSION = "2.1"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        if not self.body:
            return None
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Invalid(reason=f"the request body is not valid JSON: {exc}") from None

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass
class Response:
    status: int = 200
    body: Any = None  # JSON-able, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterator[bytes] | None = None


Handler = Callable[[Request], Response]


class Router:
    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self._routes.append((method, re.compile(f"^{regex}/?$"), handler))

    def dispatch(self, req: Request) -> Response:
        allowed = []
        for method, regex, handler in self._routes:
            match = regex.match(req.path)
            if not match:
                continue
            if method != req.method:
                allowed.append(method)
                continue
            req.params = match.groupdict()
            return handler(req)
        if allowed:
            return fault(405, "badMethod", f"{req.method} is not allowed on {req.path}; "
                         f"use {', '.join(sorted(set(allowed)))}")
        raise NotFound(what=f"no resource at {req.path}")


def fault(status: int, name: str, message: str) -> Response:
    return Response(status, {name: {"code": status, "message": message}})


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.client_address, *args)

    def _serve(self) -> None:
        try:
            resp = self._respond()
        except Exception:  # noqa: BLE001 - never let a bug drop the connection
            log.exception("unhandled error on %s %s", self.command, self.path)
            resp = fault(500, "computeFault", "internal error; see the service log")
        self._send(resp)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

    def _respond(self) -> Response:
        if self.server.token and not self._token_ok():
            return fault(401, "unauthorized", "authentication required")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return fault(413, "overLimit", f"request body over {MAX_BODY_BYTES} bytes")
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        req = Request(self.command, url.path, parse_qs(url.query),
                      {k.lower(): v for k, v in self.headers.items()}, body)
        try:
            return self.server.router.dispatch(req)
        except VmopsError as exc:
            return fault(exc.http_status, exc.fault_name, exc.message)

    def _token_ok(self) -> bool:
        sent = self.headers.get("X-Auth-Token", "")
        return hmac.compare_digest(sent.encode(), self.server.token.encode())

    def _send(self, resp: Response) -> None:
        headers = {"OpenStack-API-Version": f"compute {MICROVERSION}",
                   "X-OpenStack-Nova-API-Version": MICROVERSION, **resp.headers}
        if resp.stream is not None:
            self._send_stream(resp, headers)
            return
        if isinstance(resp.body, bytes):
            payload = resp.body
            headers.setdefault("Content-Type", "application/octet-stream")
        elif resp.body is None:
            payload = b""
        else:
            payload = json.dumps(resp.body).encode()
            headers.setdefault("Content-Type", "application/json")
        self.send_response(resp.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send_stream(self, resp: Response, headers: dict[str, str]) -> None:
        assert resp.stream is not None
        self.send_response(resp.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in resp.stream:
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    router: Router
    token: str


class _UnixServer(_Server):
    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "vmops", 0

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, _ = self.socket.accept()
        return conn, ("unix", 0)


def serve(router: Router, socket_path: Path, listen: str = "",
          token: str = "") -> list[_Server]:
    """Start the servers in daemon threads; the caller keeps them to shut down."""
    socket_path.unlink(missing_ok=True)
    old_umask = os.umask(0o077)  # the socket's permissions are the access control
    try:
        unix = _UnixServer(str(socket_path), _Handler)
    finally:
        os.umask(old_umask)
    unix.router, unix.token = router, ""
    servers: list[_Server] = [unix]
    if listen:
        host, _, port = listen.rpartition(":")
        tcp = _Server((host.strip("[]") or "127.0.0.1", int(port)), _Handler)
        tcp.router, tcp.token = router, token
        servers.append(tcp)
    for srv in servers:
        threading.Thread(target=srv.serve_forever, name="api", daemon=True).start()
    return servers


__all__ = ["HTTPStatus", "Request", "Response", "Router", "fault", "serve"]
