"""Snapshot: an instance's root disk, copied whole into the image cache.

Consistency: the disk is copied while nothing writes it. A running guest
is paused first (libvirt's suspend: QEMU stops the vCPUs, drains the I/O
in flight and flushes its caches, qcow2 metadata included, to the file),
read with ``qemu-img convert -U`` and unpaused when the copy is done. The
guest sees its clock jump by the pause, nothing else. The image holds what
the guest had written to its disk at the pause: what a power cut at that
moment would leave (crash-consistent; what is still in the guest's own page
cache is not on the disk yet: a guest that wants it there syncs first).

A stopped, paused or suspended instance's disk is not being written: it is
copied as it is and the instance stays in that state.

Pause was chosen over libvirt's external snapshot or block copy: nothing is
added to the domain's disk chain (so nothing to merge back, and a failure at
any step leaves the instance's disk as it was); the cost is that the guest
stays paused for the whole copy, which ``take`` logs.

The copy reads through the backing chain, so the image is flattened (no
backing file); it is then checked like any import (the safe inspector,
``qemu-img check``) and stored by the sha256 of its bytes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from vmops.compute import states
from vmops.compute.catalog import activate_image
from vmops.disks import instance_disks
from vmops.disks.cache import ImageCache
from vmops.errors import InvalidState
from vmops.hypervisor.base import ACTIVE_STATES, Hypervisor, PowerState
from vmops.store import DiskRecord, Image, Instance, Store

log = logging.getLogger(__name__)

# The power states in which the guest's vCPUs run and so must be paused.
_RUNNING = frozenset({PowerState.RUNNING, PowerState.BLOCKED})


def root_disk(inst: Instance) -> DiskRecord:
    for disk in inst.disks:
        if disk.role == "root":
            return disk
    raise InvalidState(action="snapshot", instance=inst.name, state="without a root disk")


def take(hv: Hypervisor, store: Store, inst: Instance, image: Image,
         cache: ImageCache) -> Image:
    """Copy ``inst``'s root disk into ``cache`` and make ``image`` (SAVING) active."""
    started = time.monotonic()
    paused_for = [0.0]

    def write(dest: Path) -> None:
        paused_for[0] = copy_root_disk(hv, store, inst, dest)

    cached = cache.add_snapshot(write)
    done = activate_image(store, store.image(image.id), cached)
    log.info("%s: snapshot %s taken in %.2f s (%d bytes); the guest was paused for %.2f s",
             inst.name, image.name, time.monotonic() - started, cached.file_size,
             paused_for[0])
    return done


def copy_root_disk(hv: Hypervisor, store: Store, inst: Instance, dest: Path) -> float:
    """Write the flattened root disk to ``dest``; returns how long the guest
    was paused for it (0 when it was not running)."""
    if inst.boot_volume_id:  # its root volume, copied as a root disk is
        from vmops.compute import boot_volume

        disk = boot_volume.root_disk(store, inst)
    else:
        disk = root_disk(inst)
    state = hv.info(inst.id).state if hv.exists(inst.id) else PowerState.SHUTOFF
    running = state in _RUNNING
    if state in ACTIVE_STATES and not running and state is not PowerState.PAUSED:
        # Shutting down, or suspended by the guest itself: neither can be paused.
        raise InvalidState(action="snapshot", instance=inst.name, state=state.value)
    if running:
        hv.pause(inst.id)
    paused_at = time.monotonic()
    try:
        instance_disks.copy_flattened(Path(disk.path), disk.format, dest,
                                      held_open=state in ACTIVE_STATES)
    finally:
        if running:
            hv.unpause(inst.id)
    return time.monotonic() - paused_at if running else 0.0


def recover(hv: Hypervisor, inst: Instance) -> None:
    """After a service restart: a guest the snapshot had paused runs again.

    The record's vm_state is what it was before the snapshot (the pause of
    a task does not change it), so ACTIVE and paused means paused by us."""
    if inst.vm_state != states.ACTIVE or not hv.exists(inst.id):
        return
    if hv.info(inst.id).state is PowerState.PAUSED:
        log.warning("%s: a snapshot was interrupted while the guest was paused for it; "
                    "unpausing", inst.name)
        hv.unpause(inst.id)
