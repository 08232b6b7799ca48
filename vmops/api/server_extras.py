"""Nova's smaller per-server APIs at microversion 2.1: metadata, ips, the
server password and instance actions.

Metadata is the instance's ``properties`` (what the config drive's
``meta_data.json`` carries as ``meta``): changes are recorded at once; a
guest sees them on its drive when it is written again (rebuild, or
``vmops:rebuildConfigDrive``), as Nova's config drive too is written once.
vmops has no metadata service, so no guest ever posts a password: the
password is always "" and DELETE has nothing to clear.

A server of another project is not found (404), as in Nova; admins see all.

Microversions up to 2.52: from 2.21 the actions of a deleted server are
still shown; from 2.51 a member sees an action's events too (without
``traceback``, which stays for admins).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from vmops import configdrive
from vmops.api import scope, views
from vmops.api.host_api import nova_time
from vmops.api.server import Request, Response, Router
from vmops.compute import states
from vmops.compute.actions import InstanceAction, InstanceActionNotFound
from vmops.compute.manager import Compute
from vmops.errors import Invalid, InvalidState, NotFound
from vmops.store import Instance

P = views.API_PREFIX
# Nova's metadata schema (parameter_types.metadata): keys 1-255 of these, values <= 255.
METADATA_KEY = re.compile(r"[a-zA-Z0-9\-_:. ]{1,255}")
MAX_VALUE_CHARS = 255
# Nova changes metadata only in these states, with no task running.
METADATA_STATES = (states.ACTIVE, states.PAUSED, states.SUSPENDED, states.STOPPED)


def add_routes(r: Router, compute: Compute) -> None:
    api = ServerExtras(compute)
    meta = f"{P}/servers/{{id}}/metadata"
    r.add("GET", meta, api.list_metadata)
    r.add("POST", meta, api.merge_metadata)
    r.add("PUT", meta, api.replace_metadata)
    r.add("GET", f"{meta}/{{key}}", api.show_metadata_item)
    r.add("PUT", f"{meta}/{{key}}", api.set_metadata_item)
    r.add("DELETE", f"{meta}/{{key}}", api.delete_metadata_item)
    r.add("GET", f"{P}/servers/{{id}}/ips", api.list_ips)
    r.add("GET", f"{P}/servers/{{id}}/ips/{{network}}", api.show_ips)
    r.add("GET", f"{P}/servers/{{id}}/os-server-password", api.show_password)
    r.add("DELETE", f"{P}/servers/{{id}}/os-server-password", api.clear_password)
    r.add("GET", f"{P}/servers/{{id}}/os-instance-actions", api.list_actions)
    r.add("GET", f"{P}/servers/{{id}}/os-instance-actions/{{request_id}}", api.show_action)


class ServerExtras:
    def __init__(self, compute: Compute) -> None:
        self.compute = compute
        self.store = compute.store
        # Metadata changes read, change and write the record: one at a time.
        self._metadata_lock = threading.Lock()

    def _server(self, req: Request) -> Instance:
        return scope.instance(self.store, req)

    # -- metadata ----------------------------------------------------------------
    def list_metadata(self, req: Request) -> Response:
        return Response(200, {"metadata": dict(self._server(req).properties)})

    def show_metadata_item(self, req: Request) -> Response:
        inst, key = self._server(req), req.params["key"]
        if key not in inst.properties:
            raise NotFound("Metadata item was not found")
        return Response(200, {"meta": {key: inst.properties[key]}})

    def merge_metadata(self, req: Request) -> Response:
        """POST: the items given are added or changed, the others kept."""
        items = _metadata_body(req.json(), "metadata")
        return Response(200, {"metadata": self._change(req, lambda old: {**old, **items})})

    def replace_metadata(self, req: Request) -> Response:
        """PUT: the items given become all the metadata."""
        items = _metadata_body(req.json(), "metadata")
        return Response(200, {"metadata": self._change(req, lambda _old: items)})

    def set_metadata_item(self, req: Request) -> Response:
        key = req.params["key"]
        items = _metadata_body(req.json(), "meta")
        if len(items) != 1:
            raise Invalid("Request body contains too many items")
        if key not in items:
            raise Invalid("Request body and URI mismatch")
        self._change(req, lambda old: {**old, **items})
        return Response(200, {"meta": items})

    def delete_metadata_item(self, req: Request) -> Response:
        key = req.params["key"]

        def without(old: dict[str, str]) -> dict[str, str]:
            if key not in old:
                raise NotFound("Metadata item was not found")
            return {k: v for k, v in old.items() if k != key}

        self._change(req, without)
        return Response(204)

    def _change(self, req: Request,
                change: Callable[[dict[str, str]], dict[str, str]]) -> dict[str, str]:
        with self._metadata_lock:
            inst = self._server(req)
            if inst.vm_state not in METADATA_STATES or inst.task_state is not None \
                    or self.compute.tasks.busy(inst.id) is not None:
                raise InvalidState(action="update metadata of", instance=inst.name,
                                   state=inst.task_state or inst.vm_state)
            properties: dict[str, str] = change(dict(inst.properties))
            self.compute.quotas.check_metadata(inst.project_id, len(properties))
            _check_drive_can_carry(inst, properties)
            inst = self.store.update_instance(inst, properties=properties)
        return dict(inst.properties)

    # -- ips -------------------------------------------------------------------
    def _addresses(self, inst: Instance) -> dict[str, list[dict[str, Any]]]:
        """The ``addresses`` of the server view, with only Nova's two keys
        per address (``version``, ``addr``), as Nova's ips API."""
        return {network: [{"version": a["version"], "addr": a["addr"]} for a in addrs]
                for network, addrs in views.addresses(self.compute.nics(inst)).items()}

    def list_ips(self, req: Request) -> Response:
        return Response(200, {"addresses": self._addresses(self._server(req))})

    def show_ips(self, req: Request) -> Response:
        network = req.params["network"]
        addresses = self._addresses(self._server(req))
        if network not in addresses:
            raise NotFound("Instance is not a member of specified network")
        return Response(200, {network: addresses[network]})

    # -- os-server-password ------------------------------------------------------
    def show_password(self, req: Request) -> Response:
        self._server(req)
        return Response(200, {"password": ""})

    def clear_password(self, req: Request) -> Response:
        self._server(req)
        return Response(204)

    # -- os-instance-actions -------------------------------------------------------
    def _actions_of(self, req: Request) -> list[InstanceAction]:
        """The server's actions; from 2.21 also a deleted server's (known by
        its actions, which say whose it was)."""
        ref = req.params["id"]
        try:
            return self.compute.actions.actions(self._server(req).id)
        except NotFound:
            if not req.at_least("2.21"):
                raise
        actions = self.compute.actions.actions(ref)
        if not actions or not (req.context.is_admin
                               or actions[0].project_id == req.context.project_id):
            raise NotFound(f"Instance {ref} could not be found.") from None
        return actions

    def list_actions(self, req: Request) -> Response:
        return Response(200, {"instanceActions": [_action(a) for a in self._actions_of(req)]})

    def show_action(self, req: Request) -> Response:
        """Events (with why one failed, as Nova's traceback) for admins, and
        from 2.51 for members too without the traceback, as Nova's policy."""
        wanted = req.params["request_id"]
        action = next((a for a in self._actions_of(req) if a.request_id == wanted), None)
        if action is None:
            raise InstanceActionNotFound(request_id=wanted)
        body = _action(action)
        if req.context.is_admin or req.at_least("2.51"):
            event = _event(action)
            if not req.context.is_admin:
                del event["traceback"]
            body["events"] = [event]
        return Response(200, {"instanceAction": body})


def _metadata_body(body: Any, key: str) -> dict[str, str]:
    """``{key: {name: value, ...}}`` with Nova's metadata rules."""
    if not isinstance(body, dict) or set(body) != {key} or not isinstance(body[key], dict):
        raise Invalid(reason=f"the request body must be {{\"{key}\": {{...}}}} and nothing "
                      "else")
    items: dict[str, Any] = body[key]
    for name, value in items.items():
        if not METADATA_KEY.fullmatch(name):
            raise Invalid(reason=f"metadata key {name[:60]!r} is not 1 to 255 of the "
                          "characters a-z A-Z 0-9 - _ : . and space")
        if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS:
            raise Invalid(reason=f"the value of metadata key {name!r} must be a string of at "
                          f"most {MAX_VALUE_CHARS} characters")
    return dict(items)


def _check_drive_can_carry(inst: Instance, properties: dict[str, str]) -> None:
    """The config drive's own checks (no control characters...), so a drive
    written later from this metadata never fails."""
    configdrive.validate(configdrive.InstanceMetadata(
        uuid=inst.id, name=inst.name, hostname=inst.name, project_id=inst.project_id,
        properties=properties), configdrive.Limits(max_metadata_items=len(properties)))


def _nova_time(ts: float | None) -> str | None:
    return nova_time(ts) if ts is not None else None


def _action(a: InstanceAction) -> dict[str, Any]:
    return {"action": a.action, "instance_uuid": a.instance_id, "request_id": a.request_id,
            "user_id": a.user_id, "project_id": a.project_id,
            "start_time": _nova_time(a.start_time),
            "message": "Error" if a.result == "Error" else None}


def _event(a: InstanceAction) -> dict[str, Any]:
    return {"event": a.event, "start_time": _nova_time(a.start_time),
            "finish_time": _nova_time(a.finish_time), "result": a.result,
            "traceback": a.message}
