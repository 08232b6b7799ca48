"""Root and ephemeral disks, the image cache and its guards, on real guests."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import (
    Vmops,
    destroy_servers,
    leftovers,
    processes_of,
    separate_service,
    service_pid,
)

MIB = 1024**2
GIB = 1024**3
IMAGE_VIRTUAL_SIZE = 48 * MIB  # tools/testimage/build.py IMAGE_MIB
BOOT = r"VMOPS-BOOT-COMPLETE"


# -- helpers ------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _qemu_img_info(path: Path) -> dict[str, Any]:
    out = subprocess.run(["qemu-img", "info", "-f", "qcow2", "--output=json", "--force-share",
                          str(path)], check=True, capture_output=True, text=True).stdout
    info: dict[str, Any] = json.loads(out)
    return info


def _guest_disks(vmops: Vmops, name: str) -> dict[str, int]:
    """What the guest reported: device name -> size in bytes."""
    return {dev.decode(): int(size) for dev, size in
            re.findall(rb"VMOPS-DISK (\S+) (\d+)\r?\n", vmops.console(name))}


def _flavor(vmops: Vmops, name: str, disk_gb: int, ephemeral_gb: int = 0) -> None:
    if vmops.run("flavor", "show", name, check=False).returncode != 0:
        vmops.run("flavor", "create", name, "--ram", "512", "--vcpus", "1",
                  "--disk", str(disk_gb), "--ephemeral", str(ephemeral_gb))


def _cached_base(vm: Vmops, test_image_dir: Path) -> Path:
    """The cache file of the test image: named by the sha256 of its bytes."""
    return vm.state_dir / "images" / f"{_sha256(test_image_dir / 'tiny.qcow2')}.qcow2"


def _cache_files(vm: Vmops) -> list[str]:
    """Image files and temporaries; the cache's own lock files (.locks/) aside."""
    images_dir = vm.state_dir / "images"
    return sorted(str(p.relative_to(images_dir)) for p in images_dir.rglob("*")
                  if p.is_file() and p.relative_to(images_dir).parts[0] != ".locks")


def _domain_files(vm: Vmops, name: str) -> list[Path]:
    """Persistent domain definitions for ``name`` in the embedded libvirt root."""
    return list((vm.state_dir / "libvirt").rglob(f"vmops-{name}.xml"))


@pytest.fixture(scope="module")
def full_copy_session(test_image_dir: Path) -> Iterator[Vmops]:
    with separate_service(test_image_dir, use_cow_images="false") as vm:
        yield vm


@pytest.fixture
def full_copy(full_copy_session: Vmops, test_image_dir: Path) -> Iterator[Vmops]:
    """The use_cow_images=false service; instances a test makes are destroyed after it."""
    full_copy_session.import_image("tiny", test_image_dir / "tiny.qcow2")
    before = {s["id"] for s in full_copy_session.client.get("/servers")["servers"]}
    yield full_copy_session
    destroy_servers(full_copy_session, keep=before)


# -- sizes and CoW --------------------------------------------------------------
def test_cow_root_grown_to_flavor_and_ephemeral_disk(vmops: Vmops,
                                                    test_image_dir: Path) -> None:
    _flavor(vmops, "dk.r2e1", disk_gb=2, ephemeral_gb=1)
    vmops.run("spawn", "dk1", "--image", "tiny", "--flavor", "dk.r2e1")
    vmops.wait_console("dk1", r"VMOPS-DISK vdb \d+")
    disks = _guest_disks(vmops, "dk1")
    # The 48 MiB image grown to the flavor's 2 GiB; the ephemeral disk exactly 1 GiB.
    assert disks["vda"] == 2 * GIB
    assert disks["vdb"] == 1 * GIB

    inst_dir = vmops.state_dir / "instances" / vmops.server("dk1")["id"]
    root = _qemu_img_info(inst_dir / "root.qcow2")
    base = _cached_base(vmops, test_image_dir)
    assert _qemu_img_info(base)["virtual-size"] == IMAGE_VIRTUAL_SIZE
    assert root["format"] == "qcow2"
    assert root["virtual-size"] == 2 * GIB
    assert root["full-backing-filename"] == str(base)
    assert root["backing-filename-format"] == "qcow2"
    ephemeral = _qemu_img_info(inst_dir / "ephemeral.qcow2")
    assert ephemeral["virtual-size"] == 1 * GIB
    assert "backing-filename" not in ephemeral


@pytest.mark.extended
def test_full_copy_root_disk_has_no_backing_file(full_copy: Vmops) -> None:
    full_copy.run("spawn", "fc1", "--image", "tiny", "--flavor", "m1.tiny")
    full_copy.wait_console("fc1", rf"VMOPS-DISK vda {1 * GIB}\r?\n")
    full_copy.wait_console("fc1", r"VMOPS-HEARTBEAT 1\b")  # booted all the way
    inst_dir = full_copy.state_dir / "instances" / full_copy.server("fc1")["id"]
    root = _qemu_img_info(inst_dir / "root.qcow2")
    assert root["format"] == "qcow2"
    assert root["virtual-size"] == 1 * GIB
    assert "backing-filename" not in root
    assert "full-backing-filename" not in root


def test_too_small_flavor_refused_and_leaves_nothing(vmops: Vmops, tmp_path: Path) -> None:
    big = tmp_path / "big.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(big), "2G"], check=True)
    vmops.run("image", "import", "dk-big", str(big))
    try:
        proc = vmops.run("spawn", "dksmall", "--image", "dk-big", "--flavor", "m1.tiny",
                         check=False)
        assert proc.returncode != 0
        # Both sizes in the message: the flavor's root disk and the image's virtual size.
        assert str(1 * GIB) in proc.stderr and str(2 * GIB) in proc.stderr, proc.stderr
        assert "dksmall" not in [s["name"] for s in vmops.json("list")]
        assert vmops.run("show", "dksmall", check=False).returncode != 0
        assert _domain_files(vmops, "dksmall") == []
        assert leftovers(vmops.state_dir, service_pid(vmops)) == []  # no disk
        # No QEMU, no capture (its console process may wait idle for the service).
        assert processes_of(vmops.state_dir, service_pid(vmops)) == []
    finally:
        vmops.run("image", "delete", "dk-big")


@pytest.mark.extended
def test_cached_base_unchanged_after_guest_writes_its_root(vmops: Vmops,
                                                          test_image_dir: Path,
                                                          tmp_path: Path) -> None:
    base = _cached_base(vmops, test_image_dir)
    before = _sha256(base)
    marker = b"VMOPS-GUEST-WROTE-THIS-SECTOR"
    script = tmp_path / "write.sh"
    # The "done" marker is computed by the guest so that the dump of the
    # user data on the console does not match it.
    script.write_text("#!/bin/sh\n"
                      f"printf '{marker.decode()}' | dd of=/dev/vda bs=512 seek=2048 "
                      "conv=notrunc 2>/dev/null\n"
                      "sync\n"
                      "echo VMOPS-WRITE-$((40 + 2))-DONE\n")
    vmops.run("spawn", "dkw", "--image", "tiny", "--flavor", "m1.tiny", "--config-drive",
              "--user-data", str(script))
    vmops.wait_console("dkw", r"VMOPS-WRITE-42-DONE")
    vmops.run("stop", "dkw", "--timeout", "60")
    assert vmops.server("dkw")["status"] == "SHUTOFF"

    assert _sha256(base) == before == base.name.split(".")[0]
    root = vmops.state_dir / "instances" / vmops.server("dkw")["id"] / "root.qcow2"
    assert _sector(root, 2048, tmp_path).startswith(marker)  # the write went to the overlay
    assert not _sector(base, 2048, tmp_path).startswith(marker)


def _sector(image: Path, sector: int, scratch: Path) -> bytes:
    """512 bytes of the disk ``image`` shows its guest (through its backing chain)."""
    out = scratch / f"copy-of-{image.name}.raw"  # sparse
    try:
        subprocess.run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(image),
                        str(out)], check=True, capture_output=True)
        with out.open("rb") as f:
            f.seek(sector * 512)
            return f.read(512)
    finally:
        out.unlink(missing_ok=True)


# -- images and flavors in use ----------------------------------------------------
@pytest.mark.extended
def test_image_and_flavor_in_use_are_kept(vmops: Vmops, test_image_dir: Path) -> None:
    source = test_image_dir / "tiny.qcow2"
    vmops.run("image", "import", "dk-used", str(source))
    _flavor(vmops, "dk.used", disk_gb=1)
    vmops.run("spawn", "dku", "--image", "dk-used", "--flavor", "dk.used")

    listed = {i["name"]: i for i in vmops.json("image", "list")}
    image = listed["dk-used"]
    assert image["status"] == "ACTIVE"
    assert image["vmops:format"] == "qcow2"
    assert image["vmops:virtual_size"] == IMAGE_VIRTUAL_SIZE
    assert image["OS-EXT-IMG-SIZE:size"] == source.stat().st_size
    assert image["vmops:checksum"] == _sha256(source)
    assert image["vmops:used_by"] == ["dku"]
    row = next(line for line in vmops.run("image", "list").stdout.splitlines()
               if line.startswith("dk-used "))
    for text in ("qcow2", "48.0 MiB", _sha256(source)[:16], "dku"):
        assert text in row, (text, row)

    proc = vmops.run("image", "delete", "dk-used", check=False)
    assert proc.returncode != 0
    assert "dk-used" in proc.stderr and "dku" in proc.stderr, proc.stderr
    proc = vmops.run("flavor", "delete", "dk.used", check=False)
    assert proc.returncode != 0
    assert "dk.used" in proc.stderr and "dku" in proc.stderr, proc.stderr
    assert "dk-used" in [i["name"] for i in vmops.json("image", "list")]
    assert "dk.used" in [f["name"] for f in vmops.json("flavor", "list")]
    assert vmops.server("dku")["status"] == "ACTIVE"

    vmops.run("destroy", "dku")
    vmops.run("image", "delete", "dk-used")
    vmops.run("flavor", "delete", "dk.used")
    # "tiny" has the same content, so the cached file stays for it.
    assert _cached_base(vmops, test_image_dir).exists()


def test_import_with_wrong_checksum_refused_and_leaves_nothing(vmops: Vmops,
                                                              tmp_path: Path) -> None:
    source = tmp_path / "other.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "64M"], check=True)
    before = _cache_files(vmops)
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    proc = vmops.run("image", "import", "dk-badsum", str(source), "--checksum", wrong,
                     check=False)
    assert proc.returncode != 0
    assert "checksum mismatch" in proc.stderr, proc.stderr
    assert _sha256(source) in proc.stderr  # says what it got
    assert "dk-badsum" not in [i["name"] for i in vmops.json("image", "list")]
    assert vmops.run("image", "show", "dk-badsum", check=False).returncode != 0
    assert _cache_files(vmops) == before


def test_prune_removes_unused_image_and_keeps_used(full_copy: Vmops, test_image_dir: Path,
                                                  tmp_path: Path) -> None:
    unused_source = tmp_path / "unused.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(unused_source), "64M"],
                   check=True)
    full_copy.run("image", "import", "pr-unused", str(unused_source))
    full_copy.run("image", "import", "pr-used", str(test_image_dir / "tiny.qcow2"))
    unused_file = full_copy.state_dir / "images" / f"{_sha256(unused_source)}.qcow2"
    used_file = _cached_base(full_copy, test_image_dir)
    assert unused_file.exists() and used_file.exists()
    full_copy.run("spawn", "pr1", "--image", "pr-used", "--flavor", "m1.tiny")

    removed = full_copy.json("image", "prune", "--older-than", "0")
    assert "pr-unused" in removed and "pr-used" not in removed
    names = [i["name"] for i in full_copy.json("image", "list")]
    assert "pr-used" in names and "pr-unused" not in names
    assert not unused_file.exists()
    assert used_file.exists()
    assert full_copy.server("pr1")["status"] == "ACTIVE"
