"""The store's whole-table reads (instances, ports) reuse decoded records
while the database is unchanged, and never miss a change: ours, another
connection's, or a rolled-back one's undoing."""

import sqlite3
from pathlib import Path

import pytest

from vmops.store import DiskRecord, Instance, Port, Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "vmops.db")


def _instance(name: str) -> Instance:
    return Instance(id=f"id-{name}", name=name, vm_state="active", task_state=None,
                    power_state="running", flavor_id="1", image_id="img",
                    disks=(DiskRecord("root", "/x/root.qcow2", "qcow2", "vda"),),
                    macs=("52:54:00:00:00:01",), flavor={"name": "m1.tiny"})


def _port(name: str, mac: str) -> Port:
    return Port(id=f"port-{name}", instance_id=f"id-{name}", position=0, mode="user",
                network="user", mac=mac)


def test_unchanged_records_are_reused_not_decoded_again(store: Store) -> None:
    store.add_instance(_instance("a"), ports=[_port("a", "52:54:00:00:00:0a")])
    store.add_instance(_instance("b"), ports=[_port("b", "52:54:00:00:00:0b")])
    first, ports = store.instances(), store.ports()
    store.update_instance("id-b", vm_state="stopped")
    second = store.instances()
    assert second[0] is first[0]  # a's row did not change
    assert second[1] is not first[1] and second[1].vm_state == "stopped"
    assert [p.id for p in store.ports()] == ["port-a", "port-b"]
    assert store.ports()[0] is ports[0]


def test_each_read_is_a_new_list(store: Store) -> None:
    store.add_instance(_instance("a"))
    store.add_instance(_instance("b"))
    listed = store.instances()
    listed.reverse()
    listed.append(listed[0])
    assert [i.name for i in store.instances()] == ["a", "b"]


def test_a_change_by_another_connection_is_seen(store: Store, tmp_path: Path) -> None:
    store.add_instance(_instance("a"))
    assert store.instances()[0].vm_state == "active"
    other = sqlite3.connect(tmp_path / "vmops.db")
    with other:
        other.execute("UPDATE instances SET vm_state = 'error' WHERE id = 'id-a'")
        other.execute("DELETE FROM ports")
    other.close()
    assert store.instances()[0].vm_state == "error"


def test_a_deleted_instance_and_its_ports_are_gone(store: Store) -> None:
    store.add_instance(_instance("a"), ports=[_port("a", "52:54:00:00:00:0a")])
    store.add_instance(_instance("b"))
    assert len(store.instances()) == 2 and len(store.ports()) == 1
    store.delete_instance("id-a")
    assert [i.name for i in store.instances()] == ["b"]
    assert store.ports() == []


def test_a_read_inside_a_rolled_back_transaction_is_not_kept(store: Store) -> None:
    store.add_instance(_instance("a"))
    assert store.instances()[0].vm_state == "active"
    with pytest.raises(RuntimeError), store.transaction() as db:
        db.execute("UPDATE instances SET vm_state = 'error' WHERE id = 'id-a'")
        assert store.instances()[0].vm_state == "error"  # the transaction's own view
        raise RuntimeError("roll back")
    assert store.instances()[0].vm_state == "active"
