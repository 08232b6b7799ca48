"""resize / confirmResize / revertResize, rescue / unrescue and
trigger_crash_dump through the API, on the fake hypervisor: Nova's bodies,
answers and state rules (409, nothing changed), statuses. The disk copies
and growth are stood in for (tests/integration/test_resize_rescue.py does
them with qemu-img; tests/functional/test_resize_rescue.py with guests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_api import EXTRA, Api
from vmops.compute import states
from vmops.disks import instance_disks, qemu_img
from vmops.store import DiskRecord, Flavor, InstanceFlavor

ACTION = "/v2.1/servers/web1/action"
V217 = {"OpenStack-API-Version": "compute 2.17"}


@pytest.fixture
def disks(api: Api, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """What resize does to disk files, recorded instead of done."""
    done: list[tuple[str, Any]] = []

    def copy_whole(src: Path, dest: Path) -> None:
        done.append(("copy", src))
        dest.touch()

    monkeypatch.setattr(instance_disks, "copy_whole", copy_whole)
    monkeypatch.setattr(qemu_img, "resize",
                        lambda path, fmt, size: done.append(("grow", (path, size))))
    api.store.add_flavor(Flavor("rs-big", "rs.big", 1024, 2, 2, 0))
    return done


def _server(api: Api) -> dict[str, Any]:
    server: dict[str, Any] = api.get("/v2.1/servers/web1", headers=EXTRA).body["server"]
    return server


def _wait(api: Api) -> dict[str, Any]:
    assert api.compute.wait_idle(api.store.instance("web1").id, 30)
    return _server(api)


def _with_a_root_file(api: Api, vm_state: str) -> Path:
    """An instance whose root disk is an (empty) file in its own directory."""
    inst = api.add_instance("web1", vm_state)
    root = api.compute.instance_dir(inst) / "root.qcow2"
    root.parent.mkdir(parents=True)
    root.touch()
    api.store.update_instance(inst, disks=(DiskRecord("root", str(root), "qcow2", "vda"),))
    return root


def test_resize_confirm_and_revert_of_a_stopped_server(api: Api,
                                                       disks: list[tuple[str, Any]]) -> None:
    root = _with_a_root_file(api, states.STOPPED)
    inst = api.store.instance("web1")
    answer = api.post(ACTION, {"resize": {"flavorRef": "rs.big", "OS-DCF:diskConfig": "AUTO"}})
    assert (answer.status, answer.body) == (202, b"")
    server = _wait(api)
    assert (server["status"], server["OS-EXT-STS:vm_state"]) == ("VERIFY_RESIZE", "resized")
    assert server["flavor"]["id"] == "rs-big" and server["vmops:power_state"] == "shutoff"
    assert disks == [("copy", root), ("grow", (root, 2 << 30))]
    assert api.hv.spec_of(inst.id).memory_mib == 1024
    assert api.post(ACTION, {"revertResize": None}).status == 202
    server = _wait(api)
    assert (server["status"], server["flavor"]["id"]) == ("SHUTOFF", "1")
    assert api.hv.spec_of(inst.id).memory_mib == 512
    api.post(ACTION, {"resize": {"flavorRef": "rs-big"}})
    _wait(api)
    answer = api.post(ACTION, {"confirmResize": None})
    assert (answer.status, answer.body) == (204, b"")
    server = _wait(api)
    assert (server["status"], server["flavor"]["id"]) == ("SHUTOFF", "rs-big")
    assert api.get("/v2.1/servers?status=VERIFY_RESIZE").body["servers"] == []


@pytest.mark.parametrize(("body", "why"), [
    ({"resize": {"flavorRef": "no-such-flavor"}}, "no-such-flavor"),
    ({"resize": {"flavorRef": "m1.tiny"}}, "must change flavor"),
    ({"resize": {"flavorRef": "1"}}, "must change flavor"),
    ({"resize": {"flavorRef": 1}}, "must change flavor"),
    ({"resize": {"flavorRef": "rs.flat"}}, "zero disk"),
    ({"resize": {"flavorRef": "rs.narrow"}}, "Unable to resize disk down"),
    ({"resize": {}}, "flavorRef"),
    ({"resize": None}, "flavorRef"),
    ({"resize": {"flavorRef": "rs.big", "OS-DCF:diskConfig": "SOMETIMES"}}, "AUTO or MANUAL"),
    ({"resize": {"flavorRef": "rs.big", "auto": True}}, "unknown field"),
    ({"confirmResize": {"now": True}}, "null"),
    ({"revertResize": 1}, "null"),
    ({"rescue": {"adminPass": 3}}, "adminPass"),
    ({"rescue": {"rescue_image_ref": "no-such-image"}}, "no-such-image"),
    ({"rescue": {"image": "tiny"}}, "unknown field"),
    ({"rescue": "tiny"}, "null or an object"),
    ({"unrescue": {"x": 1}}, "null"),
])
def test_bad_bodies_and_refused_resizes_are_400(api: Api, disks: list[tuple[str, Any]],
                                                body: dict[str, Any], why: str) -> None:
    api.store.add_flavor(Flavor("rs-flat", "rs.flat", 512, 1, 0, 0))
    api.store.add_flavor(Flavor("rs-narrow", "rs.narrow", 512, 1, 1, 0))
    api.store.update_instance(api.add_instance("web1"), flavor=InstanceFlavor(
        id="1", name="m1.tiny", ram_mib=512, vcpus=1, root_gb=2))
    before = _server(api)
    answer = api.post(ACTION, body)
    assert answer.status == 400, answer.body
    assert why in answer.fault()[1]
    after = _server(api)
    assert (after["status"], after["OS-EXT-STS:task_state"], after["updated"]) == (
        before["status"], None, before["updated"])
    assert disks[:] == [] and api.hv.domains[before["id"]].boots == 1


@pytest.mark.parametrize(("vm_state", "body"), [
    (states.PAUSED, {"resize": {"flavorRef": "rs.big"}}),
    (states.SUSPENDED, {"resize": {"flavorRef": "rs.big"}}),
    (states.ERROR, {"resize": {"flavorRef": "rs.big"}}),
    (states.ACTIVE, {"confirmResize": None}),
    (states.STOPPED, {"revertResize": None}),
    (states.PAUSED, {"rescue": None}),
    (states.SUSPENDED, {"rescue": None}),
    (states.ACTIVE, {"unrescue": None}),
    (states.STOPPED, {"trigger_crash_dump": None}),
    (states.SUSPENDED, {"trigger_crash_dump": None}),
    (states.PAUSED, {"trigger_crash_dump": None}),  # Nova's state, but the guest must run
])
def test_actions_in_the_wrong_state_are_409_and_change_nothing(
        api: Api, disks: list[tuple[str, Any]], vm_state: str, body: dict[str, Any]) -> None:
    inst = api.add_instance("web1", vm_state)
    if vm_state == states.ERROR:  # a failed spawn's record: no domain
        api.hv.undefine(inst.id)
        api.store.update_instance(inst, fault="an earlier failure")
    before = _server(api)
    answer = api.post(ACTION, body, headers=V217)
    assert answer.status == 409, answer.body
    assert answer.fault()[0] == "conflictingRequest"
    after = _server(api)
    assert (after["status"], after["OS-EXT-STS:task_state"], after["updated"]) == (
        before["status"], None, before["updated"])
    assert disks == []
    assert inst.id not in api.hv.domains or api.hv.domains[inst.id].nmis == 0


def test_a_resized_server_only_confirms_reverts_or_goes(api: Api,
                                                       disks: list[tuple[str, Any]]) -> None:
    _with_a_root_file(api, states.STOPPED)
    api.post(ACTION, {"resize": {"flavorRef": "rs.big"}})
    _wait(api)
    for body in ({"os-start": None}, {"resize": {"flavorRef": "m1.small"}},
                 {"rescue": None}, {"rebuild": {"imageRef": "tiny"}},
                 {"createImage": {"name": "snap"}}, {"unrescue": None},
                 {"trigger_crash_dump": None}):  # allowed by state, but it is not running
        answer = api.post(ACTION, body, headers=V217)
        assert answer.status == 409, (body, answer.body)
        assert _server(api)["status"] == "VERIFY_RESIZE"
    assert api.call("DELETE", "/v2.1/servers/web1").status == 204


def test_trigger_crash_dump_needs_2_17_and_a_running_guest(api: Api) -> None:
    inst = api.add_instance("web1")
    below = api.post(ACTION, {"trigger_crash_dump": None})
    assert below.status == 404 and "2.17" in below.fault()[1]
    assert api.hv.domains[inst.id].nmis == 0
    answer = api.post(ACTION, {"trigger_crash_dump": None}, headers=V217)
    assert (answer.status, answer.body) == (202, b"")
    assert _wait(api)["status"] == "ACTIVE"
    assert api.hv.domains[inst.id].nmis == 1
    bad = api.post(ACTION, {"trigger_crash_dump": {"now": 1}}, headers=V217)
    assert bad.status == 400


def test_statuses_of_resize_and_rescue() -> None:
    assert states.server_status(states.RESIZED, None) == "VERIFY_RESIZE"
    assert states.server_status(states.ACTIVE, states.RESIZE_PREP) == "RESIZE"
    assert states.server_status(states.STOPPED, states.RESIZE_MIGRATING) == "RESIZE"
    assert states.server_status(states.RESIZED, states.RESIZE_REVERTING) == "REVERT_RESIZE"
    assert states.server_status(states.RESIZED, states.RESIZE_CONFIRMING) == "VERIFY_RESIZE"
    assert states.server_status(states.RESCUED, None) == "RESCUE"
    assert states.server_status(states.RESCUED, states.UNRESCUING) == "RESCUE"
    assert {states.server_status(v, None) for v in (
        states.ACTIVE, states.STOPPED, states.RESIZED, states.RESCUED)} <= set(states.STATUSES)
