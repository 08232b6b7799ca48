"""Nova's exact API contract, on the fake hypervisor: the keys of every body
at each microversion vmops serves (the sets below are those of Tempest's
response schemas, tempest/lib/api_schema/response/compute/v2_*, which allow
no other keys), what each microversion changes, and who sees what (servers
belong to a project, keypairs to a user)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_api import IMAGE_ID, TOKEN, Answer, Api, start_api, stop_api
from vmops.api import views
from vmops.api.server import Authenticator, Context
from vmops.compute import spawn as spawn_steps
from vmops.compute import states
from vmops.console.fake import FakeConsole
from vmops.store import Image

# -- the key sets of Tempest's schemas -------------------------------------------------
# Server show and list detail at 2.1 (v2_1/servers.py server_detail), for an
# admin: progress only in BUILD/ACTIVE, fault only in ERROR.
SHOW_21 = {"id", "name", "status", "image", "flavor", "user_id", "tenant_id", "created",
           "updated", "metadata", "links", "addresses", "hostId", "OS-DCF:diskConfig",
           "accessIPv4", "accessIPv6", "key_name", "security_groups",
           "OS-SRV-USG:launched_at", "OS-SRV-USG:terminated_at", "OS-EXT-AZ:availability_zone",
           "OS-EXT-STS:task_state", "OS-EXT-STS:vm_state", "OS-EXT-STS:power_state",
           "OS-EXT-SRV-ATTR:host", "OS-EXT-SRV-ATTR:instance_name",
           "OS-EXT-SRV-ATTR:hypervisor_hostname", "os-extended-volumes:volumes_attached",
           "config_drive", "progress"}
ADMIN_ONLY_21 = {"OS-EXT-SRV-ATTR:host", "OS-EXT-SRV-ATTR:instance_name",
                 "OS-EXT-SRV-ATTR:hypervisor_hostname"}
# v2_3/servers.py: the extended server attributes 2.3 adds (admin only).
ADDED_23 = {"OS-EXT-SRV-ATTR:reservation_id", "OS-EXT-SRV-ATTR:launch_index",
            "OS-EXT-SRV-ATTR:kernel_id", "OS-EXT-SRV-ATTR:ramdisk_id",
            "OS-EXT-SRV-ATTR:hostname", "OS-EXT-SRV-ATTR:root_device_name",
            "OS-EXT-SRV-ATTR:user_data"}
# PUT /servers/{id} and rebuild at 2.1 (v2_1 common_show_server): no show-only keys.
UPDATE_21 = {"id", "name", "status", "image", "flavor", "user_id", "tenant_id", "created",
             "updated", "metadata", "links", "addresses", "hostId", "OS-DCF:diskConfig",
             "accessIPv4", "accessIPv6", "progress"}
FLAVOR_247 = {"original_name", "disk", "ephemeral", "ram", "swap", "vcpus", "extra_specs"}
CREATED = {"id", "links", "OS-DCF:diskConfig", "security_groups", "adminPass"}
FLAVOR = {"name", "links", "ram", "vcpus", "swap", "disk", "id", "OS-FLV-DISABLED:disabled",
          "os-flavor-access:is_public", "rxtx_factor", "OS-FLV-EXT-DATA:ephemeral"}
KEYPAIR_LIST_21 = {"public_key", "name", "fingerprint"}
KEYPAIR_SHOW_21 = {"public_key", "name", "fingerprint", "user_id", "deleted", "created_at",
                   "updated_at", "deleted_at", "id"}
KEYPAIR_CREATE_21 = {"fingerprint", "name", "public_key", "user_id"}
IMAGE = {"id", "status", "updated", "links", "name", "created", "minDisk", "minRam", "progress",
         "metadata", "OS-EXT-IMG-SIZE:size"}

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILhE/Js2CulLK1ww4aieoN8RmA8eQUrJs/5Q17XzDxXB me"


def at(version: str) -> dict[str, str]:
    return {"OpenStack-API-Version": f"compute {version}"}


def show(api: Api, ref: str, version: str = "2.1", token: str = TOKEN) -> dict[str, Any]:
    answer = api.get(f"/v2.1/servers/{ref}", headers=at(version), token=token)
    assert answer.status == 200, answer.body
    assert answer.headers["openstack-api-version"] == f"compute {version}"
    assert answer.headers["x-openstack-nova-api-version"] == version
    server: dict[str, Any] = answer.body["server"]
    return server


# -- servers at each microversion --------------------------------------------------------
def test_server_show_at_2_1_has_exactly_novas_keys(api: Api) -> None:
    api.add_instance("web1")
    body = show(api, "web1")
    assert set(body) == SHOW_21
    assert not any(k.startswith("vmops:") for k in body)
    assert body["OS-EXT-AZ:availability_zone"] == "nova"
    assert body["config_drive"] == "" and body["accessIPv4"] == ""
    assert len(body["hostId"]) == 56  # sha224 of project and host, as Nova
    detail = api.get("/v2.1/servers/detail").body["servers"][0]
    assert set(detail) == SHOW_21
    assert set(api.get("/v2.1/servers").body["servers"][0]) == {"id", "name", "links"}


@pytest.mark.parametrize(("version", "added"), [
    ("2.2", set()), ("2.3", ADDED_23), ("2.9", ADDED_23 | {"locked"}),
    ("2.16", ADDED_23 | {"locked", "host_status"}),
    ("2.19", ADDED_23 | {"locked", "host_status", "description"}),
    ("2.26", ADDED_23 | {"locked", "host_status", "description", "tags"}),
    ("2.52", ADDED_23 | {"locked", "host_status", "description", "tags"})])
def test_server_show_keys_at_each_microversion(api: Api, version: str, added: set[str]) -> None:
    api.add_instance("web1")
    body = show(api, "web1", version)
    assert set(body) == SHOW_21 | added
    detail = api.get("/v2.1/servers/detail", headers=at(version)).body["servers"][0]
    assert set(detail) == SHOW_21 | added


def test_flavor_in_a_server_from_2_47(api: Api) -> None:
    api.add_instance("web1")
    assert set(show(api, "web1", "2.46")["flavor"]) == {"id", "links"}
    flavor = show(api, "web1", "2.47")["flavor"]
    assert set(flavor) == FLAVOR_247
    assert (flavor["original_name"], flavor["ram"], flavor["swap"]) == ("m1.tiny", 512, 0)


def test_extended_attributes_are_for_admins_only(api: Api, member: str) -> None:
    inst = api.add_instance("web1")
    api.store.update_instance(inst, project_id="p-member")
    body = show(api, inst.id, "2.52", token=member)
    assert set(body) == (SHOW_21 - ADMIN_ONLY_21) | {"locked", "description", "tags"}


def test_vmops_keys_come_only_when_asked_for(api: Api) -> None:
    api.add_instance("web1")
    body = api.get("/v2.1/servers/web1", headers={"X-Vmops-Extra": "1"}).body["server"]
    extra = {k for k in body if k.startswith("vmops:")}
    assert extra == {"vmops:flavor", "vmops:power_state", "vmops:image_name", "vmops:disks",
                     "vmops:macs", "vmops:nics", "vmops:fault", "vmops:live"}
    assert set(body) - extra == SHOW_21


def test_update_renames_and_answers_novas_shorter_body(api: Api) -> None:
    inst = api.add_instance("web1")
    answer = api.call("PUT", "/v2.1/servers/web1", {"server": {
        "name": "web one", "accessIPv4": "192.168.7.1", "accessIPv6": "fd00::1"}})
    assert answer.status == 200, answer.body
    assert set(answer.body["server"]) == UPDATE_21
    after = api.store.instance(inst.id)
    assert (after.name, after.access_ipv4, after.access_ipv6) == ("web one", "192.168.7.1",
                                                                 "fd00::1")
    assert after.hostname == ""  # the guest keeps the hostname it was given
    assert api.call("PUT", f"/v2.1/servers/{inst.id}", {"server": {"description": "d"}}
                    ).status == 400  # only from 2.19
    answer = api.call("PUT", f"/v2.1/servers/{inst.id}", {"server": {"description": "db"}},
                      headers=at("2.19"))
    assert set(answer.body["server"]) == UPDATE_21 | {"locked", "description"}
    assert answer.body["server"]["description"] == "db"
    answer = api.call("PUT", f"/v2.1/servers/{inst.id}", {"server": {}}, headers=at("2.47"))
    assert set(answer.body["server"]["flavor"]) == FLAVOR_247
    for bad in ({"name": ""}, {"name": " x"}, {"accessIPv4": "fd00::1"}, {"colour": "red"},
                {"accessIPv6": "300.1.1.1"}):
        assert api.call("PUT", f"/v2.1/servers/{inst.id}", {"server": bad}).status == 400, bad
    assert api.store.instance(inst.id).name == "web one"


def test_create_reply_and_admin_password(api: Api) -> None:
    answer = api.post("/v2.1/servers", {"server": {
        "name": "web1", "imageRef": IMAGE_ID, "flavorRef": "1",
        "accessIPv4": "198.51.100.7"}})
    assert answer.status == 202, answer.body
    created = answer.body["server"]
    assert set(created) == CREATED
    assert len(created["adminPass"]) == 12
    given = api.post("/v2.1/servers", {"server": {
        "name": "web2", "imageRef": IMAGE_ID, "flavorRef": "1", "adminPass": "s3cret!"}})
    assert given.body["server"]["adminPass"] == "s3cret!"
    assert api.store.instance(created["id"]).access_ipv4 == "198.51.100.7"
    _settle(api)


def test_no_admin_password_when_the_setting_is_off(api: Api, monkeypatch: Any) -> None:
    import dataclasses

    monkeypatch.setattr(api.compute, "settings", dataclasses.replace(
        api.compute.settings, enable_instance_password=False))
    answer = api.post("/v2.1/servers", {"server": {
        "name": "web1", "imageRef": IMAGE_ID, "flavorRef": "1"}})
    assert set(answer.body["server"]) == CREATED - {"adminPass"}
    _settle(api)


def test_several_servers_per_request(api: Api) -> None:
    answer = api.post("/v2.1/servers", {"server": {
        "name": "web", "imageRef": IMAGE_ID, "flavorRef": "1", "min_count": 2,
        "max_count": "3"}})
    assert answer.status == 202, answer.body
    made = sorted(api.store.instances(), key=lambda i: i.launch_index)
    assert [(i.name, i.launch_index) for i in made] == [("web-1", 0), ("web-2", 1),
                                                        ("web-3", 2)]
    assert len({i.reservation_id for i in made}) == 1
    assert answer.body["server"]["id"] == made[0].id
    reserved = api.post("/v2.1/servers", {"server": {
        "name": "db", "imageRef": IMAGE_ID, "flavorRef": "1", "max_count": 2,
        "return_reservation_id": True}})
    assert set(reserved.body) == {"reservation_id"}
    listed = api.get(f"/v2.1/servers?reservation_id={reserved.body['reservation_id']}")
    assert sorted(s["name"] for s in listed.body["servers"]) == ["db-1", "db-2"]
    _settle(api)


def test_list_filters_changes_since_and_ip(api: Api) -> None:
    inst = api.add_instance("web1")

    def names(query: str) -> list[str]:
        answer = api.get(f"/v2.1/servers{query}")
        assert answer.status == 200, answer.body
        return [s["name"] for s in answer.body["servers"]]

    assert names("?changes-since=2000-01-01T00:00:00Z") == ["web1"]
    assert names("?changes-since=2999-01-01T00:00:00+00:00") == []
    assert names("?changes-since=2999-01-01T00:00:00") == []
    assert api.get("/v2.1/servers?changes-since=yesterday").status == 400
    with api.store.transaction() as db:  # no vmops network here: a port by hand
        db.execute("INSERT INTO ports (id, instance_id, position, mode, network, mac, ip, tap, "
                   "created_at) VALUES (?, ?, 0, 'bridge', 'vmops', ?, ?, 'tap0', 0)",
                   ("p1", inst.id, "52:54:00:aa:bb:cc", "10.213.0.7"))
    assert names("?ip=10.213.0.7") == ["web1"]
    assert names("?ip=^10\\.9") == []


def test_fields_of_later_microversions_on_create(api: Api) -> None:
    def create(version: str, **fields: Any) -> Answer:
        return api.post("/v2.1/servers", {"server": {
            "name": "web1", "imageRef": IMAGE_ID, "flavorRef": "1", **fields}},
            headers=at(version))

    assert create("2.51", tags=[]).status == 400
    assert create("2.52", tags=["a", "b"], networks="auto").status == 202
    assert create("2.36", networks="auto").status == 400  # strings only from 2.37
    missing = create("2.37")
    assert missing.status == 400 and "networks" in missing.fault()[1]
    assert create("2.37", networks="none").status == 202
    assert create("2.52", tags=["a/b"], networks="auto").status == 400
    assert create("2.52", tags=["t"] * 51, networks="auto").status == 400
    assert create("2.18", description="x").status == 400
    tagged_nic = [{"uuid": "user", "tag": "nic0"}]
    for version, status in (("2.31", 400), ("2.32", 202), ("2.36", 202), ("2.37", 400),
                            ("2.41", 400), ("2.42", 202)):  # Nova's device tags
        assert create(version, networks=tagged_nic).status == status, version
    made = create("2.19", description="the db", networks=[])
    assert made.status == 202
    assert api.store.instance(made.body["server"]["id"]).description == "the db"
    tagged = [i for i in api.store.instances() if i.tags]
    assert [i.tags for i in tagged] == [("a", "b")]
    assert show(api, tagged[0].id, "2.26")["tags"] == ["a", "b"]
    _settle(api)


def test_server_tags_api(api: Api) -> None:
    inst = api.add_instance("web1")
    base = f"/v2.1/servers/{inst.id}/tags"
    v = at("2.26")
    assert api.get(base).status == 404  # before 2.26
    assert api.call("PUT", base, {"tags": ["a", "b"]}, headers=v).body == {"tags": ["a", "b"]}
    assert api.call("PUT", f"{base}/c", headers=v).status == 201
    assert api.call("PUT", f"{base}/c", headers=v).status == 204
    assert api.get(f"{base}/c", headers=v).status == 204
    assert api.call("DELETE", f"{base}/a", headers=v).status == 204
    assert api.get(f"{base}/a", headers=v).status == 404
    assert api.get(base, headers=v).body == {"tags": ["b", "c"]}
    assert api.call("PUT", base, {"tags": ["x,y"]}, headers=v).status == 400
    assert api.call("DELETE", base, headers=v).status == 204
    assert api.store.instance(inst.id).tags == ()


def test_create_image_answers_its_id_from_2_45(api: Api, monkeypatch: Any) -> None:
    inst = api.add_instance("web1")
    seen: list[str] = []

    def snapshot(ref: str, name: str, cache: Any, properties: Any = None,
                 owner: str = "") -> Image:
        seen.append(name)
        return Image(id=f"id-{name}", name=name, status="saving", extra=properties or {})

    monkeypatch.setattr(api.compute, "snapshot", snapshot)
    old = api.post(f"/v2.1/servers/{inst.id}/action", {"createImage": {"name": "s1"}})
    assert (old.status, old.body) == (202, b"")
    assert old.headers["location"].endswith("/v2.1/images/id-s1")
    new = api.post(f"/v2.1/servers/{inst.id}/action",
                   {"createImage": {"name": "s2", "metadata": {"k": "v"}}}, headers=at("2.45"))
    assert (new.status, new.body) == (202, {"image_id": "id-s2"})
    assert "location" not in new.headers


def test_rebuild_answers_the_server(api: Api, monkeypatch: Any) -> None:
    inst = api.add_instance("web1")
    monkeypatch.setattr(api.compute, "rebuild", lambda ref, image: api.store.instance(ref))
    answer = api.post(f"/v2.1/servers/{inst.id}/action", {"rebuild": {
        "imageRef": IMAGE_ID, "name": "renamed", "metadata": {"role": "db"}}})
    assert answer.status == 202
    assert set(answer.body["server"]) == UPDATE_21 | {"adminPass"}
    assert (answer.body["server"]["name"], answer.body["server"]["metadata"]) == (
        "renamed", {"role": "db"})


# -- flavors, keypairs, images -----------------------------------------------------------
def test_flavor_bodies_and_filters(api: Api) -> None:
    detail = api.get("/v2.1/flavors/detail").body["flavors"]
    assert all(set(f) == FLAVOR for f in detail)
    assert [f["id"] for f in detail] == sorted(f["id"] for f in detail)  # Nova's default
    tiny = api.get("/v2.1/flavors/1").body["flavor"]
    assert (tiny["swap"], tiny["rxtx_factor"], tiny["os-flavor-access:is_public"]) == (
        "", 1.0, True)

    def ids(query: str) -> list[str]:
        return [f["id"] for f in api.get(f"/v2.1/flavors{query}").body["flavors"]]

    assert ids("?minRam=4096") == ["3", "4", "5"]
    assert ids("?minDisk=80") == ["4", "5"]
    assert ids("?minDisk=80&sort_key=memory_mb&sort_dir=desc") == ["5", "4"]
    assert ids("?is_public=false") == []
    assert ids("?is_public=none") == ids("")
    assert ids("?limit=2&marker=2") == ["3", "4"]
    for bad in ("?minRam=lots", "?sort_key=colour", "?sort_dir=up", "?is_public=maybe"):
        assert api.get(f"/v2.1/flavors{bad}").status == 400, bad


@pytest.mark.parametrize("public", [True, "True", "true", "1", "yes"])
def test_flavor_create_takes_novas_booleans(api: Api, public: Any) -> None:
    answer = api.post("/v2.1/flavors", {"flavor": {
        "name": "c1", "ram": "256", "vcpus": 1, "disk": 1, "swap": "", "id": 1234,
        "os-flavor-access:is_public": public}})
    assert answer.status == 200, answer.body
    assert set(answer.body["flavor"]) == FLAVOR
    assert answer.body["flavor"]["id"] == "1234"


def test_keypair_bodies_at_each_microversion(api: Api) -> None:
    made = api.post("/v2.1/os-keypairs", {"keypair": {"name": "me", "public_key": KEY}})
    assert (made.status, set(made.body["keypair"])) == (200, KEYPAIR_CREATE_21)
    listed = api.get("/v2.1/os-keypairs").body["keypairs"][0]["keypair"]
    assert set(listed) == KEYPAIR_LIST_21
    assert set(api.get("/v2.1/os-keypairs/me").body["keypair"]) == KEYPAIR_SHOW_21
    v22 = at("2.2")
    assert set(api.get("/v2.1/os-keypairs", headers=v22).body["keypairs"][0]["keypair"]) == \
        KEYPAIR_LIST_21 | {"type"}
    assert set(api.get("/v2.1/os-keypairs/me", headers=v22).body["keypair"]) == \
        KEYPAIR_SHOW_21 | {"type"}
    made = api.post("/v2.1/os-keypairs", {"keypair": {"name": "gen", "type": "ssh"}},
                    headers=v22)
    assert made.status == 201
    assert set(made.body["keypair"]) == KEYPAIR_CREATE_21 | {"type", "private_key"}
    assert made.body["keypair"]["private_key"].startswith("-----BEGIN")
    assert api.post("/v2.1/os-keypairs", {"keypair": {"name": "x", "type": "ssh",
                                                      "public_key": KEY}}).status == 400
    assert api.post("/v2.1/os-keypairs", {"keypair": {"name": "me", "public_key": KEY}}
                    ).status == 409
    assert api.call("DELETE", "/v2.1/os-keypairs/gen", headers=v22).status == 204
    assert api.call("DELETE", "/v2.1/os-keypairs/me").status == 202


def test_image_proxy_bodies_and_its_end_at_2_36(api: Api) -> None:
    image = api.get(f"/v2.1/images/{IMAGE_ID}").body["image"]
    assert set(image) == IMAGE
    assert image["links"][2]["rel"] == "alternate"
    assert api.get("/v2.1/images", headers=at("2.35")).status == 200
    assert api.get("/v2.1/images", headers=at("2.36")).status == 404
    assert api.get(f"/v2.1/images/{IMAGE_ID}", headers=at("2.36")).status == 404


# -- versions ------------------------------------------------------------------------------
def test_version_range_and_headers(api: Api) -> None:
    version = api.get("/v2.1").body["version"]
    assert (version["min_version"], version["version"]) == ("2.1", "2.52")
    latest = api.get("/v2.1/servers", headers=at("latest"))
    assert latest.headers["openstack-api-version"] == "compute 2.52"
    default = api.get("/v2.1/servers")
    assert default.headers["x-openstack-nova-api-version"] == "2.1"
    assert "X-OpenStack-Nova-API-Version" in default.headers["vary"]
    too_new = api.get("/v2.1/servers", headers=at("2.53"))
    assert too_new.status == 406
    assert too_new.fault()[1] == ("Version 2.53 is not supported by the API. Minimum is 2.1 "
                                  "and maximum is 2.52.")
    assert api.get("/v2.1/servers", headers=at("2.0")).status == 406


@pytest.mark.parametrize("sent", ["2." + "9" * 5000, "9" * 5000 + ".1", "2.1234567890"])
def test_an_absurd_microversion_is_refused_as_malformed(api: Api, sent: str) -> None:
    """Past Python's 4,300-digit int() limit a version was a 500 with a
    traceback in the log; any version of 10 digits or more is malformed,
    and the answer does not echo it whole."""
    for headers in (at(sent), {"X-OpenStack-Nova-API-Version": sent}):
        answer = api.get("/v2.1/servers", headers=headers)
        assert answer.status == 400, answer.body
        assert "invalid microversion" in answer.fault()[1]
        assert len(answer.fault()[1]) < 200


# -- projects and users ----------------------------------------------------------------------
MEMBER = "member-token"
OTHER = "other-project-token"


class _Tokens(Authenticator):
    """The fixed token (admin) and two members of two projects."""

    contexts = {MEMBER: Context("u-member", "p-member", frozenset({"member", "reader"})),
                OTHER: Context("u-other", "p-other", frozenset({"member", "reader"}))}

    def context(self, token: str) -> Context | None:
        return self.contexts.get(token) or super().context(token)


@pytest.fixture
def member(api: Api) -> str:
    return MEMBER


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    service, servers = start_api(tmp_path)
    for srv in servers:
        srv.authenticator = _Tokens(TOKEN)
    yield service
    stop_api(service, servers)


def test_a_project_sees_and_touches_only_its_servers(api: Api) -> None:
    mine = api.post("/v2.1/servers", {"server": {
        "name": "web1", "imageRef": IMAGE_ID, "flavorRef": "1"}}, token=MEMBER)
    assert mine.status == 202, mine.body
    server_id = mine.body["server"]["id"]
    record = api.store.instance(server_id)
    assert (record.project_id, record.user_id) == ("p-member", "u-member")
    _settle(api)
    assert show(api, server_id, token=MEMBER)["tenant_id"] == "p-member"
    # Another project: as if it did not exist, by id or by name.
    for ref in (server_id, "web1"):
        assert api.get(f"/v2.1/servers/{ref}", token=OTHER).status == 404
        assert api.call("DELETE", f"/v2.1/servers/{ref}", token=OTHER).status == 404
        assert api.post(f"/v2.1/servers/{ref}/action", {"pause": None},
                        token=OTHER).status == 404
        assert api.call("PUT", f"/v2.1/servers/{ref}", {"server": {"name": "x"}},
                        token=OTHER).status == 404
    assert api.get("/v2.1/servers", token=OTHER).body["servers"] == []
    assert api.get("/v2.1/servers/detail", token=OTHER).body["servers"] == []
    assert api.get("/v2.1/servers?all_tenants=1", token=OTHER).status == 403
    assert [s["id"] for s in api.get("/v2.1/servers", token=MEMBER).body["servers"]] == \
        [server_id]
    # The admin: everyone's with all_tenants, or one project's.
    assert [s["id"] for s in api.get("/v2.1/servers?all_tenants=1").body["servers"]] == \
        [server_id]
    assert api.get("/v2.1/servers?all_tenants=1&project_id=p-other").body["servers"] == []
    for query in ("all_tenants", "all_tenants=", "all_tenants=True"):  # Nova: given is yes
        assert len(api.get(f"/v2.1/servers?{query}").body["servers"]) == 1, query
    here = views.host_name()
    assert len(api.get(f"/v2.1/servers?all_tenants&host={here}").body["servers"]) == 1
    assert api.get("/v2.1/servers?all_tenants&host=elsewhere").body["servers"] == []
    assert api.call("DELETE", f"/v2.1/servers/{server_id}", token=MEMBER).status == 204
    assert api.store.instances() == []


def test_keypairs_belong_to_their_user(api: Api) -> None:
    assert api.post("/v2.1/os-keypairs", {"keypair": {"name": "k", "public_key": KEY}},
                    token=MEMBER).status == 200
    # The same name for another user is another keypair.
    assert api.post("/v2.1/os-keypairs", {"keypair": {"name": "k", "public_key": KEY}},
                    token=OTHER).status == 200
    assert api.get("/v2.1/os-keypairs/k", token=OTHER).body["keypair"]["user_id"] == "u-other"
    assert api.call("DELETE", "/v2.1/os-keypairs/k", token=OTHER).status == 202
    assert api.get("/v2.1/os-keypairs/k", token=OTHER).status == 404
    assert api.get("/v2.1/os-keypairs/k", token=MEMBER).status == 200
    assert api.get("/v2.1/os-keypairs", token=OTHER).body["keypairs"] == []
    # An admin names a user from 2.10; a member may not.
    v210 = at("2.10")
    assert api.get("/v2.1/os-keypairs?user_id=u-member", headers=v210
                   ).body["keypairs"][0]["keypair"]["name"] == "k"
    assert api.get("/v2.1/os-keypairs?user_id=u-member", headers=v210,
                   token=OTHER).status == 403
    # A member's server takes only their own keypair.
    answer = api.post("/v2.1/servers", {"server": {
        "name": "web1", "imageRef": IMAGE_ID, "flavorRef": "1", "key_name": "k"}},
        token=OTHER)
    assert answer.status == 400 and "key_name" in answer.fault()[1]


def test_images_of_other_projects_are_not_shown(api: Api) -> None:
    api.store.add_image(Image(id="private-1", name="theirs", status="active",
                              owner="p-other", visibility="private"))
    names = [i["name"] for i in api.get("/v2.1/images", token=MEMBER).body["images"]]
    assert names == ["tiny"]
    assert api.get("/v2.1/images/private-1", token=MEMBER).status == 404
    assert api.get("/v2.1/images/private-1", token=OTHER).status == 200


# -- delete while building ---------------------------------------------------------------------
def test_delete_while_building_stops_the_build_and_leaves_nothing(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nova allows it: the build stops at its next step, then the server goes."""
    entered, release = threading.Event(), threading.Event()
    capture = FakeConsole()
    monkeypatch.setattr(api.compute, "console", capture)

    def slow_disks(*args: Any, **kwargs: Any) -> list[Any]:
        entered.set()
        release.wait(10)
        return []

    monkeypatch.setattr(spawn_steps, "create_disks", slow_disks)
    answer = api.post("/v2.1/servers", {"server": {
        "name": "web1", "imageRef": IMAGE_ID, "flavorRef": "1"}})
    server_id = answer.body["server"]["id"]
    assert entered.wait(10)
    assert show(api, server_id)["status"] == "BUILD"
    assert api.call("DELETE", f"/v2.1/servers/{server_id}").status == 204
    assert show(api, server_id)["OS-EXT-STS:task_state"] == states.DELETING
    release.set()
    for _ in range(500):
        if api.get(f"/v2.1/servers/{server_id}").status == 404:
            break
        time.sleep(0.01)
    assert api.get(f"/v2.1/servers/{server_id}").status == 404
    assert not api.hv.exists(server_id)  # stopped before the domain was defined
    assert not (api.compute.settings.instances_dir / server_id).exists()
    assert capture.running == set()


def _settle(api: Api) -> None:
    """Let background spawns on the fake end (they fail: no image file)."""
    for _ in range(500):
        if all(i.vm_state != states.BUILDING for i in api.store.instances()):
            return
        time.sleep(0.01)


def test_lock_keeps_members_off(api: Api) -> None:
    """Nova's lock: a locked server is changed by admins only (409 for the
    rest); a lock an admin set only an admin lifts."""
    inst = api.add_instance("web1")
    api.store.update_instance(inst, project_id="p-member")
    action = f"/v2.1/servers/{inst.id}/action"
    assert api.post(action, {"lock": None}, token=MEMBER).status == 202
    assert show(api, inst.id, "2.9", token=MEMBER)["locked"] is True
    refused = api.post(action, {"os-stop": None}, token=MEMBER)
    assert refused.status == 409 and "locked" in refused.fault()[1]
    assert api.call("DELETE", f"/v2.1/servers/{inst.id}", token=MEMBER).status == 409
    assert api.post(action, {"unlock": None}, token=MEMBER).status == 202
    assert show(api, inst.id, "2.9", token=MEMBER)["locked"] is False
    assert api.post(action, {"lock": None}).status == 202  # the admin's lock
    assert api.post(action, {"unlock": None}, token=MEMBER).status == 403
    assert api.post(action, {"pause": None}).status == 202  # admins act on it
    assert api.post(action, {"lock": {"x": 1}}).status == 400


def test_addresses_are_extended_in_show_only(api: Api) -> None:
    """Tempest's update and rebuild schemas (below 2.75) allow only version
    and addr in an address, show and list their type and MAC too."""
    inst = api.add_instance("web1")
    with api.store.transaction() as db:  # no vmops network here: a port by hand
        db.execute("INSERT INTO ports (id, instance_id, position, mode, network, mac, ip, tap, "
                   "created_at) VALUES (?, ?, 0, 'bridge', 'vmops', ?, ?, 'tap0', 0)",
                   ("p1", inst.id, "52:54:00:aa:bb:cc", "10.213.0.7"))
    (shown,) = show(api, inst.id)["addresses"]["vmops"]
    assert shown == {"version": 4, "addr": "10.213.0.7", "OS-EXT-IPS:type": "fixed",
                     "OS-EXT-IPS-MAC:mac_addr": "52:54:00:aa:bb:cc"}
    updated = api.call("PUT", f"/v2.1/servers/{inst.id}", {"server": {"name": "web2"}})
    assert updated.body["server"]["addresses"] == {"vmops": [{"version": 4,
                                                              "addr": "10.213.0.7"}]}


def test_disk_config_is_kept_and_shown(api: Api, monkeypatch: Any) -> None:
    """OS-DCF:diskConfig as asked on create, update and rebuild (Tempest's
    ServerDiskConfigTestJSON)."""
    made = api.post("/v2.1/servers", {"server": {
        "name": "web1", "imageRef": IMAGE_ID, "flavorRef": "1", "OS-DCF:diskConfig": "AUTO"}})
    server_id = made.body["server"]["id"]
    assert made.body["server"]["OS-DCF:diskConfig"] == "AUTO"
    _settle(api)
    assert show(api, server_id)["OS-DCF:diskConfig"] == "AUTO"
    updated = api.call("PUT", f"/v2.1/servers/{server_id}",
                       {"server": {"OS-DCF:diskConfig": "MANUAL"}})
    assert updated.body["server"]["OS-DCF:diskConfig"] == "MANUAL"
    monkeypatch.setattr(api.compute, "rebuild", lambda ref, image: api.store.instance(ref))
    rebuilt = api.post(f"/v2.1/servers/{server_id}/action", {"rebuild": {
        "imageRef": IMAGE_ID, "OS-DCF:diskConfig": "AUTO"}})
    assert rebuilt.body["server"]["OS-DCF:diskConfig"] == "AUTO"
    assert api.call("PUT", f"/v2.1/servers/{server_id}",
                    {"server": {"OS-DCF:diskConfig": "LATER"}}).status == 400


def test_update_and_rebuild_show_tags_from_2_26(api: Api, monkeypatch: Any) -> None:
    inst = api.add_instance("web1")
    api.store.update_instance(inst, tags=("a",))
    updated = api.call("PUT", f"/v2.1/servers/{inst.id}", {"server": {}}, headers=at("2.26"))
    assert set(updated.body["server"]) == UPDATE_21 | {"locked", "description", "tags"}
    assert updated.body["server"]["tags"] == ["a"]
    monkeypatch.setattr(api.compute, "rebuild", lambda ref, image: api.store.instance(ref))
    rebuilt = api.post(f"/v2.1/servers/{inst.id}/action", {"rebuild": {"imageRef": IMAGE_ID}},
                       headers=at("2.26"))
    assert set(rebuilt.body["server"]) == UPDATE_21 | {"locked", "description", "tags",
                                                        "adminPass"}


def test_rebuild_answers_the_new_image_and_takes_personality(api: Api,
                                                             monkeypatch: Any) -> None:
    inst = api.add_instance("web1")
    other = api.store.add_image(Image(id="7c0f6d3e-0000-4000-8000-000000000009",
                                      name="other", status="active"))
    monkeypatch.setattr(api.compute, "rebuild", lambda ref, image: api.store.instance(ref))
    rebuilt = api.post(f"/v2.1/servers/{inst.id}/action", {"rebuild": {
        "imageRef": "other", "personality": [{"path": "/etc/motd", "contents": "aGk="}]}})
    assert rebuilt.body["server"]["image"]["id"] == other.id  # as Nova, at once
    assert api.store.instance(inst.id).injected_files == (("/etc/motd", "aGk="),)


def test_image_proxy_filters_and_snapshot_metadata(api: Api) -> None:
    inst = api.add_instance("web1")
    api.store.add_image(Image(id="snap-1", name="web1 snapshot ₡", status="active",
                              instance_uuid=inst.id, extra={"image_type": "test", "k": "v"}))
    api.store.add_image(Image(id="snap-2", name="other", status="saving",
                              instance_uuid=inst.id))

    def names(query: str) -> list[str]:
        answer = api.get(f"/v2.1/images{query}")
        assert answer.status == 200, answer.body
        return sorted(i["name"] for i in answer.body["images"])

    assert names("?name=other") == ["other"]
    assert names("?status=SAVING") == ["other"]
    assert names(f"?server={inst.id}") == ["other", "web1 snapshot ₡"]
    assert names(f"?server=http://host/v2.1/servers/{inst.id}") == ["other", "web1 snapshot ₡"]
    assert names("?type=snapshot") == ["other"]  # the other one's metadata says "test"
    assert names("?changes-since=2999-01-01T00:00:00Z") == []
    shown = api.get("/v2.1/images/snap-1").body["image"]
    # The metadata given to createImage wins over Nova's own, as in Nova.
    assert shown["metadata"] == {"image_type": "test", "instance_uuid": inst.id, "k": "v"}
    assert shown["server"]["id"] == inst.id


@pytest.mark.parametrize("public_key", [
    "ssh-rsa JUNK nova@ubuntu",  # Tempest's invalid key
    "ssh-rsa " + "A" * 2048 + " openstack@ubuntu",  # Tempest's too many bits
    # An ed25519 key named as RSA:
    "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAILhE/Js2CulLK1ww4aieoN8RmA8eQUrJs/5Q17XzDxXB x",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHl0ZXN0a2V5dGVzdGtleXRlc3RrZXl0ZXN0a2V5 x",  # short
    "ssh-foo AAAAB3NzaC1mb28= x",
])
def test_keypairs_refuse_what_no_ssh_key_is(api: Api, public_key: str) -> None:
    answer = api.post("/v2.1/os-keypairs", {"keypair": {"name": "k", "public_key": public_key}})
    assert answer.status == 400, answer.body
    assert api.store.keypairs() == []


def test_x509_keypairs_from_2_2(api: Api) -> None:
    v22 = at("2.2")
    made = api.post("/v2.1/os-keypairs", {"keypair": {"name": "cert", "type": "x509"}},
                    headers=v22)
    assert made.status == 201, made.body
    body = made.body["keypair"]
    assert set(body) == KEYPAIR_CREATE_21 | {"type", "private_key"}
    assert body["type"] == "x509" and body["public_key"].startswith("-----BEGIN CERTIFICATE")
    assert body["fingerprint"].count(":") == 19  # SHA-1, as Nova's
    shown = api.get("/v2.1/os-keypairs/cert", headers=v22).body["keypair"]
    assert (shown["type"], shown["fingerprint"]) == ("x509", body["fingerprint"])
    imported = api.post("/v2.1/os-keypairs", {"keypair": {
        "name": "cert2", "type": "x509", "public_key": body["public_key"]}}, headers=v22)
    assert imported.body["keypair"]["fingerprint"] == body["fingerprint"]
    assert api.post("/v2.1/os-keypairs", {"keypair": {
        "name": "cert3", "type": "x509", "public_key": KEY}}, headers=v22).status == 400


def test_reset_state_and_inject_network_info_are_for_admins(api: Api) -> None:
    inst = api.add_instance("web1")
    api.store.update_instance(inst, project_id="p-member")
    action = f"/v2.1/servers/{inst.id}/action"
    assert api.post(action, {"os-resetState": {"state": "error"}}, token=MEMBER).status == 403
    assert api.post(action, {"os-resetState": {"state": "error"}}).status == 202
    assert show(api, inst.id)["status"] == "ERROR"
    assert api.post(action, {"os-resetState": {"state": "active"}}).status == 202
    assert show(api, inst.id)["status"] == "ACTIVE"
    assert api.post(action, {"os-resetState": {"state": "paused"}}).status == 400
    assert api.post(action, {"injectNetworkInfo": None}).status == 202
    assert api.post(action, {"injectNetworkInfo": None}, token=MEMBER).status == 403


def test_create_backup_rotates(api: Api, monkeypatch: Any) -> None:
    """Each backup is a snapshot that says image_type backup; once one is
    made, only the newest `rotation` of that type are kept."""
    inst = api.add_instance("web1")
    clock = iter(range(1, 100))

    def snapshot(ref: str, name: str, cache: Any, properties: Any = None,
                 owner: str = "") -> Image:
        return api.store.add_image(Image(
            id=f"id-{name}", name=name, status="active", instance_uuid=ref,
            extra=dict(properties or {}), created_at=float(next(clock))))

    monkeypatch.setattr(api.compute, "snapshot", snapshot)
    action = f"/v2.1/servers/{inst.id}/action"
    for n in (1, 2, 3):
        answer = api.post(action, {"createBackup": {
            "name": f"b{n}", "backup_type": "daily", "rotation": 2}})
        assert answer.status == 202 and answer.headers["location"].endswith(f"/images/id-b{n}")
        time.sleep(0.05)
    for _ in range(200):
        if "b1" not in {i.name for i in api.store.images()}:
            break
        time.sleep(0.01)
    backups = sorted(i.name for i in api.store.images() if i.extra.get("image_type") == "backup")
    assert backups == ["b2", "b3"]
    assert api.store.image("b3").extra["backup_type"] == "daily"
    new = api.post(action, {"createBackup": {"name": "b4", "backup_type": "weekly",
                                             "rotation": 1}}, headers=at("2.45"))
    assert new.body == {"image_id": "id-b4"}
    assert api.post(action, {"createBackup": {"name": "x", "backup_type": "daily"}}
                    ).status == 400


def test_flavor_swap_and_rxtx_factor(api: Api) -> None:
    answer = api.post("/v2.1/flavors", {"flavor": {
        "name": "sw", "ram": 256, "vcpus": 1, "disk": 1, "swap": 1024, "rxtx_factor": 2,
        "id": "sw"}})
    assert answer.status == 200, answer.body
    assert (answer.body["flavor"]["swap"], answer.body["flavor"]["rxtx_factor"]) == (1024, 2.0)
    assert api.get("/v2.1/flavors/sw").body["flavor"]["swap"] == 1024
    assert api.get("/v2.1/flavors/1").body["flavor"]["swap"] == ""  # none: Nova's ""


def test_restore_and_force_delete_need_a_soft_deleted_server(api: Api) -> None:
    inst = api.add_instance("web1")
    for action in ("restore", "forceDelete"):
        answer = api.post(f"/v2.1/servers/{inst.id}/action", {action: None})
        assert answer.status == 409 and action in answer.fault()[1]
    assert api.store.instance(inst.id).vm_state == states.ACTIVE


def test_tag_filters_from_2_26(api: Api) -> None:
    for name, tags in (("a", ("x", "y")), ("b", ("x",)), ("c", ())):
        api.store.update_instance(api.add_instance(name), tags=tags)

    def names(query: str) -> list[str]:
        answer = api.get(f"/v2.1/servers?{query}", headers=at("2.26"))
        return sorted(s["name"] for s in answer.body["servers"])

    assert names("tags=x,y") == ["a"]
    assert names("tags-any=y,z") == ["a"]
    assert names("not-tags=x,y") == ["b", "c"]
    assert names("not-tags-any=x") == ["c"]
    assert sorted(s["name"] for s in api.get("/v2.1/servers?tags=x,y").body["servers"]) == \
        ["a", "b", "c"]  # ignored before 2.26
