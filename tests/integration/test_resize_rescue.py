"""Resize (confirm, revert), rescue (unrescue) and crash dump on the fake
hypervisor with real disks (qemu-img) and records: Nova's state rules, what
the domain is defined with, the disks byte for byte, rollback of a failure
and recovery of an interruption at each step.

An interruption is stood in for in the process: the crash point raises an
exception no verb catches (as ``os._exit`` ends a real service, no rollback
runs), then a new Compute on the same store and hypervisor recovers, as a
restarted service does with the domains a real host kept. The service
really killed at each step is in test_faults_service_killed.py; what a
guest sees, in tests/functional/test_resize_rescue.py.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_compute import _spawn
from tests.integration.test_compute import env as env  # noqa: F401 - the fixture, shared
from vmops.compute import crash_points, states
from vmops.compute import resize as resize_steps
from vmops.compute.manager import Compute
from vmops.errors import HypervisorError, ImageNotFound, Invalid, InvalidState, QuotaExceeded
from vmops.hypervisor.base import PowerState
from vmops.hypervisor.fake import FakeHypervisor
from vmops.service import build
from vmops.store import Flavor, Instance, Store

pytestmark = pytest.mark.integration
GIB = 1024**3


@pytest.fixture
def flavors(env: dict[str, Any]) -> dict[str, Flavor]:
    store: Store = env["store"]
    made = {"small": Flavor("rs-small", "rs.small", 256, 1, 1, 0),
            "big": Flavor("rs-big", "rs.big", 384, 2, 2, 1),
            "bigger": Flavor("rs-bigger", "rs.bigger", 512, 2, 3, 2),
            "flat": Flavor("rs-flat", "rs.flat", 256, 1, 0, 0)}
    for flavor in made.values():
        store.add_flavor(flavor)
    return made


def _size(path: str) -> int:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True,
                         capture_output=True, text=True).stdout
    return int(json.loads(out)["virtual-size"])


def _digest(inst: Instance) -> dict[str, str]:
    """Each disk file's sha256, by role."""
    return {d.role: hashlib.sha256(Path(d.path).read_bytes()).hexdigest() for d in inst.disks}


def _write_into(inst: Instance, offset: int, data: bytes) -> None:
    """Change the root disk as a guest would (so revert has something to undo)."""
    root = next(d for d in inst.disks if d.role == "root")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                    f"write -P {data[0]} {offset} {len(data)}", root.path],
                   check=True, capture_output=True)


# -- resize -------------------------------------------------------------------------------
def test_resize_of_a_running_instance_then_confirm(env: dict[str, Any],
                                                   flavors: dict[str, Flavor]) -> None:
    c: Compute = env["compute"]
    hv: FakeHypervisor = env["hv"]
    inst = _spawn(env, flavor="rs.small")
    boots = hv.domains[inst.id].boots
    done = c.resize(inst.id, "rs.big")
    assert (done.vm_state, done.task_state, done.power_state) == (
        states.RESIZED, None, "running")
    assert states.server_status(done.vm_state, done.task_state) == "VERIFY_RESIZE"
    assert (done.flavor_id, done.flavor.ram_mib, done.flavor.vcpus) == ("rs-big", 384, 2)
    spec = hv.spec_of(inst.id)
    assert (spec.memory_mib, spec.vcpus) == (384, 2)
    assert [d.target for d in spec.disks] == ["vda", "vdb"]  # an ephemeral disk, new
    root, ephemeral = done.disks
    assert (_size(root.path), _size(ephemeral.path)) == (2 * GIB, 1 * GIB)
    assert hv.domains[inst.id].boots == boots + 1  # shut down, booted again
    old_dir = c.instance_dir(inst) / resize_steps.OLD_DISKS
    assert [p.name for p in old_dir.iterdir()] == ["root.qcow2"]
    assert done.pre_resize is not None and done.pre_resize["flavor"]["name"] == "rs.small"

    confirmed = c.confirm_resize(inst.id)
    assert (confirmed.vm_state, confirmed.pre_resize, confirmed.flavor_id) == (
        states.ACTIVE, None, "rs-big")
    assert not old_dir.exists()
    assert hv.info(inst.id).state is PowerState.RUNNING


def test_revert_gives_back_the_old_flavor_and_the_old_disks_exactly(
        env: dict[str, Any], flavors: dict[str, Flavor]) -> None:
    c: Compute = env["compute"]
    hv: FakeHypervisor = env["hv"]
    inst = _spawn(env, flavor="rs.small")
    _write_into(inst, 1 << 20, b"\x41" * 4096)
    before = _digest(inst)
    resized = c.resize(inst.id, "rs.big")
    _write_into(resized, 2 << 20, b"\x42" * 4096)  # the resized guest writes too
    assert _digest(resized)["root"] != before["root"]
    reverted = c.revert_resize(inst.id)
    assert (reverted.vm_state, reverted.power_state, reverted.flavor_id) == (
        states.ACTIVE, "running", "rs-small")
    assert reverted.disks == inst.disks and _digest(reverted) == before
    assert _size(reverted.disks[0].path) == 1 * GIB
    assert (hv.spec_of(inst.id).memory_mib, hv.spec_of(inst.id).vcpus) == (256, 1)
    assert list(c.instance_dir(inst).glob("ephemeral*")) == []  # the resize's own, gone
    assert not (c.instance_dir(inst) / resize_steps.OLD_DISKS).exists()
    assert reverted.pre_resize is None


def test_resize_of_a_stopped_instance_leaves_it_stopped(
        env: dict[str, Any], flavors: dict[str, Flavor]) -> None:
    c: Compute = env["compute"]
    inst = _spawn(env, flavor="rs.small", config_drive=True)
    c.stop(inst.id, hard=True)
    resized = c.resize(inst.id, "rs.big")
    assert (resized.vm_state, resized.power_state) == (states.RESIZED, "shutoff")
    # The new ephemeral disk comes before the config drive, at the first free target.
    assert [(d.role, d.target) for d in resized.disks] == [
        ("root", "vda"), ("ephemeral", "vdb"), ("config", "hda")]
    assert c.revert_resize(inst.id).vm_state == states.STOPPED
    again = c.resize(inst.id, "rs.big")
    assert c.confirm_resize(again.id).vm_state == states.STOPPED


def test_a_resized_instance_can_grow_its_ephemeral_disk(
        env: dict[str, Any], flavors: dict[str, Flavor]) -> None:
    c: Compute = env["compute"]
    inst = _spawn(env, flavor="rs.big")
    before = _digest(inst)
    resized = c.resize(inst.id, "rs.bigger")
    assert [_size(d.path) for d in resized.disks] == [3 * GIB, 2 * GIB]
    assert _digest(c.revert_resize(inst.id)) == before


def test_swap_is_made_afresh_at_its_new_size_and_reverted_exactly(
        env: dict[str, Any], flavors: dict[str, Flavor]) -> None:
    c: Compute = env["compute"]
    store: Store = env["store"]
    store.add_flavor(Flavor("rs-swap", "rs.swap", 256, 1, 1, 0, swap_mb=64))
    store.add_flavor(Flavor("rs-swap2", "rs.swap2", 256, 1, 2, 1, swap_mb=128))
    inst = _spawn(env, flavor="rs.swap", config_drive=True)
    assert [(d.role, d.target) for d in inst.disks] == [
        ("root", "vda"), ("swap", "vdb"), ("config", "hda")]
    before = _digest(inst)
    resized = c.resize(inst.id, "rs.swap2")
    # The ephemeral disk added takes the first free target, the swap disk the next.
    assert [(d.role, d.target) for d in resized.disks] == [
        ("root", "vda"), ("ephemeral", "vdc"), ("swap", "vdb"), ("config", "hda")]
    swap = next(d for d in resized.disks if d.role == "swap")
    assert Path(swap.path).stat().st_size == 128 * 1024**2
    assert [d.target for d in env["hv"].spec_of(inst.id).disks] == ["vda", "vdc", "vdb", "hda"]
    reverted = c.revert_resize(inst.id)
    assert reverted.disks == inst.disks and _digest(reverted) == before
    assert sorted(p.name for p in c.instance_dir(inst).iterdir()) == [
        "config.iso", "root.qcow2", "swap.raw"]


def test_a_resize_over_the_quota_is_refused(env: dict[str, Any],
                                            flavors: dict[str, Flavor]) -> None:
    c: Compute = env["compute"]
    inst = _spawn(env, flavor="rs.small")  # 1 vCPU, 256 MiB
    c.quotas.update(inst.project_id, {"cores": 1}, force=True)
    before = c.store.instance(inst.id)
    with pytest.raises(QuotaExceeded, match="Quota exceeded for cores: Requested 1"):
        c.resize(inst.id, "rs.big")  # 2 vCPUs
    assert c.store.instance(inst.id) == before
    c.quotas.update(inst.project_id, {"cores": 2}, force=True)
    assert c.resize(inst.id, "rs.big").vm_state == states.RESIZED


@pytest.mark.parametrize(("spawned", "flavor", "why"), [
    ("rs.small", "rs.small", "must change flavor"),
    ("rs.small", "rs.flat", "zero disk flavor"),
    ("rs.big", "m1.tiny", "Unable to resize disk down"),  # 1 GiB root < 2 GiB
    ("rs.bigger", "rs.big", "Unable to resize disk down"),  # and a smaller ephemeral disk
])
def test_refused_resizes_change_nothing(env: dict[str, Any], flavors: dict[str, Flavor],
                                        spawned: str, flavor: str, why: str) -> None:
    c: Compute = env["compute"]
    inst = _spawn(env, flavor=spawned)
    before = c.store.instance(inst.id)
    calls = len(env["hv"].calls)
    with pytest.raises(Invalid, match=why):
        c.resize(inst.id, flavor)
    assert c.store.instance(inst.id) == before
    assert set(env["hv"].calls[calls:]) <= {"exists", "info"}  # the state check only
    assert not (c.instance_dir(inst) / resize_steps.OLD_DISKS).exists()


def test_a_smaller_ephemeral_disk_is_refused(env: dict[str, Any],
                                            flavors: dict[str, Flavor]) -> None:
    inst = _spawn(env, flavor="rs.bigger")
    env["store"].add_flavor(Flavor("rs-wide", "rs.wide", 256, 1, 4, 1))
    with pytest.raises(Invalid, match="ephemeral"):
        env["compute"].resize(inst.id, "rs.wide")


def test_resize_state_rules(env: dict[str, Any], flavors: dict[str, Flavor]) -> None:
    """Nova: resize from active or stopped; confirm and revert only when resized;
    a resized instance does nothing else but be deleted."""
    c: Compute = env["compute"]
    inst = _spawn(env, flavor="rs.small")
    for verb in (c.confirm_resize, c.revert_resize):
        with pytest.raises(InvalidState):
            verb(inst.id)
    c.pause(inst.id)
    with pytest.raises(InvalidState):
        c.resize(inst.id, "rs.big")
    c.unpause(inst.id)
    c.resize(inst.id, "rs.big")
    refused = (lambda: c.resize(inst.id, "rs.bigger"), lambda: c.stop(inst.id),
               lambda: c.pause(inst.id), lambda: c.reboot(inst.id),
               lambda: c.reboot(inst.id, hard=True), lambda: c.suspend(inst.id),
               lambda: c.rescue(inst.id), lambda: c.rebuild(inst.id, "base"),
               lambda: c.unrescue(inst.id))
    for call in refused:
        with pytest.raises(InvalidState):
            call()
        assert c.store.instance(inst.id).vm_state == states.RESIZED
    c.destroy(inst.id)
    assert not c.instance_dir(inst).exists()


def test_a_guest_that_stops_by_itself_stays_resized(env: dict[str, Any],
                                                    flavors: dict[str, Flavor]) -> None:
    c: Compute = env["compute"]
    inst = _spawn(env, flavor="rs.small")
    c.resize(inst.id, "rs.big")
    env["hv"].guest_shutdown(inst.id)
    now = c.store.instance(inst.id)
    assert (now.vm_state, now.power_state) == (states.RESIZED, "shutoff")
    c.recover()
    assert c.store.instance(inst.id).vm_state == states.RESIZED
    assert c.revert_resize(inst.id).vm_state == states.ACTIVE  # it ran before the resize


def test_a_failed_resize_is_rolled_back(env: dict[str, Any], flavors: dict[str, Flavor]) -> None:
    c: Compute = env["compute"]
    hv: FakeHypervisor = env["hv"]
    inst = _spawn(env, flavor="rs.small")
    before = _digest(inst)
    hv.fail_next("start", HypervisorError(reason="not enough memory for the new flavor"))
    with pytest.raises(HypervisorError):
        c.resize(inst.id, "rs.big")
    after = c.store.instance(inst.id)
    assert (after.vm_state, after.power_state, after.flavor_id) == (
        states.ACTIVE, "running", "rs-small")
    assert "not enough memory" in after.fault
    assert after.disks == inst.disks and _digest(after) == before
    assert hv.spec_of(inst.id).memory_mib == 256
    assert sorted(p.name for p in c.instance_dir(inst).iterdir()) == sorted(
        Path(d.path).name for d in inst.disks)


# -- interrupted, then recovered ------------------------------------------------------------
class Crash(BaseException):
    """The process ending at a crash point: nothing catches it, no rollback runs."""


@pytest.fixture
def crash_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    wanted: list[str] = []

    def reached(verb: str, step: str) -> None:
        if f"{verb}:{step}" in wanted:
            raise Crash(f"{verb}:{step}")

    monkeypatch.setattr(crash_points, "reached", reached)
    yield wanted


def _restarted(env: dict[str, Any]) -> Compute:
    """A new Compute on the same records and domains, recovered."""
    c = build(env["settings"], hypervisor=env["hv"], store=env["store"],
              capture=env["capture"]).compute
    c.recover()
    return c


@pytest.mark.parametrize("step", crash_points.steps_of("resize"))
def test_an_interrupted_resize_is_rolled_back(env: dict[str, Any], flavors: dict[str, Flavor],
                                              crash_at: list[str], step: str) -> None:
    inst = _spawn(env, flavor="rs.small")
    before = _digest(inst)
    boots = env["hv"].domains[inst.id].boots
    crash_at.append(f"resize:{step}")
    with pytest.raises(Crash):
        env["compute"].resize(inst.id, "rs.big")
    crash_at.clear()  # the service starts again without VMOPS_FAULT_AT
    c = _restarted(env)
    after = c.store.instance(inst.id)
    assert (after.vm_state, after.task_state, after.power_state, after.flavor_id) == (
        states.ACTIVE, None, "running", "rs-small"), after.fault
    assert after.pre_resize is None and after.disks == inst.disks
    assert _digest(after) == before
    assert env["hv"].spec_of(inst.id).memory_mib == 256
    assert sorted(p.name for p in c.instance_dir(inst).iterdir()) == ["root.qcow2"]
    # A guest the resize had not yet shut down was left running; one it had
    # was booted again (after-work: the resized guest had been booted too).
    booted = {"after-begin": 0, "after-record": 0, "after-work": 2}.get(step, 1)
    assert env["hv"].domains[inst.id].boots == boots + booted


@pytest.mark.parametrize(("verb", "step"), [
    (verb, step) for verb in ("revert-resize", "confirm-resize")
    for step in crash_points.steps_of(verb)])
def test_an_interrupted_revert_or_confirm_is_finished(
        env: dict[str, Any], flavors: dict[str, Flavor], crash_at: list[str], verb: str,
        step: str) -> None:
    inst = _spawn(env, flavor="rs.small")
    before = _digest(inst)
    c: Compute = env["compute"]
    c.resize(inst.id, "rs.big")
    crash_at.append(f"{verb}:{step}")
    with pytest.raises(Crash):
        (c.revert_resize if verb == "revert-resize" else c.confirm_resize)(inst.id)
    crash_at.clear()
    c = _restarted(env)
    after = c.store.instance(inst.id)
    assert (after.vm_state, after.task_state, after.power_state, after.pre_resize) == (
        states.ACTIVE, None, "running", None)
    if verb == "revert-resize":
        assert after.flavor_id == "rs-small" and _digest(after) == before
    else:
        assert after.flavor_id == "rs-big"
    assert not (c.instance_dir(inst) / resize_steps.OLD_DISKS).exists()


# -- rescue -------------------------------------------------------------------------------
def test_rescue_boots_the_rescue_disk_with_the_root_disk_second(env: dict[str, Any]) -> None:
    c: Compute = env["compute"]
    hv: FakeHypervisor = env["hv"]
    inst = _spawn(env, config_drive=True)
    before = _digest(inst)
    rescued = c.rescue(inst.id, admin_password="s3cret")
    assert (rescued.vm_state, rescued.power_state) == (states.RESCUED, "running")
    assert states.server_status(rescued.vm_state, rescued.task_state) == "RESCUE"
    disks = {d.target: (d.path, d.readonly) for d in hv.spec_of(inst.id).disks}
    rescue_dir = c.instance_dir(inst) / "rescue"
    root = next(d for d in inst.disks if d.role == "root")
    assert disks == {"vda": (rescue_dir / "rescue.qcow2", False),
                     "vdb": (Path(root.path), False),
                     "hda": (rescue_dir / "config.iso", True)}
    assert rescued.disks == inst.disks and _digest(rescued) == before  # untouched
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json",
                          str(rescue_dir / "rescue.qcow2")], check=True, capture_output=True,
                         text=True).stdout
    assert json.loads(out)["backing-filename"] == c.store.image("base").path

    back = c.unrescue(inst.id)
    assert (back.vm_state, back.power_state, back.rescue_image_id) == (
        states.ACTIVE, "running", "")
    assert [d.target for d in hv.spec_of(inst.id).disks] == ["vda", "hda"]
    assert str(hv.spec_of(inst.id).disks[0].path) == root.path
    assert not rescue_dir.exists()


def test_rescue_state_rules(env: dict[str, Any], flavors: dict[str, Flavor]) -> None:
    c: Compute = env["compute"]
    inst = _spawn(env)
    with pytest.raises(InvalidState):
        c.unrescue(inst.id)
    with pytest.raises(ImageNotFound):
        c.rescue(inst.id, image_ref="no-such-image")
    c.pause(inst.id)
    with pytest.raises(InvalidState):
        c.rescue(inst.id)
    c.unpause(inst.id)
    c.stop(inst.id, hard=True)
    assert c.rescue(inst.id).power_state == "running"  # a stopped instance too, as Nova
    for call in (lambda: c.rescue(inst.id), lambda: c.stop(inst.id), lambda: c.start(inst.id),
                 lambda: c.pause(inst.id), lambda: c.reboot(inst.id),
                 lambda: c.resize(inst.id, "rs.big"), lambda: c.confirm_resize(inst.id)):
        with pytest.raises(InvalidState):
            call()
    env["hv"].guest_shutdown(inst.id)  # the rescue guest powers off: still rescued
    assert c.store.instance(inst.id).vm_state == states.RESCUED
    assert c.unrescue(inst.id).vm_state == states.ACTIVE


def test_a_failed_rescue_is_rolled_back(env: dict[str, Any]) -> None:
    c: Compute = env["compute"]
    inst = _spawn(env)
    env["hv"].fail_next("start", HypervisorError(reason="boom"))
    with pytest.raises(HypervisorError):
        c.rescue(inst.id)
    after = c.store.instance(inst.id)
    assert (after.vm_state, after.power_state, after.rescue_image_id) == (
        states.ACTIVE, "running", "")
    assert [str(d.path) for d in env["hv"].spec_of(inst.id).disks] == [
        d.path for d in inst.disks]
    assert not (c.instance_dir(inst) / "rescue").exists()


@pytest.mark.parametrize("verb", ["rescue", "unrescue"])
def test_an_interrupted_rescue_is_rolled_back_and_unrescue_finished(
        env: dict[str, Any], crash_at: list[str], verb: str) -> None:
    inst = _spawn(env, config_drive=True)
    for step in crash_points.steps_of(verb):
        if verb == "unrescue":
            env["compute"].rescue(inst.id)
        crash_at[:] = [f"{verb}:{step}"]
        with pytest.raises(Crash):
            getattr(env["compute"], verb)(inst.id)
        crash_at.clear()
        c = env["compute"] = _restarted(env)
        after = c.store.instance(inst.id)
        assert (after.vm_state, after.task_state, after.power_state,
                after.rescue_image_id) == (states.ACTIVE, None, "running", ""), step
        assert [str(d.path) for d in env["hv"].spec_of(inst.id).disks] == [
            d.path for d in inst.disks]
        assert not (c.instance_dir(inst) / "rescue").exists()


# -- crash dump ---------------------------------------------------------------------------
def test_crash_dump_sends_an_nmi_to_a_running_guest_only(env: dict[str, Any]) -> None:
    c: Compute = env["compute"]
    hv: FakeHypervisor = env["hv"]
    inst = _spawn(env)
    assert c.trigger_crash_dump(inst.id).vm_state == states.ACTIVE
    assert hv.domains[inst.id].nmis == 1
    c.pause(inst.id)  # Nova's states allow paused, but the guest must run
    with pytest.raises(InvalidState, match="not running"):
        c.trigger_crash_dump(inst.id)
    c.unpause(inst.id)
    c.stop(inst.id, hard=True)
    with pytest.raises(InvalidState):
        c.trigger_crash_dump(inst.id)
    c.start(inst.id)
    c.rescue(inst.id)
    assert c.trigger_crash_dump(inst.id).vm_state == states.RESCUED  # still rescued
    assert hv.domains[inst.id].nmis == 2
