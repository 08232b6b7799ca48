"""The OpenAPI paths of Nova's smaller APIs (``host_api``, ``quota_api``,
``server_extras``, ``server_groups_api``), with Nova's exact keys: each
object is closed (``additionalProperties: false``), as in Tempest's
response schemas, so the unit tests that check every answer against the
document check these keys too. Merged into ``openapi.document()``.
"""

from __future__ import annotations

from typing import Any

from vmops.api import quota_api
from vmops.api.openapi import (
    BOOL,
    INT,
    NULL_STR,
    NUM,
    STR,
    array,
    obj,
    ok,
    op,
    path_id,
    query,
)
from vmops.compute.quotas import RESOURCES
from vmops.compute.server_groups import POLICIES, SOFT_POLICIES

P = "/v2.1"
ID = {"type": ["integer", "string"]}
STR_DICT = {"type": "object", "additionalProperties": STR}
NO_BODY = ok(None, "204", "Done")
HYPERVISOR_PAGING = [query("limit", "from 2.33: at most this many"),
                     query("marker", "from 2.33: the hypervisors after this id")]
ANY_OBJECT = {"type": "object"}


def closed(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return obj(required, optional, extra=False)


def _host_paths() -> dict[str, Any]:
    service = closed({"id": ID, "binary": STR, "host": STR, "zone": STR, "status": STR,
                      "state": STR, "updated_at": NULL_STR, "disabled_reason": NULL_STR},
                     {"forced_down": BOOL})
    brief = {"id": ID, "hypervisor_hostname": STR, "state": STR, "status": STR}
    detail = closed({**brief, "vcpus": INT, "memory_mb": INT, "local_gb": INT,
                     "vcpus_used": INT, "memory_mb_used": INT, "local_gb_used": INT,
                     "hypervisor_type": STR, "hypervisor_version": INT, "free_ram_mb": INT,
                     "free_disk_gb": INT, "current_workload": INT, "running_vms": INT,
                     "cpu_info": {"type": ["string", "object"]},
                     "disk_available_least": {"type": ["integer", "null"]},
                     "host_ip": NULL_STR,
                     "service": closed({"id": ID, "host": STR, "disabled_reason": NULL_STR})})
    stats = closed({name: INT for name in (
        "count", "vcpus", "memory_mb", "local_gb", "vcpus_used", "memory_mb_used",
        "local_gb_used", "free_ram_mb", "free_disk_gb", "current_workload", "running_vms",
        "disk_available_least")})
    resource = closed({"resource": closed({"host": STR, "project": STR, "cpu": INT,
                                           "memory_mb": INT, "disk_gb": INT})})
    zone_state = closed({"available": BOOL})
    zone_service = closed({"available": BOOL, "active": BOOL, "updated_at": NULL_STR})
    zone_hosts = {"type": "object", "additionalProperties": {
        "type": "object", "additionalProperties": zone_service}}
    extension = closed({"alias": STR, "name": STR, "description": STR, "links": array(STR),
                        "namespace": STR, "updated": STR})
    host = [{"name": "host", "in": "path", "required": True, "schema": STR,
             "description": "the host's name"}]
    hyp = [path_id("hypervisor")]
    pattern = [{"name": "pattern", "in": "path", "required": True, "schema": STR,
                "description": "part of a hypervisor host name"}]
    hyp_list = closed({"hypervisors": array(closed(brief))})
    not_supported = "501 notImplemented after the checks: one host cannot do it"
    return {
        f"{P}/os-services": {"get": op(
            "Nova's services, all played by vmops (admin)",
            ok(closed({"services": array(service)})),
            params=[query("host", "only this host's"), query("binary", "only this binary")])},
        f"{P}/os-services/{{action}}": {
            "parameters": [{"name": "action", "in": "path", "required": True,
                            "schema": {"enum": ["enable", "disable", "disable-log-reason",
                                                "force-down"]},
                            "description": "what to do (force-down from 2.11)"}],
            "put": op("enable, disable (with a reason) or force down a service (admin); a "
                      "disabled or forced-down nova-compute takes no new servers",
                      ok(closed({"service": closed({"host": STR, "binary": STR},
                                                   {"status": STR, "forced_down": BOOL,
                                                    "disabled_reason": STR})})),
                      body=closed({"host": STR, "binary": STR},
                                  {"disabled_reason": STR, "forced_down": BOOL}))},
        f"{P}/os-hosts": {"get": op("This host, once per service (admin)", ok(closed(
            {"hosts": array(closed({"host_name": STR, "service": STR, "zone": STR}))})),
            params=[query("zone", "only this zone's")])},
        f"{P}/os-hosts/{{host}}": {
            "parameters": host,
            "get": op("The host's resources: total, used now, used at most, per project "
                      "(admin)", ok(closed({"host": array(resource)}))),
            "put": op(f"Enable, disable or maintain the host (admin; {not_supported})",
                      ok(closed({"host": STR}, {"status": STR, "maintenance_mode": STR})),
                      body=closed({}, {"status": STR, "maintenance_mode": STR}))},
        **{f"{P}/os-hosts/{{host}}/{action}": {"parameters": host, "get": op(
            f"Power the host ({action}) (admin; {not_supported})",
            ok(closed({"host": STR, "power_action": STR})))}
           for action in ("startup", "shutdown", "reboot")},
        f"{P}/os-hypervisors": {"get": op("This host's hypervisor (admin)", ok(hyp_list),
                                          params=HYPERVISOR_PAGING)},
        f"{P}/os-hypervisors/detail": {"get": op(
            "This host's hypervisor, with its resources (admin)",
            ok(closed({"hypervisors": array(detail)})), params=HYPERVISOR_PAGING)},
        f"{P}/os-hypervisors/statistics": {"get": op(
            "Totals over the hypervisors (this one) (admin)",
            ok(closed({"hypervisor_statistics": stats})))},
        f"{P}/os-hypervisors/{{id}}": {"parameters": hyp, "get": op(
            "Show the hypervisor (id 1) (admin)", ok(closed({"hypervisor": detail})))},
        f"{P}/os-hypervisors/{{id}}/uptime": {"parameters": hyp, "get": op(
            "The host's uptime, as uptime(1) prints it (admin)",
            ok(closed({"hypervisor": closed({**brief, "uptime": STR})})))},
        f"{P}/os-hypervisors/{{pattern}}/search": {"parameters": pattern, "get": op(
            "Hypervisors whose host name contains the pattern (admin)", ok(hyp_list))},
        f"{P}/os-hypervisors/{{pattern}}/servers": {"parameters": pattern, "get": op(
            "...and their servers (listed only when there are some) (admin)",
            ok(closed({"hypervisors": array(closed(
                brief, {"servers": array(closed({"uuid": STR, "name": STR}))}))})))},
        f"{P}/os-availability-zone": {"get": op("The zones: nova", ok(closed(
            {"availabilityZoneInfo": array(closed({"zoneName": STR, "zoneState": zone_state,
                                                   "hosts": {"type": "null"}}))})))},
        f"{P}/os-availability-zone/detail": {"get": op(
            "The zones with their hosts and services (admin)", ok(closed(
                {"availabilityZoneInfo": array(closed({"zoneName": STR,
                                                       "zoneState": zone_state,
                                                       "hosts": zone_hosts}))})))},
        f"{P}/extensions": {"get": op("Nova's extensions that vmops serves",
                                      ok(closed({"extensions": array(extension)})))},
        f"{P}/extensions/{{alias}}": {
            "parameters": [{"name": "alias", "in": "path", "required": True, "schema": STR,
                            "description": "the extension's alias"}],
            "get": op("One extension", ok(closed({"extension": extension})))},
    }


def _quota_paths() -> dict[str, Any]:
    # What some microversions leave out is optional; the rest is always there.
    optional_limits = (*quota_api.NETWORK_LIMITS, "maxImageMeta")
    every_limit = (*quota_api.LIMIT_NAMES.values(), "maxImageMeta",
                   *quota_api.USED_NAMES.values())
    absolute = closed({n: INT for n in every_limit if n not in optional_limits},
                      {n: INT for n in optional_limits})
    sometimes = (*quota_api.NETWORK_QUOTAS, *quota_api.SERVER_GROUP_QUOTAS)
    always = [n for n in RESOURCES if n not in sometimes]
    quota_set = closed({n: INT for n in always}, {n: INT for n in sometimes})
    with_id = closed({"id": STR, **{n: INT for n in always}}, {n: INT for n in sometimes})
    use = closed({"limit": INT, "in_use": INT, "reserved": INT})
    detail = closed({"id": STR, **{n: use for n in always}}, {n: use for n in sometimes})
    quota_values = {name: {"type": ["integer", "string"]} for name in RESOURCES}
    server_usage = closed({
        "instance_id": STR, "name": STR, "tenant_id": STR, "hours": NUM, "memory_mb": INT,
        "local_gb": INT, "vcpus": INT, "flavor": STR, "started_at": STR,
        "ended_at": NULL_STR, "state": STR, "uptime": INT})
    totals = {"tenant_id": STR, "total_hours": NUM, "total_local_gb_usage": NUM,
              "total_memory_mb_usage": NUM, "total_vcpus_usage": NUM, "start": STR,
              "stop": STR}
    project = [{"name": "project", "in": "path", "required": True, "schema": STR,
                "description": "a project's id"}]
    period = [query("start", "from (UTC, YYYY-MM-DDTHH:MM:SS[.ffffff]); default now"),
              query("end", "to; default now"),
              query("limit", "from 2.40: at most this many servers (1000 at most)"),
              query("marker", "from 2.40: the servers after this one")]
    next_links = array(closed({"href": STR, "rel": STR}))
    return {
        f"{P}/limits": {"get": op(
            "The project's absolute limits and usage (rate limits: none)",
            ok(closed({"limits": closed({"rate": array(ANY_OBJECT), "absolute": absolute})})),
            params=[query("tenant_id", "another project's (admin)")])},
        f"{P}/os-quota-sets/{{project}}": {
            "parameters": project,
            "get": op("A project's quotas (its own, or the defaults)",
                      ok(closed({"quota_set": with_id})),
                      params=[query("user_id", "accepted; quotas are per project")]),
            "put": op("Set some of a project's quotas; force: even below what it uses "
                      "(admin)", ok(closed({"quota_set": quota_set})),
                      body=closed({"quota_set": closed({}, {**quota_values, "force": {
                          "type": ["boolean", "string"]}})})),
            "delete": op("Back to the defaults (admin)", ok(None, "202", "Accepted"))},
        f"{P}/os-quota-sets/{{project}}/defaults": {"parameters": project, "get": op(
            "The default quotas (the quota_* settings)", ok(closed({"quota_set": with_id})))},
        f"{P}/os-quota-sets/{{project}}/detail": {"parameters": project, "get": op(
            "A project's quotas with what it uses", ok(closed({"quota_set": detail})))},
        f"{P}/os-quota-class-sets/{{name}}": {
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": STR,
                            "description": "the class (vmops has one: its defaults)"}],
            "get": op("The default quotas", ok(closed({"quota_class_set": with_id}))),
            "put": op("Change the defaults over the quota_* settings (admin)", ok(closed(
                {"quota_class_set": quota_set})), body=closed(
                {"quota_class_set": closed({}, quota_values)}))},
        f"{P}/os-simple-tenant-usage": {"get": op(
            "Every project's usage over a period (admin)",
            ok(closed({"tenant_usages": array(closed(
                totals, {"server_usages": array(server_usage)}))},
                {"tenant_usages_links": next_links})),
            params=[*period, query("detailed", "1: with each server's usage")])},
        f"{P}/os-simple-tenant-usage/{{project}}": {"parameters": project, "get": op(
            "A project's usage over a period ({} if it had none)",
            ok(closed({"tenant_usage": {"oneOf": [
                closed({**totals, "server_usages": array(server_usage)}),
                {"type": "object", "maxProperties": 0}]}},
                {"tenant_usage_links": next_links})), params=period)},
    }


def _server_paths() -> dict[str, Any]:
    server = [path_id("server")]
    metadata = closed({"metadata": STR_DICT})
    meta = closed({"meta": STR_DICT})
    address = closed({"version": INT, "addr": STR})
    addresses = {"type": "object", "additionalProperties": array(address)}
    action = {"action": STR, "instance_uuid": STR, "request_id": STR, "user_id": STR,
              "project_id": STR, "start_time": STR, "message": NULL_STR}
    event = closed({"event": STR, "start_time": STR, "finish_time": NULL_STR,
                    "result": NULL_STR}, {"traceback": NULL_STR})
    key = {"name": "key", "in": "path", "required": True, "schema": STR,
           "description": "a metadata key"}
    return {
        f"{P}/servers/{{id}}/metadata": {
            "parameters": server,
            "get": op("The server's metadata", ok(metadata)),
            "post": op("Add or change metadata items, keeping the others", ok(metadata),
                       body=metadata),
            "put": op("Replace all the metadata", ok(metadata), body=metadata)},
        f"{P}/servers/{{id}}/metadata/{{key}}": {
            "parameters": [*server, key],
            "get": op("One metadata item", ok(meta)),
            "put": op("Set one metadata item (the key in the path and body)", ok(meta),
                      body=meta),
            "delete": op("Remove one metadata item", NO_BODY)},
        f"{P}/servers/{{id}}/ips": {"parameters": server, "get": op(
            "The server's addresses by network", ok(closed({"addresses": addresses})))},
        f"{P}/servers/{{id}}/ips/{{network}}": {
            "parameters": [*server, {"name": "network", "in": "path", "required": True,
                                     "schema": STR, "description": "a network's name"}],
            "get": op("The server's addresses on one network", ok(addresses))},
        f"{P}/servers/{{id}}/os-server-password": {
            "parameters": server,
            "get": op("The password a guest posted: always empty (no metadata service)",
                      ok(closed({"password": STR}))),
            "delete": op("Clear it (nothing to clear)", NO_BODY)},
        f"{P}/servers/{{id}}/os-instance-actions": {"parameters": server, "get": op(
            "The actions taken on the server, newest first",
            ok(closed({"instanceActions": array(closed(action))})))},
        f"{P}/servers/{{id}}/os-instance-actions/{{request_id}}": {
            "parameters": [*server, {"name": "request_id", "in": "path", "required": True,
                                     "schema": STR, "description": "the request's id"}],
            "get": op("One action; its events for admins",
                      ok(closed({"instanceAction": closed(action,
                                                          {"events": array(event)})})))},
    }


def _server_group_paths() -> dict[str, Any]:
    policy = {"enum": [*POLICIES, *SOFT_POLICIES]}
    group = closed({"id": STR, "name": STR, "members": array(STR)},
                   {"policies": array(policy), "metadata": ANY_OBJECT, "policy": policy,
                    "rules": ANY_OBJECT, "project_id": STR, "user_id": STR})
    create = closed({"server_group": closed({"name": STR}, {
        "policies": array(policy), "policy": policy, "rules": ANY_OBJECT})})
    return {
        f"{P}/os-server-groups": {
            "get": op("The project's server groups (all_projects: every one, admin)",
                      ok(closed({"server_groups": array(group)})),
                      params=[query("all_projects", "admins: every project's"),
                              query("offset", "skip this many"),
                              query("limit", "at most this many")]),
            "post": op("Create a server group (affinity or anti-affinity)",
                       ok(closed({"server_group": group})), body=create)},
        f"{P}/os-server-groups/{{id}}": {
            "parameters": [path_id("server group")],
            "get": op("Show a server group", ok(closed({"server_group": group}))),
            "delete": op("Delete a server group (its members leave it)", NO_BODY)},
    }


def _flavor_paths() -> dict[str, Any]:
    flavor = [path_id("flavor")]
    access = closed({"flavor_access": array(closed({"flavor_id": STR, "tenant_id": STR}))})
    tenant = closed({"tenant": STR})
    specs = closed({"extra_specs": STR_DICT})
    key = {"name": "key", "in": "path", "required": True, "schema": STR,
           "description": "an extra spec's key"}
    return {
        f"{P}/flavors/{{id}}/os-flavor-access": {"parameters": flavor, "get": op(
            "The projects that may use a private flavor (404 for a public one)",
            ok(access))},
        f"{P}/flavors/{{id}}/action": {"parameters": flavor, "post": op(
            "addTenantAccess or removeTenantAccess: give a project access to a private "
            "flavor, or take it back; answers the access list", ok(access),
            body={"oneOf": [closed({"addTenantAccess": tenant}),
                            closed({"removeTenantAccess": tenant})]})},
        f"{P}/flavors/{{id}}/os-extra_specs": {
            "parameters": flavor,
            "get": op("A flavor's extra specs (kept and shown; vmops reads none)", ok(specs)),
            "post": op("Add or change extra specs, keeping the others; answers those given",
                       ok(specs), body=specs)},
        f"{P}/flavors/{{id}}/os-extra_specs/{{key}}": {
            "parameters": [*flavor, key],
            "get": op("One extra spec, as {key: value}", ok(STR_DICT)),
            "put": op("Set one extra spec: the body is {key: value}, the key the path's",
                      ok(STR_DICT), body=STR_DICT),
            "delete": op("Remove one extra spec", ok(None))},
    }


def _aggregate_paths() -> dict[str, Any]:
    basic = {"id": INT, "name": STR, "availability_zone": NULL_STR, "created_at": STR,
             "updated_at": NULL_STR, "deleted": BOOL, "deleted_at": NULL_STR}
    since_241 = {"uuid": STR}
    created = closed(basic, since_241)
    aggregate = closed({**basic, "hosts": array(STR), "metadata": STR_DICT}, since_241)
    one = closed({"aggregate": aggregate})
    fields = closed({}, {"name": STR, "availability_zone": NULL_STR})
    host = closed({"host": STR})
    metadata = closed({"metadata": {"type": "object",
                                    "additionalProperties": NULL_STR}})
    ident = [path_id("aggregate")]
    return {
        f"{P}/os-aggregates": {
            "get": op("Every host aggregate", ok(closed({"aggregates": array(aggregate)}))),
            "post": op("Create a host aggregate (name, and an availability zone or none)",
                       ok(closed({"aggregate": created})),
                       body=closed({"aggregate": fields}))},
        f"{P}/os-aggregates/{{id}}": {
            "parameters": ident,
            "get": op("Show an aggregate", ok(one)),
            "put": op("Rename an aggregate and/or change its availability zone", ok(one),
                      body=closed({"aggregate": fields})),
            "delete": op("Delete an aggregate that holds no host", ok(None))},
        f"{P}/os-aggregates/{{id}}/action": {"parameters": ident, "post": op(
            "add_host or remove_host (this host is the only one), or set_metadata (null "
            "removes an item; availability_zone is the aggregate's zone)", ok(one),
            body={"oneOf": [closed({"add_host": host}), closed({"remove_host": host}),
                            closed({"set_metadata": metadata})]})},
    }


def _image_metadata_paths() -> dict[str, Any]:
    image = [path_id("image")]
    metadata = closed({"metadata": STR_DICT})
    meta = closed({"meta": STR_DICT})
    key = {"name": "key", "in": "path", "required": True, "schema": STR,
           "description": "a metadata key"}
    return {
        f"{P}/images/{{id}}/metadata": {
            "parameters": image,
            "get": op("An image's metadata: its Glance user properties (before 2.39)",
                      ok(metadata)),
            "post": op("Add or change metadata items, keeping the others", ok(metadata),
                       body=metadata),
            "put": op("Replace all the metadata", ok(metadata), body=metadata)},
        f"{P}/images/{{id}}/metadata/{{key}}": {
            "parameters": [*image, key],
            "get": op("One metadata item", ok(meta)),
            "put": op("Set one metadata item (the key in the path and body)", ok(meta),
                      body=meta),
            "delete": op("Remove one metadata item", NO_BODY)},
    }


def _diagnostics_paths() -> dict[str, Any]:
    count = {"type": ["integer", "null"]}
    nic = closed({name: count for name in (
        "rx_octets", "rx_errors", "rx_drop", "rx_packets", "rx_rate", "tx_octets",
        "tx_errors", "tx_drop", "tx_packets", "tx_rate")} | {"mac_address": NULL_STR})
    disk = closed({name: count for name in (
        "read_bytes", "read_requests", "write_bytes", "write_requests", "errors_count")})
    standard = closed({
        "state": {"enum": ["pending", "running", "paused", "shutdown", "crashed",
                           "suspended"]},
        "driver": STR, "hypervisor": NULL_STR, "hypervisor_os": NULL_STR, "uptime": count,
        "config_drive": BOOL, "num_cpus": INT, "num_nics": INT, "num_disks": INT,
        "memory_details": closed({"maximum": count, "used": count}),
        "cpu_details": array(closed({"id": count, "time": count, "utilisation": count})),
        "nic_details": array(nic), "disk_details": array(disk)})
    driver_body = {"type": "object", "additionalProperties": count}
    return {f"{P}/servers/{{id}}/diagnostics": {"parameters": [path_id("server")], "get": op(
        "A server's statistics from libvirt: the libvirt driver's counters before 2.48, "
        "Nova's standard body from 2.48 (admin)",
        ok({"oneOf": [standard, driver_body]}))}}


def _usage_audit_paths() -> dict[str, Any]:
    host_log = closed({"state": STR, "instances": INT, "errors": INT, "message": STR})
    audit = closed({
        "hosts_not_run": array(STR), "log": {"type": "object", "additionalProperties": host_log},
        "num_hosts": INT, "num_hosts_done": INT, "num_hosts_not_run": INT,
        "num_hosts_running": INT, "overall_status": STR, "period_beginning": STR,
        "period_ending": STR, "total_errors": INT, "total_instances": INT})
    return {
        f"{P}/os-instance_usage_audit_log": {"get": op(
            "The usage audit of the last whole month (UTC) before now",
            ok(closed({"instance_usage_audit_logs": audit})))},
        f"{P}/os-instance_usage_audit_log/{{before}}": {
            "parameters": [{"name": "before", "in": "path", "required": True, "schema": STR,
                            "description": "a UTC time, YYYY-MM-DD HH:MM:SS[.ffffff]"}],
            "get": op("The usage audit of the last whole month (UTC) before that time",
                      ok(closed({"instance_usage_audit_log": audit})))},
    }


def _network_paths() -> dict[str, Any]:
    fields = {"id": STR, "label": STR, "cidr": NULL_STR, "netmask": NULL_STR,
              "gateway": NULL_STR, "broadcast": NULL_STR, "dns1": NULL_STR, "dns2": NULL_STR,
              "cidr_v6": NULL_STR, "gateway_v6": NULL_STR, "netmask_v6": NULL_STR}
    admin: dict[str, Any] = {name: {} for name in (
        "created_at", "updated_at", "deleted_at", "deleted", "injected", "bridge", "vlan",
        "vpn_public_address", "vpn_public_port", "vpn_private_address", "dhcp_start",
        "project_id", "host", "bridge_interface", "multi_host", "priority", "rxtx_base",
        "mtu", "dhcp_server", "enable_dhcp", "share_address")}
    network = closed(fields, admin)
    return {
        f"{P}/os-networks": {"get": op(
            "The vmops network, as Nova shows a Neutron network (before 2.36); admins see "
            "the admin fields too", ok(closed({"networks": array(network)})))},
        f"{P}/os-networks/{{id}}": {"parameters": [path_id("network (vmops)")], "get": op(
            "Show the vmops network", ok(closed({"network": network})))},
    }


def _security_group_paths() -> dict[str, Any]:
    port = {"type": ["integer", "null"]}
    rule = closed({"id": STR, "parent_group_id": STR, "ip_protocol": NULL_STR,
                   "from_port": port, "to_port": port,
                   "group": closed({}, {"name": STR, "tenant_id": STR}),
                   "ip_range": closed({}, {"cidr": STR})})
    group = closed({"id": STR, "name": STR, "description": STR, "tenant_id": STR,
                    "rules": array(rule)})
    fields = closed({"security_group": closed({"name": STR}, {"description": STR})})
    rule_body = closed({"security_group_rule": closed({"parent_group_id": STR}, {
        "ip_protocol": NULL_STR, "from_port": {"type": ["integer", "string", "null"]},
        "to_port": {"type": ["integer", "string", "null"]}, "cidr": NULL_STR,
        "group_id": NULL_STR})})
    ident = [path_id("security group (a UUID)")]
    accepted = ok(None, "202", "Accepted")
    return {
        f"{P}/os-security-groups": {
            "get": op("Security groups, with their ingress rules (before 2.36)",
                      ok(closed({"security_groups": array(group)}))),
            "post": op("Create a security group", ok(closed({"security_group": group})),
                       body=fields),
            "delete": op("No group named: always 404 (Nova's answer)", {})},
        f"{P}/os-security-groups/{{id}}": {
            "parameters": ident,
            "get": op("Show a security group", ok(closed({"security_group": group}))),
            "put": op("Rename a security group or change its description",
                      ok(closed({"security_group": group})), body=fields),
            "delete": op("Delete a security group (not default, nor one in use)", accepted)},
        f"{P}/os-security-group-rules": {"post": op(
            "Add an ingress rule: ip_protocol tcp, udp or icmp with from_port/to_port, and a "
            "cidr (default 0.0.0.0/0) or a source group_id",
            ok(closed({"security_group_rule": rule})), body=rule_body)},
        f"{P}/os-security-group-rules/{{id}}": {
            "parameters": [path_id("security group rule (a UUID)")],
            "delete": op("Delete a rule", accepted)},
    }


def paths() -> dict[str, Any]:
    return {**_host_paths(), **_quota_paths(), **_server_paths(), **_server_group_paths(),
            **_flavor_paths(), **_aggregate_paths(), **_image_metadata_paths(),
            **_diagnostics_paths(), **_usage_audit_paths(), **_network_paths(),
            **_security_group_paths()}
