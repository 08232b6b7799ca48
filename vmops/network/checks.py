"""``vmops doctor``'s checks of the host for the vmops network.

None of them is required: without a working bridge network the service
still starts, with user-mode NICs only, so each problem is a warning with
what to do. The kernel switches are read under ``proc_sys`` and another
firewall is found in ``nft -j list ruleset``, both passed in so tests use
fake trees and JSON fixtures.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmops.errors import NetworkError
from vmops.hypervisor.base import Check
from vmops.network import host, nftables
from vmops.network.model import NicMode

NFT_TIMEOUT_S = 10
# Families whose forward hook sees the guests' traffic: routed (ip, inet)
# or bridged between guests (bridge). Guests have IPv4 only.
FORWARD_FAMILIES = ("ip", "inet", "bridge")


def network_checks(mode: str, bridge: str, subnet: str, proc_sys: Path = host.SYSCTL,
                   ruleset: Callable[[], str] | None = None,
                   overlap: Callable[[ipaddress.IPv4Network, str], str | None]
                   = host.overlapping_route) -> list[Check]:
    """The checks for ``mode`` (the effective network_mode); ``subnet``: the
    vmops network's recorded subnet, else the network_subnet setting ('' :
    none yet)."""
    if mode != NicMode.BRIDGE:
        return [Check(name="vmops network", ok=True, required=False,
                      detail="network_mode resolves to user: guests get QEMU user-mode NICs, "
                             "which nothing on the host reaches",
                      advice="")]
    return [
        _program("dnsmasq", "apt-get install dnsmasq-base"),
        _program("nft", "apt-get install nftables"),
        _ip_forward(proc_sys),
        _bridge_netfilter(proc_sys),
        _subnet(subnet, bridge, overlap),
        _other_firewalls(ruleset or read_ruleset, bridge),
    ]


def _program(name: str, advice: str) -> Check:
    path = shutil.which(name)
    return Check(name=name, ok=path is not None, required=False,
                 detail=f"{path} (for the vmops network)" if path else
                 "not on PATH: the vmops network cannot be set up, so guests get user-mode "
                 "NICs only", advice=advice if path is None else "")


def _ip_forward(proc_sys: Path) -> Check:
    name = "IPv4 forwarding"
    value = _read(proc_sys / "net/ipv4/ip_forward")
    if value == "1":
        return Check(name=name, ok=True, required=False, advice="",
                     detail="net.ipv4.ip_forward is 1: guests reach beyond the host (NAT)")
    return Check(name=name, ok=False, required=False,
                 detail=f"net.ipv4.ip_forward is {value or 'unreadable'}: guests cannot reach "
                        "beyond the host",
                 advice="`vmops serve` (as root) turns it on at start; or sysctl -w "
                        "net.ipv4.ip_forward=1")


def _bridge_netfilter(proc_sys: Path) -> Check:
    name = "bridge netfilter"
    value = _read(proc_sys / "net/bridge/bridge-nf-call-iptables")
    if value == "1":
        return Check(name=name, ok=True, required=False, advice="",
                     detail="net.bridge.bridge-nf-call-iptables is 1: security groups apply "
                            "between guests")
    detail = ("br_netfilter is not loaded" if value is None
              else f"net.bridge.bridge-nf-call-iptables is {value}")
    return Check(name=name, ok=False, required=False,
                 detail=f"{detail}: security groups are not enforced between guests on the "
                        "bridge",
                 advice="`vmops serve` (as root) loads br_netfilter and turns it on at start; "
                        "or modprobe br_netfilter && sysctl -w "
                        "net.bridge.bridge-nf-call-iptables=1")


def _subnet(subnet: str, bridge: str,
            overlap: Callable[[ipaddress.IPv4Network, str], str | None]) -> Check:
    name = "vmops subnet"
    if not subnet:
        return Check(name=name, ok=True, required=False, advice="",
                     detail="none chosen yet: the service picks the first of "
                            f"{', '.join(host.DEFAULT_SUBNETS)} no host route overlaps")
    try:
        cidr = ipaddress.IPv4Network(subnet, strict=False)
        clash = overlap(cidr, bridge)
    except ValueError:
        return Check(name=name, ok=False, required=False, detail=f"{subnet!r} is not an IPv4 "
                     "subnet in CIDR form", advice="set network_subnet, e.g. 10.213.0.0/24")
    except NetworkError as exc:
        return Check(name=name, ok=False, required=False, detail=exc.message,
                     advice="apt-get install iproute2")
    if clash:
        return Check(name=name, ok=False, required=False,
                     detail=f"{cidr} overlaps the host route {clash}: guests and that network "
                            "could not reach each other",
                     advice="set network_subnet to a free private /24 (before the first "
                            "bridge-mode start; afterwards guests hold addresses in it)")
    return Check(name=name, ok=True, required=False, advice="",
                 detail=f"{cidr} overlaps no host route but the bridge {bridge}'s own")


def read_ruleset() -> str:
    """``nft -j list ruleset``; raises OSError or CalledProcessError."""
    done = subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True,
                          timeout=NFT_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise OSError(done.stderr.strip() or f"nft exited with status {done.returncode}")
    return done.stdout


def dropping_forward_chains(ruleset: dict[str, Any]) -> list[str]:
    """``family table chain`` of every forward base chain with policy drop
    in a table that is not vmops' own."""
    found = []
    for item in ruleset.get("nftables", []):
        chain = item.get("chain") if isinstance(item, dict) else None
        if not isinstance(chain, dict):
            continue
        if (chain.get("hook") == "forward" and chain.get("policy") == "drop"
                and chain.get("family") in FORWARD_FAMILIES
                and not str(chain.get("table", "")).startswith(nftables.table_name(""))):
            found.append(f"{chain['family']} {chain.get('table')} {chain.get('name')}")
    return found


def _other_firewalls(ruleset: Callable[[], str], bridge: str) -> Check:
    name = "other firewalls"
    try:
        parsed = json.loads(ruleset() or "{}")
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return Check(name=name, ok=False, required=False,
                     detail=f"cannot read the nftables ruleset: {exc}",
                     advice="run vmops doctor as root to check for firewalls that drop the "
                            "guests' traffic")
    dropping = dropping_forward_chains(parsed if isinstance(parsed, dict) else {})
    if not dropping:
        return Check(name=name, ok=True, required=False, advice="",
                     detail="no other nftables forward chain drops by default")
    return Check(name=name, ok=False, required=False,
                 detail=f"forward chain(s) with policy drop: {', '.join(dropping)}; a packet "
                        "vmops' table accepts is still dropped there, so guests may not reach "
                        "beyond the host, each other, or be reached through port forwards "
                        "(Docker sets iptables' FORWARD policy to DROP)",
                 advice=f"let {bridge}'s traffic through that firewall (vmops' own table "
                        "still applies the security groups), e.g. for Docker: iptables -I "
                        f"DOCKER-USER -i {bridge} -j ACCEPT; iptables -I DOCKER-USER -o "
                        f"{bridge} -j ACCEPT")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
