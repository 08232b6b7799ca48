"""API latency with many defined instances, against one bulk libvirt call.

    python -m bench.api [--quick]

What ``openstack server list`` and ``server show`` call (``GET
/v2.1/servers/detail``, ``GET /v2.1/servers/{id}``) and a Prometheus scrape
(``GET /metrics``), over TCP with the token and a kept-alive connection, at
10 and 200 defined (stopped) instances (10 and 50 with ``--quick``).
Baseline: one ``getAllDomainStats`` (the flags vmops' driver uses) on the
same libvirt connection, which returns every domain's state, CPU, memory,
disks and NICs at once. Target: at most 1.5 times the baseline, and a number
of libvirt calls per request that does not grow with the instances.

vmops cannot hold an instance without booting it through the API, so the
instances are made as a spawn then ``stop --hard`` leaves them: a record in
vmops' store and a domain defined by vmops' driver from
``Compute.domain_spec`` (no disk files: list, show and a scrape of a stopped
domain read none). The API runs in a child process (its own embedded
libvirt root), from vmops' own Routes and server on a real socket, with the
driver's libvirt connection wrapped to count every call made through it and
through the domain objects it returns.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Row, Target, alternate, make_row, ms_since, now, remove_tree, short_tmpdir

TARGET = Target(1.5)
TOKEN = "bench-token"


def run(quick: bool) -> list[Row]:
    """Measure in a child process, so its embedded libvirt root is its own."""
    proc = subprocess.run([sys.executable, "-m", "bench.api", "--measure",
                           *(["--quick"] if quick else [])],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.api --measure exited {proc.returncode}: "
                           f"{proc.stderr[-2000:]}")
    rows: list[Row] = json.loads(proc.stdout.strip().splitlines()[-1])
    return rows


# -- counting libvirt calls ---------------------------------------------------------
# Read from the domain object the client library already holds, without
# asking the hypervisor: not counted.
LOCAL_ACCESSORS = frozenset({"UUIDString", "UUID", "name", "ID"})


class Counter:
    def __init__(self) -> None:
        self.calls: list[str] = []


class Counted:
    """A libvirt object whose method calls are counted; what they return
    (domains, lists of domains, (domain, stats) pairs) is counted too."""

    def __init__(self, target: Any, counter: Counter) -> None:
        self._target = target
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if name not in LOCAL_ACCESSORS:
                self._counter.calls.append(name)
            return _wrap(attr(*args, **kwargs), self._counter)
        return call


def _wrap(value: Any, counter: Counter) -> Any:
    if type(value).__name__ == "virDomain":
        return Counted(value, counter)
    if isinstance(value, list):
        return [_wrap(v, counter) for v in value]
    if isinstance(value, tuple) and value and type(value[0]).__name__ == "virDomain":
        return (Counted(value[0], counter), *value[1:])
    return value


# -- the measuring child --------------------------------------------------------------
class Harness:
    """vmops' Routes and server over the real libvirt driver, in this process."""

    def __init__(self, state_dir: Path) -> None:
        from vmops import config
        from vmops.api.server import serve
        from vmops.hypervisor.base import Accel
        from vmops.hypervisor.libvirt.driver import LibvirtHypervisor
        from vmops.service import build

        self.port = _free_port()
        settings = config.load(state_dir, env={}, listen=f"127.0.0.1:{self.port}",
                               api_token=TOKEN, accel="tcg")
        self.settings = settings
        self.counter = Counter()
        self.raw_conn: Any = None
        self.hv = LibvirtHypervisor(settings.effective_libvirt_uri, Accel.TCG,
                                    wrap_connection=self._counted)
        self.hv.connect()
        engine = build(settings, hypervisor=self.hv)
        self.store = engine.store
        self.compute = engine.compute
        self.compute.background_actions = True
        self.servers = serve(engine.routes().router(), settings.api_socket, settings.listen,
                             TOKEN)
        self.http = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        self.ids: list[str] = []

    def _counted(self, conn: Any) -> Counted:
        """The driver's connection, counted; the raw one is kept for the baseline."""
        self.raw_conn = conn
        return Counted(conn, self.counter)

    def close(self) -> None:
        self.http.close()
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()
        for instance_id in self.ids:
            self.hv.undefine(instance_id)
        self.hv.close()
        self.store.close()

    def grow_to(self, n: int) -> None:
        """Instances as a spawn then stop --hard leaves them, minus disk files."""
        from tests import records
        from vmops.compute.names import generate_mac

        while len(self.ids) < n:
            instance_id = str(uuid.uuid4())
            inst = self.store.add_instance(records.instance(
                f"api-{len(self.ids)}", id=instance_id, image_id="bench-image",
                macs=(generate_mac(),), instance_dir=self.settings.instances_dir / instance_id))
            self.hv.define(self.compute.domain_spec(inst))
            self.ids.append(instance_id)

    def get(self, path: str) -> bytes:
        self.http.request("GET", path, headers={"X-Auth-Token": TOKEN})
        resp = self.http.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: {resp.status} {body[:200]!r}")
        return body

    def calls_of(self, path: str) -> list[str]:
        self.counter.calls.clear()
        self.get(path)
        return list(self.counter.calls)

    def bulk(self) -> int:
        from vmops.hypervisor.libvirt.driver import BULK_STATS

        return len(self.raw_conn.getAllDomainStats(BULK_STATS, 0))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


REQUESTS: dict[str, Callable[[list[str], int], str]] = {
    "server_list": lambda ids, i: "/v2.1/servers/detail",
    "server_show": lambda ids, i: f"/v2.1/servers/{ids[(i * 7) % len(ids)]}",
    "metrics": lambda ids, i: "/metrics",
}


def measure_level(h: Harness, n: int, reps: int, judged: bool) -> list[Row]:
    """One number of instances; ``judged``: the level the target applies to
    (the others show how the numbers grow)."""
    h.grow_to(n)
    samples: dict[str, list[float]] = {name: [] for name in (*REQUESTS, "bulk")}

    def side(name: str) -> Callable[[int], None]:
        def go(i: int) -> None:
            t0 = now()
            if name == "bulk":
                assert h.bulk() == n
            else:
                h.get(REQUESTS[name](h.ids, i))
            samples[name].append(ms_since(t0))
        return go

    sides = [side(name) for name in samples]
    for warm in sides:
        warm(0)
    for values in samples.values():
        values.clear()
    alternate(reps, *sides)
    rows = []
    for name, path_of in REQUESTS.items():
        calls = h.calls_of(path_of(h.ids, 1))
        rows.append(make_row(f"api_{name}_{n}", samples[name], samples["bulk"],
                             TARGET if judged else None, instances=n,
                             libvirt_calls=len(calls), libvirt_call_names=sorted(set(calls))))
    return rows


def measure(quick: bool) -> list[Row]:
    levels = (10, 50) if quick else (10, 200)
    reps = 15 if quick else 40
    state_dir = short_tmpdir("api")
    h = None
    try:
        h = Harness(state_dir)
        rows = [row for n in levels
                for row in measure_level(h, n, reps, judged=n == levels[-1])]
    finally:
        if h is not None:
            h.close()
        remove_tree(state_dir)
    return judge_growth(rows)


def judge_growth(rows: list[Row]) -> list[Row]:
    """A row passes only if its request makes no more libvirt calls than at
    the smallest number of instances."""
    fewest: dict[str, int] = {}
    for row in sorted(rows, key=lambda r: r["instances"]):
        op = row["scenario"].rsplit("_", 1)[0]
        fewest.setdefault(op, row["libvirt_calls"])
        grows = row["libvirt_calls"] > fewest[op]
        row["libvirt_calls_grow"] = grows
        if grows and row["passed"] is not None:
            row["passed"] = False
    return rows


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    if "--measure" in argv:
        started = time.monotonic()
        rows = measure(quick)
        print(f"measured in {time.monotonic() - started:.1f}s", file=sys.stderr)
        print(json.dumps(rows))
        return 0
    for row in run(quick):
        print(f"{row['scenario']:<24} vmops {row['vmops_median_ms']:>8} ms  "
              f"bulk {row['baseline_median_ms']:>8} ms  ratio {row['ratio']}  "
              f"libvirt calls {row['libvirt_calls']:>3}  "
              f"{ {True: 'PASS', False: 'FAIL', None: '-'}[row['passed']] }")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
