"""Root/ephemeral disk logic with qemu-img replaced by a recorder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmops.disks import instance_disks, qemu_img
from vmops.disks.instance_disks import BaseImage, DiskFacts, create_ephemeral_disk, create_root_disk
from vmops.errors import DiskError, FlavorTooSmall

GiB = 1 << 30


class FakeQemuImg:
    """Stands in for qemu-img: records calls, writes a marker, can be told to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail_on: str | None = None

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for verb in ("create", "create_overlay", "convert", "resize"):
            monkeypatch.setattr(qemu_img, verb, self._recorder(verb))

    def _recorder(self, verb: str) -> Any:
        def record(*args: Any) -> None:
            self.calls.append((verb, args))
            dest = args[2] if verb in ("convert", "create_overlay") else args[0]
            Path(dest).write_bytes(b"made by " + verb.encode())
            if verb == self.fail_on:
                raise DiskError(reason=f"{verb} failed")

        return record


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeQemuImg:
    fake = FakeQemuImg()
    fake.install(monkeypatch)
    return fake


BASE = BaseImage(path=Path("/cache/abc.qcow2"), format="qcow2", virtual_size=2 * GiB)


def test_overlay_root_disk_uses_flavor_size(fake: FakeQemuImg, tmp_path: Path) -> None:
    dest = tmp_path / "root.qcow2"
    facts = create_root_disk(BASE, dest, 10 * GiB, True, "m1.small", "cirros")
    assert facts == DiskFacts(dest, "qcow2")
    assert fake.calls == [("create_overlay", (BASE.path, "qcow2", dest, 10 * GiB))]


@pytest.mark.parametrize("size", [None, 0])
def test_no_flavor_size_means_image_size(
    fake: FakeQemuImg, tmp_path: Path, size: int | None
) -> None:
    create_root_disk(BASE, tmp_path / "root.qcow2", size, True, "m1.any", "cirros")
    assert fake.calls[0][1][3] == 2 * GiB


def test_full_copy_converts_then_grows(fake: FakeQemuImg, tmp_path: Path) -> None:
    dest = tmp_path / "root.qcow2"
    create_root_disk(BASE, dest, 4 * GiB, False, "m1.small", "cirros")
    assert fake.calls == [
        ("convert", (BASE.path, "qcow2", dest, "qcow2")),
        ("resize", (dest, "qcow2", 4 * GiB)),
    ]


def test_full_copy_at_image_size_does_not_resize(fake: FakeQemuImg, tmp_path: Path) -> None:
    create_root_disk(BASE, tmp_path / "root.qcow2", None, False, "m1.any", "cirros")
    assert [verb for verb, _ in fake.calls] == ["convert"]


def test_flavor_too_small_is_refused_before_anything_exists(
    fake: FakeQemuImg, tmp_path: Path
) -> None:
    dest = tmp_path / "root.qcow2"
    with pytest.raises(FlavorTooSmall) as err:
        create_root_disk(BASE, dest, 1 * GiB, True, "m1.tiny", "fedora")
    assert str(1 * GiB) in err.value.message and str(2 * GiB) in err.value.message
    assert "m1.tiny" in err.value.message and "fedora" in err.value.message
    assert not dest.exists() and fake.calls == []


@pytest.mark.parametrize(("use_cow", "verb"), [(True, "create_overlay"), (False, "resize")])
def test_failure_removes_the_disk_being_made(
    fake: FakeQemuImg, tmp_path: Path, use_cow: bool, verb: str
) -> None:
    neighbour = tmp_path / "console.log"
    neighbour.write_text("keep me")
    fake.fail_on = verb
    with pytest.raises(DiskError):
        create_root_disk(BASE, tmp_path / "root.qcow2", 4 * GiB, use_cow, "m1", "img")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["console.log"]


def test_existing_disk_is_never_overwritten(fake: FakeQemuImg, tmp_path: Path) -> None:
    dest = tmp_path / "root.qcow2"
    dest.write_bytes(b"guest data")
    with pytest.raises(DiskError, match="already exists"):
        create_root_disk(BASE, dest, None, True, "m1", "img")
    with pytest.raises(DiskError, match="already exists"):
        create_ephemeral_disk(dest, GiB)
    assert dest.read_bytes() == b"guest data" and fake.calls == []


def test_ephemeral_disk(fake: FakeQemuImg, tmp_path: Path) -> None:
    dest = tmp_path / "ephemeral.qcow2"
    assert create_ephemeral_disk(dest, 3 * GiB) == DiskFacts(dest, instance_disks.DISK_FORMAT)
    assert fake.calls == [("create", (dest, "qcow2", 3 * GiB))]
    fake.fail_on = "create"
    with pytest.raises(DiskError):
        create_ephemeral_disk(tmp_path / "eph2.qcow2", GiB)
    assert not (tmp_path / "eph2.qcow2").exists()
    with pytest.raises(ValueError):
        create_ephemeral_disk(tmp_path / "eph3.qcow2", 0)
