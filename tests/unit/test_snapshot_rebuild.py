"""createImage (snapshot) and rebuild through the API, on the fake hypervisor:
state rules, refusals that change nothing, what the records say. The disk
copies are stood in for here (qemu-img is not run); tests/functional/
test_snapshot_rebuild.py does them for real with guests."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_api import Api
from tests.unit.test_disks_inspector import qcow2_bytes
from vmops.compute import states
from vmops.compute.catalog import SNAPSHOT_INTERRUPTED, Catalog
from vmops.disks import instance_disks, qemu_img
from vmops.disks.cache import ImageCache
from vmops.errors import DiskError
from vmops.hypervisor.base import PowerState
from vmops.store import Image

ACTION = "/v2.1/servers/web1/action?vmops:wait=30"
EXTRA = {"X-Vmops-Extra": "1"}


@pytest.fixture
def copies(api: Api, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each disk copy a snapshot makes: what it was asked, and the guest's
    power state while it ran. The copy writes a small valid qcow2."""
    seen: list[dict[str, Any]] = []

    def copy(src: Path, fmt: str, dest: Path, held_open: bool) -> None:
        state = api.hv.info(api.store.instance("web1").id).state
        seen.append({"src": src, "held_open": held_open, "state": state})
        dest.write_bytes(qcow2_bytes())

    monkeypatch.setattr(instance_disks, "copy_flattened", copy)
    monkeypatch.setattr(qemu_img, "check", lambda path, fmt: {})
    return seen


def test_snapshot_of_a_running_guest_pauses_it_for_the_copy(
        api: Api, copies: list[dict[str, Any]]) -> None:
    inst = api.add_instance("web1")
    answer = api.post(ACTION, {"createImage": {"name": "web1-snap", "metadata": {}}})
    assert answer.status == 200
    image_id = answer.headers["location"].rsplit("/", 1)[1]
    assert copies == [{"src": Path("/nonexistent/web1/root.qcow2"), "held_open": True,
                       "state": PowerState.PAUSED}]
    assert api.hv.info(inst.id).state is PowerState.RUNNING
    assert api.store.instance(inst.id).vm_state == states.ACTIVE
    image = api.get(f"/v2.1/images/{image_id}", headers=EXTRA).body["image"]
    assert (image["name"], image["status"]) == ("web1-snap", "ACTIVE")
    assert image["metadata"] == {"image_type": "snapshot", "instance_uuid": inst.id}
    assert image["vmops:format"] == "qcow2"
    glance = api.get(f"/image/v2/images/{image_id}").body
    assert glance["instance_uuid"] == inst.id


@pytest.mark.parametrize("vm_state", [states.STOPPED, states.PAUSED, states.SUSPENDED])
def test_snapshot_leaves_an_instance_that_is_not_running_as_it_was(
        api: Api, copies: list[dict[str, Any]], vm_state: str) -> None:
    inst = api.add_instance("web1", vm_state)
    before = api.hv.info(inst.id).state
    assert api.post(ACTION, {"createImage": {"name": "snap"}}).status == 200
    assert copies[0]["state"] is before
    assert copies[0]["held_open"] is (vm_state == states.PAUSED)
    assert api.hv.info(inst.id).state is before
    assert api.store.image("snap").status == "active"


def test_a_waited_answer_keeps_what_the_actions_own_answer_said(
        api: Api, copies: list[dict[str, Any]], made_disks: list[str]) -> None:
    """vmops:wait answers the server, and keeps createImage's image_id (2.45)
    and rebuild's adminPass: the client has no other way to learn them."""
    inst = api.add_instance("web1")
    answer = api.post(ACTION, {"createImage": {"name": "snap"}},
                      headers={"OpenStack-API-Version": "compute 2.45"})
    assert answer.status == 200, answer.body
    assert answer.body["image_id"] == api.store.image("snap").id
    assert answer.body["server"]["status"] == "ACTIVE"
    # Stopped (rebuild then boots nothing: a guest on the fake hypervisor
    # never connects to its console); the record alone would be corrected
    # from the running domain as the rebuild begins.
    api.hv.power_off(inst.id)
    api.store.update_instance(inst.id, vm_state=states.STOPPED, power_state="shutoff")
    _other_image(api)
    answer = api.post(ACTION, {"rebuild": {"imageRef": "other", "adminPass": "new-pw"}})
    assert answer.status == 200, answer.body
    assert answer.body["server"]["adminPass"] == "new-pw"
    assert answer.body["server"]["OS-EXT-STS:task_state"] is None
    assert answer.body["server"]["image"]["id"] == api.store.image("other").id


@pytest.mark.parametrize(("own", "kept"), [
    ({"adminPass": "rescue-pw"}, {"adminPass": "rescue-pw"}),  # rescue
    ({}, {}), (b"", {}), (None, {}),
    ({"server": {"id": "x", "adminPass": "pw"}}, {})])
def test_what_a_waited_answer_keeps_of_the_actions_own(own: Any, kept: dict[str, Any]) -> None:
    from vmops.api.routes import _with_own_answer

    answer = _with_own_answer({"server": {"id": "x", "status": "ACTIVE"}}, own)
    assert {k: v for k, v in answer.items() if k != "server"} == kept
    given = own.get("server", {}) if isinstance(own, dict) else {}
    assert answer["server"].get("adminPass") == given.get("adminPass")
    assert answer["server"]["status"] == "ACTIVE"


def test_refused_snapshots_leave_no_image(api: Api, copies: list[dict[str, Any]]) -> None:
    inst = api.add_instance("web1", states.ERROR)
    api.hv.undefine(inst.id)  # a failed spawn's record: ERROR, no domain
    answer = api.post(ACTION, {"createImage": {"name": "snap"}})
    assert answer.status == 409
    api.store.update_instance(inst, vm_state=states.ACTIVE)
    api.hv.define(api.compute.domain_spec(inst))
    api.hv.start(inst.id)
    for bad in ({"name": "snap", "metadata": {"k": 1}}, {}, {"name": " padded"}, None):
        assert api.post(ACTION, {"createImage": bad}).status == 400, bad
    assert [i.name for i in api.store.images()] == ["tiny"]
    assert copies == []


def test_a_failed_snapshot_deletes_its_image_and_says_why(
        api: Api, copies: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    inst = api.add_instance("web1")

    def broken(src: Path, fmt: str, dest: Path, held_open: bool) -> None:
        raise DiskError(reason="qemu-img convert: no space left")

    monkeypatch.setattr(instance_disks, "copy_flattened", broken)
    answer = api.post(ACTION, {"createImage": {"name": "snap"}}, headers=EXTRA)
    assert answer.body["server"]["vmops:fault"].endswith("no space left")
    assert [i.name for i in api.store.images()] == ["tiny"]
    assert api.hv.info(inst.id).state is PowerState.RUNNING  # unpaused again


# -- rebuild ----------------------------------------------------------------------
@pytest.fixture
def made_disks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Root and ephemeral disks are plain files here; which ones were made."""
    made: list[str] = []

    def root(base: Any, dest: Path, **_: Any) -> instance_disks.DiskFacts:
        dest.write_text(f"root from {base.path}")
        made.append(f"root from {base.path}")
        return instance_disks.DiskFacts(dest, "qcow2")

    def ephemeral(dest: Path, size_bytes: int) -> instance_disks.DiskFacts:
        dest.write_text("blank")
        made.append("ephemeral")
        return instance_disks.DiskFacts(dest, "qcow2")

    monkeypatch.setattr(instance_disks, "create_root_disk", root)
    monkeypatch.setattr(instance_disks, "create_ephemeral_disk", ephemeral)
    return made


def _other_image(api: Api, virtual_size: int = 1 << 29) -> Image:
    return api.store.add_image(Image(id="7c0f6d3e-0000-4000-8000-000000000002", name="other",
                                     status="active", format="qcow2", virtual_size=virtual_size,
                                     file_size=1 << 20, checksum="cd" * 32,
                                     path="/nonexistent/other"))


def test_rebuild_keeps_the_identity_and_replaces_the_disks(
        api: Api, made_disks: list[str]) -> None:
    inst = api.add_instance("web1", states.STOPPED)
    api.store.update_instance(inst, properties={"role": "web"},
                              flavor=dataclasses.replace(inst.flavor, ephemeral_gb=1))
    other = _other_image(api)
    answer = api.post(ACTION, {"rebuild": {"imageRef": "other", "preserve_ephemeral": False}})
    assert answer.status == 200
    after = api.store.instance(inst.id)
    assert (after.id, after.name, after.macs, after.flavor_id, after.properties) == (
        inst.id, "web1", inst.macs, inst.flavor_id, {"role": "web"})
    assert (after.image_id, after.image_name, after.fault) == (other.id, "other", "")
    assert after.vm_state == states.STOPPED  # as Nova leaves a stopped instance
    inst_dir = api.compute.instance_dir(after)
    assert [(d.role, d.path) for d in after.disks] == [
        ("root", str(inst_dir / "root.qcow2")), ("ephemeral", str(inst_dir / "ephemeral.qcow2"))]
    assert made_disks == ["root from /nonexistent/other", "ephemeral"]
    assert not (inst_dir / "rebuild").exists()
    spec = api.hv.spec_of(inst.id)
    assert [d.path for d in spec.disks] == [Path(d.path) for d in after.disks]
    assert spec.metadata["image"] == "other"


def test_rebuild_refusals_change_nothing(api: Api, made_disks: list[str]) -> None:
    inst = api.add_instance("web1", states.STOPPED)
    _other_image(api, virtual_size=2 << 30)  # m1.tiny's root disk is 1 GiB
    answer = api.post(ACTION, {"rebuild": {"imageRef": "other", "name": "renamed",
                                           "metadata": {"k": "v"}}})
    assert answer.status == 400 and "never shrunk" in answer.fault()[1]
    assert (api.store.instance(inst.id).name, api.store.instance(inst.id).properties) == (
        "web1", {})
    assert api.post(ACTION, {"rebuild": {"imageRef": "nope"}}).status == 400
    for bad in ({}, {"imageRef": "tiny", "preserve_ephemeral": True},
                {"imageRef": "tiny", "name": " x"}, {"imageRef": "tiny", "colour": "red"},
                {"imageRef": "tiny", "personality": [{"path": "/a"}]},
                {"imageRef": "tiny", "OS-DCF:diskConfig": "SOMETIMES"}, None):
        assert api.post(ACTION, {"rebuild": bad}).status == 400, bad
    paused = api.add_instance("web2", states.PAUSED)  # Nova: active, stopped or error only
    assert api.post("/v2.1/servers/web2/action", {"rebuild": {"imageRef": "tiny"}}
                    ).status == 409
    assert api.store.instance(paused.id).task_state is None
    after = api.store.instance(inst.id)
    assert (after.image_id, after.disks, after.task_state) == (inst.image_id, inst.disks, None)
    assert made_disks == []


def test_rebuild_that_cannot_make_its_disks_leaves_the_old_ones(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    inst = api.add_instance("web1", states.STOPPED)

    def full(*_: Any, **__: Any) -> None:
        raise DiskError(reason="no space left")

    monkeypatch.setattr(instance_disks, "create_root_disk", full)
    answer = api.post(ACTION, {"rebuild": {"imageRef": "tiny"}}, headers=EXTRA)
    assert answer.body["server"]["vmops:fault"].endswith("no space left")
    after = api.store.instance(inst.id)
    assert (after.disks, after.vm_state) == (inst.disks, states.STOPPED)
    assert not (api.compute.instance_dir(after) / "rebuild").exists()


def test_a_snapshot_cut_short_by_a_restart_unpauses_the_guest_and_fails_the_image(
        api: Api) -> None:
    inst = api.add_instance("web1")
    api.hv.pause(inst.id)  # as the snapshot left it
    # While a task holds it, a pause leaves vm_state as it was.
    api.store.update_instance(inst, vm_state=states.ACTIVE, task_state=states.IMAGE_SNAPSHOT,
                              power_state=PowerState.PAUSED.value)
    api.store.add_image(Image(id="7c0f6d3e-0000-4000-8000-000000000003", name="snap",
                              status="saving", instance_uuid=inst.id))
    api.compute.recover()
    Catalog(api.store, ImageCache(api.compute.settings.images_dir)).recover_imports()
    assert api.hv.info(inst.id).state is PowerState.RUNNING
    after = api.store.instance(inst.id)
    assert (after.vm_state, after.task_state) == (states.ACTIVE, None)
    image = api.store.image("snap")
    assert (image.status, image.fault) == ("error", SNAPSHOT_INTERRUPTED)
