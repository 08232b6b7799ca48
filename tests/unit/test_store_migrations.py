"""Schema versions: a database made by an earlier release opens, is migrated
and keeps every record; a newer one is refused untouched."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from vmops.errors import DatabaseTooNew, MigrationFailed
from vmops.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    DiskRecord,
    Flavor,
    Instance,
    InstanceFlavor,
    Migration,
    Store,
)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def v1_db(tmp_path: Path) -> Path:
    """A copy of a database written by the unversioned store (commit b329af1)."""
    db = tmp_path / "vmops.db"
    shutil.copy(FIXTURES / "store_v1.db", db)
    return db


def _user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert MIGRATIONS[-1].version == SCHEMA_VERSION


def test_v1_fixture_is_migrated_and_every_record_kept(v1_db: Path) -> None:
    assert _user_version(v1_db) == 0
    store = Store(v1_db)
    assert _user_version(v1_db) == SCHEMA_VERSION
    assert {f.name for f in store.flavors()} == {
        "m1.tiny", "m1.small", "m1.medium", "m1.large", "m1.xlarge", "c1", "big.2"}
    assert store.flavor("c1") == Flavor("c1", "c1", 256, 1, 1, 1, False,
                                        store.flavor("c1").created_at)
    assert [(i.name, i.status) for i in store.images()] == [
        ("broken", "error"), ("tiny", "active")]
    assert store.image("tiny").virtual_size == 64 << 20
    assert store.image("broken").fault == "download failed: connection refused"
    assert store.image("tiny").login_user == ""  # version 4: unknown, so ssh uses root
    assert store.image("tiny").instance_uuid == ""  # version 5: imported, not a snapshot
    assert [k.name for k in store.keypairs()] == ["mykey", "other"]
    assert store.keypair("mykey").public_key.startswith("ssh-ed25519 ")
    assert [i.name for i in store.instances()] == ["web1", "web2", "db1"]
    web1 = store.instance("web1")
    assert (web1.vm_state, web1.power_state, web1.desired_running) == ("active", "running", True)
    # The flavor, a dict in the body then, reads as the typed record (the
    # keys that release wrote and this one dropped are ignored; the ones it
    # added take their defaults).
    assert web1.flavor == InstanceFlavor(id="1", name="m1.tiny", ram_mib=512, vcpus=1,
                                         root_gb=1, ephemeral_gb=0, swap_mb=0, extra_specs={})
    assert store.instance("web2").flavor.ephemeral_gb == 1
    # version 6: everything older belongs to the admin project and user it made
    (admin_project,) = store.query("SELECT id FROM projects WHERE name = 'admin'")
    (admin_user,) = store.query("SELECT id, default_project_id FROM users WHERE name = 'admin'")
    assert admin_user[1] == admin_project[0]
    assert {i.project_id for i in store.instances()} == {admin_project[0]}
    assert {i.user_id for i in store.instances()} == {admin_user[0]}
    assert {(i.owner, i.visibility, str(i.extra)) for i in store.images()} == {
        (admin_project[0], "public", "{}")}
    assert {k.user_id for k in store.keypairs()} == {admin_user[0]}
    roles = store.query("SELECT r.name FROM role_assignments a JOIN roles r ON r.id = a.role_id "
                        "WHERE a.user_id = ? AND a.project_id = ?", admin_user[0],
                        admin_project[0])
    assert sorted(r[0] for r in roles) == ["admin", "member", "reader"]
    web2 = store.instance("22222222-2222-4222-8222-222222222222")
    assert web2.config_drive and web2.key_name == "mykey"
    assert [d.role for d in web2.disks] == ["root", "ephemeral", "config"]
    assert web2.disks[2] == DiskRecord("config", "/var/lib/vmops/instances/2222/config.iso",
                                       "raw", "sda", "cdrom")
    assert web2.properties == {"role": "web"}
    assert web2.injected_files == (("/etc/motd", "aGVsbG8K"),)
    assert store.instance("db1").fault.startswith("spawn failed")
    assert sorted(store.instances_using("flavor_id", "c1")) == ["web2"]
    assert sorted(store.instances_using("image_id", "img-tiny")) == ["db1", "web1", "web2"]


def test_v1_records_usable_after_migration(v1_db: Path) -> None:
    store = Store(v1_db)
    store.update_instance(store.instance("web2"), vm_state="active", power_state="running")
    store.delete_instance(store.instance("db1").id)
    store.delete_keypair("other")
    store.add_instance(Instance(id="new", name="web3", vm_state="building",
                                task_state="spawning", power_state="nostate",
                                flavor_id="c1", image_id="img-tiny"))
    store.close()
    store = Store(v1_db)
    assert [i.name for i in store.instances()] == ["web1", "web2", "web3"]
    assert store.instance("web2").vm_state == "active"
    assert [k.name for k in store.keypairs()] == ["mykey"]


def test_stamping_a_v1_database_takes_no_backup(v1_db: Path) -> None:
    Store(v1_db, migrations=MIGRATIONS[:1]).close()
    assert sorted(p.name for p in v1_db.parent.iterdir() if ".bak" in p.name) == []


def _with(*steps: Migration) -> tuple[Migration, ...]:
    return (*MIGRATIONS, *steps)


def _add_network_id(db: sqlite3.Connection) -> None:
    db.execute("UPDATE instances SET network_id = 'default'")


LATER = _with(
    Migration(SCHEMA_VERSION + 1, "instances.network_id",
              "ALTER TABLE instances ADD COLUMN network_id TEXT NOT NULL DEFAULT '';\n"
              "CREATE INDEX instances_network ON instances (network_id);"),
    Migration(SCHEMA_VERSION + 2, "fill network_id", _add_network_id),
)


def test_later_steps_run_after_a_backup(v1_db: Path) -> None:
    before = Store(v1_db)
    names = [i.name for i in before.instances()]
    before.close()
    store = Store(v1_db, LATER)
    assert _user_version(v1_db) == SCHEMA_VERSION + 2
    rows = store._query("SELECT name, network_id FROM instances ORDER BY name")
    assert [tuple(r) for r in rows] == [("db1", "default"), ("web1", "default"),
                                        ("web2", "default")]
    assert [i.name for i in store.instances()] == names
    (backup,) = v1_db.parent.glob(f"vmops.db.v{SCHEMA_VERSION}-*.bak")
    assert backup.stat().st_mode & 0o777 == 0o600
    assert _user_version(backup) == SCHEMA_VERSION
    assert [i.name for i in Store(backup).instances()] == names
    store.close()
    before_again = len(list(v1_db.parent.glob("*.bak")))
    Store(v1_db, LATER).close()  # already there: no further backup
    assert len(list(v1_db.parent.glob("*.bak"))) == before_again


def test_a_failing_step_rolls_every_step_back(v1_db: Path) -> None:
    def explode(db: sqlite3.Connection) -> None:
        raise RuntimeError("disk on fire")

    failing = _with(*LATER[-2:-1], Migration(SCHEMA_VERSION + 2, "explodes", explode))
    with pytest.raises(MigrationFailed, match="disk on fire") as caught:
        Store(v1_db, failing)
    assert ".bak" in caught.value.message
    assert _user_version(v1_db) == 0
    db = sqlite3.connect(v1_db)
    assert "network_id" not in [r[1] for r in db.execute("PRAGMA table_info(instances)")]
    db.close()
    assert [i.name for i in Store(v1_db).instances()] == ["web1", "web2", "db1"]


def test_a_new_database_is_created_at_the_latest_version_without_backup(
        tmp_path: Path) -> None:
    Store(tmp_path / "vmops.db").close()
    assert _user_version(tmp_path / "vmops.db") == SCHEMA_VERSION
    assert list(tmp_path.glob("*.bak")) == []


def test_a_newer_database_is_refused_and_not_modified(tmp_path: Path) -> None:
    path = tmp_path / "vmops.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE instances (id TEXT, future TEXT)")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    digest = _digest(path)
    with pytest.raises(DatabaseTooNew, match=rf"schema version {SCHEMA_VERSION + 1}, newer"):
        Store(path)
    assert _digest(path) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vmops.db"]


def test_instances_using_refuses_other_columns(tmp_path: Path) -> None:
    store = Store(tmp_path / "vmops.db")
    with pytest.raises(ValueError, match="no instance column"):
        store.instances_using("name = name OR 1", "x")


def test_v7_adds_volumes_to_a_v6_database_keeping_its_records(v1_db: Path) -> None:
    from vmops.volumes.records import Attachment, Volume, VolumeRecords

    Store(v1_db, migrations=MIGRATIONS[:6]).close()  # as the release before volumes left it
    assert _user_version(v1_db) == 6
    store = Store(v1_db, migrations=MIGRATIONS[:7])
    assert _user_version(v1_db) == 7
    assert [i.name for i in store.instances()] == ["web1", "web2", "db1"]
    assert len(list(v1_db.parent.glob("vmops.db.v6-*.bak"))) == 1
    store.close()
    store = Store(v1_db)  # the records' columns are the latest schema's
    records = VolumeRecords(store)
    assert records.all() == [] and records.attachments() == []
    volume = records.add(Volume(id="v1", name="data", size_gb=1, status="available",
                                format="qcow2", path="/x/volume-v1.qcow2",
                                project_id=store.instance("web1").project_id))
    records.claim(Attachment("a1", volume.id, store.instance("web1").id, "vdb"), "web1")
    store.close()
    store = Store(v1_db)
    assert VolumeRecords(store).get("data").status == "attaching"
    assert [a.device for a in VolumeRecords(store).attachments()] == ["vdb"]
    store.close()


def test_v8_moves_quota_classes_apart_and_keys_quotas_by_user(v1_db: Path) -> None:
    from vmops.compute.quotas import Quotas
    from vmops.config import load

    old = Store(v1_db, migrations=MIGRATIONS[:7])  # as the release before schema 8 left it
    with old.transaction() as db:
        db.executemany("INSERT INTO quotas VALUES (?, ?, ?)", [
            ("p1", "instances", 4), ("p1", "cores", 8), ("class:default", "ram", 4096)])
    old.close()
    store = Store(v1_db)
    assert _user_version(v1_db) == SCHEMA_VERSION
    assert len(list(v1_db.parent.glob("vmops.db.v7-*.bak"))) == 1
    quotas = Quotas(store, load(v1_db.parent, env={}))
    assert (quotas.limits("p1")["instances"], quotas.limits("p1")["cores"]) == (4, 8)
    assert quotas.defaults()["ram"] == 4096 and quotas.limits("p1")["ram"] == 4096
    assert [tuple(r) for r in store.query("SELECT * FROM quota_classes")] == [
        ("default", "ram", 4096)]
    assert {r["user_id"] for r in store.query("SELECT user_id FROM quotas")} == {""}
    # Flavors: the older ones are public, with no swap, as they always were.
    c1 = store.flavor("c1")
    assert (c1.is_public, c1.swap_mb, c1.rxtx_factor, c1.description) == (True, 0, 1.0, None)
    assert store.flavor("m1.tiny").is_public
    store.close()


def test_v9_keeps_a_v8_databases_volumes_as_local_ones(v1_db: Path) -> None:
    from vmops.volumes.records import VolumeRecords

    old = Store(v1_db, migrations=MIGRATIONS[:8])  # as the release before schema 9 left it
    with old.transaction() as db:
        db.execute("INSERT INTO volumes VALUES ('v1', 'data', '', 1, 'available', 'qcow2', "
                   "'/x/volume-v1.qcow2', '', 0, '', '', '', 0, 0)")
    old.close()
    store = Store(v1_db)
    assert _user_version(v1_db) == SCHEMA_VERSION
    assert len(list(v1_db.parent.glob("vmops.db.v8-*.bak"))) == 1
    volume = VolumeRecords(store).get("data")
    assert (volume.remote, volume.path, volume.secret_uuid) == (False, "/x/volume-v1.qcow2", "")
    store.close()


def test_v11_logs_the_changes_of_a_v10_databases_rows(v1_db: Path) -> None:
    Store(v1_db, migrations=MIGRATIONS[:10]).close()  # as the release before schema 11 left it
    store = Store(v1_db)
    assert _user_version(v1_db) == SCHEMA_VERSION
    assert len(list(v1_db.parent.glob("vmops.db.v10-*.bak"))) == 1
    assert [i.name for i in store.instances()] == ["web1", "web2", "db1"]
    web2 = store.instance("web2").id
    store.update_instance(web2, vm_state="error")
    assert [tuple(r) for r in store.query("SELECT tbl, id FROM row_changes")] == [
        ("instances", web2)]
    assert [i.vm_state for i in store.instances()][1] == "error"
    store.close()
