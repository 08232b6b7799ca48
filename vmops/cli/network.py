"""The network's verbs: security groups, their rules and members, port forwards."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from vmops.cli.client import Client
from vmops.cli.output import print_json, print_kv, print_table

SG = "/network/v2.0/security-groups"
RULES = "/network/v2.0/security-group-rules"
FORWARDS = "/os-vmops/port-forwards"

Command = Callable[..., argparse.ArgumentParser]
ClientOf = Callable[[argparse.Namespace], Client]


def add_commands(sub: Any, cmd: Command, client_of: ClientOf) -> None:
    """Register ``security-group`` and ``forward`` under ``sub``."""
    verbs = _Verbs(client_of)
    sg = sub.add_parser("security-group", help="security groups of the vmops network "
                        "(OpenStack semantics)").add_subparsers(
        dest="sg_command", required=True, metavar="ACTION")
    sp = cmd("create", verbs.group_create, "create a group (no rules: it admits nothing)",
             parent=sg)
    sp.add_argument("name")
    sp.add_argument("--description", default="")
    cmd("list", verbs.group_list, "list groups", parent=sg)
    sp = cmd("show", verbs.group_show, "show a group and its rules", parent=sg)
    sp.add_argument("group")
    sp = cmd("delete", verbs.group_delete, "delete a group no instance is in", json_flag=False,
             parent=sg)
    sp.add_argument("group")
    sp = cmd("rule-add", verbs.rule_add, "allow traffic into (or out of) the group's members",
             parent=sg)
    sp.add_argument("group")
    sp.add_argument("--egress", action="store_true", help="a rule for what members send "
                    "(default: what they receive)")
    sp.add_argument("--protocol", default="any", choices=("tcp", "udp", "icmp", "any"))
    sp.add_argument("--port", metavar="PORT[:LAST]", help="tcp/udp port or range")
    remote = sp.add_mutually_exclusive_group()
    remote.add_argument("--remote-cidr", metavar="CIDR",
                        help="from (or to) these addresses, e.g. 0.0.0.0/0")
    remote.add_argument("--remote-group", metavar="GROUP", help="from (or to) members of GROUP")
    sp = cmd("rule-delete", verbs.rule_delete, "delete a rule by id", json_flag=False,
             parent=sg)
    sp.add_argument("rule")
    for verb, member in (("join", True), ("leave", False)):
        sp = cmd(verb, verbs.membership(member),
                 f"{'add an instance to' if member else 'remove an instance from'} a group "
                 "(applied to the running guest at once)", json_flag=False, parent=sg)
        sp.add_argument("name", help="the instance")
        sp.add_argument("group")

    fwd = sub.add_parser("forward", help="host ports forwarded to instances").add_subparsers(
        dest="forward_command", required=True, metavar="ACTION")
    sp = cmd("add", verbs.forward_add, "forward HOST_PORT of the host to GUEST_PORT of an "
             "instance (its security groups still decide who gets in)", parent=fwd)
    sp.add_argument("name", help="the instance")
    sp.add_argument("host_port", type=int)
    sp.add_argument("guest_port", type=int)
    sp.add_argument("--udp", action="store_true", help="UDP instead of TCP")
    sp.add_argument("--address", help="only this host address (default: all of them)")
    sp = cmd("list", verbs.forward_list, "list forwards", parent=fwd)
    sp.add_argument("name", nargs="?", help="only this instance's")
    sp = cmd("delete", verbs.forward_delete, "remove a forward by id", json_flag=False,
             parent=fwd)
    sp.add_argument("forward")


def _port_range(text: str | None) -> tuple[int | None, int | None]:
    if not text:
        return None, None
    first, _, last = text.partition(":")
    try:
        return int(first), int(last) if last else int(first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port {text!r}: PORT or FIRST:LAST") from None


class _Verbs:
    def __init__(self, client_of: ClientOf) -> None:
        self.client_of = client_of

    # -- groups --------------------------------------------------------------
    def group_create(self, args: argparse.Namespace) -> int:
        group = self.client_of(args).post(SG, {"security_group": {
            "name": args.name, "description": args.description}})["security_group"]
        return _show_group(group, args.json)

    def group_list(self, args: argparse.Namespace) -> int:
        groups = self.client_of(args).get(SG)["security_groups"]
        if args.json:
            print_json(groups)
            return 0
        print_table(["NAME", "ID", "RULES", "DESCRIPTION"],
                    [[g["name"], g["id"], len(g["security_group_rules"]), g["description"]]
                     for g in groups])
        return 0

    def group_show(self, args: argparse.Namespace) -> int:
        return _show_group(self._group(args), args.json)

    def group_delete(self, args: argparse.Namespace) -> int:
        group = self._group(args)
        self.client_of(args).delete(f"{SG}/{group['id']}")
        print(f"deleted security group {group['name']}")
        return 0

    def _group(self, args: argparse.Namespace) -> dict[str, Any]:
        group: dict[str, Any] = self.client_of(args).get(f"{SG}/{args.group}")["security_group"]
        return group

    def rule_add(self, args: argparse.Namespace) -> int:
        client = self.client_of(args)
        group = self._group(args)
        low, high = _port_range(args.port)
        body: dict[str, Any] = {
            "security_group_id": group["id"],
            "direction": "egress" if args.egress else "ingress",
            "protocol": None if args.protocol == "any" else args.protocol,
            "port_range_min": low, "port_range_max": high,
            "remote_ip_prefix": args.remote_cidr}
        if args.remote_group:
            body["remote_group_id"] = client.get(f"{SG}/{args.remote_group}")[
                "security_group"]["id"]
        rule = client.post(RULES, {"security_group_rule": body})["security_group_rule"]
        if args.json:
            print_json(rule)
        else:
            print(f"added rule {rule['id']}: {_describe_rule(rule)}")
        return 0

    def rule_delete(self, args: argparse.Namespace) -> int:
        self.client_of(args).delete(f"{RULES}/{args.rule}")
        print(f"deleted rule {args.rule}")
        return 0

    def membership(self, member: bool) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            client = self.client_of(args)
            server = client.get(f"/servers/{args.name}")["server"]
            action = "addSecurityGroup" if member else "removeSecurityGroup"
            client.post(f"/servers/{server['id']}/action", {action: {"name": args.group}})
            print(f"{server['name']} {'joined' if member else 'left'} {args.group}")
            return 0
        return run

    # -- forwards ------------------------------------------------------------
    def forward_add(self, args: argparse.Namespace) -> int:
        body = {"server": args.name, "protocol": "udp" if args.udp else "tcp",
                "host_port": args.host_port, "guest_port": args.guest_port}
        if args.address:
            body["host_address"] = args.address
        fwd = self.client_of(args).post(FORWARDS, {"port_forward": body})["port_forward"]
        if args.json:
            print_json(fwd)
        else:
            print(f"forwarding {_describe_forward(fwd)} (id {fwd['id']})")
        return 0

    def forward_list(self, args: argparse.Namespace) -> int:
        path = f"{FORWARDS}?server={args.name}" if args.name else FORWARDS
        forwards = self.client_of(args).get(path)["port_forwards"]
        if args.json:
            print_json(forwards)
            return 0
        print_table(["ID", "PROTO", "HOST", "INSTANCE", "GUEST"],
                    [[f["id"], f["protocol"], f"{f['host_address']}:{f['host_port']}",
                      f["server_name"], f"{f['guest_address']}:{f['guest_port']}"]
                     for f in forwards])
        return 0

    def forward_delete(self, args: argparse.Namespace) -> int:
        self.client_of(args).delete(f"{FORWARDS}/{args.forward}")
        print(f"removed forward {args.forward}")
        return 0


def _show_group(group: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print_json(group)
        return 0
    print_kv([("name", group["name"]), ("id", group["id"]),
              ("description", group["description"] or "-")]
             + [(f"rule {r['id'][:8]}", _describe_rule(r))
                for r in group["security_group_rules"]])
    return 0


def _describe_rule(rule: dict[str, Any]) -> str:
    proto = rule["protocol"] or "any protocol"
    ports = ""
    if rule["port_range_min"] is not None:
        low, high = rule["port_range_min"], rule["port_range_max"]
        ports = f" port {low}" if high in (None, low) else f" ports {low}-{high}"
    remote = rule["remote_ip_prefix"] or (
        f"group {rule['remote_group_id']}" if rule["remote_group_id"] else "anywhere")
    way = "from" if rule["direction"] == "ingress" else "to"
    return f"{rule['direction']} {proto}{ports} {way} {remote}"


def _describe_forward(fwd: dict[str, Any]) -> str:
    return (f"{fwd['protocol']} {fwd['host_address']}:{fwd['host_port']} -> "
            f"{fwd['server_name']} {fwd['guest_address']}:{fwd['guest_port']}")
