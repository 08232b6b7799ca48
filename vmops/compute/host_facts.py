"""What this host has and what its servers take, as Nova's resource
tracker reports a compute node (``os-hypervisors``, ``os-hosts``).

Totals are the host's own: vCPUs from ``os.cpu_count()``, memory from
``/proc/meminfo``, disk from the file system of the state directory. Used
amounts are what the servers were given (their flavors), as Nova counts
them; ``disk_available_least`` is the real free space. A server whose spawn
failed (ERROR, no disks) holds nothing.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from vmops.compute import states
from vmops.hypervisor.base import PowerState
from vmops.store import Instance

MIB = 1024**2
GIB = 1024**3
HYPERVISOR_TYPE = "QEMU"
# Power states in which a guest's QEMU runs.
_RUNNING = {PowerState.RUNNING.value, PowerState.PAUSED.value, PowerState.BLOCKED.value}


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    host_ip: str
    vcpus: int
    memory_mb: int
    local_gb: int
    disk_available_least: int
    vcpus_used: int
    memory_mb_used: int
    local_gb_used: int
    running_vms: int
    current_workload: int
    hypervisor_version: int
    cpu_info: str

    @property
    def free_ram_mb(self) -> int:
        return self.memory_mb - self.memory_mb_used

    @property
    def free_disk_gb(self) -> int:
        return self.local_gb - self.local_gb_used


def hostname() -> str:
    return socket.gethostname()


def on_host(instances: list[Instance]) -> list[Instance]:
    """The instances that hold a place here: all but those whose spawn
    failed or was refused (ERROR with no disks), as Nova's servers that
    never got a host."""
    return [i for i in instances if i.vm_state != states.ERROR or i.disks]


def gather(instances: list[Instance], state_dir: Path, listen: str = "") -> HostFacts:
    holding = on_host(instances)
    disk = shutil.disk_usage(state_dir if state_dir.exists() else state_dir.parent)
    return HostFacts(
        hostname=hostname(), host_ip=host_ip(listen), vcpus=os.cpu_count() or 1,
        memory_mb=meminfo_kib("MemTotal") * 1024 // MIB,
        local_gb=disk.total // GIB, disk_available_least=disk.free // GIB,
        vcpus_used=sum(i.flavor.vcpus for i in holding),
        memory_mb_used=sum(i.flavor.ram_mib for i in holding),
        local_gb_used=sum(i.flavor.local_gb for i in holding),
        running_vms=sum(1 for i in instances if i.power_state in _RUNNING),
        current_workload=sum(1 for i in instances if i.task_state is not None),
        hypervisor_version=qemu_version(), cpu_info=cpu_info())


def meminfo_kib(field: str, path: Path = Path("/proc/meminfo")) -> int:
    try:
        text = path.read_text()
    except OSError:
        return 0
    match = re.search(rf"^{re.escape(field)}:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def host_ip(listen: str) -> str:
    """The address the API listens on, if it names one; else the host
    name's address; else loopback."""
    host = listen.rpartition(":")[0].strip("[]")
    if host and host not in ("0.0.0.0", "::"):
        return host
    try:
        return socket.gethostbyname(hostname())
    except OSError:
        return "127.0.0.1"


@cache
def qemu_version() -> int:
    """QEMU's version as libvirt gives it (major * 1,000,000 + minor * 1,000
    + micro), read once from ``qemu-system-<arch> --version``; 0 if absent."""
    binary = shutil.which(f"qemu-system-{platform.machine()}") or \
        shutil.which("qemu-system-x86_64")
    if binary is None:
        return 0
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", out)
    if not match:
        return 0
    major, minor, micro = (int(g or 0) for g in match.groups())
    return major * 1_000_000 + minor * 1_000 + micro


@cache
def cpu_info(path: Path = Path("/proc/cpuinfo")) -> str:
    """Nova's libvirt ``cpu_info``: a JSON string of the host CPU."""
    try:
        text = path.read_text()
    except OSError:
        text = ""

    def first(name: str) -> str:
        match = re.search(rf"^{name}\s*:\s*(.*)$", text, re.MULTILINE)
        return match.group(1).strip() if match else ""

    count = os.cpu_count() or 1
    return json.dumps({
        "arch": platform.machine(), "model": first("model name"), "vendor": first("vendor_id"),
        "topology": {"cells": 1, "sockets": 1, "cores": count, "threads": 1},
        "features": sorted(first("flags").split())})


def uptime_text(now: float | None = None) -> str:
    """As ``uptime`` prints it, which is what Nova's libvirt driver returns:
    `` 08:32:11 up 93 days, 18:25,  0 users,  load average: 0.20, 0.12, 0.14``."""
    now = time.time() if now is None else now
    try:
        seconds = int(float(Path("/proc/uptime").read_text().split()[0]))
        load = Path("/proc/loadavg").read_text().split()[:3]
    except (OSError, IndexError, ValueError):
        seconds, load = 0, ["0.00", "0.00", "0.00"]
    days, rest = divmod(seconds, 86400)
    hours, minutes = rest // 3600, rest % 3600 // 60
    up = (f"{days} day{'s' if days != 1 else ''}, " if days else "") + f"{hours:2d}:{minutes:02d}"
    return (f" {time.strftime('%H:%M:%S', time.localtime(now))} up {up},  0 users,  "
            f"load average: {', '.join(load)}")


def cpu_times(stat: Path = Path("/proc/stat"),
              cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, int]:
    """The host's CPU time since boot, all CPUs together, in nanoseconds
    (kernel, idle, user, iowait), and the first CPU's clock in MHz
    (frequency): what libvirt's virNodeGetCPUStats gives Nova."""
    fields = stat.read_text().splitlines()[0].split()  # "cpu user nice system idle iowait"
    if fields[0] != "cpu" or len(fields) < 6:
        raise ValueError(f"{stat}: unexpected first line {' '.join(fields)!r}")
    tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait = (int(v) * tick_ns for v in fields[1:6])
    match = re.search(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo.read_text(), re.MULTILINE)
    return {"kernel": system, "idle": idle, "user": user + nice, "iowait": iowait,
            "frequency": int(float(match.group(1))) if match else 0}
