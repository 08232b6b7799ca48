"""The snapshot and volume scenarios' logic, without VMs or timing: the
console tail, the guest's tick and dd lines, the stall and rate arithmetic,
the guest scripts and ``qemu-img bench``'s output."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench import report
from bench.guestlog import DD, TICK, ConsoleTail, Tick, dd_runs, stall_during, ticks
from bench.runner import parse_args
from bench.snapshot import guest_script as snapshot_script
from bench.snapshot import stall_summary
from bench.volume_io import guest_script as volume_script
from bench.volume_io import parse_qemu_img_bench, qemu_img_bench, throughput


def test_tail_stamps_complete_lines_and_keeps_the_partial_one(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"VMOPS-BENCH-TICK 1 5.00\r\nVMOPS-BENCH-TI")
    tail = ConsoleTail(tmp_path)
    tail.poll()
    assert [ln.text for ln in tail.lines] == [b"VMOPS-BENCH-TICK 1 5.00"]
    with log.open("ab") as f:
        f.write(b"CK 2 5.10\nnoise\n")
    tail.poll()
    found = tail.matching(TICK)
    assert [m.group(1) for _, m in found] == [b"1", b"2"]
    assert found[0][0] <= found[1][0]


def test_tail_follows_the_rotation(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"a\n")
    tail = ConsoleTail(tmp_path)
    tail.poll()
    with log.open("ab") as f:
        f.write(b"b\n")  # written before the rotation, not yet read
    os.rename(log, tmp_path / "console.log.0")
    log.write_bytes(b"c\n")
    tail.poll()
    assert [ln.text for ln in tail.lines] == [b"a", b"b", b"c"]


def test_tail_without_a_log_yet(tmp_path: Path) -> None:
    tail = ConsoleTail(tmp_path)
    tail.poll()
    assert tail.lines == [] and tail.last_line() == b""
    with pytest.raises(TimeoutError, match="ticks"):
        tail.wait_for(TICK, 1, 0.0, "ticks")


def beats(host: list[float], guest: list[float]) -> list[Tick]:
    return [Tick(i + 1, h, g) for i, (h, g) in enumerate(zip(host, guest, strict=True))]


def test_stall_is_the_longest_gap_over_the_window_minus_the_usual() -> None:
    host = [0.0, 0.1, 0.2, 0.3, 1.5, 1.6, 1.7]  # 1.2 s between ticks 4 and 5
    guest = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]  # the guest's clock stood still
    stall = stall_during(beats(host, guest), start=0.35, end=1.4)
    assert stall.gap_ms == 1200.0 and stall.usual_ms == 100.0
    assert stall.stall_ms == 1100.0 and stall.guest_gap_ms == 100.0


def test_no_stall_when_the_ticks_keep_their_pace() -> None:
    host = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    stall = stall_during(beats(host, host), start=0.25, end=0.35)
    assert stall.stall_ms == 0.0 and stall.guest_gap_ms == stall.gap_ms


def test_stall_needs_ticks_on_both_sides_of_the_window() -> None:
    host = [0.0, 0.1, 0.2]
    with pytest.raises(ValueError, match="before"):
        stall_during(beats(host, host), start=0.0, end=0.05)
    with pytest.raises(ValueError, match="after"):
        stall_during(beats(host, host), start=0.15, end=0.3)


def test_ticks_and_dd_lines_are_read_from_the_console() -> None:
    tick = TICK.match(b"VMOPS-BENCH-TICK 12 34.56")
    assert tick is not None
    assert ticks([(7.0, tick)]) == [Tick(12, 7.0, 34.56)]
    assert TICK.match(b"VMOPS-BENCH-TICK 12") is None
    line = DD.match(b"VMOPS-BENCH-DD write 3 67108864 20.50 22.50 0")
    assert line is not None
    (run,) = dd_runs([(1.0, line)])
    assert (run.op, run.round, run.nbytes, run.seconds, run.status) == \
        ("write", 3, 67108864, 2.0, 0)
    assert run.mib_per_s == 32.0
    assert DD.match(b"VMOPS-BENCH-DD erase 3 1 0 1 0") is None


def test_guest_scripts_are_valid_shell_and_say_what_they_do(tmp_path: Path) -> None:
    for name, script in (("snap", snapshot_script(16)), ("vol", volume_script(64))):
        path = tmp_path / name
        path.write_text(script)
        assert script.startswith("#!/bin/sh\n")
        subprocess.run(["sh", "-n", str(path)], check=True)
    snap = snapshot_script(16)
    assert "128 MiB" in snap and "seek=$((256 + i * 8))" in snap and "sync" in snap
    vol = volume_script(64)
    assert "of=/dev/vdb bs=1M count=64 oflag=direct" in vol
    assert "if=/dev/vdb of=/dev/null bs=1M count=64 iflag=direct" in vol
    assert "VMOPS-BENCH-DD write $n 67108864" in vol


def test_qemu_img_bench_output() -> None:
    out = ("Sending 64 write requests, 1048576 bytes each, 1 in parallel (starting at "
           "offset 0, step size 1048576)\nRun completed in 0.047 seconds.\n")
    assert parse_qemu_img_bench(out) == 0.047
    with pytest.raises(ValueError, match="Run completed"):
        parse_qemu_img_bench("qemu-img: Could not open 'x'")


def test_qemu_img_bench_runs_on_a_qcow2(tmp_path: Path) -> None:
    image = tmp_path / "v.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    assert qemu_img_bench(str(image), "qcow2", 2, write=True) >= 0.0
    assert qemu_img_bench(str(image), "qcow2", 2, write=False) >= 0.0
    info = subprocess.run(["qemu-img", "check", "-f", "qcow2", str(image)],
                          capture_output=True, text=True)
    assert info.returncode == 0, info.stdout + info.stderr


def test_throughput_medians_and_ratio() -> None:
    rates = throughput(64 * 2**20, [2000.0, 4000.0, 1000.0], [100.0, 50.0])
    assert rates == {"guest_mib_per_s": 32.0, "host_mib_per_s": 960.0,
                     "guest_host_rate_ratio": 0.033}
    assert throughput(1, [], [1.0])["guest_host_rate_ratio"] is None
    row = {"scenario": "volume_nbd_seq_write_64MiB_guest_vs_host", "vmops_median_ms": 2000.0,
           "baseline_median_ms": 66.7, "ratio": 30.0, "target": "", "passed": None,
           "transfer_bytes": 64 * 2**20, **rates}
    text = report.markdown({"machine": report.machine_info(), "quick": False,
                            "duration_s": 1.0, "rows": [row]}, [])
    assert "guest 32.0 MiB/s, host 960.0 MiB/s: guest / host 0.033" in text


def test_stall_summary_and_its_report_note() -> None:
    host = [0.0, 0.1, 0.2, 0.3, 1.5, 1.6, 1.7]
    paused = stall_during(beats(host, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), 0.35, 1.4)
    steady = stall_during(beats(host[:4], host[:4]), 0.15, 0.25)
    summary = stall_summary([paused], [steady])
    assert summary["vmops_stall_ms"] == 1100.0 and summary["baseline_stall_ms"] == 0.0
    assert summary["vmops_guest_clock_gap_ms"] == 100.0
    row = {"scenario": "snapshot_running_vs_qemu_img_convert", "vmops_median_ms": 900.0,
           "baseline_median_ms": 300.0, "ratio": 3.0, "target": "", "passed": None,
           "dirty_mib": 128, "root_disk_bytes": 2**27, **summary}
    text = report.markdown({"machine": report.machine_info(), "quick": False,
                            "duration_s": 1.0, "rows": [row]}, [])
    assert "stood still 1100.0 ms during vmops' snapshot" in text
    assert "0.0 ms during the bare convert" in text


def test_the_runner_knows_both_scenarios() -> None:
    assert parse_args(["--only", "snapshot,volume_io"]).names == ["snapshot", "volume_io"]


def test_a_remote_kind_without_its_target_tool_is_skipped_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import bench.volume_io as volume_io

    monkeypatch.setattr(shutil, "which", lambda _tool: None)
    for kind, tool in (("nbd", "qemu-nbd"), ("iscsi", "tgtd")):
        with volume_io.backend(kind, None, tmp_path) as found:  # type: ignore[arg-type]
            assert found == f"no {tool} on this host (scripts/setup installs it)"
