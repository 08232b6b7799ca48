"""The volume verbs: create, delete, extend, attach and detach, with their
state rules (Cinder's and Nova's), ordering and rollback.

Ordering, so that a crash never loses track of a disk:

- create: the record first (``creating``), then the file; a failure or a
  restart in between ends in ``error`` with no file left;
- attach: the attachment row first (``attaching``), then the disk into the
  domain (definition and running guest), then ``in-use``; a failed attach
  removes the row again;
- detach: ``detaching``, then the disk out of the guest (waiting for it to
  let go) and out of the definition, then the row goes (``available``); a
  guest that does not let go in time leaves the volume ``in-use`` with the
  reason as its fault, and the disk where it was;
- a service start (:meth:`Volumes.reconcile`) settles every volume caught
  in between by looking at what the domain has.

An instance's volumes are in every domain definition vmops writes for it
(the spec is made from the records), so they survive stop/start,
suspend/resume, rebuild and a service restart. Destroy powers the domain
off and undefines it, then releases its volumes (``available``, the files
kept); snapshot copies the root disk only.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from vmops.compute import crash_points, states
from vmops.compute.manager import Compute
from vmops.errors import (
    Conflict,
    Invalid,
    InvalidName,
    InvalidState,
    VmopsError,
    VolumeNotFound,
)
from vmops.hypervisor.base import DiskErrorEvent, LifecycleEvent, PowerState
from vmops.store import Instance
from vmops.volumes import pool, remote
from vmops.volumes.records import (
    Attachment,
    Volume,
    VolumeRecords,
    VolumeStatus,
    disk_of,
)

log = logging.getLogger(__name__)

GIB = pool.GIB
MAX_SIZE_GB = 65536
MAX_NAME_CHARS = 255
MAX_DESCRIPTION_CHARS = 255
DEVICE = re.compile(r"^(?:/dev/)?(vd[a-z])$")
# Where an instance may get a volume: Nova's states for attach and detach.
ATTACH_STATES = (states.ACTIVE, states.PAUSED, states.STOPPED)
ATTACHING_TASK = "attaching_volume"
# What a detach may start from: attached, or attached with a disk QEMU lost.
DETACHABLE = frozenset({VolumeStatus.IN_USE, VolumeStatus.ERROR})
# Lifecycle details of a new QEMU process, which opens every disk afresh.
REOPENED = frozenset({"started", "restored"})
DETACHING_TASK = "detaching_volume"
EXTENDING_TASK = "extending_volume"
# Where a test may make the process die (vmops/compute/crash_points.py), as
# "attach-volume:<step>" and "detach-volume:<step>".
ATTACH_STEPS = (
    "after-record",  # the attachment is recorded (attaching); the domain not yet asked
    "after-attach",  # the disk is in the domain; the record still says attaching
)
# The usage name of the libvirt secret holding a volume's CHAP password.
SECRET_USAGE_PREFIX = "vmops-volume-"
DETACH_STEPS = (
    "after-record",  # the record says detaching; the domain not yet asked
    "after-detach",  # the disk is out of the domain; the record still says detaching
)
# The target watch (:meth:`Volumes.check_targets`): the attached volumes it
# looks at, and the start of the fault it writes (how it knows its own).
WATCHED_PROTOCOLS = frozenset({"iscsi"})
WATCHED = frozenset({VolumeStatus.IN_USE, VolumeStatus.ERROR})
TARGET_LOST = "iSCSI target not answering: "
PORTAL_PROBE_TIMEOUT_S = 5.0


class Volumes:
    def __init__(self, compute: Compute) -> None:
        self.compute = compute
        self.store = compute.store
        self.records = VolumeRecords(compute.store)
        self.pool = compute.settings.volumes_dir
        # Volume id -> when its target was first found silent (monotonic s).
        self._silent_since: dict[str, float] = {}

    @property
    def background(self) -> bool:
        """Whether slow work runs in a thread (the service: the API answers 202)."""
        return self.compute.background_actions

    # -- lookups ---------------------------------------------------------------
    def volume(self, ref: str, project_id: str | None = None) -> Volume:
        return self.records.get(ref, project_id)

    def volumes(self, project_id: str | None = None) -> list[Volume]:
        return self.records.all(project_id)

    def attachment_of(self, volume_id: str) -> Attachment | None:
        return self.records.attachment_of(volume_id)

    def attached_to(self, instance_id: str) -> list[Attachment]:
        """An instance's attachments, by device (the server view's
        ``os-extended-volumes:volumes_attached``)."""
        return self.records.attachments(instance_id)

    # -- create, delete, extend --------------------------------------------------
    def create(self, name: str, size_gb: int, image_ref: str | None = None,
               fmt: str = "qcow2", description: str = "", project_id: str = "",
               user_id: str = "") -> Volume:
        """Record the volume (``creating``), then make its file, in a thread
        when :attr:`background`. Everything that can be refused is checked
        before the record is written."""
        _check_name(name)
        if len(description) > MAX_DESCRIPTION_CHARS:
            raise Invalid(reason=f"a description is at most {MAX_DESCRIPTION_CHARS} characters")
        _check_size(size_gb)
        pool.check_format(fmt)
        image = None
        if image_ref:
            image = self.store.image(image_ref)
            if image.status != "active":
                raise InvalidState(action="create a volume from", instance=f"image {image.name}",
                                   state=image.status)
            if image.virtual_size > size_gb * GIB:
                raise Invalid(reason=f"a volume of {size_gb} GiB cannot hold image "
                              f"{image.name!r}, whose disk is {image.virtual_size} bytes "
                              f"({-(-image.virtual_size // GIB)} GiB)")
        pool.check_fits(self.pool, size_gb * GIB, name)
        volume_id = str(uuidlib.uuid4())
        with self.compute.quotas.lock:  # checked and recorded at once
            self.compute.quotas.check_volumes(project_id, 1, size_gb)
            volume = self.records.add(Volume(
                id=volume_id, name=name, size_gb=size_gb, status=VolumeStatus.CREATING,
                format=fmt, path=str(pool.volume_path(self.pool, volume_id, fmt)),
                description=description, image_id=image.id if image else "",
                bootable=image is not None, project_id=project_id, user_id=user_id))

        def make() -> None:
            if image is None:
                pool.create_blank(Path(volume.path), fmt, size_gb * GIB)
            else:
                pool.create_from_image(Path(image.path), image.format, Path(volume.path), fmt,
                                       size_gb * GIB)

        return self._in_background(volume, "create", make, VolumeStatus.ERROR,
                                   status=VolumeStatus.AVAILABLE)

    def register_remote(self, name: str, url: str, chap_user: str = "",
                        chap_secret: bytes | None = None, description: str = "",
                        project_id: str = "", user_id: str = "",
                        counted: bool = True) -> Volume:
        """Record an NBD export or iSCSI LUN as an available volume, once the
        target has answered (``remote.probe``: the export or LUN exists; its
        size). A CHAP password goes into a libvirt secret first; the record
        names the secret by uuid. Nothing is made on the target.
        ``counted``: checked against the project's volume quota (False for
        Nova's driver: a Cinder volume is counted by Cinder's quota)."""
        _check_name(name)
        if len(description) > MAX_DESCRIPTION_CHARS:
            raise Invalid(reason=f"a description is at most {MAX_DESCRIPTION_CHARS} characters")
        source = (remote.parse_nbd(url) if url.startswith("nbd") else remote.parse_iscsi(url))
        remote.check_chap(source, chap_user, chap_secret)
        self._check_unregistered(source.url)
        source = replace(source, auth_user=chap_user)
        size_bytes = remote.probe(source, chap_secret)
        size_gb = max(1, -(-size_bytes // GIB))
        volume_id = str(uuidlib.uuid4())
        iqn, _, lun = source.name.rpartition("/") if source.protocol == "iscsi" else ("", "", "")
        # Checked again and recorded at once: another registration of the
        # target (or of the project's last volume) may have ended during the probe.
        with self.compute.quotas.lock:
            self._check_unregistered(source.url)
            if counted:
                self.compute.quotas.check_volumes(project_id, 1, size_gb)
            secret_uuid = ""
            if chap_secret is not None:
                secret_uuid = self.compute.hv.define_secret(SECRET_USAGE_PREFIX + volume_id,
                                                            chap_secret)
            try:
                volume = self.records.add(Volume(
                    id=volume_id, name=name, size_gb=size_gb,
                    status=VolumeStatus.AVAILABLE, format="raw", path=source.url,
                    description=description, project_id=project_id, user_id=user_id,
                    protocol=source.protocol, remote_host=source.host,
                    remote_port=source.port, remote_socket=source.socket,
                    remote_export=iqn or source.name, remote_lun=int(lun or 0),
                    chap_user=chap_user, secret_uuid=secret_uuid))
            except BaseException:
                if secret_uuid:
                    self.compute.hv.undefine_secret(secret_uuid)
                raise
        log.info("remote volume %s registered: %s (%d bytes)", name, source.url, size_bytes)
        return volume

    def _check_unregistered(self, url: str) -> None:
        """No volume has the target ``url`` yet (two guests, one disk: no)."""
        for other in self.records.all():
            if other.remote and other.path == url:
                raise Conflict(reason=f"{url} is volume {other.name or other.id!r} already")

    def rename(self, ref: str, name: str | None = None,
               description: str | None = None) -> Volume:
        """A new name or description (any status: neither reaches the disk)."""
        volume = self.records.get(ref)
        changes = {k: v for k, v in (("name", name), ("description", description))
                   if v is not None}
        if "name" in changes:
            _check_name(changes["name"])
        if len(changes.get("description", "")) > MAX_DESCRIPTION_CHARS:
            raise Invalid(reason=f"a description is at most {MAX_DESCRIPTION_CHARS} characters")
        return self.records.update(volume.id, **changes)

    def delete(self, ref: str, project_id: str | None = None) -> None:
        """Refused while attached (Cinder: in-use) or busy."""
        volume = self.records.begin_delete(self.records.get(ref, project_id).id)
        if volume.remote:
            self._forget(volume)
            return
        try:
            pool.remove(Path(volume.path))
        except OSError as exc:
            self.records.update(volume.id, status=VolumeStatus.ERROR_DELETING,
                                fault=f"cannot remove {volume.path}: {exc.strerror}")
            raise
        self.records.delete(volume.id)

    def _forget(self, volume: Volume) -> None:
        """A remote volume's delete: its secret and record go; the target
        and its data are not vmops' and stay."""
        if volume.secret_uuid:
            self.compute.hv.undefine_secret(volume.secret_uuid)
        self.records.delete(volume.id)

    def extend(self, ref: str, size_gb: int, project_id: str | None = None,
               attached: bool = False) -> Volume:
        """Grow an available volume to ``size_gb`` (Cinder's os-extend). An
        attached one only with ``attached`` (Cinder from 3.42:
        :meth:`_extend_attached`); refused otherwise, as Cinder before 3.42."""
        volume = self.records.get(ref, project_id)
        if volume.remote:
            raise Invalid(reason=f"volume {volume.name!r} is remote ({volume.path}): its size "
                          "is the target's; vmops does not change it")
        _check_size(size_gb)
        self._check_growth(volume, size_gb)
        quotas = self.compute.quotas
        # Held from the check to the new size's record (a volume has one
        # extend at a time: begin refuses a second).
        hold = quotas.hold_growth(volume.project_id, size_gb - volume.size_gb)
        try:
            attachment = self.records.attachment_of(volume.id) if attached else None
            if attachment is not None:
                try:
                    return self._extend_attached(volume, attachment, size_gb)
                finally:
                    quotas.release_growth(hold)
            volume = self.records.begin(volume.id, "extend",
                                        frozenset({VolumeStatus.AVAILABLE}),
                                        VolumeStatus.EXTENDING)
        except BaseException:
            quotas.release_growth(hold)
            raise
        try:  # again: another extend may have ended since the size was read
            self._check_growth(volume, size_gb)
        except Invalid:
            self.records.update(volume.id, status=VolumeStatus.AVAILABLE)
            quotas.release_growth(hold)
            raise
        return self._in_background(
            volume, "extend", lambda: pool.extend(Path(volume.path), volume.format,
                                                  size_gb * GIB),
            VolumeStatus.AVAILABLE, status=VolumeStatus.AVAILABLE, size_gb=size_gb,
            ended=lambda: quotas.release_growth(hold))

    def _check_growth(self, volume: Volume, size_gb: int) -> None:
        """``size_gb`` is larger than ``volume`` and what it adds fits the pool."""
        if size_gb <= volume.size_gb:
            raise Invalid(reason=f"new size {size_gb} GiB must be larger than volume "
                          f"{volume.name!r}'s {volume.size_gb} GiB")
        pool.check_fits(self.pool, (size_gb - volume.size_gb) * GIB, volume.name,
                        grown_to_gb=size_gb)

    def _extend_attached(self, volume: Volume, attachment: Attachment, size_gb: int) -> Volume:
        """Grow an in-use volume: while the instance's QEMU runs, QEMU grows
        the file and tells the guest (the hypervisor's block resize); with
        the instance stopped, qemu-img does. The instance is held meanwhile
        (no start, stop or detach in between); it takes a moment, so it is
        done before answering."""
        inst = self.store.instance(attachment.instance_id)
        with self.compute.tasks.hold(inst.id, inst.name, EXTENDING_TASK):
            inst = self._ready(inst, "extend a volume of")
            # Read before the instance was held: a detach (and an attach of
            # another volume at the same device) may have come in between,
            # and the block resize would grow that other volume. Held, the
            # attachment can no longer change.
            if self.records.attachment_of(volume.id) != attachment:
                raise Conflict(reason=f"volume {volume.name!r} was detached from instance "
                                      f"{inst.name!r} meanwhile; try again")
            # Its size too: another extend may have ended in between, and a
            # block resize to less than that would shrink the guest's disk.
            self._check_growth(self.records.get(volume.id), size_gb)
            volume = self.records.begin(volume.id, "extend", frozenset({VolumeStatus.IN_USE}),
                                        VolumeStatus.EXTENDING)
            try:
                if self.compute.guest_runs(inst):
                    self.compute.hv.resize_disk(inst.id, attachment.device, size_gb * GIB)
                else:
                    pool.extend(Path(volume.path), volume.format, size_gb * GIB)
            except Exception as exc:
                fault = exc.message if isinstance(exc, VmopsError) else str(exc)
                self.records.update(volume.id, status=VolumeStatus.IN_USE,
                                    fault=f"extend failed: {fault}")
                raise
        log.info("volume %s extended to %d GiB while attached to %s", volume.name, size_gb,
                 inst.name)
        return self.records.update(volume.id, status=VolumeStatus.IN_USE, size_gb=size_gb,
                                   fault="")

    def _in_background(self, volume: Volume, verb: str, work: Callable[[], None],
                       failed: VolumeStatus, ended: Callable[[], None] = lambda: None,
                       **done: object) -> Volume:
        """``work``, then ``done`` recorded (``failed`` and the fault if it
        raised); ``ended`` after either is recorded."""
        def run() -> Volume:
            try:
                try:
                    work()
                except Exception as exc:  # noqa: BLE001 - recorded on the volume
                    log.exception("%s of volume %s failed", verb, volume.name)
                    fault = exc.message if isinstance(exc, VmopsError) else str(exc)
                    self.records.update(volume.id, status=failed,
                                        fault=f"{verb} failed: {fault}")
                    raise
                return self.records.update(volume.id, fault="", **done)
            finally:
                ended()

        if not self.background:
            return run()
        threading.Thread(target=_logged(run), name=f"volume-{verb}-{volume.id[:8]}",
                         daemon=True).start()
        return volume

    # -- attach and detach -----------------------------------------------------
    def attach(self, volume_ref: str, instance_ref: str, device: str | None = None,
               project_id: str | None = None) -> Attachment:
        """Plug the volume into the instance: into its definition always, into
        the running guest too while QEMU runs."""
        volume = self.records.get(volume_ref, project_id)
        inst = self.store.instance(instance_ref)
        with self.compute.tasks.hold(inst.id, inst.name, ATTACHING_TASK):
            inst = self._ready(inst, "attach a volume to")
            target = self._device_for(inst, device)
            attachment = Attachment(id=str(uuidlib.uuid4()), volume_id=volume.id,
                                    instance_id=inst.id, device=target)
            volume = self.records.claim(attachment, inst.name)
            crash_points.reached("attach-volume", ATTACH_STEPS[0])
            try:
                self.compute.hv.attach_disk(inst.id, disk_of(volume, target))
            except BaseException:
                self.records.release(volume.id)
                raise
            crash_points.reached("attach-volume", ATTACH_STEPS[1])
            self.records.attached(volume.id)
        log.info("volume %s attached to %s as %s", volume.name, inst.name, target)
        return attachment

    def detach(self, volume_ref: str, instance_ref: str,
               project_id: str | None = None) -> Volume:
        """Take the volume out of the instance (``detaching`` meanwhile; in a
        thread when :attr:`background`). If the guest does not release it
        within ``volume_detach_timeout`` it stays ``in-use``, its fault
        saying so."""
        volume = self.records.get(volume_ref, project_id)
        inst = self.store.instance(instance_ref)
        attachment = self.records.attachment_of(volume.id)
        if attachment is None or attachment.instance_id != inst.id:
            raise VolumeNotFound(f"volume {volume.name!r} is not attached to instance "
                                 f"{inst.name!r}", volume=volume.id)
        if inst.boot_volume_id == volume.id:  # Nova's words and status (400)
            raise Invalid(reason="Cannot detach a root device volume")
        self.compute.tasks.acquire(inst.id, inst.name, DETACHING_TASK)
        was = volume.status  # in-use, or error: a disk QEMU lost (on_disk_error)
        try:
            inst = self._ready(inst, "detach a volume from")
            volume = self.records.begin(volume.id, "detach", DETACHABLE, VolumeStatus.DETACHING)
        except BaseException:
            self.compute.tasks.release(inst.id)
            raise

        def run() -> Volume:
            try:
                crash_points.reached("detach-volume", DETACH_STEPS[0])
                self.compute.hv.detach_disk(inst.id, attachment.device,
                                            float(self.compute.settings.volume_detach_timeout))
            except Exception as exc:
                fault = exc.message if isinstance(exc, VmopsError) else str(exc)
                log.warning("detach of volume %s from %s failed: %s", volume.name, inst.name,
                            fault)
                self.records.update(volume.id, status=was, fault=f"detach failed: {fault}")
                raise
            finally:
                self.compute.tasks.release(inst.id)
            crash_points.reached("detach-volume", DETACH_STEPS[1])
            log.info("volume %s detached from %s", volume.name, inst.name)
            return self.records.release(volume.id)

        if not self.background:
            return run()
        threading.Thread(target=_logged(run), name=f"volume-detach-{volume.id[:8]}",
                         daemon=True).start()
        return volume

    # -- a disk QEMU cannot read or write ------------------------------------------
    def watch(self) -> None:
        """Follow the hypervisor's events (the service does it once, at its
        start): an I/O error on an attached volume puts it in ``error``
        (:meth:`on_disk_error`); a new QEMU process for the instance, which
        opens its disks afresh, puts it back (:meth:`on_lifecycle_event`)."""
        self.compute.hv.on_disk_error(self.on_disk_error)
        self.compute.hv.on_lifecycle_event(self.on_lifecycle_event)

    def on_disk_error(self, event: DiskErrorEvent) -> None:
        """QEMU could not read or write a disk: if it is an ``in-use``
        volume, the volume is ``error``, the fault saying why. It stays
        attached: a detach (or the instance's next start) settles it."""
        if not event.target:
            return
        fault = _disk_fault(self.records, event)
        volume = self.records.disk_failed(event.uuid, event.target, fault)
        if volume is not None:
            log.warning("volume %s is in error: %s", volume.name or volume.id, fault)

    def on_lifecycle_event(self, event: LifecycleEvent) -> None:
        if event.state is PowerState.RUNNING and event.detail in REOPENED:
            for volume in self.records.disks_reopened(event.uuid):
                log.info("volume %s is in-use again: QEMU opened it when %s started",
                         volume.name or volume.id, event.uuid)

    # -- a remote target that stops answering -------------------------------------
    def watch_targets(self, stop: threading.Event) -> threading.Thread | None:
        """Look at the attached iSCSI volumes' portals every
        ``volume_target_check_interval`` seconds until ``stop`` is set
        (:meth:`check_targets`), in a thread; None when the interval is 0."""
        interval = self.compute.settings.volume_target_check_interval
        if not interval:
            return None

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.check_targets()
                except Exception:  # noqa: BLE001 - the watch must not stop the service
                    log.exception("volume target watch failed")

        thread = threading.Thread(target=loop, name="volume-target-watch", daemon=True)
        thread.start()
        return thread

    def check_targets(self, now: float | None = None) -> None:
        """One look at the portal of each attached iSCSI volume. QEMU's
        iSCSI initiator keeps trying to log in again when its target goes
        away and reports no error (the guest's I/O on the disk waits), so no
        I/O error event comes: a portal that has not accepted a connection
        for ``volume_target_timeout`` seconds puts its ``in-use`` volume in
        ``error``, the fault saying why; once it accepts one again the
        volume is ``in-use`` (QEMU logs in again by itself). Only the volumes
        of instances whose QEMU runs are looked at."""
        now = time.monotonic() if now is None else now
        settings = self.compute.settings
        silence: dict[tuple[str, int], str] = {}  # one look per portal
        watched: set[str] = set()
        for attachment in self.records.attachments():
            try:
                volume = self.records.get(attachment.volume_id)
            except VolumeNotFound:  # detached and deleted since the list was read
                continue
            if volume.protocol not in WATCHED_PROTOCOLS or volume.status not in WATCHED \
                    or not self._qemu_has(attachment):
                continue
            watched.add(volume.id)
            portal = (volume.remote_host, volume.remote_port)
            if portal not in silence:
                silence[portal] = remote.portal_silence(
                    *portal, min(PORTAL_PROBE_TIMEOUT_S, settings.volume_target_timeout))
            why = silence[portal]
            if not why:
                self._silent_since.pop(volume.id, None)
                answered = None
                with contextlib.suppress(VolumeNotFound):  # deleted meanwhile: nothing to do
                    answered = self.records.target_answers(volume.id, TARGET_LOST)
                if answered is not None:
                    log.info("volume %s is in-use again: its target %s answers",
                             volume.name or volume.id, volume.path)
                continue
            since = self._silent_since.setdefault(volume.id, now)
            if now - since < settings.volume_target_timeout:
                continue
            fault = (f"{TARGET_LOST}{volume.path} has not accepted a connection for "
                     f"{settings.volume_target_timeout} s ({why}); the guest's reads and "
                     f"writes on disk {attachment.device} wait for it (QEMU keeps trying to "
                     "log in again). The volume is in-use again once the target answers")
            if self.records.disk_failed(attachment.instance_id, attachment.device,
                                        fault) is not None:
                log.warning("volume %s is in error: %s", volume.name or volume.id, fault)
        for volume_id in set(self._silent_since) - watched:  # detached, deleted
            del self._silent_since[volume_id]

    def _qemu_has(self, attachment: Attachment) -> bool:
        """Whether a QEMU runs for the attachment's instance (a stopped one's
        disks are opened afresh at its next start)."""
        try:
            return self.compute.guest_runs(self.store.instance(attachment.instance_id))
        except VmopsError:  # deleted meanwhile, or libvirt did not answer
            return False

    def _ready(self, inst: Instance, action: str) -> Instance:
        """The instance, as it is now, if volumes may come and go on it."""
        inst = self.store.instance(inst.id)
        if inst.vm_state not in ATTACH_STATES or inst.task_state is not None:
            state = inst.vm_state + (f" ({inst.task_state})" if inst.task_state else "")
            raise InvalidState(action=action, instance=inst.name, state=state)
        return inst

    def _device_for(self, inst: Instance, asked: str | None) -> str:
        """The target asked for (``vdc`` or ``/dev/vdc``) if free, else the
        first free ``vdb``..``vdz``."""
        taken = {d.target for d in inst.disks} | {a.device for a in self.attached_to(inst.id)}
        if asked:
            match = DEVICE.match(asked)
            if match is None:
                raise Invalid(reason=f"device {asked[:40]!r}: a virtio disk name, vdb to vdz "
                              "(or /dev/vdb)")
            if match.group(1) in taken or match.group(1) == "vda":
                raise Conflict(reason=f"device {match.group(1)} of instance {inst.name!r} is "
                               "in use already")
            return match.group(1)
        for letter in "bcdefghijklmnopqrstuvwxyz":
            if f"vd{letter}" not in taken:
                return f"vd{letter}"
        raise Conflict(reason=f"instance {inst.name!r} has no free disk device (vdb to vdz)")

    # -- after a service start -------------------------------------------------
    def reconcile(self) -> None:
        """Settle what a restart interrupted: creates end in error (file
        removed), deletes and extends are finished or undone, and every
        attachment caught half-way agrees with the domain again."""
        for volume in self.records.all():
            try:
                self._settle(volume)
            except Exception:  # noqa: BLE001 - one volume must not stop the service
                log.exception("could not settle volume %s", volume.name)
        self._forget_orphan_secrets()
        for attachment in self.records.attachments():
            try:
                self._settle_attachment(attachment)
            except Exception:  # noqa: BLE001 - one volume must not stop the service
                log.exception("could not settle the attachment of volume %s",
                              attachment.volume_id)

    def _forget_orphan_secrets(self) -> None:
        """A registration killed after its secret was defined and before the
        record was written left a secret no volume names: undefine it."""
        named = {v.secret_uuid for v in self.records.all() if v.secret_uuid}
        try:
            for uuid, usage in self.compute.hv.secrets().items():
                if usage.startswith(SECRET_USAGE_PREFIX) and uuid not in named:
                    log.warning("undefining secret %s (%s): no volume names it", uuid, usage)
                    self.compute.hv.undefine_secret(uuid)
        except VmopsError:
            log.exception("could not look for secrets no volume names")

    def _settle(self, volume: Volume) -> None:
        if volume.remote and volume.status == VolumeStatus.DELETING:
            self._forget(volume)
        elif volume.status == VolumeStatus.CREATING:
            pool.remove(Path(volume.path))
            self.records.update(volume.id, status=VolumeStatus.ERROR,
                                fault="create was interrupted by a service restart")
        elif volume.status == VolumeStatus.DELETING:
            pool.remove(Path(volume.path))
            self.records.delete(volume.id)
        elif volume.status == VolumeStatus.EXTENDING:
            status = (VolumeStatus.IN_USE if self.records.attachment_of(volume.id)
                      else VolumeStatus.AVAILABLE)
            self.records.update(volume.id, status=status,
                                fault="extend was interrupted by a service restart; the "
                                "size is the one recorded")

    def _settle_attachment(self, attachment: Attachment) -> None:
        volume = self.records.get(attachment.volume_id)
        hv = self.compute.hv
        try:
            inst = self.store.instance(attachment.instance_id)
        except VmopsError:
            log.warning("volume %s was attached to a deleted instance; released", volume.name)
            self.records.release(volume.id)
            return
        if not hv.exists(attachment.instance_id):
            if volume.status != VolumeStatus.IN_USE:
                self.records.release(volume.id)  # half-way, and no domain to hold it
            return
        present = hv.disk_targets(attachment.instance_id).get(attachment.device) == volume.path
        if volume.status == VolumeStatus.ATTACHING:
            if present:
                self.records.attached(volume.id)
            else:
                self.records.release(volume.id)
        elif volume.status == VolumeStatus.DETACHING:
            if present:
                self.records.update(volume.id, status=VolumeStatus.IN_USE,
                                    fault="detach was interrupted by a service restart; "
                                    "the volume is still attached")
            else:
                self.records.release(volume.id)
        elif not present and self._in_spec(inst, volume, attachment):
            log.warning("volume %s is recorded on %s as %s but the domain lacks it; "
                        "attaching it again", volume.name, attachment.instance_id,
                        attachment.device)
            hv.attach_disk(attachment.instance_id, disk_of(volume, attachment.device))

    def _in_spec(self, inst: Instance, volume: Volume, attachment: Attachment) -> bool:
        """Whether the domain vmops defines from the records has the volume
        (a rescued instance's has none of its volumes)."""
        return any(d.target == attachment.device and d.source == volume.path
                   for d in self.compute.domain_spec(inst).disks)


def _disk_fault(records: VolumeRecords, event: DiskErrorEvent) -> str:
    """Why the disk failed, in the user's words, with where its data is."""
    attachment = next((a for a in records.attachments(event.uuid)
                       if a.device == event.target), None)
    volume = records.get(attachment.volume_id) if attachment is not None else None
    where = ("" if volume is None else
             f"; its target {volume.path} does not answer" if volume.remote else
             f"; its file is {volume.path}")
    what = ("no space left on the host for its writes" if event.reason == "enospc" else
            f"an I/O error ({event.reason})" if event.reason else "an I/O error")
    then = ("QEMU paused the guest" if event.paused else
            "the guest got the error")
    return (f"QEMU could not read or write disk {event.target}: {what}{where}; {then}. "
            "Detach the volume, or stop and start the instance once the target answers")


def _check_name(name: str) -> None:
    """Cinder's: up to 255 characters (empty: unnamed); printable here."""
    if len(name) > MAX_NAME_CHARS:
        raise InvalidName(name=name[:80] + "...", reason=f"it has {len(name)} characters, at "
                          f"most {MAX_NAME_CHARS} allowed")
    if not name.isprintable():
        raise InvalidName(name=name.encode("unicode_escape").decode()[:80],
                          reason="it contains a character that is not printable")


def _check_size(size_gb: object) -> None:
    if isinstance(size_gb, bool) or not isinstance(size_gb, int) or size_gb < 1:
        raise Invalid(reason=f"volume size {size_gb!r}: a whole number of GiB, at least 1")
    if size_gb > MAX_SIZE_GB:
        raise Invalid(reason=f"volume size {size_gb} GiB is over the limit of {MAX_SIZE_GB}")


def _logged(work: Callable[[], object]) -> Callable[[], None]:
    """A thread's target: the failure is recorded on the volume already."""
    def run() -> None:
        with contextlib.suppress(Exception):
            work()
    return run


__all__ = ["ATTACH_STATES", "Volumes"]
