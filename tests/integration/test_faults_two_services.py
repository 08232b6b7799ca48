"""Fault injection: two services on one state directory (issue #15).

``vmops serve`` holds ``<state dir>/vmops.lock`` (an exclusive ``flock``)
from before it opens the store or libvirt until the process ends. These
tests start real ``vmops serve`` processes on ``libvirt_uri = "fake:///"``
and check that a second one, started next to a running one, at the same
moment as another, or while the first is stopping, is refused with an error
naming the state directory and the holder's pid, and that the first goes on
untouched: it keeps its socket, its lock, its records and answers.
``VMOPS_PAUSE_AT=serve:after-shutdown`` (vmops/compute/crash_points.py)
holds a stopping service at its last step before the lock is let go.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration import test_faults_service_killed as killed
from tests.integration.test_faults_service_killed import START_TIMEOUT_S, Harness
from vmops.compute import crash_points
from vmops.errors import ServiceUnavailable
from vmops.service import LOCK_FILE

pytestmark = [pytest.mark.integration, pytest.mark.faults]

harness = killed.harness  # a fake:/// state directory with an image, stopped and removed after


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VMOPS_") or k == "VMOPS_ACCEL"}
    return {**env, **extra}


def _start(state: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vmops", "--state-dir", str(state), "serve"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=_env(**env))


def _refused(proc: subprocess.Popen[str], state: Path, holder: int) -> None:
    out, _ = proc.communicate(timeout=START_TIMEOUT_S)
    assert proc.returncode == 1, out
    assert f"another vmops service (pid {holder}) is already serving state directory {state}" \
        in out, out


def _answers(h: Harness) -> bool:
    try:
        h.client.get("/flavors")
        return True
    except ServiceUnavailable:
        return False


def _lock_pid(state: Path) -> int:
    return int((state / LOCK_FILE).read_text())


def _keeps_working(h: Harness, instance_id: str) -> None:
    """The first service still answers on its socket, still has ``instance_id``
    and can still spawn and destroy."""
    assert h.proc is not None
    assert h.proc.poll() is None
    assert _lock_pid(h.state) == h.proc.pid
    assert h.server(instance_id)["status"] == "ACTIVE"
    second = h.spawn("web2")
    h.wait_for(second, "ACTIVE")
    h.client.delete(f"/servers/{second}")


def test_a_second_service_is_refused_and_the_first_keeps_working(harness: Harness) -> None:
    h = harness
    h.serve()
    assert h.proc is not None
    instance_id = h.spawn()
    h.wait_for(instance_id, "ACTIVE")
    # The spawn's timings line comes just after the record says ACTIVE: wait
    # for it, so what the log holds now is all the first service has to say.
    deadline = time.monotonic() + START_TIMEOUT_S
    while b"timings: spawn of " not in (log_before := (h.state / "vmops.log").read_bytes()):
        assert time.monotonic() < deadline, "the spawn's timings were never logged"
        time.sleep(0.05)
    _refused(_start(h.state), h.state, h.proc.pid)
    # Refused before it wrote anything: not even a line in the service's log.
    assert (h.state / "vmops.log").read_bytes() == log_before
    assert (h.state / "vmops.sock").exists()
    _keeps_working(h, instance_id)
    h.client.delete(f"/servers/{instance_id}")


def test_two_services_started_at_once(harness: Harness) -> None:
    h = harness
    procs = [_start(h.state), _start(h.state)]
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(h):
        assert time.monotonic() < deadline, "no service answered"
        assert any(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    winner = _lock_pid(h.state)
    assert winner in (procs[0].pid, procs[1].pid)
    running, loser = procs if procs[0].pid == winner else procs[::-1]
    _refused(loser, h.state, winner)
    h.proc = running  # the harness stops it at the end
    instance_id = h.spawn()
    h.wait_for(instance_id, "ACTIVE")
    _keeps_working(h, instance_id)
    h.client.delete(f"/servers/{instance_id}")


def _stopped_at(proc: subprocess.Popen[str]) -> None:
    """Wait until ``proc`` stopped itself (``T`` in /proc/PID/stat)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the service did not pause"
        time.sleep(0.05)


def test_a_service_started_while_another_is_stopping(harness: Harness) -> None:
    h = harness
    first = _start(h.state, **{crash_points.PAUSE_ENV: "serve:after-shutdown"})
    h.proc = first
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(h):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    instance_id = h.spawn()
    h.wait_for(instance_id, "ACTIVE")
    first.send_signal(signal.SIGTERM)
    _stopped_at(first)  # its socket, store and libvirt are closed; it holds the lock
    assert not (h.state / "vmops.sock").exists()
    _refused(_start(h.state), h.state, first.pid)
    # The CLI finds no socket and starts a service itself: refused the same way.
    cli = subprocess.run([sys.executable, "-m", "vmops", "--state-dir", str(h.state), "list"],
                         capture_output=True, text=True, env=_env(), timeout=START_TIMEOUT_S)
    assert cli.returncode == 1
    assert f"another vmops service (pid {first.pid}) is already serving" in cli.stderr, cli
    assert _lock_pid(h.state) == first.pid
    first.send_signal(signal.SIGCONT)
    out, _ = first.communicate(timeout=START_TIMEOUT_S)
    assert first.returncode == 0, out
    # Once it is gone, the next one starts and has the records.
    h.serve()
    server = h.server(instance_id)
    assert server["OS-EXT-STS:task_state"] is None
    # ERROR: the fake hypervisor's domains lived in the first service's memory.
    assert server["status"] in ("ACTIVE", "ERROR"), server
    h.client.delete(f"/servers/{instance_id}")
