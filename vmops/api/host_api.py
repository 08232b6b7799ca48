"""Nova's host APIs at microversion 2.1, describing this one host:
``os-services``, ``os-hosts``, ``os-hypervisors``, ``os-availability-zone``
and ``/extensions``.

The vmops service plays every Nova service at once: it is its own
``nova-conductor`` and ``nova-scheduler`` (zone ``internal``) and the
``nova-compute`` of zone ``nova``, which is up while libvirt answers. An
admin may disable a service or force it down (``vmops/compute/services.py``:
a disabled or forced-down nova-compute takes no new servers, as Nova's
scheduler). What makes no sense for one host (powering it off through the
API, maintenance mode) answers 501 ``notImplemented``, as Nova does for
what a driver cannot do. All of these are admin calls
(the policy in ``policy.py`` says so), but the zone list without details.

Microversions up to 2.52: ``forced_down`` and the ``force-down`` action
from 2.11; ``cpu_info`` an object from 2.28; hypervisor paging (``limit``,
``marker``) from 2.33; ``os-hosts`` gone (404) from 2.43.
"""

from __future__ import annotations

import json
import time
from typing import Any

from vmops.api import parse, views
from vmops.api.server import Handler, Request, Response, Router
from vmops.compute import host_facts, services
from vmops.compute.manager import DOMAIN_PREFIX, Compute
from vmops.errors import Invalid, NotFound, NotSupported, VmopsError

P = views.API_PREFIX
ZONE = views.AVAILABILITY_ZONE
INTERNAL_ZONE = "internal"
HYPERVISOR_ID = 1
# (id, binary, topic, zone): Nova's services, all played by the vmops service.
SERVICES = ((1, "nova-conductor", "conductor", INTERNAL_ZONE),
            (2, "nova-scheduler", "scheduler", INTERNAL_ZONE),
            (3, "nova-compute", "compute", ZONE))
COMPUTE_BINARY = services.COMPUTE_BINARY


def add_routes(r: Router, compute: Compute) -> None:
    api = HostApi(compute)
    r.add("GET", f"{P}/os-services", api.list_services)
    r.add("PUT", f"{P}/os-services/{{action}}", api.update_service)
    r.add("GET", f"{P}/os-hosts", _before_2_43(api.list_hosts))
    r.add("GET", f"{P}/os-hosts/{{host}}", _before_2_43(api.show_host))
    r.add("PUT", f"{P}/os-hosts/{{host}}", _before_2_43(api.update_host))
    for action in ("startup", "shutdown", "reboot"):
        r.add("GET", f"{P}/os-hosts/{{host}}/{action}", _before_2_43(api.power_action))
    r.add("GET", f"{P}/os-hypervisors", api.list_hypervisors)
    r.add("GET", f"{P}/os-hypervisors/detail", api.list_hypervisors_detail)
    r.add("GET", f"{P}/os-hypervisors/statistics", api.hypervisor_statistics)
    r.add("GET", f"{P}/os-hypervisors/{{id}}", api.show_hypervisor)
    r.add("GET", f"{P}/os-hypervisors/{{id}}/uptime", api.hypervisor_uptime)
    r.add("GET", f"{P}/os-hypervisors/{{pattern}}/search", api.search_hypervisors)
    r.add("GET", f"{P}/os-hypervisors/{{pattern}}/servers", api.hypervisor_servers)
    r.add("GET", f"{P}/os-availability-zone", api.list_zones)
    r.add("GET", f"{P}/os-availability-zone/detail", api.list_zones_detail)
    r.add("GET", f"{P}/extensions", list_extensions)
    r.add("GET", f"{P}/extensions/{{alias}}", show_extension)


def _before_2_43(handler: Handler) -> Handler:
    """os-hosts is gone from microversion 2.43 (Nova: 404)."""
    def served(req: Request) -> Response:
        if req.at_least("2.43"):
            raise NotFound("os-hosts is not served from microversion 2.43: use "
                           "os-hypervisors and os-services")
        return handler(req)
    return served


def nova_time(ts: float) -> str:
    """Nova's service and action times: UTC, microseconds, no zone suffix."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}"


class HostNotFound(NotFound):
    msg_fmt = "Compute host %(host)s could not be found."


class HostApi:
    def __init__(self, compute: Compute) -> None:
        self.compute = compute

    def _up(self) -> bool:
        """nova-compute is up while the hypervisor answers."""
        try:
            self.compute.hv.list_uuids()
        except VmopsError:
            return False
        return True

    def _facts(self) -> host_facts.HostFacts:
        return host_facts.gather(self.compute.store.instances(),
                                 self.compute.settings.state_dir, self.compute.settings.listen)

    def _host(self, name: str) -> str:
        host = host_facts.hostname()
        if name != host:
            raise HostNotFound(host=name)
        return host

    # -- os-services ---------------------------------------------------------
    def _services(self, req: Request) -> list[dict[str, Any]]:
        """Each service as an admin left it (``vmops/compute/services.py``);
        updated_at is now for a running one (the vmops service answering is
        its heartbeat), or when an admin last changed it."""
        host, now, up = host_facts.hostname(), time.time(), self._up()
        out = []
        for ident, binary, _, zone in SERVICES:
            st = services.state(self.compute.store, binary, host)
            alive = (up or binary != COMPUTE_BINARY) and not st.forced_down
            out.append({"id": ident, "binary": binary, "host": host, "zone": zone,
                        "status": "disabled" if st.disabled else "enabled",
                        "state": "up" if alive else "down",
                        "updated_at": nova_time(now if alive else st.updated_at or now),
                        "disabled_reason": st.disabled_reason,
                        **({"forced_down": st.forced_down} if req.at_least("2.11") else {})})
        return out

    def list_services(self, req: Request) -> Response:
        services = self._services(req)
        for name in ("host", "binary"):
            wanted = req.arg(name)
            if wanted:
                services = [s for s in services if s[name] == wanted]
        return Response(200, {"services": services})

    def update_service(self, req: Request) -> Response:
        """PUT /os-services/enable, /disable, /disable-log-reason; from 2.11
        /force-down."""
        action = req.params["action"]
        actions = ("enable", "disable", "disable-log-reason") + (
            ("force-down",) if req.at_least("2.11") else ())
        if action not in actions:
            raise NotFound("Unknown action")
        body = req.json()
        if not isinstance(body, dict):
            raise Invalid(reason="the request body must be a JSON object with host and binary")
        parse.no_unknown(body, {"host", "binary", "disabled_reason"} | (
            {"forced_down"} if action == "force-down" else set()), "the request body")
        host = parse.field(body, "host", str, required=True)
        binary = parse.field(body, "binary", str, required=True)
        if host != host_facts.hostname() or binary not in {s[1] for s in SERVICES}:
            raise NotFound(f"Compute host {host} with binary {binary} could not be found.")
        reply: dict[str, Any] = {"host": host, "binary": binary}
        store = self.compute.store
        if action == "force-down":
            forced = parse.field(body, "forced_down", bool, required=True)
            services.update(store, binary, host, forced_down=forced)
            return Response(200, {"service": {**reply, "forced_down": forced}})
        if action == "enable":
            services.update(store, binary, host, disabled=False)
            return Response(200, {"service": {**reply, "status": "enabled"}})
        reason = None
        if action == "disable-log-reason":
            reason = parse.field(body, "disabled_reason", str, required=True)
            if not 1 <= len(reason) <= 255:
                raise Invalid(reason="disabled_reason is 1 to 255 characters")
            reply["disabled_reason"] = reason
        services.update(store, binary, host, disabled=True, reason=reason)
        return Response(200, {"service": {**reply, "status": "disabled"}})

    # -- os-hosts --------------------------------------------------------------
    def list_hosts(self, req: Request) -> Response:
        host = host_facts.hostname()
        hosts = [{"host_name": host, "service": topic, "zone": zone}
                 for _, _, topic, zone in SERVICES]
        zone = req.arg("zone")
        if zone:
            hosts = [h for h in hosts if h["zone"] == zone]
        return Response(200, {"hosts": hosts})

    def show_host(self, req: Request) -> Response:
        host = self._host(req.params["host"])
        facts = self._facts()

        def resource(project: str, cpu: int, memory_mb: int, disk_gb: int) -> dict[str, Any]:
            return {"resource": {"host": host, "project": project, "cpu": cpu,
                                 "memory_mb": memory_mb, "disk_gb": disk_gb}}

        per_project: dict[str, list[int]] = {}
        for inst in host_facts.on_host(self.compute.store.instances()):
            totals = per_project.setdefault(inst.project_id, [0, 0, 0])
            totals[0] += inst.flavor.vcpus
            totals[1] += inst.flavor.ram_mib
            totals[2] += inst.flavor.local_gb
        used_max = [sum(t[n] for t in per_project.values()) for n in range(3)]
        return Response(200, {"host": [
            resource("(total)", facts.vcpus, facts.memory_mb, facts.local_gb),
            resource("(used_now)", facts.vcpus_used, facts.memory_mb_used, facts.local_gb_used),
            resource("(used_max)", *used_max),
            *(resource(project, *totals) for project, totals in sorted(per_project.items()))]})

    def update_host(self, req: Request) -> Response:
        body = req.json()
        if not isinstance(body, dict) or not body:
            raise Invalid(reason='give "status" and/or "maintenance_mode": "enable" or '
                          '"disable"')
        parse.no_unknown(body, {"status", "maintenance_mode"}, "the request body")
        for name in body:
            value = body[name]
            if not isinstance(value, str) or value.strip().lower() not in ("enable", "disable"):
                raise Invalid(reason=f"{name} must be 'enable' or 'disable'")
        self._host(req.params["host"])
        raise NotSupported(reason="this host is the only one: it cannot be disabled or put "
                           "in maintenance mode through the API")

    def power_action(self, req: Request) -> Response:
        self._host(req.params["host"])
        raise NotSupported(reason="vmops does not power its host on, off or reboot it")

    # -- os-hypervisors --------------------------------------------------------
    def _compute_service(self) -> services.ServiceState:
        return services.state(self.compute.store, COMPUTE_BINARY, host_facts.hostname())

    def _brief(self, facts: host_facts.HostFacts) -> dict[str, Any]:
        """The hypervisor's state and status are its compute service's."""
        compute = self._compute_service()
        return {"id": HYPERVISOR_ID, "hypervisor_hostname": facts.hostname,
                "state": "up" if self._up() and not compute.forced_down else "down",
                "status": "disabled" if compute.disabled else "enabled"}

    def _detail(self, facts: host_facts.HostFacts, req: Request) -> dict[str, Any]:
        return {**self._brief(facts), "vcpus": facts.vcpus, "memory_mb": facts.memory_mb,
                "local_gb": facts.local_gb, "vcpus_used": facts.vcpus_used,
                "memory_mb_used": facts.memory_mb_used, "local_gb_used": facts.local_gb_used,
                "hypervisor_type": host_facts.HYPERVISOR_TYPE,
                "hypervisor_version": facts.hypervisor_version,
                "free_ram_mb": facts.free_ram_mb, "free_disk_gb": facts.free_disk_gb,
                "current_workload": facts.current_workload, "running_vms": facts.running_vms,
                "cpu_info": json.loads(facts.cpu_info) if req.at_least("2.28")
                else facts.cpu_info, "disk_available_least": facts.disk_available_least,
                "host_ip": facts.host_ip,
                "service": {"id": SERVICES[-1][0], "host": facts.hostname,
                            "disabled_reason": self._compute_service().disabled_reason}}

    def _hypervisor(self, ident: str) -> host_facts.HostFacts:
        if ident != str(HYPERVISOR_ID):
            raise NotFound(f"Hypervisor with ID '{ident}' could not be found.")
        return self._facts()

    def _page(self, req: Request) -> list[host_facts.HostFacts]:
        """The one hypervisor, paged as Nova's from 2.33 (``limit``, ``marker``:
        the id after which to start)."""
        facts = [self._facts()]
        if not req.at_least("2.33"):
            return facts
        marker, limit = req.arg("marker"), req.arg("limit")
        if marker is not None:
            if marker != str(HYPERVISOR_ID):
                raise Invalid(f"marker [{marker}] not found")
            facts = []
        if limit is not None:
            facts = facts[:parse.count_arg(limit, "limit")]
        return facts

    def list_hypervisors(self, req: Request) -> Response:
        return Response(200, {"hypervisors": [self._brief(f) for f in self._page(req)]})

    def list_hypervisors_detail(self, req: Request) -> Response:
        return Response(200, {"hypervisors": [self._detail(f, req) for f in self._page(req)]})

    def show_hypervisor(self, req: Request) -> Response:
        return Response(200, {"hypervisor": self._detail(self._hypervisor(req.params["id"]),
                                                         req)})

    def hypervisor_uptime(self, req: Request) -> Response:
        facts = self._hypervisor(req.params["id"])
        return Response(200, {"hypervisor": {**self._brief(facts),
                                             "uptime": host_facts.uptime_text()}})

    def hypervisor_statistics(self, req: Request) -> Response:
        f = self._facts()
        return Response(200, {"hypervisor_statistics": {
            "count": 1, "vcpus": f.vcpus, "memory_mb": f.memory_mb, "local_gb": f.local_gb,
            "vcpus_used": f.vcpus_used, "memory_mb_used": f.memory_mb_used,
            "local_gb_used": f.local_gb_used, "free_ram_mb": f.free_ram_mb,
            "free_disk_gb": f.free_disk_gb, "current_workload": f.current_workload,
            "running_vms": f.running_vms, "disk_available_least": f.disk_available_least}})

    def _matching(self, pattern: str) -> host_facts.HostFacts:
        """Nova matches hypervisor host names with SQL LIKE '%pattern%'."""
        facts = self._facts()
        if pattern.lower() not in facts.hostname.lower():
            raise NotFound(f"No hypervisor matching '{pattern}' could be found.")
        return facts

    def search_hypervisors(self, req: Request) -> Response:
        return Response(200, {"hypervisors": [self._brief(self._matching(
            req.params["pattern"]))]})

    def hypervisor_servers(self, req: Request) -> Response:
        """Nova lists ``servers`` only when there are some."""
        hypervisor = self._brief(self._matching(req.params["pattern"]))
        servers = [{"uuid": i.id, "name": i.domain_name or DOMAIN_PREFIX + i.name}
                   for i in host_facts.on_host(self.compute.store.instances())]
        if servers:
            hypervisor["servers"] = servers
        return Response(200, {"hypervisors": [hypervisor]})

    # -- os-availability-zone --------------------------------------------------
    def list_zones(self, req: Request) -> Response:
        return Response(200, {"availabilityZoneInfo": [
            {"zoneName": ZONE, "zoneState": {"available": True}, "hosts": None}]})

    def list_zones_detail(self, req: Request) -> Response:
        host, now, up = host_facts.hostname(), nova_time(time.time()), self._up()
        zones: dict[str, dict[str, Any]] = {}
        for _, binary, _, zone in SERVICES:
            alive = up or binary != COMPUTE_BINARY
            zones.setdefault(zone, {}).setdefault(host, {})[binary] = {
                "available": alive, "active": True, "updated_at": now}
        return Response(200, {"availabilityZoneInfo": [
            {"zoneName": name, "zoneState": {"available": True}, "hosts": hosts}
            for name, hosts in sorted(zones.items())]})


# -- /extensions: Nova still lists them at 2.1; these are the ones vmops serves -----
_NAMESPACE = "http://docs.openstack.org/compute/ext/fake_xml"
_UPDATED = "2014-12-03T00:00:00Z"
EXTENSIONS = (
    ("OS-DCF", "DiskConfig", "Disk Management Extension."),
    ("OS-EXT-AZ", "ExtendedAvailabilityZone", "Extended Availability Zone support."),
    ("OS-EXT-IMG-SIZE", "ImageSize", "Adds image size to image listings."),
    ("OS-EXT-IPS", "ExtendedIps", "Adds type parameter to the ip list."),
    ("OS-EXT-IPS-MAC", "ExtendedIpsMac", "Adds mac address parameter to the ip list."),
    ("OS-EXT-SRV-ATTR", "ExtendedServerAttributes", "Extended Server Attributes support."),
    ("OS-EXT-STS", "ExtendedStatus", "Extended Status support."),
    ("OS-FLV-DISABLED", "FlavorDisabled", "Support to show the disabled status of a flavor."),
    ("OS-FLV-EXT-DATA", "FlavorExtraData", "Provide additional data for flavors."),
    ("OS-SCH-HNT", "SchedulerHints", "Pass arbitrary key/value pairs to the scheduler."),
    ("OS-SRV-USG", "ServerUsage", "Adds launched_at and terminated_at on Servers."),
    ("os-aggregates", "Aggregates", "Admin-only aggregate administration."),
    ("os-availability-zone", "AvailabilityZone", "1. Add availability_zone to the Create "
     "Server API.\n2. Add availability zones describing."),
    ("os-config-drive", "ConfigDrive", "Config Drive Extension."),
    ("os-console-output", "ConsoleOutput", "Console log output support, with tailing "
     "ability."),
    ("os-create-server-ext", "Createserverext", "Extended support to the Create Server v1.1 "
     "API."),
    ("os-extended-volumes", "ExtendedVolumes", "Extended Volumes support."),
    ("os-flavor-access", "FlavorAccess", "Flavor access support."),
    ("os-flavor-extra-specs", "FlavorExtraSpecs", "Flavors extra specs support."),
    ("os-flavor-manage", "FlavorManage", "Flavor create/delete API support."),
    ("os-flavor-rxtx", "FlavorRxtx", "Support to show the rxtx status of a flavor."),
    ("os-flavor-swap", "FlavorSwap", "Support to show the swap status of a flavor."),
    ("os-hosts", "Hosts", "Admin-only host administration."),
    ("os-hypervisors", "Hypervisors", "Admin-only hypervisor administration."),
    ("os-instance-usage-audit-log", "OSInstanceUsageAuditLog", "Admin-only Task Log "
     "Monitoring."),
    ("os-instance-actions", "InstanceActions", "View a log of actions and events taken on "
     "an instance."),
    ("os-keypairs", "Keypairs", "Keypair Support."),
    ("os-networks", "Networks", "Admin-only Network Management Extension."),
    ("os-quota-class-sets", "QuotaClasses", "Quota classes management support."),
    ("os-quota-sets", "Quotas", "Quotas management support."),
    ("os-server-diagnostics", "ServerDiagnostics", "Allow Admins to view server "
     "diagnostics through server action."),
    ("os-server-group-quotas", "ServerGroupQuotas", "Adds quota support to server groups."),
    ("os-server-groups", "ServerGroups", "Server group support."),
    ("os-server-password", "ServerPassword", "Server password support."),
    ("os-services", "Services", "Services support."),
    ("os-simple-tenant-usage", "SimpleTenantUsage", "Simple tenant usage extension."),
    ("os-suspend-server", "SuspendServer", "Enable suspend/resume server actions."),
    ("os-used-limits", "UsedLimits", "Provide data on limited resources that are being "
     "used."),
)


def _extension(alias: str, name: str, description: str) -> dict[str, Any]:
    return {"alias": alias, "name": name, "description": description, "links": [],
            "namespace": _NAMESPACE, "updated": _UPDATED}


def list_extensions(req: Request) -> Response:
    """Sorted by alias, as Nova sorts them."""
    return Response(200, {"extensions": [_extension(*e) for e in sorted(EXTENSIONS)]})


def show_extension(req: Request) -> Response:
    for extension in EXTENSIONS:
        if extension[0] == req.params["alias"]:
            return Response(200, {"extension": _extension(*extension)})
    raise NotFound(f"Extension {req.params['alias']} could not be found.")
