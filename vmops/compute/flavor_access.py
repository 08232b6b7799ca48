"""Who may use a flavor, and its extra specs (Nova's ``os-flavor-access``
and ``os-extra_specs``), kept in ``flavor_projects`` and
``flavor_extra_specs`` (schema 8).

A public flavor is everyone's. A private one (``is_public`` false) is seen
and used only by admins and by the projects given access to it: to anyone
else it does not exist (404 on show, absent from lists, 400 "not found" at
server create), as Nova answers. Extra specs are kept and shown; vmops
itself reads none of them (a flavor's size is its ram, vcpus and disks).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vmops.errors import AlreadyExists, Conflict, FlavorNotFound, NotFound
from vmops.store import Flavor, Store


class FlavorAccessNotFound(NotFound):
    msg_fmt = ("Flavor access not found for %(flavor_id)s / %(project_id)s "
               "combination.")


class FlavorAccessExists(AlreadyExists):
    msg_fmt = ("Flavor access already exists for flavor %(flavor_id)s and project "
               "%(project_id)s combination.")


class ExtraSpecNotFound(NotFound):
    msg_fmt = "Flavor %(flavor_id)s has no extra specs with key %(key)s."


def projects(store: Store, flavor_id: str) -> list[str]:
    """The projects given access to a flavor, in the order they were given."""
    return [r["project_id"] for r in store.query(
        "SELECT project_id FROM flavor_projects WHERE flavor_id = ? ORDER BY rowid",
        flavor_id)]


def may_use(store: Store, flavor: Flavor, project_id: str, is_admin: bool) -> bool:
    return flavor.is_public or is_admin or project_id in projects(store, flavor.id)


def visible_flavor(store: Store, ref: str, project_id: str, is_admin: bool) -> Flavor:
    """The flavor ``ref`` names if the caller (a member of ``project_id``,
    or an admin) may see it; FlavorNotFound if not."""
    flavor = store.flavor(ref)
    if not may_use(store, flavor, project_id, is_admin):
        raise FlavorNotFound(flavor=ref)
    return flavor


def listed(store: Store, flavors: Iterable[Flavor], project_id: str, is_admin: bool,
           is_public: bool | None = True) -> list[Flavor]:
    """Nova's list filter. Members: public flavors and their project's
    private ones. Admins choose with ``is_public``: True (the default) as
    a member of their project sees them, False the private ones only, None
    every flavor."""
    mine = {r["flavor_id"] for r in store.query(
        "SELECT flavor_id FROM flavor_projects WHERE project_id = ?", project_id)}
    if not is_admin:
        is_public = True
    if is_public is None:
        return list(flavors)
    if is_public:
        return [f for f in flavors if f.is_public or f.id in mine]
    return [f for f in flavors if not f.is_public]


def add_project(store: Store, flavor: Flavor, project_id: str) -> list[str]:
    if flavor.is_public:
        raise Conflict(reason="Can not add access to a public flavor.")
    with store.transaction() as db:
        if db.execute("SELECT 1 FROM flavor_projects WHERE flavor_id = ? AND project_id = ?",
                      (flavor.id, project_id)).fetchone():
            raise FlavorAccessExists(flavor_id=flavor.id, project_id=project_id,
                                     kind="flavor access", name=project_id)
        db.execute("INSERT INTO flavor_projects VALUES (?, ?)", (flavor.id, project_id))
    return projects(store, flavor.id)


def remove_project(store: Store, flavor: Flavor, project_id: str) -> list[str]:
    with store.transaction() as db:
        gone = db.execute("DELETE FROM flavor_projects WHERE flavor_id = ? AND project_id = ?",
                          (flavor.id, project_id)).rowcount
    if not gone:
        raise FlavorAccessNotFound(flavor_id=flavor.id, project_id=project_id)
    return projects(store, flavor.id)


# -- extra specs -------------------------------------------------------------------
def extra_specs(store: Store, flavor_id: str) -> dict[str, str]:
    return {r["key"]: r["value"] for r in store.query(
        "SELECT key, value FROM flavor_extra_specs WHERE flavor_id = ? ORDER BY key",
        flavor_id)}


def extra_spec(store: Store, flavor_id: str, key: str) -> str:
    rows = store.query("SELECT value FROM flavor_extra_specs WHERE flavor_id = ? AND key = ?",
                       flavor_id, key)
    if not rows:
        raise ExtraSpecNotFound(flavor_id=flavor_id, key=key)
    return str(rows[0]["value"])


def set_extra_specs(store: Store, flavor_id: str, specs: Mapping[str, str]) -> None:
    """Add or change these keys, keeping the others (Nova's create and update)."""
    with store.transaction() as db:
        db.executemany("INSERT OR REPLACE INTO flavor_extra_specs VALUES (?, ?, ?)",
                       [(flavor_id, k, v) for k, v in specs.items()])


def delete_extra_spec(store: Store, flavor_id: str, key: str) -> None:
    with store.transaction() as db:
        gone = db.execute("DELETE FROM flavor_extra_specs WHERE flavor_id = ? AND key = ?",
                          (flavor_id, key)).rowcount
    if not gone:
        raise ExtraSpecNotFound(flavor_id=flavor_id, key=key)
