"""Server groups (Nova's ``os-server-groups``) and where their members go.

vmops is one host, so ``affinity`` (and ``soft-affinity``) always holds,
``soft-anti-affinity`` is a wish that one host cannot grant (its members
all land here, as Nova's weigher would do with one host), and
``anti-affinity`` holds for one member only: a second server that joins an anti-affinity
group whose first member is placed gets no host, as from Nova's scheduler
(the server is recorded and ends in ERROR with Nova's NoValidHost fault).
A member is placed unless it is in ERROR (a server whose spawn failed or
was refused holds no place on the host).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from vmops.compute import states
from vmops.compute.quotas import Quotas
from vmops.errors import NotFound
from vmops.store import Store

POLICIES = ("affinity", "anti-affinity")
SOFT_POLICIES = ("soft-affinity", "soft-anti-affinity")  # Nova: from microversion 2.15
NO_VALID_HOST = "No valid host was found. There are not enough hosts available."


class ServerGroupNotFound(NotFound):
    msg_fmt = "Instance group %(group)s could not be found."


@dataclass(frozen=True)
class ServerGroup:
    id: str
    name: str
    policy: str
    project_id: str
    user_id: str
    created_at: float
    members: tuple[str, ...] = ()  # instance ids, oldest first


class ServerGroups:
    def __init__(self, store: Store, quotas: Quotas) -> None:
        self.store = store
        self.quotas = quotas

    def create(self, name: str, policy: str, project_id: str, user_id: str) -> ServerGroup:
        if policy not in POLICIES + SOFT_POLICIES:
            raise ValueError(f"unknown server group policy {policy!r}")
        group = ServerGroup(str(uuid.uuid4()), name, policy, project_id, user_id, time.time())
        with self.quotas.lock:
            self.quotas.check_server_groups(project_id)
            with self.store.transaction() as db:
                db.execute("INSERT INTO server_groups VALUES (?, ?, ?, ?, ?, ?)",
                           (group.id, name, policy, project_id, user_id, group.created_at))
        return group

    def groups(self, project_id: str | None = None) -> list[ServerGroup]:
        """Every group, or one project's; oldest first."""
        if project_id is None:
            rows = self.store.query("SELECT * FROM server_groups ORDER BY created_at, id")
        else:
            rows = self.store.query("SELECT * FROM server_groups WHERE project_id = ? "
                                    "ORDER BY created_at, id", project_id)
        members = self._members()
        return [ServerGroup(**dict(r), members=tuple(members.get(r["id"], ()))) for r in rows]

    def group(self, group_id: str) -> ServerGroup:
        rows = self.store.query("SELECT * FROM server_groups WHERE id = ?", group_id)
        if not rows:
            raise ServerGroupNotFound(group=group_id)
        return ServerGroup(**dict(rows[0]), members=tuple(self._members(group_id).get(
            group_id, ())))

    def delete(self, group_id: str) -> None:
        """Nova deletes a group with members too; they just leave it."""
        with self.store.transaction() as db:
            db.execute("DELETE FROM server_group_members WHERE group_id = ?", (group_id,))
            db.execute("DELETE FROM server_groups WHERE id = ?", (group_id,))

    def _members(self, group_id: str | None = None) -> dict[str, list[str]]:
        """group id -> ids of its members that still exist (a destroyed
        server leaves its group with its record)."""
        sql = ("SELECT m.group_id, m.instance_id FROM server_group_members m "
               "JOIN instances i ON i.id = m.instance_id")
        rows = self.store.query(sql + " WHERE m.group_id = ? ORDER BY i.created_at", group_id) \
            if group_id is not None else self.store.query(sql + " ORDER BY i.created_at")
        members: dict[str, list[str]] = {}
        for row in rows:
            members.setdefault(row["group_id"], []).append(row["instance_id"])
        return members

    # -- placement -----------------------------------------------------------
    def check_join(self, group_id: str, project_id: str) -> str | None:
        """Before a server of ``project_id`` is recorded into the group (hold
        ``quotas.lock`` until :meth:`join`): raises for an unknown group or a
        full one; returns why the server gets no host, or None."""
        group = self.group(group_id)
        if group.project_id != project_id:
            raise ServerGroupNotFound(group=group_id)
        self.quotas.check_group_members(project_id, len(group.members))
        if group.policy == "anti-affinity" and self._placed(group.members):
            return NO_VALID_HOST
        return None

    def join(self, group_id: str, instance_id: str) -> None:
        with self.store.transaction() as db:
            db.execute("DELETE FROM server_group_members WHERE instance_id NOT IN "
                       "(SELECT id FROM instances)")  # left by destroyed servers
            db.execute("INSERT INTO server_group_members VALUES (?, ?)",
                       (group_id, instance_id))

    def _placed(self, members: tuple[str, ...]) -> bool:
        if not members:
            return False
        marks = ", ".join("?" for _ in members)
        rows = self.store.query(f"SELECT vm_state FROM instances WHERE id IN ({marks})",
                                *members)
        return any(r["vm_state"] != states.ERROR for r in rows)
