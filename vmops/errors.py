"""The one exception tree of vmops.

Every error a user can see is a :class:`VmopsError`. Each class carries a
message template with named fields and the HTTP status the API answers
with; libvirt and qemu-img errors are converted into this tree in exactly
one place each (``hypervisor/libvirt/driver.py`` and ``disks/qemu_img.py``).
A full disk (``ENOSPC``, SQLite's "database or disk is full") may surface
anywhere; :func:`storage_full` turns it into :class:`StorageFull`, and the
API does so at its edge (``api/server.py``).

    VmopsError (500)
    ├── NotFound (404)
    │   ├── InstanceNotFound
    │   ├── ImageNotFound
    │   │   └── ImageGone (410)   deleted while its data was being uploaded
    │   ├── FlavorNotFound
    │   ├── KeypairNotFound
    │   ├── SecurityGroupNotFound
    │   ├── SecurityGroupRuleNotFound
    │   ├── PortForwardNotFound
    │   ├── VolumeNotFound
    │   ├── UserNotFound / ProjectNotFound / RoleNotFound / DomainNotFound
    │   └── TokenNotFound       a token to validate or revoke is unknown or expired
    ├── Conflict (409)
    │   ├── AlreadyExists
    │   ├── InvalidState        operation makes no sense in the current state
    │   ├── InstanceBusy        another operation holds the instance
    │   ├── InUse               image/flavor/group still used by instances
    │   ├── AddressInUse        a MAC or IPv4 address another port has
    │   ├── SubnetFull          no free address on the vmops network
    │   ├── PortTaken           a host port already forwarded or listened on
    │   └── DetachTimeout       the guest did not release a disk in time (still attached)
    ├── Invalid (400)
    │   ├── InvalidName
    │   ├── InvalidFlavor
    │   ├── InvalidImage        not a disk image, unsafe, truncated, ...
    │   │   ├── ImageSourceUnreachable  one answer for any URL that gave no image
    │   │   └── ImportLimitExceeded     over an import's byte, time or rate bound
    │   │       └── ImportTooLarge (413)  over its bytes, or the free space it may take
    │   ├── RequestBodyIncomplete  a streamed body cut short or badly chunked
    │   ├── FlavorTooSmall      root_gb smaller than the image's virtual size
    │   └── ConfigDriveInvalid  injected files, user data, metadata over limits
    ├── Unauthorized (401)      no, a wrong, an expired or a revoked credential
    │   └── TooManyAttempts     a user's password was guessed wrong too often
    ├── Forbidden (403)
    │   ├── ImageSourceForbidden  a host path outside image_import_dirs, over TCP
    │   ├── PolicyForbidden     the caller's roles do not allow the call
    │   └── QuotaExceeded       over a project's quota (Nova's words for each)
    │       └── VolumeQuotaExceeded (413)  over its volumes or gigabytes (Cinder's words)
    ├── NotSupported (501)      a Nova call that makes no sense on one host
    ├── ConfigError (400)       a bad setting: names the option and what is allowed
    ├── StorageFull (507)       no space left: names what is full
    ├── RequestBodyTimeout (408)  a streamed body's next part did not come in time
    ├── HostNotReady (503)      a required host check failed (see ``vmops doctor``)
    ├── ServiceUnavailable (503)  the CLI cannot reach (or start) the service
    ├── ServiceAlreadyRunning (409)
    ├── StoreError (500)        vmops.db cannot be used as it is; the service refuses to start
    │   ├── DatabaseCorrupt     truncated or damaged (PRAGMA quick_check): refused
    │   ├── DatabaseTooNew      written by a newer vmops: refused, never modified
    │   └── MigrationFailed     a forward migration failed: rolled back, backup kept
    ├── HypervisorError (500)   libvirt/QEMU failed in a way we did not expect
    │   └── DiskError           qemu-img failed or was killed by its limits
    └── NetworkError (500)      the bridge, dnsmasq or nft could not be set up
"""

from __future__ import annotations

import errno
import sqlite3
from typing import Any, ClassVar


class VmopsError(Exception):
    """Base of every vmops error. ``msg_fmt`` is filled from keyword args."""

    msg_fmt: ClassVar[str] = "%(reason)s"
    http_status: ClassVar[int] = 500
    # Nova's fault body names, used by the API: {"itemNotFound": {...}}
    fault_name: ClassVar[str] = "computeFault"

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        self.fields = fields
        if message is None:
            try:
                message = self.msg_fmt % fields
            except (KeyError, TypeError, ValueError):
                message = f"{type(self).__name__}: {fields}"
        self.message = message
        super().__init__(message)


class NotFound(VmopsError):
    http_status = 404
    fault_name = "itemNotFound"
    msg_fmt = "not found: %(what)s"


class InstanceNotFound(NotFound):
    msg_fmt = "no instance named or with id %(instance)r"


class ImageNotFound(NotFound):
    msg_fmt = "no image named or with id %(image)r"


class ImageGone(ImageNotFound):
    http_status = 410
    msg_fmt = ("image %(image)s was deleted while its data was being uploaded; the data "
               "was not kept")


class FlavorNotFound(NotFound):
    msg_fmt = "no flavor named or with id %(flavor)r"


class KeypairNotFound(NotFound):
    msg_fmt = "no keypair named %(name)r"


class SecurityGroupNotFound(NotFound):
    msg_fmt = "no security group named or with id %(group)r"


class SecurityGroupRuleNotFound(NotFound):
    msg_fmt = "no security group rule with id %(rule)r"


class PortForwardNotFound(NotFound):
    msg_fmt = "no port forward %(forward)r"


class VolumeNotFound(NotFound):
    msg_fmt = "no volume named or with id %(volume)r"


class UserNotFound(NotFound):
    msg_fmt = "Could not find user: %(user)s."


class ProjectNotFound(NotFound):
    msg_fmt = "Could not find project: %(project)s."


class RoleNotFound(NotFound):
    msg_fmt = "Could not find role: %(role)s."


class DomainNotFound(NotFound):
    msg_fmt = "Could not find domain: %(domain)s."


class TokenNotFound(NotFound):
    msg_fmt = "Could not find token: the token is unknown, expired or revoked."


class Conflict(VmopsError):
    http_status = 409
    fault_name = "conflictingRequest"
    msg_fmt = "conflict: %(reason)s"


class AlreadyExists(Conflict):
    msg_fmt = "a %(kind)s named %(name)r already exists"


class InvalidState(Conflict):
    msg_fmt = "cannot %(action)s instance %(instance)r while it is %(state)s"


class InstanceBusy(Conflict):
    msg_fmt = "instance %(instance)r is busy: %(task)s is in progress; try again when it ends"


class InUse(Conflict):
    msg_fmt = "%(kind)s %(name)r is used by instances: %(users)s"


class AddressInUse(Conflict):
    msg_fmt = "%(what)s %(value)s is already used by %(user)s"


class SubnetFull(Conflict):
    msg_fmt = "network %(network)s (%(cidr)s) has no free address left"


class PortTaken(Conflict):
    msg_fmt = "host port %(proto)s/%(port)s on %(address)s is taken: %(by)s"


class DetachTimeout(Conflict):
    msg_fmt = ("the guest of %(instance)s did not release disk %(target)s within %(seconds)s s; "
               "it stays attached (the guest may still be writing to it): try again, or "
               "detach it while the instance is stopped")


class Invalid(VmopsError):
    http_status = 400
    fault_name = "badRequest"
    msg_fmt = "invalid input: %(reason)s"


class InvalidName(Invalid):
    msg_fmt = "invalid name %(name)r: %(reason)s"


class InvalidFlavor(Invalid):
    msg_fmt = "invalid flavor: %(reason)s"


class InvalidImage(Invalid):
    msg_fmt = "invalid image: %(reason)s"


class ImageSourceUnreachable(InvalidImage):
    """Refused, timed out, 401, 404, a redirect to another scheme...: all the
    same to the client, so an import cannot be used to scan ports; the
    service log says which."""

    msg_fmt = ("cannot download %(source)s: the source is unreachable or did not send "
               "the image (the service log has details)")


class ImportLimitExceeded(InvalidImage):
    msg_fmt = "import of %(source)s stopped: %(reason)s"


class ImportTooLarge(ImportLimitExceeded):
    """Over image_import_max_bytes or the free space an import may take:
    413, as Glance answers an upload over its size cap."""

    http_status = 413
    fault_name = "overLimit"


class RequestBodyIncomplete(Invalid):
    msg_fmt = "the request body is incomplete: %(reason)s"


class FlavorTooSmall(Invalid):
    msg_fmt = (
        "flavor %(flavor)r has a %(flavor_bytes)d-byte root disk, smaller than "
        "image %(image)r's virtual size of %(image_bytes)d bytes; disks are never shrunk"
    )


class ConfigDriveInvalid(Invalid):
    msg_fmt = "invalid config drive content: %(reason)s"


class Forbidden(VmopsError):
    http_status = 403
    fault_name = "forbidden"
    msg_fmt = "forbidden: %(reason)s"


class PolicyForbidden(Forbidden):
    msg_fmt = ("%(method)s %(route)s needs the %(rule)s role (this token has: %(roles)s)")


class Unauthorized(VmopsError):
    """Keystone answers 401 alike for an unknown user and a wrong password,
    so neither tells which names exist."""

    http_status = 401
    fault_name = "unauthorized"
    msg_fmt = "The request you have made requires authentication. %(reason)s"


class TooManyAttempts(Unauthorized):
    msg_fmt = ("The request you have made requires authentication. Too many failed "
               "attempts for this user: try again in %(seconds)d seconds.")


class ImageSourceForbidden(Forbidden):
    """Worded the same whether or not the path exists, and without its size."""

    msg_fmt = ("cannot import %(source)s: API clients over TCP may import host files only "
               "from the directories in the image_import_dirs setting (%(dirs)s)")


class QuotaExceeded(Forbidden):
    """Over a project's quota; the message is Nova's for the resource, e.g.
    "Quota exceeded for instances: Requested 1, but already used 10 of 10
    instances"."""

    msg_fmt = "%(reason)s"


class VolumeQuotaExceeded(QuotaExceeded):
    """Over a project's volume quota (volumes, gigabytes): 413, as Cinder's
    VolumeLimitExceeded and VolumeSizeExceedsAvailableQuota, in its words."""

    http_status = 413
    fault_name = "overLimit"


class NotSupported(VmopsError):
    http_status = 501
    fault_name = "notImplemented"
    msg_fmt = "not supported by vmops: %(reason)s"


class ConfigError(VmopsError):
    http_status = 400
    fault_name = "badRequest"
    msg_fmt = "bad setting %(option)s=%(value)r: %(allowed)s"


class StorageFull(VmopsError):
    http_status = 507
    fault_name = "insufficientStorage"
    msg_fmt = ("no space left: %(what)s is full; free space (destroy instances, prune "
               "images) and try again")


# Errors that mean "no space": the disk, a quota, or SQLite's view of either.
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def storage_full(exc: BaseException) -> StorageFull | None:
    """``exc`` as a :class:`StorageFull` when it says a disk is full, else None.

    Branches on error codes (``errno``, SQLite's extended code), never on
    message text.
    """
    if isinstance(exc, StorageFull):
        return exc
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        where = f"the file system holding {exc.filename}" if exc.filename else "a file system"
        return StorageFull(what=where)
    if isinstance(exc, sqlite3.Error) \
            and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL:
        return StorageFull(what="the file system holding the vmops database")
    return None


class RequestBodyTimeout(VmopsError):
    http_status = 408
    fault_name = "requestTimeout"
    msg_fmt = "the next part of the request body did not arrive within %(seconds)g seconds"


class HostNotReady(VmopsError):
    http_status = 503
    fault_name = "hostNotReady"
    msg_fmt = "this host cannot run VMs: %(reason)s"


class ServiceUnavailable(VmopsError):
    http_status = 503
    msg_fmt = "the vmops service is not reachable: %(reason)s"


class ServiceAlreadyRunning(VmopsError):
    http_status = 409
    msg_fmt = (
        "another vmops service (pid %(pid)s) is already serving state directory %(state_dir)s"
    )


class StoreError(VmopsError):
    msg_fmt = "the database %(path)s cannot be used: %(reason)s"


class DatabaseCorrupt(StoreError):
    msg_fmt = (
        "the database %(path)s is damaged (%(reason)s), so vmops will not start on it: "
        "a damaged file could lose or make up records. Keep it, and either restore a "
        "copy (the newest %(path)s.v*.bak from an upgrade, or your own backup) or move it "
        "aside to start with no records (running VMs are then left alone, unmanaged)"
    )


class DatabaseTooNew(StoreError):
    msg_fmt = (
        "the database %(path)s has schema version %(found)d, newer than this vmops "
        "understands (%(supported)d): it was written by a newer vmops. Run that version, "
        "or restore a backup made before the upgrade; the file was not modified"
    )


class MigrationFailed(StoreError):
    msg_fmt = (
        "upgrading the database %(path)s to schema version %(version)d failed: %(reason)s. "
        "Nothing was changed (the migration was rolled back); a copy taken before it "
        "is %(backup)s"
    )


class HypervisorError(VmopsError):
    msg_fmt = "hypervisor error: %(reason)s"


class DiskError(HypervisorError):
    msg_fmt = "disk operation failed: %(reason)s"


class NetworkError(VmopsError):
    msg_fmt = "network set-up failed: %(reason)s"
