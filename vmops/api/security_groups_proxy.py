"""Nova's ``os-security-groups`` and ``os-security-group-rules`` proxy
(deprecated, gone from microversion 2.36), over vmops' security groups:
the same groups and rules the network endpoint serves in Neutron's shape
(``network_api.py``), in the shape Nova's proxy gives them when the
network service is Neutron.

As Nova's proxy: ids are UUIDs (anything else 400), a group shows its
ingress rules only, a rule takes ``ip_protocol`` (tcp, udp, icmp),
``from_port``/``to_port`` and a ``cidr`` (default ``0.0.0.0/0``) or a
source ``group_id``; a rule that is there already, and deleting the
``default`` group, are 400. A group made here belongs to the caller's
project: its members (and admins) see and change it, others get 404; the
host's own groups (``default``, and those made on the network endpoint or
the CLI, which have no project) are seen by everyone. Admins list their
project's and the host's groups, every project's with ``?all_tenants=``.
"""

from __future__ import annotations

import ipaddress
import uuid as uuidlib
from typing import Any

from vmops.api import parse, views
from vmops.api.server import Request, Response, Router
from vmops.compute.manager import Compute
from vmops.compute.names import check_resource_name
from vmops.errors import Forbidden, Invalid, SecurityGroupNotFound, SecurityGroupRuleNotFound
from vmops.network.manager import Network
from vmops.store import SecurityGroup, SecurityGroupRule

P = views.API_PREFIX
DEFAULT_GROUP = "default"
ANY_CIDR = "0.0.0.0/0"
MAX_TEXT = 255


def add_routes(r: Router, compute: Compute) -> None:
    api = SecurityGroupsProxy(compute)
    r.add("GET", f"{P}/os-security-groups", api.list)
    # DELETE /os-security-groups/ (no id): 404 as Nova, not 405.
    r.add("DELETE", f"{P}/os-security-groups", api.delete_without_id)
    r.add("POST", f"{P}/os-security-groups", api.create)
    r.add("GET", f"{P}/os-security-groups/{{id}}", api.show)
    r.add("PUT", f"{P}/os-security-groups/{{id}}", api.update)
    r.add("DELETE", f"{P}/os-security-groups/{{id}}", api.delete)
    r.add("POST", f"{P}/os-security-group-rules", api.create_rule)
    r.add("DELETE", f"{P}/os-security-group-rules/{{id}}", api.delete_rule)


def _uuid(text: str, what: str) -> str:
    try:
        uuidlib.UUID(text)
    except ValueError:
        raise Invalid(reason=f"{what} id should be uuid, not {text[:40]!r}") from None
    return text


class SecurityGroupsProxy:
    def __init__(self, compute: Compute) -> None:
        self.store = compute.store
        # Without a network (user-mode only) groups and rules are still
        # records: they apply once the network is on (as network_api).
        self.network = compute.network or Network.off(compute.store)

    def _gone_from_2_36(self, req: Request) -> None:
        if req.at_least("2.36"):
            raise SecurityGroupNotFound("the compute API's security group proxy is gone from "
                                        "microversion 2.36: use the network service")

    def _group(self, req: Request, ref: str) -> SecurityGroup:
        self._gone_from_2_36(req)
        group = self.store.security_group(_uuid(ref, "Security group"))
        if group.id != ref or not visible_group(group, req):  # a name is no id here
            raise SecurityGroupNotFound(group=ref)
        return group

    # -- views -----------------------------------------------------------------------
    def _view(self, group: SecurityGroup, req: Request) -> dict[str, Any]:
        rules = [self._rule_view(r, group, req) for r in self.store.security_group_rules(group.id)
                 if r.direction == "ingress"]
        return {"id": group.id, "name": group.name, "description": group.description,
                "tenant_id": group.project_id or req.context.project_id, "rules": rules}

    def _rule_view(self, rule: SecurityGroupRule, group: SecurityGroup,
                   req: Request) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": rule.id, "parent_group_id": rule.group_id,
            "ip_protocol": None if rule.protocol == "any" else rule.protocol,
            "from_port": rule.port_min, "to_port": rule.port_max, "group": {},
            "ip_range": {}}
        if rule.remote_group_id:
            try:
                source = self.store.security_group(rule.remote_group_id)
                body["group"] = {"name": source.name,
                                 "tenant_id": source.project_id or req.context.project_id}
            except SecurityGroupNotFound:
                body["group"] = {}
        else:
            body["ip_range"] = {"cidr": rule.remote_cidr or ANY_CIDR}
        return body

    # -- groups ------------------------------------------------------------------------
    def list(self, req: Request) -> Response:
        self._gone_from_2_36(req)
        every = req.context.is_admin and req.arg("all_tenants") not in (None, "0", "false",
                                                                          "False")
        groups = [g for g in self.store.security_groups()
                  if every or _shared(g, req.context.project_id)]
        return Response(200, {"security_groups": [self._view(g, req) for g in groups]})

    def show(self, req: Request) -> Response:
        return Response(200, {"security_group": self._view(
            self._group(req, req.params["id"]), req)})

    def create(self, req: Request) -> Response:
        self._gone_from_2_36(req)
        name, description = _group_fields(req.json())
        group = self.network.create_group(name, description)
        group = self.store.update_security_group(group, project_id=req.context.project_id)
        return Response(200, {"security_group": self._view(group, req)})

    def update(self, req: Request) -> Response:
        group = self._group(req, req.params["id"])
        check_changeable(group, req)
        name, description = _group_fields(req.json())
        group = self.store.update_security_group(group, name=name, description=description)
        return Response(200, {"security_group": self._view(group, req)})

    def delete_without_id(self, req: Request) -> Response:
        raise SecurityGroupNotFound("no security group id given")

    def delete(self, req: Request) -> Response:
        group = self._group(req, req.params["id"])
        if group.name == DEFAULT_GROUP:
            raise Invalid(reason="Removing default security group not allowed.")
        check_changeable(group, req)
        self.network.delete_group(group.id)
        return Response(202)

    # -- rules -------------------------------------------------------------------------
    def create_rule(self, req: Request) -> Response:
        self._gone_from_2_36(req)
        body = parse.section(req.json(), "security_group_rule")
        parse.no_unknown(body, {"parent_group_id", "ip_protocol", "from_port", "to_port",
                                "cidr", "group_id"}, "security_group_rule")
        parent = parse.field(body, "parent_group_id", str, required=True)
        group = self._group(req, parent)
        check_changeable(group, req)
        protocol, port_min, port_max = _protocol_and_ports(body)
        cidr = _cidr(parse.field(body, "cidr", str))
        source = parse.field(body, "group_id", str)
        if source is not None:
            source = self._group(req, source).id
        elif not cidr:
            cidr = ANY_CIDR
        wanted = (protocol, port_min, port_max, None if source else cidr, source)
        for rule in self.store.security_group_rules(group.id):
            there = (rule.protocol, rule.port_min, rule.port_max,
                     None if rule.remote_group_id else rule.remote_cidr or ANY_CIDR,
                     rule.remote_group_id)
            if rule.direction == "ingress" and there == wanted:
                raise Invalid(reason=f"This rule already exists in group {group.id}")
        rule = self.network.add_rule(group.id, "ingress", protocol, port_min, port_max,
                                     None if source else cidr, source)
        return Response(200, {"security_group_rule": self._rule_view(rule, group, req)})

    def delete_rule(self, req: Request) -> Response:
        self._gone_from_2_36(req)
        rule_id = _uuid(req.params["id"], "Security group rule")
        rule = self.store.security_group_rule(rule_id)
        if rule.id != rule_id or not visible_group(
                self.store.security_group(rule.group_id), req):
            raise SecurityGroupRuleNotFound(rule=rule_id)
        check_changeable(self.store.security_group(rule.group_id), req)
        self.network.delete_rule(rule.id)
        return Response(202)


def _shared(group: SecurityGroup, project_id: str) -> bool:
    """The project's own groups and the host's: ``default`` (one for the
    whole host, where Neutron has one per project) and those with no project."""
    return group.name == DEFAULT_GROUP or group.project_id in ("", project_id)


def visible_group(group: SecurityGroup, req: Request) -> bool:
    """Whether the caller sees ``group`` (the network service's rule too)."""
    return req.context.is_admin or _shared(group, req.context.project_id)


def check_changeable(group: SecurityGroup, req: Request) -> None:
    """A group the caller sees may be changed by its own project's members
    and admins only: the host-wide ones (``default``) govern every project's
    guests. (The network service's rule too.)"""
    if not req.context.is_admin and group.project_id != req.context.project_id:
        raise Forbidden(reason=f"security group {group.name!r} is the host's, shared by "
                        "every project: only an admin changes it")


def _cidr(text: str | None) -> str | None:
    """A network, its host bits dropped as Neutron does (10.2.3.124/24 is
    10.2.3.0/24); IPv4 only, as the vmops network."""
    if not text:
        return None
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise Invalid(reason=f"Invalid cidr {text[:60]!r}") from None
    if net.version != 4:
        raise Invalid(reason="the vmops network is IPv4 only: give an IPv4 cidr")
    return str(net)


def _group_fields(body: Any) -> tuple[str, str]:
    """Nova's schema: a name and a description, strings of at most 255."""
    group = parse.section(body, "security_group")
    parse.no_unknown(body, {"security_group"}, "the request body")
    parse.no_unknown(group, {"name", "description"}, "security_group")
    name = parse.field(group, "name", str, required=True)
    description = parse.field(group, "description", str, default="")
    check_resource_name(name, "security group")
    if len(description) > MAX_TEXT or not description.isprintable():
        raise Invalid(reason=f"description must be at most {MAX_TEXT} printable characters")
    return name, description


def _port(value: Any, what: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.lstrip("-").isdigit() and len(value) <= 6:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(reason=f"{what} must be an integer, not {value!r}")
    return value


def _protocol_and_ports(body: dict[str, Any]) -> tuple[str, int | None, int | None]:
    """Nova's rule arguments: tcp and udp take ports 1 to 65535, from <=
    to; icmp a type and code from -1 (any) to 255; no protocol: any."""
    protocol = body.get("ip_protocol")
    if protocol is None or protocol == "":
        return "any", None, None
    if not isinstance(protocol, str):
        raise Invalid(reason=f"Invalid IP protocol {protocol!r}.")
    name = {"6": "tcp", "17": "udp", "1": "icmp"}.get(protocol, protocol.lower())
    if name not in ("tcp", "udp", "icmp"):
        raise Invalid(reason=f"Invalid IP protocol {protocol[:40]}.")
    low, high = _port(body.get("from_port"), "from_port"), _port(body.get("to_port"), "to_port")
    if name == "icmp":
        for value, what in ((low, "ICMP type"), (high, "ICMP code")):
            if value is not None and not -1 <= value <= 255:
                raise Invalid(reason=f"Invalid port range {low}:{high}. {what} must be from "
                              "-1 to 255")
        return name, None if low in (None, -1) else low, None if high in (None, -1) else high
    if low is None or high is None or not 1 <= low <= 65535 or not 1 <= high <= 65535 \
            or low > high:
        raise Invalid(reason=f"Invalid port range {low}:{high}. Valid TCP ports should be "
                      "between 1-65535")
    return name, low, high
