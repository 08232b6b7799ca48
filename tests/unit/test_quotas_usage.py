"""What a project's servers use, as the quota checks count it (summed by
SQLite from the records' flavors: vmops/compute/quotas.py)."""

from pathlib import Path

import pytest

from tests import records
from vmops import config
from vmops.compute.quotas import Quotas
from vmops.errors import QuotaExceeded
from vmops.store import BUILTIN_FLAVORS, InstanceFlavor, Store


def _server(store: Store, name: str, project: str, user: str, vcpus: int, ram: int) -> str:
    inst = records.instance(name, project_id=project, user_id=user,
                            flavor=InstanceFlavor(id="f", name="f", ram_mib=ram, vcpus=vcpus))
    store.add_instance(inst)
    return inst.id


def test_usage_sums_the_servers_flavors_of_the_project_and_its_user(tmp_path: Path) -> None:
    store = Store(tmp_path / "vmops.db")
    quotas = Quotas(store, config.load(tmp_path, env={}))
    _server(store, "a", "p1", "u1", 2, 2048)
    _server(store, "b", "p1", "u2", 1, 512)
    older = _server(store, "c", "p1", "u1", 4, 4096)
    _server(store, "d", "p2", "u1", 8, 8192)  # another project's
    # An older release's record: vcpus null, ram_mib missing (both read 0).
    with store.transaction() as db:
        db.execute("UPDATE instances SET body = json_remove(json_set(body, '$.flavor.vcpus', "
                   "json('null')), '$.flavor.ram_mib') WHERE id = ?", (older,))
    assert store.instance(older).flavor == InstanceFlavor(id="f", name="f")
    used = quotas.usage("p1")
    assert (used["instances"], used["cores"], used["ram"]) == (3, 3, 2560)
    mine = quotas.usage("p1", "u1", per_user=True)
    assert (mine["instances"], mine["cores"], mine["ram"]) == (2, 2, 2048)
    none = quotas.usage("p3")
    assert (none["instances"], none["cores"], none["ram"]) == (0, 0, 0)
    store.close()


def test_usage_of_records_whose_flavor_sums_past_64_bits_is_still_counted(
        tmp_path: Path) -> None:
    """Two records (written by hand or by a bug: the flavor API bounds the
    sizes) whose vCPUs add up past SQLite's 64-bit integers: SUM() raised
    'integer overflow', so every spawn in the project and its os-quota-sets
    answered 500 where the Python sum before aa9ce5c counted them."""
    store = Store(tmp_path / "vmops.db")
    quotas = Quotas(store, config.load(tmp_path, env={}))
    for name in ("a", "b"):
        inst = _server(store, name, "p1", "u1", 1, 512)
        with store.transaction() as db:
            db.execute("UPDATE instances SET body = json_set(body, '$.flavor.vcpus', ?) "
                       "WHERE id = ?", (2 ** 62 + 2 ** 61, inst))
    used = quotas.usage("p1")
    assert (used["instances"], used["ram"]) == (2, 1024)
    assert used["cores"] >= 2 ** 63  # over any limit: a spawn is refused by the quota
    with pytest.raises(QuotaExceeded, match="cores"):
        quotas.check_servers("p1", BUILTIN_FLAVORS[0])
    store.close()
