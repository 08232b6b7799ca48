"""Volumes: a guest's sequential throughput on a volume against the host
on the same target, and attach/detach latency against bare libvirt.

    python -m bench --only volume_io [--quick]    (or: python -m bench.volume_io)

One vmops instance (m1.tiny, no other disk than its root and config
drive) and, one after the other, three 1 GiB volumes: ``local`` (a blank
qcow2, vmops' default format), ``nbd`` (a sparse raw file served by
``qemu-nbd`` on 127.0.0.1, registered with ``vmops:remote``) and ``iscsi``
(the same kind of file as LUN 1 of a private ``tgtd`` on 127.0.0.1, no
CHAP). The targets are the ones the tests use (tests/targets.py). With
``--quick`` only ``local``, one round of 8 MiB. For each volume, rounds
(a first warm-up round is not counted: it allocates the qcow2 clusters or
the file's blocks, so every counted round overwrites allocated ones on
both sides):

1. attach (``POST /servers/{id}/os-volume_attachments``, which answers
   once the disk is in the running guest); the guest's user-data script
   sees ``/dev/vdb`` appear and runs ``dd if=/dev/zero of=/dev/vdb bs=1M
   count=N oflag=direct``, then ``dd if=/dev/vdb of=/dev/null bs=1M
   count=N iflag=direct`` (N = 64, 8 with ``--quick``), timing each with
   its own ``/proc/uptime`` (10 ms resolution) and printing
   ``VMOPS-BENCH-DD <op> <round> <bytes> <t0> <t1> <status>``;
2. detach (``DELETE .../os-volume_attachments/{volume}``, then the
   volume's status polled every 10 ms until ``available``: the guest has
   let go of the disk);
3. the host runs ``qemu-img bench -t writeback -s 1M -S 1M -d 1 -c N``
   on the same target: the volume's file (``-f qcow2``) or the same export
   or LUN by its URL (``-f raw``, through QEMU's own NBD or iSCSI client,
   as the guest's disk), writing (``-w``, zeros: the pattern's default)
   then reading the same N MiB from offset 0.

Why ``qemu-img bench`` and not ``dd`` on the host: it goes through the same
QEMU block layer and format or protocol driver as the guest's disk, with
the same host cache mode (``writeback``, the domain's) and the same
request pattern (1 MiB, one at a time, sequential, same range); ``dd`` on
a qcow2 file would read its metadata, and could not reach an NBD export
as QEMU does. The guest bypasses its own page cache (O_DIRECT), so every
one of its requests reaches QEMU, as every one of ``qemu-img bench``'s
reaches the block layer. What the ratio shows is the cost of the guest's
path: virtio-blk, the guest kernel and dd, all emulated under TCG here.

Attach and detach latency: the same operations on a libvirt domain of the
bench's own (vmops' domain XML on the bench's embed root, booted; the
disk a blank qcow2 of the same size, or the same export or LUN, in the
``<disk>`` element vmops builds): ``attachDeviceFlags(LIVE|CONFIG)``, and
``detachDeviceFlags(LIVE|CONFIG)`` until libvirt's device-removed event
(the guest let go). Each round runs both sides of each, alternating which
goes first. No targets.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from bench import session
from bench.common import Row, make_row, ms_since, now
from bench.guestlog import DD, ConsoleTail, DdRun, dd_runs
from bench.quiet_libvirt import libvirt
from bench.virt import LibvirtBaseline, make_disks, new_uuid, rewrite_domain_xml
from bench.vmopsd import VmopsService
from vmops.hypervisor.base import DiskBus, DiskDevice, DiskSpec, NetworkSource
from vmops.hypervisor.libvirt.domain_xml import disk_xml
from vmops.volumes.records import volume_disk
from vmops.volumes.remote import parse_iscsi, parse_nbd

log = logging.getLogger("bench")

VOLUMES = "/volume/v3/volumes"
VOLUME_GB = 1
DEVICE = "vdb"  # the volume, in the guest and in the domain (no other virtio disk)
# The test image's init prints its first heartbeat once everything else is
# up (modules, disks, the user-data script, DHCP, the device watcher): a
# disk plugged in before then is plugged into a guest still settling.
READY_MARK = b"VMOPS-HEARTBEAT"
BOOT_TIMEOUT_S = 300.0
DD_TIMEOUT_S = 600.0
DETACH_TIMEOUT_S = 120.0
QEMU_IMG_RUN = re.compile(r"Run completed in (\d+(?:\.\d+)?) seconds")


def guest_script(mib: int, device: str = DEVICE) -> str:
    """Whenever /dev/<device> appears: write then read ``mib`` MiB with
    O_DIRECT, print the timings, wait for it to go; again."""
    return textwrap.dedent(f"""\
        #!/bin/sh
        # vmops bench: sequential dd with O_DIRECT on each {device} plugged in
        up() {{ cut -d' ' -f1 /proc/uptime; }}
        n=0
        while :; do
            while [ ! -b /dev/{device} ]; do usleep 50000; done
            n=$((n + 1))
            echo "VMOPS-BENCH-DEV $n"
            t0=$(up)
            dd if=/dev/zero of=/dev/{device} bs=1M count={mib} oflag=direct 2>/dev/null
            rc=$?
            echo "VMOPS-BENCH-DD write $n {mib * 2**20} $t0 $(up) $rc"
            t0=$(up)
            dd if=/dev/{device} of=/dev/null bs=1M count={mib} iflag=direct 2>/dev/null
            rc=$?
            echo "VMOPS-BENCH-DD read $n {mib * 2**20} $t0 $(up) $rc"
            while [ -b /dev/{device} ]; do usleep 50000; done
        done
        """)


def qemu_img_bench(target: str, fmt: str, mib: int, write: bool) -> float:
    """Seconds ``qemu-img bench`` reports for ``mib`` sequential 1 MiB
    requests, one at a time, on ``target`` (a file or a QEMU URL: nbd://,
    iscsi://), cache writeback."""
    cmd = ["qemu-img", "bench", "-f", fmt, "-t", "writeback", "-s", "1M", "-S", "1M",
           "-d", "1", "-c", str(mib), *(["-w"] if write else []), target]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return parse_qemu_img_bench(out)


def parse_qemu_img_bench(output: str) -> float:
    found = QEMU_IMG_RUN.search(output)
    if found is None:
        raise ValueError(f"no 'Run completed in' in qemu-img bench's output: {output!r}")
    return float(found.group(1))


@dataclass(frozen=True)
class Backend:
    """One kind of volume: vmops' volume, what the host's ``qemu-img bench``
    opens (the volume's file, or the same export over the same protocol),
    and the ``<disk>`` the libvirt baseline attaches."""

    kind: str
    volume_id: str
    host_target: str
    host_format: str
    lv_disk_xml: str


def run(quick: bool) -> list[Row]:
    s = session.get()
    svc = s.vmops
    lv = s.baseline
    tpl = s.template(config_drive=False)
    mib = 8 if quick else 64
    rounds = 1 if quick else 6  # the first is a warm-up, except with --quick
    # Remote volumes in the full run only: CI's quick run proves the path on local.
    kinds = ("local",) if quick else ("local", "nbd", "iscsi")
    wd = s.workdir("vol-lv")
    lv_log = wd / "serial.log"
    disks = make_disks(tpl.disks, wd)
    dom = lv.define(rewrite_domain_xml(tpl.domain_xml, "vol-lv", new_uuid(), disks,
                                       lv.run_dir / "unused.sock", serial_file=lv_log))
    server_id = None
    rows: list[Row] = []
    try:
        dom.create()
        name = "vol-0"
        server_id = svc.post_server(name, user_data=guest_script(mib).encode())
        svc.wait_built(name)
        wait_ready(lambda: lv_log.read_bytes() if lv_log.exists() else b"", "libvirt guest")
        wait_ready(lambda: svc.console_log(server_id or ""), "vmops guest")
        done = 0  # the guest numbers its dd rounds across every volume
        with ConsoleTail(svc.instances_dir / server_id) as tail:
            for kind in kinds:
                try:
                    with backend(kind, svc, s.workdir(f"vol-{kind}")) as found:
                        if isinstance(found, str):
                            rows.append({"scenario": f"volume_{kind}", "skipped": found})
                            continue
                        measured = Rounds(svc, server_id, found, lv, dom, tail, mib, done)
                        for i in range(rounds):
                            measured.one(i, keep=quick or i > 0)
                        done += rounds
                        rows += measured.rows()
                except Exception as exc:
                    if not rows:
                        raise
                    # Keep what the other kinds measured; the guest's state is
                    # unknown now, so the kinds after this one are not tried.
                    log.exception("volume_io: %s failed", kind)
                    rows.append({"scenario": f"volume_{kind}",
                                 "error": f"{type(exc).__name__}: {exc}"})
                    break
        return rows
    finally:
        lv.remove(dom)
        shutil.rmtree(wd, ignore_errors=True)
        if server_id is not None:
            svc.destroy(server_id)


@contextlib.contextmanager
def backend(kind: str, svc: VmopsService, wd: Path) -> Iterator[Backend | str]:
    """The volume of ``kind`` and its target, removed afterwards; a reason
    (str) instead when this host cannot serve that kind."""
    if kind == "local":
        with local_backend(svc, wd) as made:
            yield made
        return
    tool = "qemu-nbd" if kind == "nbd" else "tgtd"
    if shutil.which(tool) is None:
        yield f"no {tool} on this host (scripts/setup installs it)"
        return
    from tests.targets import iscsi_target, nbd_export

    if kind == "nbd":
        with nbd_export(wd, size_mib=VOLUME_GB * 1024, export="bench") as export, \
                remote_backend(svc, kind, export.url, parse_nbd(export.url)) as made:
            yield made
    else:
        with iscsi_target(wd, size_mib=VOLUME_GB * 1024, chap_user="") as target:
            url = target.url(1)
            with remote_backend(svc, kind, url, parse_iscsi(url)) as made:
                yield made


@contextlib.contextmanager
def local_backend(svc: VmopsService, wd: Path) -> Iterator[Backend]:
    """A blank qcow2 volume of vmops'; the baseline's own blank qcow2."""
    volume_id = create_volume(svc, "bench-local")
    try:
        lv_volume = wd / "volume.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(lv_volume),
                        str(VOLUME_GB * 2**30)], check=True)
        path = svc.client.get(f"{VOLUMES}/{volume_id}")["volume"]["vmops:path"]
        yield Backend("local", volume_id, str(path), "qcow2",
                      disk_xml(volume_disk(lv_volume, "qcow2", DEVICE)))
    finally:
        delete_volume(svc, volume_id)


@contextlib.contextmanager
def remote_backend(svc: VmopsService, kind: str, url: str,
                   source: NetworkSource) -> Iterator[Backend]:
    """The target registered as a vmops volume (raw: the target's bytes);
    the host and the baseline open the same target."""
    volume = svc.client.post(VOLUMES, {"volume": {"name": f"bench-{kind}",
                                                  "vmops:remote": {"url": url}}})["volume"]
    volume_id = str(volume["id"])
    try:
        wait_volume(svc, volume_id, "available", 120.0, interval=0.1)
        yield Backend(kind, volume_id, url, "raw", disk_xml(DiskSpec(
            path=Path(), format="raw", target=DEVICE, bus=DiskBus.VIRTIO,
            device=DiskDevice.DISK, network=source)))
    finally:
        delete_volume(svc, volume_id)


def wait_ready(console: Any, what: str) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while READY_MARK not in console():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: no {READY_MARK.decode()} after {BOOT_TIMEOUT_S:g}s")
        time.sleep(0.2)


def create_volume(svc: VmopsService, name: str) -> str:
    volume = svc.client.post(VOLUMES, {"volume": {"name": name, "size": VOLUME_GB}})["volume"]
    wait_volume(svc, volume["id"], "available", 120.0, interval=0.1)
    return str(volume["id"])


def wait_volume(svc: VmopsService, volume_id: str, status: str, timeout: float,
                interval: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        volume: dict[str, Any] = svc.client.get(f"{VOLUMES}/{volume_id}")["volume"]
        if volume["status"] == status:
            return volume
        if volume["status"] in ("error", "in-use") and volume.get("vmops:fault"):
            raise RuntimeError(f"volume {volume_id}: {volume['vmops:fault']}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"volume {volume_id} still {volume['status']} after {timeout:g}s")
        time.sleep(interval)


def delete_volume(svc: VmopsService, volume_id: str) -> None:
    with contextlib.suppress(Exception):
        wait_volume(svc, volume_id, "available", 60.0, interval=0.2)
    try:
        svc.client.delete(f"{VOLUMES}/{volume_id}")
    except Exception as exc:  # noqa: BLE001 - the service's clean-up removes it anyway
        log.warning("could not delete volume %s: %s", volume_id, exc)


class Rounds:
    """The rounds of one run and their samples."""

    def __init__(self, svc: VmopsService, server_id: str, backend: Backend,
                 lv: LibvirtBaseline, dom: Any, tail: ConsoleTail, mib: int,
                 first: int) -> None:
        self.svc, self.server_id, self.volume_id = svc, server_id, backend.volume_id
        self.backend = backend
        self.lv, self.dom, self.lv_disk_xml = lv, dom, backend.lv_disk_xml
        self.tail, self.mib, self.first = tail, mib, first
        self.ms: dict[str, list[float]] = {k: [] for k in (
            "vmops_attach", "lv_attach", "vmops_detach", "lv_detach", "guest_write",
            "guest_read", "host_write", "host_read")}
        self.guest_runs: list[DdRun] = []

    def one(self, i: int, keep: bool) -> None:
        attach = [self.vmops_attach, self.lv_attach]
        detach = [self.vmops_detach, self.lv_detach]
        if i % 2:
            attach.reverse()
            detach.reverse()
        took: dict[str, float] = {}
        for op in attach:
            took.update(op())
        runs = self.guest_dd(self.first + i + 1)
        for op in detach:
            took.update(op())
        for write in (True, False):
            took["host_write" if write else "host_read"] = qemu_img_bench(
                self.backend.host_target, self.backend.host_format, self.mib, write) * 1000
        for r in runs:
            took[f"guest_{r.op}"] = r.seconds * 1000
        log.info("   %s round %d%s: %s", self.backend.kind, i, "" if keep else " (warm-up)",
                 ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(took.items())))
        if keep:
            self.guest_runs += runs
            for key, value in took.items():
                self.ms[key].append(value)

    def vmops_attach(self) -> dict[str, float]:
        t0 = now()
        self.svc.client.post(f"/servers/{self.server_id}/os-volume_attachments",
                             {"volumeAttachment": {"volumeId": self.volume_id}})
        return {"vmops_attach": ms_since(t0)}

    def vmops_detach(self) -> dict[str, float]:
        t0 = now()
        self.svc.client.delete(f"/servers/{self.server_id}/os-volume_attachments/"
                               f"{self.volume_id}")
        wait_volume(self.svc, self.volume_id, "available", DETACH_TIMEOUT_S, interval=0.01)
        return {"vmops_detach": ms_since(t0)}

    def lv_attach(self) -> dict[str, float]:
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
        t0 = now()
        self.dom.attachDeviceFlags(self.lv_disk_xml, flags)
        return {"lv_attach": ms_since(t0)}

    def lv_detach(self) -> dict[str, float]:
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
        removed = threading.Event()

        def on_removed(_conn: Any, _dom: Any, _alias: str, _opaque: Any) -> None:
            removed.set()

        conn = self.lv.conn
        callback = conn.domainEventRegisterAny(
            self.dom, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, on_removed, None)
        try:
            t0 = now()
            self.dom.detachDeviceFlags(self.lv_disk_xml, flags)
            if not removed.wait(DETACH_TIMEOUT_S):
                raise TimeoutError(f"the libvirt guest did not release {DEVICE}")
            return {"lv_detach": ms_since(t0)}
        finally:
            conn.domainEventDeregisterAny(callback)

    def guest_dd(self, n: int) -> list[DdRun]:
        try:
            found = self.tail.wait_for(DD, 2 * n, DD_TIMEOUT_S, f"the guest's dd of round {n}")
        except TimeoutError as exc:
            seen = [ln.text for ln in self.tail.lines
                    if ln.text.startswith((b"VMOPS-BENCH", b"VMOPS-DISK"))]
            raise TimeoutError(f"{exc}; the guest's disk and bench lines: {seen}") from None
        runs = [r for r in dd_runs(found) if r.round == n]
        failed = [r for r in runs if r.status != 0]
        if failed or len(runs) != 2:
            raise RuntimeError(f"the guest's dd of round {n} failed: {runs}")
        return runs

    def rows(self) -> list[Row]:
        ms = self.ms
        kind = self.backend.kind
        nbytes = self.mib * 2**20
        out = []
        for op in ("write", "read"):
            out.append(make_row(
                f"volume_{kind}_seq_{op}_{self.mib}MiB_guest_vs_host", ms[f"guest_{op}"],
                ms[f"host_{op}"], None, transfer_bytes=nbytes,
                **throughput(nbytes, ms[f"guest_{op}"], ms[f"host_{op}"])))
        out.append(make_row(f"volume_{kind}_attach_vs_libvirt", ms["vmops_attach"],
                            ms["lv_attach"], None))
        out.append(make_row(f"volume_{kind}_detach_vs_libvirt", ms["vmops_detach"],
                            ms["lv_detach"], None))
        return out


def throughput(nbytes: int, guest_ms: list[float], host_ms: list[float]) -> dict[str, Any]:
    """Median rates (MiB/s) of the guest and the host, and guest / host."""
    def rate(samples: list[float]) -> float | None:
        rates = [nbytes / 2**20 / (x / 1000) for x in samples if x > 0]
        return median(rates) if rates else None

    g, h = rate(guest_ms), rate(host_ms)
    return {"guest_mib_per_s": None if g is None else round(g, 1),
            "host_mib_per_s": None if h is None else round(h, 1),
            "guest_host_rate_ratio": round(g / h, 3) if g and h else None}


if __name__ == "__main__":
    from bench.runner import main

    sys.exit(main(["--only", "volume_io", *sys.argv[1:]]))
