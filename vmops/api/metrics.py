"""Prometheus metrics at ``/metrics``.

Per-domain metrics carry the names and labels of the widely used libvirt
exporter (``libvirt_domain_info_*``, ``libvirt_domain_block_stats_*``,
``libvirt_domain_interface_stats_*``, label ``domain`` = the libvirt domain
name), so existing dashboards work. They come from ONE bulk statistics call
per scrape (``Hypervisor.bulk_stats``, libvirt's getAllDomainStats); labels
the statistics lack are filled in from vmops' records, never from more
libvirt calls.

vmops' own: ``vmops_operations_total`` and ``vmops_operation_duration_seconds``
(by verb and result: ok, error, refused), ``vmops_instances`` by status and
``vmops_instance_info``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from vmops.api import views
from vmops.api.server import Request, Response
from vmops.compute.manager import Compute
from vmops.errors import VmopsError
from vmops.store import Instance

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# (metric suffix, libvirt statistic, scale, help)
INFO_METRICS = (
    ("maximum_memory_bytes", "balloon.maximum", 1024, "Maximum allowed memory of the domain, "
     "in bytes."),
    ("memory_usage_bytes", "balloon.current", 1024, "Memory usage of the domain, in bytes."),
    ("virtual_cpus", "vcpu.current", 1, "Number of virtual CPUs for the domain."),
    ("cpu_time_seconds_total", "cpu.time", 1e-9, "Amount of CPU time used by the domain, "
     "in seconds."),
    ("vstate", "state.state", 1, "Virtual domain state (libvirt virDomainState)."),
)
BLOCK_METRICS = (
    ("read_bytes_total", "rd.bytes", "Number of bytes read from a block device, in bytes."),
    ("read_requests_total", "rd.reqs", "Number of read requests from a block device."),
    ("write_bytes_total", "wr.bytes", "Number of bytes written to a block device, in bytes."),
    ("write_requests_total", "wr.reqs", "Number of write requests to a block device."),
)
INTERFACE_METRICS = tuple(
    (f"{way}_{what}_total", f"{short}.{stat}",
     f"Number of {noun} {'received' if way == 'receive' else 'transmitted'} on a network "
     "interface.")
    for way, short in (("receive", "rx"), ("transmit", "tx"))
    for what, stat, noun in (("bytes", "bytes", "bytes"), ("packets", "pkts", "packets"),
                             ("errors", "errs", "packet errors"), ("drops", "drop",
                                                                    "packet drops"))
)


class Operations:
    """Counts and durations of the compute verbs, by verb and result."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], list[float]] = {}  # -> [count, sum, buckets...]

    def record(self, verb: str, result: str, seconds: float) -> None:
        with self._lock:
            row = self._seen.setdefault((verb, result), [0.0] * (2 + len(BUCKETS)))
            row[0] += 1
            row[1] += seconds
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    row[2 + i] += 1

    def lines(self) -> list[str]:
        with self._lock:
            seen = sorted(self._seen.items())
        out = _header("vmops_operations_total", "counter",
                      "Compute operations that ended, by verb and result (ok, error, refused).")
        out += [_sample("vmops_operations_total", {"verb": v, "result": r}, int(row[0]))
                for (v, r), row in seen]
        name = "vmops_operation_duration_seconds"
        out += _header(name, "histogram", "How long compute operations took, by verb and "
                       "result.")
        for (verb, result), row in seen:
            labels = {"verb": verb, "result": result}
            out += [_sample(f"{name}_bucket", {**labels, "le": f"{b:g}"}, int(row[2 + i]))
                    for i, b in enumerate(BUCKETS)]
            out.append(_sample(f"{name}_bucket", {**labels, "le": "+Inf"}, int(row[0])))
            out.append(_sample(f"{name}_sum", labels, row[1]))
            out.append(_sample(f"{name}_count", labels, int(row[0])))
        return out


class Metrics:
    def __init__(self, compute: Compute) -> None:
        self.compute = compute
        self.operations = Operations()
        compute.operation_observers.append(self.operations.record)

    # -- the scrape ------------------------------------------------------------
    def scrape(self, req: Request) -> Response:
        return Response(200, "\n".join(self.lines()).encode() + b"\n",
                        headers={"Content-Type": CONTENT_TYPE})

    def lines(self) -> list[str]:
        instances = self.compute.store.instances()
        try:
            stats = self.compute.hv.bulk_stats()
            up = 1
        except VmopsError as exc:
            log.warning("metrics: libvirt statistics unavailable: %s", exc.message)
            stats, up = {}, 0
        out = _header("libvirt_up", "gauge", "Whether scraping libvirt's metrics was "
                      "successful.") + [f"libvirt_up {up}"]
        by_id = {i.id: i for i in instances}
        known = [(by_id[uuid], values) for uuid, values in sorted(stats.items())
                 if uuid in by_id]
        out += domain_lines(known)
        out += instance_lines(instances)
        return out + self.operations.lines()


def domain_lines(domains: Sequence[tuple[Instance, Mapping[str, Any]]]) -> list[str]:
    out: list[str] = []
    for suffix, key, scale, text in INFO_METRICS:
        name = f"libvirt_domain_info_{suffix}"
        out += _header(name, "counter" if suffix.endswith("_total") else "gauge", text)
        out += [_sample(name, {"domain": views.domain_name(inst)}, values[key] * scale)
                for inst, values in domains if _number(values.get(key))]
    for suffix, stat, text in BLOCK_METRICS:
        name = f"libvirt_domain_block_stats_{suffix}"
        out += _header(name, "counter", text)
        out += [_sample(name, labels, values[f"block.{i}.{stat}"])
                for inst, values in domains for i, labels in _block_labels(inst, values)
                if _number(values.get(f"block.{i}.{stat}"))]
    for suffix, stat, text in INTERFACE_METRICS:
        name = f"libvirt_domain_interface_stats_{suffix}"
        out += _header(name, "counter", text)
        out += [_sample(name, labels, values[f"net.{i}.{stat}"])
                for inst, values in domains for i, labels in _net_labels(inst, values)
                if _number(values.get(f"net.{i}.{stat}"))]
    return out


def _block_labels(inst: Instance, values: Mapping[str, Any]) -> Iterator[tuple[int, dict[str,
                                                                                         str]]]:
    """libvirt numbers disks in domain XML order, which is the record's order."""
    for i in range(int(values.get("block.count", 0))):
        disk = inst.disks[i] if i < len(inst.disks) else None
        target = values.get(f"block.{i}.name") or (disk.target if disk else f"block{i}")
        path = values.get(f"block.{i}.path") or (disk.path if disk else "")
        yield i, {"domain": views.domain_name(inst), "source_file": str(path),
                  "target_device": str(target)}


def _net_labels(inst: Instance, values: Mapping[str, Any]) -> Iterator[tuple[int, dict[str,
                                                                                       str]]]:
    for i in range(int(values.get("net.count", 0))):
        yield i, {"domain": views.domain_name(inst), "source_bridge": "",
                  "target_device": str(values.get(f"net.{i}.name") or f"net{i}")}


def instance_lines(instances: list[Instance]) -> list[str]:
    counts: dict[str, int] = dict.fromkeys(views.STATUSES, 0)
    for inst in instances:
        status = views.server_status(inst)
        counts[status] = counts.get(status, 0) + 1
    out = _header("vmops_instances", "gauge", "Instances vmops holds, by status.")
    out += [_sample("vmops_instances", {"status": s}, n) for s, n in sorted(counts.items())]
    out += _header("vmops_instance_info", "gauge", "One per instance: its id, name, status, "
                   "flavor and image, to join with the libvirt_domain_* metrics on domain.")
    out += [_sample("vmops_instance_info", {
        "domain": views.domain_name(i), "id": i.id, "name": i.name,
        "status": views.server_status(i), "flavor": str(i.flavor.get("name", "")),
        "image": i.image_name}, 1) for i in instances]
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _header(name: str, kind: str, text: str) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]


def _sample(name: str, labels: Mapping[str, str], value: float) -> str:
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    number = repr(float(value)) if isinstance(value, float) else str(value)
    return f"{name}{{{text}}} {number}" if text else f"{name} {number}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
