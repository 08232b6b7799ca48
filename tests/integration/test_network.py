"""The vmops network on the real kernel, with network namespaces as guests.

Each "pseudo-guest" is a namespace whose eth0 is one end of a veth pair;
the other end carries the tap name vmops recorded for the port and sits on
the bridge, exactly where libvirt would put a guest's tap. The guests ask
for their address with busybox udhcpc and serve with busybox nc. An
"outside" namespace stands for the world beyond the host (198.51.100.0/24).
Root only; seconds, no VMs. Traffic stays in namespaces made here.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import records
from vmops.network import nftables
from vmops.network.manager import Network
from vmops.network.model import NicMode
from vmops.store import Port, Store

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("dnsmasq") or not shutil.which("nft"),
    reason="needs root, dnsmasq and nft")

OUTSIDE_HOST = "198.51.100.1"
OUTSIDE_PEER = "198.51.100.2"


def sh(*cmd: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)


def in_ns(ns: str, *cmd: str, check: bool = True,
          timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout)


@dataclass
class Guest:
    name: str
    ns: str
    port: Port


class Lab:
    """A bridge of its own, a store of its own, and namespaces to clean up."""

    def __init__(self, tmp: Path) -> None:
        tag = secrets.token_hex(3)
        self.tag = tag
        self.bridge = f"vmi{tag}"
        self.store = Store(tmp / "vmops.db")
        self.network = Network(self.store, tmp, self.bridge, "10.251.77.0/24",
                               host_access=True, enabled=True)
        self.namespaces: list[str] = []
        self.links: list[str] = []
        self.servers: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, groups: tuple[str, ...] = ("default",)) -> Guest:
        """Record an instance with one bridge port, as a spawn does."""
        inst_id = str(uuid.uuid4())
        mac = "52:54:00:" + ":".join(secrets.token_hex(1) for _ in range(3))
        ports = self.network.new_ports(inst_id, NicMode.BRIDGE, [mac])
        self.store.add_instance(
            records.instance(name, id=inst_id, vm_state="active", power_state="running",
                             macs=(mac,)),
            ports=ports, group_ids=[self.store.security_group(g).id for g in groups],
            choose_ip=self.network.choose_ip)
        self.network.apply()
        (port,) = self.store.ports(inst_id)
        return Guest(name, self.plug(port), port)

    def plug(self, port: Port) -> str:
        """A namespace whose eth0 (with the port's MAC) is on the bridge as the tap."""
        ns = f"vmi-{self.tag}-{port.position}-{port.id[:6]}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        assert port.tap is not None
        sh("ip", "link", "add", port.tap, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", port.tap, "master", self.bridge, "up")
        in_ns(ns, "ip", "link", "set", "eth0", "address", port.mac)
        in_ns(ns, "ip", "link", "set", "eth0", "up")
        in_ns(ns, "ip", "link", "set", "lo", "up")
        return ns

    def dhcp(self, guest: Guest) -> str:
        """Ask for an address like the test image does; the address bound."""
        script = Path(f"/tmp/vmi-udhcpc-{self.tag}.sh")
        script.write_text("#!/bin/sh\n"
                          'case "$1" in bound|renew)\n'
                          '  ip addr add "$ip/${mask:-24}" dev "$interface"\n'
                          '  ip route replace default via "${router%% *}"\n'
                          '  echo "BOUND $ip" ;;\n'
                          "esac\n")
        script.chmod(0o755)
        try:
            out = in_ns(guest.ns, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "5",
                        "-T", "1", "-s", str(script), check=False, timeout=30).stdout
        finally:
            script.unlink(missing_ok=True)
        bound = [line.split()[1] for line in out.splitlines() if line.startswith("BOUND ")]
        return bound[0] if bound else ""

    def serve(self, ns: str, port: int, reply: str) -> None:
        """A TCP server in ``ns`` answering ``reply`` to every connection."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "busybox", "nc", "-ll", "-p",
                                 str(port), "-e", "echo", reply],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.servers.append(proc)
        time.sleep(0.3)

    def serve_peer_address(self, ns: str, port: int) -> None:
        """A TCP server in ``ns`` answering each client with the client's address."""
        code = ("import socket\n"
                "s = socket.socket()\n"
                "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                f"s.bind(('0.0.0.0', {port}))\n"
                "s.listen()\n"
                "while True:\n"
                "    c, peer = s.accept()\n"
                "    c.sendall(peer[0].encode() + b'\\n')\n"
                "    c.close()\n")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.servers.append(proc)
        time.sleep(0.5)

    def outside(self) -> str:
        """The world beyond the host: a namespace routed through the host."""
        ns = f"vmi-{self.tag}-out"
        host_end = f"vmo{self.tag}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.links.append(host_end)
        sh("ip", "addr", "add", f"{OUTSIDE_HOST}/24", "dev", host_end)
        sh("ip", "link", "set", host_end, "up")
        in_ns(ns, "ip", "addr", "add", f"{OUTSIDE_PEER}/24", "dev", "eth0")
        in_ns(ns, "ip", "link", "set", "eth0", "up")
        in_ns(ns, "ip", "link", "set", "lo", "up")
        in_ns(ns, "ip", "route", "add", "default", "via", OUTSIDE_HOST)
        return ns

    def close(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        self.network.teardown()
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        for link in self.links:
            sh("ip", "link", "del", link, check=False)
        self.store.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    lab.network.setup()
    try:
        yield lab
    finally:
        lab.close()


def connect(ns: str | None, address: str, port: int) -> str:
    """What a TCP connection from ``ns`` (None: the host) to address:port
    reads, or "" when it is refused, dropped or times out."""
    cmd = ["busybox", "nc", "-w", "2", address, str(port)]
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    try:
        done = subprocess.run(cmd, input="", capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout.strip()


def test_dhcp_gives_each_guest_its_reserved_address(lab: Lab) -> None:
    a = lab.spawn("pga")
    b = lab.spawn("pgb")
    assert a.port.ip != b.port.ip
    assert lab.dhcp(a) == a.port.ip
    assert lab.dhcp(b) == b.port.ip
    # dnsmasq's files (its log and leases with MACs and names) are private.
    root = lab.network.root
    modes = {p.name: p.stat().st_mode & 0o777 for p in root.iterdir()}
    assert set(modes.values()) == {0o600}, modes
    assert root.stat().st_mode & 0o077 == 0


def test_a_mac_with_no_reservation_gets_no_address(lab: Lab) -> None:
    a = lab.spawn("pga")
    in_ns(a.ns, "ip", "link", "set", "eth0", "address", "52:54:00:aa:bb:cc")
    # The anti-spoofing rules drop it at the bridge; dnsmasq would not answer either.
    assert lab.dhcp(a) == ""


def test_security_group_matrix(lab: Lab) -> None:
    a = lab.spawn("pga")
    b = lab.spawn("pgb")
    lab.network.create_group("lonely")
    c = lab.spawn("pgc", groups=("lonely",))
    for guest in (a, b, c):
        assert lab.dhcp(guest) == guest.port.ip
        lab.serve(guest.ns, 7000, f"hello-from-{guest.name}")
    assert a.port.ip and b.port.ip and c.port.ip

    # Members of default reach each other; a non-member reaches no one and
    # is reached by no one (its group allows no ingress); replies pass.
    assert connect(a.ns, b.port.ip, 7000) == "hello-from-pgb"
    assert connect(b.ns, a.port.ip, 7000) == "hello-from-pga"
    assert connect(c.ns, a.port.ip, 7000) == ""
    assert connect(a.ns, c.port.ip, 7000) == ""
    # The host reaches everyone (network_host_access)...
    assert connect(None, c.port.ip, 7000) == "hello-from-pgc"
    # ...until that is turned off: then the host is refused like a stranger.
    lab.network.host_access = False
    lab.network.apply()
    assert connect(None, a.port.ip, 7000) == ""

    # A live rule change takes effect at once, running guests untouched.
    rule = lab.network.add_rule("lonely", "ingress", "tcp", 7000, 7000,
                                remote_cidr=f"{a.port.ip}/32")
    assert connect(a.ns, c.port.ip, 7000) == "hello-from-pgc"
    assert connect(b.ns, c.port.ip, 7000) == ""
    lab.network.delete_rule(rule.id)
    assert connect(a.ns, c.port.ip, 7000) == ""

    # Joining a group is a live change too.
    lab.network.set_membership(lab.store.instance("pgc"), "default", True)
    assert connect(a.ns, c.port.ip, 7000) == "hello-from-pgc"


def test_a_spoofed_source_address_is_dropped(lab: Lab) -> None:
    a = lab.spawn("pga")
    b = lab.spawn("pgb")
    assert lab.dhcp(a) and lab.dhcp(b)
    lab.serve(b.ns, 7000, "hello-from-pgb")
    assert b.port.ip and a.port.ip
    assert connect(a.ns, b.port.ip, 7000) == "hello-from-pgb"
    # a takes another address of the subnet and uses it as its source.
    in_ns(a.ns, "ip", "addr", "flush", "dev", "eth0")
    spoofed = a.port.ip.rsplit(".", 1)[0] + ".200"
    in_ns(a.ns, "ip", "addr", "add", f"{spoofed}/24", "dev", "eth0")
    assert connect(a.ns, b.port.ip, 7000) == ""
    counters = sh("nft", "list", "chain", "bridge", nftables.table_name(lab.bridge),
                  f"port_{a.port.tap}").stdout
    assert "drop" in counters


def test_masquerade_and_port_forward_from_outside(lab: Lab) -> None:
    outside = lab.outside()
    a = lab.spawn("pga")
    assert lab.dhcp(a) == a.port.ip
    assert a.port.ip

    # Outbound: the outside sees the host's address, not the guest's.
    lab.serve_peer_address(outside, 7100)
    assert connect(a.ns, OUTSIDE_PEER, 7100) == OUTSIDE_HOST

    # A forward from the host's outside address to the guest: the guest's
    # groups decide (default: members only), so it is closed...
    lab.serve(a.ns, 80, "web-of-pga")
    inst = lab.store.instance("pga")
    fwd = lab.network.add_forward(inst, "tcp", 18080, 80)
    assert connect(outside, OUTSIDE_HOST, 18080) == ""
    # ...until a rule allows the outside's network in.
    lab.network.add_rule("default", "ingress", "tcp", 80, 80, remote_cidr="198.51.100.0/24")
    assert connect(outside, OUTSIDE_HOST, 18080) == "web-of-pga"
    # The host itself reaches the forward too (hairpin through loopback).
    assert connect(None, "127.0.0.1", 18080) == "web-of-pga"

    # Removing the forward closes it.
    lab.network.remove_forward(fwd.id)
    assert connect(outside, OUTSIDE_HOST, 18080) == ""


def test_a_forwarded_or_listened_port_is_refused(lab: Lab) -> None:
    from vmops.errors import PortTaken

    a = lab.spawn("pga")
    inst = lab.store.instance("pga")
    lab.network.add_forward(inst, "tcp", 18081, 80)
    with pytest.raises(PortTaken, match="already"):
        lab.network.add_forward(inst, "tcp", 18081, 81)
    import socket

    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        with pytest.raises(PortTaken, match="in use on the host"):
            lab.network.add_forward(inst, "tcp", taken, 80)
    assert len(lab.store.port_forwards(a.port.instance_id)) == 1


def test_what_goes_missing_is_put_back(lab: Lab) -> None:
    a = lab.spawn("pga")
    assert lab.dhcp(a) == a.port.ip
    pid = lab.network.dhcp.pid()
    assert pid
    os.kill(pid, 9)
    sh("nft", "delete", "table", "inet", nftables.table_name(lab.bridge))
    deadline = time.monotonic() + 5
    while lab.network.dhcp.pid() == pid \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    repaired = lab.network.check()
    assert "dnsmasq" in repaired and "nftables table" in repaired
    assert nftables.table_present(lab.bridge)
    # The guest keeps its address: a renewal gets the same one.
    in_ns(a.ns, "ip", "addr", "flush", "dev", "eth0")
    assert lab.dhcp(a) == a.port.ip


def test_release_leaves_no_rule_or_reservation(lab: Lab) -> None:
    a = lab.spawn("pga")
    inst = lab.store.instance("pga")
    lab.network.add_forward(inst, "tcp", 18082, 80)
    assert a.port.tap
    ruleset = sh("nft", "list", "ruleset").stdout
    assert a.port.tap in ruleset and "18082" in ruleset
    lab.network.release(inst)
    ruleset = sh("nft", "list", "ruleset").stdout
    assert a.port.tap not in ruleset and "18082" not in ruleset
    assert a.port.mac not in lab.network.dhcp.files.dhcp_hosts.read_text()
    assert lab.store.ports(inst.id) == [] and lab.store.port_forwards(inst.id) == []


def test_a_second_state_directory_cannot_take_the_same_bridge(lab: Lab,
                                                              tmp_path: Path) -> None:
    from vmops.errors import NetworkError

    other_dir = tmp_path / "other"
    other_dir.mkdir()
    store = Store(other_dir / "vmops.db")
    other = Network(store, other_dir, lab.bridge, "10.251.78.0/24", host_access=True,
                    enabled=True)
    try:
        with pytest.raises(NetworkError, match="served by another vmops state directory"):
            other.setup()
        # Nothing of the first one was touched.
        assert nftables.table_present(lab.bridge)
        assert lab.network.dhcp.running()
    finally:
        store.close()


def test_an_address_released_by_destroy_is_leased_again_at_once(lab: Lab) -> None:
    a = lab.spawn("pga")
    assert lab.dhcp(a) == a.port.ip
    lab.network.release(lab.store.instance("pga"))
    # The lowest free address again, for another MAC: dnsmasq must not hold
    # it for the old lease (an hour) but hand it out now.
    b = lab.spawn("pgb")
    assert b.port.ip == a.port.ip and b.port.mac != a.port.mac
    assert lab.dhcp(b) == b.port.ip


UDP_ECHO = ("import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('0.0.0.0', {port}))\n"
            "while True:\n"
            "    data, peer = s.recvfrom(512)\n"
            "    s.sendto(b'echo:' + data, peer)\n")
UDP_ASK = ("import socket, sys\n"
           "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
           "s.settimeout(2)\n"
           "for _ in range(3):\n"
           "    s.sendto(b'ping', ('{host}', {port}))\n"
           "    try:\n"
           "        print(s.recvfrom(512)[0].decode())\n"
           "        break\n"
           "    except OSError:\n"
           "        pass\n")


def test_a_udp_forward_from_outside(lab: Lab) -> None:
    outside = lab.outside()
    a = lab.spawn("pga")
    assert lab.dhcp(a) == a.port.ip
    echo = subprocess.Popen(["ip", "netns", "exec", a.ns, sys.executable, "-c",
                             UDP_ECHO.format(port=5300)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.servers.append(echo)
    time.sleep(0.5)
    lab.network.add_rule("default", "ingress", "udp", 5300, 5300,
                         remote_cidr="198.51.100.0/24")
    lab.network.add_forward(lab.store.instance("pga"), "udp", 15300, 5300)
    ask = ["ip", "netns", "exec", outside, sys.executable, "-c",
           UDP_ASK.format(host=OUTSIDE_HOST, port=15300)]
    assert subprocess.run(ask, capture_output=True, text=True,
                          timeout=30).stdout.strip() == "echo:ping"
    # Only the forwarded port reaches the guest.
    ask_other = ["ip", "netns", "exec", outside, sys.executable, "-c",
                 UDP_ASK.format(host=OUTSIDE_HOST, port=15301)]
    assert subprocess.run(ask_other, capture_output=True, text=True,
                          timeout=30).stdout.strip() == ""
