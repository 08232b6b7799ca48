"""Compute logic on the fake hypervisor, with real disks (qemu-img) and records.

No QEMU runs: the fake stands in for libvirt and ``FakeConsole`` (vmops/console/fake.py) for the
console capture processes. What a real guest sees is proven by
tests/functional; this proves ordering, state rules, rollback and recovery.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from vmops import config
from vmops.compute import manager, states
from vmops.compute.catalog import Catalog
from vmops.compute.manager import Compute, SpawnRequest
from vmops.console.fake import FakeConsole
from vmops.errors import (
    Conflict,
    FlavorTooSmall,
    HostNotReady,
    HypervisorError,
    InstanceBusy,
    Invalid,
    InvalidName,
    InvalidState,
)
from vmops.hypervisor.base import PowerState
from vmops.hypervisor.fake import FakeHypervisor
from vmops.service import build

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    settings = config.load(tmp_path / "state", env={}, shutdown_retry_interval=1)
    hv = FakeHypervisor()
    capture = FakeConsole()
    problems: list[str] = []
    engine = build(settings, hypervisor=hv, capture=capture, host_problems=lambda: problems)
    store, compute, catalog = engine.store, engine.compute, engine.catalog
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    catalog.import_image("base", str(base), background=False)
    return {"settings": settings, "store": store, "hv": hv, "compute": compute,
            "catalog": catalog, "capture": capture, "problems": problems, "tmp": tmp_path}


def _spawn(env: dict[str, Any], name: str = "web1", **kw: Any) -> Any:
    req = SpawnRequest(name=name, image="base", flavor=kw.pop("flavor", "m1.tiny"), **kw)
    return env["compute"].create(req, background=False)


def test_spawn_runs_the_domain_and_records_it(env: dict[str, Any]) -> None:
    inst = _spawn(env)
    assert (inst.vm_state, inst.task_state, inst.power_state) == ("active", None, "running")
    hv: FakeHypervisor = env["hv"]
    spec = hv.spec_of(inst.id)
    assert spec.name == "vmops-web1" and spec.memory_mib == 512
    assert [d.target for d in spec.disks] == ["vda"]
    assert Path(inst.disks[0].path).is_file() and inst.disks[0].format == "qcow2"
    assert env["compute"].instance_dir(inst) in env["capture"].running


def test_a_flavor_with_swap_gives_a_swap_disk(env: dict[str, Any]) -> None:
    """As Nova's libvirt driver: after the ephemeral disk, a raw disk made a
    swap area (mkswap, label swap), of the flavor's swap MiB."""
    catalog: Catalog = env["catalog"]
    catalog.create_flavor("swappy", 256, 1, 1, ephemeral_gb=1, swap_mb=16)
    inst = _spawn(env, flavor="swappy")
    assert [(d.role, d.format, d.target) for d in inst.disks] == [
        ("root", "qcow2", "vda"), ("ephemeral", "qcow2", "vdb"), ("swap", "raw", "vdc")]
    swap = Path(inst.disks[2].path)
    assert swap.stat().st_size == 16 << 20
    assert b"SWAPSPACE2" in swap.read_bytes()[:8192]  # mkswap's signature
    assert inst.flavor.swap_mb == 16
    assert [d.target for d in env["hv"].spec_of(inst.id).disks] == ["vda", "vdb", "vdc"]


def test_refused_spawns_leave_nothing(env: dict[str, Any]) -> None:
    catalog: Catalog = env["catalog"]
    big = env["tmp"] / "big.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(big), "2G"], check=True)
    catalog.import_image("big", str(big), background=False)
    with pytest.raises(FlavorTooSmall, match=r"1073741824.*2147483648"):
        env["compute"].create(SpawnRequest("web1", "big", "m1.tiny"), background=False)
    with pytest.raises(InvalidName):
        _spawn(env, name=" leading space")  # display names: printable, not padded
    env["problems"].append("qemu-system-x86_64: not found (apt-get install qemu-system-x86)")
    with pytest.raises(HostNotReady, match="apt-get install qemu-system-x86"):
        _spawn(env)
    assert env["store"].instances() == []
    assert env["hv"].list_uuids() == []
    assert list(env["settings"].instances_dir.glob("*")) == []


def test_spawn_takes_the_instance_id_it_is_given(env: dict[str, Any]) -> None:
    """Nova's compute driver spawns with Nova's instance uuid: it is the
    record's id and the domain's UUID. A malformed or taken id is refused
    before anything is made."""
    given = "3b1c5f0e-5d4a-4f0e-9d6b-2a7c1e8f9a10"
    inst = _spawn(env, instance_id=given)
    assert inst.id == given and env["hv"].list_uuids() == [given]
    assert env["store"].instance(given).name == "web1"
    with pytest.raises(Conflict, match=f"an instance with id {given} already exists"):
        _spawn(env, name="web2", instance_id=given)
    with pytest.raises(Invalid, match="'not-a-uuid' is not a UUID"):
        _spawn(env, name="web3", instance_id="not-a-uuid")
    with pytest.raises(Invalid, match="canonical form"):
        _spawn(env, name="web4", instance_id=given.upper())
    assert [i.name for i in env["store"].instances()] == ["web1"]
    assert env["hv"].list_uuids() == [given]
    assert [p.name for p in env["settings"].instances_dir.glob("*")] == [given]


def test_failed_define_rolls_back_and_records_error(env: dict[str, Any]) -> None:
    env["hv"].fail_next("define", HypervisorError(reason="boom"))
    inst = _spawn(env)
    assert inst.vm_state == "error" and "boom" in inst.fault
    assert inst.disks == ()
    assert not env["compute"].instance_dir(inst).exists()
    assert env["hv"].list_uuids() == []
    env["compute"].destroy(inst.id)
    assert env["store"].instances() == []


def test_failed_start_removes_domain_disks_and_capture(env: dict[str, Any]) -> None:
    env["hv"].fail_next("start", HypervisorError(reason="no QEMU"))
    inst = _spawn(env)
    assert inst.vm_state == "error" and "no QEMU" in inst.fault
    assert env["hv"].list_uuids() == []
    assert env["capture"].running == set()
    assert not env["compute"].instance_dir(inst).exists()


def test_destroy_is_idempotent(env: dict[str, Any]) -> None:
    inst = _spawn(env)
    env["compute"].destroy("web1")
    env["compute"].destroy("web1")
    assert env["hv"].list_uuids() == [] and env["store"].instances() == []
    assert not env["compute"].instance_dir(inst).exists()


def test_power_cycle_and_state_rules(env: dict[str, Any]) -> None:
    c: Compute = env["compute"]
    _spawn(env)
    assert c.pause("web1").vm_state == "paused"
    with pytest.raises(InvalidState, match="cannot pause instance 'web1' while it is paused"):
        c.pause("web1")
    assert c.unpause("web1").vm_state == "active"
    assert c.suspend("web1").vm_state == "suspended"
    with pytest.raises(InvalidState, match="cannot start .* while it is suspended"):
        c.start("web1")
    assert c.resume("web1").vm_state == "active"
    assert c.stop("web1").vm_state == "stopped"
    for verb in (c.pause, c.unpause, c.suspend, c.resume, c.stop):
        with pytest.raises(InvalidState, match="while it is stopped"):
            verb("web1")
    assert c.start("web1").power_state == "running"


def test_soft_stop_falls_back_to_hard(env: dict[str, Any]) -> None:
    env["hv"].obey_power_button = False
    _spawn(env)
    inst = env["compute"].stop("web1", timeout=0.5)
    assert inst.vm_state == "stopped"


def test_soft_reboot_falls_back_to_hard(env: dict[str, Any]) -> None:
    hv: FakeHypervisor = env["hv"]
    hv.obey_power_button = False
    c = build(config.load(env["settings"].state_dir, env={}, wait_soft_reboot_seconds=1,
                          shutdown_retry_interval=1),
              hypervisor=hv, store=env["store"], capture=env["capture"]).compute
    inst = _spawn(env)
    c.reboot("web1")
    assert hv.domains[inst.id].resets == 1
    assert c.instance("web1").vm_state == "active"


def test_busy_instance_refuses_a_second_operation(env: dict[str, Any]) -> None:
    c: Compute = env["compute"]
    _spawn(env)
    _spawn(env, name="web2")
    env["hv"].obey_power_button = False
    stopper = threading.Thread(target=c.stop, args=("web1",), kwargs={"timeout": 2})
    stopper.start()
    try:
        while c.tasks.current(c.instance("web1").id) is None:
            pass
        with pytest.raises(InstanceBusy, match="powering-off"):
            c.pause("web1")
        assert c.pause("web2").vm_state == "paused"  # others are not held up
    finally:
        stopper.join()


def test_guest_shutdown_event_updates_the_record(env: dict[str, Any]) -> None:
    inst = _spawn(env)
    env["hv"].guest_shutdown(inst.id)
    inst = env["store"].instance("web1")
    assert (inst.vm_state, inst.power_state) == ("stopped", "shutoff")
    assert inst.desired_running is False


def test_an_event_the_record_already_says_writes_nothing(env: dict[str, Any]) -> None:
    """An event arriving after the verb that caused it wrote its end (as
    libvirt's often does) changes nothing, so it is not written again; its
    observers and waiters still hear of it."""
    compute: Compute = env["compute"]
    inst = compute.pause(_spawn(env).id)
    seen: list[Any] = []
    compute.lifecycle_observers[:] = [seen.append]
    written = env["store"].instance(inst.id)
    env["hv"]._emit(inst.id, PowerState.PAUSED, "paused")
    assert env["store"].instance(inst.id).updated_at == written.updated_at
    assert [e.state for e in seen] == [PowerState.PAUSED]
    env["hv"]._emit(inst.id, PowerState.RUNNING, "unpaused")  # news: written
    assert env["store"].instance(inst.id).vm_state == "active"


def test_lifecycle_observers_see_events_of_known_instances_after_the_record(
        env: dict[str, Any]) -> None:
    """What Nova's driver registers: each event of an instance vmops has a
    record of, once the record says it; an observer that raises does not
    keep the event from the others."""
    compute: Compute = env["compute"]
    inst = _spawn(env)
    seen: list[tuple[str, PowerState, str, str]] = []

    def record(event: Any) -> None:
        seen.append((event.uuid, event.state, event.detail,
                     env["store"].instance(event.uuid).power_state))

    def broken(event: Any) -> None:
        raise RuntimeError("observer bug")

    compute.lifecycle_observers[:] = [broken, record]
    env["hv"].guest_shutdown(inst.id)
    assert seen == [(inst.id, PowerState.SHUTOFF, "shutdown", "shutoff")]
    compute.pause(compute.start("web1").id)
    compute.unpause("web1")
    assert [(state, detail, power) for _, state, detail, power in seen[-3:]] == [
        (PowerState.RUNNING, "unpaused", "running"), (PowerState.PAUSED, "paused", "paused"),
        (PowerState.RUNNING, "unpaused", "running")]
    assert (PowerState.RUNNING, "started", "running") in [s[1:] for s in seen]


def test_recover_rolls_back_an_interrupted_spawn(env: dict[str, Any]) -> None:
    inst = _spawn(env)
    env["store"].update_instance(inst, vm_state=states.BUILDING, task_state=states.SPAWNING)
    env["compute"].recover()
    inst = env["store"].instance("web1")
    assert inst.vm_state == "error" and "interrupted" in inst.fault
    assert env["hv"].list_uuids() == []
    assert not env["compute"].instance_dir(inst).exists()


def test_recover_sees_what_happened_while_down(env: dict[str, Any]) -> None:
    inst = _spawn(env)
    hv: FakeHypervisor = env["hv"]
    hv.domains[inst.id].state = PowerState.SHUTOFF  # no event: the service was down
    env["compute"].recover()
    assert env["store"].instance("web1").vm_state == "stopped"


def test_recover_restarts_guests_after_host_boot_when_asked(env: dict[str, Any]) -> None:
    inst = _spawn(env)
    hv: FakeHypervisor = env["hv"]
    hv.domains[inst.id].state = PowerState.SHUTOFF
    settings = config.load(env["settings"].state_dir, env={},
                           resume_guests_state_on_host_boot=True)
    c = build(settings, hypervisor=hv, store=env["store"], capture=env["capture"]).compute
    c.recover()
    assert c.instance("web1").vm_state == "active"
    assert hv.domains[inst.id].state is PowerState.RUNNING


def test_foreign_domains_are_never_touched(env: dict[str, Any]) -> None:
    hv: FakeHypervisor = env["hv"]
    hv.add_foreign_domain("11111111-2222-3333-4444-555555555555", "users-own")
    _spawn(env)
    env["compute"].recover()
    assert "11111111-2222-3333-4444-555555555555" in hv.foreign
    assert len(hv.list_uuids()) == 1


def test_rebuild_config_drive_only_when_stopped(env: dict[str, Any]) -> None:
    from vmops.configdrive import read_iso
    from vmops.errors import Invalid

    c: Compute = env["compute"]
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB8n8e8hQ8mC2s7rC9yq0n2rZ5h1qJ9x2r7b0l3n4m5o me"
    env["catalog"].add_keypair("k1", key)
    inst = _spawn(env, config_drive=True, key_name="k1", user_data=b"hello")
    drive = Path(next(d.path for d in inst.disks if d.role == "config"))
    first = read_iso(drive)
    with pytest.raises(InvalidState, match="while it is running"):
        c.rebuild_config_drive("web1")
    env["store"].delete_keypair("k1")  # the drive keeps the key it was made with
    c.stop("web1", hard=True)
    c.rebuild_config_drive("web1")
    again = read_iso(drive)
    assert again["openstack/latest/user_data"] == b"hello"
    assert again["openstack/latest/meta_data.json"] != b""
    assert b"k1" in again["openstack/latest/meta_data.json"]
    assert set(again) == set(first)
    _spawn(env, name="web2")
    c.stop("web2", hard=True)
    with pytest.raises(Invalid, match="no config drive"):
        c.rebuild_config_drive("web2")


def test_spawn_without_start_defines_only_and_start_boots_it(env: dict[str, Any]) -> None:
    """vmops:start false: the record, disks and domain as a spawn makes
    them, but no boot and no console capture; os-start boots it later."""
    compute: Compute = env["compute"]
    hv: FakeHypervisor = env["hv"]
    inst = _spawn(env, start=False)
    assert (inst.vm_state, inst.task_state, inst.power_state) == ("stopped", None, "shutoff")
    assert inst.desired_running is False
    assert hv.domains[inst.id].state is PowerState.SHUTOFF
    assert Path(inst.disks[0].path).is_file()
    assert compute.instance_dir(inst) not in env["capture"].running
    steps = [s["step"] for s in compute.last_timings[inst.id]["steps"]]
    assert steps == ["record", "capture", "disks", "define", "boot", "finish"]
    # Not started again at the host's boot: it was never meant to run.
    settings = config.load(env["settings"].state_dir, env={},
                           resume_guests_state_on_host_boot=True)
    build(settings, hypervisor=hv, store=env["store"], capture=env["capture"]).compute.recover()
    assert hv.domains[inst.id].state is PowerState.SHUTOFF
    started = compute.start(inst.id)
    assert (started.vm_state, started.power_state) == ("active", "running")
    assert hv.domains[inst.id].state is PowerState.RUNNING
    assert compute.instance_dir(inst) in env["capture"].running


def test_a_generated_mac_another_port_has_is_drawn_again(
        env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    first = _spawn(env, mac="52:54:00:aa:bb:cc")
    draws = iter(["52:54:00:aa:bb:cc", "52:54:00:aa:bb:cd"])
    monkeypatch.setattr(manager, "generate_mac", lambda: next(draws))
    second = _spawn(env, "web2")  # refused with AddressInUse before: the first draw is taken
    assert (first.macs, second.macs) == (("52:54:00:aa:bb:cc",), ("52:54:00:aa:bb:cd",))
    assert second.vm_state == "active"
