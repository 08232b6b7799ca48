"""vmops/disks/qcow2.py without qemu-img: the layout it writes, what it
leaves to qemu-img, and what a failure leaves. The byte-for-byte comparison
with qemu-img's own files is tests/integration/test_disks_qcow2.py."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from vmops.disks import qcow2, qemu_img
from vmops.disks.instance_disks import BaseImage, create_ephemeral_disk, create_root_disk
from vmops.errors import DiskError, StorageFull

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
CLUSTER = 64 * KiB


def header(data: bytes) -> dict[str, int]:
    fields: tuple[int, ...] = struct.unpack_from(">IIQIIQIIQQIIQQQQII", data)
    names = ("magic", "version", "backing_offset", "backing_size", "cluster_bits", "size",
             "crypt", "l1_size", "l1_offset", "refcount_table_offset",
             "refcount_table_clusters", "nb_snapshots", "snapshots_offset", "incompatible",
             "compatible", "autoclear", "refcount_order", "header_length")
    return dict(zip(names, fields, strict=True))


def materialize(img: qcow2.Image) -> bytes:
    buf = bytearray(img.length)
    for offset, data in img.chunks:
        buf[offset:offset + len(data)] = data
    return bytes(buf)


@pytest.mark.parametrize(("size", "l1_size", "l1_clusters"), [
    (0, 0, 0),
    (512, 1, 1),
    (GiB, 2, 1),
    (GiB + 512, 3, 1),
    (20 * GiB, 40, 1),
    (2 * TiB, 4096, 1),
    (4 * TiB, 8192, 1),
    (4 * TiB + 512, 8193, 2),
])
def test_layout(size: int, l1_size: int, l1_clusters: int) -> None:
    data = materialize(qcow2.image(size))
    h = header(data)
    assert h["magic"] == 0x514649FB and h["version"] == 3 and h["cluster_bits"] == 16
    assert h["size"] == size and h["l1_size"] == l1_size
    assert h["l1_offset"] == (3 * CLUSTER if l1_size else 0)
    assert h["refcount_table_offset"] == CLUSTER and h["refcount_table_clusters"] == 1
    assert h["refcount_order"] == 4 and h["header_length"] == 112
    assert (h["incompatible"], h["compatible"], h["autoclear"]) == (0, 0, 0)
    assert h["backing_offset"] == 0 and h["backing_size"] == 0
    assert len(data) == 3 * CLUSTER + 8 * l1_size
    assert struct.unpack_from(">Q", data, CLUSTER) == (2 * CLUSTER,)  # the refcount block
    refcounts = struct.unpack_from(f">{CLUSTER // 2}H", data, 2 * CLUSTER)
    assert refcounts[:3 + l1_clusters] == (1,) * (3 + l1_clusters)
    assert not any(refcounts[3 + l1_clusters:])
    assert not any(data[3 * CLUSTER:])  # the L1 table: nothing allocated


def test_backing_file_name_and_format() -> None:
    data = materialize(qcow2.image(GiB, "/var/lib/vmops/images/base.img", "raw"))
    h = header(data)
    name = data[h["backing_offset"]:h["backing_offset"] + h["backing_size"]]
    assert name == b"/var/lib/vmops/images/base.img"
    kind, length = struct.unpack_from(">II", data, 112)
    assert (kind, length) == (0xE2792ACA, 3) and data[120:123] == b"raw"
    kind, length = struct.unpack_from(">II", data, 128)
    assert (kind, length) == (0x6803F857, 8 * 48)
    end = 128 + 8 + 8 * 48
    assert data[end:end + 8] == bytes(8) and h["backing_offset"] == end + 8


@pytest.mark.parametrize(("size", "backing", "fmt", "why"), [
    (1000, None, None, "multiple of 512"),
    (GiB + 1, "/b", "raw", "multiple of 512"),
    (-512, None, None, "multiple of 512"),
    (qcow2.MAX_SIZE + 512, None, None, "above"),
    (GiB, "b.img", "raw", "absolute"),
    (GiB, "/" + "b" * 1023, "raw", "1024 bytes"),
    (GiB, "/b.vmdk", "vmdk", "'vmdk'"),
    (GiB, "/b.img", None, "format"),
])
def test_what_it_leaves_to_qemu_img(size: int, backing: str | None, fmt: str | None,
                                    why: str) -> None:
    with pytest.raises(qcow2.Unsupported, match=why):
        qcow2.image(size, backing, fmt)


class RunSpy:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str], **_kw: Any) -> None:
        self.calls.append(args)


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> RunSpy:
    spy = RunSpy()
    monkeypatch.setattr(qemu_img, "_run", spy)
    return spy


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "base.qcow2"
    path.write_bytes(materialize(qcow2.image(GiB)))
    return path


def test_an_overlay_runs_no_qemu_img(run: RunSpy, base: Path, tmp_path: Path) -> None:
    dest = tmp_path / "root.qcow2"
    qemu_img.create_overlay(base, "qcow2", dest, 10 * GiB)
    assert run.calls == []
    assert dest.read_bytes() == materialize(qcow2.image(10 * GiB, str(base), "qcow2"))


def test_a_relative_base_is_written_absolute(run: RunSpy, base: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    qemu_img.create_overlay(Path("base.qcow2"), "qcow2", Path("root.qcow2"), GiB)
    data = (tmp_path / "root.qcow2").read_bytes()
    h = header(data)
    assert data[h["backing_offset"]:h["backing_offset"] + h["backing_size"]] \
        == os.fsencode(base) and run.calls == []


def test_an_empty_qcow2_runs_no_qemu_img_and_raw_still_does(run: RunSpy, tmp_path: Path) -> None:
    qemu_img.create(tmp_path / "e.qcow2", "qcow2", 3 * GiB)
    assert run.calls == []
    assert (tmp_path / "e.qcow2").read_bytes() == materialize(qcow2.image(3 * GiB))
    qemu_img.create(tmp_path / "e.raw", "raw", 3 * GiB)
    assert run.calls == [["create", "-q", "-f", "raw", str(tmp_path / "e.raw"), str(3 * GiB)]]


@pytest.mark.parametrize(("fmt", "size", "name_len"), [
    ("qcow2", 1000, 0),  # an odd size: qemu-img rounds it up, its own way
    ("vmdk", GiB, 0),  # a backing format the writer does not write
    ("raw", GiB, 1100),  # a backing name longer than qemu takes
])
def test_the_rest_falls_back_to_qemu_img(run: RunSpy, base: Path, tmp_path: Path, fmt: str,
                                         size: int, name_len: int) -> None:
    backing = Path("/" + "x" * (name_len - 1)) if name_len else base
    dest = tmp_path / "root.qcow2"
    qemu_img.create_overlay(backing, fmt, dest, size)
    assert run.calls == [["create", "-q", "-f", "qcow2", "-b", str(backing), "-F", fmt,
                          str(dest), str(size)]]
    run.calls.clear()
    qemu_img.create(tmp_path / "odd.qcow2", "qcow2", 1000)
    assert run.calls == [["create", "-q", "-f", "qcow2", str(tmp_path / "odd.qcow2"), "1000"]]


def test_a_missing_base_fails_and_leaves_no_disk(run: RunSpy, tmp_path: Path) -> None:
    missing = BaseImage(tmp_path / "gone.qcow2", "qcow2", GiB)
    with pytest.raises(DiskError, match="cannot open the backing file .*gone.qcow2"):
        create_root_disk(missing, tmp_path / "root.qcow2", None, True, "m1", "img")
    assert list(tmp_path.iterdir()) == [] and run.calls == []


def test_a_base_said_qcow2_must_be_qcow2(run: RunSpy, tmp_path: Path) -> None:
    raw = tmp_path / "base.raw"
    raw.write_bytes(b"\0" * 4096)
    with pytest.raises(DiskError, match="not in qcow2 format"):
        create_root_disk(BaseImage(raw, "qcow2", 4096), tmp_path / "root.qcow2", GiB, True,
                         "m1", "img")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.raw"]
    create_root_disk(BaseImage(raw, "raw", 4096), tmp_path / "root.qcow2", GiB, True, "m1", "i")
    assert (tmp_path / "root.qcow2").exists() and run.calls == []


@pytest.mark.parametrize(("head", "refusal"), [
    (b"QFI\xfb", "not in qcow2 format"),  # the magic alone
    (b"QFI\xfb" + struct.pack(">I", 99), "qcow2 version 99, which QEMU does not read"),
    (b"QFI\xfb" + struct.pack(">I", 1), "qcow2 version 1, which QEMU does not read")])
def test_a_qcow2_base_must_have_a_version_qemu_reads(run: RunSpy, tmp_path: Path, head: bytes,
                                                     refusal: str) -> None:
    base = tmp_path / "base.qcow2"
    base.write_bytes(head)
    with pytest.raises(DiskError, match=refusal):
        create_root_disk(BaseImage(base, "qcow2", GiB), tmp_path / "root.qcow2", GiB, True,
                         "m1", "img")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.qcow2"] and run.calls == []


@pytest.mark.parametrize("fails", ["pwrite", "ftruncate", "fsync"])
def test_a_failed_write_leaves_no_disk(run: RunSpy, base: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, fails: str) -> None:
    def full(*_a: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, fails, full)
    # A full disk is vmops' StorageFull (507), naming the file system.
    with pytest.raises(StorageFull, match="no space left: the file system holding "
                       ".*root.qcow2 is full"):
        create_root_disk(BaseImage(base, "qcow2", GiB), tmp_path / "root.qcow2", None, True,
                         "m1", "img")
    with pytest.raises(StorageFull, match="holding .*eph.qcow2 is full"):
        create_ephemeral_disk(tmp_path / "eph.qcow2", GiB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.qcow2"] and run.calls == []


def test_a_write_that_fails_otherwise_is_a_disk_error(run: RunSpy, base: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_a: Any) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(DiskError, match="cannot write the qcow2 image .*root.qcow2: .*Input/"):
        create_root_disk(BaseImage(base, "qcow2", GiB), tmp_path / "root.qcow2", None, True,
                         "m1", "img")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.qcow2"] and run.calls == []


def test_the_file_is_sparse_and_synced(run: RunSpy, base: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    dest = tmp_path / "root.qcow2"
    create_root_disk(BaseImage(base, "qcow2", GiB), dest, 4 * TiB, True, "m1", "img")
    st = dest.stat()
    assert st.st_size == 3 * CLUSTER + 8 * 8192 and len(synced) == 1
    assert st.st_blocks * 512 < st.st_size // 2  # holes where qemu-img writes zeros
