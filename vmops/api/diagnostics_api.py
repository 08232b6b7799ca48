"""Nova's ``GET /servers/{id}/diagnostics`` (admin), from the statistics
libvirt keeps for the domain (``Hypervisor.bulk_stats``, the call behind
``/metrics``).

Before microversion 2.48 the body is the driver's own (Nova's libvirt
driver: ``cpu0_time``, ``memory``, ``memory-actual``, ``vda_read``...,
``nic0_rx``...); from 2.48 it is Nova's standard body, with ``null`` where
libvirt keeps no number (utilisation, rates, a disk's error count).
Memory is in MiB, CPU time in nanoseconds, as Nova's.
"""

from __future__ import annotations

import time
from typing import Any

from vmops.api import views
from vmops.api.server import Request, Response, Router
from vmops.compute.manager import Compute
from vmops.errors import InvalidState, NotFound
from vmops.hypervisor.base import Accel
from vmops.store import Instance

P = views.API_PREFIX
# libvirt's virDomainState (state.state) -> Nova's diagnostics state.
_STATE = {0: "pending", 1: "running", 2: "running", 3: "paused", 4: "shutdown",
          5: "shutdown", 6: "crashed", 7: "suspended"}
_NIC_STATS = (("rx_octets", "rx.bytes"), ("rx_errors", "rx.errs"), ("rx_drop", "rx.drop"),
              ("rx_packets", "rx.pkts"), ("rx_rate", ""), ("tx_octets", "tx.bytes"),
              ("tx_errors", "tx.errs"), ("tx_drop", "tx.drop"), ("tx_packets", "tx.pkts"),
              ("tx_rate", ""))
_DISK_STATS = (("read_bytes", "rd.bytes"), ("read_requests", "rd.reqs"),
               ("write_bytes", "wr.bytes"), ("write_requests", "wr.reqs"),
               ("errors_count", ""))


def add_routes(r: Router, compute: Compute) -> None:
    api = DiagnosticsApi(compute)
    r.add("GET", f"{P}/servers/{{id}}/diagnostics", api.show)


class DiagnosticsApi:
    def __init__(self, compute: Compute) -> None:
        self.compute = compute

    def show(self, req: Request) -> Response:
        inst = self.compute.store.instance(req.params["id"])
        if inst.id != req.params["id"]:
            raise NotFound(f"Instance {req.params['id']} could not be found.")
        stats = self.compute.hv.bulk_stats().get(inst.id)
        if stats is None:
            raise InvalidState(action="get_diagnostics", instance=inst.id,
                               state=f"{inst.vm_state} (it has no domain)")
        hypervisor = "kvm" if self.compute.accel == Accel.KVM else "qemu"
        if req.at_least("2.48"):
            return Response(200, standard(inst, stats, hypervisor))
        return Response(200, libvirt_body(inst, stats))


def _number(stats: dict[str, int | float], key: str) -> int | None:
    value = stats.get(key) if key else None
    return None if value is None or value < 0 else int(value)


def _count(stats: dict[str, int | float], group: str) -> int:
    return int(stats.get(f"{group}.count", 0))


def standard(inst: Instance, stats: dict[str, int | float], hypervisor: str) -> dict[str, Any]:
    """Nova's diagnostics body from 2.48."""
    vcpus = _count(stats, "vcpu") or int(stats.get("vcpu.current", 0))
    cpus = [{"id": n, "time": _number(stats, f"vcpu.{n}.time"), "utilisation": None}
            for n in range(vcpus)]
    nics = [{"mac_address": inst.macs[n] if n < len(inst.macs) else None,
             **{name: _number(stats, f"net.{n}.{key}" if key else "")
                for name, key in _NIC_STATS}} for n in range(_count(stats, "net"))]
    disks = [{name: _number(stats, f"block.{n}.{key}" if key else "")
              for name, key in _DISK_STATS} for n in range(_count(stats, "block"))]
    maximum, used = _number(stats, "balloon.maximum"), _number(stats, "balloon.current")
    return {
        "state": _STATE.get(int(stats.get("state.state", 0)), "pending"),
        "driver": "libvirt", "hypervisor": hypervisor, "hypervisor_os": "linux",
        "uptime": None if inst.launched_at is None else int(time.time() - inst.launched_at),
        "config_drive": inst.config_drive, "num_cpus": len(cpus), "num_nics": len(nics),
        "num_disks": len(disks),
        "memory_details": {"maximum": None if maximum is None else maximum // 1024,
                           "used": None if used is None else used // 1024},
        "cpu_details": cpus, "nic_details": nics, "disk_details": disks}


def libvirt_body(inst: Instance, stats: dict[str, int | float]) -> dict[str, Any]:
    """Nova's libvirt driver's body before 2.48: flat counters (memory in
    KiB), disks by their target (``vda_read``), NICs by position."""
    body: dict[str, Any] = {}
    vcpus = _count(stats, "vcpu") or int(stats.get("vcpu.current", 0))
    for n in range(vcpus):
        body[f"cpu{n}_time"] = _number(stats, f"vcpu.{n}.time")
    body["memory"] = _number(stats, "balloon.maximum")
    if "balloon.current" in stats:
        body["memory-actual"] = _number(stats, "balloon.current")
    targets = [d.target for d in inst.disks]
    for n in range(_count(stats, "block")):
        name = targets[n] if n < len(targets) else f"disk{n}"
        for suffix, key in (("read", "rd.bytes"), ("read_req", "rd.reqs"),
                            ("write", "wr.bytes"), ("write_req", "wr.reqs")):
            body[f"{name}_{suffix}"] = _number(stats, f"block.{n}.{key}")
    for n in range(_count(stats, "net")):
        for suffix, key in (("rx", "rx.bytes"), ("rx_packets", "rx.pkts"),
                            ("rx_errors", "rx.errs"), ("rx_drop", "rx.drop"),
                            ("tx", "tx.bytes"), ("tx_packets", "tx.pkts"),
                            ("tx_errors", "tx.errs"), ("tx_drop", "tx.drop")):
            body[f"nic{n}_{suffix}"] = _number(stats, f"net.{n}.{key}")
    return body
