"""Spawn and destroy real guests through the CLI, and check what the guest saw."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.functional.conftest import Vmops, leftovers, service_pid

GIB = 1024**3


def test_spawn_show_console_destroy(vmops: Vmops) -> None:
    mac = "52:54:00:aa:bb:01"
    vmops.run("spawn", "web1", "--image", "tiny", "--flavor", "m1.tiny", "--mac", mac)
    vmops.wait_console("web1", r"VMOPS-BOOT-COMPLETE")
    log = vmops.run("console-log", "web1").stdout
    assert "VMOPS-BOOT-COMPLETE" in log

    shown = vmops.json("show", "web1")
    assert shown["status"] == "ACTIVE"
    assert shown["vmops:power_state"] == "running"
    assert shown["vmops:live"]["max_memory_kib"] == 512 * 1024
    assert shown["vmops:live"]["vcpus"] == 1
    assert shown["vmops:macs"] == [mac]
    # The guest saw its NIC with our MAC, and its root disk with the flavor's size.
    vmops.wait_console("web1", rf"VMOPS-NIC \S+ {mac}")
    vmops.wait_console("web1", rf"VMOPS-DISK vda {1 * GIB}\b")
    human = vmops.run("show", "web1").stdout
    assert "running" in human and mac in human

    listed = vmops.json("list")
    assert [s["name"] for s in listed] == ["web1"]
    uuid = shown["id"]
    inst_dir = vmops.state_dir / "instances" / uuid
    assert (inst_dir / "root.qcow2").exists()

    vmops.run("destroy", "web1")
    assert vmops.json("list") == []
    assert not inst_dir.exists()
    assert leftovers(vmops.state_dir, service_pid(vmops)) == []
    # Idempotent: destroying again is not an error.
    assert vmops.run("destroy", "web1").returncode == 0


@pytest.mark.extended
def test_guest_gets_dhcp_address(vmops: Vmops) -> None:
    vmops.run("spawn", "net1", "--image", "tiny", "--flavor", "m1.tiny")
    vmops.wait_console("net1", r"VMOPS-IP \S+ 10\.0\.2\.15/24")


def test_bad_input_leaves_nothing(vmops: Vmops, tmp_path: Path) -> None:
    cases = [
        (["spawn", "x1", "--image", "nope", "--flavor", "m1.tiny"], "no image named"),
        (["spawn", "x1", "--image", "tiny", "--flavor", "nope"], "no flavor named"),
        (["spawn", " padded ", "--image", "tiny", "--flavor", "m1.tiny"], "invalid"),
        (["spawn", "a" * 256, "--image", "tiny", "--flavor", "m1.tiny"], "255"),
        (["spawn", "x1", "--image", "tiny", "--flavor", "m1.tiny", "--mac", "zz"],
         "MAC address"),
        (["flavor", "create", "f0", "--ram", "0", "--vcpus", "1", "--disk", "1"], "ram"),
        (["flavor", "create", "f0", "--ram", "64", "--vcpus", "100000", "--disk", "1"],
         "vcpus"),
    ]
    for args, words in cases:
        proc = vmops.run(*args, check=False)
        assert proc.returncode != 0, args
        assert words in proc.stderr, (args, proc.stderr)
    assert vmops.json("list") == []
    assert "f0" not in [f["name"] for f in vmops.json("flavor", "list")]
    assert leftovers(vmops.state_dir, service_pid(vmops)) == []


@pytest.mark.extended
def test_a_repeated_name_is_allowed_and_then_told_apart_by_id(vmops: Vmops) -> None:
    """Nova's display names may repeat; a name two servers share is refused
    as a reference, naming their ids."""
    vmops.run("spawn", "dup1", "--image", "tiny", "--flavor", "m1.tiny")
    vmops.run("spawn", "dup1", "--image", "tiny", "--flavor", "m1.tiny")
    ids = [s["id"] for s in vmops.json("list") if s["name"] == "dup1"]
    assert len(ids) == 2
    proc = vmops.run("show", "dup1", check=False)
    assert proc.returncode != 0 and all(i in proc.stderr for i in ids), proc.stderr
    for instance_id in ids:
        vmops.run("destroy", instance_id)
    assert "dup1" not in [s["name"] for s in vmops.json("list")]


def test_image_import_refuses_missing_and_non_images(vmops: Vmops, tmp_path: Path) -> None:
    images_dir = vmops.state_dir / "images"
    before = _cached_files(images_dir)
    proc = vmops.run("image", "import", "ghost", str(tmp_path / "missing.qcow2"), check=False)
    assert proc.returncode != 0 and "No such file or directory" in proc.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a disk image\n")
    proc = vmops.run("image", "import", "notes", str(text), check=False)
    assert proc.returncode != 0 and "refused" in proc.stderr
    names = [i["name"] for i in vmops.json("image", "list")]
    assert "ghost" not in names and "notes" not in names
    after = _cached_files(images_dir)
    assert after == before


def _cached_files(images_dir: Path) -> list[str]:
    """Image files and temporaries; the cache's own lock files (.locks/) aside."""
    return sorted(str(p.relative_to(images_dir)) for p in images_dir.rglob("*")
                  if p.is_file() and p.relative_to(images_dir).parts[0] != ".locks")


def test_second_service_refused(vmops: Vmops) -> None:
    proc = vmops.run("serve", check=False, timeout=60)
    assert proc.returncode != 0
    assert re.search(r"another vmops service \(pid \d+\) is already serving", proc.stderr)
