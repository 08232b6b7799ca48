"""Volume and attachment records (the ``volumes`` and ``volume_attachments``
tables of vmops.db, schema 7), and every status change in one transaction.

Statuses are Cinder's. A volume has at most one attachment (no multiattach);
an instance uses a device name once. The attachment row is written before
the disk is plugged (status ``attaching``) and removed only once the disk is
out (``detaching`` meanwhile), so after a crash the service can tell, from
the row and the domain, which of the two happened (``manager.reconcile``).
"""

from __future__ import annotations

import enum
import sqlite3
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from vmops.errors import Conflict, InUse, InvalidState, VolumeNotFound
from vmops.hypervisor.base import DiskBus, DiskDevice, DiskSpec, NetworkSource
from vmops.store import Store


class VolumeStatus(enum.StrEnum):
    """Cinder's volume statuses, the ones vmops uses."""

    CREATING = "creating"
    AVAILABLE = "available"
    ATTACHING = "attaching"
    IN_USE = "in-use"
    DETACHING = "detaching"
    EXTENDING = "extending"
    DELETING = "deleting"
    ERROR = "error"
    ERROR_DELETING = "error_deleting"


# What a delete may start from (Cinder's: never while attached or busy).
DELETABLE = frozenset({VolumeStatus.AVAILABLE, VolumeStatus.ERROR,
                       VolumeStatus.ERROR_DELETING})


@dataclass(frozen=True)
class Volume:
    id: str
    name: str
    size_gb: int
    status: str  # a VolumeStatus value
    format: str  # qcow2 | raw: recorded at creation, never probed
    path: str
    description: str = ""
    image_id: str = ""  # the image it was made from ('': blank)
    bootable: bool = False
    fault: str = ""  # why it is in error, or why the last detach failed
    project_id: str = ""
    user_id: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    # A remote volume (schema 9): protocol nbd or iscsi ('': a local file);
    # NBD host/port or socket and export name, or iSCSI portal, IQN and LUN;
    # for CHAP the user and the libvirt secret's uuid. ``path`` is then its
    # URL (remote.url_of), never holding the secret.
    protocol: str = ""
    remote_host: str = ""
    remote_port: int = 0
    remote_socket: str = ""
    remote_export: str = ""
    remote_lun: int = 0
    chap_user: str = ""
    secret_uuid: str = ""

    @property
    def remote(self) -> bool:
        return bool(self.protocol)


@dataclass(frozen=True)
class Attachment:
    id: str
    volume_id: str
    instance_id: str
    device: str  # the libvirt target: "vdb"
    created_at: float = 0.0


def _volume_from_row(row: sqlite3.Row | dict[str, Any]) -> Volume:
    return Volume(**{**dict(row), "bootable": bool(row["bootable"])})


class VolumeRecords:
    """The volume tables, on the store's one connection and lock."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- volumes ---------------------------------------------------------------
    def add(self, volume: Volume) -> Volume:
        now = time.time()
        volume = replace(volume, created_at=now, updated_at=now)
        row = asdict(volume)
        row["bootable"] = int(volume.bootable)
        with self.store.transaction() as db:
            db.execute(f"INSERT INTO volumes ({', '.join(row)}) VALUES "
                       f"({', '.join('?' for _ in row)})", tuple(row.values()))
        return volume

    def update(self, volume_id: str, **changes: Any) -> Volume:
        with self.store.transaction() as db:
            return self._update(db, volume_id, **changes)

    @staticmethod
    def _update(db: sqlite3.Connection, volume_id: str, **changes: Any) -> Volume:
        rows = db.execute("SELECT * FROM volumes WHERE id = ?", (volume_id,)).fetchall()
        if not rows:
            raise VolumeNotFound(volume=volume_id)
        fresh = replace(_volume_from_row(rows[0]), updated_at=time.time(), **changes)
        row = asdict(fresh)
        row["bootable"] = int(fresh.bootable)
        db.execute(f"UPDATE volumes SET {', '.join(f'{k} = ?' for k in row)} WHERE id = ?",
                   (*row.values(), volume_id))
        return fresh

    def all(self, project_id: str | None = None) -> list[Volume]:
        """Every volume, or one project's, oldest first."""
        if project_id is None:
            rows = self.store.query("SELECT * FROM volumes ORDER BY created_at, id")
        else:
            rows = self.store.query("SELECT * FROM volumes WHERE project_id = ? "
                                    "ORDER BY created_at, id", project_id)
        return [_volume_from_row(r) for r in rows]

    def get(self, ref: str, project_id: str | None = None) -> Volume:
        """The volume whose id is ``ref``, else the one named ``ref`` (a name
        several share is refused, naming their ids). With ``project_id``,
        another project's volume is not found."""
        rows = [r for r in self.store.query(
            "SELECT * FROM volumes WHERE id = ? OR name = ? ORDER BY id = ? DESC, created_at",
            ref, ref, ref) if project_id is None or r["project_id"] == project_id]
        if not rows:
            raise VolumeNotFound(volume=ref)
        if len(rows) > 1 and rows[0]["id"] != ref:
            raise Conflict(reason=f"{len(rows)} volumes are named {ref!r}: "
                           f"{', '.join(r['id'] for r in rows)}; give an id")
        return _volume_from_row(rows[0])

    def begin_delete(self, volume_id: str) -> Volume:
        """``deleting``, if the volume may be deleted (not attached, not busy)."""
        with self.store.transaction() as db:
            volume = self._locked(db, volume_id)
            attached = db.execute("SELECT instance_id FROM volume_attachments "
                                  "WHERE volume_id = ?", (volume_id,)).fetchone()
            if attached is not None:
                raise InUse(kind="volume", name=volume.name or volume.id, users=attached[0])
            if volume.status not in DELETABLE:
                raise _refused("delete", volume)
            return self._update(db, volume_id, status=VolumeStatus.DELETING, fault="")

    def begin(self, volume_id: str, action: str, allowed: frozenset[VolumeStatus],
              status: VolumeStatus) -> Volume:
        """Move to ``status`` if the volume is in one of ``allowed``."""
        with self.store.transaction() as db:
            volume = self._locked(db, volume_id)
            if volume.status not in allowed:
                raise _refused(action, volume)
            return self._update(db, volume_id, status=status)

    def delete(self, volume_id: str) -> None:
        with self.store.transaction() as db:
            db.execute("DELETE FROM volume_attachments WHERE volume_id = ?", (volume_id,))
            db.execute("DELETE FROM volumes WHERE id = ?", (volume_id,))

    @staticmethod
    def _locked(db: sqlite3.Connection, volume_id: str) -> Volume:
        rows = db.execute("SELECT * FROM volumes WHERE id = ?", (volume_id,)).fetchall()
        if not rows:
            raise VolumeNotFound(volume=volume_id)
        return _volume_from_row(rows[0])

    # -- attachments -----------------------------------------------------------
    def attachments(self, instance_id: str | None = None) -> list[Attachment]:
        if instance_id is None:
            rows = self.store.query("SELECT * FROM volume_attachments ORDER BY created_at")
        else:
            rows = self.store.query("SELECT * FROM volume_attachments WHERE instance_id = ? "
                                    "ORDER BY device", instance_id)
        return [Attachment(**dict(r)) for r in rows]

    def volumes_attached(self) -> dict[str, list[str]]:
        """instance id -> ids of its attached volumes, by device, in one query
        (the server views' ``os-extended-volumes:volumes_attached``)."""
        attached: dict[str, list[str]] = {}
        for row in self.store.query("SELECT instance_id, volume_id FROM volume_attachments "
                                    "ORDER BY instance_id, device"):
            attached.setdefault(row["instance_id"], []).append(row["volume_id"])
        return attached

    def attachment_of(self, volume_id: str) -> Attachment | None:
        rows = self.store.query("SELECT * FROM volume_attachments WHERE volume_id = ?",
                                volume_id)
        return Attachment(**dict(rows[0])) if rows else None

    def claim(self, attachment: Attachment, instance_name: str) -> Volume:
        """Record the attachment and mark the volume ``attaching``, in one
        transaction: refused unless the volume is available and the device
        is free on the instance."""
        with self.store.transaction() as db:
            volume = self._locked(db, attachment.volume_id)
            held = db.execute("SELECT instance_id FROM volume_attachments WHERE volume_id = ?",
                              (volume.id,)).fetchone()
            if held is not None:
                raise InUse(kind="volume", name=volume.name or volume.id, users=held[0])
            if volume.status != VolumeStatus.AVAILABLE:
                raise _refused("attach", volume)
            taken = db.execute("SELECT volume_id FROM volume_attachments WHERE instance_id = ? "
                               "AND device = ?", (attachment.instance_id, attachment.device)
                               ).fetchone()
            if taken is not None:
                raise Conflict(reason=f"device {attachment.device} of instance "
                               f"{instance_name!r} is taken by volume {taken[0]}")
            row = asdict(replace(attachment, created_at=time.time()))
            db.execute(f"INSERT INTO volume_attachments ({', '.join(row)}) VALUES "
                       f"({', '.join('?' for _ in row)})", tuple(row.values()))
            return self._update(db, volume.id, status=VolumeStatus.ATTACHING, fault="")

    def attached(self, volume_id: str) -> Volume:
        """The disk is in the domain: ``in-use``."""
        return self.update(volume_id, status=VolumeStatus.IN_USE, fault="")

    def disk_failed(self, instance_id: str, device: str, fault: str) -> Volume | None:
        """The volume attached to the instance as ``device`` could not be
        read or written: ``error`` with ``fault``, if it was ``in-use``
        (an attach or detach under way keeps its status). The volume
        changed; None if none did."""
        with self.store.transaction() as db:
            row = db.execute("SELECT volume_id FROM volume_attachments WHERE instance_id = ? "
                             "AND device = ?", (instance_id, device)).fetchone()
            if row is None or self._locked(db, row[0]).status != VolumeStatus.IN_USE:
                return None
            return self._update(db, row[0], status=VolumeStatus.ERROR, fault=fault)

    def target_answers(self, volume_id: str, fault_prefix: str) -> Volume | None:
        """The volume's target answers again: ``in-use``, if it is in
        ``error`` for a fault starting with ``fault_prefix`` (the target
        watch's own; an I/O error QEMU reported stays). The volume changed;
        None if it did not."""
        with self.store.transaction() as db:
            volume = self._locked(db, volume_id)
            if volume.status != VolumeStatus.ERROR or not volume.fault.startswith(fault_prefix):
                return None
            return self._update(db, volume_id, status=VolumeStatus.IN_USE, fault="")

    def disks_reopened(self, instance_id: str) -> list[Volume]:
        """A new QEMU process opened the instance's disks: its attached
        volumes in ``error`` are ``in-use`` again (the ones changed)."""
        with self.store.transaction() as db:
            ids = [r[0] for r in db.execute(
                "SELECT a.volume_id FROM volume_attachments a JOIN volumes v "
                "ON v.id = a.volume_id WHERE a.instance_id = ? AND v.status = ?",
                (instance_id, VolumeStatus.ERROR.value))]
            return [self._update(db, i, status=VolumeStatus.IN_USE, fault="") for i in ids]

    def release(self, volume_id: str, fault: str = "") -> Volume:
        """The disk is out of the domain (or never got in): the attachment
        goes and the volume is ``available`` again."""
        with self.store.transaction() as db:
            db.execute("DELETE FROM volume_attachments WHERE volume_id = ?", (volume_id,))
            return self._update(db, volume_id, status=VolumeStatus.AVAILABLE, fault=fault)

    def release_instance(self, instance_id: str) -> list[str]:
        """Every attachment of an instance whose domain is gone; the ids of
        the volumes made available again."""
        with self.store.transaction() as db:
            ids = [r[0] for r in db.execute(
                "SELECT volume_id FROM volume_attachments WHERE instance_id = ?",
                (instance_id,))]
            db.execute("DELETE FROM volume_attachments WHERE instance_id = ?", (instance_id,))
            for volume_id in ids:
                self._update(db, volume_id, status=VolumeStatus.AVAILABLE, fault="")
        return ids


def _refused(action: str, volume: Volume) -> InvalidState:
    return InvalidState(f"cannot {action} volume {volume.name or volume.id!r} while it is "
                        f"{volume.status}", action=action, instance=volume.id,
                        state=volume.status)


def disk_specs(store: Store, instance_id: str) -> tuple[DiskSpec, ...]:
    """The instance's attached volumes as disks of its domain spec, by device."""
    rows = store.query(
        "SELECT a.device AS device, v.* FROM volume_attachments a JOIN volumes v "
        "ON v.id = a.volume_id WHERE a.instance_id = ? ORDER BY a.device", instance_id)
    return tuple(disk_of(_volume_from_row(_without(r, "device")), r["device"]) for r in rows)


def _without(row: sqlite3.Row, key: str) -> dict[str, Any]:
    fields = dict(row)
    del fields[key]
    return fields


def disk_of(volume: Volume, device: str) -> DiskSpec:
    """The volume as a disk of a domain: its file, or its network source."""
    if not volume.remote:
        return volume_disk(Path(volume.path), volume.format, device)
    return DiskSpec(path=Path(), format="raw", target=device, bus=DiskBus.VIRTIO,
                    device=DiskDevice.DISK, network=network_source(volume))


def network_source(volume: Volume) -> NetworkSource:
    """Where a remote volume is, as its record says (the secret by uuid)."""
    name = volume.remote_export
    if volume.protocol == "iscsi":
        name = f"{volume.remote_export}/{volume.remote_lun}"
    return NetworkSource(protocol=volume.protocol, name=name, host=volume.remote_host,
                         port=volume.remote_port, socket=volume.remote_socket,
                         auth_user=volume.chap_user, secret_uuid=volume.secret_uuid)


def volume_disk(path: Path, fmt: str, device: str) -> DiskSpec:
    """A volume as a virtio disk of a domain."""
    return DiskSpec(path=path, format=fmt, target=device, bus=DiskBus.VIRTIO,
                    device=DiskDevice.DISK)
