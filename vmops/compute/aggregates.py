"""Nova's host aggregates, kept in ``aggregates``, ``aggregate_hosts`` and
``aggregate_metadata`` (schema 8).

An aggregate is a named group of compute hosts with metadata; vmops has one
host, so an aggregate holds it or nothing. An aggregate's availability
zone is its ``availability_zone`` metadata item, as in Nova. This host's
servers are always in zone ``nova`` (``views.AVAILABILITY_ZONE``), so the
host joins no aggregate that would put it in another zone, and an
aggregate holding it keeps zone ``nova`` (or none).
"""

from __future__ import annotations

import sqlite3
import time
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from vmops.errors import AlreadyExists, Conflict, Invalid, NotFound
from vmops.store import Store

AZ_KEY = "availability_zone"
HOST_ZONE = "nova"  # this host's servers' zone (views.AVAILABILITY_ZONE)
INTERNAL_ZONE = "internal"  # Nova's services' zone, never an aggregate's


@dataclass(frozen=True)
class Aggregate:
    id: int
    uuid: str
    name: str
    availability_zone: str | None
    created_at: float
    updated_at: float | None
    hosts: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


class AggregateNotFound(NotFound):
    msg_fmt = "Aggregate %(aggregate_id)s could not be found."


class AggregateNameExists(AlreadyExists):
    msg_fmt = "Aggregate %(name)s already exists."


class AggregateHostExists(Conflict):
    msg_fmt = "Aggregate %(aggregate_id)s already has host %(host)s."


class AggregateHostNotFound(NotFound):
    msg_fmt = "Cannot remove host %(host)s in aggregate %(aggregate_id)s"


class Aggregates:
    def __init__(self, store: Store, host: str) -> None:
        self.store = store
        self.host = host

    # -- reading -----------------------------------------------------------------
    def all(self) -> list[Aggregate]:
        return [self.get(int(r["id"])) for r in self.store.query(
            "SELECT id FROM aggregates ORDER BY id")]

    def get(self, aggregate_id: int) -> Aggregate:
        rows = self.store.query("SELECT * FROM aggregates WHERE id = ?", aggregate_id)
        if not rows:
            raise AggregateNotFound(aggregate_id=aggregate_id)
        row = rows[0]
        hosts = tuple(r["host"] for r in self.store.query(
            "SELECT host FROM aggregate_hosts WHERE aggregate_id = ? ORDER BY host",
            aggregate_id))
        metadata = {r["key"]: r["value"] for r in self.store.query(
            "SELECT key, value FROM aggregate_metadata WHERE aggregate_id = ? ORDER BY key",
            aggregate_id)}
        return Aggregate(id=int(row["id"]), uuid=row["uuid"], name=row["name"],
                         availability_zone=row["availability_zone"],
                         created_at=row["created_at"], updated_at=row["updated_at"],
                         hosts=hosts, metadata=metadata)

    # -- changing ------------------------------------------------------------------
    def create(self, name: str, zone: str | None) -> Aggregate:
        _check_zone(zone)
        with self.store.transaction() as db:
            if db.execute("SELECT 1 FROM aggregates WHERE name = ?", (name,)).fetchone():
                raise AggregateNameExists(name=name, kind="aggregate")
            cursor = db.execute(
                "INSERT INTO aggregates (uuid, name, availability_zone, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, NULL)",
                (str(uuidlib.uuid4()), name, zone, time.time()))
            aggregate_id = int(cursor.lastrowid or 0)
            if zone is not None:
                db.execute("INSERT INTO aggregate_metadata VALUES (?, ?, ?)",
                           (aggregate_id, AZ_KEY, zone))
        return self.get(aggregate_id)

    def update(self, aggregate_id: int, name: str | None, zone: str | None,
               zone_given: bool) -> Aggregate:
        """Rename, and/or set the zone (``zone_given``; None: no zone)."""
        current = self.get(aggregate_id)
        if zone_given:
            _check_zone(zone)
            self._check_host_zone(current, zone)
        with self.store.transaction() as db:
            if name is not None and name != current.name and db.execute(
                    "SELECT 1 FROM aggregates WHERE name = ?", (name,)).fetchone():
                raise AggregateNameExists(name=name, kind="aggregate")
            db.execute("UPDATE aggregates SET name = ?, updated_at = ? WHERE id = ?",
                       (name or current.name, time.time(), aggregate_id))
            if zone_given:
                _set_zone(db, aggregate_id, zone)
        return self.get(aggregate_id)

    def delete(self, aggregate_id: int) -> None:
        aggregate = self.get(aggregate_id)
        if aggregate.hosts:
            raise Invalid(reason=f"Cannot delete aggregate {aggregate_id}: it still has "
                          f"hosts ({', '.join(aggregate.hosts)}); remove them first")
        with self.store.transaction() as db:
            for table, column in (("aggregate_metadata", "aggregate_id"),
                                  ("aggregate_hosts", "aggregate_id"), ("aggregates", "id")):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (aggregate_id,))

    def add_host(self, aggregate_id: int, host: str) -> Aggregate:
        aggregate = self.get(aggregate_id)
        if host != self.host:
            raise NotFound(f"Compute host {host} could not be found.")
        if host in aggregate.hosts:
            raise AggregateHostExists(aggregate_id=aggregate_id, host=host)
        if aggregate.availability_zone not in (None, HOST_ZONE):
            raise Invalid(reason=f"Cannot add host {host} to aggregate {aggregate_id}: its "
                          f"availability zone is {aggregate.availability_zone!r}, and this "
                          f"host's servers are always in zone {HOST_ZONE!r}")
        with self.store.transaction() as db:
            db.execute("INSERT INTO aggregate_hosts VALUES (?, ?)", (aggregate_id, host))
            _touch(db, aggregate_id)
        return self.get(aggregate_id)

    def remove_host(self, aggregate_id: int, host: str) -> Aggregate:
        self.get(aggregate_id)
        with self.store.transaction() as db:
            gone = db.execute("DELETE FROM aggregate_hosts WHERE aggregate_id = ? AND host = ?",
                              (aggregate_id, host)).rowcount
            if not gone:
                raise AggregateHostNotFound(aggregate_id=aggregate_id, host=host)
            _touch(db, aggregate_id)
        return self.get(aggregate_id)

    def set_metadata(self, aggregate_id: int,
                     changes: Mapping[str, str | None]) -> Aggregate:
        """Add, change (a string) or remove (None) metadata items; the
        ``availability_zone`` item is the aggregate's zone."""
        current = self.get(aggregate_id)
        if AZ_KEY in changes:
            _check_zone(changes[AZ_KEY])
            self._check_host_zone(current, changes[AZ_KEY])
        with self.store.transaction() as db:
            for key, value in changes.items():
                if key == AZ_KEY:
                    _set_zone(db, aggregate_id, value)
                elif value is None:
                    db.execute("DELETE FROM aggregate_metadata WHERE aggregate_id = ? AND "
                               "key = ?", (aggregate_id, key))
                else:
                    db.execute("INSERT OR REPLACE INTO aggregate_metadata VALUES (?, ?, ?)",
                               (aggregate_id, key, value))
            _touch(db, aggregate_id)
        return self.get(aggregate_id)

    def _check_host_zone(self, aggregate: Aggregate, zone: str | None) -> None:
        if aggregate.hosts and zone not in (None, HOST_ZONE):
            raise Invalid(reason=f"aggregate {aggregate.id} holds this host, whose servers "
                          f"are always in zone {HOST_ZONE!r}: its zone cannot be {zone!r}")


def _check_zone(zone: str | None) -> None:
    if zone == INTERNAL_ZONE:
        raise Invalid(reason=f"{INTERNAL_ZONE!r} is the zone of Nova's internal services, "
                      "not an aggregate's")


def _set_zone(db: sqlite3.Connection, aggregate_id: int, zone: str | None) -> None:
    db.execute("UPDATE aggregates SET availability_zone = ? WHERE id = ?", (zone, aggregate_id))
    db.execute("DELETE FROM aggregate_metadata WHERE aggregate_id = ? AND key = ?",
               (aggregate_id, AZ_KEY))
    if zone is not None:
        db.execute("INSERT INTO aggregate_metadata VALUES (?, ?, ?)", (aggregate_id, AZ_KEY, zone))


def _touch(db: sqlite3.Connection, aggregate_id: int) -> None:
    db.execute("UPDATE aggregates SET updated_at = ? WHERE id = ?", (time.time(), aggregate_id))
