"""The vmops firewall: two nftables tables, rendered from a :class:`Plan`
and replaced atomically with one ``nft -f``.

Both are named ``vmops_<bridge>`` (below: ``vmops``), so two state
directories with two bridges never touch each other's rules.

``table bridge vmops`` stops spoofing where a frame enters the bridge
(per port: its own MAC, its own IPv4 address, no DHCP server). It is
stateless, because this layer has no connection tracking on every kernel.

``table inet vmops`` does everything stateful. With the bridge's netfilter
hook on (``br_netfilter``, ``net.bridge.bridge-nf-call-iptables=1``),
traffic between two guests on the bridge passes the ``forward`` hook too,
with the bridge as both its in- and out-interface; guests are therefore
told apart by address, which the bridge table has made trustworthy.

- ``forward``: replies pass; a packet from a guest must pass its egress
  chain (``out_<tap>``: allowed returns, otherwise drop); a packet to a
  guest must pass its ingress chain (``in_<tap>``: allowed accepts,
  otherwise drop). Traffic that touches neither side of the bridge is not
  ours and passes untouched.
- ``input``: guests reach the host's DHCP and DNS; anything else they send
  the host passes their egress chain.
- ``output``: the host reaches every guest (``host_access``), or, with it
  off, only as the guests' ingress rules allow (the host is then the
  bridge's address); DHCP replies always pass.
- NAT: port forwards (prerouting for others, output for the host itself),
  masquerade out of the subnet, and masquerade for hairpin traffic (a
  forward used from the host's loopback or from a guest).

Nothing here touches any other table, so no rule of another program is
ever changed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from vmops.errors import NetworkError
from vmops.network.host import run_tool
from vmops.network.model import (
    Direction,
    ForwardPlan,
    Plan,
    PortPlan,
    Protocol,
    RulePlan,
)

NFT_TIMEOUT_S = 30


def table_name(bridge: str) -> str:
    return f"vmops_{bridge}"


def render(plan: Plan) -> str:
    """The whole ruleset, as one ``nft -f`` transaction that replaces our
    two tables (declare, delete, define: atomic, and no error when absent)."""
    table = table_name(plan.network.bridge)
    lines = [
        render_delete(plan.network.bridge).rstrip("\n"),
        "",
        *_bridge_table(plan, table),
        "",
        *_inet_table(plan, table),
    ]
    return "\n".join(lines) + "\n"


def render_delete(bridge: str) -> str:
    table = table_name(bridge)
    return "\n".join([f"table bridge {table} {{}}", f"delete table bridge {table}",
                      f"table inet {table} {{}}", f"delete table inet {table}"]) + "\n"


def apply(ruleset: str) -> None:
    """Load ``ruleset`` in one transaction: all of it, or nothing."""
    done = run_tool(["nft", "-f", "-"], "nftables", NFT_TIMEOUT_S, input=ruleset)
    if done.returncode != 0:
        raise NetworkError(reason=f"nft refused the vmops ruleset: {done.stderr.strip()}")


def table_present(bridge: str) -> bool:
    done = run_tool(["nft", "list", "table", "inet", table_name(bridge)], "nftables",
                    NFT_TIMEOUT_S)
    return done.returncode == 0


# --------------------------------------------------------------------------- bridge


def _bridge_table(plan: Plan, table: str) -> list[str]:
    out = [f"table bridge {table} {{",
           "\tchain prerouting {",
           "\t\ttype filter hook prerouting priority -200; policy accept;"]
    if plan.ports:
        out.append("\t\tiifname vmap { " + _joined(
            f'"{p.tap}" : jump port_{p.tap}' for p in plan.ports) + " }")
    out.append("\t}")
    for port in plan.ports:
        out += _port_chain(port)
    out.append("}")
    return out


def _port_chain(port: PortPlan) -> list[str]:
    """Anti-spoofing for one port: its MAC and address only, no DHCP server."""
    return [
        f"\tchain port_{port.tap} {{",
        f"\t\tether saddr != {port.mac} drop",
        f"\t\tether type arp arp saddr ether != {port.mac} drop",
        f"\t\tether type arp arp saddr ip != {{ 0.0.0.0, {port.ip} }} drop",
        "\t\tether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept",
        f"\t\tether type ip ip saddr != {port.ip} drop",
        "\t\tether type ip udp sport 67 drop",
        "\t\tether type { ip, arp } accept",
        "\t\tdrop",
        "\t}",
    ]


# --------------------------------------------------------------------------- inet


def _inet_table(plan: Plan, table: str) -> list[str]:
    net = plan.network
    br = f'"{net.bridge}"'
    out = [f"table inet {table} {{"]
    for group in plan.groups:
        out += _member_set(group.id, plan.group_members(group.id))

    by_saddr = _vmap("ip saddr", ((p.ip, f"jump out_{p.tap}") for p in plan.ports))
    by_daddr = _vmap("ip daddr", ((p.ip, f"jump in_{p.tap}") for p in plan.ports))

    out += [
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        f"\t\tiifname != {br} oifname != {br} accept",
        "\t\tct state established,related accept",
        "\t\tct state invalid drop",
        *by_saddr,
        *by_daddr,
        f"\t\tiifname {br} ip saddr {net.cidr} accept",
        "\t\tdrop",
        "\t}",
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        f"\t\tiifname != {br} accept",
        "\t\tct state established,related accept",
        "\t\tudp sport 68 udp dport 67 accept",
        f"\t\tip daddr {net.gateway} meta l4proto {{ tcp, udp }} th dport 53 accept",
        *by_saddr,
        "\t}",
        "\tchain output {",
        "\t\ttype filter hook output priority filter; policy accept;",
        f"\t\toifname != {br} accept",
        "\t\tudp sport 67 udp dport 68 accept",
    ]
    if not plan.host_access:
        out += ["\t\tct state established,related accept", *by_daddr]
    out.append("\t}")

    for port in plan.ports:
        out += _port_rules(plan, port, Direction.INGRESS)
        out += _port_rules(plan, port, Direction.EGRESS)

    out += _nat_chains(plan)
    out.append("}")
    return out


def _member_set(group_id: str, members: Iterable[ipaddress.IPv4Address]) -> list[str]:
    elements = _joined(str(ip) for ip in members)
    out = [f"\tset {_set_name(group_id)} {{", "\t\ttype ipv4_addr"]
    if elements:
        out.append(f"\t\telements = {{ {elements} }}")
    out.append("\t}")
    return out


def _port_rules(plan: Plan, port: PortPlan, direction: Direction) -> list[str]:
    """in_<tap>: what may reach the guest (accept), out_<tap>: what the guest
    may send (return, so the destination's own ingress is checked next)."""
    chain = ("in_" if direction is Direction.INGRESS else "out_") + port.tap
    verdict = "accept" if direction is Direction.INGRESS else "return"
    out = [f"\tchain {chain} {{"]
    for group in plan.groups:
        if group.id not in port.groups:
            continue
        for rule in group.rules:
            if rule.direction is direction:
                out.append(f"\t\t{_match(rule)}{verdict}")
    out += ["\t\tdrop", "\t}"]
    return out


def _match(rule: RulePlan) -> str:
    """The match part of one rule, ending in a space (or empty: everything)."""
    remote = "saddr" if rule.direction is Direction.INGRESS else "daddr"
    parts = []
    if rule.remote_group is not None:
        parts.append(f"ip {remote} @{_set_name(rule.remote_group)}")
    elif rule.remote_cidr is not None and rule.remote_cidr.prefixlen:
        parts.append(f"ip {remote} {rule.remote_cidr}")
    else:
        parts.append("meta nfproto ipv4")
    if rule.protocol in (Protocol.TCP, Protocol.UDP):
        if rule.port_min is None:
            parts.append(f"meta l4proto {rule.protocol.value}")
        else:
            parts.append(f"{rule.protocol.value} dport {_port_range(rule)}")
    elif rule.protocol is Protocol.ICMP:
        parts.append("meta l4proto icmp")
        if rule.port_min is not None:
            parts.append(f"icmp type {rule.port_min}")
            if rule.port_max is not None:
                parts.append(f"icmp code {rule.port_max}")
    return " ".join(parts) + " "


def _port_range(rule: RulePlan) -> str:
    if rule.port_max is None or rule.port_max == rule.port_min:
        return str(rule.port_min)
    return f"{rule.port_min}-{rule.port_max}"


def _nat_chains(plan: Plan) -> list[str]:
    net = plan.network
    br = f'"{net.bridge}"'
    forwards = [_dnat(f) for f in plan.forwards]
    return [
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        *forwards,
        "\t}",
        "\tchain nat_output {",
        "\t\ttype nat hook output priority -100; policy accept;",
        *forwards,
        "\t}",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        f"\t\tip saddr {net.cidr} ip daddr != {net.cidr} oifname != {br} masquerade",
        f"\t\toifname {br} ct status dnat ip saddr {{ 127.0.0.0/8, {net.cidr} }} masquerade",
        "\t}",
    ]


def _dnat(fwd: ForwardPlan) -> str:
    where = (f"ip daddr {fwd.host_address}" if fwd.host_address is not None
             else "meta nfproto ipv4 fib daddr type local")
    return (f"\t\t{where} {fwd.protocol.value} dport {fwd.host_port} "
            f"dnat ip to {fwd.guest_ip}:{fwd.guest_port}")


# --------------------------------------------------------------------------- helpers


def _vmap(match: str, pairs: Iterable[tuple[ipaddress.IPv4Address, str]]) -> list[str]:
    body = _joined(f"{key} : {verdict}" for key, verdict in pairs)
    return [f"\t\t{match} vmap {{ {body} }}"] if body else []


def _joined(items: Iterable[str]) -> str:
    return ", ".join(items)


def _set_name(group_id: str) -> str:
    return "group_" + "".join(c for c in group_id if c.isalnum())
