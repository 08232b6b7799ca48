"""Boot from volume on the fake hypervisor, with real files (qemu-img) and
records: the root volume is vda (first in the domain, its recorded format),
claimed and released as spawn, rollback and destroy require, and the verbs
Nova refuses or treats differently for a volume-backed server. A real guest
booting from a volume: tests/functional/test_boot_volume.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.volume_env import make_env, pool_files
from vmops.compute import states
from vmops.compute.boot_volume import BootVolume
from vmops.compute.catalog import Catalog
from vmops.compute.manager import SpawnRequest
from vmops.disks.cache import ImageCache
from vmops.errors import HypervisorError, Invalid, VolumeNotFound
from vmops.store import Flavor
from vmops.volumes.manager import Volumes
from vmops.volumes.records import Volume, VolumeRecords, VolumeStatus

pytestmark = pytest.mark.integration
GIB = 1 << 30


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    """A compute on the fake hypervisor and a 1 MiB raw image "base"."""
    return make_env(tmp_path, b'VMOPS-BOOT-IMAGE')


def _spawn(env: dict[str, Any], boot: BootVolume, name: str = "bfv",
           image: str = "base", **extra: Any) -> Any:
    return env["compute"].create(SpawnRequest(name=name, image=image, flavor="m1.tiny",
                                              boot_volume=boot, **extra), background=False)


def test_an_existing_volume_is_the_root_disk_and_outlives_the_server(
        env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    volume = vols.create("boot", 1, image_ref="base", fmt="raw")
    env["store"].add_flavor(Flavor(id="eph", name="eph", ram_mib=256, vcpus=1, root_gb=1,
                                   ephemeral_gb=1, swap_mb=16))
    inst = env["compute"].create(SpawnRequest(
        name="bfv", image="", flavor="eph", boot_volume=BootVolume(volume="boot"),
        config_drive=True), background=False)
    assert inst.vm_state == states.ACTIVE and inst.boot_volume_id == volume.id
    assert (inst.image_id, inst.image_name) == ("", "")  # Nova: no image of its own
    # No local root disk; the ephemeral and swap disks follow the root volume.
    assert [(d.role, d.target) for d in inst.disks] == \
        [("ephemeral", "vdb"), ("swap", "vdc"), ("config", "hda")]
    disks = env["hv"].domains[inst.id].spec.disks
    assert (str(disks[0].path), disks[0].format, disks[0].target) == \
        (volume.path, "raw", "vda")  # first, with the format recorded (never probed)
    assert vols.volume("boot").status == VolumeStatus.IN_USE
    assert [(a.volume_id, a.device) for a in vols.attached_to(inst.id)] == \
        [(volume.id, "vda")]
    with pytest.raises(Invalid, match="Cannot detach a root device volume"):
        vols.detach("boot", inst.id)
    with pytest.raises(Invalid, match="Invalid volume"):  # one server at a time
        _spawn(env, BootVolume(volume="boot"), name="second", image="")
    env["compute"].destroy(inst.id)
    kept = vols.volume("boot")
    assert kept.status == VolumeStatus.AVAILABLE and Path(kept.path).is_file()
    assert vols.attachment_of(volume.id) is None


def test_a_volume_made_from_the_image_is_deleted_on_termination_if_asked(
        env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    inst = _spawn(env, BootVolume(size_gb=2, delete_on_termination=True))
    volume = vols.volume(inst.boot_volume_id)
    assert (volume.status, volume.size_gb, volume.bootable, volume.format) == \
        (VolumeStatus.IN_USE, 2, True, "qcow2")
    assert volume.image_id == env["store"].image("base").id
    assert Path(volume.path).read_bytes()[:4] == b"QFI\xfb"  # a qcow2 file of its own
    assert (volume.name, volume.description) == ("", f"root disk of instance {inst.id}")
    assert inst.image_id == "" and inst.delete_on_termination
    env["compute"].destroy(inst.id)
    with pytest.raises(VolumeNotFound):
        vols.volume(volume.id)
    assert pool_files(env) == []


def test_a_volume_made_from_the_image_is_kept_by_default(env: dict[str, Any]) -> None:
    inst = _spawn(env, BootVolume(size_gb=1))
    env["compute"].destroy(inst.id)
    kept = env["volumes"].volume(inst.boot_volume_id)
    assert kept.status == VolumeStatus.AVAILABLE and Path(kept.path).is_file()


@pytest.mark.parametrize("boot", [BootVolume(size_gb=0), BootVolume(size_gb=-1),
                                  BootVolume(size_gb=70000), BootVolume(volume="nope")])
def test_refused_boot_volumes_leave_nothing(env: dict[str, Any], boot: BootVolume) -> None:
    with pytest.raises((Invalid, VolumeNotFound)):
        _spawn(env, boot, image="" if boot.volume else "base")
    assert env["store"].instances() == [] and env["volumes"].volumes() == []
    assert pool_files(env) == []


def test_a_remote_volume_is_booted_from_and_never_deleted_or_copied(
        env: dict[str, Any]) -> None:
    """An iSCSI volume as the root disk: a network disk, vda, first in the
    domain. Delete on termination is refused (vmops does not remove
    targets), so is a snapshot (no file here to copy), each leaving
    nothing; destroy leaves the volume available. A real guest booting from
    one: tests/functional/test_boot_volume.py."""
    records = VolumeRecords(env["store"])
    url = "iscsi://127.0.0.1:3260/iqn.2026-01.test:t/0"
    records.add(Volume(id="r1", name="lun", size_gb=1, status=VolumeStatus.AVAILABLE,
                       format="raw", path=url, protocol="iscsi", remote_host="127.0.0.1",
                       remote_port=3260, remote_export="iqn.2026-01.test:t"))
    with pytest.raises(Invalid, match="vmops does not delete its target"):
        _spawn(env, BootVolume(volume="lun", delete_on_termination=True), image="")
    assert env["store"].instances() == [] and records.attachment_of("r1") is None
    assert records.get("r1").status == VolumeStatus.AVAILABLE

    inst = _spawn(env, BootVolume(volume="lun"), image="")
    assert inst.vm_state == states.ACTIVE and inst.boot_volume_id == "r1"
    root = env["hv"].domains[inst.id].spec.disks[0]
    assert root.target == "vda" and root.network is not None
    assert (root.network.protocol, root.network.url) == ("iscsi", url)
    assert env["hv"].disk_targets(inst.id)["vda"] == url
    assert records.get("r1").status == VolumeStatus.IN_USE

    cache = ImageCache(env["settings"].images_dir)
    images = {i.id for i in env["store"].images()}
    with pytest.raises(Invalid, match="boots from remote iscsi volume .*local root disks"):
        env["compute"].snapshot(inst.name, "snap", cache)
    assert {i.id for i in env["store"].images()} == images
    with pytest.raises(Invalid, match="Unable to rebuild with a different image"):
        env["compute"].rebuild(inst.name, "base")

    env["compute"].destroy(inst.name)
    kept = records.get("r1")
    assert (kept.status, records.attachment_of("r1")) == (VolumeStatus.AVAILABLE, None)


def test_a_volume_smaller_than_the_image_or_its_min_disk_is_refused(
        env: dict[str, Any]) -> None:
    store = env["store"]
    image = store.image("base")
    store.update_image(image, virtual_size=2 * GIB)
    with pytest.raises(Invalid, match="cannot hold image"):
        _spawn(env, BootVolume(size_gb=1))
    store.update_image(store.image("base"), virtual_size=image.virtual_size,
                       extra={"min_disk": "3"})
    with pytest.raises(Invalid, match="Volume is smaller than the minimum size"):
        _spawn(env, BootVolume(size_gb=2))
    assert store.instances() == [] and env["volumes"].volumes() == []


def test_a_failed_spawn_deletes_the_volume_it_made_and_frees_an_existing_one(
        env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    vols: Volumes = env["volumes"]
    existing = vols.create("boot", 1, image_ref="base")

    def fail(spec: Any) -> None:
        raise HypervisorError(reason="define refused")

    monkeypatch.setattr(env["hv"], "define", fail)
    made = _spawn(env, BootVolume(size_gb=1), name="made")
    assert made.vm_state == states.ERROR and "define refused" in made.fault
    taken = _spawn(env, BootVolume(volume="boot"), name="taken", image="")
    assert taken.vm_state == states.ERROR
    assert [v.id for v in vols.volumes()] == [existing.id]  # the made one is gone
    assert vols.volume("boot").status == VolumeStatus.AVAILABLE
    assert vols.attachment_of(existing.id) is None
    assert pool_files(env) == [Path(existing.path).name]


def test_a_spawn_interrupted_by_a_restart_is_rolled_back_with_its_volume(
        env: dict[str, Any]) -> None:
    inst = _spawn(env, BootVolume(size_gb=1))
    volume_id = inst.boot_volume_id
    # As a crash during the spawn leaves it: the record says spawning.
    env["store"].update_instance(inst, task_state=states.SPAWNING, boot_volume_made=True)
    env["compute"].recover()
    with pytest.raises(VolumeNotFound):
        env["volumes"].volume(volume_id)
    assert pool_files(env) == []


def test_rebuild_keeps_the_root_volume_and_other_verbs_are_refused(
        env: dict[str, Any], tmp_path: Path) -> None:
    vols: Volumes = env["volumes"]
    inst = _spawn(env, BootVolume(size_gb=1))
    root = Path(vols.volume(inst.boot_volume_id).path)
    root_bytes = root.read_bytes()
    other = tmp_path / "other.raw"
    other.write_bytes(bytes(1 << 20))
    Catalog(env["store"], ImageCache(env["settings"].images_dir)).import_image(
        "other", str(other), disk_format="raw", background=False)
    with pytest.raises(Invalid, match="Unable to rebuild with a different image"):
        env["compute"].rebuild(inst.id, "other")
    rebuilt = env["compute"].rebuild(inst.id, "base")  # its own image: allowed
    assert rebuilt.vm_state == states.ACTIVE and rebuilt.image_id == ""
    assert root.read_bytes() == root_bytes  # the root volume is left as it was
    assert env["hv"].domains[inst.id].spec.disks[0].path == root
    with pytest.raises(Invalid, match="Cannot rescue a volume-backed instance"):
        env["compute"].rescue(inst.id)
    assert env["store"].instance(inst.id).vm_state == states.ACTIVE


def test_a_resize_changes_memory_and_vcpus_and_leaves_the_root_volume(
        env: dict[str, Any]) -> None:
    """Nova's: a volume-backed server resizes; the flavor's root disk size
    does not apply (here a 20 GiB root flavor, a 1 GiB volume, and a flavor
    of disk 0), and the root volume is neither grown nor copied."""
    vols: Volumes = env["volumes"]
    env["store"].add_flavor(Flavor(id="big", name="big", ram_mib=1024, vcpus=2, root_gb=0,
                                   ephemeral_gb=1))
    inst = _spawn(env, BootVolume(size_gb=1))
    volume = vols.volume(inst.boot_volume_id)
    before = Path(volume.path).read_bytes()
    resized = env["compute"].resize(inst.id, "big")
    assert resized.vm_state == states.RESIZED and resized.flavor_id == "big"
    spec = env["hv"].domains[inst.id].spec
    assert (spec.memory_mib, spec.vcpus) == (1024, 2)
    assert [(d.target, str(d.path)) for d in spec.disks][0] == ("vda", volume.path)
    assert [(d.role, d.target) for d in resized.disks] == [("ephemeral", "vdb")]  # a new one
    assert Path(volume.path).read_bytes() == before  # neither grown nor copied
    assert vols.volume(volume.id).status == VolumeStatus.IN_USE
    reverted = env["compute"].revert_resize(inst.id)
    assert reverted.vm_state == states.ACTIVE and reverted.flavor_id == inst.flavor_id
    assert env["hv"].domains[inst.id].spec.memory_mib == inst.flavor.ram_mib
    assert reverted.disks == () and vols.volume(volume.id).status == VolumeStatus.IN_USE
    env["compute"].resize(inst.id, "m1.small")  # a 20 GiB root: not applied to the volume
    confirmed = env["compute"].confirm_resize(inst.id)
    assert confirmed.vm_state == states.ACTIVE and confirmed.flavor_id != inst.flavor_id
    assert vols.volume(volume.id).size_gb == 1 and Path(volume.path).read_bytes() == before


def test_a_snapshot_copies_the_root_volume_into_an_image(env: dict[str, Any]) -> None:
    inst = _spawn(env, BootVolume(size_gb=1))
    image = env["compute"].snapshot(inst.id, "bfv-snap",
                                    ImageCache(env["settings"].images_dir))
    image = env["store"].image(image.id)
    assert image.status == "active" and image.instance_uuid == inst.id
    assert image.virtual_size == GIB  # the volume's size, not the 1 MiB image's
    volume = env["volumes"].volume(inst.boot_volume_id)
    assert volume.status == VolumeStatus.IN_USE  # left attached, as it was
    assert env["hv"].info(inst.id).state.value == "running"  # unpaused after the copy
