"""service.build and service.open_host: the one place vmops' parts are wired."""

from __future__ import annotations

import threading
import uuid as uuidlib
from pathlib import Path

import pytest

from tests import records
from vmops import config, service
from vmops.compute.manager import SpawnRequest
from vmops.console.fake import FakeConsole
from vmops.errors import HostNotReady
from vmops.hypervisor.fake import FakeHypervisor
from vmops.network.manager import Network
from vmops.service import build, open_host
from vmops.store import Store
from vmops.volumes.records import Volume, VolumeStatus


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


def test_build_wires_the_volumes_and_the_identity_of_the_settings(tmp_path: Path) -> None:
    settings = config.load(tmp_path / "state", env={}, api_token="fixed-token",
                           identity_lockout_failures=3)
    engine = build(settings, hypervisor=FakeHypervisor(), capture=FakeConsole())
    assert engine.volumes.compute is engine.compute and engine.volumes.store is engine.store
    assert engine.identity.api_token == "fixed-token"
    assert engine.identity.admin_password_file == settings.admin_password_file
    routes = engine.routes()  # the API's over the same parts
    assert routes.identity is engine.identity and routes.volumes is engine.volumes
    engine.store.close()


def test_start_does_the_services_work_and_stop_ends_every_thread_it_started(
        tmp_path: Path) -> None:
    """Every periodic task on (the defaults): start recovers, settles, makes
    the admin's password and starts the watches; stop leaves none of the
    threads it started running (they loop until told to stop)."""
    settings = config.load(tmp_path / "state", env={})
    assert settings.volume_target_check_interval and settings.image_cache_prune_interval
    assert settings.deleted_rows_max_age_days
    hv = FakeHypervisor()
    engine = build(settings, hypervisor=hv, capture=FakeConsole())
    engine.store.add_instance(records.instance("gone", vm_state="active"))  # no domain
    before = set(threading.enumerate())
    found = engine.start()
    started = set(threading.enumerate()) - before
    try:
        assert {"capture-watch", "prune", "retention", "volume-target-watch"} <= {
            t.name for t in started}
        assert [c.name for c in found] == ["instance records"]
        assert engine.compute.background_actions
        assert engine.store.instance("gone").vm_state != "active"  # recovered
        assert settings.admin_password_file.exists()
        assert engine.identity.directory.admin_user().password_hash
    finally:
        still_running = engine.stop()
        engine.store.close()
    assert still_running == []
    assert [t.name for t in started if t.is_alive()] == []


def test_nova_drivers_part_watches_the_volumes_until_stopped(tmp_path: Path) -> None:
    """recover and watch_volumes (Nova's driver's init_host): the iSCSI
    target watch runs and a disk error reaches the volumes; nothing of the
    service's own (background actions, admin password) is done."""
    settings = config.load(tmp_path / "state", env={})
    hv = FakeHypervisor()
    engine = build(settings, hypervisor=hv, capture=FakeConsole())
    inst = engine.store.add_instance(records.instance("web1", vm_state="active"))
    hv.define(engine.compute.domain_spec(inst))
    hv.start(inst.id)
    volume = engine.volumes.records.add(Volume(
        id=str(uuidlib.uuid4()), name="data", size_gb=1, status=VolumeStatus.AVAILABLE,
        format="raw", path="nbd://127.0.0.1:10809/data", protocol="nbd",
        remote_host="127.0.0.1", remote_port=10809, remote_export="data"))
    engine.volumes.attach(volume.id, inst.id)
    attachment = engine.volumes.attachment_of(volume.id)
    assert attachment is not None
    before = set(threading.enumerate())
    assert engine.recover() == []
    engine.watch_volumes()
    started = set(threading.enumerate()) - before
    try:
        assert [t.name for t in started] == ["volume-target-watch"]
        hv.disk_error(inst.id, attachment.device)
        assert engine.volumes.volume(volume.id).status == VolumeStatus.ERROR
        assert not engine.compute.background_actions
        assert not settings.admin_password_file.exists()
    finally:
        assert engine.stop() == []
        engine.store.close()
    assert [t.name for t in started if t.is_alive()] == []


def test_a_start_that_fails_half_way_leaves_no_thread_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The volume watch has started when the admin's password cannot be
    made: start raises that, and what it had started is stopped."""
    settings = config.load(tmp_path / "state", env={})
    engine = build(settings, hypervisor=FakeHypervisor(), capture=FakeConsole())

    def refused(*args: object) -> None:
        raise PermissionError("admin password file: refused")

    monkeypatch.setattr(service, "ensure_admin_password", refused)
    before = set(threading.enumerate())
    try:
        with pytest.raises(PermissionError, match="refused"):
            engine.start()
        assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []
        assert engine.stop() == []  # and a second stop is harmless
    finally:
        engine.stop()
        engine.store.close()


def test_a_service_whose_build_fails_leaves_its_store_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store is opened before build; if build fails (here the network's
    set-up with an error that is not vmops'), no engine holds it, and it
    is closed as the error goes up."""
    settings = config.load(tmp_path / "state", env={}, libvirt_uri="fake:///", accel="tcg")
    closed: list[Store] = []

    class Recorded(Store):
        def close(self) -> None:
            closed.append(self)
            super().close()

    def broken(s: config.Settings, store: Store) -> Network:
        raise OSError("nft: cannot run")

    monkeypatch.setattr(service, "Store", Recorded)
    monkeypatch.setattr(service, "open_network", broken)
    made = service.Service(settings)
    try:
        with pytest.raises(OSError, match="nft"):
            made._start()
        assert made.engine is None and len(closed) == 1
    finally:
        made.hv.close()
