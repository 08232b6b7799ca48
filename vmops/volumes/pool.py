"""The local volume pool: one file per volume in ``<state>/volumes``.

Every file is made with ``qemu-img`` naming its format (never probed): a
blank volume is an empty sparse image of the size asked for; one made from
an image is a full copy of the cached image (whose format the import
recorded after its safe inspection), then grown to the size. The file is
claimed with O_EXCL first and removed again if making it fails, so a
failed create leaves no half-made file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from vmops.disks import qemu_img
from vmops.errors import DiskError, Invalid

GIB = 1024**3
FORMATS = ("qcow2", "raw")


def volume_path(pool: Path, volume_id: str, fmt: str) -> Path:
    return pool / f"volume-{volume_id}.{fmt}"


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise Invalid(reason=f"volume format {fmt!r}: one of {', '.join(FORMATS)}")
    return fmt


def check_fits(pool: Path, size_bytes: int, name: str, grown_to_gb: int = 0) -> None:
    """Refuse a volume larger than the pool's free space: its files are
    sparse, but the guest may fill them. ``grown_to_gb``: ``size_bytes`` is
    what an extend to that size adds (the error says so)."""
    pool.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(pool).free
    if size_bytes > free:
        what = (f"extending volume {name!r} to {grown_to_gb} GiB adds {size_bytes // GIB} GiB, "
                "more" if grown_to_gb else f"volume {name!r} of {size_bytes // GIB} GiB is larger")
        raise Invalid(reason=f"{what} than the {free / GIB:.1f} GiB free in {pool}")


def create_blank(dest: Path, fmt: str, size_bytes: int) -> None:
    with _new_file(dest):
        qemu_img.create(dest, fmt, size_bytes)


def create_from_image(src: Path, src_fmt: str, dest: Path, fmt: str, size_bytes: int) -> None:
    """A standalone copy of ``src`` (a backing chain read through), grown
    to ``size_bytes``."""
    with _new_file(dest):
        qemu_img.convert(src, src_fmt, dest, fmt)
        qemu_img.resize(dest, fmt, size_bytes)


def extend(path: Path, fmt: str, size_bytes: int) -> None:
    qemu_img.resize(path, fmt, size_bytes)


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


@contextlib.contextmanager
def _new_file(dest: Path) -> Iterator[None]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(dest.parent, 0o700)
    try:
        os.close(os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError as exc:
        raise DiskError(reason=f"{dest} already exists; refusing to overwrite it") from exc
    try:
        yield
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
