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

The text is written by ``prometheus_client`` (its ``generate_latest``, the
0.0.4 text format) from the families ``Metrics.collect`` yields each scrape:
vmops keeps no registry of its own, the numbers come from the store, the
hypervisor and ``Operations`` at the moment of the scrape.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from vmops.api import views
from vmops.api.server import Request, Response
from vmops.compute.manager import Compute
from vmops.errors import VmopsError
from vmops.store import Instance

log = logging.getLogger(__name__)

# What generate_latest writes (with its default escaping, for names like
# these that need none): the text format 0.0.4 that every Prometheus reads.
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

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            seen = sorted((key, list(row)) for key, row in self._seen.items())
        labels = ["verb", "result"]
        counter = CounterMetricFamily(
            "vmops_operations_total",
            "Compute operations that ended, by verb and result (ok, error, refused).",
            labels=labels)
        histogram = HistogramMetricFamily(
            "vmops_operation_duration_seconds",
            "How long compute operations took, by verb and result.", labels=labels)
        for (verb, result), row in seen:
            counter.add_metric([verb, result], int(row[0]))
            # The buckets are cumulative already (record counts each bound
            # a duration fits under); +Inf is every operation.
            buckets = [(f"{b:g}", int(row[2 + i])) for i, b in enumerate(BUCKETS)]
            histogram.add_metric([verb, result], [*buckets, ("+Inf", int(row[0]))],
                                 sum_value=row[1])
        yield counter
        yield histogram


class Metrics:
    """The scrape: a prometheus_client collector whose families are built
    from vmops' records and one bulk statistics call each time."""

    def __init__(self, compute: Compute) -> None:
        self.compute = compute
        self.operations = Operations()
        compute.operation_observers.append(self.operations.record)

    def scrape(self, req: Request) -> Response:
        return Response(200, generate_latest(self), headers={"Content-Type": CONTENT_TYPE})

    def collect(self) -> Iterator[Metric]:
        instances = self.compute.store.instances()
        try:
            stats = self.compute.hv.bulk_stats()
            up = 1
        except VmopsError as exc:
            log.warning("metrics: libvirt statistics unavailable: %s", exc.message)
            stats, up = {}, 0
        yield GaugeMetricFamily("libvirt_up", "Whether scraping libvirt's metrics was "
                                "successful.", value=up)
        by_id = {i.id: i for i in instances}
        known = [(by_id[uuid], values) for uuid, values in sorted(stats.items())
                 if uuid in by_id]
        yield from domain_families(known)
        yield from instance_families(instances)
        yield from self.operations.collect()


BLOCK_LABELS = ["domain", "source_file", "target_device"]
INTERFACE_LABELS = ["domain", "source_bridge", "target_device"]


def domain_families(domains: Sequence[tuple[Instance, Mapping[str, Any]]]) -> Iterator[Metric]:
    for suffix, key, scale, text in INFO_METRICS:
        family = _family(f"libvirt_domain_info_{suffix}", text, ["domain"])
        for inst, values in domains:
            if _number(values.get(key)):
                family.add_metric([views.domain_name(inst)], values[key] * scale)
        yield family
    for suffix, stat, text in BLOCK_METRICS:
        family = _family(f"libvirt_domain_block_stats_{suffix}", text, BLOCK_LABELS)
        for inst, values in domains:
            for i, labels in _block_labels(inst, values):
                if _number(values.get(f"block.{i}.{stat}")):
                    family.add_metric(labels, values[f"block.{i}.{stat}"])
        yield family
    for suffix, stat, text in INTERFACE_METRICS:
        family = _family(f"libvirt_domain_interface_stats_{suffix}", text, INTERFACE_LABELS)
        for inst, values in domains:
            for i, labels in _net_labels(inst, values):
                if _number(values.get(f"net.{i}.{stat}")):
                    family.add_metric(labels, values[f"net.{i}.{stat}"])
        yield family


def _family(name: str, text: str, labels: list[str]) -> CounterMetricFamily | GaugeMetricFamily:
    """A counter for the names Prometheus gives counters (``*_total``), else a gauge."""
    if name.endswith("_total"):
        return CounterMetricFamily(name, text, labels=labels)
    return GaugeMetricFamily(name, text, labels=labels)


def _block_labels(inst: Instance, values: Mapping[str, Any]) -> Iterator[tuple[int, list[str]]]:
    """libvirt numbers disks in domain XML order, which is the record's order."""
    for i in range(int(values.get("block.count", 0))):
        disk = inst.disks[i] if i < len(inst.disks) else None
        target = values.get(f"block.{i}.name") or (disk.target if disk else f"block{i}")
        path = values.get(f"block.{i}.path") or (disk.path if disk else "")
        yield i, [views.domain_name(inst), str(path), str(target)]


def _net_labels(inst: Instance, values: Mapping[str, Any]) -> Iterator[tuple[int, list[str]]]:
    for i in range(int(values.get("net.count", 0))):
        yield i, [views.domain_name(inst), "", str(values.get(f"net.{i}.name") or f"net{i}")]


def instance_families(instances: list[Instance]) -> Iterator[Metric]:
    counts: dict[str, int] = dict.fromkeys(views.STATUSES, 0)
    for inst in instances:
        status = views.server_status(inst)
        counts[status] = counts.get(status, 0) + 1
    by_status = GaugeMetricFamily("vmops_instances", "Instances vmops holds, by status.",
                                  labels=["status"])
    for status, n in sorted(counts.items()):
        by_status.add_metric([status], n)
    yield by_status
    info = GaugeMetricFamily(
        "vmops_instance_info", "One per instance: its id, name, status, flavor and image, "
        "to join with the libvirt_domain_* metrics on domain.",
        labels=["domain", "id", "name", "status", "flavor", "image"])
    for i in instances:
        info.add_metric([views.domain_name(i), i.id, i.name, views.server_status(i),
                         i.flavor.name, i.image_name], 1)
    yield info


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
