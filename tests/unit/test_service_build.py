"""service.build and service.open_host: the one place vmops' parts are wired."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import records
from vmops import config
from vmops.compute.manager import SpawnRequest
from vmops.console.fake import FakeConsole
from vmops.errors import HostNotReady
from vmops.hypervisor.fake import FakeHypervisor
from vmops.network.manager import Network
from vmops.service import build, open_host
from vmops.store import Store


def test_build_wires_one_store_and_hypervisor_through_every_part(tmp_path: Path) -> None:
    settings = config.load(tmp_path / "state", env={}, image_import_max_bytes=1 << 30)
    hv = FakeHypervisor()
    capture = FakeConsole()
    engine = build(settings, hypervisor=hv, capture=capture)
    assert engine.compute.store is engine.store and engine.catalog.store is engine.store
    assert engine.compute.hv is hv and engine.hypervisor is hv
    assert engine.compute.console is capture and engine.network is None
    # The catalog is the service's, with the import limits of the settings.
    assert engine.catalog.cache.limits.max_bytes == 1 << 30
    # What one part writes the others read.
    engine.store.add_instance(records.instance("web1"))
    assert [i.name for i in engine.compute.store.instances()] == ["web1"]
    assert any(t == "/v2.1/servers" for _, t in engine.routes().router().templates())
    engine.store.close()


def test_build_takes_a_store_and_makes_the_network_with_it(tmp_path: Path) -> None:
    settings = config.load(tmp_path / "state", env={}, network_mode="user")
    store = Store(settings.db_path)
    made: list[Store] = []

    def network(s: config.Settings, given: Store) -> Network:
        made.append(given)
        return Network(given, s.state_dir, s.network_bridge, s.network_subnet,
                       s.network_host_access, enabled=False)

    problems = ["kvm: missing (fix it)"]
    engine = build(settings, hypervisor=FakeHypervisor(), store=store, network=network,
                   host_problems=lambda: problems)
    assert engine.store is store and made == [store]
    assert engine.compute.network is engine.network is not None
    # The host's problems reach compute: a spawn is refused with them, and
    # nothing is recorded.
    with pytest.raises(HostNotReady, match="kvm: missing"):
        engine.compute.create(SpawnRequest("web1", "none", "m1.tiny"), background=False)
    assert store.instances() == []
    store.close()


def test_open_host_makes_the_folders_and_connects(tmp_path: Path) -> None:
    settings = config.load(tmp_path / "state", env={}, libvirt_uri="fake:///", accel="tcg")
    host = open_host(settings)
    for folder in (settings.images_dir, settings.instances_dir, settings.run_dir):
        assert folder.is_dir()
    assert isinstance(host.hypervisor, FakeHypervisor)
    assert host.hypervisor.list_uuids() == []  # connected: it answers
    assert host.checks and {c.name for c in host.checks}
    assert host.problems() == [f"{c.name}: {c.detail} ({c.advice})" for c in host.checks
                               if c.required and not c.ok]
    host.hypervisor.close()
