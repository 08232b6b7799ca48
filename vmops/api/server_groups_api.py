"""Nova's ``os-server-groups`` at microversion 2.1 (``policies``, a list of
one), with ``project_id`` and ``user_id`` from 2.13, the soft policies from
2.15 and, where the client asks for 2.64 or later and vmops serves it,
``policy`` and ``rules``; plus the ``os:scheduler_hints`` ``group`` of
server create. Where members go: ``vmops/compute/server_groups.py``.

A member sees their project's groups; an admin sees every project's with
``all_projects`` (as Nova), and any group by id.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vmops.api import parse, views
from vmops.api.server import Request, Response, Router
from vmops.compute.manager import Compute, SpawnRequest
from vmops.compute.server_groups import (
    POLICIES,
    SOFT_POLICIES,
    ServerGroup,
    ServerGroupNotFound,
)
from vmops.errors import Invalid

P = views.API_PREFIX
POLICY_FIELD_VERSION = "2.64"  # policy + rules replace policies
MAX_NAME_CHARS = 255
HINT_KEYS = ("os:scheduler_hints", "OS-SCH-HNT:scheduler_hints")


def add_routes(r: Router, compute: Compute) -> None:
    api = ServerGroupsApi(compute)
    r.add("GET", f"{P}/os-server-groups", api.list_groups)
    r.add("POST", f"{P}/os-server-groups", api.create_group)
    r.add("GET", f"{P}/os-server-groups/{{id}}", api.show_group)
    r.add("DELETE", f"{P}/os-server-groups/{{id}}", api.delete_group)


def _new_style(req: Request) -> bool:
    return req.at_least(POLICY_FIELD_VERSION)


class ServerGroupsApi:
    def __init__(self, compute: Compute) -> None:
        self.groups = compute.server_groups

    def _visible(self, req: Request, group_id: str) -> ServerGroup:
        group = self.groups.group(group_id)
        if not req.context.is_admin and group.project_id != req.context.project_id:
            raise ServerGroupNotFound(group=group_id)
        return group

    def _view(self, req: Request, group: ServerGroup) -> dict[str, Any]:
        body: dict[str, Any] = {"id": group.id, "name": group.name,
                                "members": list(group.members)}
        if _new_style(req):
            body.update(policy=group.policy, rules={}, project_id=group.project_id,
                        user_id=group.user_id)
        else:
            body.update(policies=[group.policy], metadata={})
            if req.at_least("2.13"):
                body.update(project_id=group.project_id, user_id=group.user_id)
        return body

    def list_groups(self, req: Request) -> Response:
        every = req.context.is_admin and req.arg("all_projects") not in (None, "0", "false",
                                                                         "False")
        groups = self.groups.groups(None if every else req.context.project_id)
        groups = _page(groups, req)
        return Response(200, {"server_groups": [self._view(req, g) for g in groups]})

    def show_group(self, req: Request) -> Response:
        return Response(200, {"server_group": self._view(
            req, self._visible(req, req.params["id"]))})

    def delete_group(self, req: Request) -> Response:
        self.groups.delete(self._visible(req, req.params["id"]).id)
        return Response(204)

    def create_group(self, req: Request) -> Response:
        body = parse.section(req.json(), "server_group")
        parse.no_unknown(req.json(), {"server_group"}, "the request body")
        new_style = _new_style(req)
        parse.no_unknown(body, {"name", "policy", "rules"} if new_style
                         else {"name", "policies"}, "server_group")
        name = parse.field(body, "name", str, required=True)
        if not 1 <= len(name) <= MAX_NAME_CHARS or name.strip() != name \
                or any(not c.isprintable() for c in name):
            raise Invalid(reason=f"name must be 1 to {MAX_NAME_CHARS} printable characters, "
                          "without leading or trailing spaces")
        policy = _policy(body, new_style, POLICIES + (
            SOFT_POLICIES if req.at_least("2.15") else ()))
        group = self.groups.create(name, policy, req.context.project_id,
                                   req.context.user_id)
        return Response(200, {"server_group": self._view(req, group)})


def _policy(body: dict[str, Any], new_style: bool, served: tuple[str, ...]) -> str:
    if new_style:
        policy = str(parse.field(body, "policy", str, required=True))
        if parse.field(body, "rules", dict, default={}):
            raise Invalid(reason="rules apply to soft-anti-affinity, which vmops does not "
                          "serve; give none")
    else:
        policies = parse.field(body, "policies", list, required=True)
        if len(policies) != 1 or not isinstance(policies[0], str):
            raise Invalid(reason="policies is a list of exactly one policy: "
                          f"{' or '.join(served)}")
        policy = str(policies[0])
    if policy not in served:
        raise Invalid(reason=f"policy {policy[:40]!r} is not one served at this "
                      f"microversion: {' or '.join(served)}")
    return policy


def _page(groups: list[ServerGroup], req: Request) -> list[ServerGroup]:
    """Nova's offset/limit paging of server groups."""
    offset = req.arg("offset")
    limit = req.arg("limit")
    start = parse.count_arg(offset, "offset") if offset is not None else 0
    groups = groups[start:]
    return groups[:parse.count_arg(limit, "limit")] if limit is not None else groups


def with_scheduler_hint(compute: Compute, req: Request, spawn: SpawnRequest) -> SpawnRequest:
    """Server create: an ``os:scheduler_hints`` ``group`` (a server group of
    the caller's project: else 400) is where the server goes."""
    body = req.json()
    groups = [_hint_group(key, body[key]) for key in HINT_KEYS
              if isinstance(body, dict) and key in body]
    group_id = next((g for g in groups if g is not None), None)
    if group_id is not None:
        try:
            group = compute.server_groups.group(group_id)
        except ServerGroupNotFound as exc:
            raise Invalid(reason=exc.message) from None
        if group.project_id != req.context.project_id:
            raise Invalid(reason=ServerGroupNotFound(group=group_id).message)
    return dataclasses.replace(spawn, server_group=group_id)


def _hint_group(key: str, hints: Any) -> str | None:
    if not isinstance(hints, dict):
        raise Invalid(reason=f"{key} must be an object")
    group = hints.get("group")
    if group is not None and not isinstance(group, str):
        raise Invalid(reason=f"{key} group must be a server group's id")
    return group
