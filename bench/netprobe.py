"""The host's end of the network scenarios: ICMP echo (is the guest's
address answering yet?) and a TCP sink (how fast does a guest send?).

No ``ping`` binary is needed: echo requests go out of a raw socket (root)
every few milliseconds, so "answering" is seen within that interval, not
within ``ping -W1``'s second.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

from bench.common import now

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
MIB = 1024 * 1024


def icmp_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = b"vmops-bench") -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    checksum = icmp_checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, checksum, ident, seq) + payload


def echo_reply_seq(packet: bytes, ident: int) -> int | None:
    """The sequence number of an echo reply to ``ident`` in an IPv4 packet
    as a raw ICMP socket receives it (IP header first), else None."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    icmp = packet[(packet[0] & 0x0F) * 4:]
    if len(icmp) < 8:
        return None
    kind, _code, _sum, got_ident, seq = struct.unpack("!BBHHH", icmp[:8])
    if kind != ICMP_ECHO_REPLY or got_ident != ident:
        return None
    return int(seq)


class Pinger:
    """Echo requests to one address until one is answered."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.ident = (os.getpid() ^ id(self)) & 0xFFFF
        self.seq = 0

    def wait_answer(self, timeout: float, interval: float = 0.005) -> float:
        """Send every ``interval`` s; the ``now()`` of the first reply."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.seq = (self.seq + 1) & 0xFFFF
            # EHOSTUNREACH while the guest does not answer ARP yet: try again.
            with contextlib.suppress(OSError):
                self.sock.sendto(echo_request(self.ident, self.seq), (self.address, 0))
            until = now() + interval
            while (left := until - now()) > 0:
                ready, _, _ = select.select([self.sock], [], [], left)
                if not ready:
                    break
                packet, (source, _) = self.sock.recvfrom(2048)
                if source == self.address and echo_reply_seq(packet, self.ident) is not None:
                    return now()
        raise TimeoutError(f"{self.address} did not answer an echo request in {timeout:g}s")

    def close(self) -> None:
        self.sock.close()


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass(frozen=True)
class Transfer:
    """One connection's data as the sink saw it."""

    nbytes: int
    seconds: float  # from the connection's accept to its last byte

    @property
    def mib_per_s(self) -> float:
        return mib_per_s(self.nbytes, self.seconds)


def mib_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / MIB / seconds if seconds > 0 else 0.0


def receive_one(address: str, port: int, expected: int, timeout: float) -> Transfer:
    """Listen on ``address:port`` only until one client has sent ``expected``
    bytes (or closed); the listener is closed again after, so a sender that
    retries its connection meets a refusal until the next call."""
    buf = bytearray(1 << 20)
    with socket.create_server((address, port)) as srv:
        srv.settimeout(timeout)
        conn, _peer = srv.accept()
    with conn:
        conn.settimeout(timeout)
        started = now()
        got = 0
        last = started
        while got < expected:
            n = conn.recv_into(buf)
            if n == 0:
                break
            got += n
            last = now()
    if got < expected:
        raise RuntimeError(f"the sink on {address}:{port} got {got} of {expected} bytes")
    return Transfer(got, last - started)
