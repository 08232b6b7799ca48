"""The change log (schema version 11): a whole-table read after a write
reads only the rows the log names, and still sees every change, whoever
made it; the log is pruned without a reader missing an entry (#17)."""

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from tests import records
from vmops import store as store_module
from vmops.store import MIGRATIONS, Instance, Port, Store, _instance_to_row


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "vmops.db")


def _instance(name: str, created_at: float = 0.0) -> Instance:
    return records.instance(name, id=f"id-{name}", vm_state="active", power_state="running",
                            instance_dir=Path("/x"), created_at=created_at)


def _port(name: str, n: int) -> Port:
    return Port(id=f"port-{name}", instance_id=f"id-{name}", position=0, mode="user",
                network="user", mac=f"52:54:00:00:00:{n:02x}")


def _statements(store: Store) -> list[str]:
    """The SQL the store's connection runs from now on."""
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    return seen


def test_a_list_after_a_write_reads_only_the_changed_row(store: Store) -> None:
    for n, name in enumerate("abc"):
        store.add_instance(_instance(name), ports=[_port(name, n)])
    first, ports = store.instances(), store.ports()
    store.update_instance("id-b", vm_state="stopped")
    ran = _statements(store)
    second = store.instances()
    assert [i.name for i in second] == ["a", "b", "c"]
    assert second[0] is first[0] and second[2] is first[2]
    assert second[1].vm_state == "stopped"
    assert store.ports() == ports and store.ports()[0] is ports[0]
    assert not any(s.startswith("SELECT * FROM instances ORDER BY") for s in ran), ran
    assert not any(s.startswith("SELECT * FROM ports ORDER BY") for s in ran), ran


def test_every_kind_of_change_by_another_connection_is_seen(store: Store,
                                                            tmp_path: Path) -> None:
    """An insert (older than the others: it goes first, as SQL's order
    says), an update that leaves ``updated_at`` alone, a change of id and
    a delete, made by another connection, in instances and in ports."""
    for n, name in enumerate("abc"):
        store.add_instance(_instance(name), ports=[_port(name, n)])
    store.instances(), store.ports()
    early = replace(_instance("z"), created_at=-1.0, updated_at=-1.0)
    row = _instance_to_row(early)
    other = sqlite3.connect(tmp_path / "vmops.db")
    with other:
        other.execute(f"INSERT INTO instances ({', '.join(row)}) VALUES "
                      f"({', '.join('?' for _ in row)})", tuple(row.values()))
        other.execute("UPDATE instances SET body = json_set(body, '$.description', 'moved') "
                      "WHERE id = 'id-a'")
        other.execute("UPDATE instances SET id = 'id-b2' WHERE id = 'id-b'")
        other.execute("DELETE FROM instances WHERE id = 'id-c'")
        other.execute("UPDATE ports SET position = 1 WHERE id = 'port-a'")
        other.execute("DELETE FROM ports WHERE id = 'port-c'")
    other.close()
    listed = store.instances()
    assert [(i.id, i.description) for i in listed] == [
        ("id-z", None), ("id-a", "moved"), ("id-b2", None)]
    assert [(p.id, p.position) for p in store.ports()] == [("port-a", 1), ("port-b", 0)]
    assert listed == [_fresh(store, i.id) for i in listed]


def _fresh(store: Store, instance_id: str) -> Instance:
    return store_module._instance_from_row(
        store.query("SELECT * FROM instances WHERE id = ?", instance_id)[0])


def test_a_rolled_back_write_logs_nothing(store: Store) -> None:
    store.add_instance(_instance("a"))
    first = store.instances()
    with pytest.raises(RuntimeError), store.transaction() as db:
        db.execute("UPDATE instances SET vm_state = 'error'")
        raise RuntimeError("undone")
    assert store.instances() == first
    assert store.query("SELECT count(*) FROM row_changes WHERE id = 'id-a'")[0][0] == 1


def test_the_log_is_pruned_and_a_reader_behind_reads_the_whole_table(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the log holds PRUNE_CHANGES_AT entries, a list prunes what both
    tables' last reads have seen; another store whose last read is older
    than that reads its table whole again, and misses nothing."""
    monkeypatch.setattr(store_module, "PRUNE_CHANGES_AT", 10)
    for n, name in enumerate("ab"):
        store.add_instance(_instance(name), ports=[_port(name, n)])
    behind = Store(tmp_path / "vmops.db")
    assert [i.vm_state for i in behind.instances()] == ["active", "active"]
    behind.ports()
    for n in range(12):
        store.update_instance("id-a", fault=f"f{n}")
        store.instances(), store.ports()
    (upto,) = store.query("SELECT upto FROM row_changes_pruned")[0]
    assert upto > 4
    assert store.query("SELECT count(*) FROM row_changes")[0][0] < 10
    store.update_instance("id-b", vm_state="stopped")
    ran = _statements(behind)
    assert [(i.fault, i.vm_state) for i in behind.instances()] == [
        ("f11", "active"), ("", "stopped")]
    assert any(s.startswith("SELECT * FROM instances ORDER BY") for s in ran), ran


def test_a_store_without_the_log_reads_whole_tables(tmp_path: Path) -> None:
    """A database migrated only to version 10 (as a test may make) has no
    log: lists read every row after a change, and are right."""
    store = Store(tmp_path / "vmops.db", migrations=MIGRATIONS[:10])
    assert not store._change_log
    store.add_instance(_instance("a"))
    store.instances()
    store.update_instance("id-a", vm_state="stopped")
    assert store.instances()[0].vm_state == "stopped"
