"""Rescue: boot an instance from a rescue disk, its own root disk attached
second and left as it is, so a guest that no longer boots can be mended
(Nova's rescue and unrescue, as its libvirt driver does them without
stable device rescue).

The rescue disk is made from an image (the instance's own by default, as
Nova does) like a root disk at spawn, in ``<instance>/rescue/``; in the
domain it is ``vda`` and the instance's root disk ``vdb``. The ephemeral
disk and volumes are not attached. An instance with a config drive gets a
rescue drive, written afresh from its record with the rescue admin
password on it (only with ``config_drive_inject_password``, as at spawn);
it is where the rescue guest looks for its user data, as any boot does.

The record says which disks the domain has: while ``rescue_image_id`` is
set, the domain (``Compute.domain_spec``) boots the rescue disk. Rescue
sets it first, then makes the rescue disks, defines the domain and boots
it; unrescue pulls the plug on the rescue guest (as Nova does), clears
it, defines the domain with the instance's own disks, removes the rescue
disks and boots. After a service restart, an interrupted rescue is rolled
back (the guest started again if it ran before) and an interrupted
unrescue finished; each step can be done again.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from vmops.compute import crash_points, states
from vmops.compute.spawn import disk_target
from vmops.disks import instance_disks
from vmops.store import DiskRecord, Image, Instance

if TYPE_CHECKING:
    from vmops.compute.manager import Compute

log = logging.getLogger(__name__)

RESCUE_DIR = "rescue"  # a directory inside the instance's own
RESCUE_DISK = "rescue.qcow2"
RESCUE_DRIVE = "config.iso"  # spawn's name, in the rescue directory


def rescue_dir(compute: Compute, inst: Instance) -> Path:
    return compute.instance_dir(inst) / RESCUE_DIR


def disks(compute: Compute, inst: Instance) -> tuple[DiskRecord, ...]:
    """The disks of a rescued instance's domain: the rescue disk (vda), the
    root disk (vdb), and the rescue config drive if the instance has one."""
    folder = rescue_dir(compute, inst)
    found = [DiskRecord("rescue", str(folder / RESCUE_DISK), instance_disks.DISK_FORMAT, "vda")]
    found += [DiskRecord("root", d.path, d.format, "vdb") for d in inst.disks if d.role == "root"]
    drive = next((d for d in inst.disks if d.role == "config"), None)
    if drive is not None:
        target = drive.target if drive.device == "cdrom" else disk_target(len(found))
        found.append(DiskRecord("config", str(folder / RESCUE_DRIVE), "raw", target,
                                device=drive.device))
    return tuple(found)


def rescue(compute: Compute, inst: Instance, image: Image, admin_password: str | None) -> None:
    """The work of a rescue (the instance is held, in ``rescuing``). Rolled
    back on failure."""
    inst = compute.store.update_instance(inst, rescue_image_id=image.id)
    try:
        crash_points.reached("rescue", "after-record")
        compute.power_down(inst)
        _make_disks(compute, inst, image, admin_password)
        crash_points.reached("rescue", "after-disks")
        compute.hv.define(compute.domain_spec(inst))
        crash_points.reached("rescue", "after-define")
        compute.boot(inst)
    except Exception:  # a process that dies here is rolled back at its next start
        log.warning("%s: rescue failed; rolling it back", inst.name)
        roll_back(compute, compute.store.instance(inst.id))
        raise


def _make_disks(compute: Compute, inst: Instance, image: Image,
                admin_password: str | None) -> None:
    from vmops.compute import spawn as spawn_steps

    folder = rescue_dir(compute, inst)
    shutil.rmtree(folder, ignore_errors=True)  # what an interrupted rescue left
    folder.mkdir(mode=0o700)
    instance_disks.create_root_disk(
        base=instance_disks.BaseImage(path=Path(image.path), format=image.format,
                                      virtual_size=image.virtual_size),
        dest=folder / RESCUE_DISK, size_bytes=None, use_cow=compute.settings.use_cow_images,
        flavor_name=inst.flavor.name, image_name=image.name)
    if inst.config_drive:
        spawn_steps.write_config_drive(compute.settings, inst, compute.drive_nics(inst),
                                       admin_password, folder)


def roll_back(compute: Compute, inst: Instance) -> None:
    """Undo a rescue that did not finish: the instance's own domain again,
    running if it ran before (its record's vm_state is still the old one).
    A guest still running its own disks (the rescue had not yet shut it
    down: its directory is made after) is left running."""
    _own_disks_again(compute, inst, pull_plug=rescue_dir(compute, inst).exists())
    if inst.vm_state == states.ACTIVE and not compute.guest_runs(inst):
        compute.boot(inst)


def unrescue(compute: Compute, inst: Instance) -> None:
    """The work of unrescue: boot the instance from its own disks."""
    _own_disks_again(compute, inst, pull_plug=True, vm_state=states.ACTIVE)
    crash_points.reached("unrescue", "after-define")
    compute.boot(inst)


def _own_disks_again(compute: Compute, inst: Instance, pull_plug: bool,
                     vm_state: str | None = None) -> None:
    """Pull the plug on the rescue guest, define the domain with the
    instance's own disks and remove the rescue disks. ``vm_state``: the
    record's, once it is no longer rescued."""
    if pull_plug and compute.hv.exists(inst.id):
        compute.hv.power_off(inst.id)
    # The domain first: if that fails, the record still says what it has.
    compute.hv.define(compute.domain_spec(dataclasses.replace(inst, rescue_image_id="")))
    changes = {"vm_state": vm_state} if vm_state else {}
    inst = compute.end_record(inst, rescue_image_id="", **changes)  # on a full disk too
    shutil.rmtree(rescue_dir(compute, inst), ignore_errors=True)


def recover(compute: Compute, inst: Instance) -> None:
    """After a service restart: roll back an interrupted rescue, finish an
    interrupted unrescue."""
    if inst.task_state == states.UNRESCUING:
        log.warning("%s: unrescue was interrupted; finishing it", inst.name)
        unrescue(compute, inst)
        return
    log.warning("%s: rescue was interrupted; rolling it back", inst.name)
    roll_back(compute, inst)
