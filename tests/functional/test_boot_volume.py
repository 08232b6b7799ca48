"""Boot from volume with real guests (one at a time): the test guest boots
from a new volume made from its image and writes a marker to its root disk;
the server is destroyed and the volume kept (available); a second server
boots from that same volume, reads the marker back, and its destroy deletes
the volume (delete on termination). The guest reports its disks
(``VMOPS-DISK <dev> <bytes>``) and runs its user data when that is a
script (tools/testimage/init.sh)."""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import pytest

from tests.functional.conftest import Vmops
from tests.targets import iscsi_target
from vmops.cli.client import Client

GIB = 1 << 30
MARK_OFFSET_MIB = 512  # past the 48 MiB test image: free space on the 1 GiB volume
MARK = "VMOPS-BFV-MARK-7f3c"

WRITE = f"""#!/bin/sh
printf '{MARK}' | dd of=/dev/vda bs=1M seek={MARK_OFFSET_MIB} conv=notrunc 2>/dev/null
sync
echo VMOPS-BFV-WROTE
"""
READ = f"""#!/bin/sh
echo "VMOPS-BFV-READ $(dd if=/dev/vda bs=1M skip={MARK_OFFSET_MIB} count=1 2>/dev/null \\
    | head -c {len(MARK)})"
"""


def test_a_server_boots_from_a_volume_that_outlives_it(vmops: Vmops, tmp_path: Path) -> None:
    vm = vmops
    (tmp_path / "write.sh").write_text(WRITE)
    (tmp_path / "read.sh").write_text(READ)
    volume_id = ""
    try:
        vm.run("spawn", "bfv1", "--image", "tiny", "--flavor", "m1.tiny",
               "--boot-volume-size", "1", "--config-drive",
               "--user-data", str(tmp_path / "write.sh"))
        # Its root disk is the 1 GiB volume, not a 48 MiB copy of the image.
        vm.wait_console("bfv1", f"VMOPS-DISK vda {GIB}")
        vm.wait_console("bfv1", "VMOPS-BFV-WROTE")
        server = vm.server("bfv1")
        assert server["image"] == ""
        (attached,) = server["os-extended-volumes:volumes_attached"]
        volume_id = attached["id"]
        volume = vm.json("volume", "show", volume_id)
        assert (volume["status"], volume["bootable"], volume["size"]) == ("in-use", "true", 1)
        assert [(a["server_id"], a["device"]) for a in volume["attachments"]] == \
            [(server["id"], "/dev/vda")]

        vm.run("destroy", "bfv1")
        kept = vm.json("volume", "show", volume_id)
        assert (kept["status"], kept["attachments"]) == ("available", [])
        path = Path(kept["vmops:path"])
        assert path.is_file()

        vm.run("spawn", "bfv2", "--boot-volume", volume_id, "--flavor", "m1.tiny",
               "--delete-on-termination", "--config-drive",
               "--user-data", str(tmp_path / "read.sh"))
        vm.wait_console("bfv2", f"VMOPS-BFV-READ {MARK}")  # what the first server wrote
        at_23 = Client(vm.state_dir, autostart=False)
        at_23.microversion = "2.3"  # delete_on_termination is shown from 2.3
        (attached,) = at_23.get("/servers/bfv2")["server"][
            "os-extended-volumes:volumes_attached"]
        assert attached == {"id": volume_id, "delete_on_termination": True}
        vm.run("destroy", "bfv2")
        assert volume_id not in {v["id"] for v in vm.json("volume", "list")}
        assert not path.exists()
        volume_id = ""
    finally:
        with contextlib.suppress(Exception):
            vm.run("destroy", "bfv1", "bfv2", check=False)
        if volume_id:
            vm.run("volume", "delete", volume_id, check=False)


REMOTE_MARK_OFFSET_MIB = 56  # past the 48 MiB test image: free space on the 64 MiB LUN


@pytest.mark.extended  # CI's tier boots from a local volume and hot-plugs iSCSI: CI's budget
def test_a_server_boots_from_an_iscsi_lun(vmops: Vmops, test_image_dir: Path,
                                          tmp_path: Path) -> None:
    """The test image on an iSCSI LUN (a private tgtd on loopback, CHAP) is
    a server's root disk: it boots from it through `vmops spawn
    --boot-volume` and writes a marker, which lands in the target's file;
    destroyed, the volume is kept (available) and a second server made
    through Nova's block_device_mapping_v2 with the volume's uuid boots from
    it and reads the marker back. Delete on termination is refused."""
    vm = vmops
    (tmp_path / "write.sh").write_text(WRITE.replace(f"seek={MARK_OFFSET_MIB}",
                                                     f"seek={REMOTE_MARK_OFFSET_MIB}"))
    (tmp_path / "read.sh").write_text(READ.replace(f"skip={MARK_OFFSET_MIB}",
                                                   f"skip={REMOTE_MARK_OFFSET_MIB}"))
    secret = tmp_path / "chap"
    with iscsi_target(tmp_path, size_mib=64, from_image=test_image_dir / "tiny.qcow2") as lun:
        secret.write_text(lun.chap_secret)
        volume = vm.json("volume", "create", "root", "--iscsi", lun.url(1), "--chap-user",
                         lun.chap_user, "--chap-secret-file", str(secret))
        try:
            refused = vm.run("spawn", "rb0", "--boot-volume", "root", "--flavor", "m1.tiny",
                             "--delete-on-termination", check=False)
            assert refused.returncode != 0 and "does not delete its target" in refused.stderr
            assert vm.json("volume", "show", "root")["status"] == "available"

            vm.run("spawn", "rb1", "--boot-volume", "root", "--flavor", "m1.tiny",
                   "--config-drive", "--user-data", str(tmp_path / "write.sh"))
            vm.wait_console("rb1", f"VMOPS-DISK vda {64 << 20}")  # the LUN is its root
            vm.wait_console("rb1", "VMOPS-BFV-WROTE")
            server = vm.server("rb1")
            assert server["image"] == ""
            assert [v["id"] for v in server["os-extended-volumes:volumes_attached"]] == \
                [volume["id"]]
            shown = vm.json("volume", "show", "root")
            assert (shown["status"], [a["device"] for a in shown["attachments"]]) == \
                ("in-use", ["/dev/vda"])
            vm.run("destroy", "rb1")
            with open(lun.lun_image, "rb") as f:  # what the guest wrote is on the target
                f.seek(REMOTE_MARK_OFFSET_MIB << 20)
                assert f.read(len(MARK)) == MARK.encode()
            assert vm.json("volume", "show", "root")["status"] == "available"

            user_data = base64.b64encode((tmp_path / "read.sh").read_bytes()).decode()
            vm.client.post("/servers", {"server": {
                "name": "rb2", "flavorRef": "m1.tiny", "imageRef": "", "config_drive": True,
                "user_data": user_data, "block_device_mapping_v2": [{
                    "boot_index": 0, "uuid": volume["id"], "source_type": "volume",
                    "destination_type": "volume", "delete_on_termination": False}]}})
            vm.wait_console("rb2", f"VMOPS-BFV-READ {MARK}")
            vm.run("destroy", "rb2")
            assert vm.json("volume", "show", "root")["status"] == "available"
        finally:
            with contextlib.suppress(Exception):
                vm.run("destroy", "rb1", "rb2", check=False)
            vm.run("volume", "delete", "root", check=False)
