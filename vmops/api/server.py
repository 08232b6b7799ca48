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
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from vmops.errors import ConfigError, Invalid, NotFound, VmopsError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_DISCARD_BYTES = 16 * MAX_BODY_BYTES
MICROVERSION = "2.1"  # the only compute microversion served: min and max
VERSION_HEADERS = ("openstack-api-version", "x-openstack-nova-api-version")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    # Over the unix socket the client is the socket's owner (root already);
    # over TCP it is any token holder: some requests are limited for those.
    via_unix_socket: bool = False

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

    @property
    def base_url(self) -> str:
        """Where the client reached us, for the links in answers."""
        host = self.headers.get("host") or "localhost"
        if not _HOST.match(host):
            host = "localhost"
        return f"http://{host}"


_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


@dataclass
class Response:
    status: int = 200
    body: Any = None  # JSON-able, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterator[bytes] | None = None


Handler = Callable[[Request], Response]


class Router:
    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler, str]] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        """``template`` is a path with ``{name}`` for each parameter."""
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        self._routes.append((method, re.compile(f"^{regex}/?$"), handler, template))

    def templates(self) -> list[tuple[str, str]]:
        return [(method, template) for method, _, _, template in self._routes]

    def dispatch(self, req: Request) -> Response:
        allowed = []
        for method, regex, handler, _ in self._routes:
            match = regex.match(req.path)
            if not match:
                continue
            if method != req.method:
                allowed.append(method)
                continue
            req.params = {k: unquote(v) for k, v in match.groupdict().items()}
            return handler(req)
        if allowed:
            return fault(405, "badMethod", f"{req.method} is not allowed on {req.path}; "
                         f"use {', '.join(sorted(set(allowed)))}")
        raise NotFound(what=f"no resource at {req.path}")


def fault(status: int, name: str, message: str) -> Response:
    return Response(status, {name: {"code": status, "message": message}})


def requested_microversion(headers: dict[str, str]) -> str | None:
    """The compute microversion a client asked for, or None.

    Raises Invalid for a malformed header; the caller answers 406 for a
    well-formed version vmops does not serve, as Nova does.
    """
    value = headers.get(VERSION_HEADERS[0])
    if value is not None:
        for part in value.split(","):
            service, _, version = part.strip().partition(" ")
            if service.lower() == "compute":
                value = version.strip()
                break
        else:
            return None  # a version for another service only
    else:
        value = headers.get(VERSION_HEADERS[1])
    if value is None:
        return None
    if value.lower() == "latest":
        return MICROVERSION
    if not re.fullmatch(r"[1-9]\d*\.(0|[1-9]\d*)", value):
        raise Invalid(reason=f"invalid microversion {value!r}: use MAJOR.MINOR, e.g. 2.1")
    return value


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Buffered writes (flushed after each request): the status line, headers
    # and a small body leave in one segment, and TCP_NODELAY sends the rest
    # at once; otherwise Nagle and delayed ACKs add 40 ms to every answer.
    wbufsize = -1

    def setup(self) -> None:
        super().setup()
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.client_address, *args)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """Malformed requests (bad request line, huge headers) get a JSON fault too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # unparsed: answer with a status line anyway
            self.request_version = "HTTP/1.0"
        name = "badRequest" if code < 500 else "computeFault"
        self._send(fault(code, name, message or HTTPStatus(code).phrase))

    def _serve(self) -> None:
        try:
            resp = self._respond()
        except Exception:  # noqa: BLE001 - never let a bug drop the connection
            log.exception("unhandled error on %s %s", self.command, self.path)
            resp = fault(500, "computeFault", "internal error; see the service log")
        self._send(resp)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

    def __getattr__(self, name: str) -> Any:
        """Any other method (TRACE, QUERY, ...) gets 405 or 404, not a 501."""
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def _respond(self) -> Response:
        if self.server.token and not self._token_ok():
            self.close_connection = True  # the body, if any, is left unread
            return fault(401, "unauthorized", "authentication required")
        body = self._read_body()
        if isinstance(body, Response):
            return body
        url = urlsplit(self.path)
        req = Request(self.command, url.path, parse_qs(url.query),
                      {k.lower(): v for k, v in self.headers.items()}, body,
                      via_unix_socket=self.server.address_family == socket.AF_UNIX)
        try:
            version = requested_microversion(req.headers)
            if version is not None and version != MICROVERSION:
                return fault(406, "computeFault", f"Version {version} is not supported by "
                             f"the API. Minimum is {MICROVERSION} and maximum is "
                             f"{MICROVERSION}.")
            return self.server.router.dispatch(req)
        except VmopsError as exc:
            return fault(exc.http_status, exc.fault_name, exc.message)

    def _read_body(self) -> bytes | Response:
        """The request body, or the fault answering a body we will not read."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return fault(411, "badRequest", "send the body with a Content-Length, not chunked")
        raw = self.headers.get("Content-Length") or "0"
        if not raw.isdigit():
            self.close_connection = True
            return fault(400, "badRequest", f"invalid Content-Length {raw[:40]!r}")
        length = int(raw)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._discard(length)
            return fault(413, "overLimit", f"request body of {length} bytes is over the "
                         f"limit of {MAX_BODY_BYTES} bytes")
        body = self.rfile.read(length) if length else b""
        kind = (self.headers.get("Content-Type") or "application/json").split(";")[0]
        if body and kind.strip().lower() not in ("application/json", ""):
            return fault(415, "badMediaType", f"unsupported Content-Type {kind[:80]!r}: "
                         "send application/json")
        return body

    def _discard(self, length: int) -> None:
        """Read and drop a body we refuse, so the client reads our answer
        instead of a broken pipe; past MAX_DISCARD_BYTES just close."""
        left = length if length <= MAX_DISCARD_BYTES else 0
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)

    def _token_ok(self) -> bool:
        """X-Auth-Token (OpenStack clients) or Authorization: Bearer (Prometheus)."""
        sent = self.headers.get("X-Auth-Token")
        if sent is None:
            scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
            sent = value.strip() if scheme.lower() == "bearer" else ""
        return hmac.compare_digest(sent.encode(), self.server.token.encode())

    def _send(self, resp: Response) -> None:
        request_id = f"req-{uuid.uuid4()}"
        headers = {"OpenStack-API-Version": f"compute {MICROVERSION}",
                   "X-OpenStack-Nova-API-Version": MICROVERSION,
                   "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version",
                   "X-OpenStack-Request-Id": request_id, "X-Compute-Request-Id": request_id,
                   **resp.headers}
        if self.close_connection:
            headers["Connection"] = "close"
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
    # Room for bursts (8 spawns at once from scripts): the default of 5
    # makes a unix-socket connect fail with EAGAIN.
    request_queue_size = 128
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


class _Server6(_Server):
    address_family = socket.AF_INET6


def _host_port(listen: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``:PORT`` (127.0.0.1)."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(option="listen", value=listen, allowed="HOST:PORT, e.g. 127.0.0.1:8774")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(router: Router, socket_path: Path, listen: str = "",
          token: str = "") -> list[_Server]:
    """Start the servers in daemon threads; the caller keeps them to shut down."""
    socket_path.unlink(missing_ok=True)
    old_umask = os.umask(0o077)  # the socket's permissions are the access control
    try:
        address: Any = str(socket_path)  # typeshed knows only (host, port) addresses
        unix = _UnixServer(address, _Handler)
    finally:
        os.umask(old_umask)
    unix.router, unix.token = router, ""
    servers: list[_Server] = [unix]
    if listen:
        host, port = _host_port(listen)
        tcp = (_Server6 if ":" in host else _Server)((host, port), _Handler)
        tcp.router, tcp.token = router, token
        servers.append(tcp)
    for srv in servers:
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, name="api",
                         daemon=True).start()
    return servers


__all__ = ["HTTPStatus", "Request", "Response", "Router", "fault", "serve"]
