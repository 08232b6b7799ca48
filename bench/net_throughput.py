"""Guest to host throughput: the vmops network against a user-mode NIC.

    python -m bench --only net_throughput [--quick]  (or: python -m bench.net_throughput)

Two guests of the same image from one service on a bridge of its own
(bench/bridged.py): one on the vmops network, one with a QEMU user-mode NIC.
Each runs a user-data script that sends ``dd if=/dev/zero`` output through
busybox ``nc`` to a TCP port on the host, again and again: the bridge guest
to the bridge's address, the user-mode guest to the slirp gateway 10.0.2.2
(which QEMU turns into a connection to the host's 127.0.0.1).

The host listens on one side's port only while it takes a sample (a guest
retries every 200 ms while refused), so the two never send at once; the
sides alternate, rotating which goes first. A sample is one connection,
from its accept to its last byte, on the host (bench/netprobe.py). The
first transfer of each guest is a warm-up and is not counted.

The row's ms columns are the time of one transfer (bridge = "vmops", user =
"baseline"); ``bridge_mib_per_s``, ``user_mib_per_s`` and ``rate_ratio``
(bridge / user, higher is better) are the rates. No target.
"""

from __future__ import annotations

import sys
import textwrap
from statistics import median

from bench import session
from bench.common import Row, alternate, make_row
from bench.netprobe import MIB, Transfer, free_port, receive_one

BLOCK = 64 * 1024
SLIRP_HOST = "10.0.2.2"
TRANSFER_TIMEOUT_S = 180.0


def sender_script(host: str, port: int, count: int, block: int = BLOCK) -> str:
    """The guest's user-data: send ``count`` blocks of zeros to host:port at
    every connection the host accepts, forever."""
    return textwrap.dedent(f"""\
        #!/bin/sh
        # vmops bench: {count * block} bytes to {host}:{port} whenever it listens
        while :; do
            dd if=/dev/zero bs={block} count={count} 2>/dev/null | nc {host} {port} 2>/dev/null
            usleep 200000
        done
        """)


def rate_summary(bridge: list[Transfer], user: list[Transfer]) -> dict[str, float | None]:
    """Median rates of each side (MiB/s) and their ratio, bridge / user."""
    b = median(t.mib_per_s for t in bridge) if bridge else None
    u = median(t.mib_per_s for t in user) if user else None
    return {"bridge_mib_per_s": None if b is None else round(b, 1),
            "user_mib_per_s": None if u is None else round(u, 1),
            "rate_ratio": round(b / u, 3) if b and u else None}


def run(quick: bool) -> list[Row]:
    s = session.get()
    br = s.bridged
    svc = br.svc
    # Under TCG a guest sends ~1 MiB/s (its CPU is the limit): small sizes.
    count = 16 if quick else 64  # 1 MiB, 4 MiB
    reps = 2 if quick else 5
    nbytes = count * BLOCK
    ports = {"bridge": free_port(br.gateway), "user": free_port("127.0.0.1")}
    listen = {"bridge": br.gateway, "user": "127.0.0.1"}
    targets = {"bridge": br.gateway, "user": SLIRP_HOST}
    ids = []
    samples: dict[str, list[Transfer]] = {"bridge": [], "user": []}
    try:
        for side, network in (("bridge", "vmops"), ("user", "user")):
            script = sender_script(targets[side], ports[side], count)
            ids.append(svc.post_server(
                f"tp-{side}", user_data=script.encode(), network=network,
                fixed_ip=br.fresh_ip() if network == "vmops" else None))
        for side in ("bridge", "user"):
            svc.wait_built(f"tp-{side}")

        def take(side: str, keep: bool) -> None:
            t = receive_one(listen[side], ports[side], nbytes, TRANSFER_TIMEOUT_S)
            if keep:
                samples[side].append(t)

        take("bridge", keep=False)
        take("user", keep=False)
        alternate(reps, lambda _i: take("bridge", True), lambda _i: take("user", True))
    finally:
        for server_id in ids:
            svc.destroy(server_id)
    bridge_ms = [t.seconds * 1000.0 for t in samples["bridge"]]
    user_ms = [t.seconds * 1000.0 for t in samples["user"]]
    return [make_row(f"guest_to_host_{nbytes // MIB}MiB_bridge_vs_user", bridge_ms, user_ms,
                     None, transfer_bytes=nbytes,
                     **rate_summary(samples["bridge"], samples["user"]))]


if __name__ == "__main__":
    from bench.runner import main

    sys.exit(main(["--only", "net_throughput", *sys.argv[1:]]))
