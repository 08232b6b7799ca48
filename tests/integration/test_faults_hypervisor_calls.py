"""Fault injection: the hypervisor fails at each call a verb makes.

For every verb, the calls it makes on a clean run are first recorded on the
fake hypervisor (``FakeHypervisor.calls``), at collection time, so a verb
that starts making a new call gets a test for it without anyone writing
one. Then each (verb, call) is its own test: that call fails once, and the
three things issue #15 names are checked:

- compute keeps working: a new instance spawns and is destroyed, and the
  failed one can be destroyed;
- the record says the truth: no task state left set, no task lock held, and
  either the state the hypervisor reports or ERROR with a fault;
- nothing is left behind for instances that are gone (domain, instance
  directory, console socket, capture, port and forward rows), while the
  instance no verb touched keeps its record, domain and files.

Fake hypervisor, real disks (qemu-img) and records, no guests: fast enough
for the default run (``pytest -m faults`` runs this group alone).
"""

from __future__ import annotations

import subprocess
import tempfile
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmops import config
from vmops.compute import states
from vmops.compute.manager import Compute, SpawnRequest
from vmops.console.fake import FakeConsole
from vmops.disks.cache import ImageCache
from vmops.errors import HypervisorError, InstanceNotFound
from vmops.hypervisor.fake import FakeHypervisor
from vmops.service import build
from vmops.store import Instance, Port, PortForward, Store

pytestmark = [pytest.mark.integration, pytest.mark.faults]

VICTIM = "web1"
BYSTANDER = "keep"
PROBE = "probe"


class SocketCapture(FakeConsole):
    """FakeConsole that also makes the console socket file, standing in for
    QEMU (which serves it), so the test can see whether teardown removes it."""

    def start_capture(self, socket: Path, log_dir: Path, max_bytes: int) -> int:
        socket.touch()
        return super().start_capture(socket, log_dir, max_bytes)


@dataclass
class Env:
    settings: config.Settings
    store: Store
    hv: FakeHypervisor
    capture: SocketCapture
    compute: Compute
    cache: ImageCache

    def spawn(self, name: str) -> Instance:
        return self.compute.create(SpawnRequest(name, "base", "m1.tiny"), background=False)


def _make_env(tmp: Path) -> Env:
    settings = config.load(tmp / "state", env={}, shutdown_retry_interval=1)
    hv = FakeHypervisor()
    capture = SocketCapture()
    engine = build(settings, hypervisor=hv, capture=capture)
    store, compute = engine.store, engine.compute
    base = tmp / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    cache = engine.catalog.cache
    engine.catalog.import_image("base", str(base), background=False)
    return Env(settings, store, hv, capture, compute, cache)


@dataclass(frozen=True)
class Verb:
    """How to bring the victim to the state the verb starts from, and the verb."""

    prepare: Callable[[Env], None]
    act: Callable[[Env], object]


def _spawned(*then: str) -> Callable[[Env], None]:
    def prepare(env: Env) -> None:
        env.spawn(VICTIM)
        for action in then:
            getattr(env.compute, action)(VICTIM)
        # A forward, so the check that none is left behind has one to look for.
        env.store.add_port_forward(PortForward(
            str(uuidlib.uuid4()), env.compute.instance(VICTIM).id, "tcp", "0.0.0.0", 8080, 80))
    return prepare


def _resized(env: Env) -> None:
    _spawned()(env)
    env.compute.resize(VICTIM, "m1.small")


VERBS: dict[str, Verb] = {
    "spawn": Verb(lambda env: None, lambda env: env.spawn(VICTIM)),
    "destroy": Verb(_spawned(), lambda env: env.compute.destroy(VICTIM)),
    "stop": Verb(_spawned(), lambda env: env.compute.stop(VICTIM)),
    "stop-hard": Verb(_spawned(), lambda env: env.compute.stop(VICTIM, hard=True)),
    "start": Verb(_spawned("stop"), lambda env: env.compute.start(VICTIM)),
    "reboot": Verb(_spawned(), lambda env: env.compute.reboot(VICTIM)),
    "reboot-hard": Verb(_spawned(), lambda env: env.compute.reboot(VICTIM, hard=True)),
    "reboot-hard-suspended": Verb(_spawned("suspend"),
                                  lambda env: env.compute.reboot(VICTIM, hard=True)),
    "pause": Verb(_spawned(), lambda env: env.compute.pause(VICTIM)),
    "unpause": Verb(_spawned("pause"), lambda env: env.compute.unpause(VICTIM)),
    "suspend": Verb(_spawned(), lambda env: env.compute.suspend(VICTIM)),
    "resume": Verb(_spawned("suspend"), lambda env: env.compute.resume(VICTIM)),
    "rebuild": Verb(_spawned(), lambda env: env.compute.rebuild(VICTIM, "base")),
    "snapshot": Verb(_spawned(), lambda env: env.compute.snapshot(VICTIM, "snap", env.cache)),
    "resize": Verb(_spawned(), lambda env: env.compute.resize(VICTIM, "m1.small")),
    "confirm-resize": Verb(_resized, lambda env: env.compute.confirm_resize(VICTIM)),
    "revert-resize": Verb(_resized, lambda env: env.compute.revert_resize(VICTIM)),
    "rescue": Verb(_spawned(), lambda env: env.compute.rescue(VICTIM)),
    "unrescue": Verb(_spawned("rescue"), lambda env: env.compute.unrescue(VICTIM)),
    "crash-dump": Verb(_spawned(), lambda env: env.compute.trigger_crash_dump(VICTIM)),
}


def _prepared(tmp: Path, verb: str) -> Env:
    env = _make_env(tmp)
    env.spawn(BYSTANDER)
    VERBS[verb].prepare(env)
    env.hv.calls.clear()
    return env


def _calls_of(verb: str) -> list[str]:
    """The hypervisor calls ``verb`` makes when nothing fails."""
    with tempfile.TemporaryDirectory() as tmp:
        env = _prepared(Path(tmp), verb)
        VERBS[verb].act(env)
        return list(env.hv.calls)


def _cases() -> list[object]:
    cases: list[object] = []
    for verb in VERBS:
        calls = _calls_of(verb)
        assert calls, f"{verb} makes no hypervisor call: the recording is broken"
        for index, call in enumerate(calls):
            skip = calls[:index].count(call)  # fail this call, not an earlier one
            cases.append(pytest.param(verb, call, skip, id=f"{verb}-{index}-{call}"))
    return cases


# -- the three checks ---------------------------------------------------------------
def _says_the_truth(env: Env, record: Instance) -> None:
    assert record.task_state is None, f"task state left set: {record.task_state}"
    assert env.compute.tasks.current(record.id) is None, "the task lock is still held"
    if record.vm_state == states.ERROR:
        assert record.fault, "ERROR without a reason"
        return
    domain = env.hv.domains.get(record.id)
    assert domain is not None, f"recorded {record.vm_state}, but there is no domain"
    assert (record.vm_state, record.power_state) == (
        states.vm_state_of(domain.state, record.vm_state), domain.state.value), \
        f"the record says {record.vm_state}/{record.power_state}, the domain is {domain.state}"


def _nothing_left_of(env: Env, instance_id: str) -> None:
    left = {
        "domain": instance_id in env.hv.domains,
        "instance directory": (env.settings.instances_dir / instance_id).exists(),
        "console socket": (env.settings.run_dir / f"{instance_id}.sock").exists(),
        "console capture": env.settings.instances_dir / instance_id in env.capture.running,
        "ports": bool(env.store.ports(instance_id)),
        "port forwards": bool(env.store.port_forwards(instance_id)),
    }
    assert not any(left.values()), f"left behind: {[k for k, v in left.items() if v]}"


def _bystander_intact(env: Env, bystander: Instance, ports: list[Port]) -> None:
    record = env.store.instance(bystander.id)
    assert (record.vm_state, record.task_state) == (states.ACTIVE, None)
    assert bystander.id in env.hv.domains
    assert (env.settings.instances_dir / bystander.id / "root.qcow2").is_file()
    assert (env.settings.run_dir / f"{bystander.id}.sock").exists()
    assert env.store.ports(bystander.id) == ports


def _images_consistent(env: Env) -> None:
    """Every image file has its record and every record its file (a failed
    snapshot leaves neither), and none is stuck saving."""
    images = env.store.images()
    assert all(i.status == "active" for i in images), [(i.name, i.status) for i in images]
    files = {p for p in env.settings.images_dir.rglob("*")
             if p.is_file() and ".locks" not in p.parts}  # the cache's own lock files
    assert files == {Path(i.path) for i in images}


def _record(env: Env, name: str) -> Instance | None:
    try:
        return env.store.instance(name)
    except InstanceNotFound:
        return None


@pytest.mark.parametrize(("verb", "call", "skip"), _cases())
def test_hypervisor_failure_at_each_call(tmp_path: Path, verb: str, call: str,
                                         skip: int) -> None:
    env = _prepared(tmp_path, verb)
    bystander = env.store.instance(BYSTANDER)
    bystander_ports = env.store.ports(bystander.id)
    before = _record(env, VICTIM)
    reason = f"injected at {call} #{skip}"
    env.hv.fail_next(call, HypervisorError(reason=reason), skip=skip)
    raised: HypervisorError | None = None
    try:
        VERBS[verb].act(env)
    except HypervisorError as exc:
        raised = exc
    assert env.hv.calls.count(call) > skip, "the call to fail was never made"

    victim = _record(env, VICTIM)
    victim_id = victim.id if victim else before.id if before else None
    assert victim_id is not None, "the spawn left no record to say it failed"
    if victim is None:
        _nothing_left_of(env, victim_id)
    else:
        _says_the_truth(env, victim)
    # The failure is not swallowed: the caller or the record hears of it.
    assert raised is not None or (victim is not None and reason in victim.fault)

    probe = env.spawn(PROBE)
    assert (probe.vm_state, probe.task_state) == (states.ACTIVE, None), probe.fault
    env.compute.destroy(PROBE)
    _nothing_left_of(env, probe.id)
    env.compute.destroy(VICTIM)
    _nothing_left_of(env, victim_id)
    _bystander_intact(env, bystander, bystander_ports)
    _images_consistent(env)
    assert env.hv.list_uuids() == [bystander.id]
