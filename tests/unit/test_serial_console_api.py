"""The serial console's API (vmops/api/serial_console_api.py) over a real
socket on the fake hypervisor: Nova's console URL calls, their state rules,
and the WebSocket driven by a plain client library (websocket-client), with
a socket standing in for the capture process."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from tests.unit.test_api import Api, start_api
from vmops.api.server import Authenticator, Context
from vmops.compute import states
from vmops.console.fanout import REFUSED_FULL
from vmops.console.layout import LogFiles
from vmops.console.tokens import ConsoleTokens
from vmops.errors import Conflict
from vmops.socket_paths import socket_address
from vmops.websocket import new_key

SERIAL = {"remote_console": {"protocol": "serial", "type": "serial"}}
V26 = {"OpenStack-API-Version": "compute 2.6"}


def _console_url(api: Api, name: str, body: Any = None, version: str = "2.6") -> Any:
    return api.post(f"/v2.1/servers/{name}/remote-consoles", SERIAL if body is None else body,
                    headers={"OpenStack-API-Version": f"compute {version}"})


class FakeCapture:
    """The capture process's console socket for one instance."""

    def __init__(self, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with socket_address(LogFiles(log_dir).console_socket) as address:
            self.listener.bind(address)
        self.listener.listen(4)
        self.listener.settimeout(10)
        self.conn: socket.socket | None = None
        self._accepted = threading.Thread(target=self._accept, daemon=True)
        self._accepted.start()

    def _accept(self) -> None:
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(10)

    def joined(self) -> socket.socket:
        self._accepted.join(10)
        assert self.conn is not None
        return self.conn

    def close(self) -> None:
        for sock in (self.conn, self.listener):
            if sock is not None:
                sock.close()


@pytest.fixture
def capture(api: Api) -> Iterator[FakeCapture]:
    inst = api.add_instance("web1")
    fake = FakeCapture(api.compute.instance_dir(inst))
    yield fake
    fake.close()


def test_remote_console_answers_a_websocket_url(api: Api) -> None:
    api.add_instance("web1")
    answer = _console_url(api, "web1")
    assert answer.status == 200
    console = answer.body["remote_console"]
    assert (console["protocol"], console["type"]) == ("serial", "serial")
    prefix = f"ws://127.0.0.1:{api.port}/serial-console?token="
    assert console["url"].startswith(prefix) and len(console["url"]) > len(prefix) + 40
    again = _console_url(api, "web1").body["remote_console"]["url"]
    assert again != console["url"]  # a new token each time


def test_the_old_action_below_2_6_and_neither_call_outside_its_versions(api: Api) -> None:
    api.add_instance("web1")
    old = api.post("/v2.1/servers/web1/action", {"os-getSerialConsole": {"type": "serial"}})
    assert old.status == 200 and set(old.body) == {"console"}
    assert old.body["console"]["type"] == "serial"
    assert old.body["console"]["url"].startswith("ws://")
    assert api.post("/v2.1/servers/web1/action", {"os-getSerialConsole": {"type": "serial"}},
                    headers=V26).status == 404
    assert _console_url(api, "web1", version="2.5").status == 404


@pytest.mark.parametrize(("body", "words"), [
    ({"remote_console": {"protocol": "vnc", "type": "novnc"}}, "Unavailable console type novnc"),
    ({"remote_console": {"protocol": "serial", "type": "novnc"}}, "Invalid console type novnc"),
    ({"remote_console": {"protocol": "serial"}}, "'type' is a required property"),
    ({"remote_console": {"protocol": "telnet", "type": "serial"}}, "not one of"),
    ({"remote_console": {"protocol": "mks", "type": "webmks"}}, "not one of"),  # 2.8 on
    ({"remote_console": {"protocol": "serial", "type": "serial", "port": 1}}, "unknown field"),
    ({"console": {}}, "remote_console"),
])
def test_bad_console_requests_are_400(api: Api, body: Any, words: str) -> None:
    api.add_instance("web1")
    answer = _console_url(api, "web1", body)
    assert answer.status == 400 and words in answer.fault()[1]


@pytest.mark.parametrize("arg", [None, {}, {"type": "novnc"}, {"type": "serial", "x": 1}])
def test_bad_action_arguments_are_400(api: Api, arg: Any) -> None:
    api.add_instance("web1")
    answer = api.post("/v2.1/servers/web1/action", {"os-getSerialConsole": arg})
    assert answer.status == 400


@pytest.mark.parametrize("vm_state", [states.STOPPED, states.SUSPENDED, states.BUILDING])
def test_no_console_unless_the_guest_runs_and_nothing_is_issued(api: Api,
                                                                vm_state: str) -> None:
    api.add_instance("web1", vm_state=vm_state)
    answer = _console_url(api, "web1")
    assert answer.status == 409 and "serial console" in answer.fault()[1]
    old = api.post("/v2.1/servers/web1/action", {"os-getSerialConsole": {"type": "serial"}})
    assert old.status == 409


def test_a_paused_guest_has_a_console(api: Api) -> None:
    api.add_instance("web1", vm_state=states.PAUSED)
    assert _console_url(api, "web1").status == 200


def test_unknown_server_is_404(api: Api) -> None:
    assert _console_url(api, "nope").status == 404


def test_the_websocket_carries_both_ways_and_ends_with_the_guest(
        api: Api, capture: FakeCapture) -> None:
    url = _console_url(api, "web1").body["remote_console"]["url"]
    ws = websocket.create_connection(url, timeout=10, subprotocols=["binary"])
    try:
        assert ws.getsubprotocol() == "binary"
        guest = capture.joined()
        ws.send_binary(b"uname -a\r")
        got = b""
        while not got.endswith(b"\r"):
            got += guest.recv(100)
        assert got == b"uname -a\r"
        ws.send("echo text\r")  # a text frame: its UTF-8 bytes
        got = b""
        while not got.endswith(b"\r"):
            got += guest.recv(100)
        assert got == b"echo text\r"
        guest.sendall(b"Linux guest\r\n")
        opcode, data = ws.recv_data()
        assert (opcode, data) == (websocket.ABNF.OPCODE_BINARY, b"Linux guest\r\n")
        ws.ping(b"are you there")
        frame = ws.recv_frame()
        assert (frame.opcode, frame.data) == (websocket.ABNF.OPCODE_PONG, b"are you there")
        guest.close()  # the guest's QEMU went away
        frame = ws.recv_frame()
        assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(frame.data[:2], "big") == 1000
    finally:
        ws.close()


def test_a_guest_that_prints_the_refusal_line_is_not_refused(
        api: Api, capture: FakeCapture) -> None:
    """Only the line followed by the end is the capture process's refusal."""
    url = _console_url(api, "web1").body["remote_console"]["url"]
    ws = websocket.create_connection(url, timeout=10)
    try:
        guest = capture.joined()
        guest.sendall(REFUSED_FULL)
        guest.sendall(b"login: ")
        got = b""
        while not got.endswith(b"login: "):
            opcode, data = ws.recv_data()
            assert opcode == websocket.ABNF.OPCODE_BINARY
            got += data
        assert got == REFUSED_FULL + b"login: "
        guest.close()
        frame = ws.recv_frame()
        assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(frame.data[:2], "big") == 1000
    finally:
        ws.close()


def test_a_token_is_good_once(api: Api, capture: FakeCapture) -> None:
    url = _console_url(api, "web1").body["remote_console"]["url"]
    websocket.create_connection(url, timeout=10).close()
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, timeout=10)
    assert refused.value.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException) as forged:
        websocket.create_connection(url[:-4] + "AAAA", timeout=10)
    assert forged.value.status_code == 401


def test_a_token_for_a_server_that_stopped_since_is_409(api: Api) -> None:
    inst = api.add_instance("web1")
    url = _console_url(api, "web1").body["remote_console"]["url"]
    api.hv.power_off(inst.id)
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, timeout=10)
    assert refused.value.status_code == 409


def test_no_capture_socket_is_409(api: Api) -> None:
    api.add_instance("web1")  # a fake domain: no capture process listens
    url = _console_url(api, "web1").body["remote_console"]["url"]
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, timeout=10)
    assert refused.value.status_code == 409


def _get(api: Api, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    answer = api.raw("GET", "/serial-console?token=x", headers=headers)
    return answer.status, answer.headers


def test_what_is_not_a_websocket_handshake_is_refused(api: Api) -> None:
    assert _get(api, {})[0] == 400
    handshake = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": new_key()}
    status, headers = _get(api, {**handshake, "Sec-WebSocket-Version": "8"})
    assert status == 426 and headers["sec-websocket-version"] == "13"
    assert _get(api, {**handshake, "Sec-WebSocket-Version": "13",
                      "Sec-WebSocket-Key": "short"})[0] == 400
    assert _get(api, {**handshake, "Sec-WebSocket-Version": "13"})[0] == 401  # token "x"


def test_tokens_expire_and_only_their_hash_is_kept() -> None:
    now = [100.0]
    tokens = ConsoleTokens(ttl=60, clock=lambda: now[0])
    first, second = tokens.issue("a"), tokens.issue("b")
    assert first not in repr(tokens._grants)
    now[0] += 59
    assert tokens.redeem(first) == "a"
    assert tokens.redeem(first) is None  # used
    now[0] += 2
    assert tokens.redeem(second) is None  # expired
    assert len(tokens) == 0


def test_a_server_keeps_its_newest_tokens_only() -> None:
    tokens = ConsoleTokens(ttl=60, clock=lambda: 0.0, per_server=3)
    issued = [tokens.issue("a") for _ in range(5)]
    other = tokens.issue("b")
    assert len(tokens) == 4  # a's newest three and b's one
    assert [tokens.redeem(t) for t in issued] == [None, None, "a", "a", "a"]
    assert tokens.redeem(other) == "b"


def test_tokens_are_bounded_in_all_and_expired_ones_make_room() -> None:
    now = [0.0]
    tokens = ConsoleTokens(ttl=60, clock=lambda: now[0], per_server=2, total=3)
    a1, a2 = tokens.issue("a"), tokens.issue("a")
    now[0] += 30
    b1 = tokens.issue("b")
    with pytest.raises(Conflict, match="3 console URLs are outstanding"):
        tokens.issue("c")
    assert len(tokens) == 3  # the refused one left nothing behind
    a3 = tokens.issue("a")  # a server at its own bound replaces its oldest
    assert tokens.redeem(a1) is None
    now[0] += 31  # a2 expired: room again
    assert tokens.redeem(tokens.issue("c")) == "c"
    assert tokens.redeem(a2) is None
    assert (tokens.redeem(b1), tokens.redeem(a3)) == ("b", "a")
    assert len(tokens) == 0


class _Members(Authenticator):
    """Tokens "member" and "reader": a project's member and reader."""

    def context(self, token: str) -> Context | None:
        roles = {"member": frozenset({"member", "reader"}), "reader": frozenset({"reader"})}
        return Context(f"u-{token}", "p1", roles[token]) if token in roles else None


def test_a_member_gets_a_locked_servers_console_and_a_reader_none(tmp_path: Path) -> None:
    api, servers = start_api(tmp_path, authenticator=_Members())
    try:
        inst = api.add_instance("web1")
        api.store.update_instance(inst, project_id="p1", locked_by="admin")
        answer = api.post("/v2.1/servers/web1/remote-consoles", SERIAL, headers=V26,
                          token="member")
        assert answer.status == 200  # a console changes nothing a lock keeps
        old = api.post("/v2.1/servers/web1/action", {"os-getSerialConsole": {"type": "serial"}},
                       token="member")
        assert old.status == 200
        assert api.post("/v2.1/servers/web1/remote-consoles", SERIAL, headers=V26,
                        token="reader").status == 403  # it types into the guest
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()
        api.store.close()


def test_the_token_is_not_logged(api: Api, capture: FakeCapture,
                                 caplog: pytest.LogCaptureFixture) -> None:
    url = _console_url(api, "web1").body["remote_console"]["url"]
    token = url.rpartition("token=")[2]
    with caplog.at_level("DEBUG", logger="vmops.api.server"):
        websocket.create_connection(url, timeout=10).close()
        api.get("/v2.1/servers?token=also-hidden")
    logged = caplog.text
    assert "/serial-console?token=***" in logged and token not in logged
    assert "also-hidden" not in logged


def test_an_idle_client_is_pinged_and_dropped_when_silent(
        api: Api, capture: FakeCapture, monkeypatch: pytest.MonkeyPatch) -> None:
    from vmops.api import serial_console_api

    monkeypatch.setattr(serial_console_api, "PING_INTERVAL", 0.2)
    monkeypatch.setattr(serial_console_api, "IDLE_LIMIT", 0.5)
    url = _console_url(api, "web1").body["remote_console"]["url"]
    ws = websocket.create_connection(url, timeout=10)
    try:
        frames: list[Any] = []  # websocket.ABNF, whose data is typed str | bytes
        while not frames or frames[-1].opcode != websocket.ABNF.OPCODE_CLOSE:
            frames.append(ws.recv_frame())  # read, never answered
        assert frames[0].opcode == websocket.ABNF.OPCODE_PING
        assert int.from_bytes(frames[-1].data[:2], "big") == 1001
    finally:
        ws.close()


def test_a_client_that_never_reads_is_dropped(
        api: Api, capture: FakeCapture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that takes none of a chatty guest's output (its window
    stays shut) is cut once a send has waited SEND_TIMEOUT, and the
    console's connection closed: not a handler thread held forever."""
    from vmops.api import serial_console_api

    monkeypatch.setattr(serial_console_api, "SEND_TIMEOUT", 0.5)
    url = _console_url(api, "web1").body["remote_console"]["url"]
    ws = websocket.create_connection(
        url, timeout=10, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    guest = capture.joined()
    ended: list[OSError] = []

    def flood() -> None:
        try:
            while True:
                guest.sendall(b"x" * 65536)
        except OSError as exc:
            ended.append(exc)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        flooder.join(60)
        assert ended and not isinstance(ended[0], TimeoutError), ended
    finally:
        ws.close()
