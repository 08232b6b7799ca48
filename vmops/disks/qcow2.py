"""New qcow2 images written by vmops itself, without a qemu-img child process.

``qemu-img create -f qcow2 [-b BASE -F FMT] DEST SIZE`` is ~12 ms on this
host, almost all of it qemu-img's own start-up, and it was the largest part
of spawn's ``disks`` step (#17; 32 spawns at once ran 32 of them on two
cores). What it writes is small and fixed, so vmops writes the same bytes
itself: :func:`image` lays them out, :func:`write` puts them in a file.

The bytes are exactly those QEMU 7.2's ``qemu-img create`` writes with its
defaults (tests/unit/test_disks_qcow2.py compares them byte for byte with
this host's qemu-img, and checks the result with ``qemu-img check`` and a
``qemu-io`` round trip):

- cluster 0: the version 3 header (64 KiB clusters, 16-bit refcounts, zlib,
  no lazy refcounts, no extended L2, clean), its extensions (the backing
  format when there is a backing file, then the feature name table, then
  the end marker), then the backing file's name;
- cluster 1: the refcount table, one entry: the refcount block at cluster 2;
- cluster 2: the refcount block: 1 for each cluster in use (these three and
  the L1 table's);
- from cluster 3: the L1 table, one zero entry per 512 MiB of virtual size
  (none for size 0); the file ends where the table ends, not at a cluster.

Only the non-zero bytes are written (the rest are holes: the file is
sparse where qemu-img's is not), then the file is fsynced, as qemu-img
fdatasyncs it before exiting.

What this does not cover raises :class:`Unsupported` and the caller runs
qemu-img instead (vmops/disks/qemu_img.py): a size not a multiple of 512
(qemu-img rounds it up), above :data:`MAX_SIZE`, a backing format other
than raw or qcow2, a backing name longer than :data:`MAX_BACKING_NAME`
bytes (qemu's own limit) or not absolute.

The backing file is checked where ``qemu-img create`` would fail to open
it: it must exist and be readable, and a base said to be qcow2 must start
with qcow2's magic and a version QEMU reads (2 or 3). qemu-img checks the
rest of a qcow2 header too; vmops' bases were checked whole when the image
cache took them (vmops/disks/cache.py: the inspector, then ``qemu-img
check``), and QEMU checks them again when it opens them. Its format is
always written (the backing format extension): QEMU never probes it.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from vmops.errors import DiskError, StorageFull, storage_full

CLUSTER_BITS = 16
CLUSTER_SIZE = 1 << CLUSTER_BITS
REFCOUNT_ORDER = 4  # 16-bit refcounts
HEADER_LENGTH = 112  # version 3 header with the compression type byte, padded to 8
L1_ENTRY_SPAN = CLUSTER_SIZE * (CLUSTER_SIZE // 8)  # one L2 table maps 512 MiB
MAGIC = b"QFI\xfb"
MAX_BACKING_NAME = 1023  # QEMU refuses longer backing file names on open
MAX_SIZE = 256 << 40  # sizes compared with qemu-img in the tests go this far
BACKING_FORMATS = ("raw", "qcow2")

EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857

# The feature name table QEMU 7.2 writes: (type, bit, name); type 0
# incompatible, 1 compatible, 2 autoclear.
FEATURES: tuple[tuple[int, int, bytes], ...] = (
    (0, 0, b"dirty bit"),
    (0, 1, b"corrupt bit"),
    (0, 2, b"external data file"),
    (0, 3, b"compression type"),
    (0, 4, b"extended L2 entries"),
    (1, 0, b"lazy refcounts"),
    (2, 0, b"bitmaps"),
    (2, 1, b"raw external data"),
)


class Unsupported(Exception):
    """This writer does not make that image; qemu-img does."""


@dataclass(frozen=True)
class Image:
    """A new qcow2 file: its length and the non-zero bytes at their offsets."""

    length: int
    chunks: tuple[tuple[int, bytes], ...]


def image(size: int, backing: str | None = None, backing_format: str | None = None) -> Image:
    """The bytes of ``qemu-img create -f qcow2 [-b backing -F backing_format] size``.

    Raises :class:`Unsupported` for anything outside what this module writes."""
    if size < 0 or size % 512:
        raise Unsupported(f"size {size} is not a multiple of 512 bytes")
    if size > MAX_SIZE:
        raise Unsupported(f"size {size} is above {MAX_SIZE}")
    if (backing is None) != (backing_format is None):
        raise Unsupported("a backing file needs its format, and a format its file")

    l1_size = -(-size // L1_ENTRY_SPAN)
    l1_clusters = -(-l1_size * 8 // CLUSTER_SIZE)
    l1_offset = 3 * CLUSTER_SIZE if l1_size else 0
    clusters_used = 3 + l1_clusters

    extensions = b""
    name = b""
    if backing is not None and backing_format is not None:
        if backing_format not in BACKING_FORMATS:
            raise Unsupported(f"backing format {backing_format!r}")
        name = os.fsencode(backing)
        if not name.startswith(b"/"):
            raise Unsupported(f"backing file {backing!r} is not an absolute path")
        if len(name) > MAX_BACKING_NAME:
            raise Unsupported(f"backing file name of {len(name)} bytes (at most "
                              f"{MAX_BACKING_NAME})")
        extensions += _extension(EXT_BACKING_FORMAT, backing_format.encode())
    table = b"".join(struct.pack(">BB46s", kind, bit, label) for kind, bit, label in FEATURES)
    extensions += _extension(EXT_FEATURE_TABLE, table) + struct.pack(">II", EXT_END, 0)
    name_offset = HEADER_LENGTH + len(extensions) if name else 0

    header = struct.pack(
        ">4sIQIIQIIQQIIQQQQII8x",
        MAGIC,
        3,  # version
        name_offset,
        len(name),
        CLUSTER_BITS,
        size,
        0,  # no encryption
        l1_size,
        l1_offset,
        CLUSTER_SIZE,  # refcount table: cluster 1
        1,  # of one cluster
        0,  # no snapshots
        0,
        0,  # incompatible features: none (clean)
        0,  # compatible features: none (no lazy refcounts)
        0,  # autoclear features: none
        REFCOUNT_ORDER,
        HEADER_LENGTH,
        # then the compression type (0, zlib) and padding: the 8x
    )
    assert len(header) == HEADER_LENGTH
    cluster0 = header + extensions + name
    assert len(cluster0) <= CLUSTER_SIZE
    refcount_table = struct.pack(">Q", 2 * CLUSTER_SIZE)
    refcount_block = struct.pack(">H", 1) * clusters_used
    return Image(
        length=3 * CLUSTER_SIZE + l1_size * 8,
        chunks=((0, cluster0), (CLUSTER_SIZE, refcount_table), (2 * CLUSTER_SIZE, refcount_block)),
    )


def check_backing(backing: str, backing_format: str) -> None:
    """What ``qemu-img create`` would refuse when it opens the backing file:
    it is there, readable, and (said to be qcow2) starts with qcow2's magic
    and version 2 or 3."""
    try:
        fd = os.open(backing, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DiskError(reason=f"cannot open the backing file {backing}: "
                        f"{exc.strerror or exc}") from None
    try:
        head = os.pread(fd, len(MAGIC) + 4, 0)
    except OSError as exc:
        raise DiskError(reason=f"cannot read the backing file {backing}: "
                        f"{exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if backing_format != "qcow2":
        return
    if head[:len(MAGIC)] != MAGIC or len(head) < len(MAGIC) + 4:
        raise DiskError(reason=f"the backing file {backing} is not in qcow2 format")
    version = struct.unpack(">I", head[len(MAGIC):])[0]
    if version not in (2, 3):
        raise DiskError(reason=f"the backing file {backing} is qcow2 version {version}, "
                        "which QEMU does not read (2 or 3)")


def write(dest: Path, img: Image) -> None:
    """Write ``img`` to ``dest`` (made, or emptied as qemu-img empties an
    existing file), sparse, fsynced. On failure ``dest`` is left as it is;
    the caller removes it (vmops/disks/instance_disks.py ``_new_disk``)."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        for offset, data in img.chunks:
            if os.pwrite(fd, data, offset) != len(data):
                raise OSError(f"short write at {offset}")
        os.ftruncate(fd, img.length)
        os.fsync(fd)
    except OSError as exc:
        if storage_full(exc) is not None:  # 507, naming where, as a full disk anywhere
            raise StorageFull(what=f"the file system holding {dest}") from None
        raise DiskError(reason=f"cannot write the qcow2 image {dest}: {exc}") from None
    finally:
        os.close(fd)


def _extension(kind: int, data: bytes) -> bytes:
    """A header extension: type, length, data padded to 8 bytes."""
    return struct.pack(">II", kind, len(data)) + data + b"\0" * (-len(data) % 8)
