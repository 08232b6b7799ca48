"""An instance's own disks: the root disk made from a cached base, and ephemeral disks.

Every disk made here is qcow2:
- root with ``use_cow``: a qcow2 overlay whose backing file is the base
  (named by absolute path, its format recorded so qemu never probes it).
  Creating it writes only metadata, so its cost does not depend on the
  base's size; vmops writes that metadata itself (vmops/disks/qcow2.py,
  byte for byte what ``qemu-img create -b BASE -F FMT`` writes), with no
  child process, and runs qemu-img only for what that writer does not cover.
- root without ``use_cow``: ``qemu-img convert`` of the base to a
  standalone qcow2, then grown. We convert rather than ``cp`` a raw base
  so that every root disk has one format whatever the base was (the same
  resize, snapshot and libvirt code paths), and because convert skips
  zeroed blocks, so the copy stays sparse.
- ephemeral: an empty sparse qcow2 of exactly the requested size, written
  the same way (``qemu-img create``'s bytes, no child process); the guest
  formats it.

A disk file is claimed with O_EXCL first, so an existing file is never
overwritten, and any failure removes the file being made (and only it).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vmops.disks import qemu_img
from vmops.errors import DiskError, FlavorTooSmall

DISK_FORMAT = "qcow2"


class BaseLike(Protocol):
    """What a root disk needs to know about its base (CachedImage fits)."""

    @property
    def path(self) -> Path: ...
    @property
    def format(self) -> str: ...
    @property
    def virtual_size(self) -> int: ...


@dataclass(frozen=True)
class BaseImage:
    """A base image as the caller's records describe it."""

    path: Path
    format: str
    virtual_size: int


@dataclass(frozen=True)
class DiskFacts:
    path: Path
    format: str


def create_root_disk(
    base: BaseLike,
    dest: Path,
    size_bytes: int | None,
    use_cow: bool,
    flavor_name: str,
    image_name: str,
) -> DiskFacts:
    """Make the root disk at ``dest``; ``size_bytes`` None/0 means the image's size."""
    size = size_bytes or base.virtual_size
    if size < base.virtual_size:
        # Checked before touching the disk: a shrunk root disk loses guest data.
        raise FlavorTooSmall(
            flavor=flavor_name,
            flavor_bytes=size,
            image=image_name,
            image_bytes=base.virtual_size,
        )
    with _new_disk(dest):
        if use_cow:
            qemu_img.create_overlay(base.path, base.format, dest, size)
        else:
            qemu_img.convert(base.path, base.format, dest, DISK_FORMAT)
            if size > base.virtual_size:
                qemu_img.resize(dest, DISK_FORMAT, size)
    return DiskFacts(path=dest, format=DISK_FORMAT)


def create_ephemeral_disk(dest: Path, size_bytes: int) -> DiskFacts:
    """Make an empty, unformatted disk of exactly ``size_bytes``."""
    if size_bytes <= 0:
        raise ValueError(f"ephemeral disk size must be positive, not {size_bytes}")
    with _new_disk(dest):
        qemu_img.create(dest, DISK_FORMAT, size_bytes)
    return DiskFacts(path=dest, format=DISK_FORMAT)


def create_swap_disk(dest: Path, size_bytes: int) -> DiskFacts:
    """A raw disk of exactly ``size_bytes`` made a swap area (``mkswap``,
    labelled ``swap``), as Nova's libvirt driver makes a flavor's swap disk;
    sparse until the guest swaps."""
    if size_bytes <= 0:
        raise ValueError(f"swap disk size must be positive, not {size_bytes}")
    with _new_disk(dest):
        os.truncate(dest, size_bytes)
        try:
            subprocess.run(["mkswap", "-L", "swap", str(dest)], check=True,
                           capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) \
                else str(exc)
            raise DiskError(reason=f"cannot make the swap disk {dest}: {detail}") from None
    return DiskFacts(path=dest, format="raw")


def copy_flattened(src: Path, fmt: str, dest: Path, held_open: bool) -> None:
    """Write a standalone qcow2 copy of an instance's disk to ``dest`` (an
    existing empty file), its base read through. ``held_open``: a QEMU has
    the disk open; the caller has stopped its vCPUs, so nothing writes it."""
    qemu_img.convert(src, fmt, dest, DISK_FORMAT, force_share=held_open)


def copy_whole(src: Path, dest: Path) -> None:
    """Copy a disk file as it is to a new file ``dest``, synced to disk: a
    qcow2 overlay stays one, naming the same base (resize keeps the old disks
    this way). Reflinked where the file system can, holes kept."""
    with _new_disk(dest):
        try:
            subprocess.run(["cp", "--reflink=auto", "--sparse=always", "--", str(src),
                            str(dest)], check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            raise DiskError(reason=f"cannot copy {src}: {exc.stderr.strip()}") from None
        fd = os.open(dest, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _new_disk(dest: Path) -> Iterator[None]:
    """Claim ``dest`` exclusively; remove it again if making it fails."""
    try:
        os.close(os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError as exc:
        raise DiskError(reason=f"{dest} already exists; refusing to overwrite a disk") from exc
    try:
        yield
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
