"""The inspector's rules on images crafted byte by byte in Python (no qemu-img)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from oslo_utils.imageutils import format_inspector as fi

from vmops.disks.inspector import ImageFacts, inspect_image, normalize_format
from vmops.errors import InvalidImage

CLUSTER = 1 << 16
MiB = 1 << 20


def qcow2_bytes(
    *,
    size: int = 16 * MiB,
    backing_offset: int = 0,
    crypt: int = 0,
    l1_offset: int = 3 * CLUSTER,
    rc_offset: int = CLUSTER,
    incompatible: int = 0,
    cluster_bits: int = 16,
    file_size: int = 4 * CLUSTER,
) -> bytes:
    """A minimal qcow2 v3 header padded to ``file_size`` (tables are zero)."""
    header = struct.pack(
        ">4sIQIIQIIQQIIQQQQII",
        b"QFI\xfb",
        3,
        backing_offset,
        0,
        cluster_bits,
        size,
        crypt,
        1,  # one L1 entry
        l1_offset,
        rc_offset,
        1,  # one refcount-table cluster
        0,
        0,
        incompatible,
        0,
        0,
        4,  # refcount_order
        104,  # header_length
    )
    return header.ljust(file_size, b"\0")


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refusal(path: Path, declared: str | None = None) -> str:
    with pytest.raises(InvalidImage) as err:
        inspect_image(path, declared)
    return err.value.message


def mbr_sector(partition_type: int = 0x83) -> bytes:
    sector = bytearray(512)
    # One partition: not bootable, type given, LBA 2048, 2048 sectors.
    sector[446:462] = struct.pack("<B3BB3BII", 0, 0, 0, 0, partition_type, 0, 0, 0, 2048, 2048)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def vhd_footer(disk_type: int, current_size: int, data_offset: int = 0xFFFFFFFFFFFFFFFF) -> bytes:
    footer = bytearray(512)
    footer[0:8] = b"conectix"
    footer[16:24] = struct.pack(">Q", data_offset)
    footer[40:56] = struct.pack(">QQ", current_size, current_size)
    footer[60:64] = struct.pack(">I", disk_type)
    return bytes(footer)


# -- names ---------------------------------------------------------------------


def test_normalize_format_accepts_friendly_names() -> None:
    assert normalize_format("VHD") == "vpc"
    assert normalize_format("qcow2") == "qcow2"
    with pytest.raises(InvalidImage, match="unsupported disk format 'vdi'"):
        normalize_format("vdi")


# -- what counts as raw ------------------------------------------------------------


def test_zeroed_sector_aligned_file_is_raw(tmp_path: Path) -> None:
    path = tmp_path / "disk.raw"
    with path.open("wb") as f:
        f.truncate(4 * MiB)
    assert inspect_image(path) == ImageFacts("raw", 4 * MiB, 4 * MiB)


def test_partitioned_raw_disk_is_raw(tmp_path: Path) -> None:
    path = write(tmp_path, "disk.img", mbr_sector().ljust(2 * MiB, b"\0"))
    assert inspect_image(path, "raw").format == "raw"


def test_empty_file_is_refused(tmp_path: Path) -> None:
    assert "is empty" in refusal(write(tmp_path, "empty", b""))


def test_unaligned_file_is_not_raw(tmp_path: Path) -> None:
    assert "not a multiple of 512" in refusal(write(tmp_path, "x", b"\x01" * 1000), "raw")


def test_text_file_is_not_raw(tmp_path: Path) -> None:
    page = b"<html><body>404 Not Found</body></html>\n".ljust(1024, b" ")
    assert "text file" in refusal(write(tmp_path, "page.html", page))


def test_qcow2_cut_inside_its_first_sector_is_not_raw(tmp_path: Path) -> None:
    path = write(tmp_path, "cut.qcow2", qcow2_bytes()[:300])
    assert "not a multiple of 512" in refusal(path)


def test_known_magic_is_never_raw_even_if_the_inspector_misses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defence in depth: should a future inspector fail to match a damaged
    # header, the file must still not pass as raw.
    monkeypatch.setattr(fi, "detect_file_format", lambda _path: fi.RawFileInspector())
    path = write(tmp_path, "bad.qcow2", qcow2_bytes())
    assert "starts like a qcow2 image" in refusal(path)


def test_vhdx_cut_before_its_region_table_is_truncated(tmp_path: Path) -> None:
    path = write(tmp_path, "cut.vhdx", b"vhdxfile".ljust(4096, b"\0"))
    assert "vhdx image is truncated" in refusal(path)


def test_iso_is_refused(tmp_path: Path) -> None:
    data = bytearray(64 * 1024)
    data[32768:32774] = b"\x01CD001"
    assert "iso images are not supported" in refusal(write(tmp_path, "x.iso", bytes(data)))


# -- polyglots -----------------------------------------------------------------------


def test_qcow2_header_with_partition_table_is_ambiguous(tmp_path: Path) -> None:
    data = bytearray(qcow2_bytes())
    data[:512] = data[:446] + mbr_sector()[446:]
    message = refusal(write(tmp_path, "poly", bytes(data)))
    assert "Multiple formats detected" in message and "qcow2" in message


def test_hybrid_iso_is_ambiguous(tmp_path: Path) -> None:
    # isohybrid media: an MBR for USB sticks and an ISO 9660 volume for CDs.
    data = bytearray(mbr_sector().ljust(64 * 1024, b"\0"))
    data[32768:32774] = b"\x01CD001"
    assert "Multiple formats detected" in refusal(write(tmp_path, "hybrid.iso", bytes(data)))


# -- qcow2 -------------------------------------------------------------------------


def test_valid_crafted_qcow2(tmp_path: Path) -> None:
    facts = inspect_image(write(tmp_path, "ok.qcow2", qcow2_bytes()), "qcow2")
    assert facts == ImageFacts("qcow2", 16 * MiB, 4 * CLUSTER)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"backing_offset": 512}, "has a backing file"),
        ({"incompatible": 1 << 2}, "external data file"),
        ({"incompatible": 1 << 7}, "incompatible feature bits"),
        ({"incompatible": 1 << 1}, "marked corrupt"),
        ({"crypt": 2}, "encrypted"),
        ({"cluster_bits": 30}, "cluster_bits 30 out of range"),
        ({"l1_offset": 100 * CLUSTER}, "truncated: qcow2 L1 table"),
        ({"file_size": 2 * CLUSTER}, "truncated: qcow2 L1 table"),
        ({"rc_offset": 8 * CLUSTER}, "truncated: qcow2 refcount table"),
    ],
)
def test_unsafe_qcow2_is_refused(tmp_path: Path, fields: dict[str, int], reason: str) -> None:
    assert reason in refusal(write(tmp_path, "bad.qcow2", qcow2_bytes(**fields)))


def test_declared_format_must_match(tmp_path: Path) -> None:
    path = write(tmp_path, "ok.qcow2", qcow2_bytes())
    assert "declared format 'raw' but content is 'qcow2'" in refusal(path, "raw")


# -- vhd -----------------------------------------------------------------------------


def test_fixed_vhd_is_recognised_by_its_footer(tmp_path: Path) -> None:
    path = write(tmp_path, "fixed.vhd", bytes(MiB) + vhd_footer(2, MiB))
    assert inspect_image(path, "vhd") == ImageFacts("vpc", MiB, MiB + 512)


def test_fixed_vhd_of_a_partitioned_disk_is_vpc(tmp_path: Path) -> None:
    data = mbr_sector().ljust(MiB, b"\0") + vhd_footer(2, MiB)
    assert inspect_image(write(tmp_path, "hyperv.vhd", data), "vhd").format == "vpc"


def test_partitioned_file_must_still_be_sector_aligned(tmp_path: Path) -> None:
    assert "not a multiple of 512" in refusal(write(tmp_path, "p.img", mbr_sector() + b"x"))


def test_differencing_vhd_is_refused(tmp_path: Path) -> None:
    data = vhd_footer(4, MiB, data_offset=512).ljust(4096, b"\0")
    assert "differencing" in refusal(write(tmp_path, "child.vhd", data))


# -- vmdk ----------------------------------------------------------------------------

DESCRIPTOR = """# Disk DescriptorFile
version=1
CID=12345678
parentCID=ffffffff
createType="{kind}"

RW 2048 {extent_type} "{extent}"
"""


def test_flat_vmdk_pointing_at_host_file_is_refused(tmp_path: Path) -> None:
    text = DESCRIPTOR.format(kind="monolithicFlat", extent_type="FLAT", extent="/etc/passwd")
    assert "vmdk" in refusal(write(tmp_path, "flat.vmdk", text.encode()))


def test_descriptor_only_vmdk_is_refused_even_if_it_claims_sparse(tmp_path: Path) -> None:
    # Passes the inspector (no '/' in the extent) but qemu would open x.vmdk.
    text = DESCRIPTOR.format(kind="monolithicSparse", extent_type="SPARSE", extent="x.vmdk")
    assert "without a sparse header" in refusal(write(tmp_path, "desc.vmdk", text.encode()))


def test_missing_file_is_refused(tmp_path: Path) -> None:
    assert "cannot read" in refusal(tmp_path / "nope")
