"""A short soak (issue #15): 50 spawn/stop/start/destroy cycles through a
real ``vmops serve`` on the fake hypervisor and its HTTP API, with its
console capture processes. From the sample after warm-up to the last, the
service's open file descriptors and threads and the state directory's files
must not grow, nor any QEMU or capture process stay; a bound on resources,
never on time. ``scripts/soak`` is the long version (500 cycles, then 50
with real guests) and also bounds RSS (tools/soak/measure.py)."""

from __future__ import annotations

import pytest

from tools.soak import measure
from tools.soak.run import FAKE_SETTINGS, fake_cycle, run_cycles, soak_dir

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CYCLES = 50
WARMUP = 5


def test_fifty_cycles_leave_no_descriptor_thread_or_file_behind() -> None:
    lines: list[str] = []
    with soak_dir(FAKE_SETTINGS) as soak:
        grew = run_cycles(soak, fake_cycle, CYCLES, WARMUP, report=lines.append)
        samples = dict(soak.samples)
    print("\n".join(lines))
    start, warm, end = samples["start"], samples["after warm-up"], samples["end"]
    assert end.processes == 0
    # Each bound the long soak holds, but RSS: 50 cycles are too few to tell
    # a leak from the allocator's moods.
    assert [g for g in grew if not g.startswith("rss_kib")] == [], (start, warm, end)
    assert end.fds - warm.fds <= measure.MAX_FD_GROWTH
    assert end.threads - warm.threads <= measure.MAX_THREAD_GROWTH
    assert end.files - warm.files <= measure.MAX_FILE_GROWTH
