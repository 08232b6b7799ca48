"""vmops as an OpenStack Nova compute driver (``compute_driver = vmops.VmopsDriver``).

The only module of vmops that imports nova: ``pip install vmops[nova]``
installs Nova and the ``nova.virt.vmops`` module Nova loads the driver
through. Nova's calls are mapped onto vmops' compute layer
(:class:`vmops.compute.manager.Compute`), which keeps its own records in
its state directory (``[vmops] state_dir`` in nova.conf; vmops' own
settings, such as ``libvirt_uri``, come from ``vmops.toml`` there).

The instance's id in vmops is Nova's instance uuid; its vmops name is
Nova's instance name (``instance-0000000a``). Nova hands the driver
instances in states vmops' own verbs refuse (unpause a running instance,
power on a running one); those cases are settled here, as Nova's own
drivers settle them, and vmops' rules for its CLI and API stay as they are.

Not done here yet (docs/nova-driver.md): Nova's networking (os-vif
plugging, Neutron ports; a guest gets one user-mode NIC with Nova's MAC),
Cinder volumes other than iSCSI, migration to another host (resize is on
this host only), config drive from Nova's metadata service content (vmops
writes its own drive from the user data, files, metadata, password and key
pair Nova passes).

Nova's threading: under eventlet (Nova's default) the driver installs
:class:`GreenThreads` as vmops' hypervisor thread model
(:mod:`vmops.hypervisor.threads`) before it opens the hypervisor: libvirt's
event loop gets a native OS thread, and its events reach vmops' (green)
dispatcher through a native queue and a pipe the hub watches, as Nova's
own libvirt host hands its events over. This module is the only one that
knows eventlet. In native mode, vmops' default model.

Lifecycle events: every power change vmops' compute layer sees (libvirt's
events, the guest powering itself off, QEMU dying) reaches Nova as a
``nova.virt.event.LifecycleEvent`` (:meth:`VmopsDriver._lifecycle_event`),
so Nova need not poll for it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import platform
import re
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import os_resource_classes as orc
from nova import exception, utils
from nova.compute import power_state, task_states
from nova.console import serial
from nova.console import type as ctype
from nova.image import glance
from nova.objects import diagnostics
from nova.objects import fields as obj_fields
from nova.virt import driver, hardware, images
from nova.virt import event as virtevent
from oslo_config import cfg

from vmops import config, console, socket_paths
from vmops.compute import host_facts, serial_console, states
from vmops.compute.boot_volume import BootVolume
from vmops.compute.manager import SpawnRequest
from vmops.compute.server_volumes import ExtraVolume
from vmops.errors import (
    Conflict,
    ImageNotFound,
    InstanceNotFound,
    InvalidState,
    VmopsError,
    VolumeNotFound,
)
from vmops.hypervisor import threads
from vmops.hypervisor.base import LifecycleEvent as VmopsLifecycleEvent
from vmops.hypervisor.base import PowerState
from vmops.service import Engine, build, open_host, take_lock
from vmops.store import Instance
from vmops.volumes.manager import Volumes
from vmops.volumes.records import Volume, VolumeStatus

log = logging.getLogger(__name__)

CONF = cfg.CONF
OPTS = [
    cfg.StrOpt("state_dir", default="",
               help="vmops' state directory for this compute host (its records, images, "
                    "instances and vmops.toml); empty: vmops' default "
                    "(VMOPS_STATE_DIR, else /var/lib/vmops as root)."),
]
CONF.register_opts(OPTS, group="vmops")

# vmops' power states as Nova's (nova.compute.power_state).
POWER_STATES = {
    PowerState.NOSTATE: power_state.NOSTATE,
    PowerState.RUNNING: power_state.RUNNING,
    PowerState.BLOCKED: power_state.RUNNING,
    PowerState.PAUSED: power_state.PAUSED,
    PowerState.SHUTDOWN: power_state.SHUTDOWN,
    PowerState.SHUTOFF: power_state.SHUTDOWN,
    PowerState.CRASHED: power_state.CRASHED,
    PowerState.PMSUSPENDED: power_state.SUSPENDED,
    PowerState.SUSPENDED: power_state.SHUTDOWN,  # as libvirt's driver: managed save is off
}
GLANCE_IMAGE_PREFIX = "glance-"
# vmops' record of a Cinder volume attached through Nova: "cinder-<volume id>".
CINDER_VOLUME_PREFIX = "cinder-"
# The iSCSI initiator name QEMU's built-in initiator logs in with when it
# has no domain (qemu-img, which vmops' volume registration probes with);
# a guest's disk logs in as this name with ":<domain uuid>" after it.
QEMU_INITIATOR = "iqn.2008-11.org.linux-kvm"

# vmops' lifecycle events as Nova's transitions, as Nova's libvirt driver
# maps libvirt's (nova/virt/libvirt/host.py): a domain that stops, for any
# reason (shut down, destroyed, crashed, QEMU died, memory saved by a
# suspend), is STOPPED; started or restored, STARTED; its vCPUs paused,
# PAUSED; resumed, RESUMED. A guest that suspended itself to RAM is
# SUSPENDED, the power state get_info reports for it (Nova's libvirt driver
# sends nothing for it). Each agrees with get_info, which Nova's
# handle_lifecycle_event compares it with before it acts.
TRANSITIONS = {
    PowerState.PAUSED: virtevent.EVENT_LIFECYCLE_PAUSED,
    PowerState.SHUTOFF: virtevent.EVENT_LIFECYCLE_STOPPED,
    PowerState.CRASHED: virtevent.EVENT_LIFECYCLE_STOPPED,
    PowerState.SUSPENDED: virtevent.EVENT_LIFECYCLE_STOPPED,
    PowerState.PMSUSPENDED: virtevent.EVENT_LIFECYCLE_SUSPENDED,
}
# The detail of a RUNNING event whose vCPUs were resumed (libvirt's RESUMED,
# vmops/hypervisor/libvirt/driver.py), as opposed to a domain started.
RESUMED_DETAIL = "unpaused"


class VmopsDriver(driver.ComputeDriver):
    """Nova's ComputeDriver on vmops' compute layer, one host."""

    capabilities = dict(driver.ComputeDriver.capabilities,
                        has_imagecache=False, supports_evacuate=False,
                        supports_attach_interface=False, supports_device_tagging=False,
                        supports_multiattach=False, supports_trusted_certs=False,
                        supports_image_type_qcow2=True, supports_image_type_raw=True)

    # Seconds a STOPPED event waits before it goes to Nova, cancelled by any
    # later event of the instance: as Nova's libvirt driver (15 s), so that
    # a reboot's stop and start are not taken for a guest that stopped.
    stopped_event_delay = 15.0

    def __init__(self, virtapi: Any, read_only: bool = False) -> None:
        super().__init__(virtapi)
        self.engine = self._open()
        self.compute, self.catalog = self.engine.compute, self.engine.catalog
        self._events_lock = threading.Lock()
        self._delayed_stops: dict[str, threading.Timer] = {}
        self._serial_ports: dict[str, SerialPort] = {}  # instance id -> its open port
        self.compute.lifecycle_observers.append(self._lifecycle_event)

    # -- set-up ----------------------------------------------------------------
    def _open(self) -> Engine:
        """vmops' parts for ``[vmops] state_dir``, as ``vmops serve`` makes them."""
        state_dir = Path(CONF.vmops.state_dir) if CONF.vmops.state_dir else None
        settings = config.load(state_dir)
        _use_novas_threading()
        # Held as `vmops serve` holds it: a service started on the same
        # directory is refused, naming this process.
        self._state_lock = take_lock(settings.state_dir)
        socket_paths.ensure_socket_root(settings.state_dir)
        host = open_host(settings)
        problems = host.problems()
        return build(settings, hypervisor=host.hypervisor, accel=host.accel,
                     host_problems=lambda: problems)

    def init_host(self, host: str) -> None:
        """Reconcile vmops' records with the hypervisor, then watch the
        volumes, as ``vmops serve`` does at start (Engine.recover and
        Engine.watch_volumes): Cinder volumes a crash left half registered,
        forgotten or attached (records, CHAP secrets) are settled as the
        service settles its own, and one whose disk QEMU cannot read or
        write, or whose iSCSI portal went silent, is put in error."""
        orphans = self.engine.recover()
        for orphan in orphans:
            log.warning("vmops domain %s has no record; left alone", orphan)
        self.engine.watch_volumes()

    def cleanup_host(self, host: str) -> None:
        with self._events_lock:
            for timer in self._delayed_stops.values():
                timer.cancel()
            self._delayed_stops.clear()
        self.engine.stop()  # the volume target watch
        for instance_id in list(self._serial_ports):
            self._close_serial_port(instance_id)
        # The console process stays for this process while it lives (as for
        # vmops serve); once the host is cleaned up, it goes if it watches
        # nothing (docs/console.md). Only this driver's: another driver in
        # the same process keeps its own.
        console.release_holds(run_dir=self.compute.settings.run_dir)
        self.compute.store.close()
        self.compute.hv.close()
        if getattr(self, "_state_lock", None) is not None:
            self._state_lock.close()

    # -- lifecycle events --------------------------------------------------------
    def _lifecycle_event(self, event: VmopsLifecycleEvent) -> None:
        """vmops' event, on the thread that delivered it, to Nova (through
        ComputeDriver.emit_event, which drops it while Nova has registered
        no listener); a STOPPED one after :attr:`stopped_event_delay`."""
        if event.state is PowerState.RUNNING:
            transition = virtevent.EVENT_LIFECYCLE_RESUMED \
                if event.detail == RESUMED_DETAIL else virtevent.EVENT_LIFECYCLE_STARTED
        elif event.state in TRANSITIONS:
            transition = TRANSITIONS[event.state]
        else:
            return
        nova_event = virtevent.LifecycleEvent(event.uuid, transition)
        with self._events_lock:
            pending = self._delayed_stops.pop(event.uuid, None)
            if pending is not None:
                pending.cancel()
            if transition == virtevent.EVENT_LIFECYCLE_STOPPED:
                self._delay_stop(nova_event)
                return
        self.emit_event(nova_event)

    def _delay_stop(self, nova_event: Any) -> None:
        """Emit ``nova_event`` later unless another event of the instance
        comes first. Called with ``_events_lock`` held."""
        uuid = nova_event.uuid

        def emit() -> None:
            with self._events_lock:
                if self._delayed_stops.get(uuid) is not timer:
                    return  # cancelled while this timer fired
                del self._delayed_stops[uuid]
            self.emit_event(nova_event)

        # Under Nova's eventlet mode this is a green thread, as emit_event
        # wants; in native mode a thread.
        timer = threading.Timer(self.stopped_event_delay, emit)
        timer.daemon = True
        self._delayed_stops[uuid] = timer
        timer.start()

    # -- lookups ---------------------------------------------------------------
    def _instance(self, instance: Any) -> Instance:
        """vmops' record of Nova's ``instance``; Nova's InstanceNotFound if none."""
        try:
            inst = self.compute.instance(instance.uuid)
        except InstanceNotFound:
            raise exception.InstanceNotFound(instance_id=instance.uuid) from None
        if inst.id != instance.uuid:  # a name match is not this instance
            raise exception.InstanceNotFound(instance_id=instance.uuid)
        return inst

    def _power(self, inst: Instance) -> PowerState:
        if not self.compute.hv.exists(inst.id):
            return PowerState.NOSTATE
        return self.compute.hv.info(inst.id).state

    def list_instances(self) -> list[str]:
        return [i.name for i in self.compute.store.instances()]

    def list_instance_uuids(self) -> list[str]:
        return [i.id for i in self.compute.store.instances()]

    def instance_exists(self, instance: Any) -> bool:
        return instance.uuid in self.list_instance_uuids()

    def get_info(self, instance: Any, use_cache: bool = True) -> hardware.InstanceInfo:
        inst = self._instance(instance)
        return hardware.InstanceInfo(state=POWER_STATES[self._power(inst)])

    # -- spawn and destroy -----------------------------------------------------
    def spawn(self, context: Any, instance: Any, image_meta: Any, injected_files: Any,
              admin_password: str | None, allocations: Any, network_info: Any = None,
              block_device_info: Any = None, power_on: bool = True,
              accel_info: Any = None) -> None:
        boot, extras, registered = self._register_volumes(instance, block_device_info)
        try:
            image = "" if boot else self._cached_image(context, image_meta)
            self._create(instance, image, boot, extras, network_info, injected_files,
                         admin_password)
        except BaseException:
            if instance.uuid not in self.list_instance_uuids():
                self._forget_volumes(registered)  # refused: vmops made nothing
            raise
        if not power_on:
            self.compute.stop(instance.uuid, hard=True)

    def _create(self, instance: Any, image: str, boot: BootVolume | None,
                extras: tuple[ExtraVolume, ...], network_info: Any, injected_files: Any,
                admin_password: str | None) -> None:
        request = SpawnRequest(
            name=instance.name, image=image, flavor=self._flavor(instance.flavor),
            mac=_single_mac(network_info, instance.uuid), network="user",
            config_drive=bool(instance.config_drive), user_data=_user_data(instance),
            key_name=instance.key_name or None,
            key_data=instance.key_data if instance.key_name else None,
            files=tuple((path, _bytes(data)) for path, data in injected_files or ()),
            properties={str(k): str(v) for k, v in (instance.metadata or {}).items()},
            admin_password=admin_password or None, project_id=instance.project_id or "",
            user_id=instance.user_id or "", instance_id=instance.uuid,
            boot_volume=boot, extra_volumes=extras)
        try:
            inst = self.compute.create(request, background=False)
        except VmopsError as exc:
            raise exception.InstanceDeployFailure(reason=exc.message,
                                                  instance_id=instance.uuid) from exc
        if inst.vm_state != states.ACTIVE:
            raise exception.InstanceDeployFailure(reason=inst.fault or inst.vm_state,
                                                  instance_id=instance.uuid)

    def _register_volumes(self, instance: Any, block_device_info: Any) -> tuple[
            BootVolume | None, tuple[ExtraVolume, ...], list[str]]:
        """Cinder's volumes of a spawn (``block_device_mapping``) as vmops
        remote volumes: the one of boot index 0 the root disk (boot from
        volume), the others attached after vmops' own disks. All or none:
        one that cannot be registered forgets the others."""
        boot: BootVolume | None = None
        extras: list[ExtraVolume] = []
        registered: list[str] = []
        volume_id = "?"
        try:
            for bdm in driver.block_device_info_get_mapping(block_device_info):
                info = bdm.get("connection_info") or {}
                volume_id = str(info.get("serial") or "?")
                volume = self._register(instance, info, _cinder_volume_id(info))
                registered.append(volume.id)
                if bdm.get("boot_index") == 0:
                    boot = BootVolume(volume=volume.id)
                else:
                    extras.append(ExtraVolume(volume=volume.id))
        except BaseException as exc:
            self._forget_volumes(registered)
            if isinstance(exc, exception.NovaException | VmopsError):
                reason = exc.message if isinstance(exc, VmopsError) else str(exc)
                raise exception.InstanceDeployFailure(
                    reason=f"Cinder volume {volume_id}: {reason}",
                    instance_id=instance.uuid) from exc
            raise
        return boot, tuple(extras), registered

    def _register(self, instance: Any, connection_info: dict[str, Any],
                  volume_id: str) -> Volume:
        url, chap_user, chap_secret = _iscsi_target(connection_info)
        self._forget_leftover(CINDER_VOLUME_PREFIX + volume_id)
        return self.volumes.register_remote(
            CINDER_VOLUME_PREFIX + volume_id, url, chap_user=chap_user,
            chap_secret=chap_secret, description=f"Cinder volume {volume_id}",
            project_id=instance.project_id or "", user_id=instance.user_id or "",
            counted=False)  # Cinder's quota counted it; vmops' is its own API's

    def _forget_leftover(self, name: str) -> None:
        """An available registration of this Cinder volume that nothing has
        attached: left by a nova-compute stopped between a registration
        and its attach, or a detach and its forgetting. It would refuse the
        new one (same target) for ever; Cinder's connection_info now is what
        counts. One attached is kept (the new registration is refused)."""
        try:
            volume = self.volumes.volume(name)
        except VolumeNotFound:
            return
        if volume.status == VolumeStatus.AVAILABLE and \
                self.volumes.attachment_of(volume.id) is None:
            log.warning("forgetting vmops' unattached registration of %s, left from "
                        "before", name)
            self._forget_volumes([volume.id])

    def _forget_volumes(self, volume_ids: list[str]) -> None:
        """Forget vmops' records (and CHAP secrets) of Cinder's volumes that
        are no longer attached; the targets are Cinder's."""
        for volume_id in volume_ids:
            try:
                self.volumes.delete(volume_id)
            except VolumeNotFound:
                pass
            except VmopsError as exc:
                log.warning("Cinder volume %s stays in vmops: %s", volume_id, exc.message)

    def _cinder_volumes_of(self, instance_id: str) -> list[str]:
        """vmops' ids of the Cinder volumes attached to the instance."""
        return [a.volume_id for a in self.volumes.attached_to(instance_id)
                if self.volumes.volume(a.volume_id).name.startswith(CINDER_VOLUME_PREFIX)]

    def _cached_image(self, context: Any, image_meta: Any) -> str:
        """Glance's image in vmops' cache (``glance-<id>``), fetched through
        Nova's image API once and checked by vmops' import (format, size)."""
        name = GLANCE_IMAGE_PREFIX + image_meta.id
        try:
            image = self.compute.store.image(name)
            if image.status == "active":
                return image.id
            self.compute.store.delete_image(image.id)  # a failed or interrupted import
        except ImageNotFound:
            pass
        settings = self.compute.settings
        # The download is removed once imported (vmops keeps its own copy).
        with tempfile.TemporaryDirectory(dir=settings.state_dir, prefix="glance-",
                                         ignore_cleanup_errors=True) as tmp:
            path = Path(tmp) / "image"
            images.fetch(context, image_meta.id, str(path))
            try:
                image = self.catalog.import_image(name, str(path), background=False)
            except VmopsError as exc:
                raise exception.ImageUnacceptable(image_id=image_meta.id,
                                                  reason=exc.message) from exc
        if image.status != "active":
            self.compute.store.delete_image(image.id)
            raise exception.ImageUnacceptable(image_id=image_meta.id, reason=image.fault)
        return image.id

    def _flavor(self, flavor: Any) -> str:
        """A vmops flavor with Nova's flavor's sizes, named by them (Nova's
        flavor ids can be reused for other sizes; vmops' flavors are kept)."""
        sizes = (int(flavor.memory_mb), int(flavor.vcpus), int(flavor.root_gb),
                 int(flavor.ephemeral_gb), int(flavor.swap or 0))
        name = "nova-" + hashlib.sha256(repr(sizes).encode()).hexdigest()[:16]
        if not any(f.name == name for f in self.compute.store.flavors()):
            self.catalog.create_flavor(name, sizes[0], sizes[1], sizes[2],
                                       ephemeral_gb=sizes[3], swap_mb=sizes[4])
        return name

    def destroy(self, context: Any, instance: Any, network_info: Any,
                block_device_info: Any = None, destroy_disks: bool = True,
                destroy_secrets: bool = True) -> None:
        """Idempotent, as vmops' destroy: an unknown instance is not an error.
        Its Cinder volumes are forgotten by vmops (Nova then ends their
        attachments in Cinder)."""
        if self._reverting_here(instance):
            log.info("%s: resize being reverted on this host: kept for the revert",
                     instance.name)
            return
        volumes = self._cinder_volumes_of(instance.uuid)
        self._close_serial_port(instance.uuid)
        self.compute.destroy(instance.uuid)
        self._forget_volumes(volumes)

    def _reverting_here(self, instance: Any) -> bool:
        """Nova's revert of a resize destroys the instance on the resize's
        destination before the source's finish_revert_migration; on one
        host they are the same instance, which vmops' revert restores."""
        if instance.task_state != task_states.RESIZE_REVERTING:
            return False
        try:
            return self._instance(instance).vm_state == states.RESIZED
        except exception.InstanceNotFound:
            return False

    def cleanup(self, context: Any, instance: Any, network_info: Any,
                block_device_info: Any = None, destroy_disks: bool = True,
                migrate_data: Any = None, destroy_vifs: bool = True,
                destroy_secrets: bool = True) -> None:
        self.destroy(context, instance, network_info, block_device_info)

    # -- power -----------------------------------------------------------------
    def reboot(self, context: Any, instance: Any, network_info: Any, reboot_type: str,
               block_device_info: Any = None, bad_volumes_callback: Any = None,
               accel_info: Any = None, share_info: Any = None) -> None:
        """A soft reboot of a guest that is not running is a hard one, as in
        Nova's libvirt driver (vmops' own soft reboot wants a running guest)."""
        inst = self._instance(instance)
        hard = reboot_type == "HARD" or inst.vm_state != states.ACTIVE
        self.compute.reboot(inst.id, hard=hard)

    def power_off(self, instance: Any, timeout: int = 0, retry_interval: int = 0) -> None:
        """``timeout`` 0: pull the plug; else the power button first. Nothing
        if it is off already."""
        inst = self._instance(instance)
        if inst.vm_state in (states.STOPPED, states.SUSPENDED):
            return
        self.compute.stop(inst.id, timeout=timeout or None, hard=not timeout)

    def power_on(self, context: Any, instance: Any, network_info: Any,
                 block_device_info: Any = None, accel_info: Any = None,
                 share_info: Any = None) -> None:
        """Start a stopped guest, resume a suspended one; a running or paused
        one is rebooted hard, as Nova's libvirt driver does."""
        inst = self._instance(instance)
        if inst.vm_state == states.STOPPED:
            self.compute.start(inst.id)
        elif inst.vm_state == states.SUSPENDED:
            self.compute.resume(inst.id)
        else:
            self.compute.reboot(inst.id, hard=True)

    def pause(self, instance: Any) -> None:
        self.compute.pause(self._instance(instance).id)

    def unpause(self, instance: Any) -> None:
        """Nothing to do for a guest that is not paused (as Nova's fake driver)."""
        inst = self._instance(instance)
        if inst.vm_state == states.PAUSED:
            self.compute.unpause(inst.id)

    def suspend(self, context: Any, instance: Any) -> None:
        self.compute.suspend(self._instance(instance).id)

    def resume(self, context: Any, instance: Any, network_info: Any,
               block_device_info: Any = None, share_info: Any = None) -> None:
        """Nothing to do for a guest that is not suspended (as Nova's fake driver)."""
        inst = self._instance(instance)
        if inst.vm_state == states.SUSPENDED:
            self.compute.resume(inst.id)

    def resume_state_on_host_boot(self, context: Any, instance: Any, network_info: Any,
                                  share_info: Any = None,
                                  block_device_info: Any = None) -> None:
        """Nova asks after a host reboot for guests that ran: a guest that
        runs already is left alone, any other is booted (a hard reboot, as
        Nova's libvirt driver)."""
        inst = self._instance(instance)
        if self._power(inst) in (PowerState.RUNNING, PowerState.BLOCKED):
            return
        if inst.vm_state == states.SUSPENDED:
            self.compute.resume(inst.id)
        else:
            self.compute.reboot(inst.id, hard=True)

    def trigger_crash_dump(self, instance: Any) -> None:
        try:
            self.compute.trigger_crash_dump(self._instance(instance).id)
        except VmopsError as exc:
            raise exception.InstanceNotRunning(instance_id=instance.uuid) from exc

    def poll_rebooting_instances(self, timeout: int, instances: Any) -> None:
        """Nothing to do: vmops' reboot returns once the guest is booted
        again (or has failed), so no reboot is left hanging to poll for."""

    # -- snapshot --------------------------------------------------------------
    def snapshot(self, context: Any, instance: Any, image_id: str,
                 update_task_state: Any) -> None:
        """vmops' snapshot (the root disk, flattened; a running guest is
        paused for the copy) into its cache, uploaded to Glance's image
        ``image_id``, then removed from vmops' cache."""
        try:
            inst = self._instance(instance)
        except exception.InstanceNotFound:
            raise exception.InstanceNotRunning(instance_id=instance.uuid) from None
        update_task_state(task_state=task_states.IMAGE_PENDING_UPLOAD)
        try:
            image = self.compute.snapshot(inst.id, f"nova-snapshot-{image_id}",
                                          self.catalog.cache)
        except VmopsError as exc:
            raise exception.InstanceNotRunning(instance_id=instance.uuid) \
                if isinstance(exc, InvalidState) else \
                exception.NovaException(f"snapshot of {inst.name}: {exc.message}") from exc
        try:
            image = self.compute.store.image(image.id)
            update_task_state(task_state=task_states.IMAGE_UPLOADING,
                              expected_state=task_states.IMAGE_PENDING_UPLOAD)
            metadata = {"disk_format": image.format, "container_format": "bare"}
            with open(image.path, "rb") as data:
                glance.API().update(context, image_id, metadata, data, purge_props=False)
        finally:
            self.catalog.delete_image(image.id)

    # -- rescue ----------------------------------------------------------------
    def rescue(self, context: Any, instance: Any, network_info: Any, image_meta: Any,
               rescue_password: str | None, block_device_info: Any = None,
               share_info: Any = None) -> None:
        """From the rescue image Nova names, else the instance's own image."""
        inst = self._instance(instance)
        image = self._cached_image(context, image_meta) if image_meta.obj_attr_is_set(
            "id") else None
        self.compute.rescue(inst.id, image, admin_password=rescue_password or None)

    def unrescue(self, context: Any, instance: Any) -> None:
        """Nothing to do for an instance that is not rescued."""
        inst = self._instance(instance)
        if inst.vm_state == states.RESCUED:
            self.compute.unrescue(inst.id)

    # -- resize (Nova's migration verbs, on this host only) ---------------------------
    def migrate_disk_and_power_off(self, context: Any, instance: Any, dest: str, flavor: Any,
                                   network_info: Any, block_device_info: Any = None,
                                   timeout: int = 0, retry_interval: int = 0) -> str:
        """The first half of Nova's resize. vmops resizes on its own host
        only (Nova's allow_resize_to_same_host): another host is refused
        before anything changes. vmops' resize (power off, copy the disks
        aside, grow them, boot again if the guest ran) is one verb, run by
        :meth:`finish_migration` on this same driver; nothing is done here."""
        self._instance(instance)
        if dest not in (str(CONF.my_ip), str(CONF.host)):
            raise exception.InstanceFaultRollback(
                inner_exception=exception.MigrationPreCheckError(
                    reason=f"vmops resizes on its own host only, not to {dest}"))
        return ""

    def finish_migration(self, context: Any, migration: Any, instance: Any, disk_info: str,
                         network_info: Any, image_meta: Any, resize_instance: bool,
                         allocations: Any, block_device_info: Any = None,
                         power_on: bool = True, share_info: Any = None) -> None:
        """vmops' resize to Nova's new flavor (``instance.flavor`` by now):
        the instance ends resized (Nova's VERIFY_RESIZE), running if it ran
        (Nova's power_on says the same: it resizes active or stopped guests)."""
        inst = self._instance(instance)
        flavor = self._flavor(instance.flavor)
        if inst.flavor_id == self.compute.store.flavor(flavor).id:
            return  # the same sizes: nothing to resize
        try:
            self.compute.resize(inst.id, flavor)
        except VmopsError as exc:
            raise exception.ResizeError(reason=exc.message) from exc

    def confirm_migration(self, context: Any, migration: Any, instance: Any,
                          network_info: Any) -> None:
        """vmops' confirm: the old disks go."""
        inst = self._instance(instance)
        if inst.vm_state == states.RESIZED:
            self.compute.confirm_resize(inst.id)

    def finish_revert_migration(self, context: Any, instance: Any, network_info: Any,
                                migration: Any, block_device_info: Any = None,
                                power_on: bool = True, share_info: Any = None) -> None:
        """vmops' revert: the old flavor and disks, byte for byte, booted if
        the guest ran before the resize."""
        inst = self._instance(instance)
        if inst.vm_state == states.RESIZED:
            self.compute.revert_resize(inst.id)

    # -- Cinder volumes --------------------------------------------------------------
    @property
    def volumes(self) -> Volumes:
        return self.engine.volumes

    def get_volume_connector(self, instance: Any) -> dict[str, Any]:
        """What Cinder needs to export a volume to this host: QEMU's own
        iSCSI initiator opens it (no host iSCSI login, no multipath)."""
        return {"ip": str(CONF.my_block_storage_ip), "host": str(CONF.host),
                "initiator": QEMU_INITIATOR, "multipath": False,
                "platform": platform.machine(), "os_type": "linux"}

    def attach_volume(self, context: Any, connection_info: dict[str, Any], instance: Any,
                      mountpoint: str, disk_bus: str | None = None,
                      device_type: str | None = None, encryption: Any = None) -> None:
        """Cinder's iSCSI LUN (``connection_info``) as a vmops remote volume,
        registered (vmops probes the target, a CHAP password goes into a
        libvirt secret) and plugged in, hot if the guest runs. Any other
        volume type is refused, naming it; a failed attach forgets the
        registration (the target is Cinder's and is left as it is)."""
        _iscsi_target(connection_info)  # the volume type first
        volume_id = _cinder_volume_id(connection_info)
        inst = self._instance(instance)
        if encryption:
            raise exception.VolumeEncryptionNotSupported(volume_type="iscsi",
                                                         volume_id=volume_id)
        try:
            volume = self._register(instance, connection_info, volume_id)
        except VmopsError as exc:
            raise exception.VolumeAttachFailed(volume_id=volume_id,
                                               reason=exc.message) from exc
        try:
            self._plug(volume.id, inst, mountpoint)
        except BaseException as exc:
            self.volumes.delete(volume.id)
            if isinstance(exc, VmopsError):
                raise exception.VolumeAttachFailed(volume_id=volume_id,
                                                   reason=exc.message) from exc
            raise

    def get_device_name_for_instance(self, instance: Any, bdms: Any,
                                     block_device_obj: Any) -> str:
        """The first virtio disk name (``/dev/vdb`` on) that neither vmops
        (the instance's own disks and volumes) nor Nova's mappings use, so
        that the attach that follows gets the name Nova records."""
        inst = self._instance(instance)
        taken = {d.target for d in inst.disks} | {
            a.device for a in self.volumes.attached_to(inst.id)} | {
            str(b.device_name).removeprefix("/dev/") for b in bdms or ()
            if getattr(b, "device_name", None)}
        for letter in "bcdefghijklmnopqrstuvwxyz":
            if f"vd{letter}" not in taken:
                return f"/dev/vd{letter}"
        raise exception.TooManyDiskDevices(maximum=25)

    def _plug(self, volume_id: str, inst: Instance, mountpoint: str) -> None:
        """Attach as the device Nova named when it is a free virtio disk; else
        as the first free one vmops finds (Nova's device name is a hint, as
        with its libvirt driver: the guest names its disks itself)."""
        if _VIRTIO_DEVICE.match(mountpoint or ""):
            try:
                self.volumes.attach(volume_id, inst.id, mountpoint)
                return
            except Conflict:
                log.info("%s: %s is taken; vmops picks the device", inst.name, mountpoint)
        self.volumes.attach(volume_id, inst.id)

    def detach_volume(self, context: Any, connection_info: dict[str, Any], instance: Any,
                      mountpoint: str, encryption: Any = None) -> None:
        """Unplug the volume (the guest must release it within vmops'
        volume_detach_timeout) and forget vmops' record of it. A volume
        vmops does not have attached is nothing to do, as in Nova's libvirt
        driver."""
        volume_id = _cinder_volume_id(connection_info)
        try:
            volume = self.volumes.volume(CINDER_VOLUME_PREFIX + volume_id)
        except VolumeNotFound:
            log.warning("volume %s is not attached to %s in vmops", volume_id, instance.uuid)
            return
        attachment = self.volumes.attachment_of(volume.id)
        if attachment is not None:
            if attachment.instance_id != instance.uuid:
                raise exception.DeviceNotFound(device=mountpoint)
            try:
                self.volumes.detach(volume.id, attachment.instance_id)
            except VmopsError as exc:
                raise exception.DeviceDetachFailed(device=mountpoint,
                                                   reason=exc.message) from exc
        self.volumes.delete(volume.id)

    # -- consoles and diagnostics ------------------------------------------------
    def get_serial_console(self, context: Any, instance: Any) -> ctype.ConsoleSerial:
        """A TCP port for Nova's serial proxy (``[serial_console]``: its
        ``proxyclient_address``, a port of its ``port_range``), opened once
        per instance: each connection is a client of vmops' interactive
        console (the capture process's ``console.sock``: the guest's output
        from then on, and what is sent goes to the guest), as QEMU's TCP
        serial port is with Nova's libvirt driver."""
        if not CONF.serial_console.enabled:
            raise exception.ConsoleTypeUnavailable(console_type="serial")
        inst = self._instance(instance)
        try:
            serial_console.check(self.compute, inst.id)
        except VmopsError as exc:
            raise exception.InstanceNotReady(instance_id=instance.uuid) from exc
        with self._events_lock:
            port = self._serial_ports.get(inst.id)
            if port is None:
                host = str(CONF.serial_console.proxyclient_address)
                number = serial.acquire_port(host)
                port = SerialPort(host, number, lambda: serial_console.open_console(
                    self.compute, self.compute.instance(inst.id)))
                self._serial_ports[inst.id] = port
        return ctype.ConsoleSerial(host=port.host, port=port.port)

    def _close_serial_port(self, instance_id: str) -> None:
        with self._events_lock:
            port = self._serial_ports.pop(instance_id, None)
        if port is not None:
            port.close()
            serial.release_port(port.host, port.port)

    def get_console_output(self, context: Any, instance: Any) -> str:
        inst = self._instance(instance)
        return self.compute.console_log(inst.id).decode("utf-8", "replace")

    def get_diagnostics(self, instance: Any) -> dict[str, Any]:
        """The domain's memory, vCPUs and CPU time, as vmops reads them."""
        inst = self._instance(instance)
        info = self.compute.live_info(inst)
        return {"state": inst.power_state, **{k: v for k, v in info.items() if k != "state"}}

    def get_instance_diagnostics(self, instance: Any) -> diagnostics.Diagnostics:
        """Nova's diagnostics object: state, memory and CPU time from vmops."""
        inst = self._instance(instance)
        info = self.compute.live_info(inst)
        diags = diagnostics.Diagnostics(
            state=power_state.STATE_MAP[POWER_STATES[PowerState(inst.power_state)]],
            driver="libvirt",
            hypervisor="qemu", hypervisor_os="linux",
            config_drive=bool(inst.config_drive),
            memory_details=diagnostics.MemoryDiagnostics(
                maximum=info.get("max_memory_kib", 0) // 1024,
                used=info.get("memory_kib", 0) // 1024))
        for cpu in range(int(info.get("vcpus", 0))):
            diags.add_cpu(id=cpu)
        for mac in inst.macs:
            diags.add_nic(mac_address=mac)
        return diags

    # -- the host ----------------------------------------------------------------
    def get_available_nodes(self, refresh: bool = False) -> list[str]:
        return [host_facts.hostname()]

    def get_host_ip_addr(self) -> str:
        return str(CONF.my_ip)

    def get_host_uptime(self) -> str:
        return host_facts.uptime_text()

    def get_host_cpu_stats(self) -> dict[str, int]:
        return host_facts.cpu_times()

    def get_available_resource(self, nodename: str) -> dict[str, Any]:
        """The host's totals and what vmops' servers were given, as vmops
        counts them for os-hypervisors."""
        facts = host_facts.gather(self.compute.store.instances(),
                                  self.compute.settings.state_dir)
        return {
            "vcpus": facts.vcpus, "memory_mb": facts.memory_mb, "local_gb": facts.local_gb,
            "vcpus_used": facts.vcpus_used, "memory_mb_used": facts.memory_mb_used,
            "local_gb_used": facts.local_gb_used,
            "hypervisor_type": host_facts.HYPERVISOR_TYPE,
            "hypervisor_version": facts.hypervisor_version,
            "hypervisor_hostname": nodename, "cpu_info": facts.cpu_info,
            "disk_available_least": facts.disk_available_least,
            "supported_instances": [(obj_fields.Architecture.canonicalize(platform.machine()),
                                     obj_fields.HVType.QEMU, obj_fields.VMMode.HVM)],
            "numa_topology": None,
        }

    def update_provider_tree(self, provider_tree: Any, nodename: str,
                             allocations: Any = None) -> None:
        """The host's vCPUs, memory and disk as Placement inventory, with
        the allocation ratios Nova's configuration sets."""
        resources = self.get_available_resource(nodename)
        ratios = self._get_allocation_ratios(provider_tree.data(nodename).inventory)
        reserved = {orc.VCPU: CONF.reserved_host_cpus,
                    orc.MEMORY_MB: CONF.reserved_host_memory_mb,
                    orc.DISK_GB: self._get_reserved_host_disk_gb_from_config()}
        totals = {orc.VCPU: resources["vcpus"], orc.MEMORY_MB: resources["memory_mb"],
                  orc.DISK_GB: resources["local_gb"]}
        inventory = {rc: {"total": total, "min_unit": 1, "max_unit": total, "step_size": 1,
                          "allocation_ratio": ratios[rc], "reserved": reserved[rc]}
                     for rc, total in totals.items()}
        provider_tree.update_inventory(nodename, inventory)


class SerialPort:
    """A TCP listener whose every connection is piped both ways to a new
    connection from ``connect`` (vmops' console socket); threads are green
    under eventlet, native otherwise."""

    def __init__(self, host: str, port: int, connect: Callable[[], socket.socket]) -> None:
        self.host, self.port = host, port
        self._connect = connect
        self._listener = socket.create_server((host, port))
        threading.Thread(target=self._serve, name=f"serial-{port}", daemon=True).start()

    def close(self) -> None:
        """Stop listening (clients already connected keep their console)."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept
        self._listener.close()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._join, args=(client,), daemon=True,
                             name=f"serial-{self.port}-client").start()

    def _join(self, client: socket.socket) -> None:
        try:
            console = self._connect()
        except VmopsError as exc:
            log.info("serial console on port %d: %s", self.port, exc.message)
            client.close()
            return
        threading.Thread(target=_pipe, args=(console, client), daemon=True,
                         name=f"serial-{self.port}-out").start()
        _pipe(client, console)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy until either side ends, then close both (which ends the other
    direction's copy too)."""
    try:
        while data := source.recv(4096):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _use_novas_threading() -> None:
    """Under Nova's eventlet mode, vmops' hypervisor threads as
    :class:`GreenThreads`; in native mode vmops' default (plain threads)."""
    if not utils.concurrency_mode_threading():
        threads.install(GreenThreads())


class GreenThreads:
    """vmops' hypervisor thread model under eventlet's monkey patching.

    libvirt's event loop blocks in C: on a green thread it would hold every
    green thread (nova-compute hung opening the embedded libvirt), so it
    runs on a native one (``eventlet.patcher.original("threading")``). Its
    events go to vmops' dispatcher, a green thread, through
    :class:`GreenHandoff`."""

    def start_native(self, target: Callable[[], None], name: str) -> None:
        from eventlet import patcher

        native = patcher.original("threading")
        native.Thread(target=target, name=name, daemon=True).start()

    def handoff(self) -> GreenHandoff:
        return GreenHandoff()


class GreenHandoff:
    """A queue from native threads to green ones, as Nova's libvirt host
    (``nova/virt/libvirt/host.py``) hands libvirt's events to the hub: a
    native ``queue.Queue`` (its lock is a real one, safe on both kinds of
    thread), and a pipe written once per item, which a waiting green
    thread watches through the hub, so a wait blocks that green thread
    only."""

    def __init__(self) -> None:
        from eventlet import patcher

        self._queue = patcher.original("queue").Queue()
        self._empty = patcher.original("queue").Empty
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)

    def put(self, item: object) -> None:
        """On any thread: never blocks (a full pipe already wakes the reader)."""
        self._queue.put(item)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"\0")

    def get(self) -> Any:
        """On a green thread: the next item, waiting for it in the hub."""
        from eventlet import hubs

        while True:
            try:
                return self._queue.get_nowait()
            except self._empty:
                pass
            # An item put after the check above has written to the pipe.
            hubs.trampoline(self._wake_read, read=True)
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_read, 4096)


_VIRTIO_DEVICE = re.compile(r"^(/dev/)?vd[b-z]$")


def _cinder_volume_id(connection_info: dict[str, Any]) -> str:
    """The Cinder volume's id: Nova puts it in ``serial`` (and os-brick's
    data has it as ``volume_id``)."""
    data = connection_info.get("data") or {}
    volume_id = connection_info.get("serial") or data.get("volume_id")
    if not volume_id:
        raise exception.InvalidBDM(message="Cinder's connection_info names no volume "
                                   "(no serial, no data.volume_id)")
    return str(volume_id)


def _iscsi_target(connection_info: dict[str, Any]) -> tuple[str, str, bytes | None]:
    """(vmops' iSCSI URL, CHAP user, CHAP password) of Cinder's iSCSI
    connection_info: ``target_portal`` (host:port, [v6]:port), ``target_iqn``,
    ``target_lun``, ``auth_method`` CHAP with ``auth_username`` and
    ``auth_password``. Other volume types are refused."""
    kind = connection_info.get("driver_volume_type")
    if kind != "iscsi":
        raise exception.VolumeDriverNotFound(
            driver_type=f"{kind} (vmops' Nova driver attaches iscsi volumes only)")
    data = connection_info.get("data") or {}
    missing = [k for k in ("target_portal", "target_iqn") if not data.get(k)]
    if missing:
        raise exception.InvalidBDM(message="Cinder's iscsi connection_info lacks "
                                   + ", ".join(missing))
    url = f"iscsi://{data['target_portal']}/{data['target_iqn']}/{data.get('target_lun', 0)}"
    method = str(data.get("auth_method") or "").upper()
    if method and method != "CHAP":
        raise exception.VolumeAttachFailed(volume_id=_cinder_volume_id(connection_info),
                                           reason=f"iSCSI auth_method {method}: vmops "
                                           "logs in with CHAP or none")
    if method != "CHAP":
        return url, "", None
    return url, str(data.get("auth_username") or ""), \
        str(data.get("auth_password") or "").encode()


def _single_mac(network_info: Any, instance_uuid: str) -> str | None:
    """The MAC of Nova's one VIF, if any. vmops gives a guest one NIC; more
    are refused rather than silently dropped."""
    vifs = list(network_info or ())
    if len(vifs) > 1:
        raise exception.InstanceDeployFailure(
            reason=f"vmops' Nova driver gives a guest one NIC; Nova asked for {len(vifs)}",
            instance_id=instance_uuid)
    return str(vifs[0]["address"]) if vifs else None


def _user_data(instance: Any) -> bytes | None:
    """Nova keeps user data base64-encoded."""
    return base64.b64decode(instance.user_data) if instance.user_data else None


def _bytes(data: str | bytes) -> bytes:
    return data if isinstance(data, bytes) else data.encode()

