"""The network's API: security groups in the shape of OpenStack's
networking service (Neutron v2.0, the subset the ``openstack`` client's
``security group`` commands use), port forwards as vmops' own resource.

Why Neutron's shape and not Compute 2.1's ``os-security-groups`` proxy:
the ``openstack`` client sends security-group commands to the network
service whenever it cannot tell that there is none, which with a token and
endpoint overrides is always. Joining a server to a group stays Compute's
``addSecurityGroup``/``removeSecurityGroup`` actions (``routes.py``).

Who sees what: a group belongs to the project that made it; its members see
and change it, other projects get 404. The host's ``default`` group (one
for the whole host, where Neutron has one per project) and groups of no
project are seen by everyone and changed by admins only. Admins see all.
"""

from __future__ import annotations

from typing import Any

from vmops.api import parse, views
from vmops.api.security_groups_proxy import check_changeable, visible_group
from vmops.api.server import Request, Response, Router
from vmops.compute.manager import Compute
from vmops.errors import Invalid, SecurityGroupNotFound
from vmops.network.manager import Network
from vmops.store import PortForward, SecurityGroup, SecurityGroupRule

NET_PREFIX = "/network/v2.0"
FORWARDS = f"{views.API_PREFIX}/os-vmops/port-forwards"


def add_routes(r: Router, compute: Compute) -> None:
    api = NetworkApi(compute)
    r.add("GET", "/network", api.versions, public=True)
    r.add("GET", f"{NET_PREFIX}/security-groups", api.list_groups)
    r.add("POST", f"{NET_PREFIX}/security-groups", api.create_group)
    r.add("GET", f"{NET_PREFIX}/security-groups/{{id}}", api.show_group)
    r.add("PUT", f"{NET_PREFIX}/security-groups/{{id}}", api.update_group)
    r.add("DELETE", f"{NET_PREFIX}/security-groups/{{id}}", api.delete_group)
    r.add("GET", f"{NET_PREFIX}/security-group-rules", api.list_rules)
    r.add("POST", f"{NET_PREFIX}/security-group-rules", api.create_rule)
    r.add("GET", f"{NET_PREFIX}/security-group-rules/{{id}}", api.show_rule)
    r.add("DELETE", f"{NET_PREFIX}/security-group-rules/{{id}}", api.delete_rule)
    r.add("GET", FORWARDS, api.list_forwards)
    r.add("POST", FORWARDS, api.create_forward)
    r.add("GET", f"{FORWARDS}/{{id}}", api.show_forward)
    r.add("DELETE", f"{FORWARDS}/{{id}}", api.delete_forward)


class NetworkApi:
    def __init__(self, compute: Compute) -> None:
        self.compute = compute
        self.store = compute.store
        # Without a network (user-mode only) groups and rules are still
        # records: they apply once the network is on.
        self.network = compute.network or Network.off(compute.store)

    def versions(self, req: Request) -> Response:
        return Response(200, {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [
            {"rel": "self", "href": f"{req.base_url}{NET_PREFIX}/"}]}]})

    # -- security groups -----------------------------------------------------
    def list_groups(self, req: Request) -> Response:
        groups = [g for g in self.store.security_groups() if visible_group(g, req)]
        for key in ("name", "id"):
            wanted = req.arg(key)
            if wanted is not None:
                groups = [g for g in groups if getattr(g, key) == wanted]
        return Response(200, {"security_groups": [self._group(g) for g in groups]})

    def show_group(self, req: Request) -> Response:
        return Response(200, {"security_group": self._group(self._find(req,
                                                                       req.params["id"]))})

    def create_group(self, req: Request) -> Response:
        body = parse.section(req.json(), "security_group")
        parse.no_unknown(body, {"name", "description", "project_id", "tenant_id", "stateful"},
                         "security_group")
        name = parse.field(body, "name", str, required=True)
        from vmops.compute.names import check_resource_name

        check_resource_name(name, "security group")
        group = self.network.create_group(
            name, _printable(parse.field(body, "description", str, default=""),
                             "description"))
        group = self.store.update_security_group(group, project_id=req.context.project_id)
        return Response(201, {"security_group": self._group(group)})

    def update_group(self, req: Request) -> Response:
        group = self._owned(req, req.params["id"])
        body = parse.section(req.json(), "security_group")
        parse.no_unknown(body, {"name", "description"}, "security_group")
        changes: dict[str, Any] = {}
        if "name" in body:
            from vmops.compute.names import check_resource_name

            changes["name"] = check_resource_name(parse.field(body, "name", str) or "",
                                                  "security group")
        if "description" in body:
            changes["description"] = _printable(
                parse.field(body, "description", str, default=""), "description")
        group = self.store.update_security_group(group, **changes)
        return Response(200, {"security_group": self._group(group)})

    def delete_group(self, req: Request) -> Response:
        self.network.delete_group(self._owned(req, req.params["id"]).id)
        return Response(204)

    def _find(self, req: Request, ref: str) -> SecurityGroup:
        """A group the caller may see (404 for another project's)."""
        group = self.store.security_group(ref)
        if not visible_group(group, req):
            raise SecurityGroupNotFound(group=ref)
        return group

    def _owned(self, req: Request, ref: str) -> SecurityGroup:
        """A group the caller may change: their project's own, or any for an
        admin (the host-wide ones change every project's guests)."""
        group = self._find(req, ref)
        check_changeable(group, req)
        return group

    def _group(self, group: SecurityGroup) -> dict[str, Any]:
        rules = [self._rule(r) for r in self.store.security_group_rules(group.id)]
        project = group.project_id or views.TENANT
        return {"id": group.id, "name": group.name, "description": group.description,
                "project_id": project, "tenant_id": project, "stateful": True,
                "security_group_rules": rules, "tags": [], "revision_number": 0,
                "created_at": views.iso_time(group.created_at),
                "updated_at": views.iso_time(group.created_at)}

    # -- rules ---------------------------------------------------------------
    def list_rules(self, req: Request) -> Response:
        seen = {g.id for g in self.store.security_groups() if visible_group(g, req)}
        rules = [r for r in self.store.security_group_rules(req.arg("security_group_id"))
                 if r.group_id in seen]
        return Response(200, {"security_group_rules": [self._rule(r) for r in rules]})

    def show_rule(self, req: Request) -> Response:
        rule = self.store.security_group_rule(req.params["id"])
        self._find(req, rule.group_id)
        return Response(200, {"security_group_rule": self._rule(rule)})

    def create_rule(self, req: Request) -> Response:
        body = parse.section(req.json(), "security_group_rule")
        parse.no_unknown(body, {"security_group_id", "direction", "ethertype", "protocol",
                                "port_range_min", "port_range_max", "remote_ip_prefix",
                                "remote_group_id", "description", "project_id", "tenant_id",
                                "remote_address_group_id"}, "security_group_rule")
        if parse.field(body, "ethertype", str, default="IPv4") != "IPv4":
            raise Invalid(reason="the vmops network is IPv4 only: ethertype must be IPv4")
        if body.get("remote_address_group_id") is not None:
            raise Invalid(reason="remote address groups are not supported")
        group = self._owned(req, parse.field(body, "security_group_id", str,
                                             required=True)).id
        remote = parse.field(body, "remote_group_id", str)
        if remote is not None:
            remote = self._find(req, remote).id
        protocol = parse.field(body, "protocol", (str, int), default=None)
        rule = self.network.add_rule(
            group, parse.field(body, "direction", str, required=True),
            _protocol(protocol),
            parse.field(body, "port_range_min", int), parse.field(body, "port_range_max", int),
            parse.field(body, "remote_ip_prefix", str), remote)
        return Response(201, {"security_group_rule": self._rule(rule)})

    def delete_rule(self, req: Request) -> Response:
        rule = self.store.security_group_rule(req.params["id"])
        self._owned(req, rule.group_id)
        self.network.delete_rule(rule.id)
        return Response(204)

    @staticmethod
    def _rule(rule: SecurityGroupRule) -> dict[str, Any]:
        return {"id": rule.id, "security_group_id": rule.group_id,
                "direction": rule.direction, "ethertype": "IPv4",
                "protocol": None if rule.protocol == "any" else rule.protocol,
                "port_range_min": rule.port_min, "port_range_max": rule.port_max,
                "remote_ip_prefix": rule.remote_cidr, "remote_group_id": rule.remote_group_id,
                "remote_address_group_id": None, "description": "",
                "project_id": views.TENANT, "tenant_id": views.TENANT,
                "revision_number": 0, "tags": [],
                "created_at": views.iso_time(rule.created_at),
                "updated_at": views.iso_time(rule.created_at)}

    # -- port forwards -------------------------------------------------------
    def list_forwards(self, req: Request) -> Response:
        server = req.arg("server")
        instance_id = self.compute.instance(server).id if server else None
        forwards = self.store.port_forwards(instance_id)
        return Response(200, {"port_forwards": [self._forward(f) for f in forwards]})

    def show_forward(self, req: Request) -> Response:
        return Response(200, {"port_forward": self._forward(
            self.store.port_forward(req.params["id"]))})

    def create_forward(self, req: Request) -> Response:
        body = parse.section(req.json(), "port_forward")
        parse.no_unknown(body, {"server", "protocol", "host_port", "guest_port",
                                "host_address"}, "port_forward")
        inst = self.compute.instance(parse.field(body, "server", str, required=True))
        fwd = self.network.add_forward(
            inst, parse.field(body, "protocol", str, default="tcp"),
            parse.field(body, "host_port", int, required=True),
            parse.field(body, "guest_port", int, required=True),
            parse.field(body, "host_address", str))
        return Response(201, {"port_forward": self._forward(fwd)})

    def delete_forward(self, req: Request) -> Response:
        self.network.remove_forward(self.store.port_forward(req.params["id"]).id)
        return Response(204)

    def _forward(self, fwd: PortForward) -> dict[str, Any]:
        try:
            name = self.store.instance(fwd.instance_id).name
        except Exception:  # noqa: BLE001 - a view never fails on a vanished instance
            name = fwd.instance_id
        guest = next((p.ip for p in self.store.ports(fwd.instance_id) if p.ip), None)
        return {"id": fwd.id, "server_id": fwd.instance_id, "server_name": name,
                "protocol": fwd.protocol, "host_address": fwd.host_address,
                "host_port": fwd.host_port, "guest_address": guest,
                "guest_port": fwd.guest_port, "created_at": views.iso_time(fwd.created_at)}


def _protocol(value: str | int | None) -> str:
    """Neutron's protocol: a name, an IP protocol number, or null (any)."""
    if value is None:
        return "any"
    numbers = {"6": "tcp", "17": "udp", "1": "icmp"}
    text = str(value).lower()
    return numbers.get(text, text)


def _printable(text: str, what: str) -> str:
    if len(text) > 255 or any(not c.isprintable() for c in text):
        raise Invalid(reason=f"{what} must be at most 255 printable characters")
    return text


