"""Volumes a server is created with besides its root (Nova's block device
mappings with destination_type volume and boot_index other than 0), on the
fake hypervisor with real files (qemu-img) and records: attached after the
server's own disks, in-use once defined; a refused or failed create leaves
no volume it made and no attachment; destroy deletes those asked to be
deleted on termination and keeps the others. A real guest seeing them:
tests/functional/test_boot_volume.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.volume_env import make_env, pool_files
from vmops.compute import states
from vmops.compute.boot_volume import BootVolume
from vmops.compute.manager import SpawnRequest
from vmops.compute.server_volumes import ExtraVolume
from vmops.errors import HypervisorError, VmopsError, VolumeNotFound
from vmops.store import Flavor
from vmops.volumes.manager import Volumes
from vmops.volumes.records import VolumeRecords, VolumeStatus

pytestmark = pytest.mark.integration
GIB = 1 << 30


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    """A compute on the fake hypervisor and a 1 MiB raw image "base"."""
    return make_env(tmp_path, b'VMOPS-EXTRA-IMAGE')


def _spawn(env: dict[str, Any], *extras: ExtraVolume, name: str = "web1",
           flavor: str = "m1.tiny", **changes: Any) -> Any:
    return env["compute"].create(SpawnRequest(name=name, image="base", flavor=flavor,
                                              extra_volumes=extras, **changes),
                                 background=False)


def test_existing_blank_and_image_volumes_follow_the_servers_own_disks(
        env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    data = vols.create("data", 1)
    env["store"].add_flavor(Flavor(id="eph", name="eph", ram_mib=256, vcpus=1, root_gb=1,
                                   ephemeral_gb=1))
    inst = _spawn(env, ExtraVolume(volume="data"),
                  ExtraVolume(size_gb=2, delete_on_termination=True),
                  ExtraVolume(size_gb=1, image=env["store"].image("base").id),
                  flavor="eph")
    assert inst.vm_state == states.ACTIVE
    assert [(d.role, d.target) for d in inst.disks] == [("root", "vda"), ("ephemeral", "vdb")]
    attached = vols.attached_to(inst.id)
    assert [a.device for a in attached] == ["vdc", "vdd", "vde"]
    assert attached[0].volume_id == data.id
    blank, from_image = (vols.volume(a.volume_id) for a in attached[1:])
    assert (blank.size_gb, blank.bootable, blank.image_id) == (2, False, "")
    assert (from_image.size_gb, from_image.bootable) == (1, True)
    assert Path(from_image.path).read_bytes().startswith(b"QFI")  # qcow2, a full copy
    assert all(vols.volume(a.volume_id).status == VolumeStatus.IN_USE for a in attached)
    # In the domain, after the server's own disks, each with its recorded format.
    spec = env["hv"].domains[inst.id].spec
    assert [(d.target, d.format) for d in spec.disks] == [
        ("vda", "qcow2"), ("vdb", "qcow2"), ("vdc", "qcow2"), ("vdd", "qcow2"),
        ("vde", "qcow2")]
    record = env["store"].instance(inst.id)
    assert record.volumes_made == (blank.id, from_image.id)
    assert record.volumes_deleted_on_termination == (blank.id,)
    # Destroy: the one to delete on termination goes, the others are kept.
    env["compute"].destroy("web1")
    with pytest.raises(VolumeNotFound):
        vols.volume(blank.id)
    assert not Path(blank.path).exists()
    for kept in (data, from_image):
        volume = vols.volume(kept.id)
        assert volume.status == VolumeStatus.AVAILABLE and Path(volume.path).is_file()


def test_an_existing_volume_deleted_on_termination(env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    data = vols.create("data", 1)
    inst = _spawn(env, ExtraVolume(volume=data.id, delete_on_termination=True))
    assert env["store"].instance(inst.id).volumes_deleted_on_termination == (data.id,)
    assert env["store"].instance(inst.id).volumes_made == ()
    env["compute"].destroy("web1")
    assert vols.volumes() == [] and pool_files(env) == []


def test_refusals_make_nothing_and_claim_nothing(env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    free = vols.create("free", 1)
    taken = vols.create("taken", 1)
    _spawn(env, ExtraVolume(volume="taken"), name="owner")
    files = pool_files(env)
    cases: list[tuple[tuple[ExtraVolume, ...], str]] = [
        ((ExtraVolume(volume="free"), ExtraVolume(volume="taken")), "Invalid volume"),
        ((ExtraVolume(volume="free"), ExtraVolume(volume=free.id)), "more than once"),
        ((ExtraVolume(volume="nope"),), "nope"),
        ((ExtraVolume(size_gb=0),), "volume_size"),
        ((ExtraVolume(size_gb=70000),), "volume_size"),
        ((ExtraVolume(size_gb=1 << 20),), "volume_size"),
        ((ExtraVolume(size_gb=60000),), "free"),  # beyond the pool's free space
        ((ExtraVolume(size_gb=1, image="no-such-image"),), "no-such-image"),
        (tuple(ExtraVolume(size_gb=1) for _ in range(26)), "too many"),  # vdb..vdz: 25
    ]
    for extras, words in cases:
        with pytest.raises(VmopsError, match=words):
            _spawn(env, *extras, name="refused")
        assert [i.name for i in env["store"].instances()] == ["owner"], words
        assert vols.volume("free").status == VolumeStatus.AVAILABLE, words
        assert vols.attachment_of(free.id) is None, words
        assert pool_files(env) == files, words
    assert vols.attachment_of(taken.id) is not None  # the owner's, untouched


def test_a_failed_spawn_deletes_what_it_made_and_frees_the_rest(env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    data = vols.create("data", 1)
    files = pool_files(env)
    env["hv"].fail_next("define", HypervisorError(reason="injected"))
    inst = _spawn(env, ExtraVolume(volume="data"),
                  ExtraVolume(size_gb=1, delete_on_termination=False))
    assert inst.vm_state == states.ERROR
    assert [v.id for v in vols.volumes()] == [data.id]  # the blank one it made is gone
    assert vols.volume("data").status == VolumeStatus.AVAILABLE
    assert VolumeRecords(env["store"]).attachments() == []
    assert pool_files(env) == files


def test_with_a_boot_volume(env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    inst = env["compute"].create(SpawnRequest(
        name="bfv", image="base", flavor="m1.tiny", boot_volume=BootVolume(size_gb=1),
        extra_volumes=(ExtraVolume(size_gb=1, delete_on_termination=True),)),
        background=False)
    assert inst.vm_state == states.ACTIVE
    assert [a.device for a in vols.attached_to(inst.id)] == ["vda", "vdb"]
    root = vols.volume(inst.boot_volume_id)
    env["compute"].destroy("bfv")
    assert [v.id for v in vols.volumes()] == [root.id]  # kept: not delete on termination
