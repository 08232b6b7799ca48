"""The identity API over a real socket (Keystone v3 at /identity/v3) and
the role each route needs, on the fake hypervisor, wired as the service
wires it: the IdentityAuthenticator knows the fixed token and issued ones.
Every answer is checked against the OpenAPI document (``Api.raw``)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_api import TOKEN, Api
from vmops import config
from vmops.api import server
from vmops.hypervisor.fake import FakeHypervisor
from vmops.identity.authenticator import IdentityAuthenticator
from vmops.identity.bootstrap import ensure_admin_password
from vmops.service import build

ID = "/identity/v3"
ADMIN_PASSWORD = "admin-secret"


@pytest.fixture
def kapi(tmp_path: Path) -> Iterator[Api]:
    settings = config.load(tmp_path, env={}, api_token=TOKEN,
                           identity_admin_password=ADMIN_PASSWORD)
    hv = FakeHypervisor()
    engine = build(settings, hypervisor=hv)
    compute, store, identity = engine.compute, engine.store, engine.identity
    ensure_admin_password(identity.directory, settings.admin_password_file, ADMIN_PASSWORD)
    routes = engine.routes()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    servers = server.serve(routes.router(), settings.api_socket, f"127.0.0.1:{port}",
                           authenticator=IdentityAuthenticator(identity))
    yield Api(port, compute, hv, store)
    for srv in servers:
        srv.shutdown()
        srv.server_close()
    store.close()


def password_body(user: str, password: str, project: str | None = None) -> dict[str, Any]:
    auth: dict[str, Any] = {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": "Default"}, "password": password}}}}
    if project is not None:
        auth["scope"] = {"project": {"name": project, "domain": {"id": "default"}}}
    return {"auth": auth}


def issue(api: Api, user: str, password: str, project: str | None = None,
          headers: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    answer = api.post(f"{ID}/auth/tokens", password_body(user, password, project), token=None,
                      headers=headers)
    assert answer.status == 201, answer.body
    return answer.headers["x-subject-token"], answer.body["token"]


def keystone_error(answer: Any, status: int) -> str:
    assert answer.status == status, (answer.status, answer.body)
    error = answer.body["error"]
    assert set(error) == {"code", "title", "message"} and error["code"] == status
    return str(error["message"])


def make_account(api: Api, name: str, role: str, password: str = "pw") -> tuple[str, str]:
    """A project and a user with ``role`` on it, made as Tempest's dynamic
    credentials make them; (user id, project id)."""
    domain = api.get(f"{ID}/domains?name=Default").body["domains"][0]
    project = api.post(f"{ID}/projects", {"project": {
        "name": name, "description": f"{name}-desc", "domain_id": domain["id"]}})
    assert project.status == 201
    project_id = project.body["project"]["id"]
    user = api.post(f"{ID}/users", {"user": {"name": f"{name}-user", "password": password,
                                             "domain_id": domain["id"]}})
    assert user.status == 201 and "password" not in user.body["user"]
    user_id = user.body["user"]["id"]
    roles = {r["name"]: r["id"] for r in api.get(f"{ID}/roles").body["roles"]}
    assert set(roles) == {"admin", "member", "reader"}
    path = f"{ID}/projects/{project_id}/users/{user_id}/roles/{roles[role]}"
    assert api.call("PUT", path).status == 204
    assert api.call("HEAD", path).status == 204
    return user_id, project_id


# -- tokens ------------------------------------------------------------------------------
def test_password_token_body_and_catalog_from_the_clients_host(kapi: Api) -> None:
    token, body = issue(kapi, "admin", ADMIN_PASSWORD, "admin",
                        headers={"Host": "cloud.example.test:8774"})
    assert len(token) >= 43
    assert body["methods"] == ["password"]
    assert body["user"]["name"] == "admin" and body["user"]["domain"] == {
        "id": "default", "name": "Default"}
    assert body["project"]["name"] == "admin"
    assert {r["name"] for r in body["roles"]} == {"admin", "member", "reader"}
    assert body["expires_at"].endswith("Z") and body["issued_at"] < body["expires_at"]
    assert len(body["audit_ids"]) == 1
    urls = {(s["type"], e["interface"]): e["url"] for s in body["catalog"]
            for e in s["endpoints"]}
    base = "http://cloud.example.test:8774"
    assert urls[("compute", "public")] == f"{base}/v2.1"
    assert urls[("image", "internal")] == f"{base}/image"
    assert urls[("network", "admin")] == f"{base}/network"
    assert urls[("identity", "public")] == f"{base}/identity/v3"
    assert urls[("block-storage", "public")] == f"{base}/volume/v3"
    assert {e["region"] for s in body["catalog"] for e in s["endpoints"]} == {"RegionOne"}
    # The token works for the other services.
    assert kapi.get("/v2.1/flavors", token=token).status == 200
    assert kapi.get("/image/v2/images", token=token).status == 200


def test_validate_check_and_revoke(kapi: Api) -> None:
    token, _ = issue(kapi, "admin", ADMIN_PASSWORD, "admin")
    other, _ = issue(kapi, "admin", ADMIN_PASSWORD, "admin")
    shown = kapi.get(f"{ID}/auth/tokens", token=token, headers={"X-Subject-Token": other})
    assert shown.status == 200 and shown.headers["x-subject-token"] == other
    assert shown.body["token"]["project"]["name"] == "admin"
    bare = kapi.get(f"{ID}/auth/tokens?nocatalog=1", token=token,
                    headers={"X-Subject-Token": other})
    assert "catalog" not in bare.body["token"]
    assert kapi.call("HEAD", f"{ID}/auth/tokens", token=token,
                     headers={"X-Subject-Token": other}).status == 200
    assert kapi.call("DELETE", f"{ID}/auth/tokens", token=token,
                     headers={"X-Subject-Token": other}).status == 204
    assert kapi.get("/v2.1/flavors", token=other).status == 401
    gone = kapi.get(f"{ID}/auth/tokens", token=token, headers={"X-Subject-Token": other})
    assert "Could not find token" in keystone_error(gone, 404)
    missing = kapi.get(f"{ID}/auth/tokens", token=token)
    assert "X-Subject-Token" in keystone_error(missing, 400)
    # Without a valid token of one's own: Keystone's 401.
    no_auth = kapi.get(f"{ID}/auth/tokens", token="revoked-or-made-up",
                       headers={"X-Subject-Token": token})
    keystone_error(no_auth, 401)


def test_the_fixed_token_still_works_and_acts_as_admin(kapi: Api) -> None:
    assert kapi.get("/v2.1/servers").status == 200
    projects = kapi.get(f"{ID}/auth/projects").body["projects"]
    assert [p["name"] for p in projects] == ["admin"]
    rescoped = kapi.post(f"{ID}/auth/tokens", {"auth": {
        "identity": {"methods": ["token"], "token": {"id": TOKEN}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}, token=None)
    assert rescoped.status == 201
    assert rescoped.body["token"]["user"]["name"] == "admin"


def test_wrong_password_and_unknown_user_are_the_same_401(kapi: Api) -> None:
    wrong = kapi.post(f"{ID}/auth/tokens", password_body("admin", "nope", "admin"), token=None)
    unknown = kapi.post(f"{ID}/auth/tokens", password_body("ghost", "nope", "admin"),
                        token=None)
    assert keystone_error(wrong, 401) == keystone_error(unknown, 401)
    assert "x-subject-token" not in wrong.headers


def test_guessing_is_refused_with_401_after_five_failures(kapi: Api) -> None:
    make_account(kapi, "p1", "member", password="right")
    for _ in range(5):
        keystone_error(kapi.post(f"{ID}/auth/tokens", password_body("p1-user", "guess", "p1"),
                                 token=None), 401)
    locked = kapi.post(f"{ID}/auth/tokens", password_body("p1-user", "right", "p1"),
                       token=None)
    assert "Too many failed attempts" in keystone_error(locked, 401)


@pytest.mark.parametrize("body", [
    None, [], "auth", {}, {"auth": None}, {"auth": {}}, {"auth": {"identity": {}}},
    {"auth": {"identity": {"methods": "password"}}},
    {"auth": {"identity": {"methods": [1]}}},
    {"auth": {"identity": {"methods": ["password"]}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": "admin"}}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin"}}}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"name": "Default"}}}}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"name": "Default"}, "password": 12}}}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"name": "Default"}, "password": "x" * 5000}}}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": ["admin"], "domain": {"name": "Default"}, "password": "x"}}}}},
    {"auth": {"identity": {"methods": ["token"], "token": {}}}},
    {"auth": {"identity": {"methods": ["token"], "token": {"id": "t" * 10_000}}}},
    {"auth": {"identity": {"methods": ["token"], "token": {"id": "t"}}, "scope": 7}},
    {"auth": {"identity": {"methods": ["token"], "token": {"id": "t"}},
              "scope": {"project": {"name": "admin"}}}},
])
def test_malformed_auth_bodies_are_400(kapi: Api, body: Any) -> None:
    answer = kapi.post(f"{ID}/auth/tokens", body, token=None)
    assert "Invalid input" in keystone_error(answer, 400) or answer.status == 400


@pytest.mark.parametrize("raw", [b"{", b"\xff\xfe", b"[" * 100 + b"]" * 100, b"1e999"])
def test_undecodable_auth_bodies_are_400(kapi: Api, raw: bytes) -> None:
    answer = kapi.raw("POST", f"{ID}/auth/tokens", raw, {"Content-Type": "application/json"})
    keystone_error(answer, 400)


def test_a_huge_auth_body_is_413_unread(kapi: Api) -> None:
    huge = json.dumps({"auth": {"pad": "x" * (2 << 20)}}).encode()
    answer = kapi.raw("POST", f"{ID}/auth/tokens", huge, {"Content-Type": "application/json"})
    keystone_error(answer, 413)


def test_other_scopes_and_methods_are_401(kapi: Api) -> None:
    for auth in ({"identity": {"methods": ["password"], "password": {"user": {
                     "name": "admin", "domain": {"id": "default"}, "password": ADMIN_PASSWORD}}},
                  "scope": {"domain": {"id": "default"}}},
                 {"identity": {"methods": ["totp"], "totp": {}}},
                 {"identity": {"methods": ["password"], "password": {"user": {
                     "name": "admin", "domain": {"id": "default"}, "password": ADMIN_PASSWORD}}},
                  "scope": {"project": {"name": "nope", "domain": {"id": "default"}}}}):
        keystone_error(kapi.post(f"{ID}/auth/tokens", {"auth": auth}, token=None), 401)


# -- accounts as Tempest makes them ----------------------------------------------------
def test_dynamic_credentials_flow(kapi: Api) -> None:
    user_id, project_id = make_account(kapi, "tempest-p1", "member")
    token, body = issue(kapi, "tempest-p1-user", "pw", "tempest-p1")
    assert body["project"]["id"] == project_id
    assert {r["name"] for r in body["roles"]} == {"member", "reader"}
    mine = kapi.get(f"{ID}/users/{user_id}/projects", token=token).body["projects"]
    assert [p["id"] for p in mine] == [project_id]
    assert kapi.get(f"{ID}/projects/{project_id}", token=token).status == 200
    assert kapi.get(f"{ID}/users/{user_id}", token=token).status == 200
    listed = kapi.get(f"{ID}/projects/{project_id}/users/{user_id}/roles").body["roles"]
    assert [r["name"] for r in listed] == ["member"]
    found = kapi.get(f"{ID}/users?name=tempest-p1-user").body["users"]
    assert [u["id"] for u in found] == [user_id]
    assignments = kapi.get(f"{ID}/role_assignments?user.id={user_id}&include_names=1")
    assert assignments.body["role_assignments"][0]["scope"]["project"]["name"] == "tempest-p1"
    assert kapi.get(f"{ID}/domains/default").body["domain"]["name"] == "Default"
    assert kapi.get(f"{ID}/domains?name=Other").body["domains"] == []
    taken = kapi.post(f"{ID}/projects", {"project": {"name": "tempest-p1"}})
    keystone_error(taken, 409)
    # Clean-up as clear_creds does it: the user, then the project.
    assert kapi.call("DELETE", f"{ID}/users/{user_id}").status == 204
    assert kapi.get("/v2.1/flavors", token=token).status == 401  # its tokens went with it
    assert kapi.call("DELETE", f"{ID}/projects/{project_id}").status == 204
    keystone_error(kapi.call("DELETE", f"{ID}/projects/{project_id}"), 404)


def test_a_user_changes_their_own_password(kapi: Api) -> None:
    user_id, _ = make_account(kapi, "p1", "member", password="old")
    token, _ = issue(kapi, "p1-user", "old", "p1")
    wrong = kapi.post(f"{ID}/users/{user_id}/password", {"user": {
        "original_password": "bad", "password": "new"}}, token=token)
    keystone_error(wrong, 401)
    assert kapi.post(f"{ID}/users/{user_id}/password", {"user": {
        "original_password": "old", "password": "new"}}, token=token).status == 204
    assert kapi.get("/v2.1/flavors", token=token).status == 401
    issue(kapi, "p1-user", "new", "p1")


# -- roles -------------------------------------------------------------------------------
def test_a_reader_reads_and_cannot_write(kapi: Api) -> None:
    make_account(kapi, "p1", "reader")
    token, _ = issue(kapi, "p1-user", "pw", "p1")
    assert kapi.get("/v2.1/flavors", token=token).status == 200
    assert kapi.get("/v2.1/servers", token=token).status == 200
    refused = kapi.post("/v2.1/os-keypairs", {"keypair": {"name": "k", "public_key": "x"}},
                        token=token)
    assert refused.status == 403
    (name, inner), = refused.body.items()
    assert name == "forbidden" and "member role" in inner["message"]
    assert kapi.call("DELETE", "/v2.1/servers/x", token=token).status == 403


def test_a_member_cannot_call_admin_routes(kapi: Api) -> None:
    make_account(kapi, "p1", "member")
    token, _ = issue(kapi, "p1-user", "pw", "p1")
    flavor = {"flavor": {"name": "f", "ram": 64, "vcpus": 1, "disk": 1}}
    assert kapi.post("/v2.1/flavors", flavor, token=token).status == 403
    assert kapi.call("DELETE", "/v2.1/flavors/1", token=token).status == 403
    assert kapi.post("/v2.1/images", {"image": {"name": "x", "source": "/etc/shadow"}},
                     token=token).status == 403
    assert kapi.get("/metrics", token=token).status == 403
    users = kapi.get(f"{ID}/users", token=token)
    assert "admin role" in keystone_error(users, 403)
    keystone_error(kapi.post(f"{ID}/projects", {"project": {"name": "mine"}}, token=token),
                   403)
    admin_project = kapi.get(f"{ID}/projects?name=admin").body["projects"][0]["id"]
    keystone_error(kapi.get(f"{ID}/projects/{admin_project}", token=token), 403)
    # A member writes in their project.
    assert kapi.post("/v2.1/os-keypairs", {"keypair": {
        "name": "k", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZtb3BzLXVuaXQtdGVz"
        "dC1rZXktMzItYnl0ZXMtb2sh me@host"}}, token=token).status in (200, 201)


def test_an_unscoped_token_lists_projects_and_nothing_else(kapi: Api) -> None:
    make_account(kapi, "p1", "member")
    token, body = issue(kapi, "p1-user", "pw")
    assert "project" not in body and "catalog" not in body
    projects = kapi.get(f"{ID}/auth/projects", token=token).body["projects"]
    assert [p["name"] for p in projects] == ["p1"]
    assert kapi.get("/v2.1/servers", token=token).status == 403
    rescoped = kapi.post(f"{ID}/auth/tokens", {"auth": {
        "identity": {"methods": ["token"], "token": {"id": token}},
        "scope": {"project": {"name": "p1", "domain": {"id": "default"}}}}}, token=None)
    assert rescoped.status == 201


def test_another_users_token_is_not_yours_to_see(kapi: Api) -> None:
    make_account(kapi, "p1", "member")
    make_account(kapi, "p2", "member")
    one, _ = issue(kapi, "p1-user", "pw", "p1")
    two, _ = issue(kapi, "p2-user", "pw", "p2")
    keystone_error(kapi.get(f"{ID}/auth/tokens", token=one, headers={"X-Subject-Token": two}),
                   403)
    keystone_error(kapi.call("DELETE", f"{ID}/auth/tokens", token=one,
                             headers={"X-Subject-Token": two}), 403)
    assert kapi.get(f"{ID}/auth/tokens", token=one,
                    headers={"X-Subject-Token": one}).status == 200
