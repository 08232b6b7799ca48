"""Spawn to address: until the guest's address on the vmops network answers.

    python -m bench --only spawn_address [--quick]   (or: python -m bench.spawn_address)

Both sides run on one bridge, a service's own (bench/bridged.py), and are
judged by the same probe: ICMP echo requests from the host every 5 ms
(bench/netprobe.py) until one is answered. The test guest answers once its
DHCP client has set the address; the host learns the guest's MAC from
dnsmasq's reply, so no ARP retry interval is in the way. The host's ARP
entries on the bridge are flushed before each sample.

- vmops: ``POST /servers`` (m1.tiny, network "vmops", no config drive) until
  the address in its record answers.
- libvirt: ``defineXML`` + ``create`` of vmops' own domain XML on the bench's
  embed root, on fresh copies of the same disks, until its address answers.
  The XML is that of an instance vmops spawned on the bridge and then
  stopped (``stop --hard``): its port record stays, so the baseline guest
  has the same MAC, tap name, DHCP reservation on the same dnsmasq, and
  the same nftables rules as a vmops guest.

Every vmops guest gets an address never used before in the service
(``BridgedService.fresh_ip``: see there why).

No target: the ratio is reported. Under TCG the guest's boot dominates.
"""

from __future__ import annotations

import shutil
import sys

from bench import session
from bench.bridged import flush_neighbours
from bench.common import Row, alternate, make_row, now
from bench.netprobe import Pinger
from bench.virt import disk_templates, make_disks, new_uuid, rewrite_domain_xml

HOLDER = "sa-base"
BOOT_TIMEOUT_S = 180.0


def run(quick: bool) -> list[Row]:
    s = session.get()
    br = s.bridged
    svc = br.svc
    lv = s.baseline
    reps = 1 if quick else 5

    holder_id = svc.post_server(HOLDER, network="vmops", fixed_ip=br.fresh_ip())
    try:
        svc.wait_built(HOLDER)
        svc.action(holder_id, {"os-stop": {"vmops:hard": True}})
        svc.wait_idle(HOLDER)
        holder_xml = svc.domain_xml(HOLDER)
        holder_address = br.address(HOLDER)
        disks = disk_templates(holder_xml, s.work / "sa-bases")
        vmops_ms: list[float] = []
        lv_ms: list[float] = []

        def vmops_side(i: int) -> None:
            name = f"sa-{i}"
            flush_neighbours(br.bridge)
            t0 = now()
            server_id = svc.post_server(name, network="vmops", fixed_ip=br.fresh_ip())
            pinger = None
            try:
                pinger = Pinger(br.address(name))
                vmops_ms.append((pinger.wait_answer(BOOT_TIMEOUT_S) - t0) * 1000.0)
            finally:
                if pinger is not None:
                    pinger.close()
                svc.destroy(server_id)

        def libvirt_side(i: int) -> None:
            wd = s.workdir(f"sa-lv-{i}")
            xml = rewrite_domain_xml(holder_xml, f"sa-lv-{i}", new_uuid(),
                                     make_disks(disks, wd), lv.run_dir / f"sa{i}.sock")
            flush_neighbours(br.bridge)
            pinger = Pinger(holder_address)
            dom = None
            try:
                t0 = now()
                dom = lv.define(xml)
                dom.create()
                lv_ms.append((pinger.wait_answer(BOOT_TIMEOUT_S) - t0) * 1000.0)
            finally:
                pinger.close()
                if dom is not None:
                    lv.remove(dom)
                shutil.rmtree(wd, ignore_errors=True)

        alternate(reps, vmops_side, libvirt_side)
    finally:
        svc.destroy(holder_id)
    return [make_row("spawn_to_address_vs_libvirt", vmops_ms, lv_ms, None,
                     bridge=br.bridge, subnet=br.cidr)]


if __name__ == "__main__":
    from bench.runner import main

    sys.exit(main(["--only", "spawn_address", *sys.argv[1:]]))
