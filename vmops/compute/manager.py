"""The verbs: spawn, destroy and the power operations, with locking and rollback.

Hypervisor-agnostic: talks to a :class:`~vmops.hypervisor.base.Hypervisor`,
the disk and config-drive packages, and the console capture. Every state
change is written to the store as it happens.
"""

from __future__ import annotations

import base64
import contextvars
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmops import configdrive, console, serial_pipes
from vmops.compute import (
    boot_volume,
    crash_points,
    flavor_access,
    server_volumes,
    services,
    states,
    timings,
)
from vmops.compute.actions import ActionLog
from vmops.compute.names import (
    check_display_name,
    check_mac,
    generate_mac,
    hostname_of,
)
from vmops.compute.quotas import Quotas
from vmops.compute.server_groups import ServerGroups
from vmops.compute.tasks import TaskLocks
from vmops.compute.timings import Timings
from vmops.config import Settings
from vmops.console.api import ConsoleCapture
from vmops.errors import (
    Conflict,
    HostNotReady,
    HypervisorError,
    InstanceBusy,
    InstanceNotFound,
    Invalid,
    InvalidState,
    VmopsError,
    storage_full,
)
from vmops.hypervisor.base import (
    ACTIVE_STATES,
    Accel,
    DiskBus,
    DiskDevice,
    DiskSpec,
    DomainSpec,
    Hypervisor,
    LifecycleEvent,
    NicSpec,
    PowerState,
)
from vmops.network.manager import USER_NETWORK, Network
from vmops.network.model import NicMode
from vmops.store import (
    DEFAULT_GROUP,
    DiskRecord,
    Flavor,
    Image,
    Instance,
    InstanceFlavor,
    Port,
    Store,
)
from vmops.volumes import records as volume_records

if TYPE_CHECKING:
    from vmops.disks.cache import ImageCache

log = logging.getLogger(__name__)

GIB = 1024**3
DOMAIN_PREFIX = "vmops-"
MAC_DRAWS = 16  # generated MACs tried before the store is left to refuse a taken one


@dataclass(frozen=True)
class SpawnRequest:
    name: str
    image: str
    flavor: str
    mac: str | None = None
    config_drive: bool = False
    user_data: bytes | None = None
    key_name: str | None = None
    # The key pair's public key as the caller has it (Nova's instance.key_data,
    # when vmops is Nova's compute driver): key_name then only names it and
    # is not looked up among vmops' key pairs.
    key_data: str | None = None
    files: tuple[tuple[str, bytes], ...] = ()
    properties: dict[str, str] = field(default_factory=dict)
    admin_password: str | None = field(default=None, repr=False)
    network: str | None = None  # "bridge" or "user"; None: the network_mode setting
    fixed_ip: str | None = None  # an address on the vmops network, else the first free
    security_groups: tuple[str, ...] = ()  # names or ids; none given: "default"
    project_id: str = ""  # who asks: the instance's owner
    user_id: str = ""
    description: str | None = None
    access_ipv4: str = ""
    access_ipv6: str = ""
    tags: tuple[str, ...] = ()
    reservation_id: str = ""  # several servers of one request share it
    launch_index: int = 0
    disk_config: str = "MANUAL"
    server_group: str | None = None  # os:scheduler_hints' group: the id of one
    # The root disk as a volume (boot from volume); None: a local root disk.
    # A new volume is made from ``image``; an existing one needs no image.
    boot_volume: boot_volume.BootVolume | None = None
    # Other volumes it is created with, attached after its own disks.
    extra_volumes: tuple[server_volumes.ExtraVolume, ...] = ()
    # The instance's id as the caller chose it (Nova's instance uuid, when
    # vmops is Nova's compute driver); None: a new random one.
    instance_id: str | None = None
    # vmops:start false: define the domain only; the server ends SHUTOFF.
    start: bool = True


class Compute:
    def __init__(self, settings: Settings, store: Store, hypervisor: Hypervisor,
                 accel: Accel, host_problems: Callable[[], list[str]],
                 capture: ConsoleCapture = console, network: Network | None = None) -> None:
        self.settings = settings
        # The console capture: the vmops.console module, or
        # vmops.console.fake.FakeConsole in tests that run no QEMU.
        self.console = capture
        self.store = store
        # The vmops network; None (unit tests) or disabled: user-mode NICs only.
        self.network = network
        self.hv = hypervisor
        self.accel = accel
        self._host_problems = host_problems
        self.tasks = TaskLocks()
        self.background_actions = False  # the service sets it: actions answer at once
        # Called with (verb, result, seconds) when an operation ends.
        self.operation_observers: list[Callable[[str, str, float], None]] = []
        # Called with each hypervisor lifecycle event of an instance vmops
        # has a record of, once the record is updated (Nova's driver passes
        # them on to Nova), on the thread that delivered the event.
        self.lifecycle_observers: list[Callable[[LifecycleEvent], None]] = []
        self._state_changed = threading.Condition()
        # Nova's smaller APIs: limits each project keeps to, server groups,
        # and the record of every action (vmops/compute/{quotas,...}.py).
        self.quotas = Quotas(store, settings)
        self.server_groups = ServerGroups(store, self.quotas)
        self.actions = ActionLog(store)
        # Instances deleted while they build: their spawn stops at its next step.
        self._cancelled: set[str] = set()
        # Each instance's last verb's step timings (vmops/compute/timings.py),
        # in memory only: a restart forgets them.
        self.last_timings: dict[str, timings.Finished] = {}
        hypervisor.on_lifecycle_event(self._on_lifecycle_event)

    # -- lookups -------------------------------------------------------------
    def instance(self, ref: str) -> Instance:
        return self.store.instance(ref)

    def instance_dir(self, inst: Instance) -> Path:
        return self.settings.instances_dir / inst.id

    def console_socket(self, inst: Instance) -> Path:
        return self.settings.run_dir / f"{inst.id}.sock"

    # -- spawn ---------------------------------------------------------------
    def create(self, req: SpawnRequest, background: bool = True) -> Instance:
        """Validate, record, then spawn (in a thread unless background=False)."""
        started = time.monotonic()
        timed = Timings("spawn", crash_points.SPAWN_STEPS)
        try:
            inst, image, no_host, extras = self._record_spawn(req)
        except VmopsError as exc:
            self._ended("spawn", started, exc)
            raise
        self.actions.begin(inst, "spawn")
        if no_host is not None:
            return self._no_valid_host(inst, no_host, started)
        size_gb = req.boot_volume.size_gb if req.boot_volume else 0
        args = (inst, image, req.admin_password, started, size_gb, timed, extras)
        if not background:
            self._spawn(*args)
            return self.store.instance(inst.id)
        threading.Thread(target=self._spawn, args=args, name=f"spawn-{inst.name}",
                         daemon=True).start()
        return inst

    def _no_valid_host(self, inst: Instance, reason: str, started: float) -> Instance:
        """Nova's scheduler found no host (an anti-affinity group whose member
        is here already): the server is recorded in ERROR, nothing is built."""
        failure = VmopsError(reason)
        try:
            # Nothing was built; a boot volume it took is available again.
            boot_volume.release(self.store, inst, rollback=True)
            self._record_error(inst, reason, [], disks=())
        finally:
            self.actions.end(inst.id, failure)
            self._ended("spawn", started, failure)
            self.tasks.release(inst.id)
            self._notify()
        return self.store.instance(inst.id)

    def _unused_mac(self) -> str:
        """A generated MAC that no port has yet. Drawn from QEMU's prefix's
        2^24 addresses, two ports meet often enough to matter (about 3 % of
        hosts with 1,000 ports see one), and the store would refuse the
        second spawn with AddressInUse: so a drawn MAC already in use is
        drawn again. (Another spawn drawing the same one at the same moment
        is still refused by the store.)"""
        mac = generate_mac()
        for _ in range(MAC_DRAWS - 1):
            if not self.store.mac_in_use(mac):
                break
            mac = generate_mac()
        return mac

    def _record_spawn(self, req: SpawnRequest) -> tuple[Instance, Image | None, str | None,
                                                        list[server_volumes.Planned]]:
        """Everything that can be refused is checked before the record is
        written, so a refused spawn leaves nothing behind. The image is None
        for an existing boot volume. The third value says why the server
        gets no host (it is then recorded in ERROR); the fourth is its other
        volumes (the existing ones claimed already)."""
        problems = self._host_problems()
        if problems:
            raise HostNotReady(reason="; ".join(problems))
        check_display_name(req.name)
        flavor = self.store.flavor(req.flavor)
        boot = req.boot_volume
        image = None if boot and boot.volume else self._active_image(req.image)
        mac = check_mac(req.mac) if req.mac else self._unused_mac()
        from vmops.compute import spawn as spawn_steps

        volume = None
        if boot is not None:  # the flavor's root disk is not used
            volume = boot_volume.check(self.store, self.settings.volumes_dir, boot, image,
                                       req.project_id)
        elif image is not None:
            spawn_steps.check_root_fits(flavor, image)
        use_drive = req.config_drive or self.settings.force_config_drive
        instance_id = self._new_instance_id(req.instance_id)
        # Checked with or without a drive: the properties, files and key are
        # recorded, shown by the API and may go on a drive rebuilt later.
        self.quotas.check_injected_files(req.project_id, req.files)
        self.quotas.check_metadata(req.project_id, len(req.properties))
        spawn_steps.validate_config_drive(self.settings, self.store, req, instance_id, mac)
        ports, group_ids = self._plan_nics(req, instance_id, mac)
        hostname = hostname_of(req.name, instance_id)
        extras = server_volumes.plan(
            self.store, self.settings.volumes_dir, req.extra_volumes, req.project_id,
            spawn_steps.own_disk_count(self.settings, flavor, use_drive),
            volume.id if volume is not None else "")
        server_volumes.check_quota(self.quotas, req.project_id, boot.size_gb if boot is not None
                                   and volume is None else 0, extras)
        if volume is not None:  # taken now: no other spawn or attach gets it
            volume = boot_volume.claim(self.store, volume, instance_id, req.name)
        try:
            server_volumes.claim_existing(self.store, extras, instance_id, req.name)
        except BaseException:
            if volume is not None:
                volume_records.VolumeRecords(self.store).release(volume.id)
            raise
        # Made before the quota lock, which every spawn at once waits for
        # (issue #17); its domain name is chosen holding it.
        record = self._new_record(req, instance_id, hostname, flavor, image, mac, use_drive,
                                  volume.id if volume else "")
        try:
            with self.quotas.lock:  # checked and recorded at once: no two take the last unit
                self.quotas.check_servers(req.project_id, flavor, user_id=req.user_id)
                # Nova's scheduler: no host while nova-compute is disabled (os-services).
                no_host = services.no_host(self.store) or (
                    self.server_groups.check_join(req.server_group, req.project_id)
                    if req.server_group else None)
                record = replace(record, domain_name=self._domain_name(hostname, instance_id))
                inst = self.store.add_instance(
                    record, ports=ports, group_ids=group_ids,
                    choose_ip=self.network.choose_ip if self.network and self.network.enabled
                    else None)
                if req.server_group:
                    self.server_groups.join(req.server_group, inst.id)
        except BaseException:
            if volume is not None:
                volume_records.VolumeRecords(self.store).release(volume.id)
            server_volumes.release_existing(self.store, extras)
            raise
        if server_volumes.deleted_on_termination(extras):
            inst = self.store.update_instance(
                inst, volumes_deleted_on_termination=server_volumes.deleted_on_termination(
                    extras))
        if image is not None:
            self.store.update_image(image)  # last used now: prune ages images by it
        self.tasks.acquire(inst.id, inst.name, states.SPAWNING)
        return inst, image, no_host, extras

    def _new_instance_id(self, given: str | None) -> str:
        """A new random id, or ``given`` once it is known to be a UUID in its
        canonical form (it becomes the libvirt domain's UUID) that no
        instance has yet."""
        if given is None:
            return str(uuidlib.uuid4())
        try:
            canonical = str(uuidlib.UUID(given))
        except (ValueError, TypeError):
            raise Invalid(reason=f"instance id {given!r} is not a UUID") from None
        if canonical != given:
            raise Invalid(reason=f"instance id {given!r} is not in the canonical form of a "
                          f"UUID ({canonical})")
        if any(inst.id == given for inst in self.store.instances()):
            raise Conflict(reason=f"an instance with id {given} already exists")
        return given

    def _new_record(self, req: SpawnRequest, instance_id: str, hostname: str, flavor: Flavor,
                    image: Image | None, mac: str, use_drive: bool,
                    boot_volume_id: str) -> Instance:
        """The new server's record, not written yet."""
        from vmops.compute import spawn as spawn_steps

        # A volume-backed server has no image of its own (Nova's image_ref '').
        shown_image = None if req.boot_volume else image
        return Instance(
            id=instance_id, name=req.name, hostname=hostname,
            project_id=req.project_id, user_id=req.user_id, description=req.description,
            access_ipv4=req.access_ipv4, access_ipv6=req.access_ipv6, tags=req.tags,
            reservation_id=req.reservation_id, launch_index=req.launch_index,
            disk_config=req.disk_config,
            vm_state=states.BUILDING,
            task_state=states.SPAWNING, power_state=PowerState.NOSTATE.value,
            flavor_id=flavor.id, image_id=shown_image.id if shown_image else "",
            flavor=InstanceFlavor.of(flavor, flavor_access.extra_specs(self.store, flavor.id)),
            image_name=shown_image.name if shown_image else "", macs=(mac,),
            config_drive=use_drive, key_name=req.key_name,
            key_data=spawn_steps.public_key(self.store, req),
            properties=dict(req.properties),
            user_data=base64.b64encode(req.user_data).decode() if req.user_data else None,
            injected_files=tuple((p, base64.b64encode(c).decode()) for p, c in req.files),
            desired_running=req.start, boot_volume_id=boot_volume_id,
            delete_on_termination=bool(req.boot_volume
                                       and req.boot_volume.delete_on_termination))

    def _domain_name(self, hostname: str, instance_id: str) -> str:
        """``vmops-<hostname>``, or with the id when another domain has that name."""
        name = DOMAIN_PREFIX + hostname
        taken = self.store.domain_name_taken(name, DOMAIN_PREFIX)
        return name if not taken else f"{DOMAIN_PREFIX}{instance_id}"

    def _plan_nics(self, req: SpawnRequest, instance_id: str,
                   mac: str) -> tuple[list[Port], list[str]]:
        """The instance's port records and security groups, checked."""
        bridged = self.network is not None and self.network.enabled
        if req.network is None:
            mode = NicMode(self.settings.effective_network_mode)
            if mode is NicMode.BRIDGE and not bridged:
                mode = NicMode.USER  # auto as root, but the network is off
        else:
            try:
                mode = NicMode(req.network)
            except ValueError:
                raise Invalid(reason=f"network {req.network!r}: bridge (the vmops network) "
                              "or user (QEMU user-mode)") from None
        if mode is NicMode.USER:
            if req.fixed_ip or req.security_groups:
                raise Invalid(reason="a fixed IP and security groups need the vmops network "
                              "(network bridge), not user-mode networking")
            return [Port(str(uuidlib.uuid4()), instance_id, 0, mode.value, USER_NETWORK,
                         mac)], []
        if self.network is None:
            raise Invalid(reason="the vmops network is not available here")
        ports = self.network.new_ports(instance_id, mode, [mac], req.fixed_ip)
        names = req.security_groups or (DEFAULT_GROUP,)
        group_ids = list(dict.fromkeys(self.store.security_group(n).id for n in names))
        return ports, group_ids

    def nics(self, inst: Instance) -> list[Port]:
        """The instance's NICs; records from before ports existed are user-mode."""
        ports = self.store.ports(inst.id)
        if ports or not inst.macs:
            return ports
        return [Port("", inst.id, n, NicMode.USER.value, USER_NETWORK, mac)
                for n, mac in enumerate(inst.macs)]

    def drive_nics(self, inst: Instance) -> list[configdrive.Nic]:
        """The NICs the instance's config drive describes."""
        from vmops.compute import spawn as spawn_steps

        return spawn_steps.drive_nics(self.nics(inst), self.network)

    def _active_image(self, ref: str) -> Image:
        image = self.store.image(ref)
        if image.status != "active":
            why = f"import failed: {image.fault}" if image.status == "error" \
                else "still importing"
            raise InvalidState(action="spawn from", instance=f"image {image.name}",
                               state=f"{image.status} ({why})")
        return image

    def _spawn(self, inst: Instance, image: Image | None, admin_password: str | None,
               started: float, boot_volume_gb: int = 0, timed: Timings | None = None,
               extras: list[server_volumes.Planned] | None = None) -> None:
        """``boot_volume_gb``: the root disk is a new volume of that size,
        made from ``image``; ``extras``: its other volumes (new ones are made)."""
        timed = timed or Timings("spawn", crash_points.SPAWN_STEPS)
        with timings.active(timed):
            self._spawn_timed(inst, image, admin_password, started, boot_volume_gb, timed,
                              extras or [])

    def _spawn_timed(self, inst: Instance, image: Image | None, admin_password: str | None,
                     started: float, boot_volume_gb: int, timed: Timings,
                     extras: list[server_volumes.Planned]) -> None:
        from vmops.compute import spawn as spawn_steps

        failure: Exception | None = None
        removed = False  # deleted while building: the record is gone
        try:
            self._spawn_step(inst, "after-record")
            # Watched by the state directory's console process (a request of a
            # few ms; the first spawn after it exited starts it: an interpreter).
            if inst.desired_running:  # vmops:start false: no guest, no capture
                self._start_capture(inst)
            self._spawn_step(inst, "after-capture")
            if self.network is not None and any(
                    p.mode == NicMode.BRIDGE for p in self.store.ports(inst.id)):
                self.network.apply()  # DHCP knows the MAC, the rules the tap, before boot
            if boot_volume_gb and image is not None:
                inst = boot_volume.make(self.store, self.settings.volumes_dir, inst, image,
                                        boot_volume_gb)
            inst = server_volumes.make_new(self.store, self.settings.volumes_dir, inst, extras)
            local_root = None if inst.boot_volume_id else image
            disks = spawn_steps.create_disks(self.settings, inst, local_root, admin_password,
                                             self.instance_dir(inst), self.drive_nics(inst))
            inst = self.store.update_instance(inst, disks=tuple(disks))
            self._spawn_step(inst, "after-disks")
            self.hv.define(self.domain_spec(inst))
            server_volumes.attached(self.store, inst)  # the boot volume's and the others
            self.store.update_instance(inst, power_state=PowerState.SHUTOFF.value)
            self._spawn_step(inst, "after-define")
            if inst.desired_running:
                self._boot(inst)
            self._spawn_step(inst, "after-boot")
            self.tasks.finishing(inst.id)  # the record below ends the task
            running = inst.desired_running
            self.store.update_instance(
                inst, vm_state=states.ACTIVE if running else states.STOPPED, task_state=None,
                launched_at=time.time(),
                power_state=(PowerState.RUNNING if running else PowerState.SHUTOFF).value)
        except _SpawnCancelled:
            timed.failed()
            log.info("%s was deleted while it was building; removing it", inst.name)
            try:
                self._remove_or_record_error(inst, "destroy (deleted while building)")
                removed = True
            except VmopsError as exc:
                failure = exc  # kept in ERROR, saying what is left
        except Exception as exc:  # noqa: BLE001 - any failure rolls the spawn back
            failure = exc
            timed.failed()
            log.exception("spawn of %s failed", inst.name)
            self._record_error(inst, _fault_of(exc), self._teardown(inst, rollback=True),
                               disks=())
        finally:
            self._keep_timings(inst, timed, gone=removed)
            self.actions.end(inst.id, failure)
            self._ended("spawn", started, failure)
            self.tasks.release(inst.id)
            self._notify()

    def _keep_timings(self, inst: Instance, timed: Timings, gone: bool = False) -> None:
        """Keep the verb's timings with the instance (while it exists) and log
        them. ``gone``: the verb removed the record (a spawn deleted while it
        built): nothing would ever drop an entry kept for it."""
        done = timed.finish()
        if gone or (done["verb"] == "destroy" and done["result"] == "ok"):
            self.last_timings.pop(inst.id, None)  # the instance is gone
        else:
            self.last_timings[inst.id] = done
        log.info("timings: %s of %s: %s", timed.verb, inst.name, timed.summary())

    def _spawn_step(self, inst: Instance, step: str) -> None:
        """A step of spawn: a crash point, and where a delete stops the build."""
        crash_points.reached("spawn", step)
        if inst.id in self._cancelled:
            raise _SpawnCancelled(inst.id)

    def domain_spec(self, inst: Instance) -> DomainSpec:
        flavor = inst.flavor
        return DomainSpec(
            uuid=inst.id, name=inst.domain_name or DOMAIN_PREFIX + inst.name,
            memory_mib=flavor.ram_mib,
            vcpus=flavor.vcpus,
            disks=self._disk_specs(inst),
            nics=tuple(self._nic_spec(p) for p in self.nics(inst)),
            console_socket=self.console_socket(inst), accel=self.accel,
            dynamic_memory_ratio=self.settings.dynamic_memory_ratio,
            limit_cpu_features=self.settings.limit_cpu_features,
            metadata={"name": inst.name, "flavor": flavor.name,
                      "image": inst.image_name})

    def _disk_specs(self, inst: Instance) -> tuple[DiskSpec, ...]:
        if inst.rescue_image_id:  # the rescue disk first, the instance's own root second
            from vmops.compute import rescue as rescue_steps

            return tuple(_disk_spec(d) for d in rescue_steps.disks(self, inst))
        volumes = volume_records.disk_specs(self.store, inst.id)
        # A root volume (vda) first: the firmware boots the first disk.
        root = tuple(v for v in volumes if v.target == boot_volume.ROOT_DEVICE)
        return root + tuple(_disk_spec(d) for d in inst.disks) \
            + tuple(v for v in volumes if v.target != boot_volume.ROOT_DEVICE)

    def _nic_spec(self, port: Port) -> NicSpec:
        if port.mode == NicMode.BRIDGE and self.network is not None:
            return NicSpec(mac=port.mac, kind="bridge", source=self.network.plan.bridge,
                           target=port.tap)
        return NicSpec(mac=port.mac)

    def _boot(self, inst: Instance, keep_memory: bool = False) -> None:
        """Start QEMU paused, wait for the console capture, then run the vCPUs,
        so the log holds the guest's output from its very first byte. If the
        capture does not connect, QEMU is powered off, or with
        ``keep_memory`` (a resume: QEMU restored the saved memory and the
        image is gone) the memory is saved again, so the instance stays
        suspended with the fault and a later resume loses nothing.

        On a serial port of FIFOs (``serial_pipes``) the guest's first bytes
        would wait in the pipe anyway, and the console process may not have
        seen the last QEMU end (the same FIFOs then carry on): any
        connection will do. A socket's connection must be to this QEMU."""
        log_dir = self._start_capture(inst)
        if serial_pipes.exist(self.console_socket(inst)):
            generation = -1
        else:
            _, generation = self.console.capture_generation(log_dir)
        self.hv.start(inst.id, paused=True)
        timings.part("start-paused")
        self.console.poke_capture(log_dir)
        try:
            self.console.wait_connected(log_dir, generation, timeout=30.0)
        except VmopsError:
            # Raise the capture's error, not one from saving or powering off.
            if not keep_memory or _best_effort(
                    "save the memory again", inst, lambda: self.hv.suspend(inst.id)):
                _best_effort("power off", inst, lambda: self.hv.power_off(inst.id))
            raise
        timings.part("capture-connect")
        self.hv.unpause(inst.id)
        timings.part("resume-vcpus")

    def _start_capture(self, inst: Instance) -> Path:
        """Start the instance's console capture, if not running; its log dir."""
        log_dir = ensure_dir(self.instance_dir(inst))
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        self.console.start_capture(self.console_socket(inst), log_dir,
                                   self.settings.console_log_max_bytes)
        return log_dir

    # -- destroy -------------------------------------------------------------
    def delete(self, ref: str) -> None:
        """Nova's delete: destroy now or, while the instance builds, stop the
        build at its next step and destroy it then (in the background; the
        record says deleting meanwhile, so a restart finishes the job)."""
        inst = self.store.instance(ref)
        if self.tasks.current(inst.id) != states.SPAWNING:
            self.destroy(inst.id)
            return
        self._cancelled.add(inst.id)
        self.store.update_instance(inst, task_state=states.DELETING)
        # As the request that asked, so the delete action carries its id.
        threading.Thread(target=contextvars.copy_context().run,
                         args=(self._destroy_after_build, inst.id),
                         name=f"delete-{inst.name}", daemon=True).start()

    def _destroy_after_build(self, instance_id: str) -> None:
        try:
            while not self.wait_idle(instance_id, 60.0):
                log.info("%s: still waiting for its build to stop", instance_id)
            self.destroy(instance_id)
        except Exception:  # noqa: BLE001 - recorded on the instance; logged here
            log.exception("%s: delete after build failed", instance_id)
        finally:
            self._cancelled.discard(instance_id)

    def destroy(self, ref: str) -> None:
        """Idempotent: a missing instance is not an error, and nothing is left."""
        try:
            inst = self.store.instance(ref)
        except InstanceNotFound:
            return
        started = time.monotonic()
        timed = Timings("destroy", crash_points.DESTROY_STEPS)
        try:
            with self.tasks.hold(inst.id, inst.name, states.DELETING), timings.active(timed):
                self.actions.begin(inst, "destroy")
                inst = self._mark_deleting(inst)
                crash_points.reached("destroy", "after-mark")
                self._remove_or_record_error(inst, "destroy")
                self._keep_timings(inst, timed)
                self.actions.end(inst.id)
                self._ended("destroy", started)
        except Exception as exc:
            if not isinstance(exc, InstanceBusy):  # refused: it never began
                timed.failed()
                self._keep_timings(inst, timed)
                # Refused, the open action is the busy verb's, not the delete's.
                self.actions.end(inst.id, exc)
            self._ended("destroy", started, exc)
            raise
        finally:
            self._notify()

    def _mark_deleting(self, inst: Instance) -> Instance:
        """Record that destroy has begun, so a restart finishes it. On a full
        disk that write fails, and destroy, which frees space, must not: it
        goes on unrecorded (the task lock still keeps other verbs out)."""
        try:
            return self.store.update_instance(inst, task_state=states.DELETING)
        except (OSError, sqlite3.Error) as exc:
            if storage_full(exc) is None:
                raise
            log.warning("%s: the disk is full, so destroy goes on without recording that "
                        "it began", inst.name)
            return inst

    def _remove_or_record_error(self, inst: Instance, verb: str) -> None:
        """Tear ``inst`` down and delete its record; if any step failed, keep
        the record (in ERROR, saying what is left) so destroy can be retried,
        and raise. A record is never dropped while its domain may remain."""
        failures = self._teardown(inst)
        if not failures:
            crash_points.reached("destroy", "after-teardown")
            self.store.delete_instance(inst.id)
            return
        fault = f"{verb} did not complete: {failures[0]}"
        self._record_error(inst, fault, failures[1:])
        raise HypervisorError(reason=f"{inst.name}: {fault}")

    def _teardown(self, inst: Instance, rollback: bool = False) -> list[str]:
        """Remove the domain, the capture process and every file of ``inst``.
        Its volumes are kept (available), but for its boot volume when a
        ``rollback`` of its spawn made it or it is to be deleted on
        termination (:func:`boot_volume.release`).

        Every step is tried even if one before it failed: a rollback that
        stops half-way leaves more behind; but the volumes and the serial
        port's FIFOs stay while the domain does (QEMU uses them). Returns
        what failed, in order (empty if everything is gone)."""
        failures: list[str] = []

        def step(what: str, action: Callable[[], object]) -> None:
            failure = _best_effort(what, inst, action)
            if failure is not None:
                failures.append(failure)

        def remove_domain() -> None:
            if self.hv.exists(inst.id):
                self.hv.power_off(inst.id)
                self.hv.undefine(inst.id)

        step("remove the domain", remove_domain)
        domain_gone = not failures
        if domain_gone:  # its volumes are free, their files kept
            # As recorded now: spawn may have made its boot volume since ``inst`` was read.
            step("release the instance's volumes",
                 lambda: boot_volume.release(self.store, self.store.instance(inst.id), rollback))
        step("stop the console capture",
             lambda: self.console.stop_capture(self.instance_dir(inst)))
        step("remove the instance's files", lambda: _remove_tree(self.instance_dir(inst)))
        if domain_gone:  # else kept: QEMU cannot start without them, and only define makes them
            step("remove the serial port's FIFOs (or socket)",
                 lambda: _remove_serial(self.console_socket(inst)))
        if self.network is not None:
            network = self.network
            step("release the instance's network (addresses, forwards, rules)",
                 lambda: network.release(inst))
        else:
            step("forget the instance's ports", lambda: self.store.release_network(inst.id))
        return failures

    def _record_error(self, inst: Instance, fault: str, cleanup_failures: list[str],
                      **changes: Any) -> None:
        """End ``inst`` in ERROR with ``fault`` (the first failure's reason);
        what the rollback could not undo is added after it."""
        self.tasks.finishing(inst.id)
        if cleanup_failures:
            fault += "; the rollback also failed to " + "; to ".join(cleanup_failures)
        self.end_record(inst, vm_state=states.ERROR, task_state=None,
                         power_state=PowerState.NOSTATE.value,
                         desired_running=False, fault=fault, **changes)

    def end_record(self, inst: Instance, **changes: Any) -> Instance:
        """Write the record that ends a task, or that puts back what a failed
        one changed (a resize's or a rescue's rollback). On a full disk the
        store's reserve is given up for it: an instance must not stay in a
        task, or half changed, because the record saying how it ended could
        not be written."""
        try:
            return self.store.update_instance(inst, **changes)
        except (OSError, sqlite3.Error) as exc:
            if storage_full(exc) is None or not self.store.release_reserve():
                raise
        return self.store.update_instance(inst, **changes)

    # -- power operations ----------------------------------------------------
    def _begin(self, ref: str, action: str, task: str, allowed: tuple[str, ...],
               check: Callable[[Instance], None] | None = None) -> Instance:
        inst = self.store.instance(ref)
        self.tasks.acquire(inst.id, inst.name, task)
        try:
            inst = self._refresh(inst)
            if inst.vm_state not in allowed:
                raise InvalidState(action=action, instance=inst.name,
                                   state=_describe(inst.vm_state))
            if check is not None:
                check(inst)  # the verb's own refusals, once the state allows it
            return self.store.update_instance(inst, task_state=task)
        except BaseException:
            self.tasks.release(inst.id)
            raise

    def _finish(self, inst: Instance, action: str, started: float,
                failure: Exception | None = None, timed: Timings | None = None,
                **changes: Any) -> Instance:
        """Record the outcome, then release the instance (in that order, so
        whoever sees the task end also sees its record and metrics).

        The record always leaves the task state: if the hypervisor cannot say
        what state the domain is in, the instance ends in ERROR with the first
        failure's reason (the next action refreshes it from the hypervisor)."""
        self.tasks.finishing(inst.id)  # a verb sent once the record says so waits
        try:
            try:
                power = self.hv.info(inst.id).state
            except Exception as exc:  # noqa: BLE001 - the record must leave the task
                log.exception("%s of %s: cannot read the domain's state", action, inst.name)
                first = changes.get("fault") or f"cannot read the domain's state: " \
                    f"{_fault_of(exc)}"
                return self.end_record(
                    inst, **{**changes, "task_state": None, "vm_state": states.ERROR,
                             "power_state": PowerState.NOSTATE.value, "fault": first})
            # The work may have ended a held state (resized, rescued), or kept it.
            now = self.store.instance(inst.id)
            held = now.vm_state
            if power is PowerState.SHUTOFF and now.power_state == PowerState.CRASHED.value \
                    and inst.power_state != PowerState.CRASHED.value:
                power = PowerState.CRASHED  # QEMU died during the task (its event said so)
            changes.setdefault("vm_state", states.vm_state_of(power, held))
            changes.setdefault("fault", "")
            return self.end_record(inst, task_state=None, power_state=power.value, **changes)
        finally:
            if timed is not None:
                self._keep_timings(inst, timed)
            self.actions.end(inst.id, failure)
            self._ended(action, started, failure)
            self.tasks.release(inst.id)
            self._notify()

    def waiting(self, seconds: float | None) -> AbstractContextManager[Waited | None]:
        """The API's ``vmops:wait=SECONDS``: the caller will wait up to
        ``seconds`` for the action it starts inside this block to end
        (None: it will not wait; nothing changes)."""
        return _waiting(seconds)

    def _run(self, ref: str, action: str, task: str, allowed: tuple[str, ...],
             work: Callable[[Instance], None],
             check: Callable[[Instance], None] | None = None, **changes: Any) -> Instance:
        """Check the state (and with ``check`` anything else the verb
        refuses) and take the instance (at once, so a refusal is immediate),
        then do ``work`` in this thread or, with ``self.background_actions``,
        in a new one (the API answers 202). A waited action of a quick verb
        (see :func:`_runs_inline`) is done in this thread all the same: the
        caller answers when it ends, so a thread of its own would only cost
        a hand-off and a wake-up."""
        started = time.monotonic()
        timed = Timings(action, crash_points.steps_of(action))
        try:
            inst = self._begin(ref, action, task, allowed, check)
        except VmopsError as exc:
            self._ended(action, started, exc)
            raise
        self.actions.begin(inst, action)
        args = (inst, action, started, work, changes, timed)
        if not self.background_actions:
            return self._work(*args, reraise=True)
        waited = _WAITED.get()
        if waited is not None and _runs_inline(action, waited):
            waited.ran = True
            try:
                # As its own thread would: a failure is the record's (ERROR,
                # the action's Error), not the request's.
                return self._work(*args)
            except Exception:  # noqa: BLE001 - as an uncaught exception in its thread
                log.exception("%s of %s: its end could not be recorded", action, inst.name)
                return inst
        threading.Thread(target=self._work, args=args, name=f"{task}-{inst.name}",
                         daemon=True).start()
        return inst

    def _work(self, inst: Instance, action: str, started: float,
              work: Callable[[Instance], None], changes: dict[str, Any],
              timed: Timings, reraise: bool = False) -> Instance:
        with timings.active(timed):
            try:
                crash_points.reached(action, "after-begin")
                work(inst)
                crash_points.reached(action, "after-work")
            except Exception as exc:
                timed.failed()
                log.exception("%s of %s failed", action, inst.name)
                inst = self._finish(inst, action, started, exc, timed, fault=_fault_of(exc))
                if reraise:
                    raise
                return inst
            return self._finish(inst, action, started, None, timed, **changes)

    def _ended(self, verb: str, started: float, failure: BaseException | None = None) -> None:
        """Tell the observers (metrics) an operation ended: ok, refused or error."""
        if failure is None:
            result = "ok"
        elif isinstance(failure, VmopsError) and failure.http_status < 500:
            result = "refused"
        else:
            result = "error"
        seconds = time.monotonic() - started
        for observer in self.operation_observers:
            try:
                observer(verb, result, seconds)
            except Exception:  # noqa: BLE001 - an observer must never break an operation
                log.exception("operation observer failed")

    def pause(self, ref: str) -> Instance:
        return self._run(ref, "pause", states.PAUSING, (states.ACTIVE,),
                         lambda i: self.hv.pause(i.id))

    def unpause(self, ref: str) -> Instance:
        return self._run(ref, "unpause", states.UNPAUSING, (states.PAUSED,),
                         lambda i: self.hv.unpause(i.id))

    def suspend(self, ref: str) -> Instance:
        return self._run(ref, "suspend", states.SUSPENDING, (states.ACTIVE, states.PAUSED),
                         lambda i: self.hv.suspend(i.id), desired_running=True)

    def resume(self, ref: str) -> Instance:
        return self._run(ref, "resume", states.RESUMING, (states.SUSPENDED,),
                         lambda inst: self._boot(inst, keep_memory=True),
                         desired_running=True)

    def start(self, ref: str) -> Instance:
        # A suspended instance is refused here: its memory would be restored
        # silently by libvirt, which is resume's job and says so.
        return self._run(ref, "start", states.POWERING_ON, (states.STOPPED,), self._boot,
                         desired_running=True)

    def stop(self, ref: str, timeout: float | None = None, hard: bool = False) -> Instance:
        wait = self.settings.shutdown_timeout if timeout is None else timeout

        def work(inst: Instance) -> None:
            if hard or not self._shutdown_gracefully(inst, wait):
                self.hv.power_off(inst.id)

        return self._run(ref, "stop", states.POWERING_OFF, (states.ACTIVE, states.PAUSED),
                         work, desired_running=False)

    def rebuild_config_drive(self, ref: str) -> Instance:
        """Write the config drive again from the record, while the guest is off
        (so it never sees the drive change under it)."""
        from vmops.compute import spawn as spawn_steps

        inst = self.store.instance(ref)
        if not inst.config_drive:
            raise Invalid(reason=f"instance {inst.name!r} has no config drive to rebuild")

        def work(inst: Instance) -> None:
            spawn_steps.write_config_drive(self.settings, inst, self.drive_nics(inst), None,
                                           self.instance_dir(inst))

        return self._run(ref, "rebuild-config-drive", states.REBUILDING_CONFIG_DRIVE,
                         (states.STOPPED,), work)

    # -- snapshot and rebuild --------------------------------------------------
    def snapshot(self, ref: str, image_name: str, cache: ImageCache,
                 properties: dict[str, str] | None = None, owner: str = "") -> Image:
        """Nova's createImage: the root disk, flattened, becomes image
        ``image_name`` (SAVING, then ACTIVE). Consistency and what the guest
        sees: :mod:`vmops.compute.snapshot`. A refused snapshot leaves no
        image; a failed one deletes it (as Nova does) and records the fault
        on the instance."""
        from vmops.compute import snapshot as snapshot_steps

        check_display_name(image_name)  # Nova's rule for names: printable, not padded
        inst = self.store.instance(ref)
        if inst.boot_volume_id:  # a remote root volume has no file here to copy
            boot_volume.check_snapshot(self.store, inst)
        image = self.store.add_image(Image(
            id=str(uuidlib.uuid4()), name=image_name, status="saving",
            source=f"snapshot of instance {inst.name}", instance_uuid=inst.id,
            login_user=self._login_user_of(inst), extra=dict(properties or {}),
            owner=owner or inst.project_id, visibility="private"))

        def work(inst: Instance) -> None:
            try:
                snapshot_steps.take(self.hv, self.store, inst, image, cache)
            except BaseException:
                self.store.delete_image(image.id)
                raise

        try:
            self._run(inst.id, "snapshot", states.IMAGE_SNAPSHOT,
                      (states.ACTIVE, states.STOPPED, states.PAUSED, states.SUSPENDED), work)
        except VmopsError:
            self.store.delete_image(image.id)  # refused (or failed): no image is left
            raise
        return image

    def _login_user_of(self, inst: Instance) -> str:
        """A snapshot runs the same guest: it keeps its image's login user."""
        try:
            return self.store.image(inst.image_id).login_user
        except VmopsError:
            return ""  # the image was deleted since

    def rebuild(self, ref: str, image_ref: str) -> Instance:
        """Nova's rebuild: a new root disk from ``image_ref``; the same uuid,
        name, MACs, addresses, flavor and metadata; a blank ephemeral disk and
        the config drive written again (see ``spawn.stage_disks``). Active or
        errored instances end running, stopped ones stopped (Nova stops them
        again). Refused, with nothing changed, if the flavor's root disk is
        smaller than the image."""
        from vmops.compute import spawn as spawn_steps

        inst = self.store.instance(ref)
        image = self._active_image(image_ref)
        if inst.boot_volume_id:  # its root volume is kept as it is (Nova before 2.93)
            boot_volume.check_rebuild(self.store, inst, image)
        else:
            spawn_steps.check_root_fits(spawn_steps.recorded_flavor(inst), image)

        def work(inst: Instance) -> None:
            boot = inst.vm_state != states.STOPPED
            inst_dir = self.instance_dir(inst)
            staged = spawn_steps.stage_disks(self.settings, inst,
                                             None if inst.boot_volume_id else image, inst_dir,
                                             self.drive_nics(inst))
            try:
                if self.hv.exists(inst.id) and not self._is_off(inst) and \
                        not self._shutdown_gracefully(inst, self.settings.shutdown_timeout):
                    self.hv.power_off(inst.id)
            except BaseException:
                spawn_steps.discard_staged(inst_dir)
                raise
            disks = spawn_steps.install_disks(inst, staged, inst_dir)
            shown = None if inst.boot_volume_id else image  # volume-backed: image ''
            inst = self.store.update_instance(inst, image_id=shown.id if shown else "",
                                              image_name=shown.name if shown else "",
                                              disks=disks, desired_running=boot)
            self.store.update_image(image)  # last used now: prune ages images by it
            self.hv.define(self.domain_spec(inst))
            if boot:
                self._boot(inst)
                self.store.update_instance(inst, launched_at=time.time())

        return self._run(inst.id, "rebuild", states.REBUILDING,
                         (states.ACTIVE, states.STOPPED, states.ERROR), work)

    # -- resize, rescue and crash dump ----------------------------------------
    def resize(self, ref: str, flavor_ref: str) -> Instance:
        """Nova's resize, on this host (:mod:`vmops.compute.resize`): the
        instance ends resized (VERIFY_RESIZE), running if it ran, until it
        is confirmed or reverted. Refused before anything changes for the
        same flavor or a disk that would shrink. A volume-backed instance
        keeps its root volume as it is (the flavor's root size does not apply)."""
        from vmops.compute import resize as resize_steps

        flavor = self.store.flavor(flavor_ref)
        snapshot = InstanceFlavor.of(flavor, flavor_access.extra_specs(self.store, flavor.id))
        return self._run(ref, "resize", states.RESIZE_PREP, (states.ACTIVE, states.STOPPED),
                         lambda inst: resize_steps.resize(self, inst, flavor, snapshot),
                         check=lambda inst: resize_steps.check(self, inst, flavor),
                         vm_state=states.RESIZED)

    def confirm_resize(self, ref: str) -> Instance:
        from vmops.compute import resize as resize_steps

        return self._run(ref, "confirm-resize", states.RESIZE_CONFIRMING, (states.RESIZED,),
                         lambda inst: resize_steps.confirm(self, inst))

    def revert_resize(self, ref: str) -> Instance:
        """The old flavor and the old disks, as they were; running if it ran."""
        from vmops.compute import resize as resize_steps

        return self._run(ref, "revert-resize", states.RESIZE_REVERTING, (states.RESIZED,),
                         lambda inst: resize_steps.roll_back(self, inst))

    def rescue(self, ref: str, image_ref: str | None = None,
               admin_password: str | None = None) -> Instance:
        """Nova's rescue (:mod:`vmops.compute.rescue`): boot from a disk made
        from ``image_ref`` (the instance's own image if None), the root disk
        attached second, untouched. Ends rescued (RESCUE)."""
        from vmops.compute import rescue as rescue_steps

        inst = self.store.instance(ref)
        if inst.boot_volume_id:  # Nova's words and status (400) before 2.87
            raise Invalid(reason="Cannot rescue a volume-backed instance")
        image = self._active_image(image_ref or inst.image_id)
        return self._run(inst.id, "rescue", states.RESCUING,
                         (states.ACTIVE, states.STOPPED, states.ERROR),
                         lambda inst: rescue_steps.rescue(self, inst, image, admin_password),
                         vm_state=states.RESCUED)

    def unrescue(self, ref: str) -> Instance:
        """Boot the instance from its own disk again; the rescue disk goes."""
        from vmops.compute import rescue as rescue_steps

        return self._run(ref, "unrescue", states.UNRESCUING, (states.RESCUED,),
                         lambda inst: rescue_steps.unrescue(self, inst))

    def trigger_crash_dump(self, ref: str) -> Instance:
        """Nova's trigger_crash_dump: an NMI to a running guest (libvirt's
        injectNMI); its kernel decides what to do (dump, panic, or log it).
        Nova's states; refused unless the guest runs (Nova's InstanceNotRunning)."""
        def running(inst: Instance) -> None:
            if not self.hv.exists(inst.id) or \
                    self.hv.info(inst.id).state not in (PowerState.RUNNING, PowerState.BLOCKED):
                raise InvalidState(action="trigger a crash dump of", instance=inst.name,
                                   state=f"not running ({inst.power_state})")

        return self._run(ref, "trigger-crash-dump", states.CRASH_DUMPING,
                         (states.ACTIVE, states.PAUSED, states.RESCUED, states.RESIZED,
                          states.ERROR), lambda inst: self.hv.inject_nmi(inst.id),
                         check=running)

    def power_down(self, inst: Instance) -> None:
        """Shut the guest down: the power button, then the plug after
        shutdown_timeout. Nothing if it is off or has no domain."""
        if self.hv.exists(inst.id) and not self._is_off(inst) and \
                not self._shutdown_gracefully(inst, self.settings.shutdown_timeout):
            self.hv.power_off(inst.id)

    def boot(self, inst: Instance) -> None:
        """Start the defined domain with its console captured from the first byte."""
        self._boot(inst)

    def guest_runs(self, inst: Instance) -> bool:
        """Whether ``inst``'s domain has a QEMU (running, paused, shutting down)."""
        return self.hv.exists(inst.id) and self.hv.info(inst.id).state in ACTIVE_STATES

    def _recover_change(self, inst: Instance) -> None:
        """After a restart: an interrupted resize, revert or confirm, rescue
        or unrescue is rolled back or finished (its module says which)."""
        from vmops.compute import rescue as rescue_steps
        from vmops.compute import resize as resize_steps

        try:
            if inst.task_state in states.RESIZE_TASKS | {states.RESIZE_CONFIRMING,
                                                         states.RESIZE_REVERTING}:
                resize_steps.recover(self, inst)
            elif inst.task_state in (states.RESCUING, states.UNRESCUING):
                rescue_steps.recover(self, inst)
        except Exception as exc:  # noqa: BLE001 - the record says so; recovery goes on
            log.exception("%s: could not recover from %s", inst.name, inst.task_state)
            self.store.update_instance(inst, fault=f"{inst.task_state} was interrupted by "
                                       f"a service restart and could not be undone: "
                                       f"{_fault_of(exc)}")

    def reboot(self, ref: str, hard: bool = False) -> Instance:
        """A hard reboot is allowed from every state Nova allows it from,
        suspended included: it boots the guest afresh (``_hard_reboot``)."""
        if hard:
            return self._run(ref, "hard-reboot", states.REBOOTING_HARD,
                             (states.ACTIVE, states.PAUSED, states.STOPPED, states.SUSPENDED,
                              states.ERROR),
                             self._hard_reboot, desired_running=True)

        def soft(inst: Instance) -> None:
            if self._shutdown_gracefully(inst, self.settings.wait_soft_reboot_seconds):
                self._boot(inst)
            else:
                log.warning("%s did not shut down in time; rebooting hard", inst.name)
                self._hard_reboot(inst)

        return self._run(ref, "reboot", states.REBOOTING, (states.ACTIVE,), soft,
                         desired_running=True)

    def _hard_reboot(self, inst: Instance) -> None:
        state = self.hv.info(inst.id).state
        if state is PowerState.SUSPENDED:
            # As Nova's libvirt driver: the saved memory is discarded and the
            # guest boots afresh (a start would restore it: that is resume's
            # job). Should the boot fail, the instance is stopped, not suspended.
            self.hv.discard_saved_memory(inst.id)
            timings.part("discard-saved-memory")
            state = PowerState.SHUTOFF
        if state in (PowerState.SHUTOFF, PowerState.CRASHED, PowerState.NOSTATE):
            self._boot(inst)
            return
        self.hv.reboot_hard(inst.id)
        if state is PowerState.PAUSED:
            self.hv.unpause(inst.id)

    def _shutdown_gracefully(self, inst: Instance, timeout: float) -> bool:
        """Press the power button every retry interval until the guest is off
        or ``timeout`` passes. True if it went down by itself."""
        if self.hv.info(inst.id).state is PowerState.PAUSED:
            return False  # a paused guest cannot see the button
        interval = float(self.settings.shutdown_retry_interval)
        deadline = time.monotonic() + timeout
        while True:
            if self._is_off(inst):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                self.hv.shutdown(inst.id)
            except InvalidState:
                if self._is_off(inst):  # it went off between the check and the press
                    return True
                raise
            if self._wait_off(inst, min(interval, remaining)):
                return True

    def _is_off(self, inst: Instance) -> bool:
        return self.hv.info(inst.id).state in (PowerState.SHUTOFF, PowerState.CRASHED)

    def _wait_off(self, inst: Instance, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._state_changed:
            while not self._is_off(inst):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                # Lifecycle events wake us; the short cap covers a missed event.
                self._state_changed.wait(min(remaining, 0.5))
        return True

    # -- state ---------------------------------------------------------------
    def _refresh(self, inst: Instance) -> Instance:
        """Bring the record in line with what the hypervisor reports."""
        if inst.vm_state in (states.BUILDING, states.ERROR) and not self.hv.exists(inst.id):
            return inst
        if not self.hv.exists(inst.id):
            return self.store.update_instance(
                inst, vm_state=states.ERROR, power_state=PowerState.NOSTATE.value,
                fault="the domain is missing from the hypervisor")
        power = self.hv.info(inst.id).state
        if power is PowerState.SHUTOFF and inst.power_state == PowerState.CRASHED.value:
            power = PowerState.CRASHED  # libvirt forgets why it stopped; the record knows
        vm_state = states.vm_state_of(power, inst.vm_state)
        if (vm_state, power.value) == (inst.vm_state, inst.power_state):
            return inst
        return self.store.update_instance(inst, vm_state=vm_state, power_state=power.value)

    def _on_lifecycle_event(self, event: LifecycleEvent) -> None:
        try:
            inst = self.store.instance(event.uuid)
        except InstanceNotFound:
            return
        changes: dict[str, Any] = {"power_state": event.state.value}
        if self.tasks.current(inst.id) is None and inst.vm_state != states.BUILDING:
            changes["vm_state"] = states.vm_state_of(event.state, inst.vm_state)
            if event.fault:
                # QEMU died or the guest crashed: it was meant to run, so
                # resume_guests_state_on_host_boot starts it again.
                log.warning("%s: %s", inst.name, event.fault)
                changes["fault"] = event.fault
            elif event.state in (PowerState.SHUTOFF, PowerState.CRASHED):
                changes["desired_running"] = False  # the guest stopped by itself
        if any(getattr(inst, key) != value for key, value in changes.items()):
            # Not when the record already says so (the verb that made the
            # change often writes its end first): a write fewer (#17).
            self.store.update_instance(inst, **changes)
        self._notify()
        for observer in list(self.lifecycle_observers):
            try:
                observer(event)
            except Exception:  # noqa: BLE001 - one observer must not stop the others
                log.exception("%s: lifecycle observer %r failed", inst.name, observer)

    def _notify(self) -> None:
        with self._state_changed:
            self._state_changed.notify_all()

    def wait_idle(self, instance_id: str, timeout: float) -> bool:
        """Block until no operation holds the instance; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._state_changed:
            while self.tasks.current(instance_id) is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._state_changed.wait(remaining)
        return True

    def live_info(self, inst: Instance) -> dict[str, Any]:
        if inst.vm_state == states.BUILDING or not self.hv.exists(inst.id):
            return {}
        info = self.hv.info(inst.id)
        return {"state": info.state.value, "max_memory_kib": info.max_memory_kib,
                "memory_kib": info.memory_kib, "vcpus": info.vcpus,
                "cpu_time_ns": info.cpu_time_ns}

    def console_log(self, ref: str, tail_lines: int | None = None) -> bytes:
        inst = self.store.instance(ref)
        data: bytes = self.console.read_log(self.instance_dir(inst), tail_lines=tail_lines)
        return data

    # -- console capture watch -------------------------------------------------
    def restart_dead_captures(self) -> list[str]:
        """Restart the capture process of every instance whose QEMU runs but
        whose capture is gone (killed); the new one marks the gap in the log.
        Returns the names of the instances whose capture was restarted."""
        restarted = []
        for inst in self.store.instances():
            if inst.power_state not in _CAPTURED_POWER_STATES:
                continue
            if self.console.capture_pid(self.instance_dir(inst)) is not None:
                continue
            try:
                # Held while restarting, so a destroy cannot remove the
                # instance between our check and the new process.
                self.tasks.acquire(inst.id, inst.name, "restarting-console-capture")
            except InstanceBusy:
                continue  # an operation is on it; its own steps see to the capture
            try:
                if self._restart_capture(inst):
                    restarted.append(inst.name)
            except Exception:  # noqa: BLE001 - the watch goes on for the others
                log.exception("%s: could not restart the console capture", inst.name)
            finally:
                self.tasks.release(inst.id)
        return restarted

    def _restart_capture(self, inst: Instance) -> bool:
        current = self.store.instance(inst.id)  # as it is now that we hold it
        if current.power_state not in _CAPTURED_POWER_STATES:
            return False
        log_dir = self.instance_dir(current)
        if self.console.capture_pid(log_dir) is not None:
            return False
        log.warning("%s: the console capture process is gone; restarting it", inst.name)
        self._start_capture(current)
        self.console.poke_capture(log_dir)  # QEMU serves the socket: connect now
        return True

    # -- recovery ------------------------------------------------------------
    def recover(self) -> list[str]:
        """Reconcile every record with the hypervisor after a service start.

        Returns the UUIDs of vmops' domains that have no record (left alone).
        """
        self.actions.end_interrupted()
        for inst in self.store.instances():
            try:
                self._recover_one(inst)
            except Exception:  # noqa: BLE001 - one instance must not stop the service
                log.exception("could not recover %s", inst.name)
        known = {i.id for i in self.store.instances()}
        orphans = sorted(set(self.hv.list_uuids()) - known)
        for orphan in orphans:
            log.warning("domain %s carries vmops' mark but has no record; left alone", orphan)
        return orphans

    def _recover_one(self, inst: Instance) -> None:
        if inst.task_state == states.DELETING:
            log.warning("%s: destroy was interrupted; finishing it", inst.name)
            self._remove_or_record_error(inst, "destroy (interrupted by a service restart)")
            return
        if inst.task_state == states.SPAWNING:
            log.warning("%s: spawn was interrupted; rolling it back", inst.name)
            self._record_error(inst, "spawn was interrupted by a service restart",
                               self._teardown(inst, rollback=True), disks=())
            return
        if inst.task_state == states.IMAGE_SNAPSHOT:
            from vmops.compute import snapshot as snapshot_steps

            snapshot_steps.recover(self.hv, inst)
        self._recover_change(inst)
        if inst.task_state is not None:
            inst = self.store.update_instance(inst, task_state=None)
        inst = self._refresh(inst)
        if inst.power_state in _CAPTURED_POWER_STATES:
            self._start_capture(inst)
        elif (inst.vm_state == states.STOPPED and inst.desired_running
              and self.settings.resume_guests_state_on_host_boot):
            log.info("%s was running before the host restarted; starting it", inst.name)
            self.start(inst.id)


# Power states in which QEMU serves the console socket, so a capture must run.
_CAPTURED_POWER_STATES = frozenset({PowerState.RUNNING.value, PowerState.PAUSED.value,
                                    PowerState.BLOCKED.value})


class _SpawnCancelled(Exception):
    """The instance was deleted while it built: roll the spawn back and
    remove the record."""


# Verbs whose work is one short hypervisor call (and, for a hard reboot of
# a guest that is off, a boot): run in the waiting request's own thread.
INLINE_VERBS = frozenset({"pause", "unpause", "hard-reboot"})
# ... when the caller waits at least this long (the CLI 60 s, the bench
# 300): such a verb takes milliseconds (libvirt gives up on a QEMU job it
# cannot start after 30 s). A shorter wait takes the action's own thread,
# so its answer (202) comes when the wait runs out, the action going on.
# One run in the request's thread that outlasts the wait (a hung QEMU) is
# answered the same 202, only once it has ended.
INLINE_MIN_WAIT_S = 30.0


@dataclass
class Waited:
    """A request waiting for the action it starts (``vmops:wait``)."""

    seconds: float
    deadline: float
    ran: bool = False  # the action ran to its end in the request's thread


_WAITED: contextvars.ContextVar[Waited | None] = contextvars.ContextVar(
    "vmops_waited", default=None)


@contextmanager
def _waiting(seconds: float | None) -> Iterator[Waited | None]:
    if seconds is None:
        yield None
        return
    waited = Waited(seconds, time.monotonic() + seconds)
    token = _WAITED.set(waited)
    try:
        yield waited
    finally:
        _WAITED.reset(token)


def _runs_inline(action: str, waited: Waited) -> bool:
    """Whether a waited ``action`` is done in the request's own thread: a
    quick verb, the first action of the request, a long enough wait."""
    return action in INLINE_VERBS and not waited.ran and waited.seconds >= INLINE_MIN_WAIT_S


def _fault_of(exc: BaseException) -> str:
    """The reason an instance's fault shows for ``exc`` (a full disk says so,
    not "OSError: [Errno 28]" or SQLite's words)."""
    exc = storage_full(exc) or exc
    return exc.message if isinstance(exc, VmopsError) else f"{type(exc).__name__}: {exc}"


def _best_effort(what: str, inst: Instance, action: Callable[[], object]) -> str | None:
    """Run one clean-up step; log a failure and return it as "what: why"."""
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - clean-up goes on past any failure
        log.exception("%s: could not %s", inst.name, what)
        return f"{what}: {_fault_of(exc)}"
    return None


def _remove_tree(path: Path) -> None:
    """Remove ``path`` and everything below it; a missing one is fine."""
    if path.exists() or path.is_symlink():
        shutil.rmtree(path)


def _remove_serial(path: Path) -> None:
    """The serial port of a domain: its FIFOs, or the socket of a domain
    from an older vmops."""
    serial_pipes.remove(path)
    path.unlink(missing_ok=True)


def _disk_spec(disk: DiskRecord) -> DiskSpec:
    cdrom = disk.device == "cdrom"
    return DiskSpec(path=Path(disk.path), format=disk.format, target=disk.target,
                    bus=DiskBus.IDE if cdrom else DiskBus.VIRTIO,
                    device=DiskDevice.CDROM if cdrom else DiskDevice.DISK,
                    readonly=disk.role == "config")


def _describe(vm_state: str) -> str:
    words: dict[str, str] = {states.STOPPED: "stopped", states.ACTIVE: "running"}
    return words.get(vm_state, vm_state)


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
