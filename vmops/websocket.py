"""WebSocket (RFC 6455) framing and handshakes, both ends, for the serial
console: the API serves it (``api/serial_console_api.py``), the CLI and
tests are clients.

Only what a byte stream needs: binary (and text) messages, fragmentation,
ping/pong and the closing handshake; no extensions (a frame with a reserved
bit set is a protocol error). A server refuses unmasked frames, a client
masked ones (section 5.1). Messages are bounded (``MAX_MESSAGE_BYTES``).
I/O is the caller's: :class:`Connection` reads through a function and
writes through another, so it serves a blocking socket, a buffered reader
that already holds bytes, or a ``select`` loop alike.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
VERSION = "13"
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_CONTROL_BYTES = 125


class Opcode(IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    TOO_BIG = 1009
    TRY_AGAIN_LATER = 1013


class ProtocolError(Exception):
    """The peer broke RFC 6455; ``code`` is the close code to answer with."""

    def __init__(self, message: str, code: CloseCode = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def valid_key(key: str) -> bool:
    """A key is 16 bytes, base64-encoded (section 4.1)."""
    try:
        return len(base64.b64decode(key.encode(), validate=True)) == 16
    except (ValueError, UnicodeEncodeError):
        return False


def has_token(header: str | None, token: str) -> bool:
    """Whether a comma-separated header (``Connection``) names ``token``."""
    return token in {part.strip().lower() for part in (header or "").split(",")}


def encode_frame(opcode: Opcode, payload: bytes, mask: bool, fin: bool = True) -> bytes:
    """One frame; ``mask`` for frames a client sends."""
    length = len(payload)
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if mask else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + apply_mask(key, payload)


def apply_mask(key: bytes, data: bytes) -> bytes:
    """XOR with the repeated 4-byte key (its own inverse)."""
    if not data:
        return b""
    repeated = (key * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(data), "big")


def close_payload(code: CloseCode, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()[:MAX_CONTROL_BYTES - 2]


@dataclass(frozen=True)
class Message:
    """A whole message (data) or a control frame."""

    opcode: Opcode
    payload: bytes


class FrameReader:
    """Bytes in, messages out: frames parsed, unmasked and reassembled."""

    def __init__(self, expect_masked: bool, max_message: int = MAX_MESSAGE_BYTES) -> None:
        self.expect_masked = expect_masked
        self.max_message = max_message
        self._buffer = bytearray()
        self._fragments = bytearray()  # the message so far: its length costs nothing
        self._fragment_opcode: Opcode | None = None

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages: list[Message] = []
        while True:
            frame = self._next_frame()
            if frame is None:
                return messages
            message = self._assemble(*frame)
            if message is not None:
                messages.append(message)

    def _next_frame(self) -> tuple[bool, Opcode, bytes] | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        if first & 0x70:
            raise ProtocolError("reserved bits set: no extension was agreed")
        try:
            opcode = Opcode(first & 0x0F)
        except ValueError:
            raise ProtocolError(f"unknown opcode {first & 0x0F:#x}") from None
        fin, masked, length = bool(first & 0x80), bool(second & 0x80), second & 0x7F
        if masked != self.expect_masked:
            raise ProtocolError("a client must mask its frames and a server must not")
        offset = 2
        if length == 126:
            if len(buf) < 4:
                return None
            (length,) = struct.unpack_from("!H", buf, 2)
            offset = 4
        elif length == 127:
            if len(buf) < 10:
                return None
            (length,) = struct.unpack_from("!Q", buf, 2)
            offset = 10
        if opcode >= Opcode.CLOSE and (length > MAX_CONTROL_BYTES or not fin):
            raise ProtocolError("a control frame must be whole and at most 125 bytes")
        if length + len(self._fragments) > self.max_message:
            raise ProtocolError(f"a message over {self.max_message} bytes", CloseCode.TOO_BIG)
        key = b""
        if masked:
            key = bytes(buf[offset:offset + 4])
            offset += 4
        if len(buf) < offset + length:
            return None
        payload = bytes(buf[offset:offset + length])
        del buf[:offset + length]
        return fin, opcode, apply_mask(key, payload) if masked else payload

    def _assemble(self, fin: bool, opcode: Opcode, payload: bytes) -> Message | None:
        if opcode >= Opcode.CLOSE:
            return Message(opcode, payload)  # may come between fragments
        if opcode == Opcode.CONTINUATION:
            if self._fragment_opcode is None:
                raise ProtocolError("a continuation frame with no message to continue")
        elif self._fragment_opcode is not None:
            raise ProtocolError("a new message before the last one ended")
        else:
            self._fragment_opcode = opcode
        self._fragments += payload
        if not fin:
            return None
        message = Message(self._fragment_opcode, bytes(self._fragments))
        self._fragments, self._fragment_opcode = bytearray(), None
        return message


class Connection:
    """One end of an open WebSocket: data in and out, pings answered, the
    closing handshake kept. ``write`` may be called from several threads."""

    def __init__(self, read: Callable[[int], bytes], write: Callable[[bytes], object],
                 client: bool, initial: bytes = b"") -> None:
        self._read = read
        self._write = write
        self.client = client
        self.reader = FrameReader(expect_masked=not client)
        self._lock = threading.Lock()
        self._pending = initial
        self.close_sent = False
        self.close_received: tuple[int, str] | None = None

    def send(self, data: bytes, opcode: Opcode = Opcode.BINARY) -> None:
        with self._lock:
            if self.close_sent:
                return
            self._write(encode_frame(opcode, data, mask=self.client))
            if opcode == Opcode.CLOSE:
                self.close_sent = True

    def close(self, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        """Start (or answer) the closing handshake."""
        self.send(close_payload(code, reason), Opcode.CLOSE)

    def ping(self, data: bytes = b"") -> None:
        self.send(data, Opcode.PING)

    def receive(self, data: bytes) -> list[bytes]:
        """Feed bytes read from the peer; the data messages they completed.
        Pings are answered; a close frame is answered and recorded
        (``close_received``). A protocol error closes with its code and
        raises."""
        try:
            messages = self.reader.feed(data)
        except ProtocolError as exc:
            self.close(exc.code, str(exc))
            raise
        out: list[bytes] = []
        for message in messages:
            if message.opcode == Opcode.PING:
                self.send(message.payload, Opcode.PONG)
            elif message.opcode == Opcode.CLOSE:
                self.close_received = _parse_close(message.payload)
                # The answer is best effort: a peer may close its socket
                # right after its close frame, and the data messages that
                # came before that frame are still delivered.
                with contextlib.suppress(OSError):
                    self.close(CloseCode(self.close_received[0])
                               if self.close_received[0] in set(CloseCode) else CloseCode.NORMAL)
            elif message.opcode in (Opcode.BINARY, Opcode.TEXT):
                out.append(message.payload)
        return out

    def recv(self) -> list[bytes] | None:
        """Block until the peer sends something; its data messages (maybe
        none: a ping, a pong), or None once the connection has ended."""
        if self.close_received is not None:
            return None
        data, self._pending = (self._pending, b"") if self._pending else (self._read(65536), b"")
        if not data:
            return None
        messages = self.receive(data)
        if self.close_received is not None and not messages:
            return None
        return messages


def _parse_close(payload: bytes) -> tuple[int, str]:
    if len(payload) < 2:
        return CloseCode.NORMAL, ""
    (code,) = struct.unpack_from("!H", payload)
    return code, payload[2:].decode(errors="replace")


# -- the client's handshake -----------------------------------------------------------
def client_request(host: str, path: str, key: str, protocols: tuple[str, ...] = ()) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
             f"Sec-WebSocket-Version: {VERSION}"]
    if protocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class HandshakeRefused(Exception):
    """The server did not switch protocols: its status and body."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


def client_handshake(read: Callable[[int], bytes], write: Callable[[bytes], object],
                     host: str, path: str, max_header_bytes: int = 65536) -> Connection:
    """Open a WebSocket over a connected stream; raises HandshakeRefused
    with the server's answer if it does not switch protocols."""
    key = new_key()
    write(client_request(host, path, key))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = read(4096)
        if not chunk or len(data) > max_header_bytes:
            raise HandshakeRefused(0, data)
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status != 101:
        length = int(headers.get("content-length", "0") or 0)
        while len(rest) < length:
            chunk = read(length - len(rest))
            if not chunk:
                break
            rest += chunk
        raise HandshakeRefused(status, rest)
    if headers.get("sec-websocket-accept") != accept_key(key):
        raise HandshakeRefused(status, b"the server's Sec-WebSocket-Accept is wrong")
    return Connection(read, write, client=True, initial=rest)
