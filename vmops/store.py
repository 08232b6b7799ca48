"""The SQLite records: instances, flavors, images and keypairs.

One file in the state directory, WAL mode. A record is written before the
thing it describes is made (an instance row exists before its domain), so
a crash never leaves a VM that vmops does not know about. ``destroy``
deletes the instance row last, once everything it describes is gone.

Schema versions and migrations
------------------------------
The schema version is SQLite's ``PRAGMA user_version``. ``MIGRATIONS`` lists
the numbered steps that bring a database from one version to the next;
version 1 is the schema of the first releases, which stored no version (a
database with tables and ``user_version`` 0 is a version 1 database).

Opening a store (the service does at start) reads the version first, then:

- newer than ``SCHEMA_VERSION``: refused with ``DatabaseTooNew``; the file
  is not modified;
- older, with records in it: the file is copied with SQLite's backup API to
  ``vmops.db.v<old>-<time>.bak`` (mode 0600), then every pending step runs
  in ONE transaction that also sets ``user_version``; any failure rolls all
  of it back and raises ``MigrationFailed`` naming the backup.

To change the schema, append a step; never edit a released one::

    Migration(2, "instances: the network they are on",
              "ALTER TABLE instances ADD COLUMN network_id TEXT NOT NULL DEFAULT ''"),
    Migration(3, "keypairs: comment split out", _split_keypair_comment),

A step is SQL (one or more statements; no BEGIN/COMMIT, no VACUUM) or a
function ``(sqlite3.Connection) -> None`` that runs statements on the
connection it is given and never commits. Give new columns a DEFAULT (or
fill them in the step) so that existing rows stay valid, and add a case to
tests/unit/test_store_migrations.py: it migrates a database made by the
release before versions existed (tests/unit/fixtures/store_v1.db) to the
latest version and checks every record.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vmops.errors import (
    AlreadyExists,
    DatabaseTooNew,
    FlavorNotFound,
    ImageNotFound,
    InstanceNotFound,
    KeypairNotFound,
    MigrationFailed,
)

log = logging.getLogger(__name__)

# Schema version 1: the tables as the unversioned releases made them.
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS flavors (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, ram_mib INTEGER NOT NULL,
    vcpus INTEGER NOT NULL, root_gb INTEGER NOT NULL, ephemeral_gb INTEGER NOT NULL,
    builtin INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, status TEXT NOT NULL,
    format TEXT NOT NULL, virtual_size INTEGER NOT NULL, file_size INTEGER NOT NULL,
    checksum TEXT NOT NULL, path TEXT NOT NULL, source TEXT NOT NULL,
    bytes_done INTEGER NOT NULL, bytes_total INTEGER, fault TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS keypairs (
    name TEXT PRIMARY KEY, public_key TEXT NOT NULL, fingerprint TEXT NOT NULL,
    type TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, vm_state TEXT NOT NULL,
    task_state TEXT, power_state TEXT NOT NULL, flavor_id TEXT NOT NULL,
    image_id TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    fault TEXT NOT NULL, body TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Migration:
    """The step that brings a database from ``version - 1`` to ``version``."""

    version: int
    purpose: str
    step: str | Callable[[sqlite3.Connection], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "flavors, images, keypairs and instances", SCHEMA_V1),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def schema_version(db: sqlite3.Connection) -> int:
    """The database's schema version; an unversioned one with tables is version 1."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version == 0 and db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'instances'").fetchone():
        return 1
    return version


def refuse_newer(db: sqlite3.Connection, path: Path, supported: int) -> int:
    """The database's schema version, if this code understands it."""
    found = schema_version(db)
    if found > supported:
        raise DatabaseTooNew(path=path, found=found, supported=supported)
    return found


def migrate(db: sqlite3.Connection, path: Path,
            migrations: Sequence[Migration] = MIGRATIONS) -> Path | None:
    """Bring ``db`` (opened in autocommit mode) to the last version of ``migrations``.

    Returns the backup taken first, or None when no step had to run.
    """
    latest = migrations[-1].version
    found = refuse_newer(db, path, latest)
    pending = [m for m in migrations if m.version > found]
    stored = int(db.execute("PRAGMA user_version").fetchone()[0])
    if not pending and stored == found:
        return None
    # A new (empty) database has nothing to lose; an unversioned version 1
    # database only gets its number written.
    backup = _backup(db, path, found) if pending and found else None
    try:
        db.execute("BEGIN IMMEDIATE")
        for migration in pending:
            _run_step(db, migration.step)
        db.execute(f"PRAGMA user_version = {int(latest)}")
        db.execute("COMMIT")
    except Exception as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise MigrationFailed(path=path, version=latest, reason=str(exc) or repr(exc),
                              backup=backup or "none (the database had no records)") from exc
    if pending and found:
        log.warning("database %s migrated from schema version %d to %d (%s); the old one "
                    "was copied to %s", path, found, latest,
                    "; ".join(m.purpose for m in pending), backup)
    return backup


def _run_step(db: sqlite3.Connection, step: str | Callable[[sqlite3.Connection], None]) -> None:
    if callable(step):
        step(db)
        return
    # executescript() would COMMIT first: run the statements one by one instead.
    statement = ""
    for line in step.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in migration: {statement.strip()!r}")


def _backup(db: sqlite3.Connection, path: Path, version: int) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.v{version}-{stamp}.bak")
    n = 0
    while True:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            n += 1
            target = path.with_name(f"{path.name}.v{version}-{stamp}-{n}.bak")
    os.close(fd)
    copy = sqlite3.connect(str(target))
    try:
        db.backup(copy)
    finally:
        copy.close()
    return target


@dataclass(frozen=True)
class Flavor:
    id: str
    name: str
    ram_mib: int
    vcpus: int
    root_gb: int
    ephemeral_gb: int = 0
    builtin: bool = False
    created_at: float = 0.0


# OpenStack's classic sizes, scaled down where a test guest is concerned.
BUILTIN_FLAVORS = (
    Flavor("1", "m1.tiny", 512, 1, 1, 0, True),
    Flavor("2", "m1.small", 2048, 1, 20, 0, True),
    Flavor("3", "m1.medium", 4096, 2, 40, 0, True),
    Flavor("4", "m1.large", 8192, 4, 80, 0, True),
    Flavor("5", "m1.xlarge", 16384, 8, 160, 0, True),
)


@dataclass(frozen=True)
class Image:
    id: str
    name: str
    status: str  # queued | saving | active | error
    format: str = ""
    virtual_size: int = 0
    file_size: int = 0
    checksum: str = ""
    path: str = ""
    source: str = ""
    bytes_done: int = 0
    bytes_total: int | None = None
    fault: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class Keypair:
    name: str
    public_key: str
    fingerprint: str
    type: str = "ssh"
    created_at: float = 0.0


@dataclass(frozen=True)
class DiskRecord:
    """Each disk's format is recorded here and never probed from the file."""

    role: str  # root | ephemeral | config
    path: str
    format: str
    target: str
    device: str = "disk"  # disk | cdrom


@dataclass(frozen=True)
class Instance:
    id: str
    name: str
    vm_state: str  # building | active | stopped | paused | suspended | error
    task_state: str | None
    power_state: str  # a vmops.hypervisor.base.PowerState value
    flavor_id: str
    image_id: str
    created_at: float = 0.0
    updated_at: float = 0.0
    fault: str = ""
    # -- stored as JSON in `body` -------------------------------------------
    flavor: dict[str, Any] = field(default_factory=dict)  # snapshot at spawn time
    image_name: str = ""
    macs: tuple[str, ...] = ()
    disks: tuple[DiskRecord, ...] = ()
    config_drive: bool = False
    key_name: str | None = None
    key_data: str | None = None  # the public key as it was at spawn
    properties: dict[str, str] = field(default_factory=dict)
    user_data: str | None = None  # base64, kept to rebuild the config drive
    injected_files: tuple[tuple[str, str], ...] = ()  # (path, base64 content)
    launched_at: float | None = None
    desired_running: bool = False  # was it meant to be running (host-boot resume)


_COLUMNS = ("id", "name", "vm_state", "task_state", "power_state", "flavor_id", "image_id",
            "created_at", "updated_at", "fault")


def _instance_to_row(inst: Instance) -> dict[str, Any]:
    data = asdict(inst)
    row = {k: data.pop(k) for k in _COLUMNS}
    row["body"] = json.dumps(data, sort_keys=True)
    return row


def _instance_from_row(row: sqlite3.Row) -> Instance:
    body = json.loads(row["body"])
    body["macs"] = tuple(body.get("macs", ()))
    body["disks"] = tuple(DiskRecord(**d) for d in body.get("disks", ()))
    body["injected_files"] = tuple(tuple(p) for p in body.get("injected_files", ()))
    known = {f.name for f in fields(Instance)}
    return Instance(**{k: row[k] for k in _COLUMNS}, **{k: v for k, v in body.items()
                                                        if k in known})


class Store:
    def __init__(self, path: Path, migrations: Sequence[Migration] = MIGRATIONS) -> None:
        """Open (or create) the database and migrate it to the latest schema version."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        try:
            # The version is read before anything is written: a database from
            # a newer vmops must be refused unmodified (journal mode included).
            refuse_newer(self._db, path, migrations[-1].version)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            migrate(self._db, path, migrations)
        except BaseException:
            self._db.close()
            raise
        self._seed_flavors()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _insert(self, table: str, row: dict[str, Any], kind: str, name: str) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        try:
            with self._tx() as db:
                db.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", tuple(row.values()))
        except sqlite3.IntegrityError:
            raise AlreadyExists(kind=kind, name=name) from None

    # -- flavors -------------------------------------------------------------
    def _seed_flavors(self) -> None:
        for flavor in BUILTIN_FLAVORS:
            with self._tx() as db:
                db.execute(
                    "INSERT OR IGNORE INTO flavors VALUES (?,?,?,?,?,?,?,?)",
                    (flavor.id, flavor.name, flavor.ram_mib, flavor.vcpus, flavor.root_gb,
                     flavor.ephemeral_gb, 1, 0.0))

    def add_flavor(self, flavor: Flavor) -> Flavor:
        flavor = replace(flavor, created_at=time.time())
        row = asdict(flavor)
        row["builtin"] = int(flavor.builtin)
        self._insert("flavors", row, "flavor", flavor.name)
        return flavor

    def flavors(self) -> list[Flavor]:
        rows = self._query("SELECT * FROM flavors ORDER BY ram_mib, vcpus, name")
        return [Flavor(**{**dict(r), "builtin": bool(r["builtin"])}) for r in rows]

    def flavor(self, ref: str) -> Flavor:
        rows = self._query("SELECT * FROM flavors WHERE id = ? OR name = ? ORDER BY id = ? DESC",
                           ref, ref, ref)
        if not rows:
            raise FlavorNotFound(flavor=ref)
        return Flavor(**{**dict(rows[0]), "builtin": bool(rows[0]["builtin"])})

    def delete_flavor(self, flavor_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM flavors WHERE id = ?", (flavor_id,))

    # -- images --------------------------------------------------------------
    def add_image(self, image: Image) -> Image:
        now = time.time()
        image = replace(image, created_at=now, updated_at=now)
        self._insert("images", asdict(image), "image", image.name)
        return image

    def update_image(self, image: Image, **changes: Any) -> Image:
        image = replace(image, updated_at=time.time(), **changes)
        row = asdict(image)
        sets = ", ".join(f"{k} = ?" for k in row)
        with self._tx() as db:
            db.execute(f"UPDATE images SET {sets} WHERE id = ?", (*row.values(), image.id))
        return image

    def images(self) -> list[Image]:
        return [Image(**dict(r)) for r in self._query("SELECT * FROM images ORDER BY name")]

    def image(self, ref: str) -> Image:
        rows = self._query("SELECT * FROM images WHERE id = ? OR name = ? ORDER BY id = ? DESC",
                           ref, ref, ref)
        if not rows:
            raise ImageNotFound(image=ref)
        return Image(**dict(rows[0]))

    def delete_image(self, image_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM images WHERE id = ?", (image_id,))

    # -- keypairs ------------------------------------------------------------
    def add_keypair(self, keypair: Keypair) -> Keypair:
        keypair = replace(keypair, created_at=time.time())
        self._insert("keypairs", asdict(keypair), "keypair", keypair.name)
        return keypair

    def keypairs(self) -> list[Keypair]:
        return [Keypair(**dict(r)) for r in self._query("SELECT * FROM keypairs ORDER BY name")]

    def keypair(self, name: str) -> Keypair:
        rows = self._query("SELECT * FROM keypairs WHERE name = ?", name)
        if not rows:
            raise KeypairNotFound(name=name)
        return Keypair(**dict(rows[0]))

    def delete_keypair(self, name: str) -> None:
        self.keypair(name)
        with self._tx() as db:
            db.execute("DELETE FROM keypairs WHERE name = ?", (name,))

    # -- instances -----------------------------------------------------------
    def add_instance(self, inst: Instance) -> Instance:
        now = time.time()
        inst = replace(inst, created_at=now, updated_at=now)
        self._insert("instances", _instance_to_row(inst), "instance", inst.name)
        return inst

    def update_instance(self, inst: Instance | str, **changes: Any) -> Instance:
        """Apply ``changes`` to the stored row (re-read under the lock, so two
        writers changing different fields never undo each other)."""
        instance_id = inst if isinstance(inst, str) else inst.id
        with self._tx() as db:
            rows = db.execute("SELECT * FROM instances WHERE id = ?", (instance_id,)).fetchall()
            if not rows:
                raise InstanceNotFound(instance=instance_id)
            fresh = replace(_instance_from_row(rows[0]), updated_at=time.time(), **changes)
            row = _instance_to_row(fresh)
            sets = ", ".join(f"{k} = ?" for k in row)
            db.execute(f"UPDATE instances SET {sets} WHERE id = ?", (*row.values(), instance_id))
        return fresh

    def instances(self) -> list[Instance]:
        rows = self._query("SELECT * FROM instances ORDER BY created_at, name")
        return [_instance_from_row(r) for r in rows]

    def instance(self, ref: str) -> Instance:
        rows = self._query(
            "SELECT * FROM instances WHERE id = ? OR name = ? ORDER BY id = ? DESC", ref, ref, ref)
        if not rows:
            raise InstanceNotFound(instance=ref)
        return _instance_from_row(rows[0])

    def delete_instance(self, instance_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM instances WHERE id = ?", (instance_id,))

    def instances_using(self, column: str, value: str) -> list[str]:
        # The column name is spliced into the SQL: only these two, checked
        # with a test that survives `python -O`.
        if column not in ("image_id", "flavor_id"):
            raise ValueError(f"instances_using: no instance column {column!r} to match")
        return [r["name"] for r in
                self._query(f"SELECT name FROM instances WHERE {column} = ?", value)]
