"""Images, flavors and keypairs: the things instances are made from.

An image import is checked here before anything is read: a URL must be
http(s); a host path absolute, and only an admin may name one: over the
unix socket any path (its owner is root already), over TCP only inside
the ``image_import_dirs`` setting, judged on the text alone so a refusal
reveals nothing about the file. The record keeps the source without
``user:password@``; the import itself runs in a thread
(:meth:`ImageCache.import_image`). An import the service did not live to
finish is settled at the next start (:meth:`Catalog.recover_imports`).

An image may also be made Glance's way: a record first (``queued``, no
file), then its bytes uploaded (:meth:`Catalog.upload_image`) into the same
checks and cache. A refused or broken upload leaves no file and the image
``queued`` again, with the reason in its fault.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import logging
import re
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from vmops.compute.names import check_resource_id, check_resource_name
from vmops.config import Settings
from vmops.configdrive.metadata import MAX_PUBLIC_KEY_BYTES
from vmops.disks.cache import CachedImage, ImageCache
from vmops.disks.sources import URL_SCHEMES, ImportLimits, Source, is_url, redact_url
from vmops.errors import (
    Conflict,
    Forbidden,
    ImageGone,
    ImageNotFound,
    ImageSourceForbidden,
    InUse,
    Invalid,
    InvalidFlavor,
    VmopsError,
)
from vmops.store import Flavor, Image, Keypair, Store
from vmops.text import escape_controls, has_controls

log = logging.getLogger(__name__)

# Bounds that catch typos (RAM given in GiB, bytes, ...) rather than policy.
MAX_RAM_MIB = 4 * 1024 * 1024
MAX_VCPUS = 1024
MAX_DISK_GB = 64 * 1024
PROGRESS_EVERY_S = 0.25
# A login name as useradd takes it (Debian's default NAME_REGEX, 32 bytes).
LOGIN_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")  # fullmatch: "$" passes a newline
UNFINISHED = ("queued", "saving")  # image states of an import in progress
INTERRUPTED = ("the import was interrupted when the vmops service stopped; delete the image "
               "and import it again")


SNAPSHOT_INTERRUPTED = ("the snapshot was interrupted when the vmops service stopped; "
                        "delete the image and take the snapshot again")
UPLOAD_INTERRUPTED = ("the upload was interrupted when the vmops service stopped; upload "
                      "the image data again")
# The source of an image whose bytes a client uploaded (Glance's PUT .../file);
# '' is one made by Glance's image create, waiting for its bytes.
UPLOAD_SOURCE = "upload"
# Glance's properties kept in an image's ``extra``, next to its user properties.
GLANCE_BASE = ("disk_format", "container_format", "min_disk", "min_ram", "protected",
               "os_hidden", "tags", "checksum")


def user_properties(image: Image) -> dict[str, Any]:
    """Glance's user properties of ``image`` (``extra`` less Glance's own)."""
    return {k: v for k, v in image.extra.items() if k not in GLANCE_BASE}


class Catalog:
    def __init__(self, store: Store, cache: ImageCache,
                 host_import_dirs: tuple[Path, ...] = ()) -> None:
        self.store = store
        self.cache = cache
        self.host_import_dirs = host_import_dirs
        self._upload_lock = threading.Lock()  # queued -> saving, one upload at a time

    @classmethod
    def from_settings(cls, settings: Settings, store: Store) -> Catalog:
        cache = ImageCache(settings.images_dir, ImportLimits.from_settings(settings))
        return cls(store, cache, settings.image_import_dir_paths)

    # -- images --------------------------------------------------------------
    def import_image(self, name: str, source: str, checksum: str | None = None,
                     disk_format: str | None = None, background: bool = True,
                     any_host_path: bool = True, login_user: str = "",
                     host_paths: bool = True, owner: str = "") -> Image:
        """``host_paths`` False (a caller who is not admin): URLs only.
        ``any_host_path`` False (an admin over TCP): host paths only inside
        ``host_import_dirs``. ``login_user``: the guest's user that ``vmops
        ssh`` logs in as (e.g. ``debian``); '' for root. ``owner``: the
        project the image belongs to."""
        check_resource_name(name, "image")
        check_login_user(login_user)
        allowed = None if any_host_path else self.host_import_dirs
        check_image_source(source, allowed)
        if not host_paths and not is_url(source):
            raise Forbidden(reason=f"cannot import {source}: only an admin may import a host "
                            "file; import from an http(s) URL, or create the image and "
                            "upload its data (Glance's PUT /v2/images/{id}/file)")
        image = self.store.add_image(Image(id=str(uuidlib.uuid4()), name=name, status="queued",
                                           source=shown_source(source), login_user=login_user,
                                           owner=owner))
        args = (image, source, checksum, disk_format, allowed)
        if not background:
            self._import(*args)
            return self.store.image(image.id)
        threading.Thread(target=self._import, args=args, name=f"import-{name}",
                         daemon=True).start()
        return image

    def _import(self, image: Image, source: str, checksum: str | None,
                disk_format: str | None, allowed_dirs: tuple[Path, ...] | None) -> None:
        last = [0.0]

        def progress(done: int, total: int | None) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S:
                last[0] = now
                self.store.update_image(self.store.image(image.id), status="saving",
                                        bytes_done=done, bytes_total=total)

        try:
            cached = self.cache.import_image(source, expected_checksum=checksum,
                                             declared_format=disk_format, progress=progress,
                                             allowed_dirs=allowed_dirs)
        except Exception as exc:  # noqa: BLE001 - the record must say why
            fault = exc.message if isinstance(exc, VmopsError) else f"{type(exc).__name__}: {exc}"
            fault = fault.replace(source, image.source)  # never a password, whatever failed
            log.warning("import of image %s failed: %s", image.name, escape_controls(fault))
            self.store.update_image(self.store.image(image.id), status="error", fault=fault)
            return
        self._activate(self.store.image(image.id), cached)

    def _activate(self, image: Image, cached: CachedImage) -> None:
        activate_image(self.store, image, cached)

    def recover_imports(self) -> None:
        """At service start: settle the imports the last service left unfinished.

        One that stored its file before the service died is finished; any
        other is failed with a reason (its source may need credentials the
        record never kept). Then no import runs, so every temp file goes.
        """
        for image in self.store.images():
            if image.status not in UNFINISHED:
                continue
            if image.instance_uuid:
                log.warning("snapshot %s was interrupted: marked error", image.name)
                self.store.update_image(image, status="error", fault=SNAPSHOT_INTERRUPTED)
                continue
            if image.source in ("", UPLOAD_SOURCE):  # Glance's: waiting for (new) bytes
                if image.status == "saving":
                    log.warning("upload of image %s was interrupted: queued again", image.id)
                    self.store.update_image(image, status="queued", fault=UPLOAD_INTERRUPTED,
                                            bytes_done=0, bytes_total=None)
                continue
            try:
                cached = self.cache.finished_import(image.source, image.created_at)
            except VmopsError:
                cached = None
            if cached is not None:
                log.info("import of image %s had finished before the service stopped", image.name)
                self._activate(image, cached)
            else:
                log.warning("import of image %s was interrupted: marked error", image.name)
                self.store.update_image(image, status="error", fault=INTERRUPTED)
        removed = self.cache.remove_temp_files()
        if removed:
            log.info("removed %d temp files of interrupted imports", len(removed))

    def delete_image(self, ref: str, project_id: str | None = None) -> None:
        """Refused for a protected image (Glance: 403) and one instances use
        (their disks are overlays on its file). ``project_id``: the caller
        is not admin, so only instances of that project are named."""
        image = self.store.image(ref)
        if image.extra.get("protected"):
            raise Forbidden(reason=f"image {image.id} is protected; set protected to false "
                            "before deleting it")
        users = self.store.instances_using("image_id", image.id)
        if users:
            shown = users if project_id is None else [
                i.name for i in self.store.instances()
                if i.image_id == image.id and i.project_id == project_id]
            hidden = len(users) - len(shown)
            named = ", ".join(shown + ([f"{hidden} of other projects"] if hidden else []))
            raise InUse(kind="image", name=image.name or image.id, users=named)
        self.store.delete_image(image.id)
        self._remove_file_unless_used(image)

    def _remove_file_unless_used(self, image: Image) -> None:
        """Remove ``image``'s file unless another record (same bytes) has it."""
        if image.path and not any(i.path == image.path for i in self.store.images()):
            self.cache.remove(Path(image.path))

    def upload_image(self, image_id: str, data: Source) -> Image:
        """Glance's ``PUT /v2/images/{id}/file``: ``data`` into the cache, as
        an import is checked, while the image is ``saving``. Refused unless
        the image is ``queued`` (409). Anything refused or broken leaves no
        file and the image ``queued`` again, the reason in its fault."""
        with self._upload_lock:
            image = self._image_by_id(image_id)
            if image.status != "queued":
                raise Conflict(reason=f"image {image_id} is {image.status}: only a queued "
                               "image takes data (create another image)")
            disk_format = image.extra.get("disk_format")
            if not disk_format or not image.extra.get("container_format"):
                raise Invalid(reason="set the image's disk_format and container_format "
                              "before uploading its data")
            if image.extra["container_format"] != "bare":
                raise Invalid(reason=f"container_format {image.extra['container_format']!r} "
                              "cannot be uploaded: vmops takes bare disk images only")
            image = self.store.update_image(image, status="saving", source=UPLOAD_SOURCE,
                                            fault="", bytes_done=0, bytes_total=data.length)
        try:
            cached, md5 = self.cache.import_upload(data, disk_format,
                                                   progress=self._progress_of(image))
        except BaseException as exc:
            fault = exc.message if isinstance(exc, VmopsError) else "the upload failed"
            log.warning("upload to image %s refused: %s", image.id, escape_controls(fault))
            self._requeue(image.id, fault)
            raise
        try:
            current = self._image_by_id(image.id)
        except ImageNotFound:  # deleted while its bytes came in (Glance: 410)
            self._remove_file_unless_used(dataclasses.replace(image, path=str(cached.path)))
            raise ImageGone(image=image.id) from None
        current = activate_image(self.store, current, cached)
        return self.store.update_image(current, extra={**current.extra, "checksum": md5})

    def _requeue(self, image_id: str, fault: str) -> None:
        try:
            image = self._image_by_id(image_id)
        except ImageNotFound:
            return
        self.store.update_image(image, status="queued", fault=fault, bytes_done=0,
                                bytes_total=None)

    def _progress_of(self, image: Image) -> Callable[[int, int | None], None]:
        last = [0.0]

        def progress(done: int, total: int | None) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S:
                last[0] = now
                with contextlib.suppress(ImageNotFound):
                    self.store.update_image(self._image_by_id(image.id), bytes_done=done,
                                            bytes_total=total)
        return progress

    def _image_by_id(self, image_id: str) -> Image:
        """By id only (Glance's calls name images by id; names repeat)."""
        image = self.store.image(image_id)
        if image.id != image_id:
            raise ImageNotFound(image=image_id)
        return image

    def prune_images(self, older_than_s: float) -> list[str]:
        """Forget and remove images no instance uses, unused for that long.
        Kept whatever their age: protected images, and those made with
        Glance's calls (their owners uploaded them; nothing can fetch them
        again)."""
        removed = []
        now = time.time()
        for image in self.store.images():
            if image.source in ("", UPLOAD_SOURCE) or image.extra.get("protected"):
                continue
            if self.store.instances_using("image_id", image.id):
                continue
            if now - image.updated_at < older_than_s:
                continue
            self.delete_image(image.id)
            removed.append(image.name)
        return removed

    # -- flavors -------------------------------------------------------------
    def create_flavor(self, name: str, ram_mib: int, vcpus: int, disk_gb: int,
                      ephemeral_gb: int = 0, flavor_id: str | None = None,
                      is_public: bool = True, swap_mb: int = 0,
                      rxtx_factor: float = 1.0) -> Flavor:
        check_resource_name(name, "flavor")
        _check_range("ram", ram_mib, 16, MAX_RAM_MIB, "MiB")
        _check_range("vcpus", vcpus, 1, MAX_VCPUS, "vCPUs")
        _check_range("disk", disk_gb, 0, MAX_DISK_GB, "GiB")
        _check_range("ephemeral", ephemeral_gb, 0, MAX_DISK_GB, "GiB")
        _check_range("swap", swap_mb, 0, MAX_DISK_GB * 1024, "MiB")
        if flavor_id is not None:
            check_resource_id(flavor_id, "flavor")
        return self.store.add_flavor(Flavor(id=flavor_id or str(uuidlib.uuid4()), name=name,
                                            ram_mib=ram_mib, vcpus=vcpus, root_gb=disk_gb,
                                            ephemeral_gb=ephemeral_gb, is_public=is_public,
                                            swap_mb=swap_mb, rxtx_factor=rxtx_factor))

    def delete_flavor(self, ref: str) -> None:
        flavor = self.store.flavor(ref)
        users = self.store.instances_using("flavor_id", flavor.id)
        if users:
            raise InUse(kind="flavor", name=flavor.name, users=", ".join(users))
        self.store.delete_flavor(flavor.id)

    # -- keypairs ------------------------------------------------------------
    def add_keypair(self, name: str, public_key: str, user_id: str = "",
                    key_type: str = "ssh", fingerprint: str | None = None) -> Keypair:
        """``user_id``'s keypair (names are unique per user): an SSH public
        key, or (``key_type`` x509) a PEM certificate and its ``fingerprint``."""
        check_resource_name(name, "keypair")
        # Refused here, not first at a spawn that would put it on a drive.
        size = len(public_key.encode("utf-8", "surrogatepass"))
        if size > MAX_PUBLIC_KEY_BYTES:
            raise Invalid(reason=f"public key is {size} bytes; an SSH public key is at most "
                          f"{MAX_PUBLIC_KEY_BYTES} bytes")
        if key_type == "x509" and fingerprint is not None:
            return self.store.add_keypair(Keypair(name=name, public_key=public_key.strip(),
                                                  fingerprint=fingerprint, type="x509",
                                                  user_id=user_id))
        if any(not c.isprintable() for c in public_key.strip()):
            raise Invalid(reason="public key must be one line of printable text")
        return self.store.add_keypair(Keypair(name=name, public_key=public_key.strip(),
                                              fingerprint=ssh_fingerprint(public_key),
                                              user_id=user_id))


def activate_image(store: Store, image: Image, cached: CachedImage) -> Image:
    """Record that ``image``'s file is in the cache (an import's, a snapshot's)."""
    return store.update_image(
        image, status="active", format=cached.format, virtual_size=cached.virtual_size,
        file_size=cached.file_size, checksum=cached.checksum, path=str(cached.path),
        bytes_done=cached.file_size, bytes_total=cached.file_size, fault="")


def shown_source(source: str) -> str:
    """A source as records, answers and logs may show it: no credentials."""
    return redact_url(source) if is_url(source) else source


def check_login_user(user: str) -> None:
    if user and not LOGIN_USER.fullmatch(user):
        raise Invalid(reason=f"login user {escape_controls(user)!r} is not a user name "
                      "(lower-case letters, digits, '_' and '-', at most 32, not starting "
                      "with a digit or '-')")


def check_image_source(source: str, allowed_dirs: tuple[Path, ...] | None) -> None:
    """Refuse, from the text alone, a source that may not be imported.

    ``allowed_dirs`` None: any absolute host path. Nothing is opened or
    looked up, so the answer is the same whether or not a file exists.
    """
    if has_controls(source):
        raise Invalid(reason="the image source contains a control character")
    if is_url(source):
        try:
            parts = urlsplit(source)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise Invalid(reason="the image source is not a valid URL") from None
        if parts.scheme.lower() not in URL_SCHEMES or not parts.hostname:
            raise Invalid(reason=f"image source {shown_source(source)!r}: only local paths "
                          "and http(s) URLs can be imported")
        return
    path = PurePosixPath(source)
    if not path.is_absolute() or ".." in path.parts:
        raise Invalid(reason=f"image source {source!r} must be an absolute path without '..' "
                      "or an http(s) URL")
    if allowed_dirs is not None and not any(path.is_relative_to(d) for d in allowed_dirs):
        raise ImageSourceForbidden(source=source, dirs=", ".join(map(str, allowed_dirs))
                                   or "none are set")


def _check_range(what: str, value: int, low: int, high: int, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidFlavor(reason=f"{what} must be a whole number of {unit}, got {value!r}")
    if not low <= value <= high:
        raise InvalidFlavor(reason=f"{what} must be from {low} to {high} {unit}, got {value}")


def ssh_fingerprint(public_key: str) -> str:
    """The MD5 fingerprint OpenStack shows; refuses text that is not an SSH key."""
    parts = public_key.strip().split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise Invalid(reason="public key must look like 'ssh-ed25519 AAAA... comment'")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise Invalid(reason="public key's second field is not base64") from None
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))
