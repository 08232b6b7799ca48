"""The interactive serial console: Nova's console URL calls and the
WebSocket that serves the URL (docs/console.md).

- ``POST /v2.1/servers/{id}/remote-consoles`` (from microversion 2.6):
  ``{"remote_console": {"protocol": "serial", "type": "serial"}}`` answers
  200 ``{"remote_console": {"protocol", "type", "url"}}``.
- The ``os-getSerialConsole`` server action (microversions 2.1 to 2.5, as
  Nova): ``{"os-getSerialConsole": {"type": "serial"}}`` answers 200
  ``{"console": {"type", "url"}}``.

Nova's schemas and errors: an unknown protocol or type, or a missing one,
is 400; a known protocol vmops has no console for (vnc, spice, rdp, mks)
is 400 "Unavailable console type"; serial with another type is 400
"Invalid console type"; a server that is not running is 409 (nothing is
issued). The URL is ``ws://<the host the client used>/serial-console?token=T``:
a WebSocket (RFC 6455; binary frames both ways, text frames taken as their
UTF-8 bytes) to the guest's first serial port, through the capture
process's socket. The token is single-use, names the server, and expires
(``console_token_ttl``); a used, unknown or expired one is 401, a server no
longer running 409. Tokens are bounded (console/tokens.py): a server's 33rd
drops its oldest; past the total, asking for a URL is 409. The connection
ends when the guest's QEMU does (a close frame, 1000), when the client
stops answering pings, or when it takes none of the guest's output for
``SEND_TIMEOUT`` seconds. A console that already has its most clients
closes at once with 1013 (try again later) and says so: the capture
process tells after the handshake, as Nova's proxy reports its errors.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from typing import Any

from vmops.api import scope, views
from vmops.api.server import Request, Response, Router, Upgraded
from vmops.compute import serial_console
from vmops.compute.manager import Compute
from vmops.console.fanout import FULL, REFUSED_FULL
from vmops.console.tokens import ConsoleTokens
from vmops.errors import Invalid, NotFound, Unauthorized
from vmops.websocket import (
    VERSION,
    CloseCode,
    Connection,
    ProtocolError,
    accept_key,
    has_token,
    valid_key,
)

P = views.API_PREFIX
WEBSOCKET_PATH = "/serial-console"
REMOTE_CONSOLES_MICROVERSION = "2.6"
# Nova's schemas: the protocols and types known at each microversion.
PROTOCOLS = ("vnc", "spice", "rdp", "serial")
TYPES = ("novnc", "xvpvnc", "rdp-html5", "spice-html5", "serial")
PROTOCOLS_2_8 = (*PROTOCOLS, "mks")
TYPES_2_8 = (*TYPES, "webmks")
# The subprotocol websockify (Nova's serial proxy) speaks, chosen if offered.
BINARY_SUBPROTOCOL = "binary"
PING_INTERVAL = 30.0
# A client heard from in none of this many seconds (pongs count) is dropped.
IDLE_LIMIT = 3 * PING_INTERVAL
# A client that takes none of the guest's output for this long is dropped
# (a send to it waits at most this; a client that never reads would
# otherwise hold its handler thread, and the pings, forever).
SEND_TIMEOUT = IDLE_LIMIT
CLOSE_WAIT = 5.0


class SerialConsoles:
    def __init__(self, compute: Compute, tokens: ConsoleTokens | None = None) -> None:
        self.compute = compute
        self.tokens = tokens or ConsoleTokens(compute.settings.console_token_ttl)

    def add_routes(self, r: Router) -> None:
        r.add("POST", f"{P}/servers/{{id}}/remote-consoles", self.create)
        r.add("GET", WEBSOCKET_PATH, self.connect, public=True)  # the token is the credential

    def action_handlers(self) -> dict[str, Any]:
        return {"os-getSerialConsole": self.get_serial_console}

    # -- the console URL ----------------------------------------------------------------
    def create(self, req: Request) -> Response:
        if not req.at_least(REMOTE_CONSOLES_MICROVERSION):
            raise NotFound(what=f"no resource at {req.path} (remote consoles need "
                           f"microversion {REMOTE_CONSOLES_MICROVERSION} or later)")
        protocol, kind = _remote_console(req.json(), req.at_least("2.8"))
        inst = scope.instance(self.compute.store, req)
        if protocol != "serial":
            raise Invalid(reason=f"Unavailable console type {kind}.")
        if kind != "serial":
            raise Invalid(reason=f"Invalid console type {kind}")
        url = self._url(req, inst.id)
        return Response(200, {"remote_console": {"protocol": protocol, "type": kind,
                                                 "url": url}})

    def get_serial_console(self, ref: str, arg: Any, req: Request) -> Response:
        if req.at_least(REMOTE_CONSOLES_MICROVERSION):
            raise NotFound(what="the action os-getSerialConsole from microversion "
                           f"{REMOTE_CONSOLES_MICROVERSION} on: use POST "
                           "/servers/{id}/remote-consoles")
        if not isinstance(arg, dict) or set(arg) != {"type"}:
            raise Invalid(reason='os-getSerialConsole takes {"type": "serial"}')
        if arg["type"] != "serial":
            raise Invalid(reason=f"invalid console type {arg['type']!r}: the one type is "
                          "'serial'")
        return Response(200, {"console": {"type": "serial", "url": self._url(req, ref)}})

    def _url(self, req: Request, ref: str) -> str:
        inst = serial_console.check(self.compute, ref)  # 409 before any token exists
        token = self.tokens.issue(inst.id)
        return f"ws{req.base_url.removeprefix('http')}{WEBSOCKET_PATH}?token={token}"

    # -- the WebSocket ------------------------------------------------------------------
    def connect(self, req: Request) -> Response:
        refusal = _handshake_refusal(req)
        if refusal is not None:
            return refusal
        instance_id = self.tokens.redeem(req.arg("token") or "")
        if instance_id is None:
            raise Unauthorized(reason="The console token is unknown, used or expired: ask "
                               "for a new console URL.")
        inst = serial_console.check(self.compute, instance_id)
        guest = serial_console.open_console(self.compute, inst)
        headers = {"Upgrade": "websocket", "Connection": "Upgrade",
                   "Sec-WebSocket-Accept": accept_key(req.headers["sec-websocket-key"])}
        offered = req.headers.get("sec-websocket-protocol")
        if has_token(offered, BINARY_SUBPROTOCOL):
            headers["Sec-WebSocket-Protocol"] = BINARY_SUBPROTOCOL
        return Response(101, headers=headers, upgrade=lambda up: proxy(up, guest))


def _remote_console(body: Any, mks: bool) -> tuple[str, str]:
    """Nova's create schema: {"remote_console": {"protocol", "type"}}, both
    required, each one of the known names, nothing else."""
    if not isinstance(body, dict) or set(body) != {"remote_console"} or \
            not isinstance(body["remote_console"], dict):
        raise Invalid(reason='the body is {"remote_console": {"protocol": ..., "type": ...}}')
    console = body["remote_console"]
    protocols, types = (PROTOCOLS_2_8, TYPES_2_8) if mks else (PROTOCOLS, TYPES)
    for name, known in (("protocol", protocols), ("type", types)):
        if name not in console:
            raise Invalid(reason=f"'{name}' is a required property")
        if console[name] not in known:
            raise Invalid(reason=f"{name} {console[name]!r} is not one of "
                          f"{', '.join(known)}")
    extra = sorted(set(console) - {"protocol", "type"})
    if extra:
        raise Invalid(reason=f"unknown field(s) in remote_console: {', '.join(extra)}")
    return console["protocol"], console["type"]


def _handshake_refusal(req: Request) -> Response | None:
    """The answer to a request that is not an RFC 6455 opening handshake."""
    h = req.headers
    if not has_token(h.get("upgrade"), "websocket") or not has_token(h.get("connection"),
                                                                      "upgrade"):
        return _bad("this is a WebSocket: send Upgrade: websocket and Connection: Upgrade")
    if h.get("sec-websocket-version") != VERSION:
        resp = _bad(f"WebSocket version {VERSION} only", status=426)
        resp.headers["Sec-WebSocket-Version"] = VERSION
        return resp
    if not valid_key(h.get("sec-websocket-key", "")):
        return _bad("Sec-WebSocket-Key must be 16 bytes in base64")
    return None


def _bad(message: str, status: int = 400) -> Response:
    name = "badRequest" if status == 400 else "upgradeRequired"
    return Response(status, {name: {"code": status, "message": message}})


def proxy(up: Upgraded, guest: socket.socket) -> None:
    """Bytes between the WebSocket client and the guest's console until
    either ends: the guest's output in binary frames (another thread), the
    client's messages to the guest (this one)."""
    seconds = int(SEND_TIMEOUT)
    up.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack(
        "ll", seconds, int((SEND_TIMEOUT - seconds) * 1_000_000)))  # sends only
    ws = Connection(up.read, up.sock.sendall, client=False)
    heard = [time.monotonic()]
    client_done = threading.Event()
    pump = threading.Thread(target=_guest_to_client, args=(guest, ws, up.sock, heard,
                                                           client_done),
                            name="serial-console", daemon=True)
    pump.start()
    guest_gone = False
    try:
        while True:
            try:
                messages = ws.recv()
            except (ProtocolError, OSError):
                break
            if messages is None:
                break
            heard[0] = time.monotonic()
            try:
                for message in [] if guest_gone else messages:
                    guest.sendall(message)
            except OSError:
                # The console went away, or refused this client: the other
                # thread closes the WebSocket saying which; read on (what
                # the client types now goes nowhere) until the client answers.
                guest_gone = True
    finally:
        client_done.set()
        with contextlib.suppress(OSError):
            ws.close()
        with contextlib.suppress(OSError):
            guest.shutdown(socket.SHUT_RDWR)  # ends the other thread's read
        pump.join(CLOSE_WAIT)
        guest.close()


def _guest_to_client(guest: socket.socket, ws: Connection, client: socket.socket,
                     heard: list[float], client_done: threading.Event) -> None:
    guest.settimeout(PING_INTERVAL)
    reason = (CloseCode.NORMAL, "the guest's serial console closed")
    first = True
    try:
        while True:
            try:
                data = guest.recv(65536)
            except TimeoutError:
                if time.monotonic() - heard[0] > IDLE_LIMIT:
                    reason = (CloseCode.GOING_AWAY, "no answer to pings")
                    break
                ws.ping()
                continue
            except OSError:
                data = b""
            if first and data == REFUSED_FULL:
                rest = _after_refusal(guest)
                if rest == b"":
                    reason = (CloseCode.TRY_AGAIN_LATER, f"{FULL}: try again later")
                    break
                data += rest or b""  # the guest itself wrote that line
            first = False
            if not data:
                break
            ws.send(data)
        ws.close(*reason)
    except OSError:
        # The client is gone, or took nothing for SEND_TIMEOUT: cut it so
        # the other thread's read ends too.
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)
        return
    # Give the client time to answer the close, then cut the connection so
    # the other thread's read ends.
    if not client_done.wait(CLOSE_WAIT):
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)


def _after_refusal(guest: socket.socket) -> bytes | None:
    """What follows the capture process's refusal line: b"" if the
    connection ends there (a refusal), more output if the guest wrote that
    line itself, None if nothing came within the poll interval (the guest)."""
    try:
        return guest.recv(65536)
    except TimeoutError:
        return None
    except OSError:
        return b""
