"""Which of libvirt's QEMU options cost a guest boot: bare QEMU boots of the
test image, to ``VMOPS-BOOT-COMPLETE``, under variants of two command lines
(issue #17; docs/performance.md, "Spawn to userspace: where libvirt's domain
differs from bare QEMU").

    python -m bench.boot_options ROUNDS VARIANT...

Both lines are made for vmops' own domain XML (m1.tiny: 512 MiB, 1 vCPU,
the test image's root disk, a user NIC, the serial port):

- ``bare``: ``bench/virt.py``'s ``qemu_command``, the spawn_boot bare side.
- ``libvirt``: libvirt's line for the same XML (``domainXMLToNative`` on an
  embed root of its own), run without libvirt: not paused (no ``-S``), the
  user NIC as libvirt starts it (``domainXMLToNative`` renders it as a tap),
  the serial port to a file.

A variant adds or removes options: ``libvirt~sandbox~no-shutdown`` is
libvirt's line without its ``-sandbox`` and ``-no-shutdown`` options,
``bare+sandbox`` the bare line with libvirt's ``-sandbox``; ``+usb`` adds
the PIIX3 UHCI controller that libvirt gives a domain naming no USB
controller. Each round takes the guest
lock (/tmp/vmops-guest.lock), boots every variant once (the order rotated
each round), and lets go; each boot gets a fresh overlay of ``tiny.qcow2``.
Printed per variant: the median ms from QEMU's start to the line in the
serial file (polled every 20 ms), QEMU's CPU time then, and the load average.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import short_tmpdir, test_image
from bench.virt import LibvirtBaseline, qemu_command
from vmops.hypervisor.base import DiskSpec, DomainSpec, NicSpec
from vmops.hypervisor.libvirt.domain_xml import build_domain_xml

MARK = b"VMOPS-BOOT-COMPLETE"
GUEST_LOCK = Path("/tmp/vmops-guest.lock")
BOOT_TIMEOUT_S = 180.0
POLL_S = 0.02
USB = ("-device", "piix3-usb-uhci,id=usb,bus=pci.0,addr=0x1.0x2")
# Placeholders in the lines, filled in per boot (absolute: libvirt wants
# absolute paths).
DISK, SERIAL, QMP = "/@disk@", "/@serial@", "/@qmp@"
USAGE = "usage: python -m bench.boot_options ROUNDS VARIANT...  (see the module's doc)"

Option = tuple[str, ...]  # a flag and its value, if it has one


def domain_xml() -> str:
    return build_domain_xml(DomainSpec(
        uuid="0b5e6a3c-8f3e-4c4e-9d7a-1f2b3c4d5e6f", name="boot-options", memory_mib=512,
        vcpus=1, disks=(DiskSpec(path=Path(DISK), format="qcow2", target="vda"),),
        nics=(NicSpec(mac="52:54:00:12:34:56"),), console_socket=Path(SERIAL)))


def options(argv: list[str]) -> list[Option]:
    """``-flag [value]`` pairs of a QEMU command line (after the binary)."""
    found: list[Option] = []
    for arg in argv:
        if arg.startswith("-") or not found:
            found.append((arg,))
        else:
            found[-1] = (*found[-1], arg)
    return found


def bare_line() -> list[Option]:
    argv = qemu_command(domain_xml(), {"vda": Path(DISK)}, Path(QMP),
                        ["-serial", f"file:{SERIAL}"])
    return options(argv[1:])


def libvirt_line() -> list[Option]:
    baseline = LibvirtBaseline()
    try:
        baseline.open()
        native = str(baseline.conn.domainXMLToNative("qemu-argv", domain_xml(), 0))
    finally:
        baseline.close()
    argv = shlex.split(native)
    binary = next(i for i, arg in enumerate(argv) if "=" not in arg)
    found = (_runnable(opt) for opt in options(argv[binary + 1:]))
    return [opt for opt in found if opt is not None]


def _runnable(opt: Option) -> Option | None:
    """One of libvirt's options as it can run here, outside libvirt; None
    for what only libvirt needs (the paused start, its master key)."""
    flag, value = opt[0], opt[1] if len(opt) > 1 else ""
    if flag == "-S" or (flag == "-object" and '"secret"' in value):
        return None
    if flag == "-netdev" and '"tap"' in value:
        netdev = json.loads(value)
        return (flag, json.dumps({"type": "user", "id": netdev["id"]}))
    if flag == "-chardev" and "id=charmonitor" in value:
        return (flag, f"socket,id=charmonitor,path={QMP},server=on,wait=off")
    if flag == "-chardev" and f"path={SERIAL}" in value:
        return (flag, f"file,id={value.split('id=')[1].split(',')[0]},path={SERIAL}")
    return opt


@dataclass
class Variant:
    name: str
    argv: list[str]
    ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)


def variant(name: str, lines: dict[str, list[Option]]) -> Variant:
    base, *changes = name.replace("+", " +").replace("~", " ~").split()
    if base not in lines:
        raise SystemExit(f"unknown line {base!r} in {name!r}: bare or libvirt")
    chosen = list(lines[base])
    for change in changes:
        flag = "-" + change[1:]
        if change == "+usb":
            chosen.append(USB)
        elif change.startswith("+"):
            extra = [o for o in lines["libvirt"] if o[0] == flag]
            if not extra:
                raise SystemExit(f"{name!r}: libvirt's line has no {flag}")
            chosen += extra
        else:
            kept = [o for o in chosen if o[0] != flag]
            if len(kept) == len(chosen):
                raise SystemExit(f"{name!r}: the {base} line has no {flag}")
            chosen = kept
    return Variant(name, ["qemu-system-x86_64", *(arg for o in chosen for arg in o)])


def boot(v: Variant, workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    disk, serial = workdir / "vda.qcow2", workdir / "serial.log"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(test_image()),
                    "-F", "qcow2", str(disk)], check=True)
    paths = {DISK: str(disk), SERIAL: str(serial), QMP: str(workdir / "qmp.sock")}
    argv = [_fill(arg, paths) for arg in v.argv]
    start = time.perf_counter()
    with (workdir / "qemu.err").open("wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
    try:
        while not (serial.exists() and MARK in serial.read_bytes()):
            if proc.poll() is not None or time.perf_counter() - start > BOOT_TIMEOUT_S:
                raise RuntimeError(f"{v.name}: no {MARK.decode()}: "
                                   f"{(workdir / 'qemu.err').read_text()[-500:]}")
            time.sleep(POLL_S)
        v.ms.append((time.perf_counter() - start) * 1000)
        stat = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        v.cpu_ms.append((int(stat[11]) + int(stat[12])) * 1000 / os.sysconf("SC_CLK_TCK"))
    finally:
        proc.kill()
        proc.wait()


def _fill(arg: str, paths: dict[str, str]) -> str:
    for placeholder, path in paths.items():
        arg = arg.replace(placeholder, path)
    return arg


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print(USAGE, file=sys.stderr)
        return 2
    rounds = int(argv[0])
    lines = {"bare": bare_line(), "libvirt": libvirt_line()}
    variants = [variant(name, lines) for name in argv[1:]]
    work = short_tmpdir("boot-options")
    loads: list[float] = []
    try:
        for r in range(rounds):
            k = r % len(variants)
            with GUEST_LOCK.open("a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                for v in variants[k:] + variants[:k]:
                    loads.append(os.getloadavg()[0])
                    boot(v, work / "guest")
                    print(f"round {r} {v.name}: {v.ms[-1]:.0f} ms, QEMU CPU {v.cpu_ms[-1]:.0f} ms,"
                          f" load {loads[-1]:.2f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for v in variants:
        print(f"{v.name}: median {statistics.median(v.ms):.0f} ms (n={len(v.ms)}, "
              f"{min(v.ms):.0f}-{max(v.ms):.0f}), QEMU CPU {statistics.median(v.cpu_ms):.0f} ms")
    print(f"load average (1 min): {min(loads):.2f}-{max(loads):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
