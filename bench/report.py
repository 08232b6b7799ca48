"""The bench's outputs: the terminal table, results JSON, a markdown report and
PNG plots (with matplotlib, an optional dependency: without it the plots
are skipped with a note)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from bench.common import REPO, Row

COLUMNS = ("scenario", "vmops ms", "baseline ms", "ratio", "target", "result")


def machine_info() -> dict[str, Any]:
    """Where the numbers come from."""
    cpu = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        cpu = found.group(1).strip() if found else ""
    except OSError:
        pass
    mem_gib = None
    try:
        found = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(),
                          re.MULTILINE)
        mem_gib = round(int(found.group(1)) / 1024**2, 1) if found else None
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "qemu": _first_line(["qemu-system-x86_64", "--version"]),
        "libvirt": _libvirt_version(),
        "accel": "tcg",
        "commit": _first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
    }


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


def _libvirt_version() -> str:
    try:
        import libvirt

        v = libvirt.getVersion()
    except Exception:  # noqa: BLE001 - informational only
        return ""
    return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def verdict(row: Row) -> str:
    if row.get("error"):
        return "ERROR"
    if row.get("skipped"):
        return "SKIP"
    return {True: "PASS", False: "FAIL", None: "-"}[row.get("passed")]


def table_rows(rows: list[Row]) -> list[list[str]]:
    return [[str(r["scenario"]), _fmt(r.get("vmops_median_ms")),
             _fmt(r.get("baseline_median_ms")), _fmt(r.get("ratio"), 2),
             str(r.get("target") or "-"), verdict(r)] for r in rows]


def format_table(rows: list[Row]) -> str:
    body = table_rows(rows)
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c)
              for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def markdown(results: dict[str, Any], plots: list[Path]) -> str:
    m = results["machine"]
    rows: list[Row] = results["rows"]
    out = [f"# vmops bench results ({'quick' if results['quick'] else 'full'} run)", "",
           f"{m['date']}, {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, "
           f"kernel {m['kernel']}, {m['qemu']}, libvirt {m['libvirt']}, accel {m['accel']}, "
           f"commit {m['commit']}. Run took {results['duration_s']:.0f} s.", "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(b) + " |" for b in table_rows(rows)]
    notes = []
    for r in rows:
        if r.get("timings_steps_ms") and not r.get("phases_ms"):
            parts = ", ".join(f"{k} {v:.1f}" for k, v in r["timings_steps_ms"].items())
            notes.append(f"- {r['scenario']}: vmops' steps of {r.get('timings_verb')} "
                         f"(vmops:timings, median ms of {r.get('timings_samples')}): {parts}.")
        if r.get("phases_ms"):
            parts = ", ".join(f"{k} {v:.0f}" for k, v in r["phases_ms"].items())
            notes.append(f"- {r['scenario']}: vmops phases (median ms, from "
                         f"{r.get('phases_source', 'file events')}): {parts}; libvirt "
                         f"define {r.get('libvirt_define_ms')}, start "
                         f"{r.get('libvirt_start_ms')}; bare QEMU {r.get('qemu_median_ms')}.")
        if "vmops_throughput_per_s" in r:
            notes.append(f"- {r['scenario']}: throughput vmops "
                         f"{r['vmops_throughput_per_s']}/s vs libvirt "
                         f"{r['baseline_throughput_per_s']}/s; spread vmops "
                         f"{r['vmops_spread_ms']} ms vs libvirt {r['baseline_spread_ms']} ms; "
                         f"API connects refused with EAGAIN and retried: "
                         f"{r.get('api_eagain_retries', 0)}.")
        if "rate_ratio" in r:
            notes.append(f"- {r['scenario']}: guest to host over the vmops bridge "
                         f"{_fmt(r.get('bridge_mib_per_s'))} MiB/s, over user-mode "
                         f"{_fmt(r.get('user_mib_per_s'))} MiB/s: bridge / user "
                         f"{_fmt(r.get('rate_ratio'), 2)} (the ms columns: one transfer of "
                         f"{r.get('transfer_bytes')} bytes).")
        if "vmops_stall_ms" in r:
            notes.append(f"- {r['scenario']}: the guest stood still {_fmt(r['vmops_stall_ms'])} "
                         f"ms during vmops' snapshot (its clock moved "
                         f"{_fmt(r.get('vmops_guest_clock_gap_ms'))} ms over that gap), "
                         f"{_fmt(r.get('baseline_stall_ms'))} ms during the bare convert "
                         f"(medians; the longest tick interval minus the usual "
                         f"{_fmt(r.get('usual_tick_ms'))} ms); {r.get('dirty_mib')} MiB "
                         f"written by the guest, root overlay "
                         f"{_fmt((r.get('root_disk_bytes') or 0) / 2**20)} MiB.")
        if "guest_host_rate_ratio" in r:
            notes.append(f"- {r['scenario']}: guest {_fmt(r.get('guest_mib_per_s'))} MiB/s, "
                         f"host {_fmt(r.get('host_mib_per_s'))} MiB/s: guest / host "
                         f"{_fmt(r.get('guest_host_rate_ratio'), 3)} (the ms columns: one "
                         f"pass over {r.get('transfer_bytes')} bytes).")
        if "delta_ms" in r:
            notes.append(f"- {r['scenario']}: the API showed SHUTOFF {_fmt(r['delta_ms'])} ms "
                         f"after a bare libvirt client got the STOPPED event (medians, both "
                         f"from {r.get('reference', 'the same reference')}).")
        if "per_instance_mib" in r:
            per = r["per_instance_mib"]
            notes.append(f"- {r['scenario']}: vmops' memory per running instance beyond "
                         f"QEMU's: {per['pss']} MiB PSS, {per['rss']} MiB RSS ({r['how']}; "
                         f"{r['capture_processes']} capture processes, service PSS "
                         f"{r['service_pss_kib'][0]} -> {r['service_pss_kib'][1]} KiB).")
        if r.get("ratio_95"):
            low, high = r["ratio_95"]
            notes.append(f"- {r['scenario']}: {r['samples']} samples a side; the ratio's 95 % "
                         f"bootstrap interval {_fmt(low, 3)} to {_fmt(high, 3)}.")
        if r.get("paired_ms"):
            median_ms, (low, high) = r["paired_ms"]
            notes.append(f"- {r['scenario']}: the median of each round's own difference "
                         f"{_fmt(median_ms, 2)} ms, 95 % interval {_fmt(low, 2)} to "
                         f"{_fmt(high, 2)} ms.")
        if r.get("paired"):
            median_ratio, (low, high) = r["paired"]
            notes.append(f"- {r['scenario']}: the median of each round's own ratio "
                         f"{_fmt(median_ratio, 3)}, 95 % interval {_fmt(low, 3)} to "
                         f"{_fmt(high, 3)}.")
        if "libvirt_lookup_info_ms" in r:
            notes.append(f"- {r['scenario']}: libvirt lookupByUUIDString+info "
                         f"{r['libvirt_lookup_info_ms']} ms.")
        if r.get("error"):
            notes.append(f"- {r['scenario']}: ERROR {r['error']}")
        if r.get("skipped"):
            notes.append(f"- {r['scenario']}: skipped: {r['skipped']}")
    if notes:
        out += ["", "Notes:", "", *notes]
    if plots:
        out += ["", *[f"![{p.stem}]({p.name})" for p in plots]]
    return "\n".join(out) + "\n"


def write(out_dir: Path, results: dict[str, Any]) -> list[Path]:
    """results.json, report.md and the plots; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.json"]
    written[0].write_text(json.dumps(results, indent=2, default=str) + "\n")
    plots = write_plots(out_dir, results["rows"])
    md = out_dir / "report.md"
    md.write_text(markdown(results, plots))
    return [*written, md, *plots]


def write_plots(out_dir: Path, rows: list[Row]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib is not installed: no plots (pip install '.[bench]')")
        return []
    plots = []
    spawn = next((r for r in rows if r.get("phases_ms")), None)
    if spawn is not None:
        plots.append(_spawn_plot(plt, out_dir / "spawn_phases.png", spawn))
    verbs = [r for r in rows if r.get("timings_steps_ms")]
    if verbs:
        plots.append(verb_phases_plot(plt, out_dir / "verb_phases.png", verbs))
    mgmt = [r for r in rows if r.get("op") in MGMT_OPS and "instances" in r]
    if mgmt:
        plots.append(_mgmt_plot(plt, out_dir / "mgmt_latency.png", mgmt))
    return plots


def _spawn_plot(plt: Any, path: Path, row: Row) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bars = {
        "vmops": list(row["phases_ms"].items()),
        "libvirt-python": [("define", row.get("libvirt_define_ms") or 0.0),
                           ("create", row.get("libvirt_start_ms") or 0.0)],
        "bare QEMU": [("launch to running", row.get("qemu_median_ms") or 0.0)],
    }
    cmap = plt.get_cmap("tab20")
    colours: dict[str, Any] = {}
    for x, parts in enumerate(bars.values()):
        bottom = 0.0
        for phase, value in parts:
            colour = colours.setdefault(phase, cmap(len(colours) % 20))
            ax.bar(x, value, bottom=bottom, color=colour, label=phase, width=0.6)
            bottom += value
        ax.text(x, bottom, f"{bottom:.0f} ms", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(bars)), list(bars))
    ax.set_ylabel("ms (median)")
    ax.set_title("Spawn to running, image cached: where the time goes")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def verb_phases_plot(plt: Any, path: Path, rows: list[Row]) -> Path:
    """One panel per verb: vmops' steps stacked (vmops:timings, medians),
    next to the baseline's median for the same operation."""
    cols = min(4, len(rows))
    nrows = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.4 * nrows), squeeze=False)
    cmap = plt.get_cmap("tab20")
    colours: dict[str, Any] = {}
    for ax, row in zip(axes.flat, rows, strict=False):
        bottom = 0.0
        for step, value in row["timings_steps_ms"].items():
            colour = colours.setdefault(step, cmap(len(colours) % 20))
            ax.bar(0, value, bottom=bottom, color=colour, label=step, width=0.6)
            bottom += value
        ax.text(0, bottom, f"{bottom:.1f}", ha="center", va="bottom", fontsize=8)
        # Many at once (concurrency): the steps are one spawn's (medians over
        # them all), the baseline is a makespan: beside vmops' own makespan.
        others: list[tuple[str, Any, str]] = []
        if row.get("width") and row.get("vmops_median_ms") is not None:
            others.append(("vmops\nmakespan", row["vmops_median_ms"], "0.35"))
        baseline = row.get("baseline_median_ms")
        if baseline is not None:
            others.append(("libvirt\nmakespan" if row.get("width") else "baseline",
                           baseline, "0.6"))
        for x, (_, value, grey) in enumerate(others, start=1):
            ax.bar(x, value, color=grey, width=0.6)
            ax.text(x, value, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(1 + len(others)),
                      ["vmops\none spawn" if row.get("width") else "vmops",
                       *(label for label, _, _ in others)])
        ax.set_title(str(row.get("timings_verb") or row["scenario"]), fontsize=9)
        ax.set_ylabel("ms (median)", fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(rows):]:
        ax.set_visible(False)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    fig.legend(handles, list(colours), fontsize=7, loc="lower center",
               ncol=min(6, len(colours)))
    fig.suptitle("Where each verb's time goes (vmops:timings, medians)")
    fig.tight_layout(rect=(0, 0.04 + 0.03 * ((len(colours) + 5) // 6), 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


MGMT_OPS = ("list", "list after a write", "show")  # bench/mgmt_plane.py's rows


def _mgmt_plot(plt: Any, path: Path, rows: list[Row]) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for op in MGMT_OPS:
        pts = sorted((r["instances"], r["vmops_median_ms"]) for r in rows if r["op"] == op)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"vmops {op}")
    bulk = sorted({(r["instances"], r["baseline_median_ms"]) for r in rows if r["op"] == "list"})
    ax.plot([p[0] for p in bulk], [p[1] for p in bulk], marker="s", linestyle="--",
            label="libvirt getAllDomainStats")
    one = sorted((r["instances"], r["libvirt_lookup_info_ms"]) for r in rows
                 if "libvirt_lookup_info_ms" in r)
    if one:
        ax.plot([p[0] for p in one], [p[1] for p in one], marker="^", linestyle=":",
                label="libvirt lookup + info (1 domain)")
    ax.set_xlabel("instances (stopped)")
    ax.set_ylabel("ms (median)")
    ax.set_title("Management plane latency vs number of instances")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
