"""Who sees which server: an admin every project's, anyone else their own
project's; the rest is 404, as Nova answers. One lookup for every API that
takes a server in its path."""

from __future__ import annotations

from vmops.api.server import Context, Request
from vmops.errors import Conflict, InstanceNotFound
from vmops.store import Instance, Store


def may_see(ctx: Context, project_id: str) -> bool:
    """An admin sees every project's records, anyone else their own project's."""
    return ctx.is_admin or (bool(ctx.project_id) and project_id == ctx.project_id)


def instance(store: Store, req: Request, ref: str | None = None) -> Instance:
    """The server ``ref`` (default: the path's id) names, if the caller may
    see it. A name several visible servers share is refused, naming their
    ids; servers the caller may not see are neither found nor counted."""
    ref = req.params["id"] if ref is None else ref
    rows = store.query("SELECT id, name, project_id FROM instances WHERE id = ? OR "
                       "name = ? ORDER BY created_at", ref, ref)
    rows = [r for r in rows if may_see(req.context, r["project_id"])]
    by_id = [r for r in rows if r["id"] == ref]
    if by_id:
        rows = by_id
    if not rows:
        raise InstanceNotFound(instance=ref)
    if len(rows) > 1:
        raise Conflict(reason=f"{len(rows)} servers are named {ref!r}: "
                       f"{', '.join(r['id'] for r in rows)}; give an id")
    return store.instance(rows[0]["id"])
