#!/usr/bin/env python3
"""Build a Debian 12 cloud image like Debian's "genericcloud" one, from Debian packages.

Usage: python tools/cloudimage/build.py [--out DIR] [--force]

Debian's own cloud images cannot be downloaded here, so this builds the
equivalent: systemd, cloud-init (Debian's package and configuration: the
`debian` default user with passwordless sudo), openssh-server, ifupdown with
isc-dhcp-client (what Debian 12's cloud images use), linux-image-cloud-amd64
with an initramfs-tools initrd, booted by syslinux. What vmops must do to
bring it up is exactly what it must do for Debian's image: attach a config
drive (or not) and a NIC; nothing inside the image knows about vmops.

One setting differs from Debian's genericcloud image, and it is the image's
own, like every cloud image's datasource setting: cloud-init looks only for
a config drive, NoCloud or nothing (`datasource_list: [ConfigDrive, NoCloud,
None]`), so it never waits for a metadata server that does not exist.

How it is built, as root, without loop devices and without mounting the
image: `mmdebstrap --mode=root` installs the packages into a directory (it
mounts /proc, /sys and /dev into that directory while the packages install,
and unmounts them), `mke2fs -d` turns the directory into the ext4 root
filesystem, `mkfs.vfat` + `syslinux --install` + `mcopy` make the FAT boot
filesystem with the kernel and initrd, `sfdisk` writes an MBR partition
table into a sparse file, `dd` puts both filesystems at their partitions'
offsets and syslinux's mbr.bin into the first 440 bytes, and `qemu-img
convert` makes it qcow2. Needs the Debian packages listed in
scripts/setup-cloudimage.

Disk layout (2 GiB, MBR disk identifier DISK_ID):
  partition 1  FAT16, 64 MiB, active: syslinux, vmlinuz, initrd.img
  partition 2  ext4 labelled "root", the rest: /, last so growpart can grow it
The kernel finds its root with root=PARTUUID=<DISK_ID>-02; the kernel and
initrd in /boot of the root filesystem are the same files, but a kernel
upgraded inside the guest is not copied to the boot partition.

Output (default dir <repo>/.cache/cloud-image, or $VMOPS_CLOUD_IMAGE_DIR):
  debian-12-genericcloud-amd64.qcow2
The build is cached: it is redone only when this script, the package list or
the host's syslinux changes, or with --force (which also fetches the newest
packages). A build takes a few minutes, most of it mmdebstrap.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
IMAGE_NAME = "debian-12-genericcloud-amd64.qcow2"
SUITE = "bookworm"
LOGIN_USER = "debian"  # cloud-init's default user in Debian's cloud.cfg

# What Debian's genericcloud image has, less what a test image does not need
# (unattended-upgrades, qemu-guest-agent, man pages, ...).
PACKAGES = (
    "systemd-sysv", "udev", "dbus", "initramfs-tools", "linux-image-cloud-amd64",
    "cloud-init", "cloud-guest-utils", "openssh-server", "sudo",
    # net-tools: cloud-init's ifupdown (ENI) renderer writes a route, the
    # default one from network_data.json included, as `post-up route add
    # ... || true`; without `route` the guest silently has no default route.
    "ifupdown", "isc-dhcp-client", "netbase", "iproute2", "net-tools",
    "e2fsprogs", "procps", "locales", "less", "ca-certificates",
)  # fmt: skip

DISK_MIB = 2048
BOOT_START_MIB = 1
BOOT_MIB = 64
ROOT_START_MIB = BOOT_START_MIB + BOOT_MIB
ROOT_MIB = DISK_MIB - ROOT_START_MIB
DISK_ID = "7666c0de"  # MBR disk identifier: partition n is PARTUUID=7666c0de-0n
ROOT_PARTUUID = f"{DISK_ID}-02"
# Debian's cloud images boot with this console set-up (ttyS0 last: it is
# /dev/console, where cloud-init and systemd report).
KERNEL_ARGS = "ro console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0"

SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
SYSLINUX = Path("/usr/bin/syslinux")

# Files this image has in its root filesystem in place of what mmdebstrap
# left (host copies such as hostname and resolv.conf, an empty fstab).
ROOT_FILES: dict[str, str] = {
    "etc/fstab": "LABEL=root / ext4 rw,discard,errors=remount-ro,x-systemd.growfs 0 1\n",
    "etc/hostname": "localhost\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
                 "ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n",
    "etc/network/interfaces": "# interfaces(5); cloud-init writes interfaces.d/50-cloud-init\n"
                              "source /etc/network/interfaces.d/*\n\n"
                              "auto lo\niface lo inet loopback\n",
    "etc/cloud/cloud.cfg.d/90_datasources.cfg":
        "# This image is booted with a config drive (or NoCloud) only: never wait\n"
        "# for a metadata server that does not exist.\n"
        "datasource_list: [ConfigDrive, NoCloud, None]\n",
    # cloud-init makes the host keys before sshd starts; this makes them when
    # cloud-init found no datasource and did not run, so sshd still starts.
    "etc/systemd/system/ssh.service.d/host-keys.conf":
        "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\n"
        "ExecStartPre=/usr/sbin/sshd -t\n",
}  # fmt: skip
# Files every instance must make for itself: host keys (cloud-init makes
# them), the machine id (systemd, at first boot: the file is left empty).
ROOT_REMOVE_GLOBS = ("etc/ssh/ssh_host_*", "etc/resolv.conf", "var/lib/dbus/machine-id")


def log(msg: str) -> None:
    print(f"[cloudimage] {msg}", file=sys.stderr, flush=True)


def run(*cmd: str | Path) -> str:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C")
    proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def default_out_dir() -> Path:
    env = os.environ.get("VMOPS_CLOUD_IMAGE_DIR")
    return Path(env) if env else REPO / ".cache" / "cloud-image"


# --- root filesystem ----------------------------------------------------------


def install_packages(root: Path) -> None:
    # No mirror given: mmdebstrap uses Debian's, with -updates and -security.
    log(f"mmdebstrap {SUITE}: {len(PACKAGES)} packages and their dependencies")
    run("mmdebstrap", "--mode=root", "--format=directory", "--variant=apt",
        "--include=" + ",".join(PACKAGES), SUITE, root)  # fmt: skip


def make_image_files(root: Path) -> None:
    for pattern in ROOT_REMOVE_GLOBS:
        for path in root.glob(pattern):
            path.unlink()
    for rel, text in ROOT_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o644)
    (root / "etc" / "machine-id").write_text("")
    generate_locale(root)


def generate_locale(root: Path) -> None:
    """Make cloud-init's default locale, en_US.UTF-8, the image's, built in.

    Without it cloud-init's locale module runs `locale-gen en_US.UTF-8` at
    first boot, which Debian's locale-gen ignores (it builds what
    /etc/locale.gen enables), so update-locale then fails; and building a
    locale there takes half a minute under TCG. With the locale built and
    /etc/default/locale naming it, the module has nothing to do.
    """
    locale_gen = root / "etc" / "locale.gen"
    text = locale_gen.read_text()
    locale_gen.write_text(text.replace("# en_US.UTF-8 UTF-8", "en_US.UTF-8 UTF-8"))
    run("chroot", root, "locale-gen")
    (root / "etc" / "default" / "locale").write_text("LANG=en_US.UTF-8\n")


def kernel_files(root: Path) -> tuple[Path, Path]:
    """/boot/vmlinuz-* and its initrd.img-* (the one kernel installed)."""
    (vmlinuz,) = sorted((root / "boot").glob("vmlinuz-*"))
    initrd = root / "boot" / vmlinuz.name.replace("vmlinuz-", "initrd.img-")
    if not initrd.is_file():
        raise RuntimeError(f"no initrd for {vmlinuz.name}")
    return vmlinuz, initrd


def make_root_fs(root: Path, dest: Path) -> None:
    log(f"ext4 root filesystem ({ROOT_MIB} MiB) with mke2fs -d")
    run("mke2fs", "-q", "-t", "ext4", "-L", "root", "-E", "root_owner=0:0", "-d", root,
        dest, f"{ROOT_MIB}M")  # fmt: skip


# --- boot filesystem and disk -------------------------------------------------


def syslinux_cfg() -> str:
    return "\n".join([
        "DEFAULT debian", "PROMPT 0", "TIMEOUT 0", "LABEL debian", "  KERNEL /vmlinuz",
        f"  APPEND initrd=/initrd.img root=PARTUUID={ROOT_PARTUUID} {KERNEL_ARGS}", "",
    ])  # fmt: skip


def make_boot_fs(dest: Path, vmlinuz: Path, initrd: Path, tmp: Path) -> None:
    log(f"FAT boot filesystem ({BOOT_MIB} MiB) with syslinux")
    # -h: the sectors before the partition, which the boot sector adds to its own.
    run("mkfs.vfat", "--invariant", "-F", "16", "-h", str(BOOT_START_MIB * 2048),
        "-n", "BOOT", "-C", dest, str(BOOT_MIB * 1024))  # fmt: skip
    run(SYSLINUX, "--install", dest)
    cfg = tmp / "syslinux.cfg"
    cfg.write_text(syslinux_cfg())
    for src, name in ((vmlinuz, "vmlinuz"), (initrd, "initrd.img"), (cfg, "syslinux.cfg")):
        run("mcopy", "-i", dest, src, f"::/{name}")


def partition_table() -> str:
    mib = 2048  # sectors
    return "\n".join([
        "label: dos", f"label-id: 0x{DISK_ID}", "unit: sectors", "",
        f"start={BOOT_START_MIB * mib}, size={BOOT_MIB * mib}, type=e, bootable",
        f"start={ROOT_START_MIB * mib}, size={ROOT_MIB * mib}, type=83", "",
    ])  # fmt: skip


def write_at(disk: Path, src: Path, offset_mib: int) -> None:
    run("dd", f"if={src}", f"of={disk}", "bs=4M", f"seek={offset_mib}M", "oflag=seek_bytes",
        "conv=notrunc,sparse", "status=none")  # fmt: skip


def make_disk(dest: Path, boot_fs: Path, root_fs: Path) -> None:
    log(f"disk ({DISK_MIB} MiB): MBR partitions, syslinux mbr.bin, both filesystems")
    with open(dest, "wb") as fh:
        fh.truncate(DISK_MIB * 1024 * 1024)
    proc = subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(dest)],
                          input=partition_table(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sfdisk failed:\n{proc.stdout}{proc.stderr}")
    run("dd", f"if={SYSLINUX_MBR}", f"of={dest}", "bs=440", "count=1", "conv=notrunc",
        "status=none")  # fmt: skip
    write_at(dest, boot_fs, BOOT_START_MIB)
    write_at(dest, root_fs, ROOT_START_MIB)


# --- cache and orchestration --------------------------------------------------


def stamp() -> str:
    """Hash of the inputs: this script (packages, files, layout) and syslinux."""
    h = hashlib.sha256()
    for part in (Path(__file__).read_bytes(), SYSLINUX.read_bytes(), SYSLINUX_MBR.read_bytes()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def is_current(out: Path) -> bool:
    stamp_file = out / "stamp"
    return (stamp_file.is_file() and stamp_file.read_text().strip() == stamp()
            and (out / IMAGE_NAME).is_file())


@contextmanager
def locked(out: Path) -> Iterator[None]:
    # Two test runs must not build into the same directory at once.
    with open(out / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def build_into(tmp: Path, dest: Path) -> None:
    root = tmp / "root"
    install_packages(root)
    make_image_files(root)
    vmlinuz, initrd = kernel_files(root)
    make_boot_fs(tmp / "boot.fat", vmlinuz, initrd, tmp)
    make_root_fs(root, tmp / "root.ext4")
    shutil.rmtree(root)  # before the disk, so the build needs room for one copy less
    make_disk(tmp / "disk.raw", tmp / "boot.fat", tmp / "root.ext4")
    log(f"qcow2: {dest.name}")
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", tmp / "disk.raw", dest)


def build(out: Path | None = None, force: bool = False) -> Path:
    """Build (or reuse) the image; returns its path."""
    out = (out or default_out_dir()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with locked(out):
        if not force and is_current(out):
            log(f"up to date: {out / IMAGE_NAME}")
            return out / IMAGE_NAME
        (out / "stamp").unlink(missing_ok=True)
        inputs = stamp()  # before the build: what it was built from
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=out, prefix="build-") as tmp:
            build_into(Path(tmp), Path(tmp) / IMAGE_NAME)
            os.replace(Path(tmp) / IMAGE_NAME, out / IMAGE_NAME)
        (out / "stamp").write_text(inputs + "\n")
        log(f"built in {time.monotonic() - started:.0f} s: {out / IMAGE_NAME}")
        return out / IMAGE_NAME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--force", action="store_true",
                        help="rebuild with the newest packages even if the cache is current")
    args = parser.parse_args(argv)
    print(build(args.out, args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
