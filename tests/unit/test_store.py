import dataclasses
import json
from pathlib import Path

import pytest

from tests import records
from vmops.errors import AlreadyExists, FlavorNotFound, InstanceNotFound
from vmops.store import DiskRecord, Flavor, Instance, InstanceFlavor, Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "vmops.db")


def _instance(name: str = "web1") -> Instance:
    return records.instance(name, id=f"id-{name}", vm_state="building",
                            task_state="spawning", power_state="nostate",
                            instance_dir=Path("/x"))


def test_builtin_flavors_seeded_once(tmp_path: Path) -> None:
    Store(tmp_path / "db").close()
    store = Store(tmp_path / "db")
    names = [f.name for f in store.flavors()]
    assert names.count("m1.tiny") == 1
    assert {"m1.tiny", "m1.small", "m1.medium", "m1.large", "m1.xlarge"} <= set(names)


def test_flavor_lookup_by_name_or_id(store: Store) -> None:
    assert store.flavor("m1.tiny").id == store.flavor("1").id
    with pytest.raises(FlavorNotFound, match="nope"):
        store.flavor("nope")


def test_duplicate_names_refused(store: Store) -> None:
    store.add_instance(_instance())
    with pytest.raises(AlreadyExists, match="instance named 'web1'"):
        store.add_instance(_instance())
    with pytest.raises(AlreadyExists, match="flavor"):
        store.add_flavor(Flavor("x", "m1.tiny", 1, 1, 1))


def test_instance_round_trip_and_partial_update(store: Store) -> None:
    store.add_instance(_instance())
    store.update_instance("id-web1", power_state="running")
    store.update_instance("id-web1", vm_state="active", task_state=None)
    inst = store.instance("web1")
    assert (inst.vm_state, inst.task_state, inst.power_state) == ("active", None, "running")
    assert inst.disks[0] == DiskRecord("root", "/x/root.qcow2", "qcow2", "vda")
    assert inst.macs == ("52:54:00:00:00:01",)


def test_the_instance_flavor_is_typed_and_reads_any_releases_shape(store: Store) -> None:
    snapshot = InstanceFlavor.of(Flavor("f1", "big", 2048, 2, 10, 5, swap_mb=64),
                                 {"hw:cpu_policy": "dedicated"})
    store.add_instance(dataclasses.replace(_instance(), flavor=snapshot))
    back = store.instance("web1").flavor
    assert back == snapshot and back.local_gb == 15
    ((body,),) = store.query("SELECT body FROM instances WHERE id = ?", "id-web1")
    assert json.loads(body)["flavor"] == {  # the stored shape: the dict older code wrote
        "id": "f1", "name": "big", "ram_mib": 2048, "vcpus": 2, "root_gb": 10,
        "ephemeral_gb": 5, "swap_mb": 64, "extra_specs": {"hw:cpu_policy": "dedicated"}}
    # Older records: no swap_mb or extra_specs yet, keys since dropped, a null.
    old = InstanceFlavor.from_json({"id": "1", "name": "m1.tiny", "ram_mib": 512, "vcpus": 1,
                                    "root_gb": 1, "ephemeral_gb": None, "builtin": True})
    assert old == InstanceFlavor(id="1", name="m1.tiny", ram_mib=512, vcpus=1, root_gb=1)
    assert InstanceFlavor.from_json({}) == InstanceFlavor()


def test_delete_instance(store: Store) -> None:
    store.add_instance(_instance())
    store.delete_instance("id-web1")
    with pytest.raises(InstanceNotFound):
        store.instance("web1")


def test_wal_mode(store: Store, tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "vmops.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_domain_name_taken_reads_a_record_without_one_as_the_prefix_and_its_name(
        store: Store) -> None:
    store.add_instance(dataclasses.replace(_instance("web1"), domain_name="vmops-custom"))
    store.add_instance(_instance("web2"))  # an older record: no domain name of its own
    assert store.domain_name_taken("vmops-custom", "vmops-")
    assert store.domain_name_taken("vmops-web2", "vmops-")
    assert not store.domain_name_taken("vmops-web1", "vmops-")  # web1's is named otherwise
    assert not store.domain_name_taken("vmops-web3", "vmops-")
