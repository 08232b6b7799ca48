"""The HTTP server: a unix socket (and optionally TCP), routing, errors.

Request and response shapes live in ``routes.py`` and ``views.py``; this
module only moves bytes, checks the token and turns errors into Nova's
fault bodies (``{"itemNotFound": {"code": 404, "message": ...}}``).

What a client can hold is bounded (:class:`Limits`): time to send a
request's headers (idle keep-alive connections included) and its body,
TCP connections in all and per client address, and a reserve of file
descriptors TCP clients never get, so the unix socket always answers.
"""

from __future__ import annotations

import errno
import hmac
import io
import json
import logging
import math
import os
import re
import resource
import socket
import socketserver
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from vmops.api.body_stream import BodyStream
from vmops.compute import actions
from vmops.errors import ConfigError, Invalid, NotFound, VmopsError, storage_full
from vmops.socket_paths import socket_address

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_DISCARD_BYTES = 16 * MAX_BODY_BYTES
# Nova's deepest bodies (server create: personality items) nest 4 levels.
MAX_JSON_DEPTH = 32
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
# JSON bodies: plain, and the JSON patches of Glance's image update.
JSON_TYPES = ("application/json", "", "application/openstack-images-v2.0-json-patch",
              "application/openstack-images-v2.1-json-patch")
# The compute microversions served (docs/openstack-clients.md says why these).
MIN_MICROVERSION = (2, 1)
MAX_MICROVERSION = (2, 52)
VERSION_HEADERS = ("openstack-api-version", "x-openstack-nova-api-version")
Microversion = tuple[int, int]


def version_text(version: Microversion) -> str:
    return f"{version[0]}.{version[1]}"


# MAJOR.MINOR in ASCII digits, at most 9 each: int() refuses a string of
# over 4,300 digits (a 500), and no service has a version that long.
MICROVERSION_PATTERN = r"([1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})"


def parse_version(text: str) -> Microversion:
    """``"2.19"`` -> (2, 19)."""
    major, _, minor = text.partition(".")
    return int(major), int(minor)


@dataclass(frozen=True)
class Context:
    """Who is asking: the user, the project their token is scoped to, and
    their roles in it (``admin``, ``member``, ``reader``)."""

    user_id: str
    project_id: str
    roles: frozenset[str]
    user_name: str = ""
    project_name: str = ""

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def can_write(self) -> bool:
        """``reader`` (alone) may only read."""
        return bool(self.roles & {"admin", "member"})


# Over the unix socket (its owner is root already) and with the fixed
# ``api_token``: the admin user in the admin project (ids filled in by the
# authenticator when it knows them).
ADMIN = Context("", "", frozenset({"admin", "member", "reader"}), "admin", "admin")
# A request without a (valid) token, on a public route.
ANONYMOUS = Context("", "", frozenset())


class Authenticator:
    """Turns a request's token into a :class:`Context`, or None (401).

    This default knows only the fixed ``api_token``; the identity service
    (vmops/identity) replaces it with one that also knows issued tokens.
    """

    def __init__(self, api_token: str = "") -> None:
        self.api_token = api_token

    def admin(self) -> Context:
        return ADMIN

    def context(self, token: str) -> Context | None:
        if self.api_token and hmac.compare_digest(token.encode(), self.api_token.encode()):
            return self.admin()
        return None


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
    context: Context = ADMIN
    # The compute microversion the client asked for (2.1 if none, as Nova).
    microversion: Microversion = MIN_MICROVERSION
    # The query as sent: ``query`` drops arguments given with no value.
    query_string: str = ""
    # The body of a route added with ``stream=True`` (``body`` is then b"").
    stream: BodyStream | None = None

    def json(self) -> Any:
        return decode_json(self.body)

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def given(self, name: str) -> bool:
        """Whether the query names ``name``, with a value or not (Nova's
        ``all_tenants`` means yes even when empty)."""
        return name in parse_qs(self.query_string, keep_blank_values=True)

    def at_least(self, version: str) -> bool:
        """Whether the request's microversion is ``version`` or later."""
        return self.microversion >= parse_version(version)

    @property
    def base_url(self) -> str:
        """Where the client reached us, for the links in answers."""
        host = self.headers.get("host") or "localhost"
        if not _HOST.match(host):
            host = "localhost"
        return f"http://{host}"


def decode_json(body: bytes) -> Any:
    """The JSON ``body`` (None if empty): nesting bounded before it is parsed
    (Python's parser recurses), and only finite numbers (JSON has no NaN or
    Infinity, and 1e999 would be one)."""
    if not body:
        return None
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise Invalid(reason=f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(body, parse_constant=_non_finite, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Invalid(reason=f"the request body is not valid JSON: {exc}") from None


def json_depth(body: bytes) -> int:
    """How deep the arrays and objects in ``body`` nest, strings skipped,
    in time linear in its size (only the brackets are looked at in Python).
    Malformed JSON gets some number; the parser refuses it afterwards."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # cannot nest deeper than it has brackets
    # Drop escapes (an escaped backslash first), then everything but quotes
    # and brackets; then the even pieces between quotes are outside strings.
    plain = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = plain.translate(None, _NOT_STRUCTURE)
    outside = b"".join(structure.split(b'"')[::2])
    depth = deepest = 0
    for byte in outside:
        depth += 1 if byte in b"[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_JSON_DEPTH:
                break
    return deepest


_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')


def _non_finite(name: str) -> Any:
    raise Invalid(reason=f"{name} is not a number JSON allows; give a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Invalid(reason=f"the number {text[:40]} is too large")
    return value


_URL_TOKEN = re.compile(r"([?&]token=)[^&\s]*")
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


@dataclass
class Upgraded:
    """A connection that switched protocols (101): what was sent after the
    request is read through ``read`` (it may already be buffered), written
    straight to ``sock``. Nothing limits its time but its handler."""

    read: Callable[[int], bytes]
    sock: socket.socket


@dataclass
class Response:
    status: int = 200
    body: Any = None  # JSON-able, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)
    stream: Iterator[bytes] | None = None
    # With status 101: runs in the connection's thread once the answer's
    # headers are sent, for as long as the new protocol lasts (a WebSocket).
    upgrade: Callable[[Upgraded], None] | None = None


Handler = Callable[[Request], Response]
# Checks that the request's context may call (method, route template);
# raises Forbidden if not (see vmops/api/policy.py).
Authorize = Callable[[Request, str, str], None]
# (status, message) -> the error body of an API that is not Nova's.
FaultShape = Callable[[int, str], Any]


class Router:
    def __init__(self, authorize: Authorize | None = None) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler, str]] = []
        self._public: set[tuple[str, str]] = set()
        self._authorize = authorize
        self._fault_shapes: list[tuple[str, FaultShape]] = []
        self._streamed: set[tuple[str, str]] = set()

    def add(self, method: str, template: str, handler: Handler, public: bool = False,
            stream: bool = False) -> None:
        """``template`` is a path with ``{name}`` for each parameter. A
        ``public`` route answers without a token (version documents, the
        identity service's token requests). A ``stream`` route reads its
        body itself from ``req.stream`` (any size, chunked or not)."""
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        self._routes.append((method, re.compile(f"^{regex}/?$"), handler, template))
        if public:
            self._public.add((method, template))
        if stream:
            self._streamed.add((method, template))

    def is_public(self, method: str, path: str) -> bool:
        return self._flagged(self._public, method, path)

    def takes_stream(self, method: str, path: str) -> bool:
        return self._flagged(self._streamed, method, path)

    def _flagged(self, flagged: set[tuple[str, str]], method: str, path: str) -> bool:
        for route_method, regex, _, template in self._routes:
            if route_method == method and regex.match(path):
                return (method, template) in flagged
        return False

    def templates(self) -> list[tuple[str, str]]:
        return [(method, template) for method, _, _, template in self._routes]

    def public_templates(self) -> set[tuple[str, str]]:
        return set(self._public)

    def fault_shape(self, prefix: str, shape: FaultShape) -> None:
        """Errors answered under ``prefix`` (the identity API: Keystone's
        ``{"error": {...}}``) get ``shape``'s body instead of Nova's fault."""
        self._fault_shapes.append((prefix.rstrip("/"), shape))

    def shaped(self, path: str, resp: Response) -> Response:
        """``resp``, its Nova fault body reshaped if ``path`` is under a prefix
        with a shape of its own."""
        if resp.status < 400 or not isinstance(resp.body, dict) or len(resp.body) != 1:
            return resp
        (inner,) = resp.body.values()
        if not isinstance(inner, dict) or "message" not in inner:
            return resp
        for prefix, shape in self._fault_shapes:
            if path == prefix or path.startswith(prefix + "/"):
                return Response(resp.status, shape(resp.status, str(inner["message"])),
                                resp.headers)
        return resp

    def dispatch(self, req: Request) -> Response:
        allowed = []
        for method, regex, handler, template in self._routes:
            match = regex.match(req.path)
            if not match:
                continue
            if method != req.method:
                allowed.append(method)
                continue
            req.params = {k: unquote(v) for k, v in match.groupdict().items()}
            if self._authorize is not None:
                self._authorize(req, method, template)
            return handler(req)
        if allowed:
            return fault(405, "badMethod", f"{req.method} is not allowed on {req.path}; "
                         f"use {', '.join(sorted(set(allowed)))}")
        raise NotFound(what=f"no resource at {req.path}")


def fault(status: int, name: str, message: str) -> Response:
    return Response(status, {name: {"code": status, "message": message}})


def requested_microversion(headers: dict[str, str]) -> str | None:
    """The compute microversion a client asked for (``latest``: the
    highest served), or None.

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
        return version_text(MAX_MICROVERSION)
    if not re.fullmatch(MICROVERSION_PATTERN, value):
        raise Invalid(reason=f"invalid microversion {value[:20]!r}: use MAJOR.MINOR, e.g. 2.1")
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
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        """One request; its line and headers must all arrive in time (that
        time starts when the connection is idle, so it bounds idle ones too)."""
        self._reader.deadline = time.monotonic() + self.server.limits.request_timeout
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # A console URL's token is a credential in the request line: never logged.
        log.debug("%s " + format, self.client_address,
                  *(_URL_TOKEN.sub(r"\1***", a) if isinstance(a, str) else a for a in args))

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """Malformed requests (bad request line, huge headers) get a JSON fault too."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # unparsed: answer with a status line anyway
            self.request_version = "HTTP/1.0"
        name = "badRequest" if code < 500 else "computeFault"
        self._send(fault(code, name, message or HTTPStatus(code).phrase))

    def _serve(self) -> None:
        self._stream: BodyStream | None = None
        # Sent back as X-OpenStack-Request-Id, and recorded with any instance
        # action the request starts (Nova's os-instance-actions).
        self._request_id = actions.new_request_id()
        try:
            resp = self._respond()
        except Exception:  # noqa: BLE001 - never let a bug drop the connection
            log.exception("unhandled error on %s %s", self.command, urlsplit(self.path).path)
            resp = fault(500, "computeFault", "internal error; see the service log")
        resp = self.server.router.shaped(urlsplit(self.path).path, resp)
        if self._stream is not None and not self._stream.drain(MAX_DISCARD_BYTES):
            self.close_connection = True  # the rest of a streamed body is left unread
        self._send(resp)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

    def __getattr__(self, name: str) -> Any:
        """Any other method (TRACE, QUERY, ...) gets 405 or 404, not a 501."""
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def _respond(self) -> Response:
        self._microversion = MIN_MICROVERSION  # echoed in the answer's headers
        url = urlsplit(self.path)
        via_unix = self.server.address_family == socket.AF_UNIX
        auth = self.server.authenticator
        context = auth.admin() if via_unix else auth.context(self._token())
        if context is None:
            if not self.server.router.is_public(self.command, url.path):
                self.close_connection = True  # the body, if any, is left unread
                return fault(401, "unauthorized", "authentication required")
            context = ANONYMOUS
        if self.server.router.takes_stream(self.command, url.path):
            body: bytes | BodyStream | Response = self._body_stream()
        else:
            body = self._read_body()
        if isinstance(body, Response):
            return body
        if isinstance(body, BodyStream):
            self._stream, body = body, b""
        req = Request(self.command, url.path, parse_qs(url.query),
                      {k.lower(): v for k, v in self.headers.items()}, body,
                      via_unix_socket=via_unix, context=context, stream=self._stream,
                      query_string=url.query)
        try:
            version = requested_microversion(req.headers)
            if version is not None:
                wanted = parse_version(version)
                if not MIN_MICROVERSION <= wanted <= MAX_MICROVERSION:
                    return fault(406, "computeFault", f"Version {version} is not supported "
                                 f"by the API. Minimum is {version_text(MIN_MICROVERSION)} "
                                 f"and maximum is {version_text(MAX_MICROVERSION)}.")
                req.microversion = self._microversion = wanted
            caller = actions.Caller(self._request_id, context.user_id, context.project_id)
            with actions.calling_as(caller):
                return self.server.router.dispatch(req)
        except VmopsError as exc:
            return fault(exc.http_status, exc.fault_name, exc.message)
        except (OSError, sqlite3.Error) as exc:
            full = storage_full(exc)
            if full is None:
                raise
            log.error("%s %s: %s", self.command, url.path, full.message)
            return fault(full.http_status, full.fault_name, full.message)

    def _read_body(self) -> bytes | Response:
        """The request body, or the fault answering a body we will not read."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return fault(411, "badRequest", "send the body with a Content-Length, not chunked")
        raw = self.headers.get("Content-Length") or "0"
        if not _CONTENT_LENGTH.fullmatch(raw):
            self.close_connection = True
            return fault(400, "badRequest", f"invalid Content-Length {raw[:40]!r}")
        length = int(raw)
        timeout = self.server.limits.body_timeout
        self._reader.deadline = time.monotonic() + timeout
        try:
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                self._discard(length)
                return fault(413, "overLimit", f"request body of {length} bytes is over the "
                             f"limit of {MAX_BODY_BYTES} bytes")
            body = self.rfile.read(length) if length else b""
        except TimeoutError:
            self.close_connection = True
            return fault(408, "requestTimeout", f"the request body did not arrive within "
                         f"{timeout:g} seconds")
        if len(body) < length:
            self.close_connection = True
            return fault(400, "badRequest", "the request body is shorter than its "
                         "Content-Length")
        kind = (self.headers.get("Content-Type") or "application/json").split(";")[0]
        if body and kind.strip().lower() not in JSON_TYPES:
            return fault(415, "badMediaType", f"unsupported Content-Type {kind[:80]!r}: "
                         "send application/json")
        return body

    def _body_stream(self) -> BodyStream | Response:
        """A streamed body: chunked, or as long as its Content-Length."""
        coding = (self.headers.get("Transfer-Encoding") or "").strip().lower()
        if coding and coding != "chunked":
            self.close_connection = True
            return fault(501, "notImplemented", f"Transfer-Encoding {coding[:40]!r} is not "
                         "supported; send chunked or a Content-Length")
        raw = self.headers.get("Content-Length")
        if coding and raw is not None:  # RFC 9112 6.3: a request smuggling sign
            self.close_connection = True
            return fault(400, "badRequest", "send either Content-Length or chunked, not both")
        if not coding and not _CONTENT_LENGTH.fullmatch(raw or "0"):
            self.close_connection = True
            return fault(400, "badRequest", f"invalid Content-Length {(raw or '')[:40]!r}")
        length = None if coding else int(raw or "0")
        return BodyStream(self.rfile, length, self.server.limits.body_timeout,
                          self._arm_body_read)

    def _arm_body_read(self, seconds: float) -> None:
        """Each read of a streamed body has its own time limit."""
        self._reader.deadline = time.monotonic() + seconds

    def _discard(self, length: int) -> None:
        """Read and drop a body we refuse, so the client reads our answer
        instead of a broken pipe; past MAX_DISCARD_BYTES just close."""
        left = length if length <= MAX_DISCARD_BYTES else 0
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)

    def _token(self) -> str:
        """X-Auth-Token (OpenStack clients) or Authorization: Bearer (Prometheus)."""
        sent = self.headers.get("X-Auth-Token")
        if sent is None:
            scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
            sent = value.strip() if scheme.lower() == "bearer" else ""
        return sent

    def _send(self, resp: Response) -> None:
        # A client that does not take its answer is as slow as one that
        # does not send its body.
        self.connection.settimeout(self.server.limits.body_timeout)
        request_id = self.__dict__.pop("_request_id", None) or actions.new_request_id()
        version = version_text(getattr(self, "_microversion", MIN_MICROVERSION))
        headers = {"OpenStack-API-Version": f"compute {version}",
                   "X-OpenStack-Nova-API-Version": version,
                   "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version",
                   "X-OpenStack-Request-Id": request_id, "X-Compute-Request-Id": request_id,
                   **resp.headers}
        if self.close_connection:
            headers["Connection"] = "close"
        if resp.upgrade is not None and resp.status == 101:
            self._switch_protocols(resp, headers)
            return
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

    def _switch_protocols(self, resp: Response, headers: dict[str, str]) -> None:
        assert resp.upgrade is not None
        self.send_response(101)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.close_connection = True  # whatever follows is the new protocol's
        try:
            self.wfile.flush()
            self._reader.deadline = None
            self.connection.settimeout(None)
            resp.upgrade(Upgraded(self.rfile.read1, self.connection))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        except Exception:  # noqa: BLE001 - one connection's bug must not kill the server
            log.exception("the upgraded connection on %s failed", urlsplit(self.path).path)

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
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True


class _DeadlineReader(io.RawIOBase):
    """A socket's reading side with a deadline for what is being read (the
    headers, the body), not just for each read: a client trickling one byte
    at a time runs out of time as surely as a silent one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the client was too slow")
            self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


@dataclass(frozen=True)
class Limits:
    """What clients may hold; see the ``api_*`` settings for each one."""

    request_timeout: float = 30.0
    body_timeout: float = 60.0
    max_connections: int = 128
    max_connections_per_client: int = 16
    descriptor_reserve: int = 64


# Sent, without reading the request, to a TCP client over the limits.
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
         b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s")
_ACCEPT_STARVED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_MAX_ACCEPT_PAUSE_S = 1.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Room for bursts (8 spawns at once from scripts): the default of 5
    # makes a unix-socket connect fail with EAGAIN.
    request_queue_size = 128
    router: Router
    authenticator: Authenticator
    limits: Limits = Limits()
    capped = True  # TCP: connections counted and capped; the unix socket is not

    def server_activate(self) -> None:
        super().server_activate()
        self._lock = threading.Lock()
        self._open: dict[socket.socket, str] = {}
        self._per_client: Counter[str] = Counter()
        self._accept_pause = 0.0
        self._stopping = threading.Event()

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept; out of descriptors (or memory), wait before trying again,
        longer each time, instead of spinning on a socket that stays readable."""
        try:
            conn, address = self.accept()
        except OSError as exc:
            if exc.errno in _ACCEPT_STARVED:
                self._accept_pause = min(max(0.01, 2 * self._accept_pause), _MAX_ACCEPT_PAUSE_S)
                log.warning("cannot accept API connections (%s); pausing %.2fs",
                            exc.strerror, self._accept_pause)
                self.pause_accepting(self._accept_pause)
            raise
        self._accept_pause = 0.0
        return conn, address

    def accept(self) -> tuple[socket.socket, Any]:
        return self.socket.accept()

    def pause_accepting(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if not self.capped:
            return True
        client = str(client_address[0])
        with self._lock:
            why = self._over_limits(client)
            if why is None:
                self._open[request] = client
                self._per_client[client] += 1
                return True
        log.info("refused an API connection from %s: %s", client, why)
        body = json.dumps(fault(503, "serviceUnavailable", f"too many connections: {why}; "
                                "try again later").body).encode()
        try:
            request.setblocking(False)
            request.send(_BUSY % (len(body), body))
        except OSError:
            pass
        return False

    def _over_limits(self, client: str) -> str | None:
        lim = self.limits
        if len(self._open) >= lim.max_connections:
            return f"{lim.max_connections} are open, the most allowed"
        if self._per_client[client] >= lim.max_connections_per_client:
            return (f"{lim.max_connections_per_client} are open from {client}, the most "
                    "allowed from one address")
        if free_descriptors() < lim.descriptor_reserve:
            return "the service is short of file descriptors"
        return None

    def shutdown_request(self, request: Any) -> None:
        if self.capped:
            with self._lock:
                client = self._open.pop(request, None)
                if client is not None:
                    self._per_client[client] -= 1
                    if not self._per_client[client]:
                        del self._per_client[client]
        super().shutdown_request(request)

    def shutdown(self) -> None:
        self._stopping.set()
        super().shutdown()


def free_descriptors() -> int:
    """How many more files this process may open."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    try:
        used = len(os.listdir("/proc/self/fd")) - 1  # less listdir's own
    except OSError as exc:
        return 0 if exc.errno in _ACCEPT_STARVED else 1 << 30
    return soft - used


class _UnixServer(_Server):
    address_family = socket.AF_UNIX
    capped = False

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "vmops", 0

    def accept(self) -> tuple[socket.socket, Any]:
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
          token: str = "", limits: Limits | None = None,
          authenticator: Authenticator | None = None) -> list[_Server]:
    """Start the servers in daemon threads; the caller keeps them to shut down.

    TCP clients must present ``token`` or, with an ``authenticator``, any
    token it knows; the unix socket's clients act as admin.
    """
    limits = limits or Limits()
    auth = authenticator or Authenticator(token)
    socket_path.unlink(missing_ok=True)
    old_umask = os.umask(0o077)  # the socket's permissions are the access control
    try:
        with socket_address(socket_path) as address:  # typeshed: (host, port) addresses only
            unix = _UnixServer(cast(Any, address), _Handler)
    finally:
        os.umask(old_umask)
    unix.router, unix.authenticator, unix.limits = router, auth, limits
    servers: list[_Server] = [unix]
    if listen:
        host, port = _host_port(listen)
        tcp = (_Server6 if ":" in host else _Server)((host, port), _Handler)
        tcp.router, tcp.authenticator, tcp.limits = router, auth, limits
        servers.append(tcp)
    for srv in servers:
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, name="api",
                         daemon=True).start()
    return servers


__all__ = ["ADMIN", "ANONYMOUS", "Authenticator", "Authorize", "Context", "FaultShape",
           "HTTPStatus", "Limits", "Request", "Response", "Router", "Upgraded", "fault",
           "serve"]
