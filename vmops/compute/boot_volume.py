"""Boot from volume: an instance whose root disk (vda) is a volume.

The volume is an existing available one, or one made from an image when
the instance spawns (Nova's block device mapping with ``boot_index`` 0 and
``destination_type`` volume). It is attached to the instance as ``vda``
(an attachment row like any other, so the volume view, the server's
``os-extended-volumes:volumes_attached`` and every domain definition
vmops writes have it), and its recorded format goes to QEMU.

Ordering, so a failure or a crash never leaves half of it:

- an existing volume is claimed (``attaching``) before the instance's
  record is written, and released again if that is refused;
- a new one is recorded on the instance (``boot_volume_made``) before its
  file is made, so a rolled-back spawn, even after a restart, deletes it;
- the volume is ``in-use`` once the domain is defined with it;
- a rolled-back spawn deletes a volume it made and leaves an existing one
  ``available``; destroy leaves the volume ``available`` unless the
  instance was asked to delete it on termination.
"""

from __future__ import annotations

import logging
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

from vmops.compute import server_volumes
from vmops.errors import Invalid, VolumeNotFound
from vmops.store import DiskRecord, Image, Instance, Store
from vmops.volumes import pool
from vmops.volumes.records import Attachment, Volume, VolumeRecords, VolumeStatus

log = logging.getLogger(__name__)

ROOT_DEVICE = "vda"
GIB = pool.GIB
MAX_SIZE_GB = 65536  # the volume service's limit (vmops.volumes.manager)
FORMAT = "qcow2"  # a volume made at spawn, as the volume service's default


@dataclass(frozen=True)
class BootVolume:
    """The root disk as a volume: ``volume`` (an id or name) to boot an
    existing one, else a new volume of ``size_gb`` made from the spawn's
    image. ``delete_on_termination``: destroy deletes the volume too."""

    volume: str = ""
    size_gb: int = 0
    delete_on_termination: bool = False


def check(store: Store, volumes_dir: Path, boot: BootVolume, image: Image | None,
          project_id: str) -> Volume | None:
    """Refuse before anything is made; the existing volume, if one is named."""
    records = VolumeRecords(store)
    if boot.volume:
        volume = records.get(boot.volume, project_id or None)
        _check_bootable(records, volume, boot.delete_on_termination)
        return volume
    if image is None:
        raise Invalid(reason="a new boot volume is made from an image: name one")
    size = boot.size_gb
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise Invalid(reason="Images with destination_type 'volume' need to have a non-zero "
                      "size specified")
    if size > MAX_SIZE_GB:
        raise Invalid(reason=f"volume size {size} GiB is over the limit of {MAX_SIZE_GB}")
    if image.virtual_size > size * GIB:
        raise Invalid(reason=f"a boot volume of {size} GiB cannot hold image {image.name!r}, "
                      f"whose disk is {image.virtual_size} bytes")
    min_disk = int(image.extra.get("min_disk", 0) or 0)
    if min_disk > size:
        raise Invalid(reason=f"Volume is smaller than the minimum size specified in image "
                      f"metadata. Volume size is {size * GIB} bytes, minimum size is "
                      f"{min_disk * GIB} bytes.")
    pool.check_fits(volumes_dir, size * GIB, f"root of {image.name}")
    return None


def _check_bootable(records: VolumeRecords, volume: Volume,
                    delete_on_termination: bool) -> None:
    """Nova's InvalidVolume (400): a boot volume must be available. A remote
    one (an NBD export, an iSCSI LUN: a network disk QEMU opens itself) is
    booted from as well, but never deleted with the server: vmops does not
    remove targets."""
    server_volumes.check_available(records, volume)
    if volume.remote and delete_on_termination:
        raise Invalid(reason=f"volume {volume.name or volume.id!r} is a remote "
                      f"{volume.protocol} volume: vmops does not delete its target "
                      "(delete_on_termination must be false)")


def claim(store: Store, volume: Volume, instance_id: str, instance_name: str) -> Volume:
    """The existing volume becomes the instance's ``vda`` (``attaching``)."""
    return VolumeRecords(store).claim(
        Attachment(id=str(uuidlib.uuid4()), volume_id=volume.id, instance_id=instance_id,
                   device=ROOT_DEVICE), instance_name)


def make(store: Store, volumes_dir: Path, inst: Instance, image: Image,
         size_gb: int) -> Instance:
    """A new volume from ``image``, claimed as the instance's ``vda``. The
    instance records it before its file exists, so a rollback finds it."""
    records = VolumeRecords(store)
    volume_id = str(uuidlib.uuid4())
    path = pool.volume_path(volumes_dir, volume_id, FORMAT)
    volume = records.add(Volume(
        id=volume_id, name="", size_gb=size_gb, status=VolumeStatus.CREATING, format=FORMAT,
        path=str(path), description=f"root disk of instance {inst.id}", image_id=image.id,
        bootable=True, project_id=inst.project_id, user_id=inst.user_id))
    inst = store.update_instance(inst, boot_volume_id=volume.id, boot_volume_made=True)
    pool.create_from_image(Path(image.path), image.format, path, FORMAT, size_gb * GIB)
    records.update(volume.id, status=VolumeStatus.AVAILABLE, fault="")
    claim(store, volume, inst.id, inst.name)
    log.info("%s: boot volume %s made from image %s (%d GiB)", inst.name, volume.id,
             image.name, size_gb)
    return inst


def attached(store: Store, inst: Instance) -> None:
    """The domain is defined with the volume: ``in-use``."""
    if inst.boot_volume_id:
        VolumeRecords(store).attached(inst.boot_volume_id)


def release(store: Store, inst: Instance, rollback: bool) -> None:
    """The instance's domain is gone: its volumes are available again. Its
    boot volume (and each other volume it was created with) is deleted if a
    rolled-back spawn made it, or if the instance was asked to delete it on
    termination."""
    records = VolumeRecords(store)
    records.release_instance(inst.id)
    server_volumes.delete_made(store, inst, rollback)  # the others it was created with
    if not inst.boot_volume_id:
        return
    delete = inst.boot_volume_made if rollback else inst.delete_on_termination
    if not delete:
        return
    try:
        volume = records.get(inst.boot_volume_id)
    except VolumeNotFound:  # gone already: nothing to delete
        return
    if records.attachment_of(volume.id) is not None or volume.remote:
        return  # attached elsewhere since: never delete a disk in use, nor a target
    pool.remove(Path(volume.path))
    records.delete(volume.id)
    log.info("%s: boot volume %s deleted with it", inst.name, volume.id)



def check_rebuild(store: Store, inst: Instance, image: Image) -> None:
    """Nova before 2.93 rebuilds a volume-backed server only with the image
    its root volume was made from, and leaves the volume as it is."""
    volume = VolumeRecords(store).get(inst.boot_volume_id)
    if volume.image_id != image.id:
        raise Invalid(reason="Unable to rebuild with a different image for a volume-backed "
                      f"server. Its root volume {volume.id} was made from "
                      f"{volume.image_id or 'no image'}.")


def check_snapshot(store: Store, inst: Instance) -> None:
    """A snapshot copies the root volume's file; a remote root volume has
    none here (its bytes are the target's): refused before an image is made."""
    volume = VolumeRecords(store).get(inst.boot_volume_id)
    if volume.remote:
        raise Invalid(reason=f"instance {inst.name!r} boots from remote {volume.protocol} "
                      f"volume {volume.path}: vmops snapshots local root disks and volumes "
                      "only")


def root_disk(store: Store, inst: Instance) -> DiskRecord:
    """The boot volume as a root disk (what a snapshot copies)."""
    check_snapshot(store, inst)
    volume = VolumeRecords(store).get(inst.boot_volume_id)
    return DiskRecord("root", volume.path, volume.format, ROOT_DEVICE)
