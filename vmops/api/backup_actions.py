"""Server actions of Nova's admin and backup APIs: os-resetState and
injectNetworkInfo (admins only), createBackup (a snapshot of type backup,
with rotation); restore and forceDelete, which only a soft-deleted server
takes (vmops deletes at once, as Nova with reclaim_instance_interval 0)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from vmops.api import parse, views
from vmops.api.server import Request, Response
from vmops.compute import states
from vmops.compute.catalog import Catalog
from vmops.compute.manager import Compute
from vmops.errors import Forbidden, Invalid, InvalidState, VmopsError
from vmops.store import Image

log = logging.getLogger(__name__)

# How long a backup's rotation waits for its snapshot to end.
ROTATION_WAIT_S = 3600.0
_RESET_STATES = {"active": states.ACTIVE, "error": states.ERROR}

Handler = Callable[[str, Any, Request], Response | None]


def handlers(compute: Compute, catalog: Catalog) -> dict[str, Handler]:
    actions = _Actions(compute, catalog)
    return {"os-resetState": actions.reset_state,
            "injectNetworkInfo": actions.inject_network_info,
            "createBackup": actions.create_backup,
            "restore": actions.not_soft_deleted("restore"),
            "forceDelete": actions.not_soft_deleted("forceDelete")}


def _admin_only(req: Request, action: str) -> None:
    if not req.context.is_admin:
        raise Forbidden(reason=f"{action} is for admins only")


class _Actions:
    def __init__(self, compute: Compute, catalog: Catalog) -> None:
        self.compute = compute
        self.catalog = catalog

    def reset_state(self, ref: str, arg: Any, req: Request) -> None:
        """Nova's os-resetState: {"state": "active" | "error"} sets the
        record's state and ends its task, whatever the hypervisor says (the
        admin's way out of a stuck state)."""
        _admin_only(req, "os-resetState")
        if not isinstance(arg, dict) or set(arg) != {"state"} \
                or arg["state"] not in _RESET_STATES:
            raise Invalid(reason='os-resetState takes {"state": "active"} or '
                          '{"state": "error"}')
        self.compute.store.update_instance(ref, vm_state=_RESET_STATES[arg["state"]],
                                           task_state=None)

    def inject_network_info(self, ref: str, arg: Any, req: Request) -> None:
        """Nova's injectNetworkInfo: nothing to do here (a guest's addresses
        come from DHCP and its config drive, which never go stale)."""
        _admin_only(req, "injectNetworkInfo")
        parse.no_argument("injectNetworkInfo", arg)

    def not_soft_deleted(self, action: str) -> Handler:
        """Nova's answer to restore or forceDelete of a server that is not
        soft-deleted: 409 (no server ever is here)."""
        def refuse(ref: str, arg: Any, req: Request) -> None:
            parse.no_argument(action, arg)
            inst = self.compute.instance(ref)
            raise InvalidState(action=f"'{action}'", instance=inst.id,
                               state=f"in vm_state {inst.vm_state}")
        return refuse

    def create_backup(self, ref: str, arg: Any, req: Request) -> Response:
        """Nova's createBackup: a snapshot whose image says image_type backup
        and its backup_type; once it is made, only the newest ``rotation``
        backups of that type of the server are kept. Answers as createImage
        does (Location, or from 2.45 the image id)."""
        name, backup_type, rotation, properties = _backup_args(arg)
        inst = self.compute.instance(ref)
        image = self.compute.snapshot(
            inst.id, name, self.catalog.cache, owner=req.context.project_id,
            properties={**properties, "image_type": "backup", "backup_type": backup_type})
        threading.Thread(target=self._rotate, args=(inst.id, image, backup_type, rotation),
                         name=f"rotate-backups-{inst.id[:8]}", daemon=True).start()
        if req.at_least("2.45"):
            return Response(202, {"image_id": image.id})
        headers = {"Location": views.link(req.base_url, "images", image.id)[0]["href"]} \
            if rotation > 0 else {}
        return Response(202, headers=headers)

    def _rotate(self, instance_id: str, new: Image, backup_type: str, rotation: int) -> None:
        """After the snapshot: if the new backup was made, delete the oldest
        of the server's backups of this type beyond ``rotation``."""
        self.compute.wait_idle(instance_id, ROTATION_WAIT_S)
        backups = sorted((i for i in self.compute.store.images()
                          if i.instance_uuid == instance_id
                          and i.extra.get("image_type") == "backup"
                          and i.extra.get("backup_type") == backup_type),
                         key=lambda i: (i.created_at, i.id), reverse=True)
        if new.id not in {i.id for i in backups if i.status == "active"}:
            return  # the backup failed: the older ones stay
        for old in backups[rotation:]:
            try:
                self.catalog.delete_image(old.id)
            except VmopsError as exc:
                log.warning("backup rotation: could not delete image %s: %s", old.id,
                            exc.message)


def _backup_args(arg: Any) -> tuple[str, str, int, dict[str, str]]:
    if not isinstance(arg, dict):
        raise Invalid(reason='createBackup takes {"name", "backup_type", "rotation"}')
    parse.no_unknown(arg, {"name", "backup_type", "rotation", "metadata"}, "createBackup")
    name: str = parse.field(arg, "name", str, required=True)
    backup_type: str = parse.field(arg, "backup_type", str, required=True)
    rotation = parse.whole_number(parse.field(arg, "rotation", (int, str), required=True),
                                  "rotation")
    return name, backup_type, rotation, parse.metadata(parse.field(arg, "metadata", dict,
                                                                   default={}))
