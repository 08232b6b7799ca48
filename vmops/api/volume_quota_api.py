"""Cinder's ``os-quota-sets`` for the volume service's two quotas, volumes
and gigabytes (enforced by :meth:`vmops.compute.quotas.Quotas.check_volumes`).

``/volume/v3/{project_id}/os-quota-sets/{target}``: show (``?usage=True``:
each as ``{"limit", "in_use", "reserved"}``), ``defaults``, update and
delete (back to the defaults). Show and defaults answer the other keys of
Cinder's quota set too, for the clients that print them: snapshots,
backups, their gigabytes and groups are 0 (vmops has none of them) and
``per_volume_gigabytes`` -1; an update may change volumes and gigabytes
only. A member reads its own project's; an admin reads and changes any
project's (Cinder's policy).
"""

from __future__ import annotations

from typing import Any

from vmops.api import parse
from vmops.api.server import Request, Response
from vmops.compute.manager import Compute
from vmops.compute.quotas import UNLIMITED, VOLUME_RESOURCES
from vmops.errors import Forbidden, Invalid

# What Cinder's quota set has beyond volumes and gigabytes, as vmops answers it.
ABSENT = {"snapshots": 0, "backups": 0, "backup_gigabytes": 0, "groups": 0,
          "per_volume_gigabytes": UNLIMITED}
MAX_LIMIT = 0x7FFFFFFF


class VolumeQuotaApi:
    def __init__(self, compute: Compute) -> None:
        self.quotas = compute.quotas

    def show(self, req: Request) -> Response:
        target = self._readable(req)
        limits = self.quotas.volume_limits(target)
        values: dict[str, Any] = {**ABSENT, **limits}
        if (req.arg("usage") or "").lower() in ("true", "1"):
            used = self.quotas.volume_usage(target)
            values = {name: {"limit": limit, "in_use": used.get(name, 0), "reserved": 0}
                      for name, limit in values.items()}
        return Response(200, {"quota_set": {"id": target, **values}})

    def defaults(self, req: Request) -> Response:
        target = self._readable(req)
        return Response(200, {"quota_set": {"id": target, **ABSENT,
                                            **self.quotas.volume_defaults()}})

    def update(self, req: Request) -> Response:
        target = self._changeable(req)
        body = parse.section(req.json(), "quota_set")
        body.pop("tenant_id", None)  # Cinder's clients may send it; the path names it
        parse.no_unknown(body, set(VOLUME_RESOURCES), "quota_set (vmops has no snapshots, "
                         "backups or groups)")
        values = {}
        for name in body:
            limit = parse.field(body, name, int, required=True)
            if not UNLIMITED <= limit <= MAX_LIMIT:
                raise Invalid(reason=f"{name} quota {limit}: -1 (unlimited) to {MAX_LIMIT}")
            values[name] = limit
        limits = self.quotas.update_volume_limits(target, values)
        return Response(200, {"quota_set": {**ABSENT, **limits}})

    def delete(self, req: Request) -> Response:
        self.quotas.reset_volume_limits(self._changeable(req))
        return Response(200)

    @staticmethod
    def _readable(req: Request) -> str:
        ctx, target = req.context, req.params["target"]
        if not ctx.is_admin and target != ctx.project_id:
            raise Forbidden(reason=f"project {ctx.project_id!r} may not read the quotas of "
                            f"project {target!r}")
        return target

    @staticmethod
    def _changeable(req: Request) -> str:
        if not req.context.is_admin:
            raise Forbidden(reason="volume quotas are changed by admins only")
        return req.params["target"]
