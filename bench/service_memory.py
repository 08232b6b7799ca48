"""The service's memory as it makes records without guests (issue #17's
"Service flatness" breakdown; not a scenario of the runner).

    python -m bench.service_memory [--records 1000] [--source DIR]

A fresh ``vmops serve`` (bench/vmopsd.py: TCG, user-mode NICs, its own
state directory), the test image imported, then, one second after each
step, the service's RSS and PSS from ``/proc/PID/smaps_rollup``:

- started: the image imported, no instance;
- 10 instances made with ``"vmops:start": false`` (the first defines load
  libvirt's QEMU capabilities and every code path);
- ``--records`` more made the same way (``define_many``: 100 per request,
  polling the unfiltered list until all are SHUTOFF), as ``mgmt_plane``
  and ``service_flat`` make theirs;
- after one more unfiltered list;
- after every instance is destroyed.

No guest boots: no guest lock needed. ``--source`` runs the service from
another checkout of vmops (e.g. ``git archive COMMIT`` unpacked), to
compare two commits on the same machine state. Prints one line per step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.common import REPO, test_image
from bench.host_memory import memory_of
from bench.vmopsd import VmopsService


def _show(svc: VmopsService, step: str) -> None:
    assert svc.proc is not None
    time.sleep(1.0)  # as service_flat: let the last requests' threads end
    mem = memory_of(svc.proc.pid)
    print(f"{time.strftime('%H:%M:%S')} {step}: RSS {mem.rss_kib / 1024:.1f} MiB, "
          f"PSS {mem.pss_kib / 1024:.1f} MiB", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.service_memory",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--source", type=Path, default=REPO,
                        help="the vmops checkout to run the service from")
    args = parser.parse_args(argv)
    svc = VmopsService(source=args.source.resolve())
    try:
        svc.start()
        svc.ensure_image(test_image())
        _show(svc, "started")
        svc.define_many("warm-", 10)
        _show(svc, "10 instances")
        svc.define_many("rec-", args.records)
        _show(svc, f"{args.records + 10} instances")
        svc.client.get("/servers/detail")
        _show(svc, "listed")
        svc.destroy_all()
        _show(svc, "all destroyed")
    finally:
        svc.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
