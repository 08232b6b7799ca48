"""The host side of the vmops network: the bridge, its address, the kernel
switches it needs, and the choice of a subnet that collides with nothing.

Everything goes through ``ip`` (iproute2) and ``/proc/sys``; each function
is idempotent, so the service calls them at every start.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

from vmops.errors import NetworkError
from vmops.network.model import NetworkPlan

IP_TIMEOUT_S = 10
# Candidates for the default subnet, tried in order: private space that
# home routers, Docker (172.17+) and libvirt's default (192.168.122) avoid.
DEFAULT_SUBNETS = tuple(f"10.{second}.{third}.0/24"
                        for second, third in ((213, 0), (213, 1), (214, 0), (215, 0), (97, 0)))

SYSCTL = Path("/proc/sys")


def run_tool(cmd: list[str], package: str, timeout: float, input: str | None = None,
             new_session: bool = False) -> subprocess.CompletedProcess[str]:
    """Run one of the network's tools; a missing tool or a hang is a
    :class:`NetworkError` naming the Debian package or the time."""
    try:
        return subprocess.run(cmd, input=input, capture_output=True, text=True,
                              timeout=timeout, start_new_session=new_session)
    except FileNotFoundError:
        raise NetworkError(reason=f"{cmd[0]} is not installed (Debian: {package})") from None
    except subprocess.TimeoutExpired:
        raise NetworkError(reason=f"{cmd[0]} did not finish in {timeout:g} s") from None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = run_tool(["ip", *args], "iproute2", IP_TIMEOUT_S)
    if check and done.returncode != 0:
        raise NetworkError(reason=f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def host_routes() -> list[tuple[str, ipaddress.IPv4Network]]:
    """(device, destination) of every IPv4 route of the host, all tables."""
    out = _ip("-j", "-4", "route", "show", "table", "all").stdout
    routes = []
    for entry in json.loads(out or "[]"):
        dst = entry.get("dst", "")
        if dst in ("default", "") or entry.get("type") in ("broadcast", "local"):
            continue
        try:
            routes.append((entry.get("dev", ""), ipaddress.IPv4Network(dst, strict=False)))
        except ValueError:
            continue
    return routes


def overlapping_route(cidr: ipaddress.IPv4Network, bridge: str) -> str | None:
    """A route of the host (not our bridge's own) that overlaps ``cidr``."""
    for dev, dst in host_routes():
        if dev != bridge and dst.overlaps(cidr):
            return f"{dst} via {dev or '?'}"
    return None


def choose_subnet(bridge: str) -> ipaddress.IPv4Network:
    """The first default candidate no host route overlaps."""
    for text in DEFAULT_SUBNETS:
        cidr = ipaddress.IPv4Network(text)
        if overlapping_route(cidr, bridge) is None:
            return cidr
    raise NetworkError(reason="every default subnet overlaps a host route; set network_subnet")


def bridge_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}/bridge").exists()


def ensure_bridge(net: NetworkPlan) -> None:
    """The bridge exists, is up and has the gateway address (and no other
    address of the subnet); running guests' taps on it are left alone."""
    if not bridge_exists(net.bridge):
        if Path(f"/sys/class/net/{net.bridge}").exists():
            raise NetworkError(reason=f"{net.bridge} exists and is not a bridge; "
                               "set network_bridge to another name")
        _ip("link", "add", net.bridge, "type", "bridge", "stp_state", "0")
    address = f"{net.gateway}/{net.prefix}"
    current = json.loads(_ip("-j", "-4", "addr", "show", "dev", net.bridge).stdout or "[]")
    have = {f"{a['local']}/{a['prefixlen']}" for entry in current
            for a in entry.get("addr_info", [])}
    if address not in have:
        _ip("addr", "add", address, "dev", net.bridge)
    _ip("link", "set", net.bridge, "up")
    # Guests on the bridge talk to the host's loopback-bound forwards only
    # after DNAT from 127.0.0.1, which the kernel drops unless told.
    write_sysctl(f"net/ipv4/conf/{net.bridge}/route_localnet", "1")


def delete_bridge(name: str) -> None:
    if bridge_exists(name):
        _ip("link", "del", name)


def enable_forwarding() -> None:
    """Route between the bridge and the uplinks, and pass bridged traffic
    through the inet hooks (where security groups are enforced)."""
    write_sysctl("net/ipv4/ip_forward", "1")
    if not (SYSCTL / "net/bridge/bridge-nf-call-iptables").exists():
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, timeout=IP_TIMEOUT_S)
    if not (SYSCTL / "net/bridge/bridge-nf-call-iptables").exists():
        raise NetworkError(reason="the kernel has no bridge netfilter (br_netfilter): "
                           "security groups between guests cannot be enforced")
    write_sysctl("net/bridge/bridge-nf-call-iptables", "1")


def read_sysctl(name: str) -> str | None:
    try:
        return (SYSCTL / name).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    if read_sysctl(name) == value:
        return
    try:
        (SYSCTL / name).write_text(value)
    except OSError as exc:
        raise NetworkError(reason=f"cannot set {name.replace('/', '.')}={value}: "
                           f"{exc.strerror}") from None
