"""vmops/disks/qcow2.py against this host's qemu-img and qemu-io: the images
vmops writes itself are byte for byte the ones ``qemu-img create`` writes,
``qemu-img check`` finds them clean, and a guest's writes and reads go
through an overlay to its base as they should. What the writer leaves to
qemu-img is made by qemu-img. Fast (small sparse files), but it runs real
binaries, hence the integration tier."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from vmops.disks import qcow2, qemu_img
from vmops.disks.instance_disks import BaseImage, create_ephemeral_disk, create_root_disk
from vmops.errors import DiskError

pytestmark = pytest.mark.integration

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
BASE_SIZE = 64 * MiB


def qimg(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], check=True, capture_output=True,
                          text=True).stdout


def qio(path: Path, *commands: str) -> str:
    """qemu-io on a qcow2 ``path``; its output, failing on any error it reports
    (qemu-io exits 0 after a failed -c command, so its output is read too)."""
    args = ["qemu-io", "-f", "qcow2"]
    for command in commands:
        args += ["-c", command]
    out = subprocess.run([*args, str(path)], check=True, capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert "fail" not in text.lower() and "error" not in text.lower(), text
    return text


class RunCount:
    """Counts qemu-img child processes (qemu_img._run), running them."""

    def __init__(self) -> None:
        self.verbs: list[str] = []
        self.run = qemu_img._run

    def __call__(self, args: list[str], **kw: Any) -> Any:
        self.verbs.append(args[0])
        return self.run(args, **kw)


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> RunCount:
    count = RunCount()
    monkeypatch.setattr(qemu_img, "_run", count)
    return count


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A raw and a qcow2 base, each with a pattern (0x5a) in its first MiB."""
    root = tmp_path_factory.mktemp("bases")
    raw = root / "base.raw"
    with raw.open("wb") as fh:
        fh.write(b"\x5a" * MiB)
        fh.truncate(BASE_SIZE)
    qcow = root / "base.qcow2"
    qimg("convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow))
    return {"raw": raw, "qcow2": qcow}


def reference(tmp_path: Path, size: int, backing: Path | None = None,
              fmt: str | None = None) -> bytes:
    """What this host's qemu-img writes for the same request."""
    ref = tmp_path / "qemu-img.qcow2"
    ref.unlink(missing_ok=True)
    args = ["create", "-q", "-f", "qcow2"]
    if backing is not None and fmt is not None:
        args += ["-b", str(backing), "-F", fmt]
    qimg(*args, str(ref), str(size))
    return ref.read_bytes()


SIZES = [
    pytest.param(MiB, id="1MiB"),
    pytest.param(GiB, id="1GiB"),
    pytest.param(20 * GiB, id="20GiB"),
    pytest.param(GiB + 512, id="1GiB+512:not-a-cluster-multiple"),
    pytest.param(20 * GiB + 3 * 512, id="20GiB+1536"),
    pytest.param(2 * TiB, id="2TiB"),
    pytest.param(4 * TiB + 512, id="4TiB+512:L1-over-two-clusters"),
    pytest.param(64 * TiB, id="64TiB"),
]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("fmt", [None, "raw", "qcow2"])
def test_the_bytes_are_qemu_imgs(tmp_path: Path, bases: dict[str, Path], children: RunCount,
                                 size: int, fmt: str | None) -> None:
    dest = tmp_path / "vmops.qcow2"
    if fmt is None:
        create_ephemeral_disk(dest, size)
        expected = reference(tmp_path, size)
    else:
        base = bases[fmt]
        # (1 MiB over the 64 MiB base: qemu-img takes it; the flavor check is not tested here)
        record = BaseImage(base, fmt, min(size, BASE_SIZE))
        create_root_disk(record, dest, size, True, "m1", "img")
        expected = reference(tmp_path, size, base, fmt)
    assert children.verbs == [], "a qemu-img child made the disk"
    data = dest.read_bytes()
    assert len(data) == len(expected)
    assert data == expected, next(i for i, (a, b) in enumerate(zip(data, expected, strict=True))
                                  if a != b)


def test_a_long_backing_path_is_written_like_qemu_img(tmp_path: Path, bases: dict[str, Path],
                                                      children: RunCount) -> None:
    """A base path of 1023 bytes, the longest qemu takes."""
    parent = tmp_path
    while len(os.fsencode(parent)) < 1023 - 300:
        parent = parent / ("d" * 200)
    base = parent / ("b" * (1023 - len(os.fsencode(parent)) - 1))
    base.parent.mkdir(parents=True, exist_ok=True)
    base.write_bytes(bases["raw"].read_bytes())
    assert len(os.fsencode(base)) == 1023
    dest = tmp_path / "vmops.qcow2"
    create_root_disk(BaseImage(base, "raw", BASE_SIZE), dest, 10 * GiB, True, "m1", "img")
    assert children.verbs == []
    assert dest.read_bytes() == reference(tmp_path, 10 * GiB, base, "raw")
    info = json.loads(qimg("info", "--output=json", str(dest)))
    assert info["backing-filename"] == str(base) and info["backing-filename-format"] == "raw"


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_an_overlay_reads_its_base_and_keeps_its_own_writes(
        tmp_path: Path, bases: dict[str, Path], children: RunCount, fmt: str) -> None:
    base = bases[fmt]
    before = base.read_bytes()
    dest = tmp_path / "root.qcow2"
    create_root_disk(BaseImage(base, fmt, BASE_SIZE), dest, GiB, True, "m1", "img")
    assert children.verbs == []
    check = json.loads(qimg("check", "-f", "qcow2", "--output=json", str(dest)))
    assert check["check-errors"] == 0 and "corruptions" not in check and "leaks" not in check
    info = json.loads(qimg("info", "-f", "qcow2", "--output=json", str(dest)))
    assert info["virtual-size"] == GiB and info["backing-filename-format"] == fmt
    assert info["format-specific"]["data"]["compat"] == "1.1" and not info["dirty-flag"]
    qio(dest, "read -P 0x5a 0 1M",  # the base's data, through the overlay
        "read -P 0 1M 1M",
        "write -P 0xa5 512k 128k",  # a write over the base's data: copied up
        "write -P 0x33 900M 1M")  # beyond the base's size
    qio(dest, "read -P 0x5a 0 512k", "read -P 0xa5 512k 128k", "read -P 0x5a 640k 384k",
        "read -P 0x33 900M 1M", "read -P 0 901M 1M")
    check = json.loads(qimg("check", "-f", "qcow2", "--output=json", str(dest)))
    assert check["check-errors"] == 0 and "corruptions" not in check and "leaks" not in check
    assert base.read_bytes() == before, "the overlay wrote to its base"


def test_an_empty_disk_takes_writes(tmp_path: Path, children: RunCount) -> None:
    dest = tmp_path / "eph.qcow2"
    create_ephemeral_disk(dest, 2 * GiB)
    qio(dest, "read -P 0 0 1M", "write -P 0x77 1G 2M", "read -P 0x77 1G 2M")
    assert children.verbs == []
    check = json.loads(qimg("check", "-f", "qcow2", "--output=json", str(dest)))
    assert check["check-errors"] == 0 and "corruptions" not in check and "leaks" not in check


def test_an_odd_size_is_left_to_qemu_img(tmp_path: Path, bases: dict[str, Path],
                                         children: RunCount) -> None:
    """Not a multiple of 512: qemu-img rounds it up, and makes the disk."""
    dest = tmp_path / "root.qcow2"
    create_root_disk(BaseImage(bases["raw"], "raw", 1000), dest, 1000, True, "m1", "img")
    assert children.verbs == ["create"]
    assert dest.read_bytes() == reference(tmp_path, 1000, bases["raw"], "raw")
    assert json.loads(qimg("info", "--output=json", str(dest)))["virtual-size"] == 1024
    create_ephemeral_disk(tmp_path / "eph.qcow2", GiB + 1)
    assert children.verbs == ["create", "create"]


def test_a_backing_path_too_long_is_left_to_qemu_img(tmp_path: Path, bases: dict[str, Path],
                                                     children: RunCount) -> None:
    """Longer than qemu takes: qemu-img refuses it, and says why."""
    parent = tmp_path
    while len(os.fsencode(parent)) < 900:
        parent = parent / ("d" * 200)
    parent.mkdir(parents=True)
    base = parent / ("b" * 200)
    base.write_bytes(bases["raw"].read_bytes())
    assert len(os.fsencode(base)) > qcow2.MAX_BACKING_NAME
    dest = tmp_path / "root.qcow2"
    with pytest.raises(DiskError, match="qemu-img create exited with 1.*backing file"):
        create_root_disk(BaseImage(base, "raw", BASE_SIZE), dest, GiB, True, "m1", "img")
    assert children.verbs == ["create"] and not dest.exists()


def test_a_base_not_in_its_format_is_refused_like_qemu_img(
        tmp_path: Path, bases: dict[str, Path], children: RunCount) -> None:
    dest = tmp_path / "root.qcow2"
    with pytest.raises(DiskError, match="not in qcow2 format"):
        create_root_disk(BaseImage(bases["raw"], "qcow2", BASE_SIZE), dest, GiB, True, "m", "i")
    with pytest.raises(subprocess.CalledProcessError):  # qemu-img refuses it too
        reference(tmp_path, GiB, bases["raw"], "qcow2")
    with pytest.raises(DiskError, match="qemu-img create exited with 1"):  # and vmdk: qemu-img's
        create_root_disk(BaseImage(bases["raw"], "vmdk", BASE_SIZE), dest, GiB, True, "m", "i")
    assert children.verbs == ["create"] and not dest.exists()
