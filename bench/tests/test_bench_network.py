"""The network scenarios' logic, without VMs or timing: the ICMP packets,
the subnet choice, the guest's sender script and the rate summary."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from pathlib import Path

from bench import report
from bench.bridged import free_subnet, gateway_of
from bench.common import make_row
from bench.net_throughput import rate_summary, sender_script
from bench.netprobe import (
    Transfer,
    echo_reply_seq,
    echo_request,
    icmp_checksum,
    mib_per_s,
    receive_one,
)
from bench.runner import normalize, parse_args


def test_checksum_of_a_packet_with_its_checksum_is_zero() -> None:
    packet = echo_request(0x1234, 7, b"odd")
    assert icmp_checksum(packet) == 0
    assert packet[:2] == b"\x08\x00" and struct.unpack("!HH", packet[4:8]) == (0x1234, 7)
    # RFC 1071's example: 0001 f203 f4f5 f6f7 sums to 0xddf2, complemented.
    assert icmp_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def ip_packet(icmp: bytes, ihl: int = 5) -> bytes:
    header = bytes([0x40 | ihl]) + bytes(ihl * 4 - 1)
    return header + icmp


def test_echo_reply_seq_reads_replies_to_us_only() -> None:
    reply = b"\x00" + echo_request(0x1234, 9)[1:]
    assert echo_reply_seq(ip_packet(reply), 0x1234) == 9
    assert echo_reply_seq(ip_packet(reply, ihl=6), 0x1234) == 9  # IP options
    assert echo_reply_seq(ip_packet(reply), 0x4321) is None  # someone else's
    assert echo_reply_seq(ip_packet(echo_request(0x1234, 9)), 0x1234) is None  # a request
    assert echo_reply_seq(ip_packet(reply[:5]), 0x1234) is None
    assert echo_reply_seq(b"\x60" + bytes(40), 0x1234) is None  # not IPv4


def test_free_subnet_avoids_every_route() -> None:
    routes = ["default", "192.0.2.0/24", "10.253.0.0/17", "10.253.200.7", "junk"]
    first = free_subnet(routes, pick=lambda a, b: a)
    last = free_subnet(routes, pick=lambda a, b: b)
    assert first == "10.253.128.0/24" and last == "10.253.255.0/24"
    taken = [ipaddress.IPv4Network(r, strict=False) for r in routes[1:4]]
    for _ in range(50):
        net = ipaddress.IPv4Network(free_subnet(routes))
        assert not any(net.overlaps(t) for t in taken)
    assert gateway_of("10.253.9.0/24") == "10.253.9.1"


def test_sender_script() -> None:
    script = sender_script("10.0.2.2", 4321, 16)
    assert script.startswith("#!/bin/sh\n")
    assert "dd if=/dev/zero bs=65536 count=16 2>/dev/null | nc 10.0.2.2 4321" in script
    assert "1048576 bytes" in script and "while :; do" in script


def test_rates_and_their_ratio() -> None:
    mib = 1024 * 1024
    assert mib_per_s(4 * mib, 2.0) == 2.0 and mib_per_s(mib, 0.0) == 0.0
    bridge = [Transfer(4 * mib, s) for s in (1.0, 2.0, 4.0)]  # 4, 2, 1 MiB/s
    user = [Transfer(4 * mib, 4.0)]
    assert rate_summary(bridge, user) == {"bridge_mib_per_s": 2.0, "user_mib_per_s": 1.0,
                                          "rate_ratio": 2.0}
    assert rate_summary([], user)["rate_ratio"] is None


def test_receive_one_counts_one_connection() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    got: list[Transfer] = []
    sink = threading.Thread(target=lambda: got.append(
        receive_one("127.0.0.1", port, 300_000, timeout=20)))
    sink.start()
    for _ in range(200):
        try:
            client = socket.create_connection(("127.0.0.1", port), timeout=20)
            break
        except ConnectionRefusedError:
            threading.Event().wait(0.02)
    with client:
        client.sendall(bytes(300_000))
    sink.join(timeout=20)
    assert got and got[0].nbytes == 300_000


def test_report_notes_the_rates(tmp_path: Path) -> None:
    row = normalize(make_row("guest_to_host_4MiB_bridge_vs_user", [2000.0], [4000.0], None,
                             transfer_bytes=4 << 20, bridge_mib_per_s=2.0,
                             user_mib_per_s=1.0, rate_ratio=2.0), "net_throughput")
    results = {"machine": report.machine_info(), "quick": True, "scenarios": [],
               "duration_s": 1.0, "rows": [row]}
    report.write(tmp_path, results)
    md = (tmp_path / "report.md").read_text()
    assert "| guest_to_host_4MiB_bridge_vs_user | 2000.0 | 4000.0 | 0.50 |" in md
    assert "bridge 2.0 MiB/s, over user-mode 1.0 MiB/s: bridge / user 2.00" in md


def test_the_network_scenarios_can_be_chosen() -> None:
    args = parse_args(["--quick", "--only", "spawn_address,net_throughput"])
    assert args.names == ["spawn_address", "net_throughput"]
