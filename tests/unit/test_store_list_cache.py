"""The store's whole-table reads (instances, ports) reuse decoded records
while the database is unchanged, and never miss a change: ours, another
connection's, or a rolled-back one's undoing."""

import json
import sqlite3
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from tests import records
from vmops import store as store_module
from vmops.store import Instance, Port, Store, _instance_to_row


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "vmops.db")


def _instance(name: str) -> Instance:
    return records.instance(name, id=f"id-{name}", vm_state="active", power_state="running",
                            instance_dir=Path("/x"))


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


def test_an_instance_row_encodes_as_asdict_did() -> None:
    inst = replace(_instance("a"), injected_files=(("/etc/motd", "aGk="),),
                   properties={"role": "web"}, tags=("x", "y"),
                   pre_resize={"flavor": {"name": "m1.tiny", "extra": {"k": [1, 2]}},
                               "disks": [{"role": "root"}]},
                   volumes_made=("v1",))
    data = asdict(inst)
    row = _instance_to_row(inst)
    assert row.pop("body") == json.dumps(
        {k: v for k, v in data.items() if k not in row}, sort_keys=True)
    assert row == {k: data[k] for k in row}


def test_an_update_keeps_every_field_and_changes_only_the_given_ones(store: Store) -> None:
    inst = replace(_instance("a"), properties={"role": "web"}, tags=("x",))
    store.add_instance(inst)
    before = store.instance("id-a")
    after = store.update_instance("id-a", vm_state="stopped")
    assert after == replace(before, vm_state="stopped", updated_at=after.updated_at)
    assert store.instance("a") == after


# -- a verb's reads of one record (issue #17: decoded once per write) ----------------
def _count_decodes(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    decoded: list[str] = []
    rows = store._instance_rows
    real = rows._decode

    def counting(row: sqlite3.Row) -> Instance:
        decoded.append(row["id"])
        return real(row)

    monkeypatch.setattr(rows, "_decode", counting)
    return decoded


def test_a_state_change_is_read_back_without_decoding_the_row(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A verb's writes of states keep the record they wrote: its next
    reads (the lifecycle event's, the task's end, the API's answer) reuse
    it, and the stored row reads back equal to it."""
    store.add_instance(replace(_instance("a"), properties={"role": "web"}, tags=("x",)))
    before = store.instance("id-a")
    decoded = _count_decodes(store, monkeypatch)
    written = store.update_instance("id-a", task_state="pausing", power_state="paused")
    assert store.instance("id-a") is written and store.instance("a") is written
    assert decoded == []
    assert store_module._instance_from_row(
        store.query("SELECT * FROM instances WHERE id = 'id-a'")[0]) == written
    assert written == replace(before, task_state="pausing", power_state="paused",
                              updated_at=written.updated_at)


def test_a_read_of_one_record_is_kept_for_the_next(store: Store,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store.add_instance(_instance("a"))
    decoded = _count_decodes(store, monkeypatch)
    first = store.instance("id-a")
    assert store.instance("a") is first and decoded == ["id-a"]


def test_a_change_given_as_a_list_reads_back_as_the_record_stores_it(store: Store) -> None:
    """Only scalar changes keep the record as written: a list given for a
    tuple field reads back as the tuple a decode makes, and a number given
    for a column of text as the text."""
    store.add_instance(_instance("a"))
    store.update_instance("id-a", tags=["x", "y"])
    assert store.instance("id-a").tags == ("x", "y")
    store.update_instance("id-a", fault=3)
    assert store.instance("id-a").fault == "3"


def test_a_state_change_leaves_the_stored_body_as_it_was(store: Store) -> None:
    """A change of columns alone writes those columns and ``updated_at``;
    the JSON body (a record of an older release's, here with a key this
    release does not know) is not rewritten."""
    store.add_instance(_instance("a"))
    with store.transaction() as db:
        db.execute("UPDATE instances SET body = json_set(body, '$.from_elsewhere', 1) "
                   "WHERE id = 'id-a'")
    body = store.query("SELECT body FROM instances WHERE id = 'id-a'")[0]["body"]
    store.update_instance("id-a", vm_state="stopped", fault="gone")
    row = store.query("SELECT * FROM instances WHERE id = 'id-a'")[0]
    assert row["body"] == body and (row["vm_state"], row["fault"]) == ("stopped", "gone")
    store.update_instance("id-a", description="now")  # a body field: the body is written
    assert "from_elsewhere" not in store.query("SELECT body FROM instances")[0]["body"]


def test_closing_an_instances_open_action_does_not_scan_its_history(store: Store) -> None:
    """Each verb closes the instance's open action: through the partial
    index of open actions, whatever the number of finished ones."""
    plan = store.query("EXPLAIN QUERY PLAN UPDATE instance_actions SET finish_time = 1 "
                       "WHERE instance_id = ? AND finish_time IS NULL", "id-a")
    assert any("instance_actions_open" in row["detail"] for row in plan), \
        [row["detail"] for row in plan]


# -- what is kept to tell a changed row (issue #17: no copy of the row) -------------
def test_a_body_change_behind_the_stores_back_is_seen(store: Store, tmp_path: Path) -> None:
    """A write that changes the JSON body alone, not ``updated_at`` (no
    write of the store does that; SQL by hand or another tool may), is
    seen by a whole-table read and by a read of the one instance."""
    store.add_instance(_instance("a"))
    store.add_instance(_instance("b"))
    before = store.instances()
    assert store.instance("id-a").description is None
    other = sqlite3.connect(tmp_path / "vmops.db")
    with other:
        other.execute("UPDATE instances SET body = json_set(body, '$.description', 'moved') "
                      "WHERE id = 'id-a'")
    other.close()
    after = store.instances()
    assert after[0].description == "moved" and after[0].updated_at == before[0].updated_at
    assert after[1] is before[1]  # b's row did not change
    assert store.instance("id-a").description == "moved"
    with store.transaction() as db:  # the store's own connection, by hand
        db.execute("UPDATE instances SET body = json_set(body, '$.description', 'back') "
                   "WHERE id = 'id-a'")
    assert store.instance("a").description == "back"
    assert store.instances()[0].description == "back"


def test_the_stores_writes_are_seen_even_if_every_row_hash_collides(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each write of the store sets ``updated_at``, which the fingerprint
    holds as it is: those are seen whatever the hash says."""
    monkeypatch.setattr(store_module, "_row_hash", lambda values: 0)
    store.add_instance(_instance("a"))
    assert store.instances()[0].vm_state == "active"
    store.update_instance("id-a", vm_state="stopped", description="x")
    assert store.instances()[0].vm_state == "stopped"
    store.update_instance("id-a", description="y")
    assert store.instance("id-a").description == "y"
    assert store.instances()[0].description == "y"
    # Only a change that leaves updated_at alone relies on the hash: with
    # every hash the same, a read of the one instance does not see it (what
    # the hash is there for); a list does, as the change log names the row.
    with store.transaction() as db:
        db.execute("UPDATE instances SET body = json_set(body, '$.description', 'z') "
                   "WHERE id = 'id-a'")
    assert store.instance("id-a").description == "y"
    assert store.instances()[0].description == "z"


def test_no_copy_of_a_rows_values_is_kept_beside_its_record(store: Store) -> None:
    store.add_instance(replace(_instance("a"), user_data="eA==" * 100))
    store.instances()
    kept = store._instance_rows._kept
    assert list(kept) == ["id-a"]
    mark, record = kept["id-a"]
    assert record.name == "a"
    assert isinstance(mark, tuple) and all(not isinstance(v, str) for v in mark), mark


def test_a_deleted_instance_is_not_kept_until_the_next_list(store: Store) -> None:
    store.add_instance(_instance("a"))
    store.add_instance(_instance("b"))
    store.instances()
    store.delete_instance("id-a")
    assert list(store._instance_rows._kept) == ["id-b"]
    last = store._instance_rows.last
    assert last is not None and [i.name for i in last.records] == ["b"]
    assert [i.name for i in store.instances()] == ["b"]


def test_records_share_the_strings_they_repeat(store: Store) -> None:
    """Decoded records use one string object for a value many of them
    hold (states, image, project, disk formats), not one each."""
    for name in ("a", "b"):
        store.add_instance(replace(_instance(name), image_id="img-" + "1" * 32,
                                   project_id="p" * 32))
    a, b = store.instances()
    assert a is not b
    for field in ("vm_state", "power_state", "image_id", "project_id", "user_id",
                  "image_name", "disk_config"):
        assert getattr(a, field) == getattr(b, field)
        assert getattr(a, field) is getattr(b, field), field
    assert a.flavor.name is b.flavor.name and a.flavor.id is b.flavor.id
    assert a.disks[0].format is b.disks[0].format and a.disks[0].role is b.disks[0].role
