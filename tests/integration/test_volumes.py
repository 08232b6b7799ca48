"""Volumes on the fake hypervisor, with real files (qemu-img) and records:
state rules, bad input, rollback, and what destroy, rebuild and a service
restart do to attached volumes. What a real guest sees is proven by
tests/functional/test_volumes.py."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.volume_env import make_env, pool_files
from vmops.compute.catalog import Catalog
from vmops.compute.manager import Compute, SpawnRequest
from vmops.disks.cache import ImageCache
from vmops.errors import (
    Conflict,
    DetachTimeout,
    HypervisorError,
    InUse,
    Invalid,
    InvalidName,
    InvalidState,
    VolumeNotFound,
)
from vmops.hypervisor.fake import FakeHypervisor
from vmops.volumes.manager import Volumes
from vmops.volumes.records import Attachment, VolumeStatus

pytestmark = pytest.mark.integration
GIB = 1 << 30


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    """A compute on the fake hypervisor and a 1 MiB raw image "base"."""
    return make_env(tmp_path, b'VMOPS-VOLUME-IMAGE')


def _spawn(env: dict[str, Any], name: str = "web1") -> Any:
    return env["compute"].create(SpawnRequest(name=name, image="base", flavor="m1.tiny"),
                                 background=False)


def _info(path: str, fmt: str) -> dict[str, Any]:
    out = subprocess.run(["qemu-img", "info", "-f", fmt, "--output=json", path],
                         check=True, capture_output=True, text=True).stdout
    info: dict[str, Any] = json.loads(out)
    return info


# -- records, files, bad input ---------------------------------------------------
def test_create_blank_and_from_image(env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    blank = vols.create("data", 1)
    assert blank.status == VolumeStatus.AVAILABLE and blank.format == "qcow2"
    info = _info(blank.path, "qcow2")
    assert info["virtual-size"] == GIB and "backing-filename" not in info
    raw = vols.create("boot", 2, image_ref="base", fmt="raw")
    assert raw.bootable and raw.image_id == env["store"].image("base").id
    assert _info(raw.path, "raw")["virtual-size"] == 2 * GIB
    assert Path(raw.path).read_bytes()[:18] == b"VMOPS-VOLUME-IMAGE"  # a full copy
    assert [v.name for v in vols.volumes()] == ["data", "boot"]
    assert vols.volume("boot").id == raw.id and vols.volume(raw.id).name == "boot"


@pytest.mark.parametrize("size", [0, -1, True, 1.5, "1", 10**9])
def test_bad_sizes_are_refused_leaving_nothing(env: dict[str, Any], size: Any) -> None:
    with pytest.raises(Invalid):
        env["volumes"].create("bad", size)
    assert env["volumes"].volumes() == [] and pool_files(env) == []


def test_beyond_free_space_and_bad_input_are_refused(env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    with pytest.raises(Invalid, match="free in"):
        vols.create("huge", 60000)  # 60000 GiB: more than any test host has free
    with pytest.raises(Invalid, match="format"):
        vols.create("odd", 1, fmt="vmdk")
    with pytest.raises(InvalidName):
        vols.create("bad\x1b[2Jname", 1)
    big = env["tmp"] / "big.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(big), "3G"], check=True)
    Catalog(env["store"], ImageCache(env["settings"].images_dir)).import_image(
        "big", str(big), background=False)
    with pytest.raises(Invalid, match="cannot hold image"):
        vols.create("small", 2, image_ref="big")
    assert vols.volumes() == [] and pool_files(env) == []


def test_a_failed_copy_ends_in_error_without_a_file(env: dict[str, Any]) -> None:
    image = env["store"].image("base")
    Path(image.path).unlink()  # the cached image is gone: qemu-img fails
    with pytest.raises(HypervisorError):
        env["volumes"].create("broken", 1, image_ref="base")
    (volume,) = env["volumes"].volumes()
    assert volume.status == VolumeStatus.ERROR and "create failed" in volume.fault
    assert pool_files(env) == []
    env["volumes"].delete(volume.id)  # an error volume can be deleted
    assert env["volumes"].volumes() == []


def test_delete_and_extend(env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    volume = vols.create("data", 1)
    grown = vols.extend("data", 3)
    assert grown.size_gb == 3 and grown.status == VolumeStatus.AVAILABLE
    assert _info(volume.path, "qcow2")["virtual-size"] == 3 * GIB
    for smaller in (3, 2):
        with pytest.raises(Invalid, match="larger"):
            vols.extend("data", smaller)
    # What the extend would add is named as that, not as the volume's size.
    with pytest.raises(Invalid, match="extending volume 'data' to 60000 GiB adds 59997 GiB, "
                                      "more than the .* GiB free in"):
        vols.extend("data", 60000)
    assert vols.volume("data").size_gb == 3
    vols.delete("data")
    assert not Path(volume.path).exists()
    with pytest.raises(VolumeNotFound):
        vols.volume("data")


def test_project_scoping(env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    mine = vols.create("mine", 1, project_id="p1")
    vols.create("theirs", 1, project_id="p2")
    assert [v.name for v in vols.volumes("p1")] == ["mine"]
    with pytest.raises(VolumeNotFound):
        vols.volume("theirs", "p1")
    with pytest.raises(VolumeNotFound):
        vols.delete("theirs", "p1")
    assert vols.volume(mine.id, "p1").name == "mine"


# -- attach and detach -----------------------------------------------------------

def _race_before_the_hold(monkeypatch: pytest.MonkeyPatch, compute: Compute,
                          other_calls: Callable[[], object]) -> list[bool]:
    """Make ``other_calls`` run once, just before the instance's task lock is
    taken; the list returned holds True once they ran."""
    hold = compute.tasks.hold
    raced: list[bool] = []

    def hold_after_a_race(instance_id: str, instance_name: str, task: str) -> Any:
        if not raced:
            raced.append(True)
            other_calls()
        return hold(instance_id, instance_name, task)

    monkeypatch.setattr(compute.tasks, "hold", hold_after_a_race)
    return raced

def test_extend_of_a_volume_detached_meanwhile_grows_nothing_else(
        env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The attachment an attached extend reads before it holds the instance
    may be gone once it holds it: here the volume was detached, another one
    attached at its device and the volume attached elsewhere in between. The
    extend is refused (409), and neither volume nor any disk is grown."""
    vols: Volumes = env["volumes"]
    hv: FakeHypervisor = env["hv"]
    compute: Compute = env["compute"]
    web1, web2 = _spawn(env, "web1"), _spawn(env, "web2")
    vols.create("data", 1)
    vols.create("other", 1)
    vols.attach("data", "web1")
    def other_calls() -> None:
        vols.detach("data", "web1")
        assert vols.attach("other", "web1").device == "vdb"
        vols.attach("data", "web2", device="vdc")

    raced = _race_before_the_hold(monkeypatch, compute, other_calls)
    with pytest.raises(Conflict, match="detached from instance 'web1' meanwhile"):
        vols.extend("data", 2, attached=True)
    assert raced
    assert hv.domains[web1.id].disk_sizes == {} and hv.domains[web2.id].disk_sizes == {}
    for name in ("data", "other"):
        volume = vols.volume(name)
        assert (volume.status, volume.size_gb, volume.fault) == (VolumeStatus.IN_USE, 1, "")
    assert compute.tasks.current(web1.id) is None


def test_an_extend_to_less_than_one_that_ended_meanwhile_is_refused(
        env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two extends sent at once: the size each checks is read before it holds
    the instance (attached) or marks the volume extending (available). The
    one for the smaller size, coming second, must not block-resize the
    running guest's disk down (QEMU's block resize shrinks) nor record the
    smaller size."""
    vols: Volumes = env["volumes"]
    hv: FakeHypervisor = env["hv"]
    compute: Compute = env["compute"]
    inst = _spawn(env)
    vols.create("data", 1)
    vols.attach("data", "web1")
    raced = _race_before_the_hold(  # the other request, ended first
        monkeypatch, compute, lambda: vols.extend("data", 3, attached=True))
    with pytest.raises(Invalid, match="must be larger than volume 'data''s 3 GiB"):
        vols.extend("data", 2, attached=True)
    assert raced and hv.domains[inst.id].disk_sizes == {"vdb": 3 * GIB}
    volume = vols.volume("data")
    assert (volume.status, volume.size_gb) == (VolumeStatus.IN_USE, 3)
    # An available volume: the other extend ends before this one marks it.
    vols.detach("data", "web1")
    begin = vols.records.begin
    raced.clear()

    def begin_after_a_race(*args: Any) -> Any:
        if not raced:
            raced.append(True)
            vols.extend("data", 5)
        return begin(*args)

    monkeypatch.setattr(vols.records, "begin", begin_after_a_race)
    with pytest.raises(Invalid, match="must be larger than volume 'data''s 5 GiB"):
        vols.extend("data", 4)
    volume = vols.volume("data")
    assert raced and (volume.status, volume.size_gb) == (VolumeStatus.AVAILABLE, 5)
    assert _info(volume.path, "qcow2")["virtual-size"] == 5 * GIB


def test_attach_and_detach_a_running_instance(env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    hv: FakeHypervisor = env["hv"]
    inst = _spawn(env)
    volume = vols.create("data", 1)
    attachment = vols.attach("data", "web1")
    assert attachment.device == "vdb" and attachment.instance_id == inst.id
    assert vols.volume("data").status == VolumeStatus.IN_USE
    assert hv.disk_targets(inst.id)["vdb"] == volume.path
    assert [a.volume_id for a in vols.attached_to(inst.id)] == [volume.id]
    # Every definition vmops writes has it: the spec is made from the records.
    assert [d.target for d in env["compute"].domain_spec(inst).disks] == ["vda", "vdb"]
    vols.detach("data", "web1")
    assert vols.volume("data").status == VolumeStatus.AVAILABLE
    assert "vdb" not in hv.disk_targets(inst.id) and vols.attached_to(inst.id) == []
    assert Path(volume.path).is_file()


def test_attach_to_a_stopped_instance_and_start_it(env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    inst = _spawn(env)
    env["compute"].stop("web1", hard=True)
    vols.create("data", 1)
    vols.attach("data", "web1", device="/dev/vdd")
    env["compute"].start("web1")
    assert "vdd" in env["hv"].disk_targets(inst.id)


def test_attach_refusals_leave_nothing_attached(env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    hv: FakeHypervisor = env["hv"]
    inst = _spawn(env)
    _spawn(env, "web2")
    vols.create("a", 1)
    vols.create("b", 1)
    for device, error in (("vda", Conflict), ("/dev/sda", Invalid), ("vdb1", Invalid)):
        with pytest.raises(error):
            vols.attach("a", "web1", device=device)
    vols.attach("a", "web1", device="vdc")
    with pytest.raises(Conflict, match="vdc"):
        vols.attach("b", "web1", device="vdc")  # the device is taken
    with pytest.raises(InUse):
        vols.attach("a", "web2")  # in use elsewhere
    with pytest.raises(InUse):
        vols.attach("a", "web1")  # and here already
    with pytest.raises(InUse):
        vols.delete("a")
    with pytest.raises(InvalidState):
        vols.extend("a", 2)
    hv.fail_next("attach_disk", HypervisorError(reason="injected"))
    with pytest.raises(HypervisorError):
        vols.attach("b", "web1")
    assert vols.volume("b").status == VolumeStatus.AVAILABLE
    assert vols.attachment_of(vols.volume("b").id) is None
    assert sorted(hv.disk_targets(inst.id)) == ["vda", "vdc"]
    env["compute"].suspend("web1")
    with pytest.raises(InvalidState, match="suspended"):
        vols.attach("b", "web1")
    with pytest.raises(InvalidState, match="suspended"):
        vols.detach("a", "web1")
    with pytest.raises(VolumeNotFound, match="not attached"):
        vols.detach("b", "web1")


def test_a_detach_the_guest_does_not_complete_keeps_the_volume_in_use(
        env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    hv: FakeHypervisor = env["hv"]
    inst = _spawn(env)
    vols.create("data", 1)
    vols.attach("data", "web1")
    hv.guest_releases_disks = False
    with pytest.raises(DetachTimeout):
        vols.detach("data", "web1")
    volume = vols.volume("data")
    assert volume.status == VolumeStatus.IN_USE and "did not release" in volume.fault
    assert "vdb" in hv.disk_targets(inst.id)
    assert env["compute"].tasks.current(inst.id) is None  # the instance is free again
    hv.guest_releases_disks = True
    vols.detach("data", "web1")
    assert vols.volume("data").status == VolumeStatus.AVAILABLE
    assert vols.volume("data").fault == ""


def test_destroy_releases_volumes_and_keeps_them(env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    inst = _spawn(env)
    volume = vols.create("data", 1)
    vols.attach("data", "web1")
    env["compute"].destroy("web1")
    assert vols.volume("data").status == VolumeStatus.AVAILABLE
    assert vols.attached_to(inst.id) == [] and Path(volume.path).is_file()
    _spawn(env, "web2")
    vols.attach("data", "web2")  # and it can be used again


def test_rebuild_keeps_attached_volumes(env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    inst = _spawn(env)
    vols.create("data", 1)
    vols.attach("data", "web1")
    env["compute"].rebuild("web1", "base")
    assert "vdb" in env["hv"].disk_targets(inst.id)
    assert vols.volume("data").status == VolumeStatus.IN_USE


# -- a service restart -------------------------------------------------------------
def test_reconcile_settles_what_a_restart_interrupted(env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    hv: FakeHypervisor = env["hv"]
    inst = _spawn(env)
    plugged, lost, detaching, creating = (vols.create(n, 1) for n in
                                          ("plugged", "lost", "detaching", "creating"))
    # Killed between libvirt's attach and the record update: the domain has it.
    vols.records.claim(Attachment("a1", plugged.id, inst.id, "vdb"), inst.name)
    hv.attach_disk(inst.id, _disk(plugged.path, "vdb"))
    # Killed before libvirt's attach: the domain does not.
    vols.records.claim(Attachment("a2", lost.id, inst.id, "vdc"), inst.name)
    # Killed during a detach the guest had not finished.
    vols.attach("detaching", "web1", device="vdd")
    vols.records.begin(detaching.id, "detach", frozenset({VolumeStatus.IN_USE}),
                       VolumeStatus.DETACHING)
    vols.records.update(creating.id, status=VolumeStatus.CREATING)
    vols.reconcile()
    assert vols.volume("plugged").status == VolumeStatus.IN_USE
    assert vols.volume("lost").status == VolumeStatus.AVAILABLE
    assert vols.attachment_of(lost.id) is None
    assert vols.volume("detaching").status == VolumeStatus.IN_USE
    assert "interrupted" in vols.volume("detaching").fault
    assert vols.volume("creating").status == VolumeStatus.ERROR
    assert not Path(creating.path).exists()


def _disk(path: str, target: str) -> Any:
    from vmops.volumes.records import volume_disk

    return volume_disk(Path(path), "qcow2", target)


def test_volumes_attached_for_the_server_views(env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    inst = _spawn(env)
    a, b = vols.create("a", 1), vols.create("b", 1)
    vols.attach("b", "web1", device="vdc")
    vols.attach("a", "web1", device="vdd")
    assert vols.records.volumes_attached() == {inst.id: [b.id, a.id]}


def test_reconcile_puts_back_a_disk_the_domain_lost(env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    hv: FakeHypervisor = env["hv"]
    inst = _spawn(env)
    vols.create("data", 1)
    vols.attach("data", "web1")
    hv.detach_disk(inst.id, "vdb", 1.0)  # lost behind vmops' back
    vols.reconcile()
    assert "vdb" in hv.disk_targets(inst.id)
    # A rescued instance's domain has none of its volumes: left as it is.
    env["store"].update_instance(inst.id, rescue_image_id=inst.image_id)
    hv.detach_disk(inst.id, "vdb", 1.0)
    vols.reconcile()
    assert "vdb" not in hv.disk_targets(inst.id)
    assert vols.volume("data").status == VolumeStatus.IN_USE


def test_a_raw_volume_a_guest_made_look_like_qcow2_stays_raw(env: dict[str, Any]) -> None:
    """What the guest writes never changes how the host reads the file: the
    recorded format is what QEMU and qemu-img are told, a backing file named
    in a fake qcow2 header is never opened."""
    vols: Volumes = env["volumes"]
    inst = _spawn(env)
    volume = vols.create("data", 1, fmt="raw")
    header = env["tmp"] / "header.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                    "/etc/hostname", str(header), "1G"], check=True)
    with open(volume.path, "r+b") as disk:  # as a guest writing to its disk would
        disk.write(header.read_bytes())
    vols.attach("data", "web1")
    (disk_spec,) = [d for d in env["hv"].spec_of(inst.id).disks if d.target == "vdb"]
    assert disk_spec.format == "raw"
    vols.detach("data", "web1")
    grown = vols.extend("data", 2)  # qemu-img told raw: the header is just bytes
    assert grown.size_gb == 2 and Path(volume.path).stat().st_size == 2 * GIB
    assert _info(volume.path, "raw")["format"] == "raw"


def test_extend_an_attached_volume(env: dict[str, Any]) -> None:
    """Cinder from 3.42 (here vmops' own flag): a running guest's volume grows
    through the hypervisor's block resize; a stopped one's file through
    qemu-img; without the flag, as Cinder 3.0, an attached volume is refused."""
    vols: Volumes = env["volumes"]
    hv: FakeHypervisor = env["hv"]
    inst = _spawn(env)
    volume = vols.create("data", 1)
    vols.attach("data", "web1")
    with pytest.raises(InvalidState, match="in-use"):
        vols.extend("data", 2)
    grown = vols.extend("data", 2, attached=True)
    assert (grown.status, grown.size_gb, grown.fault) == (VolumeStatus.IN_USE, 2, "")
    assert hv.domains[inst.id].disk_sizes == {"vdb": 2 * GIB}  # QEMU grew it, not qemu-img
    assert env["compute"].tasks.current(inst.id) is None
    hv.fail_next("resize_disk", HypervisorError(reason="injected"))
    with pytest.raises(HypervisorError):
        vols.extend("data", 3, attached=True)
    failed = vols.volume("data")
    assert (failed.status, failed.size_gb) == (VolumeStatus.IN_USE, 2)
    assert "extend failed" in failed.fault
    env["compute"].stop("web1", hard=True)
    vols.extend("data", 3, attached=True)  # stopped: qemu-img grows the file
    assert _info(volume.path, "qcow2")["virtual-size"] == 3 * GIB
    assert vols.volume("data").size_gb == 3
    env["compute"].start("web1")
    env["compute"].suspend("web1")
    with pytest.raises(InvalidState, match="suspended"):
        vols.extend("data", 4, attached=True)
    assert vols.volume("data").status == VolumeStatus.IN_USE
