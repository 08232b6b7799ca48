"""Boot from volume with real guests (one at a time): the test guest boots
from a new volume made from its image and writes a marker to its root disk;
the server is destroyed and the volume kept (available); a second server
boots from that same volume, reads the marker back, and its destroy deletes
the volume (delete on termination). The guest reports its disks
(``VMOPS-DISK <dev> <bytes>``) and runs its user data when that is a
script (tools/testimage/init.sh)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from tests.functional.conftest import Vmops
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
