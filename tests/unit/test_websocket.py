"""RFC 6455 framing and handshakes (vmops/websocket.py): both ends against
each other, against the RFC's own examples, and against a plain client
library's frames (websocket-client)."""

from __future__ import annotations

import socket
import threading
import tracemalloc

import pytest
import websocket as wsclient

from vmops.websocket import (
    MAX_MESSAGE_BYTES,
    CloseCode,
    Connection,
    FrameReader,
    HandshakeRefused,
    Opcode,
    ProtocolError,
    accept_key,
    apply_mask,
    client_handshake,
    encode_frame,
    has_token,
    valid_key,
)


def test_the_rfcs_handshake_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert valid_key("dGhlIHNhbXBsZSBub25jZQ==") and not valid_key("c2hvcnQ=")
    assert not valid_key("not base64!")
    assert has_token("keep-alive, Upgrade", "upgrade") and not has_token(None, "upgrade")


def test_the_rfcs_frame_examples() -> None:
    # Section 5.7: "Hello", unmasked and masked (key 37 fa 21 3d).
    assert encode_frame(Opcode.TEXT, b"Hello", mask=False) == bytes.fromhex("810548656c6c6f")
    masked = bytes.fromhex("818537fa213d7f9f4d5158")
    (message,) = FrameReader(expect_masked=True).feed(masked)
    assert (message.opcode, message.payload) == (Opcode.TEXT, b"Hello")
    # A fragmented text message, with a ping between its fragments.
    reader = FrameReader(expect_masked=False)
    assert reader.feed(bytes.fromhex("010348656c")) == []
    (ping,) = reader.feed(encode_frame(Opcode.PING, b"x", mask=False))
    assert ping.opcode == Opcode.PING
    (whole,) = reader.feed(bytes.fromhex("80026c6f"))
    assert whole.payload == b"Hello"


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_every_length_encoding_round_trips_byte_by_byte(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = encode_frame(Opcode.BINARY, payload, mask=True)
    reader = FrameReader(expect_masked=True)
    got = []
    step = 1 if size < 200 else 4096  # split anywhere: a header across reads too
    for i in range(0, len(frame), step):
        got += reader.feed(frame[i:i + step])
    assert [(m.opcode, m.payload) for m in got] == [(Opcode.BINARY, payload)]


def test_masking_is_its_own_inverse() -> None:
    key = b"\x01\x02\x03\x04"
    assert apply_mask(key, apply_mask(key, b"console bytes")) == b"console bytes"


@pytest.mark.parametrize(("frame", "words"), [
    (bytes([0xC2, 0x80]) + b"\0" * 4, "reserved bits"),
    (bytes([0x83, 0x80]) + b"\0" * 4, "unknown opcode"),
    (bytes([0x82, 0x01, 0x41]), "must mask"),  # unmasked, to a server
    (bytes([0x09, 0x80]) + b"\0" * 4, "control frame"),  # a fragmented ping
    (bytes([0x89, 0xFE, 0x00, 0x7E]) + b"\0" * 4, "control frame"),  # a 126-byte ping
    (bytes([0x80, 0x80]) + b"\0" * 4, "continuation"),
])
def test_protocol_errors_are_refused(frame: bytes, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        FrameReader(expect_masked=True).feed(frame)


def test_a_message_over_the_bound_is_too_big() -> None:
    header = bytes([0x82, 0xFF]) + (MAX_MESSAGE_BYTES + 1).to_bytes(8, "big")
    with pytest.raises(ProtocolError) as refused:
        FrameReader(expect_masked=True).feed(header)
    assert refused.value.code == CloseCode.TOO_BIG


def test_a_message_of_many_tiny_fragments_costs_only_its_bytes() -> None:
    """A client may split a message into one-byte (or empty) frames: the
    reader keeps the bytes, not a growing list of them (which also cost a
    sum over the list per frame: quadratic time, a one-connection DoS)."""
    count = 10_000
    frames = (encode_frame(Opcode.BINARY, b"a", mask=True, fin=False)
              + encode_frame(Opcode.CONTINUATION, b"a", mask=True, fin=False) * count
              + encode_frame(Opcode.CONTINUATION, b"", mask=True, fin=False) * count
              + encode_frame(Opcode.CONTINUATION, b"", mask=True))
    chunks = [frames[i:i + 4096] for i in range(0, len(frames), 4096)]
    reader = FrameReader(expect_masked=True)
    messages = []
    tracemalloc.start()
    try:
        for chunk in chunks:
            messages += reader.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [m.payload for m in messages] == [b"a" * (count + 1)]
    assert peak < 10 * count  # a list of 10,000 bytes objects alone is over 300 KB


def test_connections_answer_pings_and_close_handshakes() -> None:
    client_sock, server_sock = socket.socketpair()
    server = Connection(server_sock.recv, server_sock.sendall, client=False)
    client = Connection(client_sock.recv, client_sock.sendall, client=True)
    client.send(b"typed")
    client.ping(b"p")
    assert server.recv() == [b"typed"]
    reply = client_sock.recv(100)  # the server's pong, unmasked
    assert reply == encode_frame(Opcode.PONG, b"p", mask=False)
    server.send(b"output")
    assert client.recv() == [b"output"]
    client.close(CloseCode.NORMAL, "bye")
    assert server.recv() is None and server.close_received == (1000, "bye")
    assert client.recv() is None and client.close_received == (1000, "")
    client_sock.close()
    server_sock.close()


def test_data_before_a_close_is_delivered_when_the_peer_is_already_gone() -> None:
    """A client that types, closes and shuts its socket at once: its last
    keys and its close frame arrive together, and the answer to the close
    cannot be sent; the keys are delivered all the same."""
    client_sock, server_sock = socket.socketpair()
    client = Connection(client_sock.recv, client_sock.sendall, client=True)
    client.send(b"root\x03\r")
    client.close()
    client_sock.close()
    server = Connection(server_sock.recv, server_sock.sendall, client=False)
    assert server.recv() == [b"root\x03\r"]
    assert server.close_received == (1000, "") and server.recv() is None
    server_sock.close()


def test_a_plain_client_library_talks_to_a_server_end() -> None:
    """websocket-client's frames (its own masking, its own handshake) read
    by our server end, and ours by it."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        key = next(line.split(b":", 1)[1].strip().decode() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key"))
        conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Accept: "
                      f"{accept_key(key)}\r\n\r\n").encode())
        end = Connection(conn.recv, conn.sendall, client=False)
        while (messages := end.recv()) is not None:
            got.extend(messages)
            for message in messages:
                end.send(message.upper())
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ws = wsclient.create_connection(f"ws://127.0.0.1:{port}/", timeout=10)
    ws.send_binary(b"a" * 70_000)
    assert ws.recv_data() == (wsclient.ABNF.OPCODE_BINARY, b"A" * 70_000)
    ws.close()
    thread.join(10)
    listener.close()
    assert got == [b"a" * 70_000]


def test_a_refused_handshake_reports_the_answer() -> None:
    ours, theirs = socket.socketpair()
    body = b'{"unauthorized": {"code": 401, "message": "no"}}'
    theirs.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n%s"
                   % (len(body), body))
    with pytest.raises(HandshakeRefused) as refused:
        client_handshake(ours.recv, ours.sendall, "vmops", "/serial-console?token=x")
    assert (refused.value.status, refused.value.body) == (401, body)
    ours.close()
    theirs.close()
