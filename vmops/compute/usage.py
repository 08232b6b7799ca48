"""What servers used over a period, for Nova's ``os-simple-tenant-usage``
and ``os-instance_usage_audit_log``: the servers there are now, and the
destroyed ones, whose row ``Store.delete_instance`` keeps in
``instance_usage`` (schema 8).

A server counts in a period [start, stop] if it was launched before
``stop`` and was not destroyed before ``start`` (Nova's "active by
window"); a server whose spawn never finished (no launch time) counts in
none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vmops.store import Instance, InstanceFlavor, Store


@dataclass(frozen=True)
class ServerUsage:
    id: str
    name: str
    project_id: str
    flavor: InstanceFlavor
    vm_state: str
    created_at: float
    launched_at: float
    ended_at: float | None  # destroyed at (None: it still exists)


def _of_instance(inst: Instance) -> ServerUsage | None:
    if inst.launched_at is None:
        return None
    return ServerUsage(inst.id, inst.name, inst.project_id, inst.flavor, inst.vm_state,
                       inst.created_at, inst.launched_at, None)


def in_period(store: Store, start: float, stop: float,
              project_id: str | None = None) -> list[ServerUsage]:
    """The servers (of ``project_id``, or all) that count in [start, stop],
    oldest first."""
    servers = [u for i in store.instances() if (u := _of_instance(i)) is not None]
    sql = ("SELECT * FROM instance_usage WHERE launched_at IS NOT NULL AND launched_at < ? "
           "AND deleted_at > ?")
    args: list[Any] = [stop, start]
    if project_id is not None:
        sql += " AND project_id = ?"
        args.append(project_id)
    servers += [ServerUsage(r["instance_id"], r["name"], r["project_id"],
                            InstanceFlavor.from_json(json.loads(r["flavor"])), r["vm_state"],
                            r["created_at"],
                            r["launched_at"], r["deleted_at"])
                for r in store.query(sql, *args)]
    return sorted((s for s in servers if s.launched_at < stop
                   and (project_id is None or s.project_id == project_id)),
                  key=lambda s: (s.created_at, s.id))
