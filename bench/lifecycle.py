"""Power operations: vmops' API against the same libvirt call made directly.

    python -m bench --only lifecycle [--quick]     (or: python -m bench.lifecycle)

One running vmops instance and one running baseline domain (vmops' domain
XML on the bench's own embed root). Each repetition runs the sequence
pause, unpause (``QUICK_REPEAT`` times), reboot --hard (``QUICK_REPEAT``
times), stop --hard, start, suspend, resume on both, alternating which side
goes first, operation by operation. The quick verbs repeat because libvirt's
own call spreads from sample to sample (unpause's ``resume()`` 1.5 to 14 ms on
either side) by more than the 5 ms their target allows: 7 samples left their
medians to chance, 28 do not.

- vmops: ``POST /servers/{id}/action?vmops:wait=300``, answered with the
  record once the task has ended (only if that wait ran out, the record is
  polled by name every 2 ms until its task_state is empty).
- libvirt: ``suspend()``, ``resume()``, ``reset()``, ``destroy()``,
  ``create()``, ``managedSave()``, ``create()`` (restores the saved memory).

Target: pause, unpause and hard reboot, vmops <= libvirt + 5 ms (issue #17);
the others vmops <= 1.2x libvirt, or libvirt + 10 ms (an API round trip and
two record writes are a fixed cost a ratio cannot hide). The quick verbs'
rows also give ``paired_ms``: the median of each round's own difference
(vmops' sample minus libvirt's, taken one right after the other) and its
95 % interval (:func:`bench.common.paired_difference`), for information.
vmops' start and resume also start the console capture process and wait for
it to connect before the vCPUs run: that is in its time, on purpose.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

from bench import session, timings
from bench.common import Row, Target, make_row, ms_since, now, paired_difference
from bench.virt import make_disks, new_uuid, rewrite_domain_xml

TARGET = Target(1.2, slack_ms=10.0)
QUICK_TARGET = Target(1.0, slack_ms=5.0)
QUICK_OPS = ("pause", "unpause", "reboot_hard")
QUICK_REPEAT = 4
BOOT_MARK = b"VMOPS-BOOT-COMPLETE"

# (name, API action body, the libvirt call on a virDomain)
OPS: tuple[tuple[str, dict[str, Any], Callable[[Any], Any]], ...] = (
    ("pause", {"pause": None}, lambda d: d.suspend()),
    ("unpause", {"unpause": None}, lambda d: d.resume()),
    ("reboot_hard", {"reboot": {"type": "HARD"}}, lambda d: d.reset(0)),
    ("stop_hard", {"os-stop": {"vmops:hard": True}}, lambda d: d.destroy()),
    ("start", {"os-start": None}, lambda d: d.create()),
    ("suspend", {"suspend": None}, lambda d: d.managedSave(0)),
    ("resume", {"resume": None}, lambda d: d.create()),
)
# vmops' name for each operation's verb in vmops:timings.
VERBS = {"pause": "pause", "unpause": "unpause", "reboot_hard": "hard-reboot",
         "stop_hard": "stop", "start": "start", "suspend": "suspend", "resume": "resume"}


def run(quick: bool) -> list[Row]:
    s = session.get()
    svc = s.vmops
    lv = s.baseline
    tpl = s.template(config_drive=False)
    reps = 1 if quick else 7
    wd = s.workdir("lc-lv")
    disks = make_disks(tpl.disks, wd)
    dom = lv.define(rewrite_domain_xml(tpl.domain_xml, "lc-lv", new_uuid(), disks,
                                       lv.run_dir / "lc.sock"))
    server_id = None
    try:
        dom.create()
        name = "lc-0"
        server_id = svc.spawn(name)
        # Both guests booted (the baseline started first), so both save about
        # the same amount of touched memory on suspend. Not in quick mode.
        deadline = time.monotonic() + (0 if quick else 180)
        while BOOT_MARK not in svc.console_log(server_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        vmops_ms: dict[str, list[float]] = {op: [] for op, _, _ in OPS}
        lv_ms: dict[str, list[float]] = {op: [] for op, _, _ in OPS}
        steps: dict[str, list[dict[str, float]]] = {op: [] for op, _, _ in OPS}
        for _ in range(reps):
            for op, body, call in _sequence(quick):
                def vmops_side(_i: int, op: str = op, body: dict[str, Any] = body) -> None:
                    assert server_id is not None
                    t0 = now()
                    _act(svc, server_id, name, body)
                    vmops_ms[op].append(ms_since(t0))
                    # vmops' own steps of it, read after the clock stopped.
                    done = timings.steps_of(
                        svc.client.get(f"/servers/{server_id}")["server"], VERBS[op])
                    if done is not None:
                        steps[op].append(timings.phases(done, vmops_ms[op][-1]))

                def libvirt_side(_i: int, op: str = op,
                                 call: Callable[[Any], Any] = call) -> None:
                    t0 = now()
                    call(dom)
                    lv_ms[op].append(ms_since(t0))

                _one_round(len(vmops_ms[op]), vmops_side, libvirt_side)
    finally:
        lv.remove(dom)
        shutil.rmtree(wd, ignore_errors=True)
        if server_id is not None:
            svc.destroy(server_id)
    return [make_row(f"lifecycle_{op}", vmops_ms[op], lv_ms[op],
                     QUICK_TARGET if op in QUICK_OPS else TARGET, timings_verb=VERBS[op],
                     timings_steps_ms=timings.median_phases(steps[op]),
                     timings_samples=len(steps[op]),
                     paired_ms=paired_difference(vmops_ms[op], lv_ms[op])
                     if op in QUICK_OPS else None) for op, _, _ in OPS]


def _sequence(quick: bool) -> list[tuple[str, dict[str, Any], Callable[[Any], Any]]]:
    """One repetition's operations, in order: pause and unpause as pairs,
    then the hard reboot, each ``QUICK_REPEAT`` times (once when quick),
    then the rest once. Every operation leaves the guest as the next needs."""
    repeat = 1 if quick else QUICK_REPEAT
    by_name = {op[0]: op for op in OPS}
    pairs = [by_name["pause"], by_name["unpause"]] * repeat
    return pairs + [by_name["reboot_hard"]] * repeat + \
        [op for op in OPS if op[0] not in QUICK_OPS]


def _act(svc: Any, server_id: str, name: str, body: dict[str, Any]) -> None:
    """The action, until vmops says it has ended: with ``vmops:wait`` the
    answer is the record once the task is over (200 and the server); only
    a 202 (the wait ran out) needs polling the record."""
    answer = svc.client.post(f"/servers/{server_id}/action?vmops:wait=300", body)
    server = answer.get("server") if isinstance(answer, dict) else None
    if server is None or server.get("OS-EXT-STS:task_state") is not None:
        svc.wait_idle(name)
    elif server.get("vmops:fault"):
        raise RuntimeError(f"{name}: {server['vmops:fault']}")


def _one_round(done: int, first: Callable[[int], None], second: Callable[[int], None]) -> None:
    """One sample of each side; the side going first alternates by sample."""
    for side in ((first, second) if done % 2 == 0 else (second, first)):
        side(done)


if __name__ == "__main__":
    from bench.runner import main

    sys.exit(main(["--only", "lifecycle", *sys.argv[1:]]))
