"""A waited action (``?vmops:wait=SECONDS``) of a quick verb runs in the
request's own thread (issue #17): what a client sees stays what it was with
the action's own thread. Over a real socket, on the fake hypervisor."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.unit.test_api import EXTRA, TOKEN, Api
from vmops.compute import manager, states
from vmops.errors import HypervisorError

WAITED = "/v2.1/servers/web1/action?vmops:wait=30"


class Held:
    """Wraps a fake hypervisor call: it blocks until released and
    remembers the thread that made it."""

    def __init__(self, call: Callable[[str], None]) -> None:
        self.call = call
        self.entered = threading.Event()
        self.release = threading.Event()
        self.threads: list[str] = []

    def __call__(self, uuid: str) -> None:
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self.release.wait(20), "the test never released the call"
        self.call(uuid)


@pytest.fixture
def held_pause(api: Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[Held]:
    held = Held(api.hv.pause)
    monkeypatch.setattr(api.hv, "pause", held)
    yield held
    held.release.set()
    for inst in api.store.instances():
        api.compute.wait_idle(inst.id, 10)


def _exists(api: Api) -> bool:
    return any(i.name == "web1" for i in api.store.instances())


def _actions(api: Api, instance_id: str) -> list[tuple[str, str | None, str | None]]:
    return [(r["action"], r["result"], r["message"]) for r in api.store.query(
        "SELECT action, result, message FROM instance_actions WHERE instance_id = ? "
        "ORDER BY start_time", instance_id)]


def _in_background(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def test_a_waited_quick_action_runs_in_the_requests_thread(api: Api,
                                                            held_pause: Held) -> None:
    inst = api.add_instance("web1")
    held_pause.release.set()
    answer = api.post(WAITED, {"pause": None})
    assert answer.status == 200
    server = answer.body["server"]
    assert (server["status"], server["OS-EXT-STS:task_state"]) == ("PAUSED", None)
    # The HTTP server's thread for the connection made the call, not the
    # action's own thread ("pausing-web1").
    assert held_pause.threads == [held_pause.threads[0]]
    assert "process_request_thread" in held_pause.threads[0], held_pause.threads
    # Nova's instance action: recorded with the request's id, ended Success.
    row = api.store.query("SELECT request_id, result FROM instance_actions "
                          "WHERE instance_id = ?", inst.id)[0]
    assert (row["request_id"], row["result"]) == (
        answer.headers["x-openstack-request-id"], "Success")
    assert api.compute.tasks.current(inst.id) is None


@pytest.mark.parametrize(("body", "hv_call", "action"), [
    ({"pause": None}, "pause", "pause"),
    ({"reboot": {"type": "HARD"}}, "reboot_hard", "reboot"),
])
def test_a_waited_action_that_fails_answers_the_server_in_error(
        api: Api, monkeypatch: pytest.MonkeyPatch, body: dict[str, Any], hv_call: str,
        action: str) -> None:
    """As with the action's own thread: 200 with the record (its fault
    says why), the action ended Error; not the failure as the answer."""
    inst = api.add_instance("web1")

    def broken(uuid: str) -> None:
        raise HypervisorError(reason=f"the {hv_call} broke")

    monkeypatch.setattr(api.hv, hv_call, broken)
    answer = api.post(WAITED, body, headers=EXTRA)
    assert answer.status == 200, answer.body
    server = answer.body["server"]
    assert server["OS-EXT-STS:task_state"] is None
    assert f"the {hv_call} broke" in server["vmops:fault"]
    ((recorded, result, message),) = _actions(api, inst.id)
    assert (recorded, result) == (action, "Error")
    assert message is not None and f"the {hv_call} broke" in message
    assert api.compute.tasks.current(inst.id) is None
    # And the instance takes the next verb.
    monkeypatch.undo()
    assert api.post(WAITED, {"pause": None}).status == 200


def test_a_delete_while_a_waited_action_runs_is_refused_then_works(
        api: Api, held_pause: Held) -> None:
    inst = api.add_instance("web1")
    waiter, answers = _in_background(lambda: api.post(WAITED, {"pause": None}))
    assert held_pause.entered.wait(10)
    refused = api.call("DELETE", "/v2.1/servers/web1")
    assert refused.status == 409 and "pausing" in refused.fault()[1]
    assert api.store.instance(inst.id).task_state == states.PAUSING
    held_pause.release.set()
    waiter.join(10)
    (answer,) = answers
    assert answer.status == 200 and answer.body["server"]["status"] == "PAUSED"
    assert api.call("DELETE", "/v2.1/servers/web1").status == 204
    assert not _exists(api)
    rows = api.store.query("SELECT action, result FROM instance_actions WHERE "
                           "instance_id = ? ORDER BY start_time", inst.id)
    assert [(r["action"], r["result"]) for r in rows] == [("pause", "Success"),
                                                          ("delete", "Success")]


def test_a_client_that_leaves_does_not_cut_the_action_short(api: Api,
                                                            held_pause: Held) -> None:
    inst = api.add_instance("web1")
    body = json.dumps({"pause": None}).encode()
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as client:
        client.sendall(f"POST {WAITED} HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {TOKEN}\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                       "\r\n".encode() + body)
        assert held_pause.entered.wait(10)
    # Gone before the hypervisor answered: the action still ends, recorded.
    held_pause.release.set()
    assert api.compute.wait_idle(inst.id, 10)
    stored = api.store.instance(inst.id)
    assert (stored.vm_state, stored.task_state) == (states.PAUSED, None)
    assert _actions(api, inst.id) == [("pause", "Success", None)]
    # The service goes on answering.
    assert api.get("/v2.1/servers/web1").body["server"]["status"] == "PAUSED"


def test_an_unwaited_action_still_answers_202_at_once(api: Api, held_pause: Held) -> None:
    inst = api.add_instance("web1")
    # Should the action run in the request's thread, the answer would come
    # only after this release (not before, as the assertion below wants).
    timer = threading.Timer(5.0, held_pause.release.set)
    timer.start()
    try:
        answer = api.post("/v2.1/servers/web1/action", {"pause": None})
        answered_while_held = not held_pause.release.is_set()
    finally:
        timer.cancel()
        held_pause.release.set()
    assert (answer.status, answer.body) == (202, b"")
    assert answered_while_held
    assert held_pause.entered.wait(10)
    assert not any("process_request_thread" in t for t in held_pause.threads)
    assert api.compute.wait_idle(inst.id, 10)
    assert api.store.instance(inst.id).vm_state == states.PAUSED


def test_a_short_wait_that_runs_out_answers_202_and_the_action_goes_on(
        api: Api, held_pause: Held) -> None:
    inst = api.add_instance("web1")
    answer = api.post("/v2.1/servers/web1/action?vmops:wait=0.2", {"pause": None})
    assert (answer.status, answer.body) == (202, b"")
    assert api.store.instance(inst.id).task_state == states.PAUSING
    held_pause.release.set()
    assert api.compute.wait_idle(inst.id, 10)
    assert api.store.instance(inst.id).vm_state == states.PAUSED


def test_an_action_in_the_requests_thread_that_outlasts_the_wait_answers_202(
        api: Api, held_pause: Held, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in the request's thread (the wait is long enough for it) but
    longer than the wait: the answer is the 202 a run-out wait gives."""
    monkeypatch.setattr(manager, "INLINE_MIN_WAIT_S", 0.1)
    inst = api.add_instance("web1")
    timer = threading.Timer(0.5, held_pause.release.set)
    timer.start()
    try:
        answer = api.post("/v2.1/servers/web1/action?vmops:wait=0.2", {"pause": None})
    finally:
        timer.cancel()
        held_pause.release.set()
    assert (answer.status, answer.body) == (202, b"")
    assert "process_request_thread" in held_pause.threads[0]
    assert api.store.instance(inst.id).vm_state == states.PAUSED  # it has ended


def test_a_waited_slow_verb_keeps_its_own_thread(api: Api,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    inst = api.add_instance("web1")
    held = Held(api.hv.suspend)
    held.release.set()
    monkeypatch.setattr(api.hv, "suspend", held)
    answer = api.post(WAITED, {"suspend": None})
    assert answer.status == 200 and answer.body["server"]["status"] == "SUSPENDED"
    assert held.threads and "process_request_thread" not in held.threads[0]
    assert _actions(api, inst.id) == [("suspend", "Success", None)]


def test_a_short_wait_the_action_beats_answers_200_from_its_own_thread(
        api: Api, held_pause: Held) -> None:
    """docs/api.md: a wait under 30 s keeps the action's own thread, and
    its answer is still the 200 with the server when the action ends in time."""
    api.add_instance("web1")
    held_pause.release.set()
    answer = api.post("/v2.1/servers/web1/action?vmops:wait=20", {"pause": None})
    assert answer.status == 200 and answer.body["server"]["status"] == "PAUSED"
    assert held_pause.threads and "process_request_thread" not in held_pause.threads[0]
