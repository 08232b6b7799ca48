"""host_facts.cpu_times: /proc/stat's CPU ticks as nanoseconds, as
libvirt's virNodeGetCPUStats gives Nova's get_host_cpu_stats."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmops.compute import host_facts


def test_ticks_become_nanoseconds_and_nice_counts_as_user(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 20 30 400 5 0 0 0 0 0\ncpu0 50 10 15 200 2 0 0 0 0 0\n")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 2399.998\n")
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    assert host_facts.cpu_times(stat, cpuinfo) == {
        "kernel": 30 * tick, "idle": 400 * tick, "user": 120 * tick, "iowait": 5 * tick,
        "frequency": 2399}


def test_an_unexpected_stat_file_is_named(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("intr 1 2 3\n")
    with pytest.raises(ValueError, match="unexpected first line 'intr 1 2 3'"):
        host_facts.cpu_times(stat, tmp_path / "stat")


def test_this_host() -> None:
    times = host_facts.cpu_times()
    assert set(times) == {"kernel", "idle", "user", "iowait", "frequency"}
    assert times["idle"] > 0
