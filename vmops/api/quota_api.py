"""Nova's limits and quota APIs at microversion 2.1: ``/limits``,
``os-quota-sets``, ``os-quota-class-sets`` and ``os-simple-tenant-usage``.

The limits are the ones vmops enforces (``vmops/compute/quotas.py``). A
member sees their own project's; an admin any project's. Updating quotas
and listing every project's usage are admin calls (``policy.py``).

Microversions up to 2.52: the network quotas and limits go from 2.36
(quota sets, /limits), ``maxImageMeta`` from 2.39; usage is paged
(``limit``, ``marker``, ``tenant_usage[s]_links``) from 2.40; quota class
sets show the server group quotas and drop the network ones from 2.50.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from vmops.api import parse, views
from vmops.api.server import Request, Response, Router
from vmops.compute import quotas, usage
from vmops.compute.manager import Compute
from vmops.errors import Forbidden, Invalid, NotFound

P = views.API_PREFIX
# /limits' absolute names for each quota (Nova's views/limits.py).
LIMIT_NAMES = {"instances": "maxTotalInstances", "cores": "maxTotalCores",
               "ram": "maxTotalRAMSize", "key_pairs": "maxTotalKeypairs",
               "floating_ips": "maxTotalFloatingIps", "metadata_items": "maxServerMeta",
               "injected_files": "maxPersonality",
               "injected_file_content_bytes": "maxPersonalitySize",
               "security_groups": "maxSecurityGroups",
               "security_group_rules": "maxSecurityGroupRules",
               "server_groups": "maxServerGroups",
               "server_group_members": "maxServerGroupMembers"}
NETWORK_QUOTAS = ("floating_ips", "fixed_ips", "security_groups", "security_group_rules")
NETWORK_LIMITS = ("maxTotalFloatingIps", "totalFloatingIpsUsed", "maxSecurityGroups",
                  "totalSecurityGroupsUsed", "maxSecurityGroupRules")
SERVER_GROUP_QUOTAS = ("server_groups", "server_group_members")
MAX_USAGE_PAGE = 1000  # Nova's max_limit
USED_NAMES = {"instances": "totalInstancesUsed", "cores": "totalCoresUsed",
              "ram": "totalRAMUsed", "floating_ips": "totalFloatingIpsUsed",
              "security_groups": "totalSecurityGroupsUsed",
              "server_groups": "totalServerGroupsUsed"}


def add_routes(r: Router, compute: Compute) -> None:
    api = QuotaApi(compute)
    r.add("GET", f"{P}/limits", api.limits)
    r.add("GET", f"{P}/os-quota-sets/{{project}}", api.show_quotas)
    r.add("PUT", f"{P}/os-quota-sets/{{project}}", api.update_quotas)
    r.add("DELETE", f"{P}/os-quota-sets/{{project}}", api.reset_quotas)
    r.add("GET", f"{P}/os-quota-sets/{{project}}/defaults", api.default_quotas)
    r.add("GET", f"{P}/os-quota-sets/{{project}}/detail", api.quota_details)
    r.add("GET", f"{P}/os-quota-class-sets/{{name}}", api.show_quota_class)
    r.add("PUT", f"{P}/os-quota-class-sets/{{name}}", api.update_quota_class)
    r.add("GET", f"{P}/os-simple-tenant-usage", api.list_usage)
    r.add("GET", f"{P}/os-simple-tenant-usage/{{project}}", api.show_usage)


def own_project(req: Request, project_id: str) -> str:
    """``project_id`` if the caller may see it: their own, or any for an admin."""
    if not req.context.is_admin and project_id != req.context.project_id:
        raise Forbidden(f"Policy doesn't allow access to project {project_id}'s "
                        "quotas or usage.")
    return project_id


class QuotaApi:
    def __init__(self, compute: Compute) -> None:
        self.compute = compute
        self.quotas = compute.quotas

    # -- /limits ---------------------------------------------------------------
    def limits(self, req: Request) -> Response:
        """Nova 2.1: ``?tenant_id=`` shows another project's (admins only)."""
        project = own_project(req, req.arg("tenant_id") or req.context.project_id)
        limits = self.quotas.limits(project)
        used = self.quotas.usage(project)
        absolute = {name: limits[q] for q, name in LIMIT_NAMES.items()}
        absolute["maxImageMeta"] = limits["metadata_items"]
        absolute.update({name: used[q] for q, name in USED_NAMES.items()})
        gone = (NETWORK_LIMITS if req.at_least("2.36") else ()) + (
            ("maxImageMeta",) if req.at_least("2.39") else ())
        return Response(200, {"limits": {"rate": [], "absolute": _without(absolute, gone)}})

    # -- os-quota-sets -----------------------------------------------------------
    def show_quotas(self, req: Request) -> Response:
        """``?user_id=``: that user's limits (the project's where they have
        none of their own)."""
        project = own_project(req, req.params["project"])
        return Response(200, {"quota_set": {"id": project, **_set_keys(
            req, self.quotas.limits(project, req.arg("user_id") or ""))}})

    def default_quotas(self, req: Request) -> Response:
        return Response(200, {"quota_set": {"id": req.params["project"],
                                            **_set_keys(req, self.quotas.defaults())}})

    def quota_details(self, req: Request) -> Response:
        project = own_project(req, req.params["project"])
        user_id = req.arg("user_id") or ""
        limits = self.quotas.limits(project, user_id)
        used = self.quotas.usage(project, user_id or req.context.user_id,
                                 per_user=bool(user_id))
        return Response(200, {"quota_set": {"id": project, **_set_keys(req, {
            name: {"limit": limits[name], "in_use": used[name], "reserved": 0}
            for name in quotas.RESOURCES})}})

    def update_quotas(self, req: Request) -> Response:
        """``?user_id=``: that user's limits, each at most the project's."""
        values, force = _quota_body(req.json(), "quota_set", _set_names(req),
                                    allow_force=True)
        limits = self.quotas.update(req.params["project"], values, force,
                                    req.arg("user_id") or "")
        return Response(200, {"quota_set": _set_keys(req, limits)})

    def reset_quotas(self, req: Request) -> Response:
        """The project's limits and its users' back to the defaults; with
        ``?user_id=``, only that user's."""
        self.quotas.reset(req.params["project"], req.arg("user_id") or None)
        return Response(202)

    # -- os-quota-class-sets: "default" is every project's defaults ----------------
    def show_quota_class(self, req: Request) -> Response:
        name = _class_name(req.params["name"])
        return Response(200, {"quota_class_set": {"id": name, **_class_keys(
            req, self.quotas.class_limits(name))}})

    def update_quota_class(self, req: Request) -> Response:
        """Nova's: the values are kept over the settings' (admin)."""
        name = _class_name(req.params["name"])
        values, _ = _quota_body(req.json(), "quota_class_set", _class_names(req),
                                allow_force=False)
        return Response(200, {"quota_class_set": _class_keys(
            req, self.quotas.update_class(name, values))})

    # -- os-simple-tenant-usage ------------------------------------------------
    def list_usage(self, req: Request) -> Response:
        if req.path.endswith("/"):  # /os-simple-tenant-usage/: an empty project id
            raise NotFound("no project with an empty id")
        start, stop = _period(req)
        detailed = req.arg("detailed") == "1"
        servers, links = self._usage_page(req, usage.in_period(self.compute.store, start,
                                                               stop))
        usages = _usages(servers, start, stop, detailed)
        return Response(200, {"tenant_usages": list(usages.values()),
                              **({"tenant_usages_links": links} if links else {})})

    def show_usage(self, req: Request) -> Response:
        project = own_project(req, req.params["project"])
        start, stop = _period(req)
        servers, links = self._usage_page(req, usage.in_period(self.compute.store, start, stop,
                                                               project))
        used = _usages(servers, start, stop, detailed=True).get(project, {})
        return Response(200, {"tenant_usage": used,
                              **({"tenant_usage_links": links} if links else {})})

    def _usage_page(self, req: Request, insts: list[usage.ServerUsage]
                    ) -> tuple[list[usage.ServerUsage], list[dict[str, str]]]:
        """The servers that count in the period (oldest first), at most
        ``limit`` (Nova's max_limit, 1000, by default) after ``marker`` (from
        2.40; before, the first 1000 silently, as Nova)."""
        limit = MAX_USAGE_PAGE
        if req.at_least("2.40"):
            marker = req.arg("marker")
            if marker is not None:
                ids = [i.id for i in insts]
                if marker not in ids:
                    raise Invalid(f"marker [{marker}] not found")
                insts = insts[ids.index(marker) + 1:]
            if req.arg("limit") is not None:
                limit = min(limit, parse.count_arg(req.arg("limit") or "", "limit"))
        page = insts[:limit]
        if not req.at_least("2.40") or not page or len(page) < limit:
            return page, []
        query = {k: v[-1] for k, v in req.query.items() if k != "marker"}
        query["marker"] = page[-1].id
        href = f"{req.base_url}{req.path}?" + "&".join(
            f"{k}={quote(v)}" for k, v in sorted(query.items()))
        return page, [{"href": href, "rel": "next"}]


def _without(values: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    gone = set(names)
    return {k: v for k, v in values.items() if k not in gone}


def _set_names(req: Request) -> tuple[str, ...]:
    """The quotas os-quota-sets shows and takes at the request's microversion."""
    gone = NETWORK_QUOTAS if req.at_least("2.36") else ()
    return tuple(n for n in quotas.RESOURCES if n not in gone)


def _class_names(req: Request) -> tuple[str, ...]:
    """os-quota-class-sets': the server group quotas from 2.50, the network
    ones before."""
    gone = NETWORK_QUOTAS if req.at_least("2.50") else SERVER_GROUP_QUOTAS
    return tuple(n for n in quotas.RESOURCES if n not in gone)


def _set_keys(req: Request, values: dict[str, Any]) -> dict[str, Any]:
    return {n: values[n] for n in _set_names(req)}


def _class_keys(req: Request, values: dict[str, Any]) -> dict[str, Any]:
    return {n: values[n] for n in _class_names(req)}


def _class_name(name: str) -> str:
    if not 1 <= len(name) <= 255 or not name.isprintable():
        raise Invalid(reason="a quota class name is 1 to 255 printable characters")
    return name


def _quota_body(body: Any, key: str, names: tuple[str, ...],
                allow_force: bool) -> tuple[dict[str, int], bool]:
    """Nova's schema: each quota an integer (or its digits in a string) from
    -1 (unlimited) up, ``force`` a boolean (or "True"/"False")."""
    values = parse.section(body, key)
    parse.no_unknown(body, {key}, "the request body")
    parse.no_unknown(values, set(names) | ({"force"} if allow_force else set()), key)
    force = _boolean(values.get("force", False))
    limits = {name: _limit(name, value) for name, value in values.items() if name != "force"}
    return limits, force


_INTEGER = re.compile(r"-?[0-9]{1,10}")


def _limit(name: str, value: Any) -> int:
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) \
            or not quotas.UNLIMITED <= value <= quotas.MAX_LIMIT:
        raise Invalid(reason=f"{name} must be an integer from -1 (unlimited) to "
                      f"{quotas.MAX_LIMIT}")
    return value


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no",
                                                    "on", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    raise Invalid(reason="force must be true or false")


# -- usage -----------------------------------------------------------------------
_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%d %H:%M:%S.%f")


def _parse_time(text: str | None, now: float) -> float:
    if not text:
        return now
    for fmt in _FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    raise Invalid(reason=f"Datetime is in invalid format: {text[:40]!r}; give "
                  "YYYY-MM-DDTHH:MM:SS[.ffffff] (UTC)")


def _period(req: Request) -> tuple[float, float]:
    now = time.time()
    start, stop = _parse_time(req.arg("start"), now), _parse_time(req.arg("end"), now)
    if start > stop:
        raise Invalid(reason="Invalid start time. The start time cannot occur after the "
                      "end time.")
    return start, stop


def _iso(ts: float) -> str:
    """As Nova's JSON gives a naive UTC datetime: microseconds, no zone."""
    return datetime.fromtimestamp(ts, UTC).replace(tzinfo=None).isoformat(
        timespec="microseconds")


def _usages(insts: list[usage.ServerUsage], start: float, stop: float,
            detailed: bool) -> dict[str, dict[str, Any]]:
    """Nova's usage of each project over [start, stop]: the servers that
    count in it (``vmops/compute/usage.py``: destroyed ones too, state
    ``terminated``), charged from launch (or ``start``) to their end (or
    ``stop``)."""
    now = time.time()
    out: dict[str, dict[str, Any]] = {}
    for inst in insts:
        end = stop if inst.ended_at is None else min(stop, inst.ended_at)
        hours = max(0.0, end - max(inst.launched_at, start)) / 3600.0
        flavor = inst.flavor
        local_gb, vcpus, memory_mb = flavor.local_gb, flavor.vcpus, flavor.ram_mib
        server: dict[str, Any] = {
            "instance_id": inst.id, "name": inst.name, "tenant_id": inst.project_id,
            "hours": hours, "memory_mb": memory_mb, "local_gb": local_gb, "vcpus": vcpus,
            "flavor": flavor.name, "started_at": _iso(inst.launched_at),
            "ended_at": None if inst.ended_at is None else _iso(inst.ended_at),
            "state": inst.vm_state if inst.ended_at is None else "terminated",
            "uptime": int((inst.ended_at or now) - inst.launched_at)}
        summary = out.setdefault(inst.project_id, {
            "tenant_id": inst.project_id, "total_local_gb_usage": 0.0,
            "total_vcpus_usage": 0.0, "total_memory_mb_usage": 0.0, "total_hours": 0.0,
            "start": _iso(start), "stop": _iso(stop), **({"server_usages": []}
                                                         if detailed else {})})
        summary["total_local_gb_usage"] += local_gb * hours
        summary["total_vcpus_usage"] += vcpus * hours
        summary["total_memory_mb_usage"] += memory_mb * hours
        summary["total_hours"] += hours
        if detailed:
            summary["server_usages"].append(server)
    return out
