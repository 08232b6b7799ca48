"""A console capture process killed under a running guest is restarted by
the service (not only at its next start), and the log marks where; what
the guest wrote meanwhile waited in its serial port's pipe, and is there."""

from __future__ import annotations

import re
import time

import pytest

from tests.functional.conftest import Vmops
from tests.functional.test_recovery import _capture_pids, _kill

pytestmark = pytest.mark.extended

MARKER = r"\[vmops: the console capture was restarted at [0-9T:-]+Z"


def test_killed_capture_comes_back_marks_where_and_loses_nothing(vmops: Vmops) -> None:
    vmops.run("spawn", "cw1", "--image", "tiny", "--flavor", "m1.tiny")
    vmops.wait_console("cw1", r"VMOPS-HEARTBEAT 2\b")
    instance_id = vmops.server("cw1")["id"]
    old = _capture_pids(vmops, instance_id)
    assert len(old) == 1, old
    _kill(old)

    deadline = time.monotonic() + 60
    while not (new := _capture_pids(vmops, instance_id)):
        if time.monotonic() > deadline:  # a bound on the wait, not a speed check
            pytest.fail("the console capture was not restarted")
        time.sleep(0.2)
    assert new != old and len(new) == 1
    # The marker, then output captured again: two more heartbeats after it.
    vmops.wait_console("cw1", rf"(?s){MARKER}.*VMOPS-HEARTBEAT \d+.*VMOPS-HEARTBEAT \d+")
    log = vmops.console("cw1")
    assert len(re.findall(MARKER.encode(), log)) == 1
    before, after = re.split(MARKER.encode(), log)
    beats_before = [int(n) for n in re.findall(rb"VMOPS-HEARTBEAT (\d+)", before)]
    beats_after = [int(n) for n in re.findall(rb"VMOPS-HEARTBEAT (\d+)", after)]
    # None missing, none twice: the heartbeats the guest wrote while no
    # capture ran waited in the pipe (on a socket, QEMU dropped them).
    assert beats_after[0] == beats_before[-1] + 1
    assert beats_after == list(range(beats_after[0], beats_after[0] + len(beats_after)))
    assert vmops.server("cw1")["status"] == "ACTIVE"
