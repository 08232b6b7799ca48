"""Volumes a server is created with besides its root disk.

Nova's block device mappings with ``destination_type`` volume and a
``boot_index`` other than 0: an existing volume (``source_type`` volume),
or a new one made for the server, blank (``source_type`` blank) or from
an image (``source_type`` image). Each is attached to the server as the
next virtio disk after the server's own disks (ephemeral, swap, a config
drive on a disk), in the order the mappings come; ``device_name`` is not
used, as for the root.

Ordering, as for a boot volume (vmops/compute/boot_volume.py), so that a
failed or interrupted spawn leaves no volume it made and no attachment:

- existing volumes are claimed (``attaching``) before the instance's
  record is written, and released again if that is refused;
- a new volume is recorded on the instance (``volumes_made``) before its
  file is made, then claimed;
- all are ``in-use`` once the domain is defined with them;
- a rolled-back spawn deletes the volumes it made and leaves the others
  ``available``; destroy deletes those asked to be deleted on termination
  and leaves the others ``available``.
"""

from __future__ import annotations

import logging
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vmops.errors import Invalid, InvalidState, VmopsError
from vmops.store import Image, Instance, Store
from vmops.volumes import pool
from vmops.volumes.records import Attachment, Volume, VolumeRecords, VolumeStatus

if TYPE_CHECKING:
    from vmops.compute.quotas import Quotas

log = logging.getLogger(__name__)

GIB = pool.GIB
MAX_SIZE_GB = 65536  # the volume service's limit (vmops.volumes.manager)
FORMAT = "qcow2"  # a volume made at spawn, as the volume service's default
TARGETS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class ExtraVolume:
    """An existing volume (``volume``: its id), or a new one of ``size_gb``
    GiB, blank or made from ``image`` (an image id)."""

    volume: str = ""
    size_gb: int = 0
    image: str = ""
    delete_on_termination: bool = False


@dataclass(frozen=True)
class Planned:
    """An extra volume with the device it gets; ``existing`` for a volume
    that is there already, ``image`` for a new one made from an image."""

    extra: ExtraVolume
    device: str
    existing: Volume | None = None
    image: Image | None = None


def plan(store: Store, volumes_dir: Path, extras: tuple[ExtraVolume, ...], project_id: str,
         first_index: int, root_volume_id: str = "") -> list[Planned]:
    """Check every extra volume before anything is made (400 naming what is
    wrong) and give each its device, from the ``first_index``-th virtio disk."""
    if not extras:
        return []
    if first_index + len(extras) > len(TARGETS):
        raise Invalid(reason=f"too many block devices: {len(extras)} volumes after "
                      f"{first_index} disks of the server's own; virtio disks go to vdz")
    records = VolumeRecords(store)
    planned: list[Planned] = []
    seen = {root_volume_id} - {""}
    new_bytes = 0
    for n, extra in enumerate(extras):
        device = "vd" + TARGETS[first_index + n]
        if extra.volume:
            volume = records.get(extra.volume, project_id or None)
            if volume.id in seen:
                raise Invalid(reason=f"volume {volume.name or volume.id!r} is in the block "
                              "device mappings more than once")
            seen.add(volume.id)
            check_available(records, volume)
            if volume.remote and extra.delete_on_termination:
                raise Invalid(reason=f"volume {volume.name or volume.id!r} is a remote "
                              f"{volume.protocol} volume: vmops does not delete its target "
                              "(delete_on_termination must be false)")
            planned.append(Planned(extra, device, existing=volume))
            continue
        image = _image(store, extra) if extra.image else None
        size = extra.size_gb
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SIZE_GB:
            raise Invalid(reason=f"a new volume's volume_size must be 1 to {MAX_SIZE_GB} GiB, "
                          f"not {size!r}")
        if image is not None and image.virtual_size > size * GIB:
            raise Invalid(reason=f"a volume of {size} GiB cannot hold image {image.name!r}, "
                          f"whose disk is {image.virtual_size} bytes")
        new_bytes += size * GIB
        planned.append(Planned(extra, device, image=image))
    if new_bytes:
        pool.check_fits(volumes_dir, new_bytes, "the server's new volumes")
    return planned


def check_quota(quotas: Quotas, project_id: str, new_root_gb: int,
                planned: list[Planned]) -> None:
    """Room in the project's volume quota (Cinder's volumes, gigabytes) for
    the volumes a server create makes: a new root volume of ``new_root_gb``
    GiB (0: none) and each new volume of ``planned``."""
    sizes = [p.extra.size_gb for p in planned if p.existing is None]
    sizes += [new_root_gb] if new_root_gb else []
    if sizes:
        quotas.check_volumes(project_id, len(sizes), sum(sizes))


def _image(store: Store, extra: ExtraVolume) -> Image:
    image = store.image(extra.image)
    if image.status != "active":
        raise InvalidState(action="create a volume from", instance=f"image {image.name}",
                           state=image.status)
    return image


def check_available(records: VolumeRecords, volume: Volume) -> None:
    """Nova's InvalidVolume (400): an attached or busy volume is refused."""
    label = volume.name or volume.id
    attached = records.attachment_of(volume.id)
    if attached is not None:
        raise Invalid(reason=f"Invalid volume: volume {label!r} is attached to instance "
                      f"{attached.instance_id} already")
    if volume.status != VolumeStatus.AVAILABLE:
        raise Invalid(reason=f"Invalid volume: volume {label!r} status must be 'available'. "
                      f"Currently in '{volume.status}'")


def claim_existing(store: Store, planned: list[Planned], instance_id: str,
                   instance_name: str) -> None:
    """The existing volumes become the instance's (``attaching``): all, or
    none if one of them was taken meanwhile."""
    records = VolumeRecords(store)
    claimed: list[str] = []
    try:
        for p in planned:
            if p.existing is not None:
                records.claim(_attachment(p, instance_id), instance_name)
                claimed.append(p.existing.id)
    except BaseException:
        for volume_id in claimed:
            records.release(volume_id)
        raise


def release_existing(store: Store, planned: list[Planned]) -> None:
    """Undo :func:`claim_existing` (the instance's record was refused)."""
    records = VolumeRecords(store)
    for p in planned:
        if p.existing is not None:
            records.release(p.existing.id)


def deleted_on_termination(planned: list[Planned]) -> tuple[str, ...]:
    """The existing volumes destroy deletes (new ones are added when made)."""
    return tuple(p.existing.id for p in planned
                 if p.existing is not None and p.extra.delete_on_termination)


def make_new(store: Store, volumes_dir: Path, inst: Instance,
             planned: list[Planned]) -> Instance:
    """Each new volume: recorded on the instance, made, then claimed."""
    records = VolumeRecords(store)
    for p in planned:
        if p.existing is not None:
            continue
        volume_id = str(uuidlib.uuid4())
        path = pool.volume_path(volumes_dir, volume_id, FORMAT)
        volume = records.add(Volume(
            id=volume_id, name="", size_gb=p.extra.size_gb, status=VolumeStatus.CREATING,
            format=FORMAT, path=str(path), description=f"{p.device} of instance {inst.id}",
            image_id=p.image.id if p.image else "", bootable=p.image is not None,
            project_id=inst.project_id, user_id=inst.user_id))
        inst = store.update_instance(
            inst, volumes_made=(*inst.volumes_made, volume_id),
            volumes_deleted_on_termination=inst.volumes_deleted_on_termination
            + ((volume_id,) if p.extra.delete_on_termination else ()))
        if p.image is not None:
            pool.create_from_image(Path(p.image.path), p.image.format, path, FORMAT,
                                   p.extra.size_gb * GIB)
        else:
            pool.create_blank(path, FORMAT, p.extra.size_gb * GIB)
        records.update(volume.id, status=VolumeStatus.AVAILABLE, fault="")
        records.claim(_attachment(p, inst.id, volume.id), inst.name)
        log.info("%s: volume %s made for it as %s (%d GiB)", inst.name, volume.id, p.device,
                 p.extra.size_gb)
    return inst


def _attachment(p: Planned, instance_id: str, volume_id: str = "") -> Attachment:
    return Attachment(id=str(uuidlib.uuid4()),
                      volume_id=volume_id or (p.existing.id if p.existing else ""),
                      instance_id=instance_id, device=p.device)


def attached(store: Store, inst: Instance) -> None:
    """The domain is defined with its volumes: each ``attaching`` one is
    ``in-use``."""
    records = VolumeRecords(store)
    for attachment in records.attachments(inst.id):
        if records.get(attachment.volume_id).status == VolumeStatus.ATTACHING:
            records.attached(attachment.volume_id)


def delete_made(store: Store, inst: Instance, rollback: bool) -> None:
    """After the instance's volumes were released: delete the ones a
    rolled-back spawn made, or, on destroy, those to delete on termination.
    A volume attached elsewhere since is never deleted."""
    records = VolumeRecords(store)
    for volume_id in (inst.volumes_made if rollback else inst.volumes_deleted_on_termination):
        try:
            volume = records.get(volume_id)
        except VmopsError:  # gone already
            continue
        if records.attachment_of(volume.id) is not None or volume.remote:
            continue  # in use elsewhere, or not vmops' to delete (a remote target)
        pool.remove(Path(volume.path))
        records.delete(volume.id)
        log.info("%s: volume %s deleted with it", inst.name, volume.id)
