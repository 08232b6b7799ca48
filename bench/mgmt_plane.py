"""Management plane: list and show latency at 10, 100, 200 and 1,000 instances.

    python -m bench --only mgmt_plane [--quick]     (or: python -m bench.mgmt_plane)

The instances are made through the API without booting them
(``"vmops:start": false``, 100 per request with ``max_count``): a record,
a root disk and a defined domain each, SHUTOFF, as a spawn then stop
leaves them. The baseline root holds as many defined domains, from the
same domain XML.

- list: ``GET /servers/detail`` (what ``vmops list`` calls), with nothing
  changed since the last list.
- list after a write: the same list right after one server's metadata was
  set (``POST /servers/{id}/metadata``, not timed): what a client polling
  the list sees while anything changes, as every verb writes its record.
- show: ``GET /servers/{id}`` of a different instance each time (the record
  plus the live libvirt state, what ``vmops show`` calls).
- baseline for both: one ``getAllDomainStats()`` call on the baseline root,
  the bulk call that returns state, CPU, memory and disks of every domain.
  ``libvirt_lookup_info_ms`` adds ``lookupByUUIDString`` + ``info()`` of one
  domain, the single-domain equivalent of show.

Target: list, and list after a write, <= 1.5x the bulk call at 200 and at
1,000 instances (the other levels and show: for information; the point is
how each grows with the number of instances). ``VMOPS_BENCH_MGMT_LEVELS``
(e.g. ``10,50``) sets the levels, to try the code path without making
1,000 servers.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from bench import session
from bench.common import Row, Target, alternate, make_row, median, ms_since, now
from bench.virt import new_uuid, rewrite_domain_xml

log = logging.getLogger("bench")

PREFIX = "mpd-"  # the servers made without booting: mpd-0-1 .. mpd-0-100, mpd-1-1 ..
LIST_TARGET = Target(1.5)
TARGET_LEVELS = (200, 1000)


def levels(quick: bool) -> tuple[int, ...]:
    given = os.environ.get("VMOPS_BENCH_MGMT_LEVELS", "")
    if given:
        return tuple(sorted({int(n) for n in given.split(",") if n.strip()}))
    return (10, 100) if quick else (10, 100, 200, 1000)


def run(quick: bool) -> list[Row]:
    s = session.get()
    svc = s.vmops
    lv = s.baseline
    tpl = s.template(config_drive=False)
    reps = 10 if quick else 25
    rows: list[Row] = []
    lv_domains: list[Any] = []
    fake_disks = {dev: s.work / "mp-missing" / f"{dev}.{t.format}"
                  for dev, t in tpl.disks.items()}
    made = 0
    try:
        for n in levels(quick):
            have = svc.server_count()
            if have < n:
                svc.define_many(f"{PREFIX}{made}-", n - have)
                made += 1
            while len(lv_domains) < n:
                i = len(lv_domains)
                lv_domains.append(lv.define(rewrite_domain_xml(
                    tpl.domain_xml, f"mp-lv-{i}", new_uuid(), fake_disks,
                    lv.run_dir / f"mp{i}.sock")))
            ids = [x["id"] for x in svc.client.get("/servers")["servers"]]
            if len(ids) != n:
                raise RuntimeError(f"vmops lists {len(ids)} instances, expected {n}")
            rows += _measure(svc, lv, lv_domains, ids, n, reps)
    finally:
        for dom in lv_domains:
            lv.remove(dom)
        svc.destroy_all()
    return rows


def _measure(svc: Any, lv: Any, lv_domains: list[Any], ids: list[str], n: int,
             reps: int) -> list[Row]:
    list_ms: list[float] = []
    written_ms: list[float] = []
    show_ms: list[float] = []
    bulk_ms: list[float] = []
    one_ms: list[float] = []
    lv_uuids = [d.UUIDString() for d in lv_domains]

    def vmops_list(_i: int) -> None:
        t0 = now()
        servers = svc.client.get("/servers/detail")["servers"]
        list_ms.append(ms_since(t0))
        assert len(servers) == n

    def vmops_list_after_write(i: int) -> None:
        svc.client.post(f"/servers/{ids[(i * 11) % n]}/metadata",
                        {"metadata": {"bench": str(i)}})
        t0 = now()
        servers = svc.client.get("/servers/detail")["servers"]
        written_ms.append(ms_since(t0))
        assert len(servers) == n

    def vmops_show(i: int) -> None:
        t0 = now()
        svc.client.get(f"/servers/{ids[(i * 7) % n]}")
        show_ms.append(ms_since(t0))

    def libvirt_bulk(_i: int) -> None:
        t0 = now()
        stats = lv.conn.getAllDomainStats(0, 0)
        bulk_ms.append(ms_since(t0))
        assert len(stats) == n

    def libvirt_one(i: int) -> None:
        t0 = now()
        lv.conn.lookupByUUIDString(lv_uuids[(i * 7) % n]).info()
        one_ms.append(ms_since(t0))

    for warm in (vmops_list, vmops_list_after_write, vmops_show, libvirt_bulk, libvirt_one):
        warm(0)
    list_ms.clear()
    written_ms.clear()
    show_ms.clear()
    bulk_ms.clear()
    one_ms.clear()
    alternate(reps, vmops_list, vmops_list_after_write, vmops_show, libvirt_bulk, libvirt_one)
    common = {"instances": n}
    return [
        make_row(f"mgmt_list_{n}", list_ms, bulk_ms,
                 LIST_TARGET if n in TARGET_LEVELS else None, op="list", **common),
        make_row(f"mgmt_list_after_write_{n}", written_ms, bulk_ms,
                 LIST_TARGET if n in TARGET_LEVELS else None, op="list after a write",
                 **common),
        make_row(f"mgmt_show_{n}", show_ms, bulk_ms, None, op="show",
                 libvirt_lookup_info_ms=round(median(one_ms) or 0.0, 3), **common),
    ]


if __name__ == "__main__":
    from bench.runner import main

    sys.exit(main(["--only", "mgmt_plane", *sys.argv[1:]]))
