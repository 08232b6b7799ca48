"""Snapshot of a running guest: vmops' createImage against a bare
``qemu-img convert`` of the same disk, and how long the guest stood still.

    python -m bench --only snapshot [--quick]     (or: python -m bench.snapshot)

One running vmops instance (m1.tiny, user-mode NIC). Its user-data script
first copies the start of its root disk over 8 MiB chunks further on
(128 MiB in all, 8 MiB with ``--quick``; then ``sync``), so the root
overlay holds data of its own beyond the base image, then prints
``VMOPS-BENCH-TICK <n> <uptime>`` every 100 ms, forever.

- vmops: ``POST /servers/{id}/action?vmops:wait=600`` with ``createImage``
  until the answer (the action has ended: the guest paused, its root disk
  copied flattened into the image cache, unpaused, the copy inspected,
  checked by ``qemu-img check``, hashed and published, the record active).
  The image is deleted after each sample.
- baseline: ``qemu-img convert -U -q -f qcow2 -O qcow2`` of the same root
  disk file (the instance's overlay, its base read through) to a
  standalone qcow2 in the bench's directory, with the guest running: the
  bare copy, without pause, checks or records. The guest writes nothing
  to the disk by then (its dirtying ended with ``sync``), so it is a
  consistent copy too.

The sides alternate, rotating which goes first. During each sample the
host follows the console (bench/guestlog.py: each line stamped when first
seen, polled every 10 ms) and reports the guest's **stall**: the longest
interval between two consecutive ticks that overlaps the operation, minus
the usual interval before it (~100 ms); with it how far the guest's own
clock moved over that interval. vmops pauses the guest for its copy, so
its stall is about the copy's time; the bare convert does not pause it
(what it costs the guest is CPU and I/O contention only). No target.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

from bench import session
from bench.common import Row, alternate, make_row, ms_since, now
from bench.guestlog import TICK, ConsoleTail, Stall, stall_during, ticks
from bench.vmopsd import VmopsService
from vmops.cli.client import ApiError
from vmops.hypervisor.libvirt.domain_xml import disks_of

log = logging.getLogger("bench")

CHUNK_MIB = 8
FIRST_CHUNK_MIB = 256  # where the copies go: past the base image's 48 MiB
TICK_S = 0.1
READY_TIMEOUT_S = 600.0
SETTLE_S = 1.0  # ticks wanted after each operation, to see the stall end


def guest_script(chunks: int, chunk_mib: int = CHUNK_MIB) -> str:
    """Dirty ``chunks`` x ``chunk_mib`` MiB of the root disk, then tick."""
    return textwrap.dedent(f"""\
        #!/bin/sh
        # vmops bench: {chunks * chunk_mib} MiB of the root disk written, then a tick every
        # {TICK_S:g} s with the guest's uptime
        i=0
        while [ $i -lt {chunks} ]; do
            dd if=/dev/vda of=/dev/vda bs=1M count={chunk_mib} \\
                seek=$(({FIRST_CHUNK_MIB} + i * {chunk_mib})) conv=notrunc 2>/dev/null
            i=$((i + 1))
        done
        sync
        echo VMOPS-BENCH-DIRTY-DONE
        n=0
        while :; do
            n=$((n + 1))
            echo "VMOPS-BENCH-TICK $n $(cut -d' ' -f1 /proc/uptime)"
            usleep {int(TICK_S * 1e6)}
        done
        """)


def run(quick: bool) -> list[Row]:
    s = session.get()
    svc = s.vmops
    reps = 1 if quick else 5
    chunks = 1 if quick else 16
    wd = s.workdir("snap")
    name = "snap-0"
    server_id = svc.post_server(name, user_data=guest_script(chunks).encode())
    try:
        svc.wait_built(name)
        with ConsoleTail(svc.instances_dir / server_id) as tail:
            tail.wait_for(TICK, 10, READY_TIMEOUT_S, "the guest's ticks (after dirtying its disk)")
            root = root_disk(svc, name)
            return measure(svc, server_id, root, wd, tail, reps, chunks * CHUNK_MIB)
    finally:
        svc.destroy(server_id)


def root_disk(svc: VmopsService, name: str) -> Path:
    """The instance's root disk file, as its domain names it (vda)."""
    return Path(disks_of(svc.domain_xml(name))["vda"][0])


def measure(svc: VmopsService, server_id: str, root: Path, wd: Path, tail: ConsoleTail,
            reps: int, dirty_mib: int) -> list[Row]:
    vmops_ms: list[float] = []
    convert_ms: list[float] = []
    stalls: dict[str, list[Stall]] = {"vmops": [], "convert": []}

    def observed(side: str, op: Callable[[], object]) -> float:
        start = time.monotonic()
        t0 = now()
        op()
        took = ms_since(t0)
        end = time.monotonic()
        time.sleep(SETTLE_S)
        stalls[side].append(stall_during(ticks(tail.matching(TICK)), start, end))
        return took

    def vmops_side(i: int) -> None:
        image = f"bench-snap-{i}"
        vmops_ms.append(observed("vmops", lambda: svc.action(
            server_id, {"createImage": {"name": image}})))
        _check_and_delete_image(svc, image)

    def convert_side(i: int) -> None:
        out = wd / f"convert-{i}.qcow2"
        convert_ms.append(observed("convert", lambda: subprocess.run(
            ["qemu-img", "convert", "-U", "-q", "-f", "qcow2", "-O", "qcow2", str(root),
             str(out)], check=True)))
        out.unlink()

    alternate(reps, vmops_side, convert_side)
    return [make_row("snapshot_running_vs_qemu_img_convert", vmops_ms, convert_ms, None,
                     dirty_mib=dirty_mib, root_disk_bytes=root.stat().st_blocks * 512,
                     **stall_summary(stalls["vmops"], stalls["convert"]))]


def stall_summary(vmops: list[Stall], convert: list[Stall]) -> dict[str, Any]:
    """Medians of the guest's stalls on each side, and every sample."""
    def med(values: list[float]) -> float | None:
        return round(median(values), 1) if values else None

    return {"vmops_stall_ms": med([s.stall_ms for s in vmops]),
            "vmops_guest_clock_gap_ms": med([s.guest_gap_ms for s in vmops]),
            "baseline_stall_ms": med([s.stall_ms for s in convert]),
            "usual_tick_ms": med([s.usual_ms for s in vmops + convert]),
            "vmops_stalls_ms": [s.stall_ms for s in vmops],
            "baseline_stalls_ms": [s.stall_ms for s in convert]}


def _check_and_delete_image(svc: VmopsService, name: str) -> None:
    image = svc.client.get(f"/images/{name}")["image"]
    if image["status"] != "ACTIVE":
        raise RuntimeError(f"snapshot {name} ended {image['status']}: "
                           f"{image.get('vmops:fault')}")
    try:
        svc.client.delete(f"/images/{image['id']}")
    except ApiError as exc:
        log.warning("could not delete image %s: %s", name, exc)


if __name__ == "__main__":
    from bench.runner import main

    sys.exit(main(["--only", "snapshot", *sys.argv[1:]]))
