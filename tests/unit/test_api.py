"""The HTTP API over a real socket, on the in-memory fake hypervisor: request
parsing, shapes, faults, access. Every answer any test here gets is checked
against the OpenAPI document (``check_answer``).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from tests import records
from vmops import config, console
from vmops.api import openapi, server
from vmops.api.routes import Routes
from vmops.compute import states
from vmops.compute.catalog import Catalog
from vmops.compute.manager import Compute
from vmops.disks.cache import ImageCache
from vmops.hypervisor.fake import FakeHypervisor
from vmops.network.manager import USER_NETWORK
from vmops.service import build
from vmops.store import Image, Instance, Port, Store

TOKEN = "s3cret-token"
MAX = server.version_text(server.MAX_MICROVERSION)
EXTRA = {"X-Vmops-Extra": "1"}
IMAGE_ID = "6b4b5e8e-8a6f-4a4a-9d59-3b5c2b0e6c11"
DOCUMENT = openapi.document()
REPO = Path(__file__).resolve().parents[2]


# -- checking answers against the OpenAPI document ---------------------------------
def _operation(method: str, path: str) -> dict[str, Any] | None:
    for template, item in DOCUMENT["paths"].items():
        regex = "^" + re.sub(r"\\{\w+\\}", "[^/]+", re.escape(template)) + "/?$"
        if re.match(regex, path) and method.lower() in item:
            operation: dict[str, Any] = item[method.lower()]
            return operation
    return None


UNDOCUMENTED = {"responses": {"default": {"content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/Fault"}}}}}}


def check_answer(method: str, path: str, status: int, content_type: str, body: Any) -> None:
    """The status is documented for the operation and the body fits its schema;
    what is not in the document (or not authorized) may only be a fault."""
    operation = _operation(method, path.split("?")[0])
    if operation is None or status == 401:
        assert status in (400, 401, 404, 405), f"{method} {path} is not in the document"
        operation = UNDOCUMENTED
    responses = operation["responses"]
    answer = responses.get(str(status)) or (responses["default"] if status >= 400 else None)
    assert answer is not None, f"{method} {path}: {status} is not documented"
    content = answer.get("content")
    if content is not None and body in (b"", None) and answer.get("x-body-optional"):
        return
    if content is None:
        assert body in (b"", None), f"{method} {path}: {status} should have no body"
        return
    kind = content_type.split(";")[0]
    assert kind in content, f"{method} {path}: {kind} is not documented for {status}"
    if kind == "application/json":
        schema = {**content[kind]["schema"], "components": DOCUMENT["components"]}
        jsonschema_rs.validate(schema, body)


# -- the service on a real socket ---------------------------------------------------
@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any

    def fault(self) -> tuple[str, str]:
        ((name, inner),) = self.body.items()
        assert inner["code"] == self.status
        return name, inner["message"]


@dataclass
class Api:
    port: int
    compute: Compute
    hv: FakeHypervisor
    store: Store
    sent: list[tuple[str, str, int]] = field(default_factory=list)

    def raw(self, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            answer_headers = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        kind = answer_headers.get("content-type", "")
        parsed: Any = json.loads(data) if kind.startswith("application/json") and data else data
        check_answer(method, path, resp.status, kind, parsed)
        self.sent.append((method, path, resp.status))
        return Answer(resp.status, answer_headers, parsed)

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None, token: str | None = TOKEN) -> Answer:
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if token is not None:
            all_headers["X-Auth-Token"] = token
        payload = json.dumps(body).encode() if body is not None else None
        return self.raw(method, path, payload, all_headers)

    def get(self, path: str, **kw: Any) -> Answer:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Answer:
        return self.call("POST", path, body, **kw)

    def add_instance(self, name: str, vm_state: str = states.ACTIVE) -> Instance:
        """A record and a fake domain in ``vm_state``, as a finished spawn leaves them."""
        inst = self.store.add_instance(records.instance(name, vm_state=vm_state,
                                                        image_id=IMAGE_ID))
        self.hv.define(self.compute.domain_spec(inst))
        if vm_state in (states.ACTIVE, states.PAUSED, states.SUSPENDED):
            self.hv.start(inst.id)
        if vm_state == states.PAUSED:
            self.hv.pause(inst.id)
        if vm_state == states.SUSPENDED:
            self.hv.suspend(inst.id)
        power = self.hv.info(inst.id).state.value
        return self.store.update_instance(inst, power_state=power, vm_state=vm_state)


def start_api(state_dir: Path, token: str = TOKEN,
              authenticator: server.Authenticator | None = None) -> tuple[Api, list[Any]]:
    settings = config.load(state_dir, env={})
    hv = FakeHypervisor()
    engine = build(settings, hypervisor=hv)
    compute, store = engine.compute, engine.store
    compute.background_actions = True
    store.add_image(records.image("tiny", id=IMAGE_ID))
    routes = engine.routes(lambda: [{"name": "fake", "ok": True, "required": True,
                                     "detail": "d", "advice": ""}])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    servers = server.serve(routes.router(), settings.api_socket, f"127.0.0.1:{port}", token,
                           authenticator=authenticator)
    return Api(port, compute, hv, store), servers


def stop_api(service: Api, servers: list[Any]) -> None:
    """End what :func:`start_api` started. An instance left captured (its
    real console process watches it) would keep that process for ever,
    its directory gone: its capture is stopped."""
    for srv in servers:
        srv.shutdown()
        srv.server_close()
    for pid_file in service.compute.settings.instances_dir.glob("*/capture.pid"):
        console.stop_capture(pid_file.parent)
    service.store.close()


# -- versions, microversions, access ----------------------------------------------
def test_version_documents_link_where_the_client_came_from(api: Api) -> None:
    legacy, root = api.get("/").body["versions"]  # as Nova's: v2.0, then v2.1
    assert root["id"] == "v2.1" and root["min_version"] == "2.1" and root["version"] == MAX
    assert root["links"][0]["href"] == f"http://127.0.0.1:{api.port}/v2.1/"
    assert (legacy["id"], legacy["status"], legacy["version"]) == ("v2.0", "SUPPORTED", "")
    assert set(root) == set(legacy) == {"id", "status", "version", "min_version", "updated",
                                        "links"}
    assert api.get("/v2/").body["version"]["id"] == "v2.0"  # what Tempest follows
    assert "media-types" in api.get("/v2.1").body["version"]
    assert api.get("/v2.1").body["version"]["status"] == "CURRENT"
    assert api.get("/v2.1/").status == 200
    image = api.get("/image").body["versions"][0]
    assert image["links"][0]["href"].endswith("/image/v2/")
    identity = api.get("/identity").body["versions"]["values"][0]
    assert identity["id"].startswith("v3")
    assert api.get("/identity/v3").body["version"]["id"].startswith("v3")


def test_microversion_headers(api: Api) -> None:
    answer = api.get("/v2.1/servers", headers={"OpenStack-API-Version": "compute 2.1"})
    assert answer.headers["openstack-api-version"] == "compute 2.1"
    assert answer.headers["x-openstack-nova-api-version"] == "2.1"
    assert "OpenStack-API-Version" in answer.headers["vary"]
    assert answer.headers["x-openstack-request-id"].startswith("req-")
    assert api.get("/v2.1/servers", headers={"OpenStack-API-Version": "compute latest"}
                   ).status == 200
    assert api.get("/v2.1/servers", headers={"X-OpenStack-Nova-API-Version": "2.1"}
                   ).status == 200
    assert api.get("/v2.1/servers", headers={"OpenStack-API-Version": "image 2.5"}
                   ).status == 200
    too_new = api.get("/v2.1/servers", headers={"OpenStack-API-Version": "compute 2.90"})
    assert too_new.status == 406
    assert f"Minimum is 2.1 and maximum is {MAX}" in too_new.fault()[1]
    bad = api.get("/v2.1/servers", headers={"X-OpenStack-Nova-API-Version": "two"})
    assert bad.status == 400


@pytest.mark.parametrize("path", ["/v2.1/servers", "/metrics", "/openapi.json",
                                  "/image/v2/images", "/v2.1/servers/nope"])
@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN + "x"])
def test_tcp_without_the_token_gets_401_and_nothing_else(api: Api, path: str,
                                                         token: str | None) -> None:
    answer = api.get(path, token=token)
    assert answer.status == 401
    assert answer.fault() == ("unauthorized", "authentication required")


@pytest.mark.parametrize("path", ["/", "/v2.1", "/v2", "/image", "/image/v2", "/identity",
                                  "/identity/v3", "/network"])
def test_version_documents_answer_without_a_token(api: Api, path: str) -> None:
    """As Nova, Glance and Keystone do: clients read them before they authenticate."""
    assert api.get(path, token=None).status == 200
    assert api.get(path, token="wrong").status == 200


def test_bearer_token_is_accepted(api: Api) -> None:
    answer = api.get("/metrics", token=None, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status == 200
    assert api.get("/metrics", token=None, headers={"Authorization": "Bearer no"}).status == 401


def test_unix_socket_needs_no_token(tmp_path: Path) -> None:
    service, servers = start_api(tmp_path)
    try:
        conn = http.client.HTTPConnection("vmops")
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(tmp_path / "vmops.sock"))
        conn.sock = sock
        conn.request("GET", "/v2.1/servers")
        assert conn.getresponse().status == 200
        assert (tmp_path / "vmops.sock").stat().st_mode & 0o077 == 0  # owner only
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()
        service.store.close()


# -- servers -------------------------------------------------------------------------
def test_server_shape_at_microversion_2_1(api: Api) -> None:
    inst = api.add_instance("web1")
    server = api.get("/v2.1/servers/web1", headers=EXTRA).body["server"]
    assert server["id"] == inst.id
    assert server["status"] == "ACTIVE"
    assert server["OS-EXT-STS:vm_state"] == "active"
    assert server["OS-EXT-STS:task_state"] is None
    assert server["OS-EXT-STS:power_state"] == 1
    assert server["flavor"] == {"id": "1", "links": [
        {"rel": "bookmark", "href": f"http://127.0.0.1:{api.port}/flavors/1"}]}
    assert server["vmops:flavor"]["name"] == "m1.tiny"
    assert server["image"]["id"] == IMAGE_ID
    assert server["links"][0]["href"] == f"http://127.0.0.1:{api.port}/v2.1/servers/{inst.id}"
    assert server["vmops:live"]["vcpus"] == 1
    assert api.get(f"/v2.1/servers/{inst.id}").body["server"]["name"] == "web1"


@pytest.mark.parametrize(("vm_state", "status", "power"), [
    (states.ACTIVE, "ACTIVE", 1), (states.STOPPED, "SHUTOFF", 4),
    (states.PAUSED, "PAUSED", 3), (states.SUSPENDED, "SUSPENDED", 4)])
def test_status_names(api: Api, vm_state: str, status: str, power: int) -> None:
    api.add_instance("web1", vm_state)
    server = api.get("/v2.1/servers/detail").body["servers"][0]
    assert (server["status"], server["OS-EXT-STS:power_state"]) == (status, power)


@pytest.mark.parametrize(("vm_state", "task", "status"), [
    (states.BUILDING, states.SPAWNING, "BUILD"), (states.ACTIVE, states.REBOOTING, "REBOOT"),
    (states.ACTIVE, states.REBOOTING_HARD, "HARD_REBOOT"), (states.ERROR, None, "ERROR")])
def test_task_status_names(api: Api, vm_state: str, task: str | None, status: str) -> None:
    inst = api.add_instance("web1")
    api.store.update_instance(inst, vm_state=vm_state, task_state=task, fault="boom")
    server = api.get("/v2.1/servers/web1").body["server"]
    assert (server["status"], server["OS-EXT-STS:task_state"]) == (status, task)
    # Nova shows the fault of an errored server only; vmops' own key always.
    assert server.get("fault", {}).get("message") == ("boom" if status == "ERROR" else None)
    assert api.get("/v2.1/servers/web1", headers=EXTRA).body["server"]["vmops:fault"] == "boom"


def test_list_filters_and_paging(api: Api) -> None:
    ids = [api.add_instance(n).id for n in ("web1", "web2", "db1")]
    api.store.update_instance(ids[2], vm_state=states.STOPPED)

    def names(query: str) -> list[str]:
        return [s["name"] for s in api.get(f"/v2.1/servers{query}").body["servers"]]

    # Nova's order: the newest first.
    assert names("") == ["db1", "web2", "web1"]
    assert names("?name=^web") == ["web2", "web1"]
    assert names("?status=SHUTOFF") == ["db1"]
    assert names("?status=shutoff") == ["db1"]
    assert names("?status=NAPPING") == []  # below 2.38: an unknown status matches none
    assert api.get("/v2.1/servers?status=NAPPING",
                   headers={"OpenStack-API-Version": "compute 2.38"}).status == 400
    assert names("?limit=1") == ["db1"]
    assert names(f"?marker={ids[2]}&limit=1") == ["web2"]
    assert names("?flavor=2") == []
    assert api.get("/v2.1/servers?name=(").status == 400
    assert api.get("/v2.1/servers?limit=-1").status == 400
    assert api.get("/v2.1/servers?marker=nope").status == 400


def test_unknown_server_is_item_not_found(api: Api) -> None:
    for answer in (api.get("/v2.1/servers/nope"),
                   api.call("DELETE", "/v2.1/servers/nope"),
                   api.post("/v2.1/servers/nope/action", {"pause": None})):
        assert answer.status == 404
        assert answer.fault() == ("itemNotFound", "no instance named or with id 'nope'")


def test_actions_answer_202_and_run(api: Api) -> None:
    api.add_instance("web1")
    answer = api.post("/v2.1/servers/web1/action", {"pause": None})
    assert (answer.status, answer.body) == (202, b"")
    _wait_idle(api, "web1")
    assert api.get("/v2.1/servers/web1").body["server"]["status"] == "PAUSED"
    assert api.post("/v2.1/servers/web1/action", {"unpause": {}}).status == 202
    _wait_idle(api, "web1")
    assert api.post("/v2.1/servers/web1/action", {"os-stop": {"vmops:hard": True}}
                    ).status == 202
    server = _wait_idle(api, "web1")
    assert (server["status"], server["OS-EXT-STS:power_state"]) == ("SHUTOFF", 4)


def test_action_with_wait_answers_when_it_has_ended(api: Api) -> None:
    api.add_instance("web1")
    answer = api.post("/v2.1/servers/web1/action?vmops:wait=30", {"pause": None})
    assert answer.status == 200
    server = answer.body["server"]
    assert (server["status"], server["OS-EXT-STS:task_state"]) == ("PAUSED", None)
    for bad in ("soon", "-1", "4000"):
        answer = api.post(f"/v2.1/servers/web1/action?vmops:wait={bad}", {"unpause": None})
        assert answer.status == 400 and "vmops:wait" in answer.fault()[1]
    # A refused wait leaves the action undone.
    assert api.get("/v2.1/servers/web1").body["server"]["status"] == "PAUSED"


def test_metadata_sent_as_a_task_finishes_waits_for_it(api: Api) -> None:
    """A client that saw the task end in the record and changes metadata at
    once is not refused for the bookkeeping still releasing the task."""
    inst = api.add_instance("web1")
    api.compute.tasks.acquire(inst.id, inst.name, "resize_reverting")
    assert api.post(f"/v2.1/servers/{inst.id}/metadata", {"metadata": {"k": "v"}}
                    ).status == 409  # running: refused at once
    api.compute.tasks.finishing(inst.id)  # the record says the task ended
    release = threading.Timer(0.2, api.compute.tasks.release, args=(inst.id,))
    release.start()
    answer = api.post(f"/v2.1/servers/{inst.id}/metadata", {"metadata": {"k": "v"}})
    release.join()
    assert answer.status == 200, answer.body
    assert api.store.instance(inst.id).properties == {"k": "v"}


def _wait_idle(api: Api, name: str) -> dict[str, Any]:
    for _ in range(200):
        server: dict[str, Any] = api.get(f"/v2.1/servers/{name}").body["server"]
        if server["OS-EXT-STS:task_state"] is None:
            return server
        time.sleep(0.01)
    raise AssertionError(f"{name} stayed busy")


@pytest.mark.parametrize(("vm_state", "action"), [
    (states.STOPPED, {"pause": None}), (states.STOPPED, {"reboot": {"type": "SOFT"}}),
    (states.SUSPENDED, {"os-start": None}), (states.ACTIVE, {"os-start": None}),
    (states.PAUSED, {"resume": None}), (states.ACTIVE, {"unpause": None})])
def test_action_in_the_wrong_state_is_409_and_changes_nothing(
        api: Api, vm_state: str, action: dict[str, Any]) -> None:
    api.add_instance("web1", vm_state)
    before = api.get("/v2.1/servers/web1").body["server"]
    answer = api.post("/v2.1/servers/web1/action", action)
    assert answer.status == 409
    name, message = answer.fault()
    assert name == "conflictingRequest" and "web1" in message
    after = api.get("/v2.1/servers/web1").body["server"]
    assert (after["status"], after["OS-EXT-STS:task_state"]) == (before["status"], None)


@pytest.mark.parametrize("body", [
    {}, {"pause": None, "unpause": None}, {"explode": None}, {"reboot": None},
    {"reboot": {"type": "GENTLE"}}, {"reboot": {"type": "HARD", "force": True}},
    {"pause": {"now": True}}, {"os-stop": {"vmops:timeout": "soon"}},
    {"os-stop": {"vmops:timeout": 99999}}, {"os-getConsoleOutput": {"length": "ten"}},
    {"os-getConsoleOutput": {"length": -2}}, {"os-getConsoleOutput": {"lines": 3}},
    [], "pause", 3])
def test_bad_action_bodies_are_400(api: Api, body: Any) -> None:
    api.add_instance("web1")
    answer = api.post("/v2.1/servers/web1/action", body)
    assert answer.status == 400, answer.body
    assert answer.fault()[0] == "badRequest"
    assert api.get("/v2.1/servers/web1").body["server"]["OS-EXT-STS:task_state"] is None


def test_console_output_action(api: Api) -> None:
    inst = api.add_instance("web1")
    log_dir = api.compute.instance_dir(inst)
    log_dir.mkdir(parents=True)
    (log_dir / "console.log").write_bytes(b"one\ntwo\nthree\n")
    assert api.post("/v2.1/servers/web1/action", {"os-getConsoleOutput": {}}
                    ).body["output"] == "one\ntwo\nthree\n"
    # Nova's count: the last N pieces of the text split at newlines (the
    # last piece of a log ending in a newline is empty), carriage returns
    # and other control characters dropped.
    assert api.post("/v2.1/servers/web1/action", {"os-getConsoleOutput": {"length": "2"}}
                    ).body["output"] == "three\n"
    assert api.post("/v2.1/servers/web1/action", {"os-getConsoleOutput": {"length": 3}}
                    ).body["output"] == "two\nthree\n"
    (log_dir / "console.log").write_bytes(b"one\r\ntwo\r\nthree\x1b[0m\r\n")
    whole = api.post("/v2.1/servers/web1/action", {"os-getConsoleOutput": None})
    output = api.post("/v2.1/servers/web1/action", {"os-getConsoleOutput": {"length": 3}}
                      ).body["output"]
    assert output == "two\nthree[0m\n" and len(output.split("\n")) == 3
    assert api.post("/v2.1/servers/web1/action", {"os-getConsoleOutput": {"length": 0}}
                    ).body["output"] == ""
    assert api.post("/v2.1/servers/web1/action", {"os-getConsoleOutput": {"length": -1}}
                    ).body["output"] == whole.body["output"] == "one\ntwo\nthree[0m\n"


# -- create: every refusal is a 400 and leaves nothing ------------------------------
def _create(api: Api, **changes: Any) -> Answer:
    server = {"name": "web1", "imageRef": IMAGE_ID, "flavorRef": "1", **changes}
    return api.post("/v2.1/servers", {"server": {k: v for k, v in server.items()
                                                 if v is not None}})


@pytest.mark.parametrize("changes", [
    {"name": None}, {"name": 5}, {"name": " lead"}, {"name": "a" * 256}, {"name": ""},
    {"name": "tab\there"}, {"name": "6b4b5e8e-8a6f-4a4a-9d59-3b5c2b0e6c11"},
    {"imageRef": None}, {"imageRef": "nope"}, {"flavorRef": "nope"}, {"flavorRef": True},
    {"colour": "red"}, {"min_count": 0}, {"max_count": "x"}, {"min_count": 3, "max_count": 2},
    {"max_count": 101}, {"max_count": 2, "vmops:mac": "52:54:00:00:00:09"},
    {"accessIPv4": "1.2.3"}, {"accessIPv4": "::1"}, {"accessIPv6": "10.0.0.1"},
    {"description": "only from 2.19"}, {"tags": []}, {"networks": "auto"},
    {"networks": [{"uuid": "x"}]},
    {"availability_zone": "elsewhere"}, {"security_groups": [{"name": "web"}]},
    {"metadata": {"k": 1}}, {"metadata": {"": "v"}}, {"metadata": "k=v"},
    {"user_data": "not base64!"}, {"user_data": "QQ==" * 20000}, {"config_drive": "maybe"},
    {"personality": [{"path": "/x"}]}, {"key_name": "nokey"}, {"vmops:mac": "01:00:5e:00:00:01"},
    {"block_device_mapping_v2": [{"source_type": "volume", "uuid": "v",
                                  "destination_type": "volume", "boot_index": 0}]},
    {"return_reservation_id": "yes"}, {"vmops:start": "false"}, {"vmops:start": 0}])
def test_bad_create_bodies_are_400_and_create_nothing(api: Api, changes: dict[str, Any]) -> None:
    answer = _create(api, **changes)
    assert answer.status == 400, answer.body
    assert answer.fault()[0] == "badRequest"
    assert api.store.instances() == []


def test_a_mac_the_user_gives_that_a_server_has_is_409_naming_both(api: Api) -> None:
    """A generated MAC that is taken is drawn again (manager._unused_mac);
    one the user asked for is refused, whatever its case and spaces, and
    nothing is recorded. (web1 is recorded as a finished spawn leaves it: a
    spawn on the fake fails, and its rollback would free the MAC.)"""
    first = records.instance("web1", macs=("52:54:00:aa:bb:cc",))
    api.store.add_instance(first, ports=[Port(str(uuidlib.uuid4()), first.id, 0, "user",
                                              USER_NETWORK, "52:54:00:aa:bb:cc")])
    taken = _create(api, name="web2", **{"vmops:mac": " 52:54:00:aa:BB:cc ",
                                         "vmops:start": False})
    assert taken.status == 409, taken.body
    assert taken.fault() == ("conflictingRequest", "MAC address 52:54:00:aa:bb:cc is already "
                             "used by instance 'web1'")
    assert [i.name for i in api.store.instances()] == ["web1"]


@pytest.mark.parametrize("value", ["false", 0, [], {}])
def test_vmops_start_that_is_not_a_boolean_names_the_field(api: Api, value: Any) -> None:
    answer = _create(api, **{"vmops:start": value})
    assert answer.status == 400, answer.body
    assert "'vmops:start' must be true or false" in answer.fault()[1]
    assert api.store.instances() == []


def test_create_answers_202_with_location(api: Api) -> None:
    answer = _create(api, block_device_mapping_v2=[{
        "uuid": IMAGE_ID, "boot_index": 0, "source_type": "image", "destination_type": "local",
        "delete_on_termination": True}], networks=[], min_count=1, max_count=1)
    assert answer.status == 202, answer.body
    created = answer.body["server"]
    assert answer.headers["location"] == created["links"][0]["href"]
    assert api.store.instance("web1").id == created["id"]
    for _ in range(500):  # the spawn fails on the fake (no image file); let it end
        if api.get("/v2.1/servers/web1").body["server"]["status"] != "BUILD":
            break
        time.sleep(0.01)


def test_create_with_wait_answers_once_the_build_has_ended(api: Api) -> None:
    """vmops:wait on create: 200 with the server's whole view (and its
    admin password) once it has finished building, here in ERROR (the
    fake has no image file), so a client need not poll."""
    body = {"server": {"name": "web1", "imageRef": IMAGE_ID, "flavorRef": "1"}}
    answer = api.post("/v2.1/servers?vmops:wait=30", body)
    assert answer.status == 200, answer.body
    server = answer.body["server"]
    assert (server["status"], server["OS-EXT-STS:task_state"]) == ("ERROR", None)
    assert server["name"] == "web1" and server["fault"]["message"]  # the fake cannot build it
    assert answer.headers["location"] == server["links"][0]["href"]
    assert api.store.instance("web1").id == server["id"]
    assert ("adminPass" in server) == api.compute.settings.enable_instance_password


def test_create_whose_wait_runs_out_answers_202(api: Api,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.compute, "wait_idle", lambda instance_id, timeout: False)
    body = {"server": {"name": "web1", "imageRef": IMAGE_ID, "flavorRef": "1"}}
    answer = api.post("/v2.1/servers?vmops:wait=1", body)
    assert answer.status == 202, answer.body
    assert set(answer.body["server"]) >= {"id", "links"}
    assert "status" not in answer.body["server"]  # Nova's short answer
    monkeypatch.undo()
    _settle(api)


@pytest.mark.parametrize(("query", "changes"), [
    ("vmops:wait=soon", {}), ("vmops:wait=-1", {}), ("vmops:wait=4000", {}),
    ("vmops:wait=nan", {}), ("vmops:wait=5", {"return_reservation_id": True})])
def test_a_bad_create_wait_is_400_and_creates_nothing(api: Api, query: str,
                                                      changes: dict[str, Any]) -> None:
    body = {"server": {"name": "web1", "imageRef": IMAGE_ID, "flavorRef": "1", **changes}}
    answer = api.post(f"/v2.1/servers?{query}", body)
    assert answer.status == 400, answer.body
    assert "vmops:wait" in answer.fault()[1]
    assert api.store.instances() == []


def test_names_are_display_names_and_may_repeat(api: Api) -> None:
    """Nova takes any display name, duplicates included; the guest's
    hostname is derived from it. A name two servers share no longer names
    one: the answer names their ids."""
    first = api.add_instance("web1")
    answer = _create(api, name="Web Server_1.example")
    assert answer.status == 202, answer.body
    again = _create(api, name="web1")
    assert again.status == 202, again.body
    made = api.store.instance(answer.body["server"]["id"])
    assert (made.name, made.hostname) == ("Web Server_1.example", "web-server-1-example")
    assert made.domain_name == "vmops-web-server-1-example"
    twin = api.store.instance(again.body["server"]["id"])
    assert twin.domain_name == f"vmops-{twin.id}"  # vmops-web1 is the first one's
    ambiguous = api.get("/v2.1/servers/web1")
    assert ambiguous.status == 409
    assert first.id in ambiguous.fault()[1] and twin.id in ambiguous.fault()[1]
    assert api.get(f"/v2.1/servers/{twin.id}").status == 200
    _settle(api)


def test_a_spawns_domain_name_is_chosen_holding_the_quota_lock(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two spawns of one hostname at once must not both take vmops-<hostname>:
    the record is made before the quota lock (issue #17), its domain name
    chosen and written holding it."""
    held: list[bool] = []
    taken = api.store.domain_name_taken

    def watched(name: str, prefix: str) -> bool:
        held.append(api.compute.quotas.lock._is_owned())  # type: ignore[attr-defined]
        return taken(name, prefix)

    monkeypatch.setattr(api.store, "domain_name_taken", watched)
    answer = _create(api, name="web1")
    assert answer.status == 202, answer.body
    assert held == [True]
    _settle(api)


def _settle(api: Api) -> None:
    """Let background spawns on the fake end (they fail: no image file)."""
    for _ in range(500):
        if all(i.vm_state != states.BUILDING for i in api.store.instances()):
            return
        time.sleep(0.01)


# -- transport-level bad input ------------------------------------------------------
def test_malformed_json_is_400(api: Api) -> None:
    answer = api.raw("POST", "/v2.1/servers", b'{"server": ',
                     {"X-Auth-Token": TOKEN, "Content-Type": "application/json"})
    assert answer.status == 400
    assert "not valid JSON" in answer.fault()[1]


def test_oversized_body_is_413_unread(api: Api) -> None:
    body = b"{" + b" " * server.MAX_BODY_BYTES + b"}"
    answer = api.raw("POST", "/v2.1/servers", body, {"X-Auth-Token": TOKEN})
    assert answer.status == 413
    assert answer.fault()[0] == "overLimit"


def test_bad_content_type_and_length(api: Api) -> None:
    answer = api.raw("POST", "/v2.1/servers", b"name=web1",
                     {"X-Auth-Token": TOKEN, "Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status == 415
    reply = _send_raw(api, b"POST /v2.1/servers HTTP/1.1\r\nHost: x\r\nX-Auth-Token: "
                      + TOKEN.encode() + b"\r\nContent-Length: lots\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400") and b"Content-Length" in reply


def _send_raw(api: Api, data: bytes) -> bytes:
    """Send bytes as they are; the whole reply (the server closes after a fault)."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_garbage_request_line_gets_a_json_fault(api: Api) -> None:
    reply = _send_raw(api, b"NOT HTTP AT ALL\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400") or reply.startswith(b"HTTP/1.0 400")
    assert b'"badRequest"' in reply


def test_unknown_path_and_method(api: Api) -> None:
    assert api.get("/v2.1/nothing-here").fault()[0] == "itemNotFound"
    answer = api.call("PUT", "/v2.1/servers")
    assert answer.status == 405
    assert answer.fault()[0] == "badMethod"


# -- flavors, keypairs, images --------------------------------------------------------
def test_flavors(api: Api) -> None:
    brief = api.get("/v2.1/flavors").body["flavors"]
    assert set(brief[0]) == {"id", "name", "links"}
    tiny = api.get("/v2.1/flavors/m1.tiny").body["flavor"]
    assert (tiny["id"], tiny["ram"], tiny["disk"]) == ("1", 512, 1)
    assert api.get("/v2.1/flavors/1/os-extra_specs").body == {"extra_specs": {}}
    made = api.post("/v2.1/flavors", {"flavor": {"name": "c1", "ram": 256, "vcpus": 1,
                                                 "disk": 1}})
    assert made.status == 200
    for bad in ({"name": "c2", "ram": "lots", "vcpus": 1, "disk": 1},
                {"name": "c2", "ram": 256, "vcpus": 1, "disk": 1, "swap": "lots"},
                {"name": "c2", "ram": 256, "vcpus": 1, "disk": 1, "rxtx_factor": 0},
                {"name": "c2", "ram": 256, "vcpus": 1, "disk": 1,
                 "os-flavor-access:is_public": "maybe"},
                {"name": "c2", "ram": 256, "vcpus": 0, "disk": 1},
                {"name": "c2", "ram": 256, "vcpus": 1, "disk": 1, "gpu": 1}):
        assert api.post("/v2.1/flavors", {"flavor": bad}).status == 400
    assert api.call("DELETE", "/v2.1/flavors/c1").status == 202


def test_keypairs(api: Api) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILhE/Js2CulLK1ww4aieoN8RmA8eQUrJs/5Q17XzDxXB me"
    added = api.post("/v2.1/os-keypairs", {"keypair": {"name": "me", "public_key": key}})
    assert added.status == 200
    assert added.body["keypair"]["fingerprint"].count(":") == 15
    listed = api.get("/v2.1/os-keypairs").body["keypairs"]
    assert [k["keypair"]["name"] for k in listed] == ["me"]
    assert api.get("/v2.1/os-keypairs/me").body["keypair"]["deleted"] is False
    assert api.post("/v2.1/os-keypairs", {"keypair": {"name": "x", "public_key": "junk"}}
                    ).status == 400
    assert api.call("DELETE", "/v2.1/os-keypairs/me").status == 202
    assert api.get("/v2.1/os-keypairs/me").status == 404


@pytest.mark.parametrize("public_key", [
    "ssh-ed25519 " + "A" * 900_000,  # far beyond any SSH key: refused at once, not at spawn
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHl0ZXN0 me\u202etxt.exe",  # a bidi override
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHl0ZXN0 me\nssh-rsa AAAA other",  # two lines
])
def test_keypairs_refuse_what_is_not_one_key(api: Api, public_key: str) -> None:
    answer = api.post("/v2.1/os-keypairs", {"keypair": {"name": "k", "public_key": public_key}})
    assert answer.status in (400, 413), answer.body
    assert api.get("/v2.1/os-keypairs/k").status == 404


def test_glance_images(api: Api) -> None:
    listed = api.get("/image/v2/images").body
    (tiny,) = listed["images"]
    assert (tiny["id"], tiny["name"], tiny["status"]) == (IMAGE_ID, "tiny", "active")
    assert (tiny["os_hash_algo"], tiny["disk_format"]) == ("sha256", "qcow2")
    assert api.get("/image/v2/images?name=tiny").body["images"] == [tiny]
    assert api.get("/image/v2/images?name=other").body["images"] == []
    assert api.get("/image/v2/images?status=in:active,queued").body["images"] == [tiny]
    assert api.get(f"/image/v2/images/{IMAGE_ID}").body == tiny
    assert api.get("/image/v2/images/tiny").body == tiny
    assert api.get("/image/v2/images/nope").fault()[0] == "itemNotFound"
    assert api.get("/image/v2/images?visibility=secret").status == 400


def test_glance_paging(api: Api) -> None:
    for n in range(3):
        api.store.add_image(Image(id=f"id-{n}", name=f"img{n}", status="queued"))
    page = api.get("/image/v2/images?limit=2").body
    assert len(page["images"]) == 2
    nxt = page["next"]
    assert nxt.startswith("/v2/images?marker=")
    rest = api.get("/image" + nxt).body
    assert len(rest["images"]) == 2 and "next" not in rest


def test_nova_image_shapes_for_the_cli(api: Api) -> None:
    brief = api.get("/v2.1/images").body["images"]
    assert set(brief[0]) == {"id", "name", "links"}
    detail = api.get("/v2.1/images/detail", headers=EXTRA).body["images"][0]
    assert (detail["status"], detail["vmops:format"]) == ("ACTIVE", "qcow2")
    assert api.post("/v2.1/images", {"image": {"name": "x", "source": "relative/path"}}
                    ).status == 400
    assert api.post("/v2.1/images/prune", {"older_than": -1}).status == 400
    assert api.post("/v2.1/images/prune", {"older_than": 10 ** 9}).body == {"removed": []}


def test_image_login_user_is_recorded_and_shown(api: Api) -> None:
    made = api.post("/v2.1/images", {"image": {
        "name": "deb", "source": "http://127.0.0.1:9/d.qcow2", "login_user": "debian"}})
    assert made.status == 202
    image = api.get("/v2.1/images/deb", headers=EXTRA).body["image"]
    assert image["vmops:login_user"] == "debian"
    assert image["metadata"] == {"os_admin_user": "debian"}  # Glance's property name
    assert api.get("/image/v2/images/deb").body["os_admin_user"] == "debian"
    tiny = api.get("/v2.1/images/tiny", headers=EXTRA).body["image"]
    assert (tiny["vmops:login_user"], tiny["metadata"]) == (None, {})
    for bad in ("Debian", "1x", "-x", "a b", "debian\n", "x" * 33, 7):
        answer = api.post("/v2.1/images", {"image": {"name": "bad", "source": "http://127.0.0.1:9/x",
                                                     "login_user": bad}})
        assert answer.status == 400, bad
    assert api.get("/v2.1/images/bad").status == 404


def test_doctor(api: Api) -> None:
    assert api.get("/v2.1/os-vmops/doctor").body["checks"][0]["ok"] is True


# -- metrics ---------------------------------------------------------------------------
def test_metrics_use_one_bulk_stats_call_and_the_exporter_names(api: Api, monkeypatch:
                                                                pytest.MonkeyPatch) -> None:
    for n in range(5):
        api.add_instance(f"web{n}")
    calls: list[str] = []
    real = api.hv.bulk_stats

    def bulk_stats() -> dict[str, dict[str, int | float]]:
        calls.append("bulk_stats")
        stats = real()
        for values in stats.values():
            values.update({"block.count": 1, "block.0.rd.bytes": 512, "block.0.wr.reqs": 3,
                           "net.count": 1, "net.0.rx.bytes": 100, "net.0.tx.pkts": 2})
        return stats

    monkeypatch.setattr(api.hv, "bulk_stats", bulk_stats)
    for method in ("info", "exists", "list_uuids"):
        monkeypatch.setattr(api.hv, method, _forbidden(method))
    answer = api.get("/metrics")
    assert calls == ["bulk_stats"]
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = _scrape(answer.body.decode())
    assert samples[("libvirt_up", ())] == 1
    assert samples[("libvirt_domain_info_maximum_memory_bytes",
                    (("domain", "vmops-web0"),))] == 536870912
    assert samples[("libvirt_domain_info_virtual_cpus", (("domain", "vmops-web3"),))] == 1
    assert samples[("libvirt_domain_info_cpu_time_seconds_total",
                    (("domain", "vmops-web1"),))] == 0
    assert samples[("libvirt_domain_block_stats_read_bytes_total", (
        ("domain", "vmops-web2"), ("source_file", "/nonexistent/web2/root.qcow2"),
        ("target_device", "vda")))] == 512
    assert samples[("libvirt_domain_block_stats_write_requests_total", (
        ("domain", "vmops-web2"), ("source_file", "/nonexistent/web2/root.qcow2"),
        ("target_device", "vda")))] == 3
    assert samples[("libvirt_domain_interface_stats_receive_bytes_total", (
        ("domain", "vmops-web4"), ("source_bridge", ""), ("target_device", "net0")))] == 100
    assert samples[("libvirt_domain_interface_stats_transmit_packets_total", (
        ("domain", "vmops-web4"), ("source_bridge", ""), ("target_device", "net0")))] == 2
    assert samples[("vmops_instances", (("status", "ACTIVE"),))] == 5
    assert samples[("vmops_instances", (("status", "SHUTOFF"),))] == 0
    web0 = api.store.instance("web0")
    assert samples[("vmops_instance_info", (
        ("domain", "vmops-web0"), ("flavor", "m1.tiny"), ("id", web0.id),
        ("image", web0.image_name), ("name", "web0"), ("status", "ACTIVE")))] == 1


def _forbidden(name: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a scrape called {name}")
    return call


# The metric families a scrape exposes and their types, from the libvirt
# exporter's names and vmops' own: each one is there on every scrape, even
# with no sample.
FAMILIES = {
    "libvirt_up": "gauge",
    **{f"libvirt_domain_info_{name}": "counter" if name.endswith("_total") else "gauge"
       for name in ("maximum_memory_bytes", "memory_usage_bytes", "virtual_cpus",
                    "cpu_time_seconds_total", "vstate")},
    **{f"libvirt_domain_block_stats_{name}": "counter"
       for name in ("read_bytes_total", "read_requests_total", "write_bytes_total",
                    "write_requests_total")},
    **{f"libvirt_domain_interface_stats_{way}_{what}_total": "counter"
       for way in ("receive", "transmit") for what in ("bytes", "packets", "errors", "drops")},
    "vmops_instances": "gauge", "vmops_instance_info": "gauge",
    "vmops_operations_total": "counter", "vmops_operation_duration_seconds": "histogram",
}


def _scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a scrape, read by prometheus_client's own text parser
    (which refuses what the format does not allow), by (name, sorted labels);
    every family of FAMILIES is there with its type and help."""
    from prometheus_client.parser import text_string_to_metric_families

    families = list(text_string_to_metric_families(text))
    # The parser names a counter family without its _total; the text's
    # # TYPE line has the full name, as FAMILIES does.
    typed = {(f.name + "_total" if f.type == "counter" else f.name): f.type for f in families}
    assert typed == FAMILIES
    assert all(f.documentation for f in families)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in families for s in f.samples}


def test_metrics_count_operations_by_verb_and_result(api: Api) -> None:
    api.add_instance("web1")
    api.add_instance("web2", states.STOPPED)
    api.post("/v2.1/servers/web1/action", {"pause": None})
    _wait_idle(api, "web1")
    api.post("/v2.1/servers/web2/action", {"pause": None})  # refused: stopped
    api.hv.fail_next("unpause", _hypervisor_error())
    api.post("/v2.1/servers/web1/action", {"unpause": None})
    _wait_idle(api, "web1")
    api.call("DELETE", "/v2.1/servers/web2")
    samples = _scrape(api.get("/metrics").body.decode())

    def ops(verb: str, result: str, name: str = "vmops_operations_total",
            **more: str) -> float:
        labels = tuple(sorted({"verb": verb, "result": result, **more}.items()))
        return samples[(name, labels)]

    assert ops("pause", "ok") == 1
    assert ops("pause", "refused") == 1
    assert ops("unpause", "error") == 1
    assert ops("destroy", "ok") == 1
    duration = "vmops_operation_duration_seconds"
    assert ops("pause", "ok", f"{duration}_count") == 1
    assert ops("pause", "ok", f"{duration}_bucket", le="+Inf") == 1
    assert ops("pause", "ok", f"{duration}_sum") >= 0
    assert {le for (name, labels), _ in samples.items() if name == f"{duration}_bucket"
            for k, le in labels if k == "le"} == {
        "0.1", "0.5", "1", "2.5", "5", "10", "30", "60", "120", "300", "+Inf"}


def test_metrics_buckets_are_cumulative() -> None:
    from vmops.api.metrics import Operations

    ops = Operations()
    for seconds in (0.05, 0.3, 7.0, 400.0):
        ops.record("spawn", "ok", seconds)
    counter, histogram = ops.collect()
    assert [s.value for s in counter.samples] == [4]
    buckets = {s.labels["le"]: s.value for s in histogram.samples
               if s.name.endswith("_bucket")}
    assert buckets == {"0.1": 1, "0.5": 2, "1": 2, "2.5": 2, "5": 2, "10": 3, "30": 3,
                       "60": 3, "120": 3, "300": 3, "+Inf": 4}
    assert [s.value for s in histogram.samples if s.name.endswith("_sum")] == [
        pytest.approx(407.35)]


def _hypervisor_error() -> Any:
    from vmops.errors import HypervisorError

    return HypervisorError(reason="injected")


def test_metrics_when_libvirt_fails(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from vmops.errors import HypervisorError

    def broken() -> None:
        raise HypervisorError(reason="gone")

    monkeypatch.setattr(api.hv, "bulk_stats", broken)
    answer = api.get("/metrics")
    assert answer.status == 200
    samples = _scrape(answer.body.decode())
    assert samples[("libvirt_up", ())] == 0
    assert not any(name.startswith("libvirt_domain_") for name, _ in samples)


# -- the OpenAPI document ---------------------------------------------------------
def test_openapi_is_served_and_kept_as_a_file(api: Api) -> None:
    served = api.get("/openapi.json").body
    assert served == json.loads(json.dumps(DOCUMENT))
    kept = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert kept == served, "regenerate: python -m vmops.api.openapi > docs/openapi.json"


def test_every_route_is_documented(api: Api) -> None:
    for method, template in api_routes(api):
        assert method.lower() in DOCUMENT["paths"].get(template, {}), f"{method} {template}"


def api_routes(api: Api) -> list[tuple[str, str]]:
    routes = Routes(api.compute, Catalog(api.store, ImageCache(Path("/nonexistent"))),
                    lambda: [])
    return routes.router().templates()


def test_server_list_follows_every_record_change(api: Api) -> None:
    inst = api.add_instance("web1")
    api.add_instance("web2")

    def detail() -> dict[str, str]:
        return {s["name"]: s["status"] for s in api.get("/v2.1/servers/detail").body["servers"]}

    assert detail() == {"web1": "ACTIVE", "web2": "ACTIVE"}
    api.store.update_instance(inst, vm_state=states.STOPPED)
    assert detail() == {"web1": "SHUTOFF", "web2": "ACTIVE"}
    assert api.get("/v2.1/servers/detail?name=web2").body["servers"][0]["name"] == "web2"
    api.call("DELETE", "/v2.1/servers/web1")
    assert detail() == {"web2": "ACTIVE"}
    other_host = api.get("/v2.1/servers/detail", headers={"Host": "example.test:8774"})
    assert other_host.body["servers"][0]["links"][0]["href"].startswith(
        "http://example.test:8774/v2.1/servers/")
