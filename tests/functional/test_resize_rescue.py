"""Resize (revert, confirm), rescue (unrescue) and crash dump on real guests,
checked by what the guest itself reports on its console: its CPUs, its
memory, its disks, what it finds on them. One guest at a time."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.functional.conftest import Vmops, separate_service, start_service, stop_service
from vmops.errors import VmopsError

GIB = 1024**3
MIB = 1024**2
BOOT = "VMOPS-BOOT-COMPLETE"
# Past the test image's 48 MiB (its kernel lives there), inside any root disk here.
SECTOR = 64 * 2048

# Run from the config drive at every boot: print what sector SECTOR of each
# disk holds, then write a new mark (the mark, a dash and 8 random hex
# digits) to vda's. Printed upper-cased so the drive's own dump of this
# script on the console never matches. With write=0 it only reads.
SCRIPT = """#!/bin/sh
for d in vda vdb; do
    [ -b /dev/$d ] || continue
    seen=$(dd if=/dev/$d bs=512 skip={sector} count=1 2>/dev/null | tr -d '\\000' | head -c 40)
    echo "VMOPS-READ-$d-[$(echo "$seen" | tr a-z A-Z)]"
done
if [ {write} = 1 ]; then
    new="{mark}-$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \\n')"
    printf "$new" | dd of=/dev/vda bs=512 seek={sector} conv=notrunc 2>/dev/null
    sync
    echo "VMOPS-WROTE-[$(echo "$new" | tr a-z A-Z)]"
fi
echo VMOPS-SCRIPT-$((40 + 2))-DONE
"""


def _script(tmp_path: Path, mark: str, write: bool = True) -> Path:
    path = tmp_path / f"{mark}.sh"
    path.write_text(SCRIPT.format(sector=SECTOR, mark=mark, write=int(write)))
    return path


def _boots(vmops: Vmops, name: str) -> list[str]:
    """The console of each boot that reached userspace, in order."""
    text = vmops.console(name).decode(errors="replace").replace("\r\n", "\n")
    return text.split(BOOT + "\n")[1:]


@dataclass(frozen=True)
class BootFacts:
    """What the guest reported in one boot."""

    cpus: int
    memtotal: int  # bytes
    disks: dict[str, int]  # target -> bytes
    read: dict[str, str]  # target -> the mark found on it ('' for none)
    wrote: list[str]  # the marks it wrote


def _facts(boot: str) -> BootFacts:
    return BootFacts(
        cpus=int(re.findall(r"^VMOPS-CPUS (\d+)$", boot, re.M)[0]),
        memtotal=int(re.findall(r"^VMOPS-MEMTOTAL (\d+)$", boot, re.M)[0]) * 1024,
        disks={d: int(n) for d, n in re.findall(r"^VMOPS-DISK (vd\w+) (\d+)$", boot, re.M)},
        read=dict(re.findall(r"^VMOPS-READ-(vd\w+)-\[([A-Z0-9-]*)\]$", boot, re.M)),
        wrote=re.findall(r"^VMOPS-WROTE-\[([A-Z0-9-]+)\]$", boot, re.M),
    )


def _flavors(vmops: Vmops) -> None:
    for name, ram, vcpus, disk, ephemeral in (("rs.small", 256, 1, 1, 0),
                                               ("rs.big", 384, 2, 2, 1)):
        if vmops.run("flavor", "show", name, check=False).returncode != 0:
            vmops.run("flavor", "create", name, "--ram", str(ram), "--vcpus", str(vcpus),
                      "--disk", str(disk), "--ephemeral", str(ephemeral))


def _wait_boot(vmops: Vmops, name: str, count: int) -> BootFacts:
    vmops.wait_console(name, r"VMOPS-SCRIPT-42-DONE", count=count)
    return _facts(_boots(vmops, name)[count - 1])


def test_resize_then_revert_then_resize_and_confirm(vmops: Vmops, tmp_path: Path) -> None:
    """The guest sees the new flavor's CPUs, memory and disks; revert gives
    it back the old ones and the root disk as it was before the resize (not
    what the resized guest wrote); confirm keeps the new ones."""
    _flavors(vmops)
    vmops.run("spawn", "rz", "--image", "tiny", "--flavor", "rs.small", "--config-drive",
              "--user-data", str(_script(tmp_path, "rz")))
    try:
        first = _wait_boot(vmops, "rz", 1)
        assert (first.cpus, first.disks, first.read) == (1, {"vda": GIB}, {"vda": ""})
        (mark1,) = first.wrote

        resized = vmops.json("resize", "rz", "--flavor", "rs.big")
        assert (resized["status"], resized["vmops:power_state"]) == ("VERIFY_RESIZE", "running")
        assert resized["OS-EXT-STS:vm_state"] == "resized"
        second = _wait_boot(vmops, "rz", 2)
        assert second.cpus == 2
        assert second.disks == {"vda": 2 * GIB, "vdb": 1 * GIB}  # grown; a new ephemeral
        assert second.read == {"vda": mark1, "vdb": ""}  # the same root disk, grown
        more = second.memtotal - first.memtotal
        assert 96 * MIB < more <= 128 * MIB, (first.memtotal, second.memtotal)
        print(f"MemTotal: {first.memtotal} bytes at 256 MiB, {second.memtotal} at 384")

        reverted = vmops.json("resize", "rz", "--revert")
        assert (reverted["status"], reverted["vmops:flavor"]["name"]) == ("ACTIVE", "rs.small")
        third = _wait_boot(vmops, "rz", 3)
        assert (third.cpus, third.memtotal) == (1, first.memtotal)
        assert third.disks == {"vda": GIB}
        assert third.read == {"vda": mark1}  # the old disk: the resized guest's write gone
        (mark3,) = third.wrote

        vmops.run("resize", "rz", "--flavor", "rs.big")
        assert _wait_boot(vmops, "rz", 4).read == {"vda": mark3, "vdb": ""}
        confirmed = vmops.json("resize", "rz", "--confirm")
        assert (confirmed["status"], confirmed["vmops:flavor"]["name"]) == ("ACTIVE", "rs.big")
        instance_dir = vmops.state_dir / "instances" / confirmed["id"]
        assert not (instance_dir / "resize-old").exists()
        assert len(_boots(vmops, "rz")) == 4  # confirm does not touch the guest
        refused = vmops.run("resize", "rz", "--flavor", "rs.small", check=False)
        assert refused.returncode != 0 and "resize disk down" in refused.stderr
    finally:
        vmops.run("destroy", "rz")


class Breakage:
    """Bytes of the test image's initramfs (in its FAT file system) zeroed in
    a guest's root disk: the kernel then finds no init and panics, on its
    serial console (the BIOS and the boot loader say nothing there)."""

    def __init__(self, test_image_dir: Path, tmp_path: Path) -> None:
        raw = tmp_path / "tiny.raw"
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw",
                        str(test_image_dir / "tiny.qcow2"), str(raw)], check=True)
        image = raw.read_bytes()
        start = image.find((test_image_dir / "initrd.gz").read_bytes()[:4096])
        assert start > 0, "the initramfs is not where a FAT file's bytes would be"
        self.offset, self.length = start + 64, 448  # inside its first FAT cluster
        self.original = tmp_path / "initrd-bytes"
        self.original.write_bytes(image[self.offset:self.offset + self.length])
        raw.unlink()

    def _write(self, disk: Path, source: str) -> None:
        subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                        f"write {source} {self.offset} {self.length}", str(disk)],
                       check=True, capture_output=True)

    def apply(self, disk: Path) -> None:
        self._write(disk, "-P 0")

    def mend(self, disk: Path) -> None:
        self._write(disk, f"-s {self.original}")


PANIC = r"Kernel panic - not syncing"


def _same_disk(a: Path, b: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", "-U", "-f", "qcow2", "-F", "qcow2",
                           str(a), str(b)]).returncode == 0


@pytest.mark.extended  # the second proof of resize (CI has the one above)
def test_a_volume_backed_server_resizes_and_keeps_its_root_volume(
        vmops: Vmops, tmp_path: Path) -> None:
    """Nova's: the guest gets the new flavor's CPUs and memory (and its
    ephemeral disk); the root volume stays as it is (the flavor's 2 GiB root
    size does not apply) with its data; revert gives back the old CPUs and
    memory and leaves in the volume what the resized guest wrote; confirm
    keeps the new flavor."""
    _flavors(vmops)
    vmops.run("spawn", "rzv", "--image", "tiny", "--flavor", "rs.small", "--boot-volume-size",
              "1", "--delete-on-termination", "--config-drive",
              "--user-data", str(_script(tmp_path, "vol")))
    try:
        first = _wait_boot(vmops, "rzv", 1)
        assert (first.cpus, first.disks) == (1, {"vda": GIB})
        (mark1,) = first.wrote

        resized = vmops.json("resize", "rzv", "--flavor", "rs.big")
        assert (resized["status"], resized["vmops:flavor"]["name"]) == \
            ("VERIFY_RESIZE", "rs.big")
        second = _wait_boot(vmops, "rzv", 2)
        assert second.cpus == 2 and second.memtotal > first.memtotal
        assert second.disks == {"vda": GIB, "vdb": GIB}  # the volume as it was; ephemeral
        assert second.read["vda"] == mark1  # the volume's data survived
        (mark2,) = second.wrote

        reverted = vmops.json("resize", "rzv", "--revert")
        assert (reverted["status"], reverted["vmops:flavor"]["name"]) == ("ACTIVE", "rs.small")
        third = _wait_boot(vmops, "rzv", 3)
        assert (third.cpus, third.memtotal) == (first.cpus, first.memtotal)
        assert third.disks == {"vda": GIB}
        # A root volume keeps what the resized guest wrote.
        assert third.read["vda"] == mark2
        (mark3,) = third.wrote

        vmops.run("resize", "rzv", "--flavor", "rs.big")
        fourth = _wait_boot(vmops, "rzv", 4)
        confirmed = vmops.json("resize", "rzv", "--confirm")
        assert (confirmed["status"], confirmed["vmops:flavor"]["name"]) == ("ACTIVE", "rs.big")
        assert fourth.cpus == 2 and fourth.read["vda"] == mark3
        (attached,) = vmops.server("rzv")["os-extended-volumes:volumes_attached"]
        assert vmops.json("volume", "show", attached["id"])["size"] == 1
    finally:
        with contextlib.suppress(Exception):
            vmops.run("destroy", "rzv", check=False)  # deletes its volume too


def test_a_guest_that_no_longer_boots_is_rescued_with_its_disk_untouched(
        vmops: Vmops, tmp_path: Path, test_image_dir: Path) -> None:
    breakage = Breakage(test_image_dir, tmp_path)
    vmops.run("spawn", "rsq", "--image", "tiny", "--flavor", "m1.tiny", "--config-drive",
              "--user-data", str(_script(tmp_path, "rsq")))
    try:
        first = _wait_boot(vmops, "rsq", 1)
        (mark,) = first.wrote
        server = vmops.server("rsq")
        root = vmops.state_dir / "instances" / server["id"] / "root.qcow2"
        vmops.run("stop", "rsq", "--hard")
        breakage.apply(root)
        vmops.run("start", "rsq")
        vmops.wait_console("rsq", PANIC)  # it no longer boots
        vmops.run("stop", "rsq", "--hard")
        before = tmp_path / "root-before-rescue.qcow2"
        shutil.copyfile(root, before)

        out = vmops.run("rescue", "rsq").stdout
        assert re.search(r"rsq: rescue \(running\)", out), out
        assert re.search(r"^rescue admin password: \S{12}$", out, re.M), out
        assert vmops.server("rsq")["status"] == "RESCUE"
        rescue = _wait_boot(vmops, "rsq", 2)
        # The rescue disk first (a fresh one from the image: 48 MiB, no mark), the
        # instance's own root disk second, readable: the guest finds its mark.
        assert rescue.disks == {"vda": 48 * MIB, "vdb": GIB}
        assert rescue.read == {"vda": "", "vdb": mark}

        back = vmops.json("unrescue", "rsq")
        assert back["status"] == "ACTIVE"
        assert not (root.parent / "rescue").exists()
        # Its own disk again, as it was: it panics again, and not a byte changed.
        vmops.wait_console("rsq", PANIC, count=2)
        vmops.run("stop", "rsq", "--hard")
        assert _same_disk(root, before)
        breakage.mend(root)
        vmops.run("start", "rsq")
        assert _wait_boot(vmops, "rsq", 3).read == {"vda": mark}
    finally:
        vmops.run("destroy", "rsq")


def test_crash_dump_is_an_nmi_the_guest_kernel_reports(vmops: Vmops) -> None:
    vmops.run("spawn", "cd1", "--image", "tiny", "--flavor", "m1.tiny")
    try:
        vmops.wait_console("cd1", r"VMOPS-HEARTBEAT 1\r?\n")
        assert vmops.json("crash-dump", "cd1")["status"] == "ACTIVE"
        vmops.wait_console("cd1", r"Uhhuh\. NMI received for unknown reason [0-9a-f]+ on CPU \d")
        beats = vmops.heartbeat("cd1")
        vmops.wait_console("cd1", r"VMOPS-HEARTBEAT \d+", count=beats + 2)  # it goes on
        vmops.run("stop", "cd1", "--hard")
        refused = vmops.run("crash-dump", "cd1", check=False)
        assert refused.returncode != 0 and "while it is stopped" in refused.stderr
    finally:
        vmops.run("destroy", "cd1")


@pytest.mark.extended
def test_a_resize_cut_short_by_a_service_kill_is_rolled_back(test_image_dir: Path) -> None:
    """Killed once the disks are grown (resize:after-grow), the service rolls
    the resize back at its next start: the guest boots again on the old
    flavor and the old disk."""
    with separate_service(test_image_dir, fault_at="resize:after-grow") as vm:
        _flavors(vm)
        vm.run("spawn", "rk", "--image", "tiny", "--flavor", "rs.small")
        vm.wait_console("rk", r"VMOPS-HEARTBEAT 1\r?\n")  # up, its disks reported
        server = vm.server("rk")
        with contextlib.suppress(VmopsError, ConnectionError):
            vm.client.post(f"/servers/{server['id']}/action",
                           {"resize": {"flavorRef": "rs.big"}})
        assert vm.service.wait(timeout=120) == 137  # type: ignore[attr-defined]
        del vm.env["VMOPS_FAULT_AT"]
        stop_service(vm.service)  # type: ignore[attr-defined]
        vm.service = start_service(vm.state_dir, vm.env)  # type: ignore[attr-defined]
        after = vm.wait_status("rk", "ACTIVE", timeout=120)
        assert after["vmops:flavor"]["name"] == "rs.small"
        assert "VMOPS_FAULT_AT" not in vm.env
        vm.wait_console("rk", r"VMOPS-HEARTBEAT 1\r?\n", count=2)  # booted again, reported
        again = _facts(_boots(vm, "rk")[1])
        assert (again.cpus, again.disks) == (1, {"vda": GIB})
        assert not (vm.state_dir / "instances" / server["id"] / "resize-old").exists()
