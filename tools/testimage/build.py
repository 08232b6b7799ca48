#!/usr/bin/env python3
"""Build the tiny guest images that vmops' functional tests boot.

Usage: python tools/testimage/build.py [--out DIR] [--force]

Everything comes from Debian packages and needs neither root mounts nor
loop devices: the kernel and its modules from `linux-image-6.1.0-*-amd64`
(fetched with `apt-get download`, cached in the output directory), a
busybox-static initramfs written by this script (cpio newc, gzip), and a
FAT "superfloppy" made bootable with syslinux and filled with mtools,
converted to qcow2. SeaBIOS boots it from any disk bus.

Outputs (default dir <repo>/.cache/test-image, or $VMOPS_TEST_IMAGE_DIR):
  tiny.qcow2          default guest
  tiny-nopower.qcow2  kernel arg vmops.powerbutton=ignore
  tiny-flood.qcow2    kernel arg vmops.flood=1
  vmlinuz, initrd.gz  the same kernel/initramfs, for -kernel/-initrd boots

The guest (tools/testimage/init.sh) prints on the serial console, one per
line (the tty turns "\\n" into "\\r\\n"):
  VMOPS-BOOT-COMPLETE                 userspace up, modules loaded, acpid running
  VMOPS-KERNEL <uname -r>
  VMOPS-CPUS <n>                      online CPUs (nproc)
  VMOPS-MEMTOTAL <KiB>                MemTotal of /proc/meminfo (RAM less the kernel's own)
  VMOPS-DISK <dev> <bytes>            each vd*, sd*, sr* (also later hotplugs)
  VMOPS-DISK-GONE <dev>               a disk disappeared after boot
  VMOPS-NIC <ifname> <mac>            each non-lo interface (also later hotplugs)
  VMOPS-NIC-GONE <ifname>
  VMOPS-CONFIGDRIVE-FOUND <dev> | VMOPS-CONFIGDRIVE-NONE
  VMOPS-FILE-BEGIN <path>, raw content, "\\n", VMOPS-FILE-END <path>
  VMOPS-IP <ifname> <addr>/<prefix>   DHCP lease
  VMOPS-HEARTBEAT <n>                 every second, n = 1, 2, ...
  VMOPS-POWERBUTTON                   ACPI power button seen; guest powers off
  VMOPS-POWERBUTTON-IGNORED           same, in the nopower variant
  VMOPS-FLOOD <n> <padding>           flood variant, ~100-byte lines, no heartbeat
  VMOPS-USER-SCRIPT-START             user_data starting with "#!" is run in the
                                      background after the config drive dump

What is typed on the serial console runs, line by line, in a root shell
(busybox sh, no prompt; the tty echoes the typing): `echo VMOPS-$((6*7))`
answers VMOPS-42. It starts just before the heartbeat; the tty keeps what
is typed earlier until it reads it.

Details: an empty CD-ROM drive reports 0 bytes. The config drive is the
first vd*/sd*/sr* disk or partition whose iso9660 or FAT label is config-2
(any case); its files are dumped before DHCP and the heartbeat start, so no
other marker lands inside a FILE block. A power button press before
VMOPS-BOOT-COMPLETE is lost (acpid starts just before that line).

The kernel is Debian's, with its defaults: an NMI from outside (libvirt's
injectNMI, QEMU's inject-nmi) makes it print "Uhhuh. NMI received for
unknown reason <nn> on CPU <n>." (an emergency-level message, so it passes
loglevel=3) and carry on (unknown_nmi_panic is off).
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
INIT_SH = HERE / "init.sh"
BUSYBOX = Path("/bin/busybox")  # from busybox-static: must be a static binary
SYSLINUX_MODULES = Path("/usr/lib/syslinux/modules/bios")

IMAGE_MIB = 48
# no_timer_check: the kernel's boot-time test of the timer interrupt fails
# when TCG gets too little CPU (a loaded 2-core host) and the guest panics
# with "IO-APIC + timer doesn't work"; skip it, as cloud images do.
BASE_CMDLINE = "console=ttyS0 quiet loglevel=3 no_timer_check"
VARIANTS: dict[str, str] = {
    "tiny.qcow2": "",
    "tiny-nopower.qcow2": "vmops.powerbutton=ignore",
    "tiny-flood.qcow2": "vmops.flood=1",
}
EXTRA_OUTPUTS = ("vmlinuz", "initrd.gz")

# Modules the guest loads (dependencies are added automatically). Anything
# built into the kernel is skipped.
MODULES = (
    # virtio devices, as used by libvirt/QEMU by default
    "virtio_pci", "virtio_blk", "virtio_net", "virtio_scsi", "virtio_balloon",
    "virtio_console", "virtio_rng",
    # SCSI disks and CD-ROMs on AHCI (q35, -device ahci) and PIIX IDE (pc)
    "sd_mod", "sr_mod", "ahci", "ata_piix",
    # e1000 is the NIC model some machine types default to
    "e1000",
    # config drive filesystems (iso9660 with Rock Ridge/Joliet, or vfat)
    "isofs", "vfat", "nls_cp437", "nls_ascii", "nls_iso8859_1", "nls_utf8",
    # ACPI power button -> input event -> acpid
    "evdev", "button",
)  # fmt: skip

KERNEL_PKG_RE = re.compile(r"^linux-image-(6\.1\.0-\d+-amd64)$")


def log(msg: str) -> None:
    print(f"[testimage] {msg}", file=sys.stderr, flush=True)


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C")
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def default_out_dir() -> Path:
    env = os.environ.get("VMOPS_TEST_IMAGE_DIR")
    return Path(env) if env else REPO / ".cache" / "test-image"


# --- kernel package -------------------------------------------------------


def cached_kernel_deb(out: Path) -> Path | None:
    debs = sorted(out.glob("linux-image-6.1.0-*-amd64_*.deb"))
    return debs[-1] if debs else None


def newest_kernel_package() -> str | None:
    """The 6.1 kernel that linux-image-amd64 points to, else the newest one."""
    try:
        deps = run("apt-cache", "depends", "linux-image-amd64")
        names = run("apt-cache", "pkgnames", "linux-image-6.1.0-").split()
    except RuntimeError:  # no package lists yet
        return None
    targets: list[str] = re.findall(r"Depends: (\S+)", deps)
    for name in targets:
        if KERNEL_PKG_RE.match(name):
            return name
    # linux-image-6.1.0-<ABI>-amd64: the highest ABI number is the newest
    by_abi = {int(n.split("-")[3]): n for n in names if KERNEL_PKG_RE.match(n)}
    return by_abi[max(by_abi)] if by_abi else None


def download_kernel_deb(out: Path) -> Path:
    pkg = newest_kernel_package()
    if pkg is None:
        # A fresh machine may have no package lists yet.
        log("no linux-image-6.1.0-*-amd64 known to apt; running apt-get update")
        run("apt-get", "update")
        pkg = newest_kernel_package()
    if pkg is None:
        raise RuntimeError("no linux-image-6.1.0-*-amd64 package available")
    log(f"downloading {pkg}")
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        os.chmod(tmp, 0o755)  # lets apt's _apt user write there (no warning)
        run("apt-get", "download", pkg, cwd=Path(tmp))
        (deb,) = Path(tmp).glob("*.deb")
        for old in out.glob("linux-image-*.deb"):
            old.unlink()
        return Path(shutil.move(deb, out / deb.name))


def kernel_deb(out: Path) -> Path:
    # Reuse the cached package so the image stays the same until --force.
    return cached_kernel_deb(out) or download_kernel_deb(out)


def kernel_release(deb: Path) -> str:
    match = KERNEL_PKG_RE.match(deb.name.split("_")[0])
    if match is None:
        raise RuntimeError(f"unexpected kernel package name: {deb.name}")
    return match.group(1)


# --- modules --------------------------------------------------------------


def norm(name: str) -> str:
    return name.replace("-", "_")


def index_modules(moddir: Path) -> dict[str, Path]:
    return {norm(ko.name.removesuffix(".ko")): ko for ko in moddir.rglob("*.ko")}


def builtin_modules(moddir: Path) -> set[str]:
    lines = (moddir / "modules.builtin").read_text().split()
    return {norm(Path(line).name.removesuffix(".ko")) for line in lines}


def module_deps(ko: Path) -> list[str]:
    out = run("modinfo", "-F", "depends", ko).strip()
    return [norm(d) for d in out.split(",") if d]


def load_order(wanted: tuple[str, ...], moddir: Path) -> list[Path]:
    """Modules to insmod, each after its dependencies (depth-first)."""
    index, builtin = index_modules(moddir), builtin_modules(moddir)
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name in builtin:
            return
        if name not in index:
            raise RuntimeError(f"module {name} is neither in the package nor built in")
        for dep in module_deps(index[name]):
            visit(dep)
        order.append(index[name])

    for name in wanted:
        visit(norm(name))
    return order


# --- initramfs --------------------------------------------------------------


class Cpio:
    """Minimal cpio "newc" writer: entries are owned by root, no root needed."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ino = 1

    def _add(self, name: str, mode: int, body: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = [self.ino, mode, 0, 0, 1, 0, len(body), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        self.ino += 1
        self.data += b"070701" + b"".join(b"%08X" % f for f in fields)
        self.data += name.encode() + b"\0"
        self._pad()
        self.data += body
        self._pad()

    def _pad(self) -> None:
        self.data += b"\0" * (-len(self.data) % 4)

    def dir(self, name: str) -> None:
        self._add(name, 0o040755)

    def file(self, name: str, body: bytes, perm: int = 0o644) -> None:
        self._add(name, 0o100000 | perm, body)

    def symlink(self, name: str, target: str) -> None:
        self._add(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._add(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._add("TRAILER!!!", 0)
        return bytes(self.data)


def busybox_applets() -> list[str]:
    return sorted({Path(p).name for p in run(BUSYBOX, "--list-full").split()} - {"busybox"})


def build_initramfs(modules: list[Path]) -> bytes:
    cpio = Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "mnt", "proc", "sys", "tmp"):
        cpio.dir(d)
    # The kernel opens /dev/console for init before devtmpfs is mounted.
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3)
    cpio.symlink("sbin", "bin")
    cpio.file("init", INIT_SH.read_bytes(), 0o755)
    cpio.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in busybox_applets():
        cpio.symlink(f"bin/{applet}", "busybox")
    names = []
    for ko in modules:
        name = norm(ko.name.removesuffix(".ko"))
        cpio.file(f"lib/modules/{name}.ko", ko.read_bytes())
        names.append(name)
    cpio.file("lib/modules/order", ("\n".join(names) + "\n").encode())
    return gzip.compress(cpio.finish(), compresslevel=9, mtime=0)


# --- disk images ------------------------------------------------------------


def syslinux_cfg(extra_args: str) -> str:
    append = f"initrd=/initrd.gz {BASE_CMDLINE} {extra_args}".strip()
    lines = ["DEFAULT vmops", "PROMPT 0", "TIMEOUT 0", "LABEL vmops", "  KERNEL /vmlinuz"]
    return "\n".join([*lines, f"  APPEND {append}", ""])


def make_boot_fat(raw: Path, vmlinuz: Path, initrd: Path) -> None:
    """A bootable FAT filesystem spanning the whole disk (no partition table)."""
    run("mkfs.vfat", "--invariant", "-i", "766d6f70", "-n", "VMOPSTEST", "-C", raw,
        str(IMAGE_MIB * 1024))  # fmt: skip
    run("syslinux", "--install", raw)
    run("mcopy", "-i", raw, vmlinuz, "::/vmlinuz")
    run("mcopy", "-i", raw, initrd, "::/initrd.gz")


def make_variant(base_raw: Path, extra_args: str, dest: Path, tmp: Path) -> None:
    raw = tmp / "variant.raw"
    shutil.copyfile(base_raw, raw)
    cfg = tmp / "syslinux.cfg"
    cfg.write_text(syslinux_cfg(extra_args))
    run("mcopy", "-o", "-i", raw, cfg, "::/syslinux.cfg")
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, dest)
    raw.unlink()


# --- cache and orchestration ------------------------------------------------


def stamp_for(deb: Path) -> str:
    h = hashlib.sha256()
    for part in (Path(__file__).read_bytes(), INIT_SH.read_bytes(), BUSYBOX.read_bytes()):
        h.update(hashlib.sha256(part).digest())
    h.update(deb.name.encode())
    return h.hexdigest()


def outputs(out: Path) -> list[Path]:
    return [out / name for name in (*VARIANTS, *EXTRA_OUTPUTS)]


def is_current(out: Path, deb: Path) -> bool:
    stamp = out / "stamp"
    return (
        stamp.is_file()
        and stamp.read_text().strip() == stamp_for(deb)
        and all(p.is_file() for p in outputs(out))
    )


@contextmanager
def locked(out: Path) -> Iterator[None]:
    # Parallel test runs must not build into the same directory at once.
    with open(out / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def build_into(out: Path, deb: Path, tmp: Path) -> None:
    log(f"unpacking {deb.name}")
    root = tmp / "pkg"
    run("dpkg-deb", "-x", deb, root)
    release = kernel_release(deb)
    moddir = root / "lib" / "modules" / release
    modules = load_order(MODULES, moddir)
    log(f"initramfs with busybox and {len(modules)} modules")
    initrd = tmp / "initrd.gz"
    initrd.write_bytes(build_initramfs(modules))
    vmlinuz = root / "boot" / f"vmlinuz-{release}"
    base = tmp / "base.raw"
    log(f"bootable FAT image ({IMAGE_MIB} MiB)")
    make_boot_fat(base, vmlinuz, initrd)
    for name, args in VARIANTS.items():
        log(f"writing {name}")
        make_variant(base, args, tmp / name, tmp)
    shutil.copyfile(vmlinuz, tmp / "vmlinuz")
    for path in outputs(out):
        os.replace(tmp / path.name, path)


def build(out: Path | None = None, force: bool = False) -> list[Path]:
    """Build (or reuse) the images; returns the output paths."""
    out = (out or default_out_dir()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with locked(out):
        if force:
            (out / "stamp").unlink(missing_ok=True)
            for old in out.glob("linux-image-*.deb"):
                old.unlink()
        deb = kernel_deb(out)
        if is_current(out, deb):
            log(f"up to date in {out}")
            return outputs(out)
        (out / "stamp").unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(dir=out, prefix="build-") as tmp:
            build_into(out, deb, Path(tmp))
        (out / "stamp").write_text(stamp_for(deb) + "\n")
        log("done")
        return outputs(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument(
        "--force", action="store_true", help="re-download the newest kernel and rebuild"
    )
    args = parser.parse_args(argv)
    for path in build(args.out, args.force):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
