"""Nova's ``os-networks`` proxy (deprecated, gone from microversion 2.36):
the vmops network, as Nova shows a Neutron network.

Its id and label are ``vmops``, the name a server's ``networks`` entry and
``addresses`` use. A server's user-mode NIC (``"uuid": "user"``) is on no
network anyone reaches and is not listed; with the vmops network off (no
bridge made yet) the list is empty. Admins see Nova's admin fields too,
most of them null as for a Neutron network.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from vmops.api import views
from vmops.api.server import Request, Response, Router
from vmops.errors import NotFound
from vmops.network.manager import NETWORK_NAME
from vmops.store import NetworkRecord, Store

P = views.API_PREFIX
_ADMIN_FIELDS = ("created_at", "updated_at", "deleted_at", "deleted", "injected", "bridge",
                 "vlan", "vpn_public_address", "vpn_public_port", "vpn_private_address",
                 "dhcp_start", "project_id", "host", "bridge_interface", "multi_host",
                 "priority", "rxtx_base", "mtu", "dhcp_server", "enable_dhcp",
                 "share_address")


def add_routes(r: Router, store: Store) -> None:
    api = NetworksApi(store)
    r.add("GET", f"{P}/os-networks", api.list)
    r.add("GET", f"{P}/os-networks/{{id}}", api.show)


def view(record: NetworkRecord, admin: bool) -> dict[str, Any]:
    net = ipaddress.IPv4Network(record.cidr)
    gateway = str(net.network_address + 1)
    body: dict[str, Any] = {
        "id": NETWORK_NAME, "label": NETWORK_NAME, "cidr": record.cidr,
        "netmask": str(net.netmask), "gateway": gateway, "broadcast": str(net.broadcast_address),
        "dns1": gateway, "dns2": None, "cidr_v6": None, "gateway_v6": None,
        "netmask_v6": None}
    if admin:
        body.update(dict.fromkeys(_ADMIN_FIELDS))
        body.update(bridge=record.bridge, deleted=False, injected=False, multi_host=False,
                    dhcp_start=str(net.network_address + 2), dhcp_server=gateway,
                    enable_dhcp=True, share_address=False,
                    created_at=views.iso_time(record.created_at))
    return body


class NetworksApi:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _networks(self, req: Request) -> list[NetworkRecord]:
        if req.at_least("2.36"):
            raise NotFound("os-networks is not served from microversion 2.36: use the "
                           "network service")
        record = self.store.network(NETWORK_NAME)
        return [record] if record is not None else []

    def list(self, req: Request) -> Response:
        return Response(200, {"networks": [view(n, req.context.is_admin)
                                           for n in self._networks(req)]})

    def show(self, req: Request) -> Response:
        for record in self._networks(req):
            if req.params["id"] == NETWORK_NAME:
                return Response(200, {"network": view(record, req.context.is_admin)})
        raise NotFound("Network could not be found.")
