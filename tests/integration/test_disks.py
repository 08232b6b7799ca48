"""vmops.disks against the real qemu-img: images made by qemu-img, then bent.

Fast (qemu-img on small sparse files), but it runs a real binary, hence
the integration tier.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from vmops.disks import qemu_img
from vmops.disks.cache import CachedImage, ImageCache
from vmops.disks.inspector import inspect_image
from vmops.disks.instance_disks import create_ephemeral_disk, create_root_disk
from vmops.errors import DiskError, FlavorTooSmall, InvalidImage

pytestmark = pytest.mark.integration

MiB = 1 << 20
GiB = 1 << 30
SIZE = 64 * MiB


def qimg(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True).stdout


def qio(path: Path, fmt: str, command: str) -> None:
    subprocess.run(
        ["qemu-io", "-f", fmt, "-c", command, str(path)], check=True, capture_output=True
    )


def make(tmp_path: Path, name: str, fmt: str, *opts: str, size: int = SIZE) -> Path:
    path = tmp_path / name
    extra = ["-o", ",".join(opts)] if opts else []
    qimg("create", "-q", "-f", fmt, *extra, str(path), str(size))
    return path


def with_data(path: Path, fmt: str) -> Path:
    """Write a recognisable pattern so conversions have content to carry."""
    qio(path, fmt, "write -P 0xab 1M 2M")
    return path


def patch_bytes(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def info(path: Path, fmt: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(qimg("info", "-f", fmt, "--output=json", str(path)))
    return result


def refusal(path: Path, declared: str | None = None) -> str:
    with pytest.raises(InvalidImage) as err:
        inspect_image(path, declared)
    return err.value.message


# -- refusals of images qemu-img made -------------------------------------------------


def test_qcow2_with_backing_file(tmp_path: Path) -> None:
    base = make(tmp_path, "base.raw", "raw")
    child = tmp_path / "child.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(child))
    assert "backing file" in refusal(child)


def test_qcow2_with_external_data_file(tmp_path: Path) -> None:
    img = make(tmp_path, "d.qcow2", "qcow2", f"data_file={tmp_path / 'data.raw'}")
    assert "external data file" in refusal(img)


def test_qcow2_with_unknown_incompatible_feature(tmp_path: Path) -> None:
    img = make(tmp_path, "f.qcow2", "qcow2")
    patch_bytes(img, 79, b"\x20")  # incompatible_features, bit 5: not defined
    assert "incompatible feature bits" in refusal(img)


def test_truncated_qcow2(tmp_path: Path) -> None:
    img = with_data(make(tmp_path, "t.qcow2", "qcow2"), "qcow2")
    os.truncate(img, 0x20000)  # cuts off the L1 table at 0x30000
    assert "truncated: qcow2 L1 table" in refusal(img)


def test_vmdk_monolithic_flat(tmp_path: Path) -> None:
    img = make(tmp_path, "flat.vmdk", "vmdk", "subformat=monolithicFlat")
    assert "Unsupported subformat" in refusal(img)


def test_vmdk_descriptor_pointing_at_a_host_file(tmp_path: Path) -> None:
    img = tmp_path / "evil.vmdk"
    img.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\nRW 8 FLAT "/etc/passwd" 0\n'
    )
    assert "vmdk" in refusal(img)


def test_sparse_vmdk_whose_embedded_descriptor_names_a_host_file(tmp_path: Path) -> None:
    img = make(tmp_path, "s.vmdk", "vmdk", "subformat=monolithicSparse")
    desc = img.read_bytes()[512:1024]
    start = desc.index(b"RW ")
    line = b'RW 131072 FLAT "passwd" 0\n'  # no '/', so the inspector alone lets it by
    patched = desc[:start] + line + desc[desc.index(b"\n", start) + 1 :]
    patch_bytes(img, 512, patched[:512].ljust(512, b"\0"))
    assert "exactly one SPARSE extent" in refusal(img)


def test_vmdk_split_into_extent_files(tmp_path: Path) -> None:
    img = make(tmp_path, "split.vmdk", "vmdk", "subformat=twoGbMaxExtentSparse")
    assert "vmdk" in refusal(img)


def test_qcow2_that_is_also_a_partitioned_disk(tmp_path: Path) -> None:
    img = make(tmp_path, "poly.qcow2", "qcow2")
    entry = struct.pack("<B3BB3BII", 0x80, 0, 2, 0, 0x83, 0, 0, 0, 2048, 2048)
    patch_bytes(img, 446, entry + bytes(48) + b"\x55\xaa")
    assert "Multiple formats detected" in refusal(img)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.img").touch()
    assert "empty" in refusal(tmp_path / "empty.img")


@pytest.mark.parametrize(
    ("fmt", "opts", "cut_to"),
    [
        ("vpc", (), -512),  # dynamic VHD without its footer copy
        ("vhdx", (), 3 * MiB),  # metadata region cut off
        ("vmdk", ("subformat=streamOptimized",), 64 * 1024),  # grains cut off
        ("vmdk", ("subformat=monolithicSparse",), 64 * 1024),
    ],
)
def test_truncated_images(tmp_path: Path, fmt: str, opts: tuple[str, ...], cut_to: int) -> None:
    img = with_data(make(tmp_path, "t." + fmt, fmt, *opts), fmt)
    size = img.stat().st_size
    os.truncate(img, cut_to if cut_to > 0 else size + cut_to)
    assert refusal(img)


def test_declared_format_differs(tmp_path: Path) -> None:
    img = make(tmp_path, "x.vhdx", "vhdx")
    assert "declared format 'vmdk' but content is 'vhdx'" in refusal(img, "vmdk")


def test_import_refuses_qcow2_with_damaged_tables(tmp_path: Path) -> None:
    img = with_data(make(tmp_path, "d.qcow2", "qcow2"), "qcow2")
    (l1_offset,) = struct.unpack(">Q", img.read_bytes()[40:48])
    patch_bytes(img, l1_offset, struct.pack(">Q", (1 << 63) | 0x7000000000))
    cache = ImageCache(tmp_path / "cache")
    with pytest.raises(InvalidImage, match="damaged"):
        cache.import_image(str(img))
    assert [p.name for p in cache.root.iterdir()] == [".locks"]


# -- good imports ------------------------------------------------------------------------

GOOD = [
    ("qcow2", (), "qcow2", SIZE),
    ("raw", (), "raw", SIZE),
    ("vpc", (), "qcow2", 67125248),  # VHD rounds to its CHS geometry
    ("vpc", ("subformat=fixed",), "qcow2", 67125248),
    ("vhdx", (), "qcow2", SIZE),
    ("vmdk", ("subformat=streamOptimized",), "qcow2", SIZE),
    ("vmdk", ("subformat=monolithicSparse",), "qcow2", SIZE),
]


@pytest.mark.parametrize(("fmt", "opts", "stored", "virtual"), GOOD)
def test_import_each_accepted_format(
    tmp_path: Path, fmt: str, opts: tuple[str, ...], stored: str, virtual: int
) -> None:
    src = with_data(make(tmp_path, "src." + fmt, fmt, *opts), fmt)
    declared = "vhd" if fmt == "vpc" else fmt
    image = ImageCache(tmp_path / "cache").import_image(str(src), declared_format=declared)
    assert (image.format, image.virtual_size) == (stored, virtual)
    assert image.path.name == f"{hashlib.sha256(src.read_bytes()).hexdigest()}.{stored}"
    assert info(image.path, stored).get("backing-filename") is None
    # Same guest-visible bytes as the source.
    qimg("compare", "-q", "-f", fmt, "-F", stored, str(src), str(image.path))


def test_concurrent_imports_convert_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = with_data(make(tmp_path, "src.vmdk", "vmdk", "subformat=streamOptimized"), "vmdk")
    converts: list[Path] = []
    real = qemu_img.convert

    def counting(*args: Any) -> None:
        converts.append(args[0])
        real(*args)

    monkeypatch.setattr(qemu_img, "convert", counting)
    cache = ImageCache(tmp_path / "cache")
    results: list[CachedImage] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.import_image(str(src))))
        for _ in range(5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 5 and len(set(results)) == 1 and len(converts) == 1
    assert len(cache.list_files()) == 1


# -- instance disks ----------------------------------------------------------------------


@pytest.fixture
def base(tmp_path: Path) -> CachedImage:
    src = with_data(make(tmp_path, "src.qcow2", "qcow2"), "qcow2")
    return ImageCache(tmp_path / "cache").import_image(str(src))


def digest_and_mtime(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_overlay_root_disk(base: CachedImage, tmp_path: Path) -> None:
    before = digest_and_mtime(base.path)
    dest = tmp_path / "root.qcow2"
    create_root_disk(base, dest, 1 * GiB, True, "m1.small", "img")
    facts = info(dest, "qcow2")
    assert facts["virtual-size"] == 1 * GiB
    assert (facts["backing-filename"], facts["backing-filename-format"]) == (
        str(base.path),
        "qcow2",
    )
    # Guest-style writes land in the overlay, never in the base.
    qio(dest, "qcow2", "write -P 0xcd 2M 4M")
    qio(dest, "qcow2", "write -P 0xee 900M 1M")
    qio(dest, "qcow2", "read -P 0xab 1M 1M")  # still the base's bytes underneath
    qio(dest, "qcow2", "read -P 0xcd 2M 4M")
    assert digest_and_mtime(base.path) == before


def test_full_copy_root_disk_is_standalone_and_grown(base: CachedImage, tmp_path: Path) -> None:
    dest = tmp_path / "root.qcow2"
    facts = create_root_disk(base, dest, 2 * GiB, False, "m1.small", "img")
    assert facts.format == "qcow2"
    result = info(dest, "qcow2")
    assert result["virtual-size"] == 2 * GiB and "backing-filename" not in result
    qio(dest, "qcow2", "read -P 0xab 1M 2M")


def test_flavor_too_small_leaves_no_file(base: CachedImage, tmp_path: Path) -> None:
    dest = tmp_path / "root.qcow2"
    with pytest.raises(FlavorTooSmall):
        create_root_disk(base, dest, 32 * MiB, True, "m1.tiny", "img")
    assert not dest.exists()


def test_ephemeral_disk_has_exact_size(tmp_path: Path) -> None:
    facts = create_ephemeral_disk(tmp_path / "eph.qcow2", 5 * GiB + 512)
    assert info(facts.path, facts.format)["virtual-size"] == 5 * GiB + 512
    assert facts.path.stat().st_size < MiB  # sparse: metadata only


# -- qemu_img itself ---------------------------------------------------------------------


def test_resize_never_shrinks(tmp_path: Path) -> None:
    img = make(tmp_path, "r.qcow2", "qcow2")
    qemu_img.resize(img, "qcow2", 2 * SIZE)
    assert qemu_img.info(img, "qcow2")["virtual-size"] == 2 * SIZE
    with pytest.raises(DiskError, match="refusing to shrink"):
        qemu_img.resize(img, "qcow2", SIZE)


def test_explicit_format_is_enforced(tmp_path: Path) -> None:
    img = make(tmp_path, "r.raw", "raw")
    with pytest.raises(DiskError, match="not in qcow2 format"):
        qemu_img.info(img, "qcow2")


def fake_qemu_img(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    script = tmp_path / "qemu-img"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    monkeypatch.setattr(qemu_img, "QEMU_IMG", str(script))


def test_children_run_under_the_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_qemu_img(tmp_path, monkeypatch, "cat /proc/self/limits")
    limits = qemu_img._run(["info"]).stdout
    cpu = next(line for line in limits.splitlines() if line.startswith("Max cpu time"))
    space = next(line for line in limits.splitlines() if line.startswith("Max address space"))
    assert cpu.split()[3:5] == ["30", "31"]
    assert space.split()[3:5] == [str(2 * GiB)] * 2


def test_runaway_child_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_qemu_img(tmp_path, monkeypatch, "while :; do :; done")
    with pytest.raises(DiskError, match="SIGXCPU"):
        qemu_img._run(["info"], limits=qemu_img.Limits(1, 2 * GiB, wall_seconds=20))
