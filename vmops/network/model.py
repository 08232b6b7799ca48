"""What the vmops network is made of, as plain values.

These are the inputs of the renderers (``nftables.py``, ``dnsmasq.py``):
the renderers are pure functions of them, so a ruleset or a hosts file is
a golden file in the unit tests. The records they come from live in
``vmops.store``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum


class NicMode(StrEnum):
    BRIDGE = "bridge"  # a tap on the vmops bridge: DHCP, NAT, security groups
    USER = "user"  # QEMU user-mode networking: no root, nothing reaches the guest


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    ANY = "any"


class Direction(StrEnum):
    INGRESS = "ingress"
    EGRESS = "egress"


@dataclass(frozen=True)
class NetworkPlan:
    """The one vmops network: a bridge, its IPv4 subnet, the host's address on it."""

    name: str
    bridge: str
    cidr: ipaddress.IPv4Network
    domain: str = "vmops"

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The host's address on the bridge: the guests' router and DNS server."""
        return self.cidr.network_address + 1

    @property
    def prefix(self) -> int:
        return self.cidr.prefixlen


@dataclass(frozen=True)
class PortPlan:
    """One guest NIC on the bridge."""

    id: str
    instance_id: str
    hostname: str
    mac: str
    ip: ipaddress.IPv4Address
    tap: str
    groups: tuple[str, ...] = ()  # security group ids


@dataclass(frozen=True)
class RulePlan:
    id: str
    direction: Direction
    protocol: Protocol = Protocol.ANY
    port_min: int | None = None
    port_max: int | None = None
    remote_cidr: ipaddress.IPv4Network | None = None
    remote_group: str | None = None  # a security group id


@dataclass(frozen=True)
class GroupPlan:
    id: str
    name: str
    rules: tuple[RulePlan, ...] = ()


@dataclass(frozen=True)
class ForwardPlan:
    """host_address:host_port -> the port's ip:guest_port."""

    id: str
    protocol: Protocol  # tcp or udp
    host_address: ipaddress.IPv4Address | None  # None: every local address
    host_port: int
    guest_ip: ipaddress.IPv4Address
    guest_port: int


@dataclass(frozen=True)
class Plan:
    """Everything the firewall and DHCP server need to know."""

    network: NetworkPlan
    ports: tuple[PortPlan, ...] = ()
    groups: tuple[GroupPlan, ...] = ()
    forwards: tuple[ForwardPlan, ...] = ()
    host_access: bool = True  # the host reaches every guest, whatever the groups say

    def group_members(self, group_id: str) -> tuple[ipaddress.IPv4Address, ...]:
        return tuple(sorted({p.ip for p in self.ports if group_id in p.groups}))
