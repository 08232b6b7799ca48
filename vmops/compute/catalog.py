"""Images, flavors and keypairs: the things instances are made from."""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
import uuid as uuidlib
from pathlib import Path

from vmops.compute.names import check_resource_name
from vmops.disks.cache import ImageCache
from vmops.errors import InUse, Invalid, InvalidFlavor, VmopsError
from vmops.store import Flavor, Image, Keypair, Store

log = logging.getLogger(__name__)

# Bounds that catch typos (RAM given in GiB, bytes, ...) rather than policy.
MAX_RAM_MIB = 4 * 1024 * 1024
MAX_VCPUS = 1024
MAX_DISK_GB = 64 * 1024
PROGRESS_EVERY_S = 0.25


class Catalog:
    def __init__(self, store: Store, cache: ImageCache) -> None:
        self.store = store
        self.cache = cache

    # -- images --------------------------------------------------------------
    def import_image(self, name: str, source: str, checksum: str | None = None,
                     disk_format: str | None = None, background: bool = True) -> Image:
        check_resource_name(name, "image")
        if not source.startswith(("http://", "https://")):
            path = Path(source)
            if not path.is_absolute():
                raise Invalid(reason=f"image source {source!r} must be an absolute path or URL")
            if not path.is_file():
                raise Invalid(reason=f"image file {source} does not exist or is not a file")
        image = self.store.add_image(Image(id=str(uuidlib.uuid4()), name=name, status="queued",
                                           source=source))
        args = (image, source, checksum, disk_format)
        if not background:
            self._import(*args)
            return self.store.image(image.id)
        threading.Thread(target=self._import, args=args, name=f"import-{name}",
                         daemon=True).start()
        return image

    def _import(self, image: Image, source: str, checksum: str | None,
                disk_format: str | None) -> None:
        last = [0.0]

        def progress(done: int, total: int | None) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S:
                last[0] = now
                self.store.update_image(self.store.image(image.id), status="saving",
                                        bytes_done=done, bytes_total=total)

        try:
            cached = self.cache.import_image(source, expected_checksum=checksum,
                                             declared_format=disk_format, progress=progress)
        except Exception as exc:  # noqa: BLE001 - the record must say why
            fault = exc.message if isinstance(exc, VmopsError) else f"{type(exc).__name__}: {exc}"
            log.warning("import of image %s failed: %s", image.name, fault)
            self.store.update_image(self.store.image(image.id), status="error", fault=fault)
            return
        self.store.update_image(
            self.store.image(image.id), status="active", format=cached.format,
            virtual_size=cached.virtual_size, file_size=cached.file_size,
            checksum=cached.checksum, path=str(cached.path), bytes_done=cached.file_size,
            bytes_total=cached.file_size)

    def delete_image(self, ref: str) -> None:
        image = self.store.image(ref)
        users = self.store.instances_using("image_id", image.id)
        if users:
            raise InUse(kind="image", name=image.name, users=", ".join(users))
        self.store.delete_image(image.id)
        if image.path and not any(i.path == image.path for i in self.store.images()):
            self.cache.remove(Path(image.path))

    def prune_images(self, older_than_s: float) -> list[str]:
        """Forget and remove active images no instance uses, unused for that long."""
        removed = []
        now = time.time()
        for image in self.store.images():
            if self.store.instances_using("image_id", image.id):
                continue
            if now - image.updated_at < older_than_s:
                continue
            self.delete_image(image.id)
            removed.append(image.name)
        return removed

    # -- flavors -------------------------------------------------------------
    def create_flavor(self, name: str, ram_mib: int, vcpus: int, disk_gb: int,
                      ephemeral_gb: int = 0, flavor_id: str | None = None) -> Flavor:
        check_resource_name(name, "flavor")
        _check_range("ram", ram_mib, 16, MAX_RAM_MIB, "MiB")
        _check_range("vcpus", vcpus, 1, MAX_VCPUS, "vCPUs")
        _check_range("disk", disk_gb, 0, MAX_DISK_GB, "GiB")
        _check_range("ephemeral", ephemeral_gb, 0, MAX_DISK_GB, "GiB")
        return self.store.add_flavor(Flavor(id=flavor_id or str(uuidlib.uuid4()), name=name,
                                            ram_mib=ram_mib, vcpus=vcpus, root_gb=disk_gb,
                                            ephemeral_gb=ephemeral_gb))

    def delete_flavor(self, ref: str) -> None:
        flavor = self.store.flavor(ref)
        users = self.store.instances_using("flavor_id", flavor.id)
        if users:
            raise InUse(kind="flavor", name=flavor.name, users=", ".join(users))
        self.store.delete_flavor(flavor.id)

    # -- keypairs ------------------------------------------------------------
    def add_keypair(self, name: str, public_key: str) -> Keypair:
        check_resource_name(name, "keypair")
        return self.store.add_keypair(Keypair(name=name, public_key=public_key.strip(),
                                              fingerprint=ssh_fingerprint(public_key)))


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
