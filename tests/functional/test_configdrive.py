"""The config drive as real guests see it: found by label, dumped on the console."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.conftest import (
    Vmops,
    leftovers,
    processes_of,
    separate_service,
    service_pid,
)

BOOT = r"VMOPS-BOOT-COMPLETE"
DUMPED = r"VMOPS-HEARTBEAT 1\b"  # the drive is dumped before the heartbeat starts
PASSWORD = "s3cret"


def _public_key(comment: str) -> str:
    """An ssh-ed25519 public key line (a random point; nothing checks the curve)."""
    blob = (len(b"ssh-ed25519").to_bytes(4, "big") + b"ssh-ed25519"
            + (32).to_bytes(4, "big") + os.urandom(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


def _dumped_files(console: bytes) -> dict[str, bytes]:
    """Files the guest dumped: path -> content (the tty's \\r\\n turned back into \\n)."""
    text = console.replace(b"\r\n", b"\n")
    return {m.group(1).decode(): m.group(2) for m in
            re.finditer(rb"VMOPS-FILE-BEGIN (\S+)\n(.*?)\nVMOPS-FILE-END \1\n", text, re.S)}


def _add_keypair(vm: Vmops, name: str, tmp_path: Path) -> str:
    key = _public_key(f"{name}@vmops-test")
    key_file = tmp_path / f"{name}.pub"
    key_file.write_text(key + "\n")
    vm.run("keypair", "add", name, "--public-key", str(key_file))
    return key


@pytest.fixture
def keypair(vmops: Vmops, tmp_path: Path) -> Iterator[tuple[str, str]]:
    vmops.run("keypair", "delete", "cd-key", check=False)  # left by an earlier failure
    key = _add_keypair(vmops, "cd-key", tmp_path)
    yield "cd-key", key
    vmops.run("keypair", "delete", "cd-key", check=False)


@pytest.fixture(scope="module")
def disk_drive_service(test_image_dir: Path) -> Iterator[Vmops]:
    with separate_service(test_image_dir, config_drive_format="disk") as vm:
        yield vm


def test_guest_reads_everything_from_cdrom_drive_but_no_password(
        vmops: Vmops, keypair: tuple[str, str], tmp_path: Path) -> None:
    key_name, key = keypair
    user_data = b"#cloud-config\n# vmops functional test user data\nrole: cd-test\n"
    (tmp_path / "ud").write_bytes(user_data)
    motd = b"Welcome to cd1: injected through the config drive\n"
    (tmp_path / "motd").write_bytes(motd)
    vmops.run("spawn", "cd1", "--image", "tiny", "--flavor", "m1.tiny", "--config-drive",
              "--user-data", str(tmp_path / "ud"), "--key-name", key_name,
              "--file", f"/etc/motd={tmp_path / 'motd'}", "--property", "role=web",
              "--admin-password", PASSWORD)
    vmops.wait_console("cd1", DUMPED)
    server = vmops.server("cd1")
    console = vmops.console("cd1")

    # Found by its label on the CD-ROM, a non-empty one.
    assert re.search(rb"VMOPS-CONFIGDRIVE-FOUND /dev/sr0\r?\n", console), console[-3000:]
    sr0 = re.search(rb"VMOPS-DISK sr0 (\d+)", console)
    assert sr0 is not None and int(sr0.group(1)) > 0
    files = _dumped_files(console)
    meta = json.loads(files["openstack/latest/meta_data.json"])
    assert meta["uuid"] == server["id"]
    assert meta["name"] == "cd1" and meta["hostname"] == "cd1"
    assert meta["meta"] == {"role": "web"}
    assert meta["public_keys"] == {key_name: key}
    assert meta["keys"] == [{"name": key_name, "type": "ssh", "data": key}]
    assert meta["files"] == [{"path": "/etc/motd", "content_path": "/content/0000"}]
    assert files["openstack/latest/user_data"] == user_data
    assert files["openstack/content/0000"] == motd
    ec2 = json.loads(files["ec2/latest/meta-data.json"])
    assert ec2["instance-id"] == server["id"]
    assert ec2["public-keys"]["0"]["openssh-key"] == key
    network = json.loads(files["openstack/latest/network_data.json"])
    assert [link["ethernet_mac_address"] for link in network["links"]] == server["vmops:macs"]

    # The admin password is not written anywhere by default.
    assert "admin_pass" not in meta
    assert PASSWORD.encode() not in console
    assert PASSWORD not in vmops.run("show", "cd1", "--json").stdout
    assert PASSWORD not in vmops.run("show", "cd1").stdout
    inst_dir = vmops.state_dir / "instances" / server["id"]
    assert PASSWORD.encode() not in (inst_dir / "config.iso").read_bytes()
    for log in ("vmops.log", "serve.out"):
        assert PASSWORD not in (vmops.state_dir / log).read_text(errors="replace"), log
    for db in vmops.state_dir.glob("vmops.db*"):
        assert PASSWORD.encode() not in db.read_bytes(), db


@pytest.mark.extended
def test_drive_as_disk_kept_across_stop_start_and_removed_by_destroy(
        disk_drive_service: Vmops, tmp_path: Path) -> None:
    vm = disk_drive_service
    (tmp_path / "ud").write_bytes(b"plain user data for the disk drive\n")
    vm.run("spawn", "cdd", "--image", "tiny", "--flavor", "m1.tiny", "--config-drive",
           "--user-data", str(tmp_path / "ud"), "--property", "role=db")
    vm.wait_console("cdd", DUMPED)
    server = vm.server("cdd")
    console = vm.console("cdd")
    found = re.search(rb"VMOPS-CONFIGDRIVE-FOUND /dev/(\S+)\r?\n", console)
    assert found is not None, console[-3000:]
    assert re.fullmatch(rb"vd[b-z]", found.group(1)), found.group(1)
    assert not re.search(rb"VMOPS-DISK sr\d", console)  # no CD-ROM at all
    meta = json.loads(_dumped_files(console)["openstack/latest/meta_data.json"])
    assert (meta["uuid"], meta["name"], meta["meta"]) == (server["id"], "cdd", {"role": "db"})
    drive = [d for d in server["vmops:disks"] if d["role"] == "config"]
    assert [(d["device"], d["target"]) for d in drive] == [("disk", found.group(1).decode())]

    iso = Path(drive[0]["path"])
    before = (iso.stat().st_ino, iso.stat().st_mtime_ns, hashlib.sha256(iso.read_bytes()).digest())
    vm.run("stop", "cdd", "--timeout", "60")
    vm.run("start", "cdd")
    vm.wait_console("cdd", BOOT, count=2)
    vm.wait_console("cdd", rf"VMOPS-CONFIGDRIVE-FOUND /dev/{found.group(1).decode()}\r?\n",
                    count=2)
    after = (iso.stat().st_ino, iso.stat().st_mtime_ns, hashlib.sha256(iso.read_bytes()).digest())
    assert after == before  # the same file, not a new drive

    vm.run("destroy", "cdd")
    assert not iso.exists()
    assert leftovers(vm.state_dir, service_pid(vm)) == []
    assert processes_of(vm.state_dir, service_pid(vm)) == []


def test_refused_config_drive_content_leaves_nothing(vmops: Vmops, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.write_bytes(b"hello\n")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 11 * 1024)
    huge_user_data = tmp_path / "ud"
    huge_user_data.write_bytes(b"#" * (64 * 1024 + 1))
    six = [arg for i in range(6) for arg in ("--file", f"/etc/f{i}={small}")]
    cases = [
        (["--file", f"etc/motd={small}"], "relative"),
        (["--file", f"/etc/../motd={small}"], "'..'"),
        (six, "6 injected files"),
        (["--file", f"/etc/big={big}"], f"{11 * 1024} bytes"),
        (["--user-data", str(huge_user_data)], "user_data is"),
        (["--property", "role=" + "w" * 256], "at most 255"),
        (["--key-name", "no-such-key"], "no such keypair"),
    ]
    instances = vmops.state_dir / "instances"
    before = sorted(instances.iterdir())
    for extra, words in cases:
        proc = vmops.run("spawn", "cdbad", "--image", "tiny", "--flavor", "m1.tiny",
                         "--config-drive", *extra, check=False)
        assert proc.returncode != 0, extra[:2]
        assert words in proc.stderr, (extra[:2], proc.stderr)
        assert "cdbad" not in [s["name"] for s in vmops.json("list")], extra[:2]
        assert sorted(instances.iterdir()) == before, extra[:2]
    assert leftovers(vmops.state_dir, service_pid(vmops)) == []
    assert processes_of(vmops.state_dir, service_pid(vmops)) == []
