"""Nova's smaller APIs at microversion 2.1 on the fake hypervisor: services,
hosts, hypervisors, zones, extensions, limits, quotas (and their
enforcement), usage, server metadata, ips, password, instance actions and
server groups.

Every answer is checked against the OpenAPI document (``Api.raw``), whose
objects for these APIs are closed; the tests here also spell out the keys
Tempest's response schemas require, and check that a member of one project
sees nothing of another's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_api import IMAGE_ID, Answer, Api, start_api, stop_api
from vmops.api import server
from vmops.api.server import Context
from vmops.compute import host_facts, states
from vmops.compute.server_groups import NO_VALID_HOST
from vmops.store import Instance, Keypair

ADMIN, P1, P2 = "admin-token", "p1-token", "p2-token"
CONTEXTS = {
    ADMIN: Context("admin-user", "admin-project", frozenset({"admin", "member", "reader"})),
    P1: Context("u1", "p1", frozenset({"member", "reader"})),
    P2: Context("u2", "p2", frozenset({"member", "reader"})),
}
HOST = host_facts.hostname()


class _Tokens(server.Authenticator):
    def context(self, token: str) -> Context | None:
        return CONTEXTS.get(token)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    service, servers = start_api(tmp_path, authenticator=_Tokens())
    yield service
    stop_api(service, servers)


def call(api: Api, method: str, path: str, body: Any = None, who: str = ADMIN,
         headers: dict[str, str] | None = None) -> Answer:
    return api.call(method, f"/v2.1{path}", body, headers=headers, token=who)


def get(api: Api, path: str, who: str = ADMIN, version: str | None = None) -> Answer:
    return call(api, "GET", path, who=who, headers=at(version))


def at(version: str | None) -> dict[str, str] | None:
    return {"OpenStack-API-Version": f"compute {version}"} if version else None


def owned(api: Api, name: str, who: str = P1, vm_state: str = states.ACTIVE) -> Instance:
    inst = api.add_instance(name, vm_state)
    ctx = CONTEXTS[who]
    return api.store.update_instance(inst, project_id=ctx.project_id, user_id=ctx.user_id,
                                     launched_at=inst.created_at)


def settle(api: Api) -> None:
    for inst in api.store.instances():
        api.compute.wait_idle(inst.id, 10)


# Tempest's required keys (tempest/lib/api_schema/response/compute/v2_1/*.py).
SERVICE_KEYS = {"id", "zone", "host", "state", "binary", "status", "updated_at",
                "disabled_reason"}
HYPERVISOR_DETAIL_KEYS = {"cpu_info", "current_workload", "disk_available_least", "host_ip",
                          "free_disk_gb", "free_ram_mb", "hypervisor_hostname",
                          "hypervisor_type", "hypervisor_version", "id", "local_gb",
                          "local_gb_used", "memory_mb", "memory_mb_used", "running_vms",
                          "service", "vcpus", "vcpus_used", "status", "state"}
STATISTICS_KEYS = {"count", "current_workload", "disk_available_least", "free_disk_gb",
                   "free_ram_mb", "local_gb", "local_gb_used", "memory_mb", "memory_mb_used",
                   "running_vms", "vcpus", "vcpus_used"}
LIMIT_KEYS = {"maxImageMeta", "maxPersonality", "maxPersonalitySize", "maxSecurityGroupRules",
              "maxSecurityGroups", "maxServerMeta", "maxTotalCores", "maxTotalFloatingIps",
              "maxTotalInstances", "maxTotalKeypairs", "maxTotalRAMSize", "totalCoresUsed",
              "totalFloatingIpsUsed", "totalInstancesUsed", "totalRAMUsed",
              "totalSecurityGroupsUsed", "maxServerGroupMembers", "maxServerGroups",
              "totalServerGroupsUsed"}
QUOTA_KEYS = {"instances", "cores", "ram", "floating_ips", "fixed_ips", "metadata_items",
              "key_pairs", "security_groups", "security_group_rules", "injected_files",
              "injected_file_content_bytes", "injected_file_path_bytes",
              "server_group_members", "server_groups"}
NETWORK_QUOTAS = {"floating_ips", "fixed_ips", "security_groups", "security_group_rules"}
SERVER_GROUP_QUOTAS = {"server_groups", "server_group_members"}
USAGE_KEYS = {"server_usages", "start", "stop", "tenant_id", "total_hours",
              "total_local_gb_usage", "total_memory_mb_usage", "total_vcpus_usage"}
SERVER_USAGE_KEYS = {"ended_at", "flavor", "hours", "instance_id", "local_gb", "memory_mb",
                     "name", "started_at", "state", "tenant_id", "uptime", "vcpus"}
ACTION_KEYS = {"action", "request_id", "user_id", "project_id", "start_time", "message",
               "instance_uuid"}
EVENT_KEYS = {"event", "start_time", "finish_time", "result", "traceback"}
GROUP_KEYS = {"id", "name", "policies", "members", "metadata"}


# -- os-services, os-hosts, os-hypervisors, zones, extensions ----------------------
def test_services_are_this_host_and_its_state(api: Api) -> None:
    services = get(api, "/os-services").body["services"]
    assert all(set(s) == SERVICE_KEYS for s in services)
    assert {s["binary"]: (s["zone"], s["state"], s["status"]) for s in services} == {
        "nova-conductor": ("internal", "up", "enabled"),
        "nova-scheduler": ("internal", "up", "enabled"),
        "nova-compute": ("nova", "up", "enabled")}
    assert [s["binary"] for s in get(api, "/os-services?binary=nova-compute").body[
        "services"]] == ["nova-compute"]
    assert get(api, "/os-services?host=elsewhere").body["services"] == []


def test_compute_service_is_down_when_the_hypervisor_does_not_answer(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from vmops.errors import HypervisorError

    def broken() -> list[str]:
        raise HypervisorError(reason="gone")

    monkeypatch.setattr(api.hv, "list_uuids", broken)
    states_of = {s["binary"]: s["state"] for s in get(api, "/os-services").body["services"]}
    assert states_of == {"nova-conductor": "up", "nova-scheduler": "up",
                         "nova-compute": "down"}
    assert get(api, "/os-hypervisors").body["hypervisors"][0]["state"] == "down"


def test_service_updates(api: Api) -> None:
    body = {"host": HOST, "binary": "nova-compute"}
    enabled = call(api, "PUT", "/os-services/enable", body)
    assert enabled.status == 200
    assert enabled.body == {"service": {**body, "status": "enabled"}}
    disabled = call(api, "PUT", "/os-services/disable", body)
    assert disabled.body == {"service": {**body, "status": "disabled"}}
    assert call(api, "PUT", "/os-services/enable", body).status == 200
    assert call(api, "PUT", "/os-services/enable", {"host": "x", "binary": "nova-compute"}
                ).status == 404
    assert call(api, "PUT", "/os-services/force-down", body).status == 404
    for bad in ({"host": HOST}, {**body, "colour": "red"}, [1], {"host": 5, "binary": "b"}):
        assert call(api, "PUT", "/os-services/enable", bad).status == 400, bad
    assert call(api, "PUT", "/os-services/disable-log-reason", body).status == 400


def test_hosts(api: Api) -> None:
    owned(api, "web1", P1)
    owned(api, "web2", P2)
    hosts = get(api, "/os-hosts").body["hosts"]
    assert {(h["host_name"], h["service"], h["zone"]) for h in hosts} == {
        (HOST, "conductor", "internal"), (HOST, "scheduler", "internal"),
        (HOST, "compute", "nova")}
    assert [h["service"] for h in get(api, "/os-hosts?zone=nova").body["hosts"]] == ["compute"]
    resources = [r["resource"] for r in get(api, f"/os-hosts/{HOST}").body["host"]]
    by_project = {r["project"]: r for r in resources}
    assert set(by_project) == {"(total)", "(used_now)", "(used_max)", "p1", "p2"}
    assert by_project["(total)"]["cpu"] == os.cpu_count()
    assert by_project["(used_now)"]["memory_mb"] == 1024  # two m1.tiny
    assert by_project["p1"] == {"host": HOST, "project": "p1", "cpu": 1, "memory_mb": 512,
                                "disk_gb": 1}
    assert get(api, "/os-hosts/elsewhere").status == 404


def test_host_changes_are_checked_then_not_supported(api: Api) -> None:
    for bad in ({}, {"status": "on"}, {"status": "enable", "x": 1}, {"maintenance_mode": 1}):
        assert call(api, "PUT", f"/os-hosts/{HOST}", bad).status == 400, bad
    assert call(api, "PUT", "/os-hosts/elsewhere", {"status": "enable"}).status == 404
    answer = call(api, "PUT", f"/os-hosts/{HOST}", {"status": "disable"})
    assert answer.status == 501 and answer.fault()[0] == "notImplemented"
    for action in ("startup", "shutdown", "reboot"):
        assert get(api, f"/os-hosts/{HOST}/{action}").status == 501
        assert get(api, f"/os-hosts/elsewhere/{action}").status == 404


def test_hypervisors_report_the_host(api: Api) -> None:
    running = owned(api, "web1", P1)
    owned(api, "web2", P2, vm_state=states.STOPPED)
    brief = get(api, "/os-hypervisors").body["hypervisors"]
    assert brief == [{"id": 1, "hypervisor_hostname": HOST, "state": "up",
                      "status": "enabled"}]
    (detail,) = get(api, "/os-hypervisors/detail").body["hypervisors"]
    assert set(detail) == HYPERVISOR_DETAIL_KEYS
    assert detail == get(api, "/os-hypervisors/1").body["hypervisor"]
    assert detail["hypervisor_type"] == "QEMU"
    assert (detail["vcpus"], detail["vcpus_used"], detail["memory_mb_used"]) == (
        os.cpu_count(), 2, 1024)
    assert detail["running_vms"] == 1
    assert detail["memory_mb"] == host_facts.meminfo_kib("MemTotal") // 1024
    assert detail["free_ram_mb"] == detail["memory_mb"] - 1024
    assert set(detail["service"]) == {"id", "host", "disabled_reason"}
    stats = get(api, "/os-hypervisors/statistics").body["hypervisor_statistics"]
    assert set(stats) == STATISTICS_KEYS and stats["count"] == 1
    uptime = get(api, "/os-hypervisors/1/uptime").body["hypervisor"]
    assert "load average" in uptime["uptime"]
    for missing in ("2", "x", "1.0"):
        assert get(api, f"/os-hypervisors/{missing}").status == 404
        assert get(api, f"/os-hypervisors/{missing}/uptime").status == 404
    assert get(api, f"/os-hypervisors/{HOST[:3]}/search").body["hypervisors"] == brief
    assert get(api, "/os-hypervisors/no-such-host-anywhere/search").status == 404
    (with_servers,) = get(api, f"/os-hypervisors/{HOST}/servers").body["hypervisors"]
    assert {s["uuid"] for s in with_servers["servers"]} == {
        running.id, api.store.instance("web2").id}


def test_failed_spawns_hold_nothing_on_the_host(api: Api) -> None:
    failed = owned(api, "web1", P1, vm_state=states.ERROR)
    api.store.update_instance(failed, disks=())
    (detail,) = get(api, "/os-hypervisors/detail").body["hypervisors"]
    assert (detail["vcpus_used"], detail["memory_mb_used"]) == (0, 0)
    assert "p1" not in {r["resource"]["project"] for r in get(api, f"/os-hosts/{HOST}").body[
        "host"]}
    (hypervisor,) = get(api, f"/os-hypervisors/{HOST}/servers").body["hypervisors"]
    assert "servers" not in hypervisor
    assert get(api, "/limits", who=P1).body["limits"]["absolute"]["totalInstancesUsed"] == 1


def test_no_servers_key_without_servers(api: Api) -> None:
    (hypervisor,) = get(api, f"/os-hypervisors/{HOST}/servers").body["hypervisors"]
    assert "servers" not in hypervisor


def test_availability_zones(api: Api) -> None:
    assert get(api, "/os-availability-zone", who=P1).body == {"availabilityZoneInfo": [
        {"zoneName": "nova", "zoneState": {"available": True}, "hosts": None}]}
    zones = {z["zoneName"]: z["hosts"] for z in get(
        api, "/os-availability-zone/detail").body["availabilityZoneInfo"]}
    assert set(zones["internal"][HOST]) == {"nova-conductor", "nova-scheduler"}
    assert set(zones["nova"][HOST]["nova-compute"]) == {"available", "active", "updated_at"}


def test_extensions(api: Api) -> None:
    extensions = get(api, "/extensions").body["extensions"]
    aliases = [e["alias"] for e in extensions]
    assert aliases == sorted(aliases)
    assert {"os-hypervisors", "os-server-groups", "os-instance-actions"} <= set(aliases)
    assert get(api, "/extensions/os-hosts").body["extension"]["name"] == "Hosts"
    assert get(api, "/extensions/os-floating-ips").status == 404


# -- limits, quotas, usage ---------------------------------------------------------
def test_limits_are_the_projects_own(api: Api) -> None:
    owned(api, "web1", P1)
    owned(api, "web2", P2)
    mine = get(api, "/limits", who=P1).body["limits"]
    assert mine["rate"] == [] and set(mine["absolute"]) == LIMIT_KEYS
    absolute = mine["absolute"]
    assert (absolute["totalInstancesUsed"], absolute["totalCoresUsed"],
            absolute["totalRAMUsed"]) == (1, 1, 512)
    assert (absolute["maxTotalInstances"], absolute["maxTotalCores"],
            absolute["maxTotalRAMSize"], absolute["maxServerMeta"]) == (10, 20, 51200, 128)
    assert get(api, "/limits?tenant_id=p2", who=P1).status == 403
    assert get(api, "/limits?tenant_id=p2").body["limits"]["absolute"][
        "totalInstancesUsed"] == 1
    assert get(api, "/limits?tenant_id=nobody").body["limits"]["absolute"][
        "totalInstancesUsed"] == 0


def test_quota_sets(api: Api) -> None:
    owned(api, "web1", P1)
    shown = get(api, "/os-quota-sets/p1", who=P1).body["quota_set"]
    assert set(shown) == QUOTA_KEYS | {"id"} and shown["id"] == "p1"
    assert shown["instances"] == 10 and shown["injected_files"] == 5
    assert get(api, "/os-quota-sets/p2", who=P1).status == 403
    assert get(api, "/os-quota-sets/p2/detail", who=P1).status == 403
    assert get(api, "/os-quota-sets/p1/defaults", who=P1).body["quota_set"] == shown
    updated = call(api, "PUT", "/os-quota-sets/p1", {"quota_set": {
        "instances": 5, "cores": "8", "ram": -1, "force": "False"}})
    assert updated.status == 200, updated.body
    assert set(updated.body["quota_set"]) == QUOTA_KEYS
    assert (updated.body["quota_set"]["instances"], updated.body["quota_set"]["cores"],
            updated.body["quota_set"]["ram"]) == (5, 8, -1)
    detail = get(api, "/os-quota-sets/p1/detail", who=P1).body["quota_set"]
    assert detail["instances"] == {"limit": 5, "in_use": 1, "reserved": 0}
    assert get(api, "/os-quota-sets/p2").body["quota_set"]["instances"] == 10
    assert call(api, "DELETE", "/os-quota-sets/p1").status == 202
    assert get(api, "/os-quota-sets/p1").body["quota_set"]["instances"] == 10


@pytest.mark.parametrize("body", [
    {"quota_set": {"instances": -2}}, {"quota_set": {"instances": "ten"}},
    {"quota_set": {"instances": True}}, {"quota_set": {"instances": 1.5}},
    {"quota_set": {"volumes": 1}}, {"quota_set": {"force": "maybe"}},
    {"quota_set": {"instances": 0x80000000}}, {"quota_set": []}, {"quota": {}},
    {"quota_set": {"instances": "--1"}}, {"quota_set": {"instances": "1" * 400}},
    {"quota_set": {"instances": "\u0661"}}, {"quota_set": {"instances": " 1"}},
    {"quota_set": {}, "extra": 1}])
def test_bad_quota_updates_are_400_and_change_nothing(api: Api, body: Any) -> None:
    answer = call(api, "PUT", "/os-quota-sets/p1", body)
    assert answer.status == 400, answer.body
    assert get(api, "/os-quota-sets/p1").body["quota_set"]["instances"] == 10


def test_quota_below_usage_needs_force(api: Api) -> None:
    owned(api, "web1", P1)
    owned(api, "web2", P1)
    refused = call(api, "PUT", "/os-quota-sets/p1", {"quota_set": {"instances": 1}})
    assert refused.status == 400
    assert refused.fault()[1] == ("Quota limit 1 for instances must be greater than or "
                                  "equal to already used and reserved 2.")
    forced = call(api, "PUT", "/os-quota-sets/p1", {"quota_set": {"instances": 1,
                                                                  "force": True}})
    assert forced.body["quota_set"]["instances"] == 1
    assert call(api, "PUT", "/os-quota-sets/p1?user_id=u1",
                {"quota_set": {"instances": 3}}).status == 400


def test_quota_classes_are_the_defaults(api: Api) -> None:
    shown = get(api, "/os-quota-class-sets/default").body["quota_class_set"]
    assert set(shown) == QUOTA_KEYS - SERVER_GROUP_QUOTAS | {"id"}  # before 2.50
    assert shown["id"] == "default"
    later = get(api, "/os-quota-class-sets/default", version="2.50").body["quota_class_set"]
    assert set(later) == QUOTA_KEYS - NETWORK_QUOTAS | {"id"}
    assert shown["instances"] == 10
    call(api, "PUT", "/os-quota-sets/p2", {"quota_set": {"instances": 4}})
    updated = call(api, "PUT", "/os-quota-class-sets/default",
                   {"quota_class_set": {"instances": 3, "cores": "7"}})
    assert updated.status == 200
    assert set(updated.body["quota_class_set"]) == QUOTA_KEYS - SERVER_GROUP_QUOTAS
    assert (updated.body["quota_class_set"]["instances"],
            updated.body["quota_class_set"]["cores"]) == (3, 7)
    assert get(api, "/os-quota-sets/p1/defaults").body["quota_set"]["instances"] == 3
    assert get(api, "/limits", who=P1).body["limits"]["absolute"]["maxTotalInstances"] == 3
    assert get(api, "/os-quota-sets/p2").body["quota_set"]["instances"] == 4  # its own
    for bad in ({"quota_class_set": {"bogus": 3}}, {"quota_class_set": {"cores": -5}},
                {"quota_class_set": {"instances": 1, "force": True}}):
        assert call(api, "PUT", "/os-quota-class-sets/default", bad).status == 400, bad
    # Quota classes are kept apart from projects (schema 8): a project whose
    # id looks like an old class key is only a project.
    assert get(api, "/os-quota-sets/class:default").body["quota_set"]["instances"] == 3


def test_a_users_quotas_are_within_the_projects_and_enforced(api: Api) -> None:
    assert call(api, "PUT", "/os-quota-sets/p1", {"quota_set": {"instances": 2}}).status == 200
    answer = call(api, "PUT", "/os-quota-sets/p1?user_id=u1", {"quota_set": {"instances": 1}})
    assert answer.status == 200 and answer.body["quota_set"]["instances"] == 1
    assert set(answer.body["quota_set"]) == QUOTA_KEYS
    assert get(api, "/os-quota-sets/p1?user_id=u1").body["quota_set"]["instances"] == 1
    assert get(api, "/os-quota-sets/p1?user_id=u1", who=P1).body["quota_set"]["cores"] == \
        get(api, "/os-quota-sets/p1").body["quota_set"]["cores"]  # the project's
    assert get(api, "/os-quota-sets/p1").body["quota_set"]["instances"] == 2
    detail = get(api, "/os-quota-sets/p1/detail?user_id=u1").body["quota_set"]
    assert detail["instances"] == {"limit": 1, "in_use": 0, "reserved": 0}
    # Above the project's (or unlimited under a limited project): refused.
    for too_many in (3, -1):
        answer = call(api, "PUT", "/os-quota-sets/p1?user_id=u1",
                      {"quota_set": {"instances": too_many}})
        assert answer.status == 400 and "less than or equal to 2" in answer.body[
            "badRequest"]["message"]
    assert call(api, "PUT", "/os-quota-sets/p1?user_id=u1", {"quota_set": {"instances": 1}},
                who=P1).status == 403
    assert _create(api).status == 202
    settle(api)
    over = _create(api, name="second")
    assert over.status == 403 and "instances" in over.body["forbidden"]["message"]
    # Only the user's go; then the whole project's.
    assert call(api, "DELETE", "/os-quota-sets/p1?user_id=u1").status == 202
    assert get(api, "/os-quota-sets/p1?user_id=u1").body["quota_set"]["instances"] == 2
    assert call(api, "PUT", "/os-quota-sets/p1?user_id=u1",
                {"quota_set": {"ram": 1024}}).status == 200
    assert call(api, "DELETE", "/os-quota-sets/p1").status == 202
    assert get(api, "/os-quota-sets/p1?user_id=u1").body["quota_set"]["ram"] == \
        get(api, "/os-quota-sets/p1/defaults").body["quota_set"]["ram"]


def _create(api: Api, who: str = P1, body: dict[str, Any] | None = None,
            **server_fields: Any) -> Answer:
    server_fields = {"name": "web", "imageRef": IMAGE_ID, "flavorRef": "1", **server_fields}
    return call(api, "POST", "/servers", {"server": server_fields, **(body or {})}, who=who)


def _leftovers(api: Api) -> tuple[int, int, int]:
    return (len(api.store.instances()), len(api.store.ports()),
            len(api.store.query("SELECT * FROM instance_actions")))


def test_create_over_the_instances_quota_is_403_and_leaves_nothing(api: Api) -> None:
    owned(api, "web1", P1)
    call(api, "PUT", "/os-quota-sets/p1", {"quota_set": {"instances": 1}})
    before = _leftovers(api)
    answer = _create(api)
    assert answer.status == 403, answer.body
    assert answer.fault() == ("forbidden", "Quota exceeded for instances: Requested 1, but "
                              "already used 1 of 1 instances")
    assert _leftovers(api) == before
    assert _create(api, who=P2).status == 202  # another project's quota is its own
    settle(api)


def test_create_over_the_cores_and_ram_quota_is_403(api: Api) -> None:
    call(api, "PUT", "/os-quota-sets/p1", {"quota_set": {"cores": 1}})
    answer = _create(api, flavorRef="3")  # m1.medium: 2 vCPUs
    assert answer.status == 403
    assert answer.fault()[1] == ("Quota exceeded for cores: Requested 2, but already used 0 "
                                 "of 1 cores")
    call(api, "PUT", "/os-quota-sets/p1", {"quota_set": {"cores": -1, "ram": 100}})
    assert _create(api).fault()[1] == ("Quota exceeded for ram: Requested 512, but already "
                                       "used 0 of 100 ram")
    assert api.store.instances() == []


def test_create_over_the_metadata_and_file_quotas_is_403(api: Api) -> None:
    call(api, "PUT", "/os-quota-sets/p1", {"quota_set": {"metadata_items": 1,
                                                         "injected_files": 0}})
    answer = _create(api, metadata={"a": "1", "b": "2"})
    assert answer.status == 403
    assert answer.fault()[1] == "Maximum number of metadata items exceeds 1"
    answer = _create(api, personality=[{"path": "/etc/motd", "contents": "aGk="}])
    assert answer.status == 403
    assert answer.fault()[1] == ("Personality file limit exceeded: 1 injected files, "
                                 "at most 0")
    assert api.store.instances() == []


def test_keypair_quota(api: Api) -> None:
    call(api, "PUT", "/os-quota-sets/p1", {"quota_set": {"key_pairs": 1}})
    api.store.add_keypair(Keypair("k1", "ssh-ed25519 AAAA k1", "fp", user_id="u1"))
    answer = call(api, "POST", "/os-keypairs", {"keypair": {"name": "k2"}}, who=P1)
    assert answer.status == 403
    assert answer.fault()[1] == "Quota exceeded, too many key pairs."
    assert [k.name for k in api.store.keypairs("u1")] == ["k1"]


def test_usage_of_a_project(api: Api) -> None:
    web1 = owned(api, "web1", P1)
    api.store.update_instance(web1, launched_at=web1.created_at - 7200)
    owned(api, "web2", P2)
    usage = get(api, "/os-simple-tenant-usage/p1?start=2020-01-01T00:00:00", who=P1).body[
        "tenant_usage"]
    assert set(usage) == USAGE_KEYS and usage["tenant_id"] == "p1"
    (server_usage,) = usage["server_usages"]
    assert set(server_usage) == SERVER_USAGE_KEYS
    assert server_usage["instance_id"] == web1.id and server_usage["flavor"] == "m1.tiny"
    assert 1.99 < server_usage["hours"] < 2.1
    assert usage["total_memory_mb_usage"] == pytest.approx(512 * server_usage["hours"])
    assert get(api, "/os-simple-tenant-usage/p2", who=P1).status == 403
    none = get(api, "/os-simple-tenant-usage/p1?start=2020-01-01T00:00:00"
               "&end=2020-01-02T00:00:00.5", who=P1)
    assert none.body == {"tenant_usage": {}}
    listed = get(api, "/os-simple-tenant-usage?start=2020-01-01T00:00:00&detailed=1").body
    assert {u["tenant_id"] for u in listed["tenant_usages"]} == {"p1", "p2"}
    brief = get(api, "/os-simple-tenant-usage?start=2020-01-01T00:00:00").body
    assert all("server_usages" not in u for u in brief["tenant_usages"])
    assert get(api, "/os-simple-tenant-usage/?start=2020-01-01T00:00:00").status == 404


@pytest.mark.parametrize("query", ["start=yesterday", "end=2020-13-01T00:00:00",
                                   "start=2021-01-01T00:00:00&end=2020-01-01T00:00:00"])
def test_bad_usage_periods_are_400(api: Api, query: str) -> None:
    assert get(api, f"/os-simple-tenant-usage/p1?{query}", who=P1).status == 400
    assert get(api, f"/os-simple-tenant-usage?{query}").status == 400


# -- server metadata, ips, password --------------------------------------------------
def test_server_metadata(api: Api) -> None:
    inst = owned(api, "web1", P1)
    base = f"/servers/{inst.id}/metadata"
    assert get(api, base, who=P1).body == {"metadata": {}}
    merged = call(api, "POST", base, {"metadata": {"a": "1", "b": "2"}}, who=P1)
    assert merged.body == {"metadata": {"a": "1", "b": "2"}}
    assert call(api, "POST", base, {"metadata": {"b": "3"}}, who=P1).body == {
        "metadata": {"a": "1", "b": "3"}}
    assert call(api, "PUT", f"{base}/c", {"meta": {"c": "4"}}, who=P1).body == {
        "meta": {"c": "4"}}
    assert get(api, f"{base}/c", who=P1).body == {"meta": {"c": "4"}}
    assert call(api, "DELETE", f"{base}/a", who=P1).status == 204
    assert api.store.instance(inst.id).properties == {"b": "3", "c": "4"}
    assert call(api, "PUT", base, {"metadata": {"only": "this"}}, who=P1).body == {
        "metadata": {"only": "this"}}
    assert get(api, f"/servers/{inst.id}", who=P1).body["server"]["metadata"] == {
        "only": "this"}
    assert get(api, f"{base}/gone", who=P1).status == 404
    assert call(api, "DELETE", f"{base}/gone", who=P1).status == 404


@pytest.mark.parametrize("method,path,body", [
    ("POST", "", {"metadata": {"": "v"}}), ("POST", "", {"metadata": {"k" * 256: "v"}}),
    ("POST", "", {"metadata": {"k/x": "v"}}), ("POST", "", {"metadata": {"k": "v" * 256}}),
    ("POST", "", {"metadata": {"k": 1}}), ("POST", "", {"metadata": {"k": "a\x00b"}}),
    ("POST", "", {"meta": {"k": "v"}}), ("PUT", "", {"metadata": []}),
    ("PUT", "/k", {"meta": {"other": "v"}}), ("PUT", "/k", {"meta": {"k": "v", "j": "w"}}),
    ("PUT", "/k", {"metadata": {"k": "v"}})])
def test_bad_metadata_is_400_and_changes_nothing(api: Api, method: str, path: str,
                                                 body: Any) -> None:
    inst = owned(api, "web1", P1)
    api.store.update_instance(inst, properties={"keep": "me"})
    answer = call(api, method, f"/servers/{inst.id}/metadata{path}", body, who=P1)
    assert answer.status == 400, answer.body
    assert api.store.instance(inst.id).properties == {"keep": "me"}


def test_metadata_quota_state_and_scope(api: Api) -> None:
    inst = owned(api, "web1", P1)
    base = f"/servers/{inst.id}/metadata"
    call(api, "PUT", "/os-quota-sets/p1", {"quota_set": {"metadata_items": 2}})
    over = call(api, "POST", base, {"metadata": {"a": "1", "b": "2", "c": "3"}}, who=P1)
    assert over.status == 403
    assert over.fault() == ("forbidden", "Maximum number of metadata items exceeds 2")
    assert get(api, base, who=P2).status == 404
    assert call(api, "POST", base, {"metadata": {"a": "1"}}, who=P2).status == 404
    assert get(api, base).status == 200  # an admin sees every project's
    building = owned(api, "web2", P1, vm_state=states.BUILDING)
    answer = call(api, "POST", f"/servers/{building.id}/metadata", {"metadata": {"a": "1"}},
                  who=P1)
    assert answer.status == 409
    assert api.store.instance(inst.id).properties == {}


def test_ips_and_password(api: Api) -> None:
    inst = owned(api, "web1", P1)
    assert get(api, f"/servers/{inst.id}/ips", who=P1).body == {"addresses": {}}
    assert get(api, f"/servers/{inst.id}/ips/vmops", who=P1).status == 404
    assert get(api, f"/servers/{inst.id}/ips", who=P2).status == 404
    assert get(api, f"/servers/{inst.id}/os-server-password", who=P1).body == {"password": ""}
    assert call(api, "DELETE", f"/servers/{inst.id}/os-server-password",
                who=P1).status == 204
    assert get(api, f"/servers/{inst.id}/os-server-password", who=P2).status == 404


def test_ips_show_only_nova_keys(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from vmops.store import Port

    inst = owned(api, "web1", P1)
    port = Port("p", inst.id, 0, "bridge", "vmops", "52:54:00:00:00:01", "10.213.0.5", "tap0")
    monkeypatch.setattr(api.compute, "nics", lambda _inst: [port])
    assert get(api, f"/servers/{inst.id}/ips", who=P1).body == {
        "addresses": {"vmops": [{"version": 4, "addr": "10.213.0.5"}]}}
    assert get(api, f"/servers/{inst.id}/ips/vmops", who=P1).body == {
        "vmops": [{"version": 4, "addr": "10.213.0.5"}]}


# -- instance actions ----------------------------------------------------------------
def test_actions_are_recorded_with_the_request(api: Api) -> None:
    inst = owned(api, "web1", P1)
    paused = call(api, "POST", f"/servers/{inst.id}/action", {"pause": None}, who=P1)
    assert paused.status == 202
    settle(api)
    refused = call(api, "POST", f"/servers/{inst.id}/action", {"unpause": None}, who=P1)
    settle(api)
    assert refused.status == 202
    call(api, "POST", f"/servers/{inst.id}/action", {"unpause": None}, who=P1)  # 409
    settle(api)
    actions = get(api, f"/servers/{inst.id}/os-instance-actions", who=P1).body[
        "instanceActions"]
    assert all(set(a) == ACTION_KEYS for a in actions)
    assert [a["action"] for a in actions] == ["unpause", "pause"]  # newest first
    first = actions[-1]
    assert first["request_id"] == paused.headers["x-openstack-request-id"]
    assert (first["user_id"], first["project_id"], first["instance_uuid"],
            first["message"]) == ("u1", "p1", inst.id, None)
    shown = get(api, f"/servers/{inst.id}/os-instance-actions/{first['request_id']}",
                who=P1).body["instanceAction"]
    assert shown == first  # no events for a member, as Nova's policy at 2.1
    admin = get(api, f"/servers/{inst.id}/os-instance-actions/{first['request_id']}").body[
        "instanceAction"]
    (event,) = admin["events"]
    assert set(event) == EVENT_KEYS
    assert (event["event"], event["result"], event["traceback"]) == (
        "compute_pause_instance", "Success", None)
    assert get(api, f"/servers/{inst.id}/os-instance-actions/req-nope", who=P1).status == 404
    assert get(api, f"/servers/{inst.id}/os-instance-actions", who=P2).status == 404


def test_failed_action_is_recorded_as_an_error(api: Api,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from vmops.errors import HypervisorError

    inst = owned(api, "web1", P1)

    def broken(uuid: str) -> None:
        raise HypervisorError(reason="the pause broke")

    monkeypatch.setattr(api.hv, "pause", broken)
    answer = call(api, "POST", f"/servers/{inst.id}/action", {"pause": None}, who=P1)
    settle(api)
    request_id = answer.headers["x-openstack-request-id"]
    shown = get(api, f"/servers/{inst.id}/os-instance-actions/{request_id}").body[
        "instanceAction"]
    assert shown["message"] == "Error"
    assert shown["events"][0]["result"] == "Error"
    assert "the pause broke" in shown["events"][0]["traceback"]


def test_create_and_delete_are_actions(api: Api) -> None:
    created = _create(api)
    assert created.status == 202
    server_id = created.body["server"]["id"]
    settle(api)
    actions = get(api, f"/servers/{server_id}/os-instance-actions", who=P1).body[
        "instanceActions"]
    assert [a["action"] for a in actions] == ["create"]
    assert actions[0]["request_id"] == created.headers["x-openstack-request-id"]
    assert call(api, "DELETE", f"/servers/{server_id}", who=P1).status in (202, 204)
    settle(api)
    rows = api.store.query("SELECT action, result FROM instance_actions WHERE "
                           "instance_id = ? ORDER BY start_time", server_id)
    assert [(r["action"], r["result"]) for r in rows][-1] == ("delete", "Success")


# -- server groups -------------------------------------------------------------------
def _group(api: Api, policy: str = "anti-affinity", who: str = P1,
           name: str = "g") -> Answer:
    return call(api, "POST", "/os-server-groups",
                {"server_group": {"name": name, "policies": [policy]}}, who=who)


def test_server_groups(api: Api) -> None:
    created = _group(api)
    assert created.status == 200
    group = created.body["server_group"]
    assert set(group) == GROUP_KEYS
    assert (group["policies"], group["members"], group["metadata"]) == (
        ["anti-affinity"], [], {})
    other = _group(api, "affinity", who=P2, name="other")
    assert [g["id"] for g in get(api, "/os-server-groups", who=P1).body[
        "server_groups"]] == [group["id"]]
    assert get(api, f"/os-server-groups/{group['id']}", who=P1).body["server_group"] == group
    assert get(api, f"/os-server-groups/{group['id']}", who=P2).status == 404
    assert call(api, "DELETE", f"/os-server-groups/{group['id']}", who=P2).status == 404
    every = get(api, "/os-server-groups?all_projects=True").body["server_groups"]
    assert {g["id"] for g in every} == {group["id"], other.body["server_group"]["id"]}
    assert get(api, "/os-server-groups?limit=1&offset=1&all_projects=1").body[
        "server_groups"][0]["id"] == other.body["server_group"]["id"]
    assert call(api, "DELETE", f"/os-server-groups/{group['id']}", who=P1).status == 204
    assert get(api, f"/os-server-groups/{group['id']}", who=P1).status == 404


@pytest.mark.parametrize("body", [
    {"server_group": {"name": "g"}}, {"server_group": {"name": "g", "policies": []}},
    {"server_group": {"name": "g", "policies": ["affinity", "anti-affinity"]}},
    {"server_group": {"name": "g", "policies": ["soft-affinity"]}},
    {"server_group": {"name": "g", "policy": "affinity"}},
    {"server_group": {"name": "", "policies": ["affinity"]}},
    {"server_group": {"name": " g", "policies": ["affinity"]}},
    {"server_group": {"name": "g" * 256, "policies": ["affinity"]}},
    {"server_group": {"policies": ["affinity"]}}, {"group": {}}, []])
def test_bad_server_groups_are_400(api: Api, body: Any) -> None:
    answer = call(api, "POST", "/os-server-groups", body, who=P1)
    assert answer.status == 400, answer.body
    assert api.compute.server_groups.groups() == []


def test_server_group_quota(api: Api) -> None:
    call(api, "PUT", "/os-quota-sets/p1", {"quota_set": {"server_groups": 1}})
    assert _group(api).status == 200
    refused = _group(api, name="second")
    assert refused.status == 403
    assert refused.fault()[1] == "Quota exceeded, too many server groups."
    assert len(api.compute.server_groups.groups("p1")) == 1


def test_scheduler_hint_group_and_anti_affinity(api: Api) -> None:
    group_id = _group(api).body["server_group"]["id"]
    first = owned(api, "web1", P1)
    api.compute.server_groups.join(group_id, first.id)
    hint = {"os:scheduler_hints": {"group": group_id}}
    second = _create(api, body=hint)
    assert second.status == 202, second.body
    settle(api)
    server_id = second.body["server"]["id"]
    shown = get(api, f"/servers/{server_id}", who=P1).body["server"]
    assert shown["status"] == "ERROR"
    assert shown["fault"]["message"] == NO_VALID_HOST
    members = get(api, f"/os-server-groups/{group_id}", who=P1).body["server_group"][
        "members"]
    assert members == [first.id, server_id]
    assert api.store.ports(server_id) == [] or all(p.ip is None
                                                   for p in api.store.ports(server_id))


def test_affinity_and_bad_hints(api: Api) -> None:
    group_id = _group(api, "affinity").body["server_group"]["id"]
    first = owned(api, "web1", P1)
    api.compute.server_groups.join(group_id, first.id)
    joined = _create(api, body={"os:scheduler_hints": {"group": group_id}})
    assert joined.status == 202
    settle(api)
    assert api.store.instance(joined.body["server"]["id"]).fault != NO_VALID_HOST
    before = len(api.store.instances())
    hint: Any
    for hint in ({"group": "no-such-group"}, {"group": 5}, "group", [], None):
        answer = _create(api, body={"os:scheduler_hints": hint})
        assert answer.status == 400, (hint, answer.body)
    others = _group(api, who=P2, name="theirs").body["server_group"]["id"]
    assert _create(api, body={"os:scheduler_hints": {"group": others}}).status == 400
    call(api, "PUT", "/os-quota-sets/p1", {"quota_set": {"server_group_members": 2}})
    full = _create(api, body={"os:scheduler_hints": {"group": group_id}})
    assert full.status == 403
    assert full.fault()[1] == "Quota exceeded, too many servers in group"
    assert len(api.store.instances()) == before


# -- microversions up to 2.52 ----------------------------------------------------------
def test_services_and_hypervisors_by_microversion(api: Api) -> None:
    assert all("forced_down" not in s for s in get(api, "/os-services").body["services"])
    later = get(api, "/os-services", version="2.11").body["services"]
    assert all(s["forced_down"] is False for s in later)
    body = {"host": HOST, "binary": "nova-compute"}
    assert call(api, "PUT", "/os-services/force-down", {**body, "forced_down": False},
                headers=at("2.11")).body == {"service": {**body, "forced_down": False}}
    assert call(api, "PUT", "/os-services/force-down", {**body, "forced_down": True},
                headers=at("2.11")).body == {"service": {**body, "forced_down": True}}
    (compute,) = get(api, "/os-services?binary=nova-compute", version="2.11").body["services"]
    assert (compute["forced_down"], compute["state"]) == (True, "down")
    assert get(api, "/os-hypervisors").body["hypervisors"][0]["state"] == "down"
    call(api, "PUT", "/os-services/force-down", {**body, "forced_down": False},
         headers=at("2.11"))
    assert call(api, "PUT", "/os-services/force-down", body, headers=at("2.11")).status == 400
    assert isinstance(get(api, "/os-hypervisors/1").body["hypervisor"]["cpu_info"], str)
    cpu = get(api, "/os-hypervisors/1", version="2.28").body["hypervisor"]["cpu_info"]
    assert set(cpu) == {"arch", "model", "vendor", "topology", "features"}
    assert len(get(api, "/os-hypervisors?limit=0", version="2.33").body["hypervisors"]) == 0
    assert get(api, "/os-hypervisors/detail?marker=1", version="2.33").body[
        "hypervisors"] == []
    assert get(api, "/os-hypervisors?marker=7", version="2.33").status == 400
    assert get(api, "/os-hosts", version="2.42").status == 200
    assert get(api, "/os-hosts", version="2.43").status == 404
    assert get(api, f"/os-hosts/{HOST}/reboot", version="2.43").status == 404


def test_quotas_and_limits_by_microversion(api: Api) -> None:
    limits = get(api, "/limits", who=P1, version="2.36").body["limits"]["absolute"]
    assert "maxSecurityGroups" not in limits and "maxImageMeta" in limits
    assert "totalFloatingIpsUsed" not in limits
    assert "maxImageMeta" not in get(api, "/limits", who=P1, version="2.39").body["limits"][
        "absolute"]
    shown = get(api, "/os-quota-sets/p1", who=P1, version="2.36").body["quota_set"]
    assert set(shown) == QUOTA_KEYS - NETWORK_QUOTAS | {"id"}
    refused = call(api, "PUT", "/os-quota-sets/p1", {"quota_set": {"floating_ips": 3}},
                   headers=at("2.36"))
    assert refused.status == 400
    assert call(api, "PUT", "/os-quota-sets/p1", {"quota_set": {"floating_ips": 3}}
                ).status == 200


def test_usage_is_paged_from_2_40(api: Api) -> None:
    first, second = owned(api, "web1", P1), owned(api, "web2", P1)
    base = "/os-simple-tenant-usage/p1?start=2020-01-01T00:00:00"
    page = get(api, f"{base}&limit=1", who=P1, version="2.40").body
    assert [u["instance_id"] for u in page["tenant_usage"]["server_usages"]] == [first.id]
    (link,) = page["tenant_usage_links"]
    assert link["rel"] == "next" and f"marker={first.id}" in link["href"]
    rest = get(api, f"{base}&limit=1&marker={first.id}", who=P1, version="2.40").body
    assert [u["instance_id"] for u in rest["tenant_usage"]["server_usages"]] == [second.id]
    assert get(api, f"{base}&marker=nope", who=P1, version="2.40").status == 400
    everything = get(api, f"{base}&limit=1", who=P1).body  # before 2.40: not paged
    assert len(everything["tenant_usage"]["server_usages"]) == 2
    assert "tenant_usage_links" not in everything


def test_server_groups_and_actions_by_microversion(api: Api) -> None:
    refused = call(api, "POST", "/os-server-groups", {"server_group": {
        "name": "soft", "policies": ["soft-anti-affinity"]}}, who=P1)
    assert refused.status == 400
    made = call(api, "POST", "/os-server-groups", {"server_group": {
        "name": "soft", "policies": ["soft-anti-affinity"]}}, who=P1, headers=at("2.15"))
    assert made.status == 200
    group = made.body["server_group"]
    assert (group["project_id"], group["user_id"]) == ("p1", "u1")
    assert set(group) == GROUP_KEYS | {"project_id", "user_id"}
    inst = owned(api, "web1", P1)
    api.compute.server_groups.join(group["id"], inst.id)
    again = _create(api, body={"os:scheduler_hints": {"group": group["id"]}})
    settle(api)
    assert api.store.instance(again.body["server"]["id"]).fault != NO_VALID_HOST  # soft
    paused = call(api, "POST", f"/servers/{inst.id}/action", {"pause": None}, who=P1)
    settle(api)
    path = f"/servers/{inst.id}/os-instance-actions/{paused.headers['x-openstack-request-id']}"
    assert "events" not in get(api, path, who=P1).body["instanceAction"]
    (event,) = get(api, path, who=P1, version="2.51").body["instanceAction"]["events"]
    assert set(event) == EVENT_KEYS - {"traceback"}
    api.compute.destroy(inst.id)
    assert get(api, f"/servers/{inst.id}/os-instance-actions", who=P1).status == 404
    gone = get(api, f"/servers/{inst.id}/os-instance-actions", who=P1, version="2.21")
    assert [a["action"] for a in gone.body["instanceActions"]] == ["delete", "pause"]
    assert get(api, f"/servers/{inst.id}/os-instance-actions", who=P2,
               version="2.21").status == 404


def test_every_verb_that_takes_a_server_is_an_action() -> None:
    """Each verb Compute runs through _run has Nova's action name (a verb
    missing here would go unrecorded)."""
    import re

    from vmops.compute import actions, manager

    source = Path(manager.__file__).read_text()
    verbs = set(re.findall(r'self\._run\([^,]+, "([a-z-]+)"', source))
    assert verbs and verbs <= set(actions.ACTION_OF_VERB), verbs - set(actions.ACTION_OF_VERB)
    assert set(actions.ACTION_OF_VERB.values()) <= set(actions.EVENT_OF_ACTION)


def test_delete_while_building_is_recorded_with_its_request(api: Api) -> None:
    inst = owned(api, "web1", P1, vm_state=states.BUILDING)
    api.compute.tasks.acquire(inst.id, inst.name, states.SPAWNING)  # a spawn under way
    deleted = call(api, "DELETE", f"/servers/{inst.id}", who=P1)
    assert deleted.status == 204
    api.compute.tasks.release(inst.id)  # the build ends, as a spawn's end does:
    api.compute._notify()  # noqa: SLF001 - it wakes whoever waits for the instance
    for _ in range(500):
        rows = api.store.query("SELECT request_id, user_id, result FROM instance_actions "
                               "WHERE instance_id = ? AND action = 'delete'", inst.id)
        if rows and rows[0]["result"]:
            break
        time.sleep(0.01)
    assert [tuple(r) for r in rows] == [
        (deleted.headers["x-openstack-request-id"], "u1", "Success")]


def test_a_restart_ends_the_actions_it_cut_short(api: Api) -> None:
    inst = owned(api, "web1", P1)
    api.compute.actions.begin(inst, "stop")  # as if the service died during the stop
    (open_action,) = api.compute.actions.actions(inst.id)
    assert open_action.finish_time is None and open_action.result is None
    api.compute.recover()
    (ended,) = api.compute.actions.actions(inst.id)
    assert (ended.result, ended.message) == ("Error", "interrupted by a service restart")
    assert ended.finish_time is not None
