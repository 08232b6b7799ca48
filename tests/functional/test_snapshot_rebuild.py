"""Snapshot (createImage) and rebuild on real guests: what the guest wrote to
its disk is in the image a snapshot makes, and a rebuilt guest keeps its id
and MAC but sees a new disk. At most two guests run at a time."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from pathlib import Path

from tests.functional.conftest import Vmops

# 64 MiB: past the test image's 48 MiB (a write inside it may land in the
# kernel's file, and the next boot fails), inside m1.tiny's 1 GiB root disk.
SECTOR = 64 * 2048

# Run from the config drive at every boot: print what sector SECTOR holds
# (upper-cased, so the user data's own dump on the console never matches),
# then write MARK there. The "done" line is computed for the same reason.
SCRIPT = """#!/bin/sh
seen=$(dd if=/dev/vda bs=512 skip={sector} count=1 2>/dev/null | tr -d '\\000' | head -c 40)
echo "VMOPS-READ-[$(echo "$seen" | tr a-z A-Z)]"
printf '{mark}' | dd of=/dev/vda bs=512 seek={sector} conv=notrunc 2>/dev/null
sync
echo VMOPS-WRITE-$((40 + 2))-DONE
"""


def _script(tmp_path: Path, mark: str) -> Path:
    path = tmp_path / f"{mark}.sh"
    path.write_text(SCRIPT.format(sector=SECTOR, mark=mark))
    return path


def _reads(vmops: Vmops, name: str) -> list[str]:
    """What the guest found at SECTOR, at each boot (the script's own dump
    on the console, "$(echo ...)", does not match)."""
    return [m.decode() for m in re.findall(rb"VMOPS-READ-\[([A-Z0-9-]*)\]", vmops.console(name))]


def _nic_macs(vmops: Vmops, name: str) -> list[str]:
    return [m.decode() for m in re.findall(rb"VMOPS-NIC \S+ (\S+)\r?\n", vmops.console(name))]


def test_snapshot_of_a_running_guest_spawns_a_guest_that_finds_its_files(
        vmops: Vmops, tmp_path: Path) -> None:
    mark = f"snapmark-{secrets.token_hex(4)}"
    vmops.run("spawn", "snw", "--image", "tiny", "--flavor", "m1.tiny", "--config-drive",
              "--user-data", str(_script(tmp_path, mark)))
    vmops.wait_console("snw", r"VMOPS-WRITE-42-DONE")
    source_id = vmops.server("snw")["id"]
    beats = vmops.heartbeat("snw")
    started = time.monotonic()
    try:
        image = json.loads(vmops.run("snapshot", "snw", "snw-image", "--json").stdout)
        took = time.monotonic() - started
        assert image["status"] == "ACTIVE"
        assert image["metadata"] == {"image_type": "snapshot", "instance_uuid": source_id}
        # Flattened: the cached file stands alone, and qemu-img finds it sound.
        path = vmops.state_dir / "images" / f"{image['vmops:checksum']}.qcow2"
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "-U", "-f", "qcow2", "--output=json", str(path)],
            check=True, capture_output=True, text=True).stdout)
        assert "backing-filename" not in info
        # The source kept running: active, and its heartbeat goes on.
        server = vmops.server("snw")
        assert (server["status"], server["vmops:power_state"]) == ("ACTIVE", "running")
        vmops.wait_console("snw", r"VMOPS-HEARTBEAT (\d+)", count=beats + 2, timeout=60)
        print(f"snapshot of a running test guest: {took:.2f} s end to end (CLI)")

        # The image does not need its instance: destroy it first.
        vmops.run("destroy", "snw")
        vmops.run("spawn", "snr", "--image", "snw-image", "--flavor", "m1.tiny",
                  "--config-drive", "--user-data", str(_script(tmp_path, "other")))
        vmops.wait_console("snr", r"VMOPS-WRITE-42-DONE")
        assert _reads(vmops, "snr") == [mark.upper()]
    finally:
        vmops.run("destroy", "snw", "snr")
        vmops.run("image", "delete", "snw-image", check=False)


def test_rebuild_keeps_id_and_mac_and_gives_a_new_disk(
        vmops: Vmops, tmp_path: Path, test_image_dir: Path) -> None:
    vmops.import_image("rb-other", test_image_dir / "tiny.qcow2")
    mark = f"rebuildmark-{secrets.token_hex(4)}"
    vmops.run("spawn", "rbw", "--image", "tiny", "--flavor", "m1.tiny", "--config-drive",
              "--user-data", str(_script(tmp_path, mark)), "--property", "role=web")
    try:
        vmops.wait_console("rbw", r"VMOPS-WRITE-42-DONE")
        before = vmops.server("rbw")
        assert _reads(vmops, "rbw") == [""]  # a fresh disk
        # Reboot: the same disk, so the guest finds its mark.
        vmops.run("reboot", "rbw", "--hard")
        vmops.wait_console("rbw", r"VMOPS-WRITE-42-DONE", count=2)
        assert _reads(vmops, "rbw") == ["", mark.upper()]

        out = vmops.json("rebuild", "rbw", "--image", "rb-other")
        assert (out["status"], out["vmops:power_state"]) == ("ACTIVE", "running")
        after = vmops.server("rbw")
        assert after["id"] == before["id"]
        assert after["image"]["id"] != before["image"]["id"]
        assert after["metadata"] == before["metadata"] == {"role": "web"}
        assert after["flavor"] == before["flavor"]
        assert after["vmops:nics"] == before["vmops:nics"]
        # The config drive was written again (the script ran) and the disk is new.
        vmops.wait_console("rbw", r"VMOPS-WRITE-42-DONE", count=3)
        assert _reads(vmops, "rbw") == ["", mark.upper(), ""]
        assert len(set(_nic_macs(vmops, "rbw"))) == 1  # the same MAC at every boot
        assert len(re.findall(rb"VMOPS-CONFIGDRIVE-FOUND", vmops.console("rbw"))) == 3
    finally:
        vmops.run("destroy", "rbw")
        vmops.run("image", "delete", "rb-other", check=False)
