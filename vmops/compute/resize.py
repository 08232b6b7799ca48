"""Resize: an instance moves to another flavor, then the user confirms or
reverts (Nova's resize, confirmResize and revertResize, on one host as
Nova does with allow_resize_to_same_host).

What changes: memory and vCPUs become the new flavor's; the root disk
grows to its size (never shrinks: that is refused before anything
changes, as is a smaller ephemeral disk or a flavor of the same id); the
ephemeral disk grows too, or is made blank if the instance had none (as
Nova's libvirt driver does; its file system is not grown: the guest
does that); the swap disk is made afresh at the new size (a swap area
holds nothing across boots). The config drive is kept as it is (it says
nothing of the flavor). A disk added takes the first virtio target free.
A volume-backed instance (vmops/compute/boot_volume.py) keeps its root
volume as it is, as Nova's: the flavor's root disk size does not apply,
the volume is neither grown nor copied, and a revert leaves in it what the
resized guest wrote (its local ephemeral and swap disks are reverted).

How, in the order a crash can interrupt it:

1. ``resize_prep``: the record keeps what the instance was (``pre_resize``:
   flavor, disks, vm_state); a running guest is shut down (ACPI, then
   pulled after ``shutdown_timeout``); its root, ephemeral and swap disks
   are copied whole into ``<instance>/resize-old/`` (a qcow2 overlay is copied
   as it is, still naming its base).
2. ``resize_migrating``: recorded once the copies are complete; the disks
   are grown in place.
3. ``resize_finish``: the record has the new flavor and disks; the domain is
   defined again and booted if it ran before. The instance ends
   ``resized`` (VERIFY_RESIZE).

Confirm deletes ``resize-old`` and forgets ``pre_resize``. Revert pulls the
plug on the resized guest, moves the copies back over the disks (the old
disks exactly as they were, byte for byte), restores the record and the
domain, and boots the guest if it ran before the resize.

A failure rolls back the same way. After a service restart, an instance
found in a resize task is rolled back (``resize_prep``: its disks were
never touched, only the partial copy is dropped), one in
``resize_reverting`` is reverted, one in ``resize_confirming`` confirmed:
each step can be done again, so a second interruption is no worse.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from vmops.compute import crash_points, states
from vmops.compute import spawn as spawn_steps
from vmops.disks import instance_disks, qemu_img
from vmops.durable import fsync_directory
from vmops.errors import Invalid
from vmops.store import DiskRecord, Flavor, Instance, InstanceFlavor
from vmops.volumes import records as volume_records

if TYPE_CHECKING:
    from vmops.compute.manager import Compute

log = logging.getLogger(__name__)

GIB = 1024**3
MIB = 1024**2
OLD_DISKS = "resize-old"  # a directory inside the instance's own
_PART = ".part"
# The disks a resize changes, and so copies first (the config drive it keeps).
_RESIZED_ROLES = ("root", "ephemeral", "swap")


# -- checks, made before anything changes ------------------------------------------
def check(compute: Compute, inst: Instance, new: Flavor) -> None:
    """Refuse, as Nova does (400), a resize that is the same flavor, goes to
    a flavor without a root disk size, or would shrink a disk; and (403) one
    over the project's quota of cores or RAM."""
    old = inst.flavor
    if new.id == old.id:
        raise Invalid(reason="When resizing, instances must change flavor!")
    old_root_gb, old_ephemeral_gb = old.root_gb, old.ephemeral_gb
    # A volume-backed instance's root is its volume, which a resize leaves as
    # it is: the flavor's root disk size does not apply (Nova's).
    volume_backed = bool(inst.boot_volume_id)
    if new.root_gb == 0 and old_root_gb != 0 and not volume_backed:
        raise Invalid(reason="Resize to zero disk flavor is not allowed.")
    current = 0 if volume_backed else root_bytes(compute, inst)
    if new.root_gb and new.root_gb * GIB < current:
        raise Invalid(reason=f"Unable to resize disk down: flavor {new.name!r} has a "
                      f"{new.root_gb * GIB}-byte root disk, smaller than the instance's "
                      f"{current}-byte one (a root disk is never shrunk)")
    if new.ephemeral_gb < old_ephemeral_gb:
        raise Invalid(reason=f"Unable to resize disk down: flavor {new.name!r} has a "
                      f"{new.ephemeral_gb} GiB ephemeral disk, smaller than the "
                      f"instance's {old_ephemeral_gb} GiB one")
    compute.quotas.check_resize(inst.project_id, old, new, inst.user_id)


def root_bytes(compute: Compute, inst: Instance) -> int:
    """The root disk's size: the flavor's, or (a flavor of disk 0) the
    image's, as the disk itself says."""
    root_gb = inst.flavor.root_gb
    if root_gb:
        return root_gb * GIB
    disk = _role(inst.disks, "root")
    return int(qemu_img.info(Path(disk.path), disk.format)["virtual-size"])


# -- resize --------------------------------------------------------------------------
def resize(compute: Compute, inst: Instance, new: Flavor, flavor: InstanceFlavor) -> None:
    """The work of a resize (the instance is held, in ``resize_prep``);
    ``flavor`` is the record's snapshot of ``new``. Rolled back on failure."""
    boot = inst.vm_state == states.ACTIVE
    inst = compute.store.update_instance(inst, pre_resize={
        "flavor_id": inst.flavor_id, "flavor": inst.flavor.to_json(),
        "disks": [dataclasses.asdict(d) for d in inst.disks], "vm_state": inst.vm_state})
    try:
        crash_points.reached("resize", "after-record")
        compute.power_down(inst)
        _copy_old_disks(compute, inst)
        inst = compute.store.update_instance(inst, task_state=states.RESIZE_MIGRATING)
        crash_points.reached("resize", "after-copy")
        disks = _grow(compute, inst, new)
        crash_points.reached("resize", "after-grow")
        inst = compute.store.update_instance(inst, flavor_id=new.id, flavor=flavor,
                                             disks=disks, task_state=states.RESIZE_FINISH)
        compute.hv.define(compute.domain_spec(inst))
        crash_points.reached("resize", "after-define")
        if boot:
            compute.boot(inst)
    except Exception:  # a process that dies here is rolled back at its next start
        log.warning("%s: resize to %s failed; rolling it back", inst.name, new.name)
        roll_back(compute, compute.store.instance(inst.id))
        raise


def _copy_old_disks(compute: Compute, inst: Instance) -> None:
    """Copy the disks a resize changes into ``resize-old`` (each written
    beside its name, then renamed, then the directory synced: once the
    record moves on to ``resize_migrating``, every copy is whole)."""
    old_dir = compute.instance_dir(inst) / OLD_DISKS
    shutil.rmtree(old_dir, ignore_errors=True)  # a partial copy an earlier run left
    old_dir.mkdir(mode=0o700)
    for disk in inst.disks:
        if disk.role in _RESIZED_ROLES:
            dest = old_dir / Path(disk.path).name
            instance_disks.copy_whole(Path(disk.path), dest.with_name(dest.name + _PART))
            os.replace(dest.with_name(dest.name + _PART), dest)
    fsync_directory(old_dir)


def _grow(compute: Compute, inst: Instance, new: Flavor) -> tuple[DiskRecord, ...]:
    """Grow the root and ephemeral disks in place to ``new``'s sizes (an
    ephemeral disk the instance lacked is made blank) and give it ``new``'s
    swap disk (a fresh one if its size changes, as a swap area holds nothing
    across boots); the new disk list. A disk added takes the first free
    virtio target (one the instance's disks and volumes do not use)."""
    disks = list(inst.disks)
    folder = compute.instance_dir(inst)
    if new.root_gb and not inst.boot_volume_id:  # a root volume is left as it is
        root = _role(disks, "root")
        qemu_img.resize(Path(root.path), root.format, new.root_gb * GIB)
    if new.ephemeral_gb:
        ephemeral = next((d for d in disks if d.role == "ephemeral"), None)
        if ephemeral is not None:
            qemu_img.resize(Path(ephemeral.path), ephemeral.format, new.ephemeral_gb * GIB)
        else:
            facts = instance_disks.create_ephemeral_disk(
                _fresh(folder / spawn_steps.EPHEMERAL_FILE), new.ephemeral_gb * GIB)
            _add(compute, inst, disks, "ephemeral", facts)
    swap = next((d for d in disks if d.role == "swap"), None)
    if swap is not None and Path(swap.path).stat().st_size != new.swap_mb * MIB:
        disks.remove(swap)  # its copy is in resize-old, for a revert
        Path(swap.path).unlink()
        swap = None
    if new.swap_mb and swap is None:
        facts = instance_disks.create_swap_disk(_fresh(folder / spawn_steps.SWAP_FILE),
                                                new.swap_mb * MIB)
        _add(compute, inst, disks, "swap", facts)
    return tuple(disks)


def _add(compute: Compute, inst: Instance, disks: list[DiskRecord], role: str,
         facts: instance_disks.DiskFacts) -> None:
    """Add a new disk before the config drive, at the first free target."""
    at = next((n for n, d in enumerate(disks) if d.role == "config"), len(disks))
    disks.insert(at, DiskRecord(role, str(facts.path), facts.format,
                                _free_target(compute, inst, disks)))


def _fresh(path: Path) -> Path:
    """``path``, without what an interrupted attempt may have left there."""
    path.unlink(missing_ok=True)
    return path


def _free_target(compute: Compute, inst: Instance, disks: list[DiskRecord]) -> str:
    taken = {d.target for d in disks} | \
        {d.target for d in volume_records.disk_specs(compute.store, inst.id)}
    return next(t for t in (spawn_steps.disk_target(n) for n in range(1, 26))
                if t not in taken)


# -- confirm and revert --------------------------------------------------------------
def confirm(compute: Compute, inst: Instance) -> None:
    """Drop the old disks and what the instance was; it stays as it is."""
    shutil.rmtree(compute.instance_dir(inst) / OLD_DISKS, ignore_errors=True)
    crash_points.reached("confirm-resize", "after-remove")
    power = compute.hv.info(inst.id).state
    compute.store.update_instance(inst, pre_resize=None,
                                  vm_state=states.VM_STATE_OF_POWER[power])


def roll_back(compute: Compute, inst: Instance) -> None:
    """Give ``inst`` (as recorded now) back what it was before the resize:
    the revert, the rollback of a failure and the recovery of an
    interrupted resize. Every step can run again after a crash."""
    pre = inst.pre_resize
    old_dir = compute.instance_dir(inst) / OLD_DISKS
    if pre is None:  # nothing was changed yet
        shutil.rmtree(old_dir, ignore_errors=True)
        return
    old_disks = tuple(DiskRecord(**d) for d in pre["disks"])
    # Before the copies are whole (resize_prep) nothing but the guest's power
    # was touched: a guest still running there runs its own disks, and stays.
    if inst.task_state != states.RESIZE_PREP:
        if compute.hv.exists(inst.id):
            compute.hv.power_off(inst.id)  # the resized guest is thrown away
        _restore(old_dir, old_disks)
        _remove_new_disks(compute, inst, old_disks)
        crash_points.reached(_verb_of(inst), "after-restore")
    shutil.rmtree(old_dir, ignore_errors=True)
    old = {"flavor_id": pre["flavor_id"], "flavor": InstanceFlavor.from_json(pre["flavor"]),
           "disks": old_disks,
           "vm_state": pre["vm_state"], "pre_resize": None}
    # The domain first: if that fails, the record still says what to go back to.
    compute.hv.define(compute.domain_spec(dataclasses.replace(inst, **old)))
    inst = compute.end_record(inst, **old)  # on a full disk too
    if pre["vm_state"] == states.ACTIVE and not compute.guest_runs(inst):
        compute.boot(inst)


def _restore(old_dir: Path, old_disks: tuple[DiskRecord, ...]) -> None:
    """Move each copy back over its disk. A copy already moved (a restore
    interrupted after it) is no longer there, and its disk is the old one."""
    for disk in old_disks:
        copy = old_dir / Path(disk.path).name
        if disk.role in _RESIZED_ROLES and copy.exists():
            os.replace(copy, disk.path)


def _remove_new_disks(compute: Compute, inst: Instance,
                      old_disks: tuple[DiskRecord, ...]) -> None:
    """Remove a disk the resize added (a blank ephemeral disk), recorded or not."""
    kept = {d.path for d in old_disks}
    folder = compute.instance_dir(inst)
    made = {d.path for d in inst.disks} | {str(folder / spawn_steps.EPHEMERAL_FILE),
                                           str(folder / spawn_steps.SWAP_FILE)}
    for path in made - kept:
        Path(path).unlink(missing_ok=True)


def _verb_of(inst: Instance) -> str:
    return "revert-resize" if inst.task_state == states.RESIZE_REVERTING else "resize"


# -- recovery ----------------------------------------------------------------------------
def recover(compute: Compute, inst: Instance) -> None:
    """After a service restart: an interrupted resize or revert is rolled
    back, an interrupted confirm finished."""
    if inst.task_state == states.RESIZE_CONFIRMING:
        log.warning("%s: a resize confirm was interrupted; finishing it", inst.name)
        if compute.hv.exists(inst.id):
            confirm(compute, inst)
        else:  # the domain is gone: confirm what can be, the refresh tells the rest
            shutil.rmtree(compute.instance_dir(inst) / OLD_DISKS, ignore_errors=True)
            compute.store.update_instance(inst, pre_resize=None, vm_state=states.STOPPED)
        return
    log.warning("%s: a resize was interrupted (%s); rolling it back", inst.name,
                inst.task_state)
    roll_back(compute, inst)


# -- helpers ---------------------------------------------------------------------------
def _role(disks: tuple[DiskRecord, ...] | list[DiskRecord], role: str) -> DiskRecord:
    for disk in disks:
        if disk.role == role:
            return disk
    raise Invalid(reason=f"the instance has no {role} disk")

