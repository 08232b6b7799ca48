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
              "ALTER TABLE instances ADD COLUMN network_id TEXT NOT NULL DEFAULT '';"),
    Migration(3, "keypairs: comment split out", _split_keypair_comment),

A step is SQL (one or more statements, each ending in ";"; no BEGIN/COMMIT,
no VACUUM) or a function ``(sqlite3.Connection) -> None`` that runs
statements on the connection it is given and never commits. Give new columns a DEFAULT (or
fill them in the step) so that existing rows stay valid, and add a case to
tests/unit/test_store_migrations.py: it migrates a database made by the
release before versions existed (tests/unit/fixtures/store_v1.db) to the
latest version and checks every record.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sqlite3
import sys
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from vmops.errors import (
    AddressInUse,
    AlreadyExists,
    Conflict,
    DatabaseCorrupt,
    DatabaseTooNew,
    FlavorNotFound,
    ImageNotFound,
    InstanceNotFound,
    InUse,
    KeypairNotFound,
    MigrationFailed,
    PortForwardNotFound,
    PortTaken,
    SecurityGroupNotFound,
    SecurityGroupRuleNotFound,
    StoreError,
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


# Schema version 2: the vmops network. Every NIC is a port (user-mode ones
# too, with no address); security groups, their rules and members; port
# forwards. An instance's rows here go with it (``delete_instance``).
SCHEMA_V2 = """
CREATE TABLE networks (
    name TEXT PRIMARY KEY, bridge TEXT NOT NULL, cidr TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE ports (
    id TEXT PRIMARY KEY, instance_id TEXT NOT NULL, position INTEGER NOT NULL,
    mode TEXT NOT NULL, network TEXT NOT NULL, mac TEXT NOT NULL UNIQUE, ip TEXT,
    tap TEXT UNIQUE, created_at REAL NOT NULL, UNIQUE (network, ip));
CREATE INDEX ports_instance ON ports (instance_id);
CREATE TABLE security_groups (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, description TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE security_group_rules (
    id TEXT PRIMARY KEY, group_id TEXT NOT NULL, direction TEXT NOT NULL,
    protocol TEXT NOT NULL, port_min INTEGER, port_max INTEGER, remote_cidr TEXT,
    remote_group_id TEXT, created_at REAL NOT NULL);
CREATE TABLE instance_security_groups (
    instance_id TEXT NOT NULL, group_id TEXT NOT NULL, PRIMARY KEY (instance_id, group_id));
CREATE TABLE port_forwards (
    id TEXT PRIMARY KEY, instance_id TEXT NOT NULL, protocol TEXT NOT NULL,
    host_address TEXT NOT NULL, host_port INTEGER NOT NULL, guest_port INTEGER NOT NULL,
    created_at REAL NOT NULL, UNIQUE (protocol, host_address, host_port));
"""

# Schema version 6: projects and users (the built-in identity service), and
# what each project owns. Instance and image names stop being unique (Nova
# and Glance allow duplicates); a keypair's name is unique per user. Records
# made before this version belong to the ``admin`` project and user this
# step creates. Also the records of Nova's smaller APIs: instance actions,
# server groups and quotas.
IDENTITY_DOMAIN = "default"
ADMIN_NAME = "admin"
ROLES = ("admin", "member", "reader")

SCHEMA_V6 = """
CREATE TABLE projects (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, domain_id TEXT NOT NULL,
    description TEXT NOT NULL, enabled INTEGER NOT NULL, created_at REAL NOT NULL,
    UNIQUE (domain_id, name));
CREATE TABLE users (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, domain_id TEXT NOT NULL,
    password_hash TEXT NOT NULL, default_project_id TEXT, email TEXT NOT NULL,
    enabled INTEGER NOT NULL, created_at REAL NOT NULL, UNIQUE (domain_id, name));
CREATE TABLE roles (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE role_assignments (
    user_id TEXT NOT NULL, project_id TEXT NOT NULL, role_id TEXT NOT NULL,
    PRIMARY KEY (user_id, project_id, role_id));
CREATE TABLE tokens (
    id_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL, project_id TEXT,
    methods TEXT NOT NULL, audit_id TEXT NOT NULL, issued_at REAL NOT NULL,
    expires_at REAL NOT NULL);
CREATE INDEX tokens_expiry ON tokens (expires_at);

CREATE TABLE instances_v6 (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, vm_state TEXT NOT NULL,
    task_state TEXT, power_state TEXT NOT NULL, flavor_id TEXT NOT NULL,
    image_id TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    fault TEXT NOT NULL, body TEXT NOT NULL,
    project_id TEXT NOT NULL, user_id TEXT NOT NULL);
INSERT INTO instances_v6 SELECT id, name, vm_state, task_state, power_state, flavor_id,
    image_id, created_at, updated_at, fault, body, :project, :user FROM instances;
DROP TABLE instances;
ALTER TABLE instances_v6 RENAME TO instances;
CREATE INDEX instances_name ON instances (name);
CREATE INDEX instances_project ON instances (project_id);

CREATE TABLE images_v6 (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL,
    format TEXT NOT NULL, virtual_size INTEGER NOT NULL, file_size INTEGER NOT NULL,
    checksum TEXT NOT NULL, path TEXT NOT NULL, source TEXT NOT NULL,
    bytes_done INTEGER NOT NULL, bytes_total INTEGER, fault TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    login_user TEXT NOT NULL, instance_uuid TEXT NOT NULL,
    owner TEXT NOT NULL, visibility TEXT NOT NULL, extra TEXT NOT NULL);
INSERT INTO images_v6 SELECT id, name, status, format, virtual_size, file_size, checksum,
    path, source, bytes_done, bytes_total, fault, created_at, updated_at, login_user,
    instance_uuid, :project, 'public', '{}' FROM images;
DROP TABLE images;
ALTER TABLE images_v6 RENAME TO images;
CREATE INDEX images_name ON images (name);

CREATE TABLE keypairs_v6 (
    user_id TEXT NOT NULL, name TEXT NOT NULL, public_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL, type TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (user_id, name));
INSERT INTO keypairs_v6 SELECT :user, name, public_key, fingerprint, type, created_at
    FROM keypairs;
DROP TABLE keypairs;
ALTER TABLE keypairs_v6 RENAME TO keypairs;

ALTER TABLE security_groups ADD COLUMN project_id TEXT NOT NULL DEFAULT '';
UPDATE security_groups SET project_id = :project;

CREATE TABLE instance_actions (
    request_id TEXT NOT NULL, instance_id TEXT NOT NULL, action TEXT NOT NULL,
    project_id TEXT NOT NULL, user_id TEXT NOT NULL, start_time REAL NOT NULL,
    finish_time REAL, result TEXT, message TEXT, PRIMARY KEY (instance_id, request_id));
CREATE TABLE server_groups (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, policy TEXT NOT NULL,
    project_id TEXT NOT NULL, user_id TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE server_group_members (
    group_id TEXT NOT NULL, instance_id TEXT NOT NULL UNIQUE,
    PRIMARY KEY (group_id, instance_id));
CREATE TABLE quotas (
    project_id TEXT NOT NULL, resource TEXT NOT NULL, hard_limit INTEGER NOT NULL,
    PRIMARY KEY (project_id, resource));
"""


def _identity_and_ownership(db: sqlite3.Connection) -> None:
    """Schema 6: the admin project and user, the roles, and every older
    record given to them."""
    project_id, user_id = uuidlib.uuid4().hex, uuidlib.uuid4().hex
    now = time.time()
    names = {"project": project_id, "user": user_id}
    statement = ""
    for line in SCHEMA_V6.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            params = {k: v for k, v in names.items() if f":{k}" in statement}
            db.execute(statement, params)
            statement = ""
    db.execute("INSERT INTO projects VALUES (?, ?, ?, ?, 1, ?)",
               (project_id, ADMIN_NAME, IDENTITY_DOMAIN, "Bootstrap project for vmops", now))
    db.execute("INSERT INTO users VALUES (?, ?, ?, '', ?, '', 1, ?)",
               (user_id, ADMIN_NAME, IDENTITY_DOMAIN, project_id, now))
    for role in ROLES:
        role_id = uuidlib.uuid4().hex
        db.execute("INSERT INTO roles VALUES (?, ?)", (role_id, role))
        db.execute("INSERT INTO role_assignments VALUES (?, ?, ?)",
                   (user_id, project_id, role_id))


# Schema version 7: volumes (vmops/volumes), each owned by a project, and
# their attachments (one per volume; a device name once per instance).
SCHEMA_V7 = """
CREATE TABLE volumes (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL,
    size_gb INTEGER NOT NULL, status TEXT NOT NULL, format TEXT NOT NULL,
    path TEXT NOT NULL, image_id TEXT NOT NULL, bootable INTEGER NOT NULL,
    fault TEXT NOT NULL, project_id TEXT NOT NULL, user_id TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE INDEX volumes_project ON volumes (project_id);
CREATE TABLE volume_attachments (
    id TEXT PRIMARY KEY, volume_id TEXT NOT NULL UNIQUE, instance_id TEXT NOT NULL,
    device TEXT NOT NULL, created_at REAL NOT NULL, UNIQUE (instance_id, device));
"""

# Schema version 8: Nova's smaller records. Quotas per user as well as per
# project (user_id '' is the project's own); quota classes in their own
# table (schema 6 kept them in quotas under "class:<name>": moved here);
# each Nova service's enabled/forced-down state; what a destroyed server
# used (os-simple-tenant-usage counts it over its lifetime); private
# flavors, their projects and extra specs, and the flavor fields Nova has
# that vmops' did not (swap, rxtx_factor, description); host aggregates.
SCHEMA_V8 = """
CREATE TABLE quotas_v8 (
    project_id TEXT NOT NULL, user_id TEXT NOT NULL, resource TEXT NOT NULL,
    hard_limit INTEGER NOT NULL, PRIMARY KEY (project_id, user_id, resource));
INSERT INTO quotas_v8 SELECT project_id, '', resource, hard_limit FROM quotas
    WHERE project_id NOT LIKE 'class:%';
CREATE TABLE quota_classes (
    class_name TEXT NOT NULL, resource TEXT NOT NULL, hard_limit INTEGER NOT NULL,
    PRIMARY KEY (class_name, resource));
INSERT INTO quota_classes SELECT substr(project_id, 7), resource, hard_limit FROM quotas
    WHERE project_id LIKE 'class:%';
DROP TABLE quotas;
ALTER TABLE quotas_v8 RENAME TO quotas;
CREATE TABLE services (
    binary TEXT NOT NULL, host TEXT NOT NULL, disabled INTEGER NOT NULL,
    disabled_reason TEXT, forced_down INTEGER NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (binary, host));
CREATE TABLE instance_usage (
    instance_id TEXT PRIMARY KEY, name TEXT NOT NULL, project_id TEXT NOT NULL,
    user_id TEXT NOT NULL, flavor TEXT NOT NULL, vm_state TEXT NOT NULL,
    created_at REAL NOT NULL, launched_at REAL, deleted_at REAL NOT NULL);
CREATE INDEX instance_usage_deleted ON instance_usage (deleted_at);
ALTER TABLE flavors ADD COLUMN is_public INTEGER NOT NULL DEFAULT 1;
ALTER TABLE flavors ADD COLUMN swap_mb INTEGER NOT NULL DEFAULT 0;
ALTER TABLE flavors ADD COLUMN rxtx_factor REAL NOT NULL DEFAULT 1.0;
ALTER TABLE flavors ADD COLUMN description TEXT;
CREATE TABLE flavor_projects (
    flavor_id TEXT NOT NULL, project_id TEXT NOT NULL, PRIMARY KEY (flavor_id, project_id));
CREATE TABLE flavor_extra_specs (
    flavor_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (flavor_id, key));
CREATE TABLE aggregates (
    id INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
    availability_zone TEXT, created_at REAL NOT NULL, updated_at REAL);
CREATE TABLE aggregate_hosts (
    aggregate_id INTEGER NOT NULL, host TEXT NOT NULL, PRIMARY KEY (aggregate_id, host));
CREATE TABLE aggregate_metadata (
    aggregate_id INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (aggregate_id, key));
"""

# Schema version 9: a volume may be remote, an NBD export or an iSCSI LUN
# that QEMU opens itself (vmops/volumes/remote.py): its protocol ('' for a
# local file), where it is, and for CHAP the user name and the uuid of the
# libvirt secret holding the password (never the password itself).
SCHEMA_V9 = """
ALTER TABLE volumes ADD COLUMN protocol TEXT NOT NULL DEFAULT '';
ALTER TABLE volumes ADD COLUMN remote_host TEXT NOT NULL DEFAULT '';
ALTER TABLE volumes ADD COLUMN remote_port INTEGER NOT NULL DEFAULT 0;
ALTER TABLE volumes ADD COLUMN remote_socket TEXT NOT NULL DEFAULT '';
ALTER TABLE volumes ADD COLUMN remote_export TEXT NOT NULL DEFAULT '';
ALTER TABLE volumes ADD COLUMN remote_lun INTEGER NOT NULL DEFAULT 0;
ALTER TABLE volumes ADD COLUMN chap_user TEXT NOT NULL DEFAULT '';
ALTER TABLE volumes ADD COLUMN secret_uuid TEXT NOT NULL DEFAULT '';
"""


def _change_log_triggers(table: str) -> str:
    """The triggers that log each insert, update (and change of id) and
    delete of ``table``'s rows in ``row_changes``."""
    log_row = f"INSERT INTO row_changes (tbl, id) VALUES ('{table}', {{}}.id); END;"
    return f"""
CREATE TRIGGER {table}_inserted AFTER INSERT ON {table} BEGIN {log_row.format("NEW")}
CREATE TRIGGER {table}_updated AFTER UPDATE ON {table} BEGIN {log_row.format("NEW")}
CREATE TRIGGER {table}_rekeyed AFTER UPDATE OF id ON {table} WHEN OLD.id IS NOT NEW.id
    BEGIN {log_row.format("OLD")}
CREATE TRIGGER {table}_deleted AFTER DELETE ON {table} BEGIN {log_row.format("OLD")}
"""


# Schema version 11: a log of the instances' and ports' rows that changed,
# kept by triggers, so whoever changes a row (this store, another connection,
# SQL behind the store's back) logs it: a list after a write reads only the
# rows changed since the last list, not every row again (#17). Each change
# appends a row that cannot conflict with another (its seq is new, its id
# may even be NULL), so a trigger adds no way for a write to fail.
# ``Store._prune_changes`` deletes old entries and records how far in
# ``row_changes_pruned``: a reader that had not got that far reads the
# whole table again.
SCHEMA_V11 = """
CREATE TABLE row_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, id TEXT);
CREATE TABLE row_changes_pruned (upto INTEGER NOT NULL);
INSERT INTO row_changes_pruned VALUES (0);
""" + _change_log_triggers("instances") + _change_log_triggers("ports")

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "flavors, images, keypairs and instances", SCHEMA_V1),
    Migration(2, "ports, security groups and port forwards (the vmops network)", SCHEMA_V2),
    Migration(3, "the default security group", lambda db: _seed_default_group(db)),
    Migration(4, "images: the guest's login user (for `vmops ssh`)",
              "ALTER TABLE images ADD COLUMN login_user TEXT NOT NULL DEFAULT '';"),
    Migration(5, "images: the instance a snapshot was taken of",
              "ALTER TABLE images ADD COLUMN instance_uuid TEXT NOT NULL DEFAULT '';"),
    Migration(6, "identity (projects, users, roles, tokens), what each project owns; "
              "instance actions, server groups and quotas", _identity_and_ownership),
    Migration(7, "volumes and their attachments", SCHEMA_V7),
    Migration(8, "quotas per user and quota classes; services; usage of destroyed "
              "servers; private flavors, extra specs; host aggregates", SCHEMA_V8),
    Migration(9, "volumes: remote volumes' connection data (NBD, iSCSI)", SCHEMA_V9),
    # Each verb closes its instance's open action (twice: at its start and
    # end); without this index that scanned every action the instance ever
    # had, so a verb cost grew with the instance's history (3 ms at 3,000).
    Migration(10, "instance actions: an index of the open ones",
              "CREATE INDEX instance_actions_open ON instance_actions (instance_id) "
              "WHERE finish_time IS NULL;"),
    Migration(11, "instances and ports: a log of the rows changed, for lists that read "
              "only those", SCHEMA_V11),
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


@contextmanager
def _corruption_refused(path: Path) -> Iterator[None]:
    """SQLite's "malformed" and "not a database" errors as DatabaseCorrupt."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            raise DatabaseCorrupt(path=path, reason=str(exc)) from None
        raise


def _quick_check(db: sqlite3.Connection, path: Path) -> None:
    """SQLite's quick_check: a truncated or damaged file is refused (O(size),
    milliseconds for a store of this kind)."""
    problems = [str(r[0]) for r in db.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise DatabaseCorrupt(path=path, reason="; ".join(problems))


def database_problem(path: Path, supported: int = SCHEMA_VERSION) -> str | None:
    """Why the service would refuse the database at ``path`` (read-only: for
    ``vmops doctor``), or why its records are gone; None if it is usable."""
    if not path.exists():
        return None
    if path.stat().st_size == 0:
        return (f"{path} is empty (0 bytes): if vmops ran here before, its records are lost; "
                "restore a copy with the service stopped (VMs without a record stay unmanaged)")
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        with _corruption_refused(path):
            refuse_newer(db, path, supported)
            _quick_check(db, path)
    except StoreError as exc:
        return exc.message
    except sqlite3.Error as exc:
        return f"{path} cannot be read: {exc}"
    finally:
        db.close()
    return None


def recorded_network_cidr(path: Path, name: str) -> str | None:
    """The subnet a network was made with, read-only (for ``vmops doctor``
    without the service); None when there is none or it cannot be read."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT cidr FROM networks WHERE name = ?", (name,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None  # no such table yet (an older schema), or damaged: doctor says so
    return str(row[0]) if row else None


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
    is_public: bool = True  # a private one: admins and the projects given access
    swap_mb: int = 0
    rxtx_factor: float = 1.0
    description: str | None = None


@dataclass(frozen=True, slots=True)  # no __dict__ per record (#17)
class InstanceFlavor:
    """The flavor as an instance got it, at spawn or at its last resize:
    Nova keeps such a copy, so later changes to the flavor are not the
    instance's. Stored in the instance's JSON ``body`` under ``flavor`` with
    these keys; a record written before a key existed reads its default."""

    id: str = ""
    name: str = ""
    ram_mib: int = 0
    vcpus: int = 0
    root_gb: int = 0
    ephemeral_gb: int = 0
    swap_mb: int = 0
    extra_specs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, flavor: Flavor, extra_specs: dict[str, str]) -> InstanceFlavor:
        return cls(id=flavor.id, name=flavor.name, ram_mib=flavor.ram_mib, vcpus=flavor.vcpus,
                   root_gb=flavor.root_gb, ephemeral_gb=flavor.ephemeral_gb,
                   swap_mb=flavor.swap_mb, extra_specs=dict(extra_specs))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceFlavor:
        """From the stored dict (any release's: missing keys take their
        defaults, unknown ones are ignored; ``null`` numbers read 0)."""
        return cls(id=sys.intern(str(data.get("id") or "")),
                   name=sys.intern(str(data.get("name") or "")),
                   ram_mib=int(data.get("ram_mib") or 0), vcpus=int(data.get("vcpus") or 0),
                   root_gb=int(data.get("root_gb") or 0),
                   ephemeral_gb=int(data.get("ephemeral_gb") or 0),
                   swap_mb=int(data.get("swap_mb") or 0),
                   extra_specs={str(k): str(v)
                                for k, v in (data.get("extra_specs") or {}).items()})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def local_gb(self) -> int:
        """The local disk it gives (root and ephemeral), as Nova counts it."""
        return self.root_gb + self.ephemeral_gb


def _flavor_from_row(row: sqlite3.Row) -> Flavor:
    return Flavor(**{**dict(row), "builtin": bool(row["builtin"]),
                     "is_public": bool(row["is_public"])})


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
    login_user: str = ""  # the guest's user to log in as ('' : unknown; ssh uses root)
    instance_uuid: str = ""  # the instance a snapshot was taken of ('': imported)
    owner: str = ""  # the project that owns it
    visibility: str = "public"  # Glance's: public | private | shared | community
    extra: dict[str, Any] = field(default_factory=dict)  # Glance's other properties


def _image_to_row(image: Image) -> dict[str, Any]:
    row = asdict(image)
    row["extra"] = json.dumps(image.extra, sort_keys=True)
    return row


def _image_from_row(row: sqlite3.Row) -> Image:
    return Image(**{**dict(row), "extra": json.loads(row["extra"])})


@dataclass(frozen=True)
class Keypair:
    name: str
    public_key: str
    fingerprint: str
    type: str = "ssh"
    created_at: float = 0.0
    user_id: str = ""


@dataclass(frozen=True, slots=True)  # no __dict__ per record (#17)
class DiskRecord:
    """Each disk's format is recorded here and never probed from the file."""

    role: str  # root | ephemeral | config
    path: str
    format: str
    target: str
    device: str = "disk"  # disk | cdrom


# No __dict__ per record (#17); weakly referable: views.ServerList's parts
# refer to the record they were rendered from without keeping it.
@dataclass(frozen=True, slots=True, weakref_slot=True)
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
    flavor: InstanceFlavor = field(default_factory=InstanceFlavor)  # its copy (at spawn)
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
    project_id: str = ""  # (a column) the project that owns it
    user_id: str = ""  # (a column) the user who made it
    # -- Nova's display fields (in `body`) ----------------------------------
    hostname: str = ""  # the guest's, derived from the name at spawn ('': the name)
    domain_name: str = ""  # the libvirt domain's ('': vmops-<name>, as before)
    description: str | None = None
    access_ipv4: str = ""
    access_ipv6: str = ""
    tags: tuple[str, ...] = ()
    reservation_id: str = ""  # the request that made it (several at once share it)
    launch_index: int = 0  # its place in that request
    disk_config: str = "MANUAL"  # Nova's OS-DCF:diskConfig, as asked (AUTO or MANUAL)
    locked_by: str = ""  # Nova's lock: "owner" or "admin" ('': not locked)
    # -- resize and rescue (in `body`) ---------------------------------------
    # While a resize is not confirmed or reverted: what the instance was
    # before it ({"flavor_id", "flavor", "disks", "vm_state"}); its old disks
    # are kept in the instance's resize-old directory (compute/resize.py).
    pre_resize: dict[str, Any] | None = None
    # While rescued (or being rescued): the image its rescue disk is made
    # from; the domain then boots from that disk (compute/rescue.py).
    rescue_image_id: str = ""
    # -- boot from volume (in `body`; vmops/compute/boot_volume.py) -----------
    boot_volume_id: str = ""  # the volume that is its root disk (vda); '': a local one
    boot_volume_made: bool = False  # made at spawn from an image (a rollback deletes it)
    delete_on_termination: bool = False  # destroy deletes the boot volume too
    # Other volumes it was created with (vmops/compute/server_volumes.py): the
    # ones made for it at spawn (a rollback deletes them), and those destroy deletes.
    volumes_made: tuple[str, ...] = ()
    volumes_deleted_on_termination: tuple[str, ...] = ()


_COLUMNS = ("id", "name", "vm_state", "task_state", "power_state", "flavor_id", "image_id",
            "created_at", "updated_at", "fault", "project_id", "user_id")
_COLUMN_SET = frozenset(_COLUMNS)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(kind: type) -> tuple[str, ...]:
    """A dataclass's field names, looked up once per class (``fields()``
    builds its tuple again at every call: a third of an instance's
    encoding, #17)."""
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(f.name for f in fields(kind))
    return names


@functools.cache
def _instance_fields() -> frozenset[str]:
    return frozenset(_field_names(Instance))


_PLAIN_TYPES = (str, int, float, bool, type(None))
# The change log (schema version 11) is pruned once it holds this many
# entries (about 3 for each verb; ~40 bytes each): each prune costs the
# other table one whole read.
PRUNE_CHANGES_AT = 10_000


def _plain(value: Any) -> Any:
    """``dataclasses.asdict``'s result for a record's field, without its deep
    copies (the row is encoded at once): an instance's update spent most of
    its time there."""
    if isinstance(value, _PLAIN_TYPES):
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in _field_names(type(value))}
    return value


def _instance_to_row(inst: Instance) -> dict[str, Any]:
    data = {name: _plain(getattr(inst, name)) for name in _field_names(Instance)}
    row = {k: data.pop(k) for k in _COLUMNS}
    row["body"] = json.dumps(data, sort_keys=True)
    return row


# What many records repeat (their states, the image, flavor, project and
# user they share, their disks' roles and formats): one string object for
# all, where each decoded row had its own (issue #17: ~0.8 KiB a record).
# sys.intern's strings go when the last record using one does.
_SHARED_COLUMNS = frozenset({"vm_state", "task_state", "power_state", "flavor_id", "image_id",
                             "project_id", "user_id"})
_SHARED_BODY = ("image_name", "disk_config")


def _shared(value: Any) -> Any:
    return sys.intern(value) if type(value) is str else value


def _instance_from_row(row: sqlite3.Row) -> Instance:
    body = json.loads(row["body"])
    body["macs"] = tuple(body.get("macs", ()))
    body["flavor"] = InstanceFlavor.from_json(body.get("flavor") or {})
    body["disks"] = tuple(DiskRecord(**{k: v if k == "path" else _shared(v)
                                        for k, v in d.items()})
                          for d in body.get("disks", ()))
    for key in _SHARED_BODY:
        if key in body:
            body[key] = _shared(body[key])
    body["injected_files"] = tuple(tuple(p) for p in body.get("injected_files", ()))
    body["tags"] = tuple(body.get("tags", ()))
    for key in ("volumes_made", "volumes_deleted_on_termination"):
        body[key] = tuple(body.get(key, ()))
    known = _instance_fields()
    return Instance(**{k: _shared(row[k]) if k in _SHARED_COLUMNS else row[k]
                       for k in _COLUMNS}, **{k: v for k, v in body.items() if k in known})


@dataclass(frozen=True)
class NetworkRecord:
    name: str
    bridge: str
    cidr: str
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)  # no __dict__ per record (#17)
class Port:
    """One NIC of an instance: on the vmops bridge (mode ``bridge``, with an
    address and a tap) or QEMU user-mode (mode ``user``, neither)."""

    id: str
    instance_id: str
    position: int
    mode: str  # a vmops.network.model.NicMode value
    network: str
    mac: str
    ip: str | None = None
    tap: str | None = None
    created_at: float = 0.0


@dataclass(frozen=True)
class SecurityGroup:
    id: str
    name: str
    description: str = ""
    created_at: float = 0.0
    project_id: str = ""


@dataclass(frozen=True)
class SecurityGroupRule:
    id: str
    group_id: str
    direction: str  # ingress | egress
    protocol: str  # tcp | udp | icmp | any
    port_min: int | None = None
    port_max: int | None = None
    remote_cidr: str | None = None
    remote_group_id: str | None = None
    created_at: float = 0.0


@dataclass(frozen=True)
class PortForward:
    id: str
    instance_id: str
    protocol: str  # tcp | udp
    host_address: str  # 0.0.0.0: every address of the host
    host_port: int
    guest_port: int
    created_at: float = 0.0


DEFAULT_GROUP = "default"


def _seed_default_group(db: sqlite3.Connection) -> None:
    """Every install has the ``default`` group, with OpenStack's rules:
    ingress from members of the same group, all egress."""
    group_id = str(uuidlib.uuid4())
    now = time.time()
    db.execute("INSERT INTO security_groups (id, name, description, created_at) "
               "VALUES (?, ?, ?, ?)", (group_id, DEFAULT_GROUP, "Default security group", now))
    for rule in (SecurityGroupRule(str(uuidlib.uuid4()), group_id, "ingress", "any",
                                   remote_group_id=group_id, created_at=now),
                 SecurityGroupRule(str(uuidlib.uuid4()), group_id, "egress", "any",
                                   created_at=now)):
        Store._insert_rule(db, rule)


# Room the service keeps next to vmops.db (``vmops.db.reserve``) for the
# writes that end a task on a full disk: a few hundred WAL frames.
RECORDS_RESERVE_BYTES = 4 << 20
_RESERVE_RETRY_S = 10.0


class _Reserve:
    """A file holding room on the database's file system, given up when a
    write that must not fail (ending a task in ERROR) finds the disk full,
    and made again once the file system has twice its size free."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._next_try = 0.0
        self.missing = size > 0
        self.keep()

    def keep(self) -> None:
        if not self.missing or time.monotonic() < self._next_try:
            return
        with contextlib.suppress(OSError):
            if self.path.stat().st_size >= self.size:  # kept from the last run
                self.missing = False
                return
        try:
            # A statvfs at each write while it is missing: it comes back at
            # the first write after space is freed, before the next task.
            st = os.statvfs(self.path.parent)
            if st.f_bavail * st.f_frsize < 2 * self.size:
                return
            with self.path.open("wb") as f:
                os.posix_fallocate(f.fileno(), 0, self.size)
        except OSError as exc:
            log.warning("cannot keep %d bytes in %s for the records: %s", self.size,
                        self.path, exc)
            self.path.unlink(missing_ok=True)
            self._next_try = time.monotonic() + _RESERVE_RETRY_S
            return
        self.missing = False

    def release(self) -> bool:
        """Give the room up; False if there was none to give."""
        if self.missing or not self.size:
            return False
        self.path.unlink(missing_ok=True)
        self.missing = True
        return True


class _Keyed(Protocol):
    @property
    def id(self) -> str: ...


_Record = TypeVar("_Record", bound=_Keyed)


@dataclass(frozen=True)
class _LastRead(Generic[_Record]):
    """A whole-table read: the database's version then
    (:meth:`Store._version`), the change log's last entry then (None
    without one) and the records, in the table's order."""

    version: tuple[int, int]
    seq: int | None
    records: list[_Record]


class _DecodedRows(Generic[_Record]):
    """Each row's record, decoded once and reused while the row's
    ``fingerprint`` is the same (so no write is missed, whoever made it):
    a list of 1,000 servers then costs fingerprinting their rows, not
    decoding 1,000 JSON bodies. Records are frozen dataclasses, safe to
    share. A whole-table read replaces the kept set (so a deleted row's
    goes); a partial read (one instance's, or a write's) adds or replaces
    its rows' entries, so the verbs' reads of one record decode it once
    per write, not at every read (#17). The dict is swapped whole, or has
    one entry set or dropped (:meth:`forget`): each a single store under
    the GIL, so threads need no lock (one lost to a concurrent swap is
    only decoded again).

    ``fingerprint``: what is kept of a row to tell it changed; by default
    its values (exact; small rows, whose values the record shares). An
    instance's keeps no copy of its JSON body (issue #17): see
    :func:`_instance_fingerprint`.

    ``last``: the last whole-table read (``sql``, whose order ``order``
    gives again in Python): while the database's version is the same, not
    even the rows need reading again; once it changed, only the rows the
    change log names (:meth:`changed`)."""

    def __init__(self, table: str, decode: Callable[[sqlite3.Row], _Record], order_by: str,
                 order: Callable[[_Record], Any],
                 fingerprint: Callable[[sqlite3.Row], Hashable] = tuple) -> None:
        self.table = table
        self._decode = decode
        self._fingerprint = fingerprint
        self.sql = f"SELECT * FROM {table} ORDER BY {order_by}"
        self._order = order
        self._kept: dict[Any, tuple[Hashable, _Record]] = {}
        self.last: _LastRead[_Record] | None = None

    def records(self, rows: list[sqlite3.Row], whole_table: bool) -> list[_Record]:
        kept = self._kept
        fresh: dict[Any, tuple[Hashable, _Record]] = {}
        out: list[_Record] = []
        for row in rows:
            mark = self._fingerprint(row)
            entry = kept.get(row["id"])
            if entry is None or entry[0] != mark:
                entry = (mark, self._decode(row))
                if not whole_table:
                    kept[row["id"]] = entry
            fresh[row["id"]] = entry
            out.append(entry[1])
        if whole_table:
            self._kept = fresh
        return out

    def changed(self, last: list[_Record], ids: list[str],
                rows: list[sqlite3.Row]) -> list[_Record]:
        """``last`` (a whole-table read) with the rows ``ids`` as they are
        now: ``rows``, the ones of them that still exist (the others were
        deleted), in the table's order."""
        by_id = {record.id: record for record in last}
        for gone in ids:
            by_id.pop(gone, None)
            self._kept.pop(gone, None)
        for record in self.records(rows, whole_table=False):
            by_id[record.id] = record
        return sorted(by_id.values(), key=self._order)

    def keep(self, row: sqlite3.Row, record: _Record) -> None:
        """Keep ``record`` as what ``row`` decodes to (a write that has the
        record it wrote: the next read need not decode it again)."""
        self._kept[row["id"]] = (self._fingerprint(row), record)

    def forget(self, key: Any) -> None:
        """Drop what is kept of the row ``key`` (deleted), in the last
        whole-table read too, instead of at the next one."""
        self._kept.pop(key, None)
        last = self.last
        if last is not None:
            self.last = replace(last, records=[r for r in last.records if r.id != key])


def _row_hash(values: tuple[Any, ...]) -> int:
    """Python's hash of a row's values: 64 bits, SipHash for the strings,
    keyed at random per process (unless PYTHONHASHSEED is set). A name of
    its own so that tests can make every row collide."""
    return hash(values)


def _instance_fingerprint(row: sqlite3.Row) -> tuple[float, int]:
    """An instance row's fingerprint: ``updated_at``, which every write of
    the store sets (so none of them is missed, whatever the hash), and the
    hash of all its values, for writes made behind the store's back (SQL
    that changes a row but not ``updated_at``: missed only if the 64-bit
    hash of the new values equals the old's). 88 bytes where a copy of the
    row's values (the JSON body, 1-2 KiB) was kept before (issue #17)."""
    return (row["updated_at"], _row_hash(tuple(row)))


def _port_from_row(row: sqlite3.Row) -> Port:
    return Port(**dict(row))


class Store:
    def __init__(self, path: Path, migrations: Sequence[Migration] = MIGRATIONS,
                 reserve_bytes: int = 0) -> None:
        """Open (or create) the database and migrate it to the latest schema version.
        ``reserve_bytes``: keep that much room in ``vmops.db.reserve`` for
        ``release_reserve`` (the service does; tools reading a database do not)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        try:
            # Checked before anything is written: a damaged database, or one
            # from a newer vmops, is refused unmodified (journal mode included).
            with _corruption_refused(path):
                refuse_newer(self._db, path, migrations[-1].version)
                _quick_check(self._db, path)
                # A missing or 0-byte file opens as a new, empty database.
                self.started_empty = schema_version(self._db) == 0
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            migrate(self._db, path, migrations)
        except BaseException:
            self._db.close()
            raise
        self._reserve = _Reserve(path.with_name(path.name + ".reserve"), reserve_bytes)
        self._instance_rows = _DecodedRows(
            "instances", _instance_from_row, "created_at, name",
            lambda i: (i.created_at, i.name), _instance_fingerprint)
        self._port_rows = _DecodedRows(
            "ports", _port_from_row, "instance_id, position",
            lambda p: (p.instance_id, p.position))
        # Schema version 11's log of changed rows (absent only when a test
        # migrates to an older version): lists read only what changed.
        self._change_log = bool(self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'row_changes'"
        ).fetchone())
        self._seed_flavors()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def release_reserve(self) -> bool:
        """Free the room kept for the records so that a write the full disk
        refused can be tried again; False if none is kept (or it is gone)."""
        with self._lock:
            released = self._reserve.release()
        if released:
            log.error("the file system holding %s is full: gave up the %d bytes kept for "
                      "the records so a task can end; free space soon",
                      self._reserve.path.parent, self._reserve.size)
        return released

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
                self._reserve.keep()  # nothing to do unless it was given up
            except BaseException:
                # SQLite has already rolled back after some errors (a full
                # disk among them): a second ROLLBACK would fail and hide
                # the error. A failed COMMIT leaves the transaction open.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _version(self) -> tuple[int, int] | None:
        """What changes when anyone changes the database: the rows this
        connection changed, and SQLite's ``data_version`` (commits by other
        connections). None inside a transaction: its changes may yet be
        rolled back, and the count would not go back with them."""
        if self._db.in_transaction:
            return None
        return (self._db.total_changes,
                int(self._db.execute("PRAGMA data_version").fetchone()[0]))

    def _whole_table(self, table: _DecodedRows[_Record]) -> list[_Record]:
        """Every record of ``table``; the last read's again while the
        database has not changed, and once it has, with only the rows the
        change log names read again (a new list: callers sort theirs).
        Rows are decoded outside the lock."""
        with self._lock:
            version = self._version()
            last = table.last
            if version is not None and last is not None and last.version == version:
                return list(last.records)
            if version is None or not self._change_log:
                seq = None
                rows, changed = self._db.execute(table.sql).fetchall(), None
            else:
                seq, pruned, rows, changed = self._read_since(table, last)
                if seq - pruned > PRUNE_CHANGES_AT:
                    self._prune_changes(seq)
        if changed is None:
            records = table.records(rows, whole_table=True)
        else:
            assert last is not None
            records = table.changed(last.records, changed, rows) if changed else last.records
        if version is not None:
            # A read that raced another's may keep the older of the two: its
            # version then differs from the database's, so the next read
            # asks the log again. Never a newer version with older records:
            # the version was taken before the rows were read.
            table.last = _LastRead(version, seq, records)
        return list(records)

    def _read_since(self, table: _DecodedRows[_Record], last: _LastRead[_Record] | None
                    ) -> tuple[int, int, list[sqlite3.Row], list[str] | None]:
        """From one snapshot: the change log's last entry, how far it was
        pruned, and ``table``'s rows: all of them (and None), or, if the log
        still has every entry since ``last``, the ids it names since then
        and the rows of those that still exist."""
        db = self._db
        db.execute("BEGIN")
        try:
            seq, pruned = db.execute(
                "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'row_changes'), "
                "(SELECT upto FROM row_changes_pruned)").fetchone()
            seq = seq or 0
            if last is None or last.seq is None or last.seq < pruned:
                return seq, pruned, db.execute(table.sql).fetchall(), None
            since = (last.seq, table.table)
            ids = [r[0] for r in db.execute(
                "SELECT DISTINCT id FROM row_changes WHERE seq > ? AND tbl = ?", since)]
            rows = db.execute(
                f"SELECT * FROM {table.table} WHERE id IN "
                "(SELECT id FROM row_changes WHERE seq > ? AND tbl = ?)",
                since).fetchall() if ids else []
            return seq, pruned, rows, ids
        finally:
            db.execute("COMMIT")

    def _prune_changes(self, upto: int) -> None:
        """Delete the change log's entries up to ``upto`` and record that it
        was pruned so far: a reader whose last read is older (the other
        table's, another process's store) reads its table whole once."""
        with self._tx() as db:
            db.execute("DELETE FROM row_changes WHERE seq <= ?", (upto,))
            db.execute("UPDATE row_changes_pruned SET upto = max(upto, ?)", (upto,))

    # Public for the record modules that keep their own tables in this
    # database (vmops/identity, vmops/api/nova_extras): one connection, one lock.
    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error)."""
        return self._tx()

    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return self._query(sql, *args)

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
                    "INSERT OR IGNORE INTO flavors (id, name, ram_mib, vcpus, root_gb, "
                    "ephemeral_gb, builtin, created_at) VALUES (?,?,?,?,?,?,?,?)",
                    (flavor.id, flavor.name, flavor.ram_mib, flavor.vcpus, flavor.root_gb,
                     flavor.ephemeral_gb, 1, 0.0))

    def add_flavor(self, flavor: Flavor) -> Flavor:
        """Ids and names share one namespace (``flavor(ref)`` takes either):
        a new flavor's id and name must each be no flavor's id or name."""
        flavor = replace(flavor, created_at=time.time())
        row = asdict(flavor)
        row["builtin"] = int(flavor.builtin)
        row["is_public"] = int(flavor.is_public)
        with self._tx() as db:
            taken = db.execute("SELECT id, name FROM flavors WHERE id IN (?, ?) OR name IN (?, ?)",
                               (flavor.id, flavor.name, flavor.id, flavor.name)).fetchone()
            if taken is not None:
                raise AlreadyExists(
                    f"flavor {taken['name']!r} (id {taken['id']!r}) already has the id or "
                    f"name {flavor.id!r} or {flavor.name!r}: a flavor's id and name must "
                    "each name no other flavor", kind="flavor", name=flavor.name)
            db.execute(f"INSERT INTO flavors ({', '.join(row)}) VALUES "
                       f"({', '.join('?' for _ in row)})", tuple(row.values()))
        return flavor

    def flavors(self) -> list[Flavor]:
        rows = self._query("SELECT * FROM flavors ORDER BY ram_mib, vcpus, name")
        return [_flavor_from_row(r) for r in rows]

    def flavor(self, ref: str) -> Flavor:
        """The flavor whose id or name is ``ref``. Two (only in a database
        from before ids were checked against names) is refused, not guessed."""
        rows = self._query("SELECT * FROM flavors WHERE id = ? OR name = ?", ref, ref)
        if not rows:
            raise FlavorNotFound(flavor=ref)
        if len(rows) > 1:
            raise Conflict(reason=f"{ref!r} is the id of one flavor and the name of another; "
                           "name it by " + " or ".join(
                               repr(r["id"] if r["id"] != ref else r["name"]) for r in rows))
        return _flavor_from_row(rows[0])

    def delete_flavor(self, flavor_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM flavors WHERE id = ?", (flavor_id,))
            db.execute("DELETE FROM flavor_projects WHERE flavor_id = ?", (flavor_id,))
            db.execute("DELETE FROM flavor_extra_specs WHERE flavor_id = ?", (flavor_id,))

    # -- images --------------------------------------------------------------
    def add_image(self, image: Image) -> Image:
        now = time.time()
        image = replace(image, created_at=now, updated_at=now)
        self._insert("images", _image_to_row(image), "image", image.name)
        return image

    def update_image(self, image: Image, **changes: Any) -> Image:
        image = replace(image, updated_at=time.time(), **changes)
        row = _image_to_row(image)
        sets = ", ".join(f"{k} = ?" for k in row)
        with self._tx() as db:
            db.execute(f"UPDATE images SET {sets} WHERE id = ?", (*row.values(), image.id))
        return image

    def images(self) -> list[Image]:
        return [_image_from_row(r) for r in self._query("SELECT * FROM images ORDER BY name")]

    def image(self, ref: str) -> Image:
        rows = self._query("SELECT * FROM images WHERE id = ? OR name = ? ORDER BY id = ? DESC",
                           ref, ref, ref)
        if not rows:
            raise ImageNotFound(image=ref)
        return _image_from_row(rows[0])

    def delete_image(self, image_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM images WHERE id = ?", (image_id,))

    # -- keypairs ------------------------------------------------------------
    def add_keypair(self, keypair: Keypair) -> Keypair:
        keypair = replace(keypair, created_at=time.time())
        self._insert("keypairs", asdict(keypair), "keypair", keypair.name)
        return keypair

    def keypairs(self, user_id: str | None = None) -> list[Keypair]:
        """Every keypair, or ``user_id``'s (a keypair belongs to a user)."""
        if user_id is None:
            rows = self._query("SELECT * FROM keypairs ORDER BY name, user_id")
        else:
            rows = self._query("SELECT * FROM keypairs WHERE user_id = ? ORDER BY name",
                               user_id)
        return [Keypair(**dict(r)) for r in rows]

    def keypair(self, name: str, user_id: str | None = None) -> Keypair:
        """``user_id``'s keypair ``name``; without a user, the first of that name."""
        if user_id is None:
            rows = self._query("SELECT * FROM keypairs WHERE name = ? ORDER BY user_id", name)
        else:
            rows = self._query("SELECT * FROM keypairs WHERE name = ? AND user_id = ?",
                               name, user_id)
        if not rows:
            raise KeypairNotFound(name=name)
        return Keypair(**dict(rows[0]))

    def delete_keypair(self, name: str, user_id: str | None = None) -> None:
        key = self.keypair(name, user_id)
        with self._tx() as db:
            db.execute("DELETE FROM keypairs WHERE name = ? AND user_id = ?",
                       (name, key.user_id))

    # -- instances -----------------------------------------------------------
    def add_instance(self, inst: Instance, ports: Sequence[Port] = (),
                     group_ids: Sequence[str] = (),
                     choose_ip: Callable[[set[str]], str] | None = None) -> Instance:
        """Record an instance with its ports and groups, in one transaction.

        A port of mode ``bridge`` whose ``ip`` is None gets one from
        ``choose_ip(addresses in use)``, chosen inside the transaction, so two
        spawns never get the same address.
        """
        now = time.time()
        inst = replace(inst, created_at=now, updated_at=now)
        row = _instance_to_row(inst)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM instances WHERE id = ?", (inst.id,)).fetchone():
                raise AlreadyExists(kind="instance", name=inst.name)
            db.execute(f"INSERT INTO instances ({', '.join(row)}) VALUES "
                       f"({', '.join('?' for _ in row)})", tuple(row.values()))
            for port in ports:
                port = replace(port, created_at=now)
                if port.mode == "bridge" and port.ip is None:
                    if choose_ip is None:
                        raise ValueError("a bridge port with no address needs choose_ip")
                    used = {r["ip"] for r in db.execute(
                        "SELECT ip FROM ports WHERE network = ? AND ip IS NOT NULL",
                        (port.network,))}
                    port = replace(port, ip=choose_ip(used))
                self._check_port_free(db, port)
                prow = asdict(port)
                db.execute(f"INSERT INTO ports ({', '.join(prow)}) VALUES "
                           f"({', '.join('?' for _ in prow)})", tuple(prow.values()))
            for group_id in group_ids:
                db.execute("INSERT OR IGNORE INTO instance_security_groups VALUES (?, ?)",
                           (inst.id, group_id))
        return inst

    @staticmethod
    def _check_port_free(db: sqlite3.Connection, port: Port) -> None:
        row = db.execute("SELECT i.name FROM ports p JOIN instances i ON i.id = p.instance_id "
                         "WHERE p.mac = ?", (port.mac,)).fetchone()
        if row:
            raise AddressInUse(what="MAC address", value=port.mac, user=f"instance {row[0]!r}")
        if port.ip is not None:
            row = db.execute(
                "SELECT i.name FROM ports p JOIN instances i ON i.id = p.instance_id "
                "WHERE p.network = ? AND p.ip = ?", (port.network, port.ip)).fetchone()
            if row:
                raise AddressInUse(what="IP address", value=port.ip,
                                   user=f"instance {row[0]!r}")

    def update_instance(self, inst: Instance | str, **changes: Any) -> Instance:
        """Apply ``changes`` to the stored row (re-read under the lock, so two
        writers changing different fields never undo each other)."""
        instance_id = inst if isinstance(inst, str) else inst.id
        with self._tx() as db:
            rows = db.execute("SELECT * FROM instances WHERE id = ?", (instance_id,)).fetchall()
            if not rows:
                raise InstanceNotFound(instance=instance_id)
            stored = self._instance_rows.records(rows, whole_table=False)[0]
            fresh = replace(stored, updated_at=time.time(), **changes)
            if _COLUMN_SET.issuperset(changes):
                # A change of columns only (the states, the fault: what the
                # verbs write) leaves the JSON body as stored: not encoded
                # again (most of an update's time, #17).
                row = {k: getattr(fresh, k) for k in ("updated_at", *changes)}
            else:
                row = _instance_to_row(fresh)
            sets = ", ".join(f"{k} = ?" for k in row)
            db.execute(f"UPDATE instances SET {sets} WHERE id = ?", (*row.values(), instance_id))
            if all(isinstance(v, _PLAIN_TYPES) for v in changes.values()):
                # Kept as what a read would decode, for the verb's next
                # reads: so it is if scalars were given (a list given for a
                # tuple would read back as the tuple) and the columns read
                # back as written (a number in a TEXT column would not).
                # Reading the row back for its fingerprint is a tenth of a
                # decode.
                written = db.execute("SELECT * FROM instances WHERE id = ?",
                                     (instance_id,)).fetchone()
                if all(written[k] == v for k, v in row.items()):
                    self._instance_rows.keep(written, fresh)
        return fresh

    def instances(self) -> list[Instance]:
        return self._whole_table(self._instance_rows)

    def instance(self, ref: str) -> Instance:
        """The instance whose id is ``ref``, else the one named ``ref``;
        a name several instances share is refused, naming their ids."""
        rows = self._query(
            "SELECT * FROM instances WHERE id = ? OR name = ? ORDER BY id = ? DESC, created_at",
            ref, ref, ref)
        if not rows:
            raise InstanceNotFound(instance=ref)
        if len(rows) > 1 and rows[0]["id"] != ref:
            raise Conflict(reason=f"{len(rows)} servers are named {ref!r}: "
                           f"{', '.join(r['id'] for r in rows)}; give an id")
        return self._instance_rows.records(rows[:1], whole_table=False)[0]

    def delete_instance(self, instance_id: str) -> None:
        """The instance and every network row of it (ports, forwards, groups);
        what it used stays in ``instance_usage`` (os-simple-tenant-usage and
        the usage audit count servers over their whole life)."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM instances WHERE id = ?", (instance_id,)).fetchone()
            if row is not None:
                inst = _instance_from_row(row)
                db.execute("INSERT OR REPLACE INTO instance_usage VALUES (?,?,?,?,?,?,?,?,?)",
                           (inst.id, inst.name, inst.project_id, inst.user_id,
                            json.dumps(inst.flavor.to_json(), sort_keys=True), inst.vm_state,
                            inst.created_at, inst.launched_at, time.time()))
            self._delete_network_rows(db, instance_id)
            db.execute("DELETE FROM instances WHERE id = ?", (instance_id,))
        self._instance_rows.forget(instance_id)

    def release_network(self, instance_id: str) -> None:
        """Forget an instance's ports, forwards and memberships (destroy)."""
        with self._tx() as db:
            self._delete_network_rows(db, instance_id)

    @staticmethod
    def _delete_network_rows(db: sqlite3.Connection, instance_id: str) -> None:
        for table in ("ports", "port_forwards", "instance_security_groups"):
            db.execute(f"DELETE FROM {table} WHERE instance_id = ?", (instance_id,))

    # -- networks and ports --------------------------------------------------
    def network(self, name: str) -> NetworkRecord | None:
        rows = self._query("SELECT * FROM networks WHERE name = ?", name)
        return NetworkRecord(**dict(rows[0])) if rows else None

    def add_network(self, record: NetworkRecord) -> NetworkRecord:
        record = replace(record, created_at=time.time())
        self._insert("networks", asdict(record), "network", record.name)
        return record

    def domain_name_taken(self, domain_name: str, prefix: str) -> bool:
        """Whether an instance's libvirt domain is named ``domain_name`` (one
        recorded without a domain name has ``prefix`` + its name). Looked up
        by SQLite, no record decoded: a spawn asks holding the quota lock."""
        return bool(self._query(
            "SELECT 1 FROM instances WHERE COALESCE(NULLIF(json_extract(body, "
            "'$.domain_name'), ''), ? || name) = ? LIMIT 1", prefix, domain_name))

    def mac_in_use(self, mac: str) -> bool:
        """Whether a port (of any instance, on any network) has ``mac``."""
        return bool(self._query("SELECT 1 FROM ports WHERE mac = ? LIMIT 1", mac))

    def ports(self, instance_id: str | None = None) -> list[Port]:
        if instance_id is None:
            return self._whole_table(self._port_rows)
        rows = self._query("SELECT * FROM ports WHERE instance_id = ? ORDER BY position",
                           instance_id)
        return self._port_rows.records(rows, whole_table=False)

    # -- security groups -----------------------------------------------------
    def add_security_group(self, group: SecurityGroup,
                           rules: Sequence[SecurityGroupRule] = ()) -> SecurityGroup:
        now = time.time()
        group = replace(group, created_at=now)
        try:
            with self._tx() as db:
                row = asdict(group)
                db.execute(f"INSERT INTO security_groups ({', '.join(row)}) VALUES "
                           f"({', '.join('?' for _ in row)})", tuple(row.values()))
                for rule in rules:
                    self._insert_rule(db, replace(rule, created_at=now))
        except sqlite3.IntegrityError:
            raise AlreadyExists(kind="security group", name=group.name) from None
        return group

    @staticmethod
    def _insert_rule(db: sqlite3.Connection, rule: SecurityGroupRule) -> None:
        row = asdict(rule)
        db.execute(f"INSERT INTO security_group_rules ({', '.join(row)}) VALUES "
                   f"({', '.join('?' for _ in row)})", tuple(row.values()))

    def update_security_group(self, group: SecurityGroup, **changes: Any) -> SecurityGroup:
        group = replace(group, **changes)
        try:
            with self._tx() as db:
                db.execute("UPDATE security_groups SET name = ?, description = ?, "
                           "project_id = ? WHERE id = ?",
                           (group.name, group.description, group.project_id, group.id))
        except sqlite3.IntegrityError:
            raise AlreadyExists(kind="security group", name=group.name) from None
        return group

    def security_groups(self) -> list[SecurityGroup]:
        rows = self._query("SELECT * FROM security_groups ORDER BY name")
        return [SecurityGroup(**dict(r)) for r in rows]

    def security_group(self, ref: str) -> SecurityGroup:
        rows = self._query("SELECT * FROM security_groups WHERE id = ? OR name = ? "
                           "ORDER BY id = ? DESC", ref, ref, ref)
        if not rows:
            raise SecurityGroupNotFound(group=ref)
        return SecurityGroup(**dict(rows[0]))

    def delete_security_group(self, group_id: str) -> None:
        """Refused while an instance is a member or another group's rule names it."""
        with self._tx() as db:
            users = [r[0] for r in db.execute(
                "SELECT i.name FROM instance_security_groups m JOIN instances i "
                "ON i.id = m.instance_id WHERE m.group_id = ? ORDER BY i.name", (group_id,))]
            name = db.execute("SELECT name FROM security_groups WHERE id = ?",
                              (group_id,)).fetchone()
            if users:
                raise InUse(kind="security group", name=name[0] if name else group_id,
                            users=", ".join(users))
            refs = [r[0] for r in db.execute(
                "SELECT g.name FROM security_group_rules r JOIN security_groups g "
                "ON g.id = r.group_id WHERE r.remote_group_id = ? AND r.group_id != ?",
                (group_id, group_id))]
            if refs:
                raise Conflict(reason=f"security group {name[0] if name else group_id!r} is "
                               f"the remote group of rules in: {', '.join(sorted(set(refs)))}")
            db.execute("DELETE FROM security_group_rules WHERE group_id = ?", (group_id,))
            db.execute("DELETE FROM security_groups WHERE id = ?", (group_id,))

    def add_security_group_rule(self, rule: SecurityGroupRule) -> SecurityGroupRule:
        rule = replace(rule, created_at=time.time())
        with self._tx() as db:
            self._insert_rule(db, rule)
        return rule

    def security_group_rules(self, group_id: str | None = None) -> list[SecurityGroupRule]:
        if group_id is None:
            rows = self._query("SELECT * FROM security_group_rules ORDER BY created_at, id")
        else:
            rows = self._query("SELECT * FROM security_group_rules WHERE group_id = ? "
                               "ORDER BY created_at, id", group_id)
        return [SecurityGroupRule(**dict(r)) for r in rows]

    def security_group_rule(self, rule_id: str) -> SecurityGroupRule:
        rows = self._query("SELECT * FROM security_group_rules WHERE id = ?", rule_id)
        if not rows:
            raise SecurityGroupRuleNotFound(rule=rule_id)
        return SecurityGroupRule(**dict(rows[0]))

    def delete_security_group_rule(self, rule_id: str) -> None:
        self.security_group_rule(rule_id)
        with self._tx() as db:
            db.execute("DELETE FROM security_group_rules WHERE id = ?", (rule_id,))

    def instance_group_ids(self, instance_id: str | None = None) -> dict[str, list[str]]:
        """instance id -> ids of its security groups."""
        if instance_id is None:
            rows = self._query("SELECT * FROM instance_security_groups ORDER BY group_id")
        else:
            rows = self._query("SELECT * FROM instance_security_groups WHERE instance_id = ? "
                               "ORDER BY group_id", instance_id)
        members: dict[str, list[str]] = {}
        for r in rows:
            members.setdefault(r["instance_id"], []).append(r["group_id"])
        return members

    def set_instance_group(self, instance_id: str, group_id: str, member: bool) -> None:
        with self._tx() as db:
            if member:
                db.execute("INSERT OR IGNORE INTO instance_security_groups VALUES (?, ?)",
                           (instance_id, group_id))
            else:
                db.execute("DELETE FROM instance_security_groups WHERE instance_id = ? "
                           "AND group_id = ?", (instance_id, group_id))

    # -- port forwards -------------------------------------------------------
    def add_port_forward(self, fwd: PortForward) -> PortForward:
        """Refused when the host port is forwarded already (on that address,
        or on every address: 0.0.0.0 overlaps them all)."""
        fwd = replace(fwd, created_at=time.time())
        with self._tx() as db:
            row = db.execute(
                "SELECT i.name, f.host_address FROM port_forwards f JOIN instances i "
                "ON i.id = f.instance_id WHERE f.protocol = ? AND f.host_port = ? AND "
                "(f.host_address = ? OR f.host_address = '0.0.0.0' OR ? = '0.0.0.0')",
                (fwd.protocol, fwd.host_port, fwd.host_address, fwd.host_address)).fetchone()
            if row:
                raise PortTaken(proto=fwd.protocol, port=fwd.host_port,
                                address=fwd.host_address,
                                by=f"forwarded to instance {row[0]!r} already")
            data = asdict(fwd)
            db.execute(f"INSERT INTO port_forwards ({', '.join(data)}) VALUES "
                       f"({', '.join('?' for _ in data)})", tuple(data.values()))
        return fwd

    def port_forwards(self, instance_id: str | None = None) -> list[PortForward]:
        if instance_id is None:
            rows = self._query("SELECT * FROM port_forwards ORDER BY host_port, protocol")
        else:
            rows = self._query("SELECT * FROM port_forwards WHERE instance_id = ? "
                               "ORDER BY host_port, protocol", instance_id)
        return [PortForward(**dict(r)) for r in rows]

    def port_forward(self, forward_id: str) -> PortForward:
        rows = self._query("SELECT * FROM port_forwards WHERE id = ?", forward_id)
        if not rows:
            raise PortForwardNotFound(forward=forward_id)
        return PortForward(**dict(rows[0]))

    def delete_port_forward(self, forward_id: str) -> None:
        self.port_forward(forward_id)
        with self._tx() as db:
            db.execute("DELETE FROM port_forwards WHERE id = ?", (forward_id,))

    def instances_using(self, column: str, value: str) -> list[str]:
        # The column name is spliced into the SQL: only these two, checked
        # with a test that survives `python -O`.
        if column not in ("image_id", "flavor_id"):
            raise ValueError(f"instances_using: no instance column {column!r} to match")
        return [r["name"] for r in
                self._query(f"SELECT name FROM instances WHERE {column} = ?", value)]
