"""console_flood's and service_flat's arithmetic, without VMs."""

from __future__ import annotations

import os
from pathlib import Path

from bench.console_flood import bytes_per_line, cpu_seconds, last_line_number
from bench.host_memory import Memory
from bench.service_flat import _rows


def _stat_line(pid: int, comm: str, utime: int, stime: int) -> str:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime ...
    return f"{pid} ({comm}) S 1 1 1 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20 0 1 0\n"


def test_cpu_seconds_adds_user_and_system_time_whatever_the_command_name(
        tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "stat").write_text(_stat_line(42, "py thon) x", 150, 50))
    assert cpu_seconds(42, proc=tmp_path) == 200 / os.sysconf("SC_CLK_TCK")


def test_flood_line_numbers_and_length() -> None:
    pad = "x" * 80
    text = b"boot\r\n" + b"".join(f"VMOPS-FLOOD {n} {pad}\r\n".encode()
                                  for n in range(98, 103))
    assert last_line_number(text) == 102
    assert last_line_number(b"no flood yet") is None
    # from line 98 to line 102: 98 and 99 are 97 bytes, 100 and 101 are 98
    assert bytes_per_line(text) == (97 + 97 + 98 + 98) / 4
    assert bytes_per_line(b"VMOPS-FLOOD 1 x\n") is None


def test_service_flat_rows_compare_loaded_with_idle() -> None:
    idle = {"memory": Memory(100_000, 80_000, 50_000),
            "samples": {"show": [2.0, 2.0, 3.0], "flavors": [1.0], "pause_unpause": [10.0]}}
    loaded = {"memory": Memory(120_000, 96_000, 60_240),
              "samples": {"show": [5.0, 6.0, 7.0], "flavors": [1.1], "pause_unpause": [11.0]}}
    rows = {r.get("op", "memory"): r
            for r in _rows(idle, loaded, guests=20, records=1000, count=1020)}
    assert rows["show"]["vmops_median_ms"] == 6.0 and rows["show"]["baseline_median_ms"] == 2.0
    assert rows["show"]["passed"] is False  # 3x, and 4 ms more than the 2 ms slack
    assert rows["flavors"]["passed"] is True
    assert rows["pause_unpause"]["passed"] is True  # + 1 ms
    memory = rows["memory"]
    assert memory["ratio"] == 1.2 and memory["passed"] is False
    assert memory["growth_mib"] == {"rss": 19.53, "pss": 15.62, "anon": 10.0}
    assert memory["service_anon_kib"] == [50_000, 60_240]
