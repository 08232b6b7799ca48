"""Safe disk image inspection: what an image is, from its headers alone.

Everything here reads bytes with Python; nothing runs qemu-img, because
qemu-img itself is the attack surface a hostile image is aimed at. Format
detection and the published safety checks come from oslo.utils'
``format_inspector``; the extra rules below close the gaps it leaves
(truncation, host-file references in VMDK, encryption, text files).

Rules, in the order they are applied:

1. The path must be a non-empty regular file.
2. Exactly one format may match; a file that parses as two (a polyglot) is
   refused, since qemu and the inspector could disagree about it.
3. "raw" is what is left when nothing matches, so raw must earn its name:
   the size is a multiple of 512, the first bytes are not the magic of a
   known format (that would be a truncated or damaged image), and the
   first sector is not plain text (an HTML error page, a VMDK descriptor),
   unless the caller says text is fine (bytes a client uploaded and
   declared raw: they are what the client meant, and vmops names the
   format of every disk it hands qemu, so nothing probes them).
   A raw disk with an MBR/GPT partition table is reported by the inspector
   as "gpt" and accepted as raw once its MBR passes the inspector's check.
   A fixed VHD (raw data plus a 512-byte footer at the end) is recognised
   by that footer and reported as "vpc".
4. The inspector's safety checks must pass: qcow2 without backing file,
   external data file or unknown incompatible features; vmdk only
   monolithicSparse/streamOptimized with no path in its extents.
5. Our own checks: every table the header points at lies inside the file
   (catches truncation), qcow2 is neither encrypted nor marked corrupt,
   VHD is not differencing, and a VMDK has its descriptor embedded in a
   sparse header with exactly one SPARSE extent (a text-only descriptor
   exists to point at other files, so it is always refused).
6. A declared format must equal the detected one ("vhd" means "vpc").
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from oslo_utils.imageutils import format_inspector as fi

from vmops.errors import InvalidImage

# qemu's names; the inspector says "vhd" where qemu says "vpc".
ACCEPTED_FORMATS = frozenset({"qcow2", "raw", "vpc", "vhdx", "vmdk"})
_DECLARED_ALIASES = {"vhd": "vpc"}
_INSPECTOR_TO_QEMU = {"vhd": "vpc", "gpt": "raw"}

SECTOR = 512
# Magic numbers at offset 0 of formats qemu can open; a "raw" file that
# starts with one is a damaged image, not a disk.
_KNOWN_MAGIC = {
    b"QFI\xfb": "qcow2",
    b"QED\x00": "qed",
    b"conectix": "vhd",
    b"vhdxfile": "vhdx",
    b"KDMV": "vmdk",
    b"LUKS\xba\xbe": "luks",
    b"# Disk DescriptorFile": "vmdk descriptor",
}
_SAFETY_REASONS = {
    "backing_file": "qcow2 image has a backing file (qemu would open another host file)",
    "data_file": "qcow2 image uses an external data file (qemu would open another host file)",
    "unknown_features": "qcow2 image sets incompatible feature bits that are not understood",
    "mbr": "partition table is malformed",
    "banned": "format is not allowed",
}


@dataclass(frozen=True)
class ImageFacts:
    """What an image is: its qemu format name and its sizes in bytes."""

    format: str
    virtual_size: int
    file_size: int


def normalize_format(name: str) -> str:
    """Map a user's format name to qemu's, refusing formats we do not take."""
    fmt = _DECLARED_ALIASES.get(name.strip().lower(), name.strip().lower())
    if fmt not in ACCEPTED_FORMATS:
        allowed = ", ".join(sorted(ACCEPTED_FORMATS | set(_DECLARED_ALIASES)))
        raise InvalidImage(reason=f"unsupported disk format {name!r}; use one of {allowed}")
    return fmt


def inspect_image(path: Path, declared_format: str | None = None,
                  text_is_raw: bool = False) -> ImageFacts:
    """Identify ``path`` from its headers and refuse anything unsafe.
    ``text_is_raw``: a file of text may be a raw disk (rule 3)."""
    wanted = normalize_format(declared_format) if declared_format else None
    file_size = _regular_file_size(path)
    inspector = _detect(path)
    fmt = _qemu_format(inspector, path, file_size, text_is_raw)
    if wanted is not None and wanted != fmt:
        raise InvalidImage(reason=f"{path.name}: declared format {wanted!r} but content is {fmt!r}")
    _run_safety_checks(inspector, fmt)
    virtual_size = _SIZE_CHECKS[fmt](path, file_size, inspector)
    if virtual_size <= 0:
        raise InvalidImage(reason=f"{path.name}: {fmt} header gives no virtual size")
    return ImageFacts(format=fmt, virtual_size=virtual_size, file_size=file_size)


def _regular_file_size(path: Path) -> int:
    try:
        st = path.stat()
    except OSError as exc:
        raise InvalidImage(reason=f"cannot read {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise InvalidImage(reason=f"{path} is not a regular file")
    if st.st_size == 0:
        raise InvalidImage(reason=f"{path.name} is empty")
    return st.st_size


def _detect(path: Path) -> fi.FileInspector:
    try:
        inspector = fi.detect_file_format(str(path))
    except fi.ImageFormatError as exc:
        # The only error detection raises: more than one format matched.
        raise InvalidImage(reason=f"{path.name}: {exc}; refusing an ambiguous image") from exc
    if inspector is None:  # only when the stream ends before a decision
        raise InvalidImage(reason=f"{path.name}: format could not be determined")
    return inspector


def _qemu_format(inspector: fi.FileInspector, path: Path, file_size: int,
                 text_is_raw: bool) -> str:
    name = _INSPECTOR_TO_QEMU.get(inspector.NAME, inspector.NAME)
    if name not in ACCEPTED_FORMATS:
        raise InvalidImage(reason=f"{path.name}: {inspector.NAME} images are not supported")
    if name == "raw":  # nothing matched, or only a partition table did
        return _classify_raw(path, file_size, text_is_raw)
    return name


def _classify_raw(path: Path, file_size: int, text_is_raw: bool) -> str:
    """Decide whether a would-be raw file is a raw disk (or a fixed VHD).

    A fixed VHD of a partitioned disk starts with its MBR, so the footer is
    looked for whatever the inspector said.
    """
    if _fixed_vhd_footer(path, file_size) is not None:
        return "vpc"
    if file_size % SECTOR:
        raise InvalidImage(
            reason=f"{path.name}: size {file_size} is not a multiple of {SECTOR} bytes, "
            "so it is not a raw disk (truncated, or not a disk image)"
        )
    head = _read_at(path, 0, SECTOR)
    for magic, fmt in _KNOWN_MAGIC.items():
        if head.startswith(magic):
            raise InvalidImage(
                reason=f"{path.name}: starts like a {fmt} image but its headers do not "
                "parse (truncated or damaged)"
            )
    if not text_is_raw and _is_text(head):
        raise InvalidImage(reason=f"{path.name}: is a text file, not a disk image")
    return "raw"


def _is_text(data: bytes) -> bool:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch.isspace() for ch in text)


def _run_safety_checks(inspector: fi.FileInspector, fmt: str) -> None:
    try:
        inspector.safety_check()
    except fi.SafetyCheckFailed as exc:
        reasons = [
            _SAFETY_REASONS.get(name, f"{fmt} {name} check failed: {failure}")
            for name, failure in exc.failures.items()
        ]
        raise InvalidImage(reason="; ".join(reasons)) from exc
    except fi.ImageFormatError as exc:
        # Raised when the regions the checks need were never filled: EOF first.
        raise InvalidImage(reason=f"{fmt} image is truncated: {exc}") from exc


def _read_at(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


def _require_inside(path: Path, file_size: int, what: str, offset: int, length: int) -> None:
    """Refuse a header that points past EOF: the file was cut short."""
    if offset < 0 or length < 0 or offset + length > file_size:
        raise InvalidImage(
            reason=f"{path.name} is truncated: {what} at {offset}+{length} bytes "
            f"lies beyond the end of the {file_size}-byte file"
        )


# --- per-format size sanity; each returns the virtual size ------------------

_QCOW2_CORRUPT_BIT = 1 << 1


def _check_qcow2(path: Path, file_size: int, inspector: fi.FileInspector) -> int:
    head = _read_at(path, 0, 80)  # the inspector matched, so >= 512 bytes exist
    (version, _bf_off, _bf_len, cluster_bits, size, crypt, l1_entries, l1_off,
     rc_off, rc_clusters) = struct.unpack(">4xIQIIQIIQQI", head[:60])  # fmt: skip
    if not 9 <= cluster_bits <= 21:
        raise InvalidImage(reason=f"{path.name}: qcow2 cluster_bits {cluster_bits} out of range")
    if crypt != 0:
        raise InvalidImage(reason=f"{path.name}: qcow2 image is encrypted")
    if version >= 3 and struct.unpack(">Q", head[72:80])[0] & _QCOW2_CORRUPT_BIT:
        raise InvalidImage(reason=f"{path.name}: qcow2 image is marked corrupt")
    _require_inside(path, file_size, "qcow2 L1 table", l1_off, l1_entries * 8)
    _require_inside(path, file_size, "qcow2 refcount table", rc_off, rc_clusters << cluster_bits)
    return int(size)


_VHD_FIXED, _VHD_DYNAMIC = 2, 3


def _fixed_vhd_footer(path: Path, file_size: int) -> int | None:
    """Virtual size of a fixed VHD (footer only at the end), else None."""
    if file_size < 2 * SECTOR or file_size % SECTOR:
        return None
    footer = _read_at(path, file_size - SECTOR, SECTOR)
    if not footer.startswith(b"conectix"):
        return None
    current_size, disk_type = struct.unpack(">Q4xI", footer[48:64])
    if disk_type != _VHD_FIXED or current_size > file_size - SECTOR:
        return None
    return int(current_size)


def _check_vpc(path: Path, file_size: int, inspector: fi.FileInspector) -> int:
    fixed_size = _fixed_vhd_footer(path, file_size)
    if fixed_size is not None:
        return fixed_size
    footer = _read_at(path, 0, SECTOR)
    (data_offset,) = struct.unpack(">Q", footer[16:24])
    (disk_type,) = struct.unpack(">I", footer[60:64])
    if disk_type != _VHD_DYNAMIC:
        kind = "differencing (it names a parent file)" if disk_type == 4 else f"type {disk_type}"
        raise InvalidImage(reason=f"{path.name}: VHD disk is {kind}; only fixed/dynamic allowed")
    _require_inside(path, file_size, "VHD dynamic header", data_offset, 1024)
    dyn = _read_at(path, data_offset, 1024)
    cookie, table_off, entries = struct.unpack(">8s8xQ4xI", dyn[:32])
    if cookie != b"cxsparse":
        raise InvalidImage(reason=f"{path.name}: VHD dynamic header is missing")
    _require_inside(path, file_size, "VHD block table", table_off, entries * 4)
    # A dynamic VHD ends with a copy of its footer; cut short, it does not.
    if not _read_at(path, file_size - SECTOR, 8).startswith(b"conectix"):
        raise InvalidImage(reason=f"{path.name} is truncated: VHD footer copy missing at end")
    return inspector.virtual_size


_VHDX_REGION_TABLE = 192 * 1024


def _check_vhdx(path: Path, file_size: int, inspector: fi.FileInspector) -> int:
    table = _read_at(path, _VHDX_REGION_TABLE, 16 + 2047 * 32)
    (count,) = struct.unpack("<8xI", table[:12])
    for i in range(min(count, 2047)):
        entry = table[16 + i * 32 : 48 + i * 32]
        offset, length = struct.unpack("<16xQI", entry[:28])
        _require_inside(path, file_size, f"VHDX region {i}", offset, length)
    return inspector.virtual_size


_VMDK_GD_AT_END = 0xFFFFFFFFFFFFFFFF


def _check_vmdk(path: Path, file_size: int, inspector: fi.FileInspector) -> int:
    head = _read_at(path, 0, 64)
    if not head.startswith(b"KDMV"):
        raise InvalidImage(
            reason=f"{path.name}: VMDK descriptor file without a sparse header; its "
            "extents would be other files on this host"
        )
    capacity, grain, desc_sec, desc_num, gtes, _rgd, gd_sec = struct.unpack("<12xQQQQIQQ", head)
    _require_inside(path, file_size, "VMDK descriptor", desc_sec * SECTOR, desc_num * SECTOR)
    if gd_sec == _VMDK_GD_AT_END:
        # Stream layout: the real header is the footer, 1024 bytes before EOF.
        (gd_sec,) = struct.unpack("<Q", _read_at(path, file_size - 1024 + 56, 8))
    _check_vmdk_grain_tables(path, file_size, capacity, grain, gtes, gd_sec)
    _require_single_sparse_extent(path, getattr(inspector, "desc_text", None) or "")
    return int(capacity) * SECTOR


_VMDK_MAX_GTES = 512  # qemu refuses larger grain tables too
_VMDK_MAX_GD_ENTRIES = 1 << 20  # 32 TiB with the usual 64 KiB grains


def _check_vmdk_grain_tables(
    path: Path, file_size: int, capacity: int, grain: int, gtes: int, gd_sec: int
) -> None:
    """Every grain table, and the last grain each points at, lies inside the file."""
    if not (0 < gtes <= _VMDK_MAX_GTES and grain > 0):
        raise InvalidImage(reason=f"{path.name}: VMDK grain geometry {grain}x{gtes} is invalid")
    n_tables = -(-capacity // (grain * gtes))
    if n_tables > _VMDK_MAX_GD_ENTRIES:
        raise InvalidImage(reason=f"{path.name}: VMDK capacity {capacity} sectors is too large")
    _require_inside(path, file_size, "VMDK grain directory", gd_sec * SECTOR, n_tables * 4)
    with path.open("rb") as f:
        f.seek(gd_sec * SECTOR)
        directory = struct.unpack(f"<{n_tables}I", f.read(n_tables * 4))
        for table_sec in filter(None, directory):
            _require_inside(path, file_size, "VMDK grain table", table_sec * SECTOR, gtes * 4)
            f.seek(table_sec * SECTOR)
            last = max(struct.unpack(f"<{gtes}I", f.read(gtes * 4)))
            if last > 1:  # 0: unallocated, 1: a zeroed grain
                _require_inside(path, file_size, "VMDK grain", last * SECTOR, SECTOR)


def _require_single_sparse_extent(path: Path, descriptor: str) -> None:
    extents = [
        line.split()
        for line in descriptor.splitlines()
        if line.strip().split(" ")[0] in ("rw", "rdonly", "noaccess")
    ]
    if len(extents) != 1 or len(extents[0]) < 3 or extents[0][2] != "sparse":
        raise InvalidImage(
            reason=f"{path.name}: VMDK descriptor must name exactly one SPARSE extent "
            f"(the file itself), found {[' '.join(e) for e in extents]}"
        )


def _check_raw(path: Path, file_size: int, inspector: fi.FileInspector) -> int:
    return file_size


_SIZE_CHECKS: dict[str, Callable[[Path, int, fi.FileInspector], int]] = {
    "qcow2": _check_qcow2,
    "raw": _check_raw,
    "vpc": _check_vpc,
    "vhdx": _check_vhdx,
    "vmdk": _check_vmdk,
}

__all__ = ["ACCEPTED_FORMATS", "ImageFacts", "inspect_image", "normalize_format"]
