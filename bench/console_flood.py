"""Console capture CPU while a real guest floods its serial port.

    python -m bench --only console_flood      (full run only; or: python -m bench.console_flood)
    python -m bench.console_flood --trickle-only [BYTES_PER_S [SECONDS]]   (no guest)
    python -m bench.console_flood --chardev-compare [SECONDS [WINDOWS]]    (bare QEMU, no vmops)

Two guests of the ``tiny-flood`` test image (its init prints numbered
~100-byte ``VMOPS-FLOOD <n>`` lines as fast as it can, for ever):

- vmops: spawned through the API; its serial port goes to the process
  that captures the instance's console (found by the pid vmops records
  for the instance's log directory, ``vmops.console.capture_pid``: the
  per-instance capture process today, whatever process captures it
  later), which writes the two rotating log files.
- baseline: the same domain XML and disks on the bench's libvirt root with
  ``<serial type='file'>``: QEMU writes the stream to a file itself.

Both boot, then take turns: one is paused (vmops' ``pause``, libvirt's
``suspend()``) while the other floods for a window of ``WINDOW_S``
seconds, alternating who goes first. Per window: the guest's output rate
(the vmops side from the ``VMOPS-FLOOD`` numbers at both ends times the
bytes per line in its log, since the log rotates; the baseline from the
file's growth) and, on the vmops side, the capture process's CPU time
(utime + stime of the whole process from ``/proc/PID/stat``) over the
window's wall time, in % of one core. After the last window the log files
are checked against their cap (each <= ``console_log_max_bytes``).
Then, without a guest, the same byte rate is sent into the console process
from this process (playing QEMU on FIFOs) in writes of 8, 64, 512 and 4096 bytes
(``trickle_capture_cpu_pct``): how much of the capture's CPU is per
wake-up rather than per byte.

Row: ms per MiB of console output (vmops side and baseline; ratio > 1:
the capture slows the guest's output), target: the capture's CPU <= 5 %
of one core and the cap held. Under TCG the guest's own emulated CPU
limits how fast it can write; the rates are printed so that the CPU
figure can be read against them.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from bench import session
from bench.common import Row, median, test_image_dir
from bench.virt import disk_templates, make_disks, new_uuid, rewrite_domain_xml
from bench.vmopsd import FLAVOR
from vmops import console, serial_pipes
from vmops.console import LogFiles

IMAGE = "tiny-flood"
TARGET_CPU_PCT = 5.0
WINDOW_S = 6.0
REPS = 3
BOOT_TIMEOUT_S = 300.0
MIB = 1024 * 1024
MAX_LOG_BYTES = 512 * 1024
TRICKLE_CHUNKS = (8, 64, 512, 4096)
_FLOOD = re.compile(rb"VMOPS-FLOOD (\d+) ")


def cpu_seconds(pid: int, proc: Path = Path("/proc")) -> float:
    """utime + stime of the whole process (every thread), in seconds."""
    stat = (proc / str(pid) / "stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ns(pid: int, proc: Path = Path("/proc")) -> int:
    """Nanoseconds on a CPU of every thread of ``pid`` (``schedstat``): finer
    than ``cpu_seconds``' clock ticks, for the short trickle windows."""
    return sum(int((task / "schedstat").read_text().split()[0])
               for task in (proc / str(pid) / "task").iterdir())


def last_line_number(text: bytes) -> int | None:
    numbers = _FLOOD.findall(text)
    return int(numbers[-1]) if numbers else None


def bytes_per_line(text: bytes) -> float | None:
    """The average length of a flood line in ``text`` (CR included if the
    guest's tty adds one), from the first to the last numbered line."""
    found = list(_FLOOD.finditer(text))
    if len(found) < 2:
        return None
    lines = int(found[-1].group(1)) - int(found[0].group(1))
    return (found[-1].start() - found[0].start()) / lines if lines > 0 else None


def capture_process(log_dir: Path) -> int:
    """The pid of the process capturing ``log_dir``: vmops' own answer, or
    the pid file it keeps there."""
    pid = console.capture_pid(log_dir)
    if pid is None:
        text = LogFiles(log_dir).pid.read_text().strip()
        pid = int(text) if text.isdigit() else None
    if pid is None:
        raise RuntimeError(f"no process captures {log_dir}")
    return pid


def trickle_cpu(root: Path, chunk: int, rate: float, seconds: float) -> float:
    """The capture's CPU, in % of one core, for a stream of ``rate`` bytes/s
    sent in ``chunk``-byte writes into a serial port of FIFOs (this process
    plays QEMU: both opened read-write, as QEMU's pipe chardev does): how
    much of its cost is per wake-up rather than per byte. No guest."""
    base, log_dir = root / f"trickle-{chunk}.sock", root / f"trickle-{chunk}"
    serial_pipes.make(base)
    fds = [os.open(path, os.O_RDWR) for path in serial_pipes.paths(base)]
    try:
        pid = console.start_capture(base, log_dir, MAX_LOG_BYTES)
        try:
            console.poke_capture(log_dir)
            console.wait_connected(log_dir, 0, timeout=30.0)
            payload = b"x" * (chunk - 1) + b"\n"
            cpu0, t0 = cpu_ns(pid), time.monotonic()
            due = t0
            while time.monotonic() - t0 < seconds:
                os.write(fds[1], payload)
                due += chunk / rate
                time.sleep(max(0.0, due - time.monotonic()))
            cpu1, t1 = cpu_ns(pid), time.monotonic()
        finally:
            console.stop_capture(log_dir)
    finally:
        for fd in fds:
            os.close(fd)
        shutil.rmtree(log_dir, ignore_errors=True)
        serial_pipes.remove(base)
    return 100.0 * (cpu1 - cpu0) / 1e9 / (t1 - t0)


def run(quick: bool) -> list[Row]:
    s = session.get()
    svc = s.vmops
    lv = s.baseline
    svc.ensure_image(test_image_dir() / f"{IMAGE}.qcow2", IMAGE)
    wd = s.workdir("cf")
    name = "cf-0"
    server_id = str(svc.client.post("/servers", {"server": {
        "name": name, "imageRef": IMAGE, "flavorRef": FLAVOR}})["server"]["id"])
    dom = None
    try:
        svc.wait_built(name)
        xml = svc.domain_xml(name)
        disks = make_disks(disk_templates(xml, wd / "bases"), wd / "lv")
        serial_file = wd / "lv-serial.log"
        dom = lv.define(rewrite_domain_xml(xml, "cf-lv", new_uuid(), disks,
                                           lv.run_dir / "cf.sock", serial_file=serial_file))
        dom.create()
        log_dir = svc.instances_dir / server_id
        _wait_flooding(lambda: svc.console_log(server_id))
        _wait_flooding(lambda: _read(serial_file))
        row = _alternate(svc, server_id, log_dir, dom, serial_file, quick)
    finally:
        if dom is not None:
            lv.remove(dom)
        svc.destroy(server_id)
        shutil.rmtree(wd, ignore_errors=True)
    # The same rate without a guest, in writes of different sizes.
    rate = (median(row["vmops_mib_per_s"]) or 0.04) * MIB
    tw = s.workdir("cf-trickle")
    try:
        row["trickle_capture_cpu_pct"] = {
            str(chunk): round(trickle_cpu(tw, chunk, rate, 2.0 if quick else 4.0), 2)
            for chunk in TRICKLE_CHUNKS}
    finally:
        console.release_holds()  # its console process stays for us otherwise
        shutil.rmtree(tw, ignore_errors=True)
    row["trickle_bytes_per_s"] = round(rate)
    return [row]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _wait_flooding(read: Any) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while last_line_number(read()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no VMOPS-FLOOD line after {BOOT_TIMEOUT_S:g}s")
        time.sleep(0.5)


def _alternate(svc: Any, server_id: str, log_dir: Path, dom: Any, serial_file: Path,
               quick: bool) -> Row:
    window = WINDOW_S / 2 if quick else WINDOW_S
    reps = 1 if quick else REPS
    vm_rates: list[float] = []
    cpu_pct: list[float] = []
    lv_rates: list[float] = []
    line_bytes: list[float] = []
    pids: set[int] = set()
    svc.action(server_id, {"pause": None})  # both still: each window unpauses one
    dom.suspend()
    for rep in range(reps):
        order = ("vmops", "libvirt") if rep % 2 == 0 else ("libvirt", "vmops")
        for side in order:
            if side == "vmops":
                svc.action(server_id, {"unpause": None})
                rate, pct, per_line, pid = _vmops_window(svc, server_id, log_dir, window)
                svc.action(server_id, {"pause": None})
                vm_rates.append(rate)
                cpu_pct.append(pct)
                line_bytes.append(per_line)
                pids.add(pid)
            else:
                dom.resume()
                lv_rates.append(_file_window(serial_file, window))
                dom.suspend()
    sizes = {p.name: p.stat().st_size for p in sorted(log_dir.glob("console.log*"))}
    cap = svc.settings.console_log_max_bytes
    cap_held = bool(sizes) and all(size <= cap for size in sizes.values())
    cpu = median(cpu_pct)
    vm_ms = [1000.0 / r for r in vm_rates if r > 0]
    lv_ms = [1000.0 / r for r in lv_rates if r > 0]
    v, b = median(vm_ms), median(lv_ms)
    return {
        "scenario": "console_flood_capture_cpu",
        "vmops_median_ms": round(v, 2) if v is not None else None,
        "baseline_median_ms": round(b, 2) if b is not None else None,
        "ratio": round(v / b, 3) if v is not None and b else None,
        "target": f"capture CPU <= {TARGET_CPU_PCT:g}% of one core, cap held",
        "passed": cpu is not None and cpu <= TARGET_CPU_PCT and cap_held,
        "unit": "ms per MiB of console output",
        "samples": len(vm_ms), "window_s": window,
        "capture_cpu_pct_of_core": [round(p, 2) for p in cpu_pct],
        "capture_cpu_pct_median": round(cpu, 2) if cpu is not None else None,
        "capture_pids": sorted(pids),
        "vmops_mib_per_s": [round(r, 3) for r in vm_rates],
        "baseline_mib_per_s": [round(r, 3) for r in lv_rates],
        "bytes_per_line": round(median(line_bytes) or 0.0, 1),
        "log_sizes": sizes, "log_cap_bytes": cap, "cap_held": cap_held,
        "how": "each side floods alone (the other paused) for window_s; capture CPU = "
               "utime+stime of the capturing process over the window; rates from the "
               "flood's line numbers (vmops, rotating log) and the file's growth (baseline)",
    }


def _vmops_window(svc: Any, server_id: str, log_dir: Path,
                  window: float) -> tuple[float, float, float, int]:
    """(MiB/s, capture CPU in % of a core, bytes per line, capture pid)."""
    pid = capture_process(log_dir)
    first = last_line_number(_flood_log(svc, server_id))
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    text = _flood_log(svc, server_id)
    last = last_line_number(text)
    per_line = bytes_per_line(text)
    if first is None or last is None or per_line is None:
        raise RuntimeError(f"no flood lines in {log_dir}'s console log")
    wall = t1 - t0
    return (last - first) * per_line / MIB / wall, 100.0 * (cpu1 - cpu0) / wall, per_line, pid


def _flood_log(svc: Any, server_id: str) -> bytes:
    """The console log, read again if a rotation was in progress (the
    current file renamed, the new one not made yet: it reads empty)."""
    text = b""
    for _ in range(50):
        text = svc.console_log(server_id)
        if bytes_per_line(text) is not None:
            break
        time.sleep(0.01)
    return bytes(text)


def _file_window(path: Path, window: float) -> float:
    """MiB/s the guest wrote into QEMU's serial file over ``window``."""
    size0, t0 = path.stat().st_size, time.monotonic()
    time.sleep(window)
    size1, t1 = path.stat().st_size, time.monotonic()
    return (size1 - size0) / MIB / (t1 - t0)


def trickle_only(argv: list[str]) -> int:
    """``--trickle-only [BYTES_PER_S [SECONDS]]``: only the part without a
    guest (no bench session, no libvirt), in a temporary directory; prints
    one JSON line: per write size, the capture's CPU in % of one core and
    in microseconds per KiB."""
    import json
    import tempfile

    rate = float(argv[0]) if argv else 0.04 * MIB
    seconds = float(argv[1]) if len(argv) > 1 else 4.0
    with tempfile.TemporaryDirectory(prefix="vmops-trickle-") as root:
        pct = {str(chunk): round(trickle_cpu(Path(root), chunk, rate, seconds), 2)
               for chunk in TRICKLE_CHUNKS}
        console.release_holds()
    us_per_kib = {chunk: round(p / 100.0 * 1e6 / (rate / 1024), 2) for chunk, p in pct.items()}
    print(json.dumps({"trickle_bytes_per_s": round(rate), "seconds": seconds,
                      "trickle_capture_cpu_pct": pct,
                      "capture_cpu_us_per_kib": us_per_kib}))
    return 0


def chardev_reader(argv: list[str]) -> int:
    """``--reader KIND PATH LOG GATHER``: the console process's turn, alone,
    on one chardev (KIND ``socket``: connect to PATH; ``pipe``: read the
    FIFO PATH): epoll, one read of up to 64 KiB, an ``O_APPEND`` write to
    LOG, then wait: GATHER seconds after a turn that read, or, for GATHER
    < 0, ``daemon.gather_wait``'s rule. Until end of file."""
    from vmops.console.daemon import GATHER_S, gather_wait

    kind, path, log, gather = argv[0], argv[1], argv[2], float(argv[3])
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sock: socket.socket | None = None
    if kind == "socket":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while sock.connect_ex(path) != 0:
            time.sleep(0.05)
        sock.setblocking(False)
        fd = sock.fileno()
    else:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    poller = select.epoll()
    poller.register(fd, select.EPOLLIN)
    read_woke, last_read = 0.0, -1.0
    while True:
        ready = poller.poll(1.0)
        woke = time.monotonic()
        if not ready:
            continue
        try:
            data = sock.recv(65536) if sock is not None else os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not data:
            return 0
        os.write(out, data)
        wait = gather if gather >= 0 else gather_wait(len(data), woke - read_woke)
        read_woke = woke
        if woke - last_read < max(gather, GATHER_S) and wait:
            time.sleep(max(0.0, woke + wait - time.monotonic()))
        last_read = time.monotonic()


def chardev_compare(argv: list[str]) -> int:
    """``--chardev-compare [SECONDS [WINDOWS]]``: no vmops. A bare QEMU
    (TCG) boots ``tiny-flood`` with its serial port on a UNIX socket (QEMU
    the server, as vmops' domain has it), then on a pipe (FIFOs
    ``p.in``/``p.out``); ``--reader`` reads it in a process of its own
    (``daemon.gather_wait``'s rule on the socket, a fixed 5 ms on the pipe).
    Per window: the guest's rate (the log's growth), the reader's CPU
    (schedstat; user and system from stat) and QEMU's. One JSON line per
    window. Take the guest lock around it."""
    import json
    import subprocess
    import tempfile

    seconds = float(argv[0]) if argv else 5.0
    windows = int(argv[1]) if len(argv) > 1 else 3
    image = test_image_dir() / f"{IMAGE}.qcow2"
    tick = os.sysconf("SC_CLK_TCK")

    def user_sys(pid: int) -> tuple[float, float]:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / tick, int(fields[12]) / tick

    for kind, gather in (("socket", -1.0), ("pipe", 0.005)):
        with tempfile.TemporaryDirectory(prefix="vmops-chardev-") as tmp:
            root = Path(tmp)
            log = root / "log"
            if kind == "socket":
                path = read_path = str(root / "serial.sock")
                chardev = f"socket,id=s0,path={path},server=on,wait=off"
            else:
                path = str(root / "p")
                os.mkfifo(path + ".in")
                os.mkfifo(path + ".out")
                read_path, chardev = path + ".out", f"pipe,id=s0,path={path}"
            qemu = subprocess.Popen(
                ["qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-cpu", "max",
                 "-m", "256M", "-nodefaults", "-no-user-config", "-display", "none",
                 "-vga", "none", "-chardev", chardev, "-device", "isa-serial,chardev=s0",
                 "-drive", f"file={image},format=qcow2,if=virtio,snapshot=on"],
                stderr=subprocess.DEVNULL)
            reader = subprocess.Popen([sys.executable, "-m", "bench.console_flood", "--reader",
                                       kind, read_path, str(log), str(gather)])
            try:
                _wait_flooding(lambda log=log: _read(log))
                for _ in range(windows):
                    t0, c0, u0 = time.monotonic(), cpu_ns(reader.pid), user_sys(reader.pid)
                    q0, b0 = sum(user_sys(qemu.pid)), log.stat().st_size
                    time.sleep(seconds)
                    t1, c1, u1 = time.monotonic(), cpu_ns(reader.pid), user_sys(reader.pid)
                    q1, b1 = sum(user_sys(qemu.pid)), log.stat().st_size
                    wall = t1 - t0
                    print(json.dumps({
                        "chardev": kind, "gather": "gather_wait" if gather < 0 else gather,
                        "kib_per_s": round((b1 - b0) / 1024 / wall, 1),
                        "reader_cpu_pct": round(100 * (c1 - c0) / 1e9 / wall, 2),
                        "reader_user_pct": round(100 * (u1[0] - u0[0]) / wall, 1),
                        "reader_sys_pct": round(100 * (u1[1] - u0[1]) / wall, 1),
                        "qemu_cpu_pct": round(100 * (q1 - q0) / wall, 1),
                        "loadavg": round(os.getloadavg()[0], 2)}), flush=True)
            finally:
                for proc in (qemu, reader):
                    proc.terminate()
                    proc.wait()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--trickle-only"]:
        sys.exit(trickle_only(sys.argv[2:]))
    if sys.argv[1:2] == ["--reader"]:
        sys.exit(chardev_reader(sys.argv[2:]))
    if sys.argv[1:2] == ["--chardev-compare"]:
        sys.exit(chardev_compare(sys.argv[2:]))
    from bench.runner import main

    sys.exit(main(["--only", "console_flood", *sys.argv[1:]]))
