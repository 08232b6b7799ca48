"""The CLI verbs not covered elsewhere: rebuild-config-drive on a real guest,
and the host and catalogue verbs (doctor, config, flavor show, keypairs)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.functional.conftest import Vmops

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOZBUXrXfHJb6wJ2Kq1D0DxQ4W1nq7W6W5w1r2vZp9mH t@x"


def test_rebuild_config_drive_while_stopped(vmops: Vmops, tmp_path: Path) -> None:
    user_data = tmp_path / "ud.txt"
    user_data.write_text("rebuild-me\n")
    vmops.run("spawn", "cd1", "--image", "tiny", "--flavor", "m1.tiny", "--config-drive",
              "--user-data", str(user_data))
    vmops.wait_console("cd1", r"VMOPS-FILE-END openstack/latest/user_data")
    proc = vmops.run("rebuild-config-drive", "cd1", check=False)
    assert proc.returncode != 0 and "while it is running" in proc.stderr
    server = vmops.server("cd1")
    drive = Path(next(d["path"] for d in server["vmops:disks"] if d["role"] == "config"))
    before = drive.stat()
    vmops.run("stop", "cd1", "--hard")
    vmops.run("rebuild-config-drive", "cd1")
    after = drive.stat()
    assert after.st_ino != before.st_ino  # written anew (atomically, then renamed)
    vmops.run("start", "cd1")
    # The guest finds the new drive, with the same identity and user data.
    vmops.wait_console("cd1", r"VMOPS-FILE-END openstack/latest/user_data", count=2)
    log = vmops.console("cd1").replace(b"\r\n", b"\n")
    assert len(re.findall(rf'"uuid": ?"{server["id"]}"'.encode(), log)) >= 2
    assert log.count(b"rebuild-me\n") >= 2


def test_doctor_and_config(vmops: Vmops) -> None:
    checks = vmops.json("doctor")
    assert all(c["ok"] for c in checks if c["required"])
    assert any("qemu-system-x86_64" in c["name"] for c in checks)
    human = vmops.run("doctor").stdout
    assert "this host can run VMs" in human
    options = {o["option"]: o for o in vmops.json("config")}
    assert options["accel"]["value"] == "tcg"
    assert options["state_dir"]["value"] == str(vmops.state_dir)
    assert all(o["help"] for o in options.values())


def test_flavor_show_and_keypairs(vmops: Vmops, tmp_path: Path) -> None:
    flavor = vmops.json("flavor", "show", "m1.tiny")
    assert (flavor["ram"], flavor["vcpus"], flavor["disk"]) == (512, 1, 1)
    key = tmp_path / "id.pub"
    key.write_text(KEY + "\n")
    vmops.run("keypair", "add", "k-verbs", "--public-key", str(key))
    listed = {k["name"]: k for k in vmops.json("keypair", "list")}
    assert listed["k-verbs"]["public_key"] == KEY
    proc = vmops.run("keypair", "add", "k-verbs", "--public-key", str(key), check=False)
    assert proc.returncode != 0 and "already exists" in proc.stderr
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key\n")
    proc = vmops.run("keypair", "add", "k-bad", "--public-key", str(bad), check=False)
    assert proc.returncode != 0 and "public key" in proc.stderr
    vmops.run("keypair", "delete", "k-verbs")
    assert "k-verbs" not in {k["name"] for k in vmops.json("keypair", "list")}
