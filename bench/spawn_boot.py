"""Spawn to guest userspace: until ``VMOPS-BOOT-COMPLETE`` is on the console.

    python -m bench --only spawn_boot [--quick]     (or: python -m bench.spawn_boot)

- vmops: ``POST /servers`` (m1.tiny, no config drive) until the line is in
  the instance's console log (read from its files every 50 ms).
- qemu: ``qemu-system-x86_64`` with the same devices on fresh copies of the
  same disks, serial port to a file, until the line is in that file.
- libvirt (for information): vmops' domain XML with the serial port to a
  file, ``defineXML`` + ``create`` on the bench's root, until the line is in
  that file: it tells what of vmops' extra time libvirt's start (a paused
  QEMU set up over QMP, then resumed) costs, and what vmops' own.

The bare side has the devices vmops' domain gives libvirt's QEMU. vmops'
domain asks for no USB controller: libvirt's default UHCI one, which the
bare side never had, made libvirt's guests boot ~0.3 s (5 %, TCG) later (see
docs/performance.md, "Spawn to userspace: where libvirt's domain differs
from bare QEMU").

Target (issue #17): vmops <= 1.05x bare QEMU. Under TCG the guest's boot
(~6-8 s of emulated CPU) dominates every side.

A full run boots each side 5 times (``VMOPS_BENCH_BOOTS`` sets how many;
each boot of each side is ~6-20 s). The rows carry ``ratio_95``, a
bootstrap interval of the ratio (:func:`bench.common.ratio_interval`):
boots of one command line spread by more than the 5 % being judged, so
the interval says whether a run could tell. ``paired`` gives, for
information, the median of each round's own ratio and its interval
(:func:`bench.common.paired_ratio`): narrower than the other when the
host's speed drifts from round to round, not when boots spread within one.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from bench import session
from bench.common import (
    Row,
    Target,
    alternate,
    make_row,
    ms_since,
    now,
    paired_ratio,
    ratio_interval,
)
from bench.virt import launch_qemu, make_disks, new_uuid, rewrite_domain_xml

MARK = b"VMOPS-BOOT-COMPLETE"
BOOT_TIMEOUT_S = 180.0
POLL_S = 0.05
TARGET = Target(1.05)


def run(quick: bool) -> list[Row]:
    s = session.get()
    svc = s.vmops
    lv = s.baseline
    tpl = s.template(config_drive=False)
    reps = 1 if quick else boots()
    vmops_ms: list[float] = []
    qemu_ms: list[float] = []
    lv_ms: list[float] = []

    def vmops_side(i: int) -> None:
        name = f"sb-{i}"
        t0 = now()
        server_id = svc.post_server(name)
        try:
            deadline = time.monotonic() + BOOT_TIMEOUT_S
            while MARK not in svc.console_log(server_id):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name}: no {MARK.decode()} after {BOOT_TIMEOUT_S:g}s")
                time.sleep(POLL_S)
            vmops_ms.append(ms_since(t0))
        finally:
            svc.destroy(server_id)

    def qemu_side(i: int) -> None:
        wd = s.workdir(f"sb-q-{i}")
        disks = make_disks(tpl.disks, wd)
        t0 = now()
        guest = launch_qemu(tpl.domain_xml, disks, wd, serial_to_file=True)
        try:
            deadline = time.monotonic() + BOOT_TIMEOUT_S
            while MARK not in guest.console():
                if guest.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"bare QEMU did not print {MARK.decode()}: "
                                       f"{guest.console()[-500:]!r}")
                time.sleep(POLL_S)
            qemu_ms.append(ms_since(t0))
        finally:
            guest.stop()
            shutil.rmtree(wd, ignore_errors=True)

    def libvirt_side(i: int) -> None:
        wd = s.workdir(f"sb-lv-{i}")
        disks = make_disks(tpl.disks, wd)
        log = wd / "serial.log"
        xml = rewrite_domain_xml(tpl.domain_xml, f"sb-lv-{i}", new_uuid(), disks,
                                 lv.run_dir / "unused.sock", serial_file=log)
        t0 = now()
        dom = lv.define(xml)
        try:
            dom.create()
            deadline = time.monotonic() + BOOT_TIMEOUT_S
            while not (log.exists() and MARK in log.read_bytes()):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"libvirt guest: no {MARK.decode()}")
                time.sleep(POLL_S)
            lv_ms.append(ms_since(t0))
        finally:
            lv.remove(dom)
            shutil.rmtree(wd, ignore_errors=True)

    alternate(reps, vmops_side, qemu_side, libvirt_side)
    return [make_row("spawn_to_userspace_vs_qemu", vmops_ms, qemu_ms, TARGET,
                     ratio_95=ratio_interval(vmops_ms, qemu_ms),
                     paired=paired_ratio(vmops_ms, qemu_ms)),
            make_row("spawn_to_userspace_vs_libvirt", vmops_ms, lv_ms, None,
                     ratio_95=ratio_interval(vmops_ms, lv_ms),
                     paired=paired_ratio(vmops_ms, lv_ms))]


def boots() -> int:
    """Boots of each side in a full run: ``VMOPS_BENCH_BOOTS``, else 5."""
    given = os.environ.get("VMOPS_BENCH_BOOTS", "").strip()
    if not given:
        return 5
    if not given.isdigit() or int(given) < 1:
        raise ValueError(f"VMOPS_BENCH_BOOTS must be a whole number of boots, 1 or more; "
                         f"got {given!r}")
    return int(given)


if __name__ == "__main__":
    from bench.runner import main

    sys.exit(main(["--only", "spawn_boot", *sys.argv[1:]]))
