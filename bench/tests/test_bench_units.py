"""The bench's own logic, without VMs: ``pytest bench/tests``.

Nothing here times anything or asserts speed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.common import (
    Target,
    alternate,
    make_row,
    paired_difference,
    paired_ratio,
    ratio_interval,
)
from bench.fswatch import IN_CLOSE_WRITE, IN_CREATE, IN_MOVED_TO, FsWatch
from bench.runner import FULL_RUN_ONLY, normalize, parse_args, run_scenario
from bench.virt import qemu_command, rewrite_domain_xml

DOMAIN = """<domain type='qemu'>
  <name>vmops-web1</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <metadata><vmops:instance xmlns:vmops="https://vmops.dev/xmlns/instance/1"/></metadata>
  <memory unit='KiB'>524288</memory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='hd'/></os>
  <cpu mode='maximum'/>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='writeback' discard='unmap'/>
      <source file='/state/instances/u/root.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw' cache='writeback'/>
      <source file='/state/instances/u/config.iso'/>
      <target dev='hda' bus='ide'/>
      <readonly/>
    </disk>
    <interface type='user'><mac address='52:54:00:aa:bb:cc'/><model type='virtio'/></interface>
    <serial type='unix'><source mode='bind' path='/state/run/u.sock'/><target port='0'/></serial>
    <console type='unix'><source mode='bind' path='/state/run/u.sock'/>
      <target type='serial' port='0'/></console>
    <memballoon model='virtio'><stats period='10'/></memballoon>
  </devices>
</domain>"""


def test_target_ratio_or_slack() -> None:
    t = Target(1.2, slack_ms=10.0)
    assert t.passed(12.0, 10.0)
    assert t.passed(19.0, 9.0)  # over 1.2x, within +10 ms
    assert not t.passed(400.0, 300.0)
    assert Target(1.1).text() == "<= 1.1x"
    assert "baseline + 10 ms" in t.text()


def test_make_row_medians_ratio_verdict() -> None:
    row = make_row("x", [10.0, 30.0, 20.0], [10.0, 10.0, 12.0], Target(1.5))
    assert row["vmops_median_ms"] == 20.0 and row["baseline_median_ms"] == 10.0
    assert row["ratio"] == 2.0 and row["passed"] is False
    assert make_row("y", [1.0], [2.0], None)["passed"] is None


def test_ratio_interval_holds_the_ratio_and_narrows_with_samples() -> None:
    spread_out = [100.0, 130.0, 90.0, 120.0, 110.0]
    few = ratio_interval([x * 1.1 for x in spread_out], spread_out)
    many = ratio_interval([x * 1.1 for x in spread_out * 8], spread_out * 8)
    assert few is not None and many is not None
    assert few[0] < 1.1 < few[1] and few[0] <= many[0] <= 1.1 <= many[1] <= few[1]
    assert many[1] - many[0] < few[1] - few[0]
    assert ratio_interval([1.0, 1.0], [2.0, 2.0]) == (0.5, 0.5)
    assert ratio_interval([1.0], [1.0, 2.0]) is None
    assert ratio_interval(spread_out, spread_out) == ratio_interval(spread_out, spread_out)


def test_paired_ratio_cancels_what_a_round_adds_to_both_sides() -> None:
    """Rounds whose host speed drifts (x1 to x2) but whose sides keep a
    ratio of 1.1: the paired interval is that ratio, the medians' is wide."""
    base = [100.0 * (1 + k / 7) for k in range(8)]
    vmops = [b * 1.1 for b in base]
    paired = paired_ratio(vmops, base)
    unpaired = ratio_interval(vmops, base)
    assert paired == (1.1, (1.1, 1.1))
    assert unpaired is not None and unpaired[1] - unpaired[0] > 0.3
    assert paired_ratio([1.0], [1.0]) is None
    assert paired_ratio([1.0, 2.0], [1.0]) is None  # not paired
    assert paired_difference([b + 4.0 for b in base], base) == (4.0, (4.0, 4.0))


def test_spawn_boot_boots_a_side_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import spawn_boot

    monkeypatch.delenv("VMOPS_BENCH_BOOTS", raising=False)
    assert spawn_boot.boots() == 5
    monkeypatch.setenv("VMOPS_BENCH_BOOTS", "24")
    assert spawn_boot.boots() == 24
    for bad in ("0", "-3", "ten", "2.5"):
        monkeypatch.setenv("VMOPS_BENCH_BOOTS", bad)
        with pytest.raises(ValueError, match="VMOPS_BENCH_BOOTS"):
            spawn_boot.boots()


def test_alternate_rotates_who_goes_first() -> None:
    calls: list[str] = []
    alternate(3, lambda i: calls.append(f"a{i}"), lambda i: calls.append(f"b{i}"))
    assert calls == ["a0", "b0", "b1", "a1", "a2", "b2"]


def test_normalize_rows_of_the_older_modules() -> None:
    old = normalize({"scenario": "configdrive.build_tree", "median_ms": 0.2, "p90_ms": 0.3,
                     "target": "median < 10 ms", "pass": True}, "configdrive")
    assert old["vmops_median_ms"] == 0.2 and old["baseline_median_ms"] is None
    assert old["passed"] is True and "pass" not in old and old["p90_ms"] == 0.3
    disks = normalize({"scenario": "cow", "vmops_median_ms": 3.0, "baseline_median_ms": 2.0,
                       "ratio": 1.5, "target": "<= 1.5x", "pass": False}, "disks")
    assert disks["passed"] is False and disks["ratio"] == 1.5
    no_ratio = normalize({"scenario": "c", "vmops_median_ms": 3.0,
                          "baseline_median_ms": 1.5}, "console")
    assert no_ratio["ratio"] == 2.0 and no_ratio["passed"] is None


def test_parse_args_only() -> None:
    args = parse_args(["--quick", "--only", "lifecycle,mgmt_plane"])
    assert args.quick and args.names == ["lifecycle", "mgmt_plane"]


def test_rewrite_domain_xml_moves_every_path() -> None:
    xml = rewrite_domain_xml(DOMAIN, "base-1", "99999999-2222-3333-4444-555555555555",
                             {"vda": Path("/b/vda.qcow2"), "hda": Path("/b/hda.raw")},
                             Path("/b/s.sock"))
    assert "/state/" not in xml
    assert "<name>base-1</name>" in xml and "99999999-" in xml
    assert "/b/vda.qcow2" in xml and "/b/hda.raw" in xml and xml.count("/b/s.sock") == 2


def test_qemu_command_mirrors_the_domain() -> None:
    cmd = qemu_command(DOMAIN, {"vda": Path("/b/vda.qcow2"), "hda": Path("/b/hda.raw")},
                       Path("/b/qmp.sock"), ["-serial", "file:/b/log"])
    text = " ".join(cmd)
    assert cmd[:3] == ["qemu-system-x86_64", "-accel", "tcg"]
    assert "-machine pc-i440fx-7.2" in text and "-cpu max" in text
    assert "-m 512M" in text and "-smp 2" in text
    assert ("file=/b/vda.qcow2,format=qcow2,cache=writeback,if=virtio,discard=unmap"
            in text)
    assert "file=/b/hda.raw,format=raw,cache=writeback,media=cdrom,if=ide,index=0" in text
    assert "user,model=virtio-net-pci,mac=52:54:00:aa:bb:cc" in text
    assert "virtio-balloon-pci" in text


def test_fswatch_sees_created_and_renamed_files(tmp_path: Path) -> None:
    watch = FsWatch()
    try:
        watch.watch(tmp_path, auto=True)
        sub = tmp_path / "inst"
        sub.mkdir()
        (tmp_path / "a.tmp").write_text("x")
        os.rename(tmp_path / "a.tmp", tmp_path / "a")
        deadline = time.monotonic() + 10
        while watch.first(tmp_path / "a", IN_MOVED_TO) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        (sub / "disk").write_text("y")
        while watch.first(sub / "disk", IN_CLOSE_WRITE) is None \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        assert watch.first(sub, IN_CREATE) is not None
        assert watch.first(tmp_path / "a", IN_MOVED_TO) is not None
        assert watch.first(sub / "disk", IN_CREATE | IN_CLOSE_WRITE) is not None
    finally:
        watch.close()


def test_report_files(tmp_path: Path) -> None:
    rows = [normalize(make_row("spawn_running_vs_libvirt", [3.0], [2.0], None,
                               phases_ms={"disks": 1.0, "define": 2.0},
                               libvirt_define_ms=1.0, libvirt_start_ms=1.0,
                               qemu_median_ms=0.5), "spawn_running"),
            normalize(make_row("mgmt_list_10", [1.0], [0.5], None, op="list", instances=10),
                      "mgmt_plane"),
            normalize(make_row("mgmt_show_10", [1.0], [0.5], None, op="show", instances=10,
                               libvirt_lookup_info_ms=0.1), "mgmt_plane"),
            normalize({"scenario": "console", "skipped": "no module"}, "console")]
    results = {"machine": report.machine_info(), "quick": True, "scenarios": [],
               "duration_s": 1.0, "rows": rows}
    written = report.write(tmp_path, results)
    assert json.loads((tmp_path / "results.json").read_text())["rows"][0]["ratio"] == 1.5
    md = (tmp_path / "report.md").read_text()
    assert "| spawn_running_vs_libvirt | 3.0 | 2.0 | 1.50 |" in md and "SKIP" in md
    assert all(p.exists() for p in written)
    assert "spawn_running_vs_libvirt" in report.format_table(rows)


def test_rewrite_domain_xml_serial_to_file() -> None:
    xml = rewrite_domain_xml(DOMAIN, "b", "99999999-2222-3333-4444-555555555555", {},
                             Path("/b/s.sock"), serial_file=Path("/b/serial.log"))
    assert "s.sock" not in xml and xml.count("/b/serial.log") == 2
    assert "<serial type=\"file\">" in xml and "bind" not in xml


def test_a_whole_quick_run_skips_the_full_run_only_scenarios_without_starting_them() -> None:
    for name in sorted(FULL_RUN_ONLY):
        [row] = run_scenario(name, quick=True)
        assert row["scenario"] == name
        assert row["skipped"] == "full run only (not in --quick)"


def test_target_slack_only_reads_as_baseline_plus() -> None:
    t = Target(1.0, slack_ms=50.0)
    assert t.text() == "<= baseline + 50 ms"
    assert t.passed(60.0, 20.0) and not t.passed(80.0, 20.0)


def test_guest_stop_events_stamped_by_domain_in_order() -> None:
    import threading

    from bench.guest_stop import StoppedEvents
    from bench.quiet_libvirt import libvirt

    class Dom:
        def __init__(self, name: str) -> None:
            self._name = name

        def name(self) -> str:
            return self._name

    events = StoppedEvents()
    before = events.count("a")
    events.callback(None, Dom("a"), libvirt.VIR_DOMAIN_EVENT_STARTED, 0, None)  # ignored
    later = threading.Timer(0.05, events.callback,
                            (None, Dom("a"), libvirt.VIR_DOMAIN_EVENT_STOPPED, 0, None))
    later.start()
    stamp = events.wait_next("a", before, 5.0)
    assert events.count("a") == 1 and events.count("b") == 0
    assert stamp == events.seen["a"][0]
    try:
        events.wait_next("b", 0, 0.01)
    except TimeoutError as exc:
        assert "no STOPPED event for b" in str(exc)
    else:
        raise AssertionError("waited for an event that never came")


def test_guest_stop_process_gone_seen_through_pidfd() -> None:
    import subprocess

    from bench.guest_stop import ProcessGone

    proc = subprocess.Popen(["sleep", "30"])
    gone = ProcessGone(proc.pid)
    proc.kill()
    assert gone.wait(10.0) > 0
    proc.wait()


SPAWN_TIMINGS = {"verb": "spawn", "result": "ok", "total_ms": 30.0,
                 "steps": [{"step": "record", "ms": 2.0}, {"step": "disks", "ms": 8.0},
                           {"step": "finish", "ms": 20.0}]}


def test_timings_of_the_verb_ran_become_phases_with_what_vmops_did_not_see() -> None:
    from bench import timings

    server = {"vmops:timings": SPAWN_TIMINGS}
    assert timings.steps_of(server, "pause") is None  # another verb's: not this sample's
    assert timings.steps_of({"vmops:timings": {**SPAWN_TIMINGS, "result": "error"}},
                            "spawn") is None
    assert timings.steps_of({}, "spawn") is None
    own = timings.steps_of(server, "spawn")
    assert own is not None
    phases = timings.phases(own, measured_ms=34.5)
    assert phases == {"record": 2.0, "disks": 8.0, "finish": 20.0, timings.OUTSIDE: 4.5}
    medians = timings.median_phases([phases, {"record": 4.0, "other": 1.0}, {"record": 6.0}])
    assert list(medians) == ["record", "disks", "finish", timings.OUTSIDE, "other"]
    assert medians["record"] == 4.0 and medians["disks"] == 0.0 and medians["other"] == 0.0


def test_report_plots_a_phases_panel_per_verb(tmp_path: Path) -> None:
    rows = [normalize(make_row(f"lifecycle_{verb}", [12.0], [3.0], None, timings_verb=verb,
                               timings_steps_ms={"begin": 1.0, "work": 9.0, "finish": 2.0},
                               timings_samples=1), "lifecycle")
            for verb in ("pause", "unpause", "stop", "start", "suspend")]
    results = {"machine": report.machine_info(), "quick": True, "scenarios": [],
               "duration_s": 1.0, "rows": rows}
    written = report.write(tmp_path, results)
    assert tmp_path / "verb_phases.png" in written
    assert (tmp_path / "verb_phases.png").stat().st_size > 0
    md = (tmp_path / "report.md").read_text()
    assert "lifecycle_pause: vmops' steps of pause (vmops:timings, median ms of 1): " \
        "begin 1.0, work 9.0, finish 2.0." in md
    assert "![verb_phases](verb_phases.png)" in md


def test_a_many_at_once_panel_sets_each_makespan_beside_one_spawns_steps(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [make_row("lifecycle_pause", [12.0], [3.0], None, timings_verb="pause",
                     timings_steps_ms={"work": 9.0}),
            make_row("concurrency_8_spawns", [2400.0], [2100.0], None, width=8,
                     timings_verb="spawn (8 at once)",
                     timings_steps_ms={"record": 30.0, "start-paused": 1600.0})]
    figures: list[Any] = []
    monkeypatch.setattr(plt, "close", figures.append)
    report.verb_phases_plot(plt, tmp_path / "p.png", rows)
    pause, many = figures[0].axes[:2]
    assert [t.get_text() for t in pause.get_xticklabels()] == ["vmops", "baseline"]
    assert [t.get_text() for t in many.get_xticklabels()] == [
        "vmops\none spawn", "vmops\nmakespan", "libvirt\nmakespan"]
    heights = [round(p.get_height(), 1) for p in many.patches]
    assert heights == [30.0, 1600.0, 2400.0, 2100.0]


def test_the_wide_spawn_round_fails_on_a_refused_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import concurrency

    fast = make_row("concurrency_32_spawns", [110.0], [100.0], concurrency.WIDE_TARGET,
                    api_eagain_retries=0)
    assert concurrency.judge_wide(dict(fast))["passed"] is True
    refused = concurrency.judge_wide({**fast, "api_eagain_retries": 1})
    assert refused["passed"] is False and "no refused connection" in refused["target"]
    slow = make_row("concurrency_32_spawns", [130.0], [100.0], concurrency.WIDE_TARGET,
                    api_eagain_retries=0)
    assert concurrency.judge_wide(slow)["passed"] is False
    monkeypatch.setenv("VMOPS_BENCH_WIDE_SPAWNS", "4")
    assert concurrency.wide_width(quick=True) == 4
    monkeypatch.delenv("VMOPS_BENCH_WIDE_SPAWNS")
    assert concurrency.wide_width(quick=True) == 0 and concurrency.wide_width(quick=False) == 32


def test_host_memory_reads_smaps_rollup_and_divides_by_the_instances(tmp_path: Path) -> None:
    from bench import host_memory

    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "smaps_rollup").write_text(
        "55d0-7ffd ---p 00000000 00:00 0    [rollup]\nRss:               15360 kB\n"
        "Pss:                4096 kB\nPss_Anon:           2048 kB\nShared_Clean:  9000 kB\n"
        "Anonymous:          3072 kB\n")
    mem = host_memory.memory_of(42, proc=tmp_path)
    assert mem == host_memory.Memory(rss_kib=15360, pss_kib=4096, anon_kib=3072)
    per = host_memory.per_instance_mib(
        host_memory.Memory(40960, 30720), host_memory.Memory(43008, 31744),
        [mem, mem], instances=2)
    # service +2048 / +1024 KiB, captures 30720 / 8192 KiB, over 2 instances
    assert per == {"rss": round((2048 + 30720) / 1024 / 2, 3),
                   "pss": round((1024 + 8192) / 1024 / 2, 3)}


def test_lifecycle_repeats_the_quick_verbs_in_pairs_and_keeps_the_guest_state_in_order() -> None:
    from bench import lifecycle

    names = [op for op, _, _ in lifecycle._sequence(quick=False)]
    assert names == ["pause", "unpause"] * lifecycle.QUICK_REPEAT \
        + ["reboot_hard"] * lifecycle.QUICK_REPEAT \
        + ["stop_hard", "start", "suspend", "resume"]
    once = [op for op, _, _ in lifecycle.OPS]
    assert [op for op, _, _ in lifecycle._sequence(quick=True)] == once
    # The issue's own target for the quick verbs: libvirt + 5 ms, no ratio.
    assert not lifecycle.QUICK_TARGET.passed(15.1, 10.0)
    assert lifecycle.QUICK_TARGET.passed(15.0, 10.0)
    assert lifecycle.QUICK_TARGET.text() == "<= baseline + 5 ms"
