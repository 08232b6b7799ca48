"""A spawn that carries its key pair's public key (Nova's instance.key_data,
when vmops is Nova's compute driver) rather than naming one of vmops' key
pairs: the config drive has it, no vmops key pair is looked up or made,
and a bad key is refused before anything is made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_compute import env  # noqa: F401 - the fixture
from vmops.compute.manager import Compute, SpawnRequest
from vmops.configdrive import read_iso
from vmops.errors import ConfigDriveInvalid

pytestmark = pytest.mark.integration
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ2bm9YbGl2ZXJ0LWtleS1mb3ItdGVzdHM nova@vmops"


def _spawn(compute: Compute, key_data: str) -> Any:
    return compute.create(SpawnRequest(name="web1", image="base", flavor="m1.tiny",
                                       config_drive=True, key_name="nova-key",
                                       key_data=key_data), background=False)


def test_the_key_it_carries_is_on_the_config_drive(env: dict[str, Any]) -> None:  # noqa: F811
    inst = _spawn(env["compute"], KEY)
    assert (inst.vm_state, inst.key_name, inst.key_data) == ("active", "nova-key", KEY)
    drive = read_iso(Path(next(d.path for d in inst.disks if d.role == "config")))
    meta = json.loads(drive["openstack/latest/meta_data.json"])
    assert meta["public_keys"] == {"nova-key": KEY}
    assert env["store"].keypairs() == []


def test_a_bad_key_is_refused_and_leaves_nothing(env: dict[str, Any]) -> None:  # noqa: F811
    with pytest.raises(ConfigDriveInvalid, match="public key 'nova-key'"):
        _spawn(env["compute"], KEY + "\nsecond line")
    assert env["store"].instances() == []
    assert env["hv"].list_uuids() == []
    instances = env["settings"].instances_dir
    assert not instances.exists() or not any(instances.iterdir())
