"""Host checks: can this host run VMs, and with which acceleration?

Each check is cheap and independent, so ``vmops doctor`` reports every
problem at once. libvirt is only reached through ``vmops.hypervisor`` and
only inside a check, so a missing libvirt-python is reported, not raised.
"""

from __future__ import annotations

import fcntl
import functools
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from vmops import file_modes
from vmops.errors import ConfigError
from vmops.hypervisor.base import Accel, Check, Hypervisor
from vmops.hypervisor.libvirt import (
    embed_root,
    embed_root_too_long,
    missing_qemu_driver_user,
)
from vmops.store import database_problem

__all__ = ["Check", "kvm_works", "resolve_accel", "run_checks"]

ACCEL_SETTINGS = ("auto", "kvm", "tcg")
QEMU = "qemu-system-x86_64"
KVM_PROBE_TIMEOUT_S = 5.0
EMBED_PROBE_TIMEOUT_S = 180.0

# A 262-byte multiboot kernel that QEMU loads with -kernel. It enters
# protected mode, writes 'P' to the isa-debugcon port 0x402, builds page
# tables and enters long mode ('L'), writes every 4 KiB page of 4..20 MiB
# four times ('M'), runs a 5-million-iteration multiply/add loop ('C'),
# then writes 0x10 to isa-debug-exit at 0xf4: QEMU exits with status 33.
# On working KVM it takes milliseconds. On a broken nested KVM (this project
# has met one) SeaBIOS and even long mode work, but every guest instruction
# traps: the loop takes seconds per million, so the probe times out, where a
# probe that only waits for SeaBIOS' banner would wrongly pass.
# Built with GNU as --64 (.code32 entry, .code64 after the far jump) and
# ld -Ttext=0x100000 --oformat binary; sha256 fc92733d...83ead518.
KVM_PROBE_KERNEL = bytes.fromhex(
    "02b0ad1b00000100fe4f51e4000010000000100006011000060110002000100066ba0204"
    "b050eebf0000200031c0b9000c0000f3abc7050000200003102000c70500102000032020"
    "00bf00202000b883000000890783c70805000020003d8300000272efb8000020000f22d8"
    "0f20e083c8200f22e0b9800000c00f320d000100000f300f20c00d010000800f22c00f01"
    "1500011000ea9c001000080066ba0204b04cee49c7c10400000048c7c70000400048893f"
    "4881c7001000004881ff0000400172ed49ffc975e1b04dee48c7c1404b4c00486bc00348"
    "01c848ffc975f4b043ee66baf400b010eef4ebfd0f1f40000000000000000000ffff0000"
    "009aaf000f00f0001000"
)
KVM_PROBE_EXIT_STATUS = 33
KVM_PROBE_OUTPUT = b"PLMC"


def run_checks(state_dir: Path, uri: str, accel: str,
               hypervisor: Hypervisor | None = None,
               database: Path | None = None) -> list[Check]:
    """Every host check for serving ``state_dir`` through ``uri``.

    Pass the service's connected ``hypervisor``: an embedded libvirt root can
    be held by one process only, so without it the root is probed from a
    child process, or reported as held when another process has it.
    ``database``: vmops.db, checked read-only (the service refuses a damaged one).
    """
    checks = [
        _libvirt_python(),
        *([_qemu_driver()] if uri.startswith("qemu") else []),
        _program(QEMU, "apt-get install qemu-system-x86"),
        _program("qemu-img", "apt-get install qemu-utils"),
        _state_dir_writable(state_dir),
        _state_dir_private(state_dir, embed_root(uri)),
        *([_database(database)] if database is not None else []),
    ]
    root = embed_root(uri)
    if root is not None:
        checks.append(_embed_root_path(root))
        checks.append(_qemu_driver_user())
    if accel in ("kvm", "auto"):
        checks.append(_kvm_check(required=accel == "kvm"))
    if hypervisor is not None:
        checks.extend(hypervisor.capabilities_check())
    elif root is not None:
        checks.extend(_embed_root_checks(root, uri, accel))
    return checks


def resolve_accel(setting: str) -> Accel:
    """kvm, tcg, or for auto KVM if it actually runs guest code here, else TCG."""
    if setting not in ACCEL_SETTINGS:
        raise ConfigError(option="accel", value=setting, allowed="auto, kvm or tcg")
    if setting == "auto":
        return Accel.KVM if kvm_works()[0] else Accel.TCG
    return Accel(setting)


@functools.cache
def kvm_works() -> tuple[bool, str]:
    """(works, why): run the probe kernel under KVM, once per process."""
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist (no KVM module, or no nested virtualization)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm exists but this user cannot open it"
    qemu = shutil.which(QEMU)
    if qemu is None:
        return False, f"{QEMU} is not installed"
    with tempfile.TemporaryDirectory(prefix="vmops-kvm-probe-") as tmp:
        return run_probe_guest(qemu, Path(tmp), "kvm")


def run_probe_guest(qemu: str, tmp: Path, accel: str) -> tuple[bool, str]:
    """Run the probe kernel with ``-accel accel``: (finished, what happened)."""
    kernel, out = tmp / "probe.bin", tmp / "debugcon.txt"
    kernel.write_bytes(KVM_PROBE_KERNEL)
    cmd = [qemu, "-accel", accel, "-machine", "pc", "-m", "64", "-nodefaults",
           "-no-user-config", "-display", "none", "-kernel", str(kernel),
           "-chardev", f"file,id=dbg,path={out}",
           "-device", "isa-debugcon,iobase=0x402,chardev=dbg",
           "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=KVM_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, (f"a test guest under {accel} did not finish in "
                       f"{KVM_PROBE_TIMEOUT_S:.0f} s (it takes milliseconds on working KVM): "
                       "KVM is present but broken or extremely slow, e.g. nested virtualization")
    reached = out.read_bytes()[-len(KVM_PROBE_OUTPUT):] if out.exists() else b""
    if done.returncode == KVM_PROBE_EXIT_STATUS and reached == KVM_PROBE_OUTPUT:
        return True, f"a test guest ran 64-bit code under {accel}"
    stderr = done.stderr.decode(errors="replace").strip().splitlines()
    return False, (f"a test guest under {accel} failed (exit status {done.returncode}"
                   f"{': ' + stderr[-1] if stderr else ''})")


def _kvm_check(required: bool) -> Check:
    ok, detail = kvm_works()
    return Check(
        name="hardware acceleration (KVM)", ok=ok, required=required,
        detail=detail if required or ok else f"{detail}; accel=auto uses TCG (slow)",
        advice="" if ok else "set accel=tcg, or enable (nested) virtualization for this host")


def _libvirt_python() -> Check:
    try:
        from vmops.hypervisor.libvirt.driver import library_version
    except ImportError as e:
        return Check(name="libvirt-python", ok=False, required=True, detail=str(e),
                     advice="pip install libvirt-python (needs: apt-get install "
                            "libvirt-dev pkg-config)")
    return Check(name="libvirt-python", ok=True, required=True,
                 detail=f"libvirt library {library_version()}")


def _qemu_driver() -> Check:
    found = sorted(glob.glob("/usr/lib*/libvirt/connection-driver/libvirt_driver_qemu.so")
                   + glob.glob("/usr/lib*/*/libvirt/connection-driver/libvirt_driver_qemu.so"))
    return Check(name="libvirt QEMU driver", ok=bool(found), required=True,
                 detail=found[0] if found else "libvirt_driver_qemu.so not found",
                 advice="apt-get install libvirt-daemon libvirt-daemon-driver-qemu")


def _program(name: str, advice: str) -> Check:
    path = shutil.which(name)
    if path is None:
        return Check(name=name, ok=False, required=True, detail="not on PATH", advice=advice)
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check(name=name, ok=False, required=True, detail=f"{path}: {e}", advice=advice)
    return Check(name=name, ok=True, required=True,
                 detail=f"{path}: {version[0] if version else 'unknown version'}")


def _state_dir_writable(state_dir: Path) -> Check:
    name = "state directory"
    try:
        with file_modes.private_umask():
            state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=state_dir, prefix=".doctor-"):
            pass
    except OSError as e:
        return Check(name=name, ok=False, required=True, detail=f"{state_dir}: {e}",
                     advice="choose a writable state_dir, or run as its owner")
    return Check(name=name, ok=True, required=True, detail=f"{state_dir} is writable")


def _state_dir_private(state_dir: Path, libvirt_root: Path | None = None) -> Check:
    name = "state directory permissions"
    loose = file_modes.loose_files(state_dir, libvirt_root)
    if not loose:
        return Check(name=name, ok=True, required=False,
                     detail=f"only its owner can use {state_dir} and what is in it")
    shown = ", ".join(str(f) for f in loose[:5]) + (
        f" and {len(loose) - 5} more" if len(loose) > 5 else "")
    return Check(name=name, ok=False, required=False,
                 detail=f"other users may read or enter {len(loose)} path(s): {shown}",
                 advice="starting `vmops serve` makes them private; or: "
                        f"chmod -R go-rwx {state_dir}")


def _database(path: Path) -> Check:
    name = "database"
    problem = database_problem(path)
    if problem is not None:
        return Check(name=name, ok=False, required=True, detail=problem,
                     advice="the service will not start on a damaged database; see the "
                            "detail for how to restore it")
    return Check(name=name, ok=True, required=True,
                 detail=f"{path} passes SQLite's quick_check" if path.exists()
                 else f"{path} does not exist yet (made at the first start)")


def unrecorded_domains(names: list[str], database: Path, started_empty: bool) -> Check:
    """The service's word, after recovery, on vmops' domains without a record."""
    name = "instance records"
    if not names:
        return Check(name=name, ok=True, required=False,
                     detail="every domain with vmops' mark has a record")
    why = (f"{database} was empty or missing when the service started, so their records "
           "are lost" if started_empty else "their records are gone")
    return Check(name=name, ok=False, required=False,
                 detail=f"{len(names)} domain(s) carry vmops' mark but have no record "
                        f"({why}); vmops leaves them alone: {', '.join(names)}",
                 advice="stop the service and restore vmops.db from a copy (e.g. a "
                        "vmops.db.v*.bak), or remove those domains with virsh")


def _embed_root_path(root: Path) -> Check:
    problem = embed_root_too_long(root)
    return Check(name="embedded libvirt root path", ok=problem is None, required=True,
                 detail=problem or f"{root} is short enough for QEMU's sockets",
                 advice="name a shorter root in libvirt_uri, or leave it empty" if problem
                 else "")


def _qemu_driver_user() -> Check:
    user = missing_qemu_driver_user()
    if user is None:
        return Check(name="libvirt QEMU user", ok=True, required=True,
                     detail="present (or not needed: not running as root)")
    return Check(
        name="libvirt QEMU user", ok=False, required=True,
        detail=f"libvirt's QEMU driver, run as root, refuses to start without user {user!r} "
               "(QEMU itself runs as root: the embedded root's qemu.conf says so)",
        advice=f"useradd --system --no-create-home --shell /usr/sbin/nologin {user} "
               "(scripts/setup does it)")


def _embed_root_checks(root: Path, uri: str, accel: str) -> list[Check]:
    name = "embedded libvirt root"
    holder = embed_root_holder(root)
    if holder is not None:
        return [Check(name=name, ok=True, required=True,
                      detail=f"{root} is open in process {holder} (the vmops service?); "
                             "its checks are in the service's doctor report")]
    resolved = resolve_accel(accel) if accel in ACCEL_SETTINGS else Accel.TCG
    probe = [sys.executable, "-c", "import sys; from vmops.doctor import _embed_probe_child; "
             "_embed_probe_child(sys.argv[1], sys.argv[2])", uri, resolved.value]
    try:
        done = subprocess.run(probe, capture_output=True, text=True,
                              timeout=EMBED_PROBE_TIMEOUT_S)
        return [Check(**c) for c in json.loads(done.stdout)]
    except (subprocess.TimeoutExpired, ValueError, TypeError) as e:
        return [Check(name=name, ok=False, required=True, detail=f"{root}: {e}",
                      advice="see the libvirt error above; vmops doctor --json for details")]


def embed_root_holder(root: Path) -> int | None:
    """The pid of the process holding the embedded root, or None if free.

    libvirt holds a POSIX lock on ``run/qemu/driver.pid``. Testing it from
    the holding process itself would drop that lock (closing any descriptor
    of a file drops the process' locks on it), so our own pid is answered
    without touching the lock.
    """
    pid_file = root / "run" / "qemu" / "driver.pid"
    try:
        text = pid_file.read_text().strip()
    except OSError:
        return None
    pid = int(text) if text.isdigit() else None
    if pid == os.getpid():
        return pid
    try:
        with open(pid_file, "rb+") as f:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(f, fcntl.LOCK_UN)
    except OSError:
        return pid if pid is not None else -1
    return None


def _embed_probe_child(uri: str, accel: str) -> None:
    """In a child process: open the root, run the hypervisor's checks, print
    them as JSON. A child, because a process can open only one embedded root
    ever, and a failed open disables the QEMU driver for the whole process."""
    from vmops.errors import VmopsError
    from vmops.hypervisor import open_hypervisor

    hv = open_hypervisor(uri, Accel(accel))
    try:
        hv.connect()
        checks = hv.capabilities_check()
    except VmopsError as e:
        checks = [Check(name="embedded libvirt root", ok=False, required=True,
                        detail=e.message, advice="vmops doctor lists what is missing")]
    finally:
        hv.close()
    print(json.dumps([asdict(c) for c in checks]))
