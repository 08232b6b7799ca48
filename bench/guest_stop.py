"""Guest-initiated state changes: how soon the API shows SHUTOFF after the
guest powers itself off or its QEMU is killed, against libvirt's own
lifecycle event arriving in a bare libvirt-python client.

    python -m bench --only guest_stop [--quick]     (or: python -m bench.guest_stop)

Both sides run the same domain XML (vmops' saved definition of an instance
made with a user-data script, on fresh copies of its disks, config drive
included), so both guests run the same script: ``sleep 1; poweroff -f``
once booted.

- **poweroff**: the guest powers itself off (the script). QEMU reports the
  shutdown to libvirt, libvirt ends QEMU and sends the STOPPED event.
- **kill**: the bench sends QEMU SIGKILL shortly after the domain runs
  (long before the guest would power off by itself).

The common reference on both sides is a host instant just before libvirt
sends the STOPPED event: libvirt removing the domain's pid file
(``run/qemu/NAME.pid`` in its root, seen with inotify), which its
clean-up of the ended QEMU does. It takes out the guest's pace under TCG
and libvirt's own wait for QEMU's end (it checks every 200 ms whether the
process is gone: ``QEMU gone`` below, a pidfd on QEMU's process, is
reported too, for information).

- vmops: from the reference until ``GET /servers/{id}`` answers status
  SHUTOFF (polled every 2 ms from that moment: the record, set by the
  service's lifecycle-event handler).
- baseline: from the reference until the STOPPED lifecycle event reaches a
  callback registered with ``domainEventRegisterAny`` on the bench's own
  libvirt connection (an embed root of its own, running the same XML).

The baseline cannot watch vmops' own domain: an embedded libvirt root
(``qemu:///embed``) is held by one process, the service. So the baseline is
the same XML on the same kind of driver, in the bench process.

Target: vmops <= event + 50 ms. The row's ``delta_ms`` is the difference of
the medians. Full run only (each poweroff sample boots two guests).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import session
from bench.common import Row, Target, make_row, median, now, wait_until
from bench.fswatch import IN_DELETE, FsWatch
from bench.quiet_libvirt import libvirt
from bench.virt import disk_templates, make_disks, new_uuid, rewrite_domain_xml
from bench.vmopsd import VmopsService

TARGET = Target(1.0, slack_ms=50.0)
SCRIPT = b"#!/bin/sh\nsleep 1\nsync\npoweroff -f\n"
NAME = "gs-0"
LV_NAME = "gs-lv"
KILL_AFTER_S = 0.3  # after running: the guest is still in early boot then
BOOT_TIMEOUT_S = 240.0
API_POLL_S = 0.002


class ProcessGone:
    """A thread that notes the moment a process ends (pidfd, no polling)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = os.pidfd_open(pid)
        self.at: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._wait, daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        try:
            while not poller.poll(1000):
                pass
            self.at = now()
        finally:
            os.close(self.fd)
            self._done.set()

    def wait(self, timeout: float) -> float:
        if not self._done.wait(timeout):
            raise TimeoutError(f"QEMU (pid {self.pid}) still running after {timeout:g}s")
        assert self.at is not None
        return self.at


@dataclass
class StoppedEvents:
    """libvirt's STOPPED lifecycle events, stamped on arrival, by domain name."""

    seen: dict[str, list[float]] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def callback(self, _conn: Any, dom: Any, event: int, _detail: int, _opaque: Any) -> None:
        if event != libvirt.VIR_DOMAIN_EVENT_STOPPED:
            return
        t = now()
        with self.cond:
            self.seen.setdefault(dom.name(), []).append(t)
            self.cond.notify_all()

    def count(self, name: str) -> int:
        with self.cond:
            return len(self.seen.get(name, []))

    def wait_next(self, name: str, before: int, timeout: float) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.seen.get(name, [])) > before, timeout):
                raise TimeoutError(f"no STOPPED event for {name} in {timeout:g}s")
            return self.seen[name][before]


def qemu_pid(pid_file: Path, timeout: float = 30.0) -> int:
    """QEMU's pid from the pid file libvirt writes for a running domain."""
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() != "", timeout,
               0.01, f"{pid_file}")
    return int(pid_file.read_text().strip())


def wait_shutoff(svc: VmopsService, server_id: str, timeout: float = 30.0) -> float:
    """Poll the server's show until it says SHUTOFF; the time of that answer."""
    deadline = time.monotonic() + timeout
    while True:
        server = svc.client.get(f"/servers/{server_id}")["server"]
        t = now()
        if server["status"] == "SHUTOFF":
            return t
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server_id} still {server['status']} after {timeout:g}s")
        time.sleep(API_POLL_S)


@dataclass(frozen=True)
class Stopped:
    """When QEMU's process was gone and when libvirt removed its pid file."""

    gone: float
    pid_file_removed: float


def stop_once(watch: FsWatch, pid_file: Path, kill: bool) -> Stopped:
    """Kill QEMU (or let the guest power off) and wait until libvirt has
    cleaned up after it."""
    gone = ProcessGone(qemu_pid(pid_file))
    if kill:
        time.sleep(KILL_AFTER_S)
        os.kill(gone.pid, signal.SIGKILL)
    t_gone = gone.wait(BOOT_TIMEOUT_S)
    wait_until(lambda: watch.first(pid_file, IN_DELETE, t_gone) is not None, 60.0, 0.001,
               f"libvirt to remove {pid_file}")
    removed = watch.first(pid_file, IN_DELETE, t_gone)
    assert removed is not None
    return Stopped(t_gone, removed)


def run(quick: bool) -> list[Row]:
    s = session.get()
    svc = s.vmops
    lv = s.baseline
    reps = 1 if quick else 5
    server_id = svc.post_server(NAME, user_data=SCRIPT)
    wd = s.workdir("gs-lv")
    events = StoppedEvents()
    callback_id = lv.conn.domainEventRegisterAny(
        None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, events.callback, None)
    dom = None
    samples: dict[str, tuple[list[float], list[float]]] = {
        "poweroff": ([], []), "kill": ([], [])}
    # The same intervals from QEMU's process gone, for information.
    from_gone: dict[str, tuple[list[float], list[float]]] = {
        "poweroff": ([], []), "kill": ([], [])}
    watch = FsWatch()
    try:
        svc.wait_built(NAME)
        xml = svc.domain_xml(NAME)
        disks = make_disks(disk_templates(xml, wd / "bases"), wd)
        dom = lv.define(rewrite_domain_xml(xml, LV_NAME, new_uuid(), disks,
                                           lv.run_dir / "gs.sock"))
        vm_pid_file = svc.libvirt_root / "run" / "qemu" / f"vmops-{NAME}.pid"
        lv_pid_file = lv.root / "run" / "qemu" / f"{LV_NAME}.pid"
        for pid_file in (vm_pid_file, lv_pid_file):
            watch.watch(pid_file.parent)
        first = True

        def vmops_side(trigger: str) -> None:
            nonlocal first
            if not first:
                svc.action(server_id, {"os-start": None})
            first = False
            stopped = stop_once(watch, vm_pid_file, trigger == "kill")
            t_api = wait_shutoff(svc, server_id)
            samples[trigger][0].append((t_api - stopped.pid_file_removed) * 1000.0)
            from_gone[trigger][0].append((t_api - stopped.gone) * 1000.0)

        def libvirt_side(trigger: str) -> None:
            before = events.count(LV_NAME)
            dom.create()
            stopped = stop_once(watch, lv_pid_file, trigger == "kill")
            t_event = events.wait_next(LV_NAME, before, 60.0)
            samples[trigger][1].append((t_event - stopped.pid_file_removed) * 1000.0)
            from_gone[trigger][1].append((t_event - stopped.gone) * 1000.0)

        for i in range(reps):
            for trigger in ("poweroff", "kill"):
                sides = (vmops_side, libvirt_side) if i % 2 == 0 else (libvirt_side, vmops_side)
                for side in sides:
                    side(trigger)
    finally:
        watch.close()
        with contextlib.suppress(libvirt.libvirtError):
            lv.conn.domainEventDeregisterAny(callback_id)
        if dom is not None:
            lv.remove(dom)
        shutil.rmtree(wd, ignore_errors=True)
        svc.destroy(server_id)
    rows = []
    for trigger, scenario in (("poweroff", "guest_poweroff_to_shutoff_vs_event"),
                              ("kill", "qemu_killed_to_shutoff_vs_event")):
        vm, base = samples[trigger]
        vm_gone, base_gone = from_gone[trigger]
        row = make_row(scenario, vm, base, TARGET,
                       reference="libvirt removing the domain's pid file",
                       vmops_from_qemu_gone_ms=_median(vm_gone),
                       baseline_from_qemu_gone_ms=_median(base_gone))
        if row["vmops_median_ms"] is not None and row["baseline_median_ms"] is not None:
            row["delta_ms"] = round(row["vmops_median_ms"] - row["baseline_median_ms"], 2)
        rows.append(row)
    return rows


def _median(values: list[float]) -> float | None:
    found = median(values)
    return None if found is None else round(found, 2)


if __name__ == "__main__":
    from bench.runner import main

    sys.exit(main(["--only", "guest_stop", *sys.argv[1:]]))
