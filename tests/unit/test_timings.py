"""vmops times its own steps (issue #17): the recorder, the steps each verb
records on the fake hypervisor (in order, the step a failed verb failed
in), the INFO line per verb, ``vmops:timings`` in the server view (with
X-Vmops-Extra only) and ``vmops show``'s lines. Durations are only checked
to be non-negative numbers: nothing here depends on how fast anything is."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests import records
from tests.unit.test_api import EXTRA, Api
from tests.unit.test_api_nova_contract import SHOW_21
from vmops import config
from vmops.cli.main import _timing_items
from vmops.compute import crash_points, spawn, states
from vmops.compute.manager import Compute, SpawnRequest
from vmops.compute.timings import Finished, Timings, active
from vmops.console.fake import FakeConsole
from vmops.disks import instance_disks, qemu_img
from vmops.errors import HypervisorError
from vmops.hypervisor.fake import FakeHypervisor
from vmops.service import build
from vmops.store import DiskRecord, Flavor, Instance

BOOT = ["start-paused", "capture-connect", "resume-vcpus"]  # the parts of booting
SPAWN = ["record", "capture", "disks", "define", *BOOT, "boot", "finish"]
ACTION = ["begin", "work", "finish"]
BOOTING_ACTION = ["begin", *BOOT, "work", "finish"]


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _names(timings: Mapping[str, Any]) -> list[str]:
    return [s["step"] for s in timings["steps"]]


def _check_numbers(timings: Mapping[str, Any]) -> None:
    assert isinstance(timings["total_ms"], float) and timings["total_ms"] >= 0
    for s in timings["steps"]:
        assert isinstance(s["ms"], float) and s["ms"] >= 0, s


# -- the recorder --------------------------------------------------------------------
def test_steps_are_named_after_their_crash_points_and_timed_in_order() -> None:
    clock = Clock()
    t = Timings("spawn", crash_points.SPAWN_STEPS, clock=clock)
    clock.now += 0.002
    t.step("after-record")
    clock.now += 0.5
    t.step("after-capture")
    clock.now += 0.25
    done = t.finish()
    assert done == {"verb": "spawn", "result": "ok", "total_ms": 752.0, "steps": [
        {"step": "record", "ms": 2.0}, {"step": "capture", "ms": 500.0},
        {"step": "finish", "ms": 250.0}]}
    assert t.finish() is done  # once
    assert t.summary() == "ok in 752.0 ms: record 2.0 ms, capture 500.0 ms, finish 250.0 ms"


def test_a_failure_names_the_step_it_happened_in_then_the_rollback() -> None:
    clock = Clock()
    t = Timings("spawn", crash_points.SPAWN_STEPS, clock=clock)
    t.step("after-record")
    t.step("after-capture")
    clock.now += 1.0
    t.failed()
    t.failed()  # only the first counts
    clock.now += 0.1
    done = t.finish()
    assert done["result"] == "error" and done["failed_step"] == "disks"
    assert done["steps"][2] == {"step": "disks", "ms": 1000.0, "failed": True}
    assert _names(done) == ["record", "capture", "disks", "rollback"]
    assert "disks 1000.0 ms (failed)" in t.summary()


def test_a_failure_past_the_known_steps_is_in_work() -> None:
    t = Timings("odd-verb")
    t.failed()
    assert t.finish()["failed_step"] == "work"


def test_parts_of_a_step_do_not_move_which_step_a_failure_is_in() -> None:
    t = Timings("start", crash_points.steps_of("start"))
    t.step("after-begin")
    t.part("start-paused")
    t.failed()
    done = t.finish()
    assert _names(done) == ["begin", "start-paused", "work", "rollback"]
    assert done["failed_step"] == "work"


def test_crash_points_mark_only_the_current_verb() -> None:
    t = Timings("stop", crash_points.steps_of("stop"))
    crash_points.reached("stop", "after-begin")  # no verb timed here: nothing
    with active(t):
        crash_points.reached("attach-volume", "after-attach")  # another verb's step
        crash_points.reached("stop", "after-begin")
    crash_points.reached("stop", "after-work")  # after the verb: not its
    assert _names(t.finish()) == ["begin", "finish"]


def test_what_a_verb_leaves_is_compact_and_shows_as_the_dict_it_was() -> None:
    """Kept per instance (issue #17): no dict per step; the view's dict is
    made when asked for, and equals what the recorder gave before."""
    def run(fail: bool) -> Finished:
        clock = Clock()
        t = Timings("start", crash_points.steps_of("start"), clock=clock)
        clock.now += 0.001
        t.step("after-begin")
        clock.now += 0.0125
        if fail:
            t.failed()
        return t.finish()

    ok, again, failed = run(False), run(False), run(True)
    assert ok == {"verb": "start", "result": "ok", "total_ms": 13.5, "steps": [
        {"step": "begin", "ms": 1.0}, {"step": "finish", "ms": 12.5}]}
    assert failed.to_json() == {
        "verb": "start", "result": "error", "total_ms": 13.5, "failed_step": "work",
        "steps": [{"step": "begin", "ms": 1.0}, {"step": "work", "ms": 12.5, "failed": True},
                  {"step": "rollback", "ms": 0.0}]}
    assert json.loads(json.dumps(dict(failed))) == failed
    assert "failed_step" not in ok and ok.get("failed_step") is None
    assert ok._names is again._names  # one tuple for every verb with the same steps
    assert not hasattr(ok, "__dict__") and not any(isinstance(v, dict) for v in (
        ok._names, ok._ms))


# -- the verbs, on the fake hypervisor ----------------------------------------------
@pytest.fixture
def compute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Compute]:
    """A compute on the fake hypervisor whose disks are stood in for (an empty root file)."""
    settings = config.load(tmp_path / "state", env={}, shutdown_retry_interval=1)
    engine = build(settings, hypervisor=FakeHypervisor(), capture=FakeConsole())
    store = engine.store
    store.add_image(records.image("tiny", id="img-1", virtual_size=1 << 20,
                                  path=str(tmp_path / "tiny.qcow2")))
    made = engine.compute

    def root_only(settings: Any, inst: Instance, image: Any, admin_password: Any,
                  inst_dir: Path, *args: Any) -> list[DiskRecord]:
        root = inst_dir / "root.qcow2"  # an empty file: nothing reads it
        root.parent.mkdir(parents=True, exist_ok=True)
        root.touch()
        return [DiskRecord("root", str(root), "qcow2", "vda")]

    monkeypatch.setattr(spawn, "create_disks", root_only)
    yield made
    store.close()


def _spawn(compute: Compute, name: str = "web1") -> str:
    inst = compute.create(SpawnRequest(name=name, image="tiny", flavor="m1.tiny"),
                          background=False)
    return inst.id


def test_spawn_records_its_steps_in_order_and_logs_one_line(
        compute: Compute, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vmops.compute.manager"):
        inst_id = _spawn(compute)
    timings = compute.last_timings[inst_id]
    assert (timings["verb"], timings["result"]) == ("spawn", "ok")
    assert _names(timings) == SPAWN and "failed_step" not in timings
    _check_numbers(timings)
    lines = [r.getMessage() for r in caplog.records if "timings:" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("timings: spawn of web1: ok in ")
    assert all(f"{step} " in lines[0] for step in SPAWN)


def test_a_failed_spawn_records_the_step_it_failed_at(
        compute: Compute, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_disks(*args: Any, **kw: Any) -> list[Any]:
        raise HypervisorError(reason="no room for the disks")

    monkeypatch.setattr(spawn, "create_disks", no_disks)
    inst_id = _spawn(compute)
    assert compute.store.instance(inst_id).vm_state == states.ERROR
    timings = compute.last_timings[inst_id]
    assert (timings["result"], timings["failed_step"]) == ("error", "disks")
    assert _names(timings) == ["record", "capture", "disks", "rollback"]
    assert [s.get("failed", False) for s in timings["steps"]] == [False, False, True, False]
    _check_numbers(timings)


@pytest.mark.parametrize(("verb", "action"), [
    (lambda c, i: c.stop(i, hard=True), "stop"), (lambda c, i: c.pause(i), "pause"),
    (lambda c, i: c.suspend(i), "suspend"), (lambda c, i: c.reboot(i), "reboot"),
    (lambda c, i: c.reboot(i, hard=True), "hard-reboot")])
def test_each_power_verb_keeps_its_own_steps(compute: Compute, verb: Any, action: str) -> None:
    inst_id = _spawn(compute)
    verb(compute, inst_id)
    timings = compute.last_timings[inst_id]
    assert (timings["verb"], timings["result"]) == (action, "ok")
    # A soft reboot boots again (the fake's guest obeys the power button); a
    # hard one of a running guest is libvirt's reset.
    assert _names(timings) == (BOOTING_ACTION if action == "reboot" else ACTION)
    _check_numbers(timings)


def test_the_way_back_verbs_are_timed_too(compute: Compute) -> None:
    inst_id = _spawn(compute)
    for there, back, steps in (("stop", "start", BOOTING_ACTION), ("pause", "unpause", ACTION),
                               ("suspend", "resume", BOOTING_ACTION)):
        getattr(compute, there)(inst_id)
        getattr(compute, back)(inst_id)
        timings = compute.last_timings[inst_id]
        assert (timings["verb"], _names(timings)) == (back, steps)


def test_a_failed_power_verb_records_work_as_the_failed_step(compute: Compute) -> None:
    inst_id = _spawn(compute)
    hv = compute.hv
    assert isinstance(hv, FakeHypervisor)
    hv.fail_next("pause", HypervisorError(reason="the fake refuses"))
    with pytest.raises(HypervisorError):
        compute.pause(inst_id)
    timings = compute.last_timings[inst_id]
    assert (timings["verb"], timings["result"], timings["failed_step"]) == \
        ("pause", "error", "work")
    assert _names(timings) == ["begin", "work", "rollback"]


def test_a_refused_verb_keeps_the_last_verbs_timings(compute: Compute) -> None:
    inst_id = _spawn(compute)
    with pytest.raises(Exception, match="unpause"):
        compute.unpause(inst_id)  # it is not paused: refused before it began
    assert compute.last_timings[inst_id]["verb"] == "spawn"


def test_destroy_forgets_the_timings_or_keeps_those_of_its_failure(compute: Compute) -> None:
    inst_id = _spawn(compute)
    hv = compute.hv
    assert isinstance(hv, FakeHypervisor)
    hv.fail_next("undefine", HypervisorError(reason="the fake keeps it"))
    with pytest.raises(HypervisorError):
        compute.destroy(inst_id)
    timings = compute.last_timings[inst_id]
    assert (timings["verb"], timings["failed_step"]) == ("destroy", "teardown")
    assert _names(timings) == ["mark", "teardown", "rollback"]
    compute.destroy(inst_id)
    assert inst_id not in compute.last_timings


def test_a_server_deleted_while_building_leaves_no_timings_behind(
        compute: Compute, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its spawn removes the record; an entry kept for it then would stay
    for the service's life (nothing else drops it): one per such server."""
    entered, release = threading.Event(), threading.Event()
    made = spawn.create_disks

    def slow_disks(*args: Any, **kw: Any) -> list[DiskRecord]:
        entered.set()
        release.wait(10)
        return made(*args, **kw)

    monkeypatch.setattr(spawn, "create_disks", slow_disks)
    inst = compute.create(SpawnRequest(name="web1", image="tiny", flavor="m1.tiny"))
    assert entered.wait(10)
    compute.delete(inst.id)  # the build stops at its next step, then the server goes
    release.set()
    assert compute.wait_idle(inst.id, 10)
    assert [i.id for i in compute.store.instances()] == []
    assert inst.id not in compute.last_timings


def test_resize_records_the_steps_inside_its_work(compute: Compute,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(instance_disks, "copy_whole", lambda src, dest: dest.touch())
    monkeypatch.setattr(qemu_img, "resize", lambda path, fmt, size: None)
    compute.store.add_flavor(Flavor("rs-big", "rs.big", 1024, 2, 2, 0))
    inst_id = _spawn(compute)
    compute.resize(inst_id, "rs.big")
    timings = compute.last_timings[inst_id]
    assert _names(timings) == ["begin", "record", "copy", "grow", "define", *BOOT, "work",
                               "finish"]  # it ran: it runs again, resized


# -- the API and the CLI -------------------------------------------------------------
def test_show_has_vmops_timings_with_the_extra_header_only(api: Api) -> None:
    inst = api.add_instance("web1")
    path = f"/v2.1/servers/{inst.id}"
    assert api.post(f"{path}/action", {"pause": None}).status == 202
    assert api.compute.wait_idle(inst.id, 30)
    without = api.get(path).body["server"]
    assert set(without) == SHOW_21 - {"progress"}  # Nova's keys (paused: no progress)
    extra = api.get(path, headers=EXTRA).body["server"]  # checked against the OpenAPI
    assert {k: v for k, v in extra.items() if not k.startswith("vmops:")} == without
    timings = extra["vmops:timings"]
    assert (timings["verb"], timings["result"], _names(timings)) == ("pause", "ok", ACTION)
    listed = api.get("/v2.1/servers/detail", headers=EXTRA).body["servers"]
    assert "vmops:timings" not in listed[0]  # show only


def test_vmops_show_prints_the_steps() -> None:
    timings = {"verb": "spawn", "result": "error", "total_ms": 12.25, "failed_step": "disks",
               "steps": [{"step": "record", "ms": 1.0},
                         {"step": "disks", "ms": 11.0, "failed": True},
                         {"step": "rollback", "ms": 0.25}]}
    assert _timing_items(timings) == [
        ("last verb", "spawn (error, failed in disks) in 12.2 ms"),
        ("  step record", "1.0 ms"), ("  step disks", "11.0 ms (failed)"),
        ("  step rollback", "0.2 ms")]
    assert _timing_items(None) == []


def test_rebuild_is_timed_and_boots_again(compute: Compute) -> None:
    inst_id = _spawn(compute)
    compute.rebuild(inst_id, "tiny")
    timings = compute.last_timings[inst_id]
    assert (timings["verb"], timings["result"]) == ("rebuild", "ok")
    assert _names(timings) == BOOTING_ACTION
