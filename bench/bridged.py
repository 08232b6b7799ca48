"""A vmops service on the vmops network, on a bridge and subnet of its own,
for the network scenarios (``spawn_address``, ``net_throughput``).

The bridge is ``vmb`` + 6 hex digits, the subnet a free 10.253.x.0/24 (no
host route overlaps it). ``close()`` destroys the instances, stops the
service, kills what still runs from its state directory (QEMU, capture
processes, its dnsmasq), then deletes the two nftables tables
``vmops_<bridge>`` and the bridge: a stopped service leaves those to its
guests on purpose, the bench must not.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import random
import secrets
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

from bench.common import test_image
from bench.vmopsd import VmopsService
from vmops.network import nftables

log = logging.getLogger("bench")

SUBNET_SUPERNET = ipaddress.IPv4Network("10.253.0.0/16")


def free_subnet(routes: Iterable[str], pick: Callable[[int, int], int] = random.randint) -> str:
    """A 10.253.x.0/24 that overlaps none of ``routes`` (``ip -j route``
    destinations: "default", an address, or a CIDR); ``pick(a, b)`` draws x."""
    taken = []
    for dst in routes:
        if dst == "default":
            continue
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.IPv4Network(dst, strict=False))
    free = [net for net in SUBNET_SUPERNET.subnets(new_prefix=24)
            if not any(net.overlaps(t) for t in taken)]
    if not free:
        raise RuntimeError(f"no free /24 in {SUBNET_SUPERNET}: every one overlaps a route")
    return str(free[pick(0, len(free) - 1)])


def host_routes() -> list[str]:
    out = subprocess.run(["ip", "-j", "-4", "route", "show", "table", "all"],
                         capture_output=True, text=True, check=True).stdout
    return [str(r.get("dst", "")) for r in json.loads(out or "[]")]


def gateway_of(cidr: str) -> str:
    """The bridge's address: the subnet's first (the guests' router)."""
    return str(next(ipaddress.IPv4Network(cidr).hosts()))


def network_leftovers(bridge: str) -> list[str]:
    """What of the bridge's network is still on the host."""
    found = []
    if Path(f"/sys/class/net/{bridge}").exists():
        found.append(f"bridge {bridge}")
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True,
                            text=True).stdout.split("\n")
    found += [t.strip() for t in tables if t.strip().endswith(nftables.table_name(bridge))]
    return found


def remove_network(bridge: str) -> None:
    for family in ("inet", "bridge"):
        subprocess.run(["nft", "delete", "table", family, nftables.table_name(bridge)],
                       capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)


def flush_neighbours(bridge: str) -> None:
    """Forget the ARP entries on the bridge, so that a guest that gets an
    address a previous guest had is not sent to the old MAC."""
    subprocess.run(["ip", "neigh", "flush", "dev", bridge], capture_output=True, check=False)


class BridgedService:
    """The service, and fresh addresses for its guests.

    Each guest gets an address no guest had before in this service
    (``fresh_ip``): vmops releases a destroyed guest's reservation but not
    its lease in dnsmasq, so dnsmasq refuses the address to the next MAC
    until the lease expires (an hour; seen with vmops at commit 4bb5c43).
    """

    def __init__(self) -> None:
        self.bridge = f"vmb{secrets.token_hex(3)}"
        self.cidr = free_subnet(host_routes())
        self.gateway = gateway_of(self.cidr)
        self._next_host = 100  # below: what vmops allocates by itself
        self.svc = VmopsService({"VMOPS_NETWORK_MODE": "bridge",
                                 "VMOPS_NETWORK_BRIDGE": self.bridge,
                                 "VMOPS_NETWORK_SUBNET": self.cidr})

    def start(self) -> None:
        log.info("starting a bridged vmops serve in %s (bridge %s, %s)", self.svc.state_dir,
                 self.bridge, self.cidr)
        self.svc.start()
        if not Path(f"/sys/class/net/{self.bridge}").exists():
            raise RuntimeError(f"the service did not set up bridge {self.bridge}: "
                               + self.svc.log_tail())
        self.svc.ensure_image(test_image())

    def fresh_ip(self) -> str:
        """An address of the subnet not handed out before by this service."""
        net = ipaddress.IPv4Network(self.cidr)
        if self._next_host >= net.num_addresses - 1:
            raise RuntimeError(f"no fresh address left in {self.cidr}")
        self._next_host += 1
        return str(net.network_address + self._next_host - 1)

    def address(self, name: str) -> str:
        """The instance's address on the vmops network (its record)."""
        server = self.svc.brief(name)
        return str(server["addresses"]["vmops"][0]["addr"])

    def close(self) -> None:
        try:
            self.svc.close()
        finally:
            remove_network(self.bridge)
        left = network_leftovers(self.bridge)
        if left:
            log.warning("left behind: %s", ", ".join(left))
