"""Spawn to running, image cached: vmops against libvirt-python and bare QEMU.

    python -m bench --only spawn_running [--quick]     (or: python -m bench.spawn_running)

- vmops: ``POST /servers?vmops:wait=180`` (m1.tiny, with a config drive),
  whose answer comes once the spawn has ended, ACTIVE (until 2026-12-02 the
  record was polled by name every 5 ms instead). This includes what
  vmops does and the baselines do not: the record, the root overlay, the
  config drive ISO, the console capture process and its connection.
- libvirt: the same domain XML (vmops' saved definition with name, UUID,
  disk files and serial socket rewritten) ``defineXML`` + ``create`` on the
  bench's own embed root, on fresh copies of the same disks made beforehand.
- qemu: ``qemu-system-x86_64`` with the same devices and disks, until QMP
  ``query-status`` says running.

vmops' time is split into phases by vmops' own step timings
(``vmops:timings`` of the spawn, read after each sample: ``bench/timings.py``)
plus ``outside vmops`` (the request and its answer beyond vmops' total).
Where a sample has none (an older service), the phases are inferred from
the files each phase leaves (inotify, ``bench/fswatch.py``) as before; the
row's ``phases_source`` says which.

Target (issue #17): vmops <= 1.15x libvirt. Against bare QEMU: for
information (it has no libvirt start, record or config drive).
"""

from __future__ import annotations

import logging
import shutil
import sys
from typing import Any

from bench import session, timings
from bench.common import Row, Target, alternate, make_row, median, ms_since, now
from bench.fswatch import IN_CLOSE_WRITE, IN_CREATE, IN_MOVED_TO, FsWatch
from bench.virt import launch_qemu, make_disks, new_uuid, rewrite_domain_xml
from bench.vmopsd import VmopsService

log = logging.getLogger("bench")

TARGET = Target(1.15)

PHASES = ("api+records", "disks", "config drive", "define", "capture start", "qemu launch",
          "libvirt start+resume", "record active")


def vmops_phases(watch: FsWatch, svc: VmopsService, server_id: str, name: str,
                 t0: float, t_end: float) -> dict[str, float] | None:
    """Milliseconds of each phase of one spawn, from the file events:

    api+records    request sent -> instance directory made (API, checks, record)
    disks          -> root disk last written (qemu-img overlay; ephemeral if any)
    config drive   -> config.iso renamed into place (metadata tree, ISO, fsync)
    define         -> libvirt's saved domain XML renamed into place (record
                      update, foreign-domain checks, defineXML)
    capture start  -> capture.pid written (record update, the capture
                      process's interpreter start-up, its lock)
    qemu launch    -> QEMU's serial socket made (libvirt forks QEMU, QEMU inits)
    libvirt start+resume -> libvirt's last write of the domain's status XML:
                      the rest of libvirt's start (QMP set-up; the capture
                      connects meanwhile), then the resume of the vCPUs
    record active  -> the record says ACTIVE (record update, and up to 5 ms
                      of polling)
    """
    inst = svc.instances_dir / server_id
    placed = IN_MOVED_TO | IN_CLOSE_WRITE
    t_dir = watch.first(inst, IN_CREATE, t0)
    t_xml = watch.first(svc.domain_xml_file(name), placed, t0)
    t_cfg = watch.first(inst / "config.iso", placed, t0)
    disks_end = t_cfg if t_cfg is not None else t_xml
    t_disks = None
    if disks_end is not None:
        t_disks = max((t for t in (watch.last(inst / f, IN_CLOSE_WRITE, disks_end)
                                   for f in ("root.qcow2", "ephemeral.qcow2"))
                       if t is not None), default=None)
        if t_cfg is not None:
            t_disks = min(t_disks, t_cfg) if t_disks is not None else None
    if t_cfg is None:  # no config drive: the phase is empty
        t_cfg = t_disks
    t_cap = watch.first(inst / "capture.pid", placed, t0)
    t_sock = watch.first(svc.run_dir / f"{server_id}.sock", IN_CREATE, t0)
    t_resumed = watch.last(svc.domain_status_file(name), IN_MOVED_TO | IN_CLOSE_WRITE, t_end)
    marks = [t0, t_dir, t_disks, t_cfg, t_xml, t_cap, t_sock, t_resumed, t_end]
    if any(m is None for m in marks):
        log.warning("spawn phases of %s: some file events were not seen", name)
        return None
    times: list[float] = [m for m in marks if m is not None]
    return {phase: max(0.0, (b - a) * 1000.0)
            for phase, a, b in zip(PHASES, times[:-1], times[1:], strict=True)}


def run(quick: bool) -> list[Row]:
    s = session.get()
    svc = s.vmops
    lv = s.baseline
    tpl = s.template(config_drive=True)
    reps = 2 if quick else 7

    watch = FsWatch()
    for d in (svc.instances_dir, svc.run_dir, svc.domain_xml_file("x").parent,
              svc.domain_status_file("x").parent):
        watch.watch(d, auto=d == svc.instances_dir)
    vmops_ms: list[float] = []
    phases: list[dict[str, float]] = []
    own_phases: list[dict[str, float]] = []  # from vmops:timings
    lv_define: list[float] = []
    lv_start: list[float] = []
    lv_total: list[float] = []
    qemu_ms: list[float] = []

    def vmops_side(i: int) -> None:
        name = f"sr-{i}"
        watch.clear()
        t0 = now()
        server_id = name  # until the answer names its id
        try:
            # The service answers once the spawn has ended (vmops:wait): no
            # polling, which cost the service CPU and the sample up to 5 ms.
            server_id = svc.spawn_waited(name, config_drive=True)
            t_end = now()
            vmops_ms.append((t_end - t0) * 1000.0)
            p = vmops_phases(watch, svc, server_id, name, t0, t_end)
            if p is not None:
                phases.append(p)
            done = timings.steps_of(svc.client.get(f"/servers/{server_id}")["server"], "spawn")
            if done is not None:
                own_phases.append(timings.phases(done, vmops_ms[-1]))
        finally:
            svc.destroy(server_id)

    def libvirt_side(i: int) -> None:
        wd = s.workdir(f"sr-lv-{i}")
        disks = make_disks(tpl.disks, wd)
        xml = rewrite_domain_xml(tpl.domain_xml, f"sr-lv-{i}", new_uuid(), disks,
                                 lv.run_dir / f"sr{i}.sock")
        t0 = now()
        dom = lv.define(xml)
        t1 = now()
        try:
            dom.create()
            t2 = now()
            lv_define.append((t1 - t0) * 1000.0)
            lv_start.append((t2 - t1) * 1000.0)
            lv_total.append((t2 - t0) * 1000.0)
        finally:
            lv.remove(dom)
            shutil.rmtree(wd, ignore_errors=True)

    def qemu_side(i: int) -> None:
        wd = s.workdir(f"sr-q-{i}")
        disks = make_disks(tpl.disks, wd)
        t0 = now()
        guest = launch_qemu(tpl.domain_xml, disks, wd, serial_to_file=False)
        try:
            guest.wait_running()
            qemu_ms.append(ms_since(t0))
        finally:
            guest.stop()
            shutil.rmtree(wd, ignore_errors=True)

    try:
        alternate(reps, vmops_side, libvirt_side, qemu_side)
    finally:
        watch.close()

    file_phases = {p: round(median([x[p] for x in phases]) or 0.0, 2) for p in PHASES} \
        if phases else {}
    own = timings.median_phases(own_phases)
    extra: dict[str, Any] = {
        "phases_ms": own or file_phases,
        "phases_source": "vmops:timings" if own else "file events",
        "phase_samples": len(own_phases) if own else len(phases),
        "file_event_phases_ms": file_phases,
        "timings_verb": "spawn",
        "timings_steps_ms": own,
        "timings_samples": len(own_phases),
        "libvirt_define_ms": round(median(lv_define) or 0.0, 2),
        "libvirt_start_ms": round(median(lv_start) or 0.0, 2),
        "qemu_median_ms": round(median(qemu_ms) or 0.0, 2),
        "service_start_s": round(s.service_start_s or 0.0, 2),
    }
    return [
        make_row("spawn_running_vs_libvirt", vmops_ms, lv_total, TARGET, **extra),
        make_row("spawn_running_vs_qemu", vmops_ms, qemu_ms, None),
    ]


if __name__ == "__main__":
    from bench.runner import main

    sys.exit(main(["--only", "spawn_running", *sys.argv[1:]]))
