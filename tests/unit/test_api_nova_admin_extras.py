"""Nova's admin APIs of schema 8 on the fake hypervisor: private flavors
and their access lists, flavor extra specs, host aggregates, server
diagnostics, the instance usage audit log, os-networks and the compute
API's image metadata.

Every answer is checked against the OpenAPI document (``Api.raw``); the
key sets here are those of Tempest's response schemas
(tempest/lib/api_schema/response/compute/v2_1/ and later).
"""

# ruff: noqa: F811 (each test's "api" parameter is the fixture imported below)
from __future__ import annotations

from typing import Any

import pytest

from tests import records
from tests.unit.test_api import IMAGE_ID, Api
from tests.unit.test_api_nova_extras import (  # noqa: F401 (api: its fixture, with 3 projects)
    ADMIN,
    P1,
    P2,
    _create,
    api,
    call,
    get,
    owned,
    settle,
)

FLAVOR = {"name": "secret", "ram": 256, "vcpus": 1, "disk": 1, "id": "secret-1",
          "os-flavor-access:is_public": "False"}


def _private_flavor(api: Api, **fields: Any) -> dict[str, Any]:
    made = call(api, "POST", "/flavors", {"flavor": {**FLAVOR, **fields}})
    assert made.status == 200, made.body
    assert made.body["flavor"]["os-flavor-access:is_public"] is False
    flavor: dict[str, Any] = made.body["flavor"]
    return flavor


def _ids(api: Api, query: str = "", who: str = ADMIN) -> list[str]:
    return [f["id"] for f in get(api, f"/flavors/detail{query}", who=who).body["flavors"]]


# -- private flavors and os-flavor-access -------------------------------------------
def test_a_private_flavor_is_seen_only_by_admins_and_projects_given_access(api: Api) -> None:
    flavor = _private_flavor(api)
    assert "secret-1" not in _ids(api, who=P1)
    assert get(api, "/flavors/secret-1", who=P1).status == 404
    assert get(api, "/flavors/secret-1/os-extra_specs", who=P1).status == 404
    # Admins: public ones by default (as their project), private ones with
    # is_public false, all with none, in any of oslo's spellings.
    assert "secret-1" not in _ids(api)
    for word in ("f", "false", "no", "0", "N"):
        assert _ids(api, f"?is_public={word}") == ["secret-1"], word
    for word in ("t", "true", "yes", "1"):
        assert "1" in _ids(api, f"?is_public={word}") and "secret-1" not in _ids(
            api, f"?is_public={word}")
    assert "secret-1" in _ids(api, "?is_public=none")
    assert get(api, "/flavors/detail?is_public=maybe").status == 400
    assert "1" in _ids(api, "?is_public=maybe", who=P1)  # ignored for members, as Nova
    assert "secret-1" not in _ids(api, "?is_public=none", who=P1)
    assert get(api, "/flavors/secret-1").body["flavor"] == flavor

    assert call(api, "GET", "/flavors/secret-1/os-flavor-access").body == {"flavor_access": []}
    added = call(api, "POST", "/flavors/secret-1/action", {"addTenantAccess": {"tenant": "p1"}})
    assert added.status == 200
    assert added.body == {"flavor_access": [{"flavor_id": "secret-1", "tenant_id": "p1"}]}
    assert "secret-1" in _ids(api, who=P1) and "secret-1" not in _ids(api, who=P2)
    assert get(api, "/flavors/secret-1", who=P1).status == 200
    assert get(api, "/flavors/secret-1", who=P2).status == 404
    removed = call(api, "POST", "/flavors/secret-1/action",
                   {"removeTenantAccess": {"tenant": "p1"}})
    assert removed.body == {"flavor_access": []}
    assert "secret-1" not in _ids(api, who=P1)


def test_flavor_access_refusals(api: Api) -> None:
    _private_flavor(api)
    add = {"addTenantAccess": {"tenant": "p1"}}
    assert call(api, "POST", "/flavors/secret-1/action", add, who=P1).status == 403
    assert call(api, "GET", "/flavors/secret-1/os-flavor-access", who=P1).status == 403
    assert call(api, "POST", "/flavors/secret-1/action", add).status == 200
    duplicate = call(api, "POST", "/flavors/secret-1/action", add)
    assert duplicate.status == 409 and duplicate.fault()[1] == (
        "Flavor access already exists for flavor secret-1 and project p1 combination.")
    absent = call(api, "POST", "/flavors/secret-1/action",
                  {"removeTenantAccess": {"tenant": "p2"}})
    assert absent.status == 404 and absent.fault()[1] == (
        "Flavor access not found for secret-1 / p2 combination.")
    public = call(api, "GET", "/flavors/1/os-flavor-access")
    assert public.status == 404 and "public flavors" in public.fault()[1]
    assert call(api, "POST", "/flavors/1/action", add).status == 409
    assert call(api, "POST", "/flavors/nope/action", add).status == 404
    bad: Any
    for bad in ({"addTenantAccess": {}}, {"addTenantAccess": {"tenant": ""}},
                {"addTenantAccess": {"tenant": 5}}, {"addTenantAccess": "p1"},
                {"addTenantAccess": {"tenant": "p1", "x": 1}}, {"grant": {"tenant": "p1"}},
                {"addTenantAccess": {"tenant": "p1"}, "removeTenantAccess": {"tenant": "p1"}},
                []):
        assert call(api, "POST", "/flavors/secret-1/action", bad).status == 400, bad
    # A deleted flavor's access list goes with it.
    assert call(api, "DELETE", "/flavors/secret-1").status == 202
    assert api.store.query("SELECT * FROM flavor_projects") == []


def test_a_server_from_a_private_flavor_needs_access(api: Api) -> None:
    _private_flavor(api)
    refused = _create(api, flavorRef="secret-1")
    assert refused.status == 400 and "secret-1" in refused.fault()[1]
    assert api.store.instances() == []
    call(api, "POST", "/flavors/secret-1/action", {"addTenantAccess": {"tenant": "p1"}})
    assert _create(api, flavorRef="secret-1").status == 202
    settle(api)


# -- os-extra_specs -------------------------------------------------------------------
def test_extra_specs_set_show_update_unset(api: Api) -> None:
    specs = {"hw:numa_nodes": "1", "hw:cpu_policy": "shared"}
    made = call(api, "POST", "/flavors/1/os-extra_specs", {"extra_specs": specs})
    assert (made.status, made.body) == (200, {"extra_specs": specs})
    assert get(api, "/flavors/1/os-extra_specs", who=P1).body == {"extra_specs": specs}
    assert get(api, "/flavors/1/os-extra_specs/hw:numa_nodes", who=P1).body == {
        "hw:numa_nodes": "1"}
    updated = call(api, "PUT", "/flavors/1/os-extra_specs/hw:numa_nodes", {"hw:numa_nodes": "2"})
    assert (updated.status, updated.body) == (200, {"hw:numa_nodes": "2"})
    numbers = call(api, "POST", "/flavors/1/os-extra_specs", {"extra_specs": {"a": 1}})
    assert numbers.body == {"extra_specs": {"a": "1"}}
    assert get(api, "/flavors/1/os-extra_specs").body["extra_specs"] == {
        "a": "1", "hw:numa_nodes": "2", "hw:cpu_policy": "shared"}
    for key in ("hw:numa_nodes", "hw:cpu_policy", "a"):
        gone = call(api, "DELETE", f"/flavors/1/os-extra_specs/{key}")
        assert gone.status == 200
    assert get(api, "/flavors/1/os-extra_specs").body == {"extra_specs": {}}


def test_extra_spec_refusals(api: Api) -> None:
    call(api, "POST", "/flavors/1/os-extra_specs", {"extra_specs": {"k": "v"}})
    assert call(api, "POST", "/flavors/1/os-extra_specs", {"extra_specs": {"k": "w"}},
                who=P1).status == 403
    assert call(api, "PUT", "/flavors/1/os-extra_specs/k", {"k": "w"}, who=P1).status == 403
    assert call(api, "DELETE", "/flavors/1/os-extra_specs/k", who=P1).status == 403
    missing = get(api, "/flavors/1/os-extra_specs/nope")
    assert missing.status == 404 and missing.fault()[1] == (
        "Flavor 1 has no extra specs with key nope.")
    assert call(api, "DELETE", "/flavors/1/os-extra_specs/nope").status == 404
    mismatch = call(api, "PUT", "/flavors/1/os-extra_specs/k", {"other": "v"})
    assert mismatch.status == 400 and "mismatch" in mismatch.fault()[1]
    more = call(api, "PUT", "/flavors/1/os-extra_specs/k", {"k": "v", "l": "w"})
    assert more.status == 400 and "too many" in more.fault()[1]
    bad: Any
    for bad in ({"extra_specs": {"bad/key": "v"}}, {"extra_specs": {"k": "v" * 256}},
                {"extra_specs": {"k": None}}, {"extra_specs": {"k": {"x": 1}}},
                {"extra_specs": "k=v"}, {"specs": {}}, {"extra_specs": {}, "x": 1}):
        assert call(api, "POST", "/flavors/1/os-extra_specs", bad).status == 400, bad
    assert call(api, "POST", "/flavors/nope/os-extra_specs",
                {"extra_specs": {"k": "v"}}).status == 404
    assert get(api, "/flavors/1/os-extra_specs").body == {"extra_specs": {"k": "v"}}


@pytest.mark.parametrize("who", [P1, P2])
def test_members_read_public_extra_specs(api: Api, who: str) -> None:
    call(api, "POST", "/flavors/1/os-extra_specs", {"extra_specs": {"k": "v"}})
    assert get(api, "/flavors/1/os-extra_specs", who=who).body == {"extra_specs": {"k": "v"}}


# -- os-aggregates ----------------------------------------------------------------------
AGGREGATE_CREATE_KEYS = {"availability_zone", "created_at", "deleted", "deleted_at", "id",
                         "name", "updated_at"}
AGGREGATE_KEYS = AGGREGATE_CREATE_KEYS | {"hosts", "metadata"}


def _aggregate(api: Api, name: str = "rack1", zone: str | None = None) -> dict[str, Any]:
    made = call(api, "POST", "/os-aggregates",
                {"aggregate": {"name": name, "availability_zone": zone}})
    assert made.status == 200, made.body
    assert set(made.body["aggregate"]) == AGGREGATE_CREATE_KEYS
    aggregate: dict[str, Any] = made.body["aggregate"]
    return aggregate


def test_aggregates_create_show_update_list_delete(api: Api) -> None:
    made = _aggregate(api, zone="nova")
    assert (made["name"], made["availability_zone"], made["deleted"], made["deleted_at"],
            made["updated_at"]) == ("rack1", "nova", False, None, None)
    shown = get(api, f"/os-aggregates/{made['id']}").body["aggregate"]
    assert set(shown) == AGGREGATE_KEYS
    assert (shown["hosts"], shown["metadata"]) == ([], {"availability_zone": "nova"})
    assert set(get(api, f"/os-aggregates/{made['id']}", version="2.41").body[
        "aggregate"]) == AGGREGATE_KEYS | {"uuid"}
    renamed = call(api, "PUT", f"/os-aggregates/{made['id']}",
                   {"aggregate": {"name": "rack2", "availability_zone": "az9"}})
    assert renamed.status == 200
    body = renamed.body["aggregate"]
    assert (body["name"], body["availability_zone"], body["metadata"]) == (
        "rack2", "az9", {"availability_zone": "az9"})
    assert body["updated_at"] is not None
    listed = get(api, "/os-aggregates").body["aggregates"]
    assert [(a["id"], a["name"]) for a in listed] == [(made["id"], "rack2")]
    assert call(api, "DELETE", f"/os-aggregates/{made['id']}").status == 200
    assert get(api, "/os-aggregates").body == {"aggregates": []}
    assert get(api, f"/os-aggregates/{made['id']}").status == 404


def test_aggregate_hosts_and_metadata(api: Api) -> None:
    from vmops.compute import host_facts

    host = host_facts.hostname()
    made = _aggregate(api)
    path = f"/os-aggregates/{made['id']}/action"
    added = call(api, "POST", path, {"add_host": {"host": host}})
    assert added.status == 200 and added.body["aggregate"]["hosts"] == [host]
    again = call(api, "POST", path, {"add_host": {"host": host}})
    assert again.status == 409 and again.fault()[1] == (
        f"Aggregate {made['id']} already has host {host}.")
    other = call(api, "POST", path, {"add_host": {"host": "elsewhere"}})
    assert other.status == 404 and other.fault()[1] == (
        "Compute host elsewhere could not be found.")
    # A host in it: not deleted, and it keeps this host's zone.
    assert call(api, "DELETE", f"/os-aggregates/{made['id']}").status == 400
    assert call(api, "PUT", f"/os-aggregates/{made['id']}",
                {"aggregate": {"availability_zone": "az9"}}).status == 400
    meta = call(api, "POST", path, {"set_metadata": {"metadata": {"ssd": "true", "x": "1"}}})
    assert meta.body["aggregate"]["metadata"] == {"ssd": "true", "x": "1"}
    meta = call(api, "POST", path, {"set_metadata": {"metadata": {"x": None}}})
    assert meta.body["aggregate"]["metadata"] == {"ssd": "true"}
    removed = call(api, "POST", path, {"remove_host": {"host": host}})
    assert removed.status == 200 and removed.body["aggregate"]["hosts"] == []
    absent = call(api, "POST", path, {"remove_host": {"host": host}})
    assert absent.status == 404 and absent.fault()[1] == (
        f"Cannot remove host {host} in aggregate {made['id']}")
    zoned = _aggregate(api, "far", zone="az9")
    refused = call(api, "POST", f"/os-aggregates/{zoned['id']}/action",
                   {"add_host": {"host": host}})
    assert refused.status == 400 and "zone" in refused.fault()[1]
    assert call(api, "DELETE", f"/os-aggregates/{made['id']}").status == 200
    assert api.store.query("SELECT * FROM aggregate_metadata WHERE aggregate_id = ?",
                           made["id"]) == []


def test_aggregate_refusals(api: Api) -> None:
    made = _aggregate(api)
    for who in (P1, P2):
        assert get(api, "/os-aggregates", who=who).status == 403
        assert get(api, f"/os-aggregates/{made['id']}", who=who).status == 403
        assert call(api, "POST", "/os-aggregates", {"aggregate": {"name": "x"}},
                    who=who).status == 403
        assert call(api, "DELETE", f"/os-aggregates/{made['id']}", who=who).status == 403
        assert call(api, "POST", f"/os-aggregates/{made['id']}/action",
                    {"add_host": {"host": "h"}}, who=who).status == 403
    duplicate = call(api, "POST", "/os-aggregates", {"aggregate": {"name": "rack1"}})
    assert duplicate.status == 409 and duplicate.fault()[1] == "Aggregate rack1 already exists."
    bad: Any
    for bad in ({"aggregate": {"name": ""}}, {"aggregate": {"name": "a" * 256}},
                {"aggregate": {"name": " x"}}, {"aggregate": {}},
                {"aggregate": {"name": "x", "availability_zone": ""}},
                {"aggregate": {"name": "x", "availability_zone": "internal"}},
                {"aggregate": {"name": "x", "hosts": []}}, {"aggregate": "x"}, []):
        assert call(api, "POST", "/os-aggregates", bad).status == 400, bad
    for ref in ("-1", "999"):
        assert get(api, f"/os-aggregates/{ref}").status == 404
        assert call(api, "DELETE", f"/os-aggregates/{ref}").status == 404
    assert get(api, "/os-aggregates/abc").status == 400
    path = f"/os-aggregates/{made['id']}/action"
    for bad in ({"add_host": {}}, {"add_host": {"host": ""}}, {"add_host": "h"},
                {"set_metadata": {"metadata": {}}}, {"set_metadata": {"metadata": {"a/b": "1"}}},
                {"set_metadata": {"metadata": {"k": 5}}}, {"evacuate": {}},
                {"set_metadata": {"metadata": {"availability_zone": ""}}}):
        assert call(api, "POST", path, bad).status == 400, bad
    assert call(api, "PUT", f"/os-aggregates/{made['id']}", {"aggregate": {}}).status == 400
    assert [a["name"] for a in get(api, "/os-aggregates").body["aggregates"]] == ["rack1"]


# -- the compute API's image metadata -------------------------------------------------
def _p1_image(api: Api) -> str:
    from vmops.store import Image

    api.store.add_image(Image(id="11111111-2222-3333-4444-555555555555", name="mine",
                              status="active", format="raw", owner="p1", visibility="private",
                              extra={"min_ram": 0, "protected": False, "os_distro": "debian"}))
    return "11111111-2222-3333-4444-555555555555"


def test_image_metadata_list_set_update_item(api: Api) -> None:
    image_id = _p1_image(api)
    path = f"/images/{image_id}/metadata"
    assert get(api, path, who=P1).body == {"metadata": {"os_distro": "debian"}}
    replaced = call(api, "PUT", path, {"metadata": {"os_version": "1", "os_distro": "2"}},
                    who=P1)
    assert replaced.body == {"metadata": {"os_version": "1", "os_distro": "2"}}
    merged = call(api, "POST", path, {"metadata": {"os_version": "alt", "arch": "x"}}, who=P1)
    assert merged.body == {"metadata": {"os_version": "alt", "os_distro": "2", "arch": "x"}}
    assert get(api, f"{path}/arch", who=P1).body == {"meta": {"arch": "x"}}
    item = call(api, "PUT", f"{path}/arch", {"meta": {"arch": "y"}}, who=P1)
    assert (item.status, item.body) == (200, {"meta": {"arch": "y"}})
    assert call(api, "DELETE", f"{path}/arch", who=P1).status == 204
    assert get(api, path, who=P1).body == {"metadata": {"os_version": "alt", "os_distro": "2"}}
    # Glance's own attributes are kept, and are no metadata.
    img = api.store.image(image_id)
    assert (img.extra["min_ram"], img.extra["protected"]) == (0, False)
    # The login user is the record's.
    call(api, "POST", path, {"metadata": {"os_admin_user": "debian"}}, who=P1)
    assert api.store.image(image_id).login_user == "debian"


def test_image_metadata_refusals(api: Api) -> None:
    image_id = _p1_image(api)
    path = f"/images/{image_id}/metadata"
    assert get(api, path, who=P2).status == 404  # private to p1
    assert call(api, "POST", path, {"metadata": {"a": "b"}}, who=P2).status == 404
    public = f"/images/{IMAGE_ID}/metadata"
    assert get(api, public, who=P2).status == 200
    assert call(api, "POST", public, {"metadata": {"a": "b"}}, who=P2).status == 403
    assert get(api, f"{path}/nope", who=P1).status == 404
    assert call(api, "DELETE", f"{path}/nope", who=P1).status == 404
    assert get(api, "/images/00000000-0000-0000-0000-000000000000/metadata").status == 404
    assert get(api, path, version="2.39").status == 404
    mismatch = call(api, "PUT", f"{path}/a", {"meta": {"b": "1"}}, who=P1)
    assert mismatch.status == 400 and "mismatch" in mismatch.fault()[1]
    assert call(api, "PUT", f"{path}/a", {"meta": {"a": "1", "b": "2"}}, who=P1).status == 400
    bad: Any
    for bad in ({"metadata": {"a": 1}}, {"metadata": {"a": "x" * 256}}, {"metadata": {"": "x"}},
                {"metadata": []}, {"meta": {}}, {"metadata": {}, "x": 1}):
        assert call(api, "POST", path, bad, who=P1).status == 400, bad
    assert call(api, "POST", path, {"metadata": {"min_ram": "5"}}, who=P1).status == 403
    assert call(api, "POST", path, {"metadata": {"os_admin_user": "Root!"}},
                who=P1).status == 400
    call(api, "PUT", "/os-quota-sets/p1", {"quota_set": {"metadata_items": 2}})
    over = call(api, "POST", path, {"metadata": {"a": "1", "b": "2"}}, who=P1)
    assert over.status == 403
    assert get(api, path, who=P1).body == {"metadata": {"os_distro": "debian"}}


# -- server diagnostics ---------------------------------------------------------------
DIAGNOSTICS_KEYS = {"state", "driver", "hypervisor", "hypervisor_os", "uptime", "config_drive",
                    "num_cpus", "num_nics", "num_disks", "memory_details", "cpu_details",
                    "nic_details", "disk_details"}
NIC_KEYS = {"mac_address", "rx_octets", "rx_errors", "rx_drop", "rx_packets", "rx_rate",
            "tx_octets", "tx_errors", "tx_drop", "tx_packets", "tx_rate"}
DISK_KEYS = {"read_bytes", "read_requests", "write_bytes", "write_requests", "errors_count"}


def test_diagnostics_from_the_domains_statistics(api: Api) -> None:
    inst = owned(api, "web1")
    body = get(api, f"/servers/{inst.id}/diagnostics", version="2.48").body
    assert set(body) == DIAGNOSTICS_KEYS
    assert (body["state"], body["driver"], body["hypervisor"], body["hypervisor_os"]) == (
        "running", "libvirt", "qemu", "linux")
    assert body["memory_details"]["maximum"] == 512  # MiB, m1.tiny's
    assert body["num_cpus"] == len(body["cpu_details"]) == 1
    assert body["uptime"] is not None and body["uptime"] >= 0
    old = get(api, f"/servers/{inst.id}/diagnostics").body
    assert old["memory"] == 512 * 1024 and "cpu0_time" in old
    api.compute.hv.pause(inst.id)
    assert get(api, f"/servers/{inst.id}/diagnostics", version="2.48").body[
        "state"] == "paused"


def test_diagnostics_are_for_admins_of_a_server_with_a_domain(api: Api) -> None:
    inst = owned(api, "web1")
    assert get(api, f"/servers/{inst.id}/diagnostics", who=P1).status == 403
    assert get(api, "/servers/00000000-0000-0000-0000-000000000000/diagnostics").status == 404
    assert get(api, "/servers/web1/diagnostics").status == 404  # an id, not a name
    api.hv.power_off(inst.id)
    api.hv.undefine(inst.id)
    gone = get(api, f"/servers/{inst.id}/diagnostics")
    assert gone.status == 409 and "no domain" in gone.fault()[1]


def test_diagnostics_read_libvirts_counters() -> None:
    from vmops.api import diagnostics_api

    inst = records.instance("n", id="i", vm_state="active", power_state="running",
                            config_drive=True)
    stats: dict[str, int | float] = {
        "state.state": 1, "balloon.maximum": 1048576, "balloon.current": 524288,
        "vcpu.count": 2, "vcpu.0.time": 10, "vcpu.1.time": 20, "net.count": 1,
        "net.0.rx.bytes": 100, "net.0.rx.pkts": 2, "net.0.rx.errs": 0, "net.0.rx.drop": 0,
        "net.0.tx.bytes": 50, "net.0.tx.pkts": 1, "net.0.tx.errs": 0, "net.0.tx.drop": -1,
        "block.count": 1, "block.0.rd.bytes": 4096, "block.0.rd.reqs": 1,
        "block.0.wr.bytes": 0, "block.0.wr.reqs": 0}
    body = diagnostics_api.standard(inst, stats, "kvm")
    assert body["memory_details"] == {"maximum": 1024, "used": 512}
    assert body["cpu_details"] == [{"id": 0, "time": 10, "utilisation": None},
                                   {"id": 1, "time": 20, "utilisation": None}]
    (nic,) = body["nic_details"]
    assert set(nic) == NIC_KEYS
    assert (nic["mac_address"], nic["rx_octets"], nic["tx_drop"], nic["rx_rate"]) == (
        "52:54:00:00:00:01", 100, None, None)
    assert body["disk_details"] == [{"read_bytes": 4096, "read_requests": 1, "write_bytes": 0,
                                     "write_requests": 0, "errors_count": None}]
    assert set(body["disk_details"][0]) == DISK_KEYS
    assert (body["uptime"], body["config_drive"], body["num_nics"]) == (None, True, 1)


# -- usage of destroyed servers, and the usage audit log --------------------------------
AUDIT_KEYS = {"hosts_not_run", "log", "num_hosts", "num_hosts_done", "num_hosts_not_run",
              "num_hosts_running", "overall_status", "period_beginning", "period_ending",
              "total_errors", "total_instances"}


def test_a_destroyed_server_counts_in_usage_until_its_end(api: Api) -> None:
    import time

    web1 = owned(api, "web1")
    api.store.update_instance(web1, launched_at=time.time() - 7200)
    assert call(api, "DELETE", f"/servers/{web1.id}", who=P1).status == 204
    settle_gone(api, web1.id)
    used = get(api, "/os-simple-tenant-usage/p1?start=2020-01-01T00:00:00", who=P1).body[
        "tenant_usage"]
    (server,) = used["server_usages"]
    assert (server["instance_id"], server["state"]) == (web1.id, "terminated")
    assert server["ended_at"] is not None and 1.99 < server["hours"] < 2.1
    assert 7190 < server["uptime"] < 7300
    # A period that ends before it was launched, or starts after it ended: none.
    assert get(api, "/os-simple-tenant-usage/p1?start=2020-01-01T00:00:00"
               "&end=2020-01-02T00:00:00", who=P1).body == {"tenant_usage": {}}
    later = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 60))
    assert get(api, f"/os-simple-tenant-usage/p1?start={later}&end={later}",
               who=P1).body == {"tenant_usage": {}}
    assert get(api, "/os-simple-tenant-usage/p2?start=2020-01-01T00:00:00").body == {
        "tenant_usage": {}}


def settle_gone(api: Api, instance_id: str) -> None:
    import time

    deadline = time.monotonic() + 10
    while any(i.id == instance_id for i in api.store.instances()):
        assert time.monotonic() < deadline, "the server was not destroyed"
        time.sleep(0.02)


def test_usage_audit_log_of_the_last_whole_month(api: Api) -> None:
    from datetime import datetime

    from vmops.api.usage_audit_api import audit_period
    from vmops.compute import host_facts

    assert audit_period(datetime(2026, 12, 1, 18, 33, 20)) == (
        datetime(2026, 11, 1), datetime(2026, 12, 1))
    assert audit_period(datetime(2026, 1, 1)) == (datetime(2025, 11, 1), datetime(2025, 12, 1))
    assert audit_period(datetime(2026, 1, 15)) == (datetime(2025, 12, 1), datetime(2026, 1, 1))
    web1 = owned(api, "web1")
    api.store.update_instance(web1, launched_at=datetime(2026, 10, 20).timestamp())
    shown = get(api, "/os-instance_usage_audit_log/2026-12-01%2018%3A33%3A20").body[
        "instance_usage_audit_log"]
    assert set(shown) == AUDIT_KEYS
    assert (shown["period_beginning"], shown["period_ending"]) == (
        "2026-11-01 00:00:00", "2026-12-01 00:00:00")
    assert (shown["total_instances"], shown["num_hosts"], shown["num_hosts_done"]) == (1, 1, 1)
    assert shown["log"][host_facts.hostname()]["state"] == "DONE"
    assert shown["overall_status"] == "ALL hosts done. 0 errors."
    before = get(api, "/os-instance_usage_audit_log/2026-10-15%2000:00:00.5").body[
        "instance_usage_audit_log"]
    assert before["total_instances"] == 0  # September: not launched yet
    listed = get(api, "/os-instance_usage_audit_log").body["instance_usage_audit_logs"]
    assert set(listed) == AUDIT_KEYS
    bad: Any
    for bad in ("invalid_time", "2026-13-01%2000:00:00", "2026-12-01T00:00:00"):
        assert get(api, f"/os-instance_usage_audit_log/{bad}").status == 400, bad
    assert get(api, "/os-instance_usage_audit_log", who=P1).status == 403
    assert get(api, "/os-instance_usage_audit_log/2026-12-01%2000:00:00", who=P1).status == 403


# -- os-networks ------------------------------------------------------------------------
def test_os_networks_shows_the_vmops_network(api: Api) -> None:
    from vmops.store import NetworkRecord

    assert get(api, "/os-networks", who=P1).body == {"networks": []}  # no bridge made
    assert get(api, "/os-networks/vmops").status == 404
    api.store.add_network(NetworkRecord("vmops", "vmops0", "10.213.0.0/24"))
    (member_view,) = get(api, "/os-networks", who=P1).body["networks"]
    assert member_view == {
        "id": "vmops", "label": "vmops", "cidr": "10.213.0.0/24", "netmask": "255.255.255.0",
        "gateway": "10.213.0.1", "broadcast": "10.213.0.255", "dns1": "10.213.0.1",
        "dns2": None, "cidr_v6": None, "gateway_v6": None, "netmask_v6": None}
    admin_view = get(api, "/os-networks/vmops").body["network"]
    assert admin_view["bridge"] == "vmops0" and admin_view["label"] == "vmops"
    assert len(admin_view) == 32
    assert get(api, "/os-networks/user").status == 404
    assert get(api, "/os-networks", version="2.36").status == 404


# -- os-services: disabled and forced-down services ---------------------------------------
def test_a_disabled_compute_service_takes_no_new_servers(api: Api) -> None:
    from vmops.compute import host_facts

    body = {"host": host_facts.hostname(), "binary": "nova-compute"}
    disabled = call(api, "PUT", "/os-services/disable-log-reason",
                    {**body, "disabled_reason": "maintenance"})
    assert disabled.body == {"service": {**body, "status": "disabled",
                                         "disabled_reason": "maintenance"}}
    (compute,) = get(api, "/os-services?binary=nova-compute").body["services"]
    assert (compute["status"], compute["disabled_reason"], compute["state"]) == (
        "disabled", "maintenance", "up")
    hypervisor = get(api, "/os-hypervisors/1").body["hypervisor"]
    assert hypervisor["status"] == "disabled"
    assert hypervisor["service"]["disabled_reason"] == "maintenance"
    # Nova's scheduler finds no host: the server is recorded in ERROR.
    made = _create(api)
    assert made.status == 202
    server = get(api, f"/servers/{made.body['server']['id']}", who=P1).body["server"]
    assert server["status"] == "ERROR"
    assert server["fault"]["message"].startswith("No valid host was found.")
    assert api.hv.domains == {}
    # Other services' state is recorded and shown, and changes nothing else.
    call(api, "PUT", "/os-services/disable", {**body, "binary": "nova-scheduler"})
    states = {s["binary"]: s["status"] for s in get(api, "/os-services").body["services"]}
    assert states == {"nova-conductor": "enabled", "nova-scheduler": "disabled",
                      "nova-compute": "disabled"}
    assert call(api, "PUT", "/os-services/enable", body).status == 200
    (compute,) = get(api, "/os-services?binary=nova-compute").body["services"]
    assert (compute["status"], compute["disabled_reason"]) == ("enabled", None)
    assert _create(api, name="second").status == 202
    settle(api)
    assert call(api, "PUT", "/os-services/disable", body, who=P1).status == 403
    bad: Any
    for bad in ({**body, "disabled_reason": ""}, {**body, "disabled_reason": "x" * 256}, body):
        assert call(api, "PUT", "/os-services/disable-log-reason", bad).status == 400, bad


@pytest.mark.parametrize("alias", ["os-aggregates", "os-server-diagnostics", "os-networks",
                                   "os-instance-usage-audit-log", "os-flavor-access"])
def test_the_extensions_list_names_these_apis(api: Api, alias: str) -> None:
    assert get(api, f"/extensions/{alias}").body["extension"]["alias"] == alias


def test_quota_sets_of_a_user_at_2_36_have_no_network_quotas(api: Api) -> None:
    """Tempest's QuotasAdminTestV236: update, detail, a user's update and show."""
    from tests.unit.test_api_nova_extras import NETWORK_QUOTAS, QUOTA_KEYS, at

    v236 = at("2.36")
    updated = call(api, "PUT", "/os-quota-sets/p9", {"quota_set": {"ram": "5120"}}, headers=v236)
    assert set(updated.body["quota_set"]) == QUOTA_KEYS - NETWORK_QUOTAS
    detail = get(api, "/os-quota-sets/p9/detail", version="2.36").body["quota_set"]
    assert set(detail) == QUOTA_KEYS - NETWORK_QUOTAS | {"id"}
    assert detail["ram"]["limit"] == 5120
    user = call(api, "PUT", "/os-quota-sets/p9?user_id=u9", {"quota_set": {"ram": "2048"}},
                headers=v236)
    assert set(user.body["quota_set"]) == QUOTA_KEYS - NETWORK_QUOTAS
    shown = get(api, "/os-quota-sets/p9?user_id=u9", version="2.36").body["quota_set"]
    assert (shown["ram"], set(shown)) == (2048, QUOTA_KEYS - NETWORK_QUOTAS | {"id"})


def test_a_server_keeps_its_flavors_extra_specs_from_2_47(api: Api) -> None:
    call(api, "POST", "/flavors/1/os-extra_specs", {"extra_specs": {"hw:cpu_policy": "shared"}})
    made = _create(api)
    settle(api)
    server_id = made.body["server"]["id"]
    call(api, "DELETE", "/flavors/1/os-extra_specs/hw:cpu_policy")  # later: not the server's
    flavor = get(api, f"/servers/{server_id}", who=P1, version="2.47").body["server"]["flavor"]
    assert flavor["extra_specs"] == {"hw:cpu_policy": "shared"}
    assert "extra_specs" not in get(api, f"/servers/{server_id}", who=P1).body["server"][
        "flavor"]


def test_no_resize_to_a_private_flavor_without_access(api: Api) -> None:
    _private_flavor(api)
    inst = owned(api, "web1")
    refused = call(api, "POST", f"/servers/{inst.id}/action",
                   {"resize": {"flavorRef": "secret-1"}}, who=P1)
    assert refused.status == 400 and "secret-1" in refused.fault()[1]
    after = api.store.instance(inst.id)
    assert (after.vm_state, after.task_state, after.flavor_id) == ("active", None, "1")


# -- the compute API's security group proxy -------------------------------------------------
GROUP_KEYS = {"id", "name", "description", "tenant_id", "rules"}
RULE_KEYS = {"id", "parent_group_id", "ip_protocol", "from_port", "to_port", "group", "ip_range"}


def test_security_group_proxy_groups_and_rules(api: Api) -> None:
    made = call(api, "POST", "/os-security-groups",
                {"security_group": {"name": "web", "description": "web servers"}}, who=P1)
    assert made.status == 200
    group = made.body["security_group"]
    assert set(group) == GROUP_KEYS and (group["name"], group["rules"]) == ("web", [])
    rule = call(api, "POST", "/os-security-group-rules", {"security_group_rule": {
        "parent_group_id": group["id"], "ip_protocol": "tcp", "from_port": 22,
        "to_port": "22"}}, who=P1)
    assert rule.status == 200
    body = rule.body["security_group_rule"]
    assert set(body) == RULE_KEYS
    assert (body["ip_protocol"], body["from_port"], body["to_port"], body["ip_range"],
            body["group"]) == ("tcp", 22, 22, {"cidr": "0.0.0.0/0"}, {})
    default = next(g for g in get(api, "/os-security-groups", who=P1).body["security_groups"]
                   if g["name"] == "default")
    peer = call(api, "POST", "/os-security-group-rules", {"security_group_rule": {
        "parent_group_id": group["id"], "ip_protocol": "icmp", "from_port": -1,
        "to_port": -1, "group_id": default["id"]}}, who=P1).body["security_group_rule"]
    assert (peer["group"]["name"], peer["ip_range"], peer["from_port"]) == (
        "default", {}, None)
    shown = get(api, f"/os-security-groups/{group['id']}", who=P1).body["security_group"]
    assert {r["id"] for r in shown["rules"]} == {body["id"], peer["id"]}
    # The default group's egress rule is not Nova's to show; its ingress one is.
    assert [r["ip_protocol"] for r in default["rules"]] == [None]
    renamed = call(api, "PUT", f"/os-security-groups/{group['id']}",
                   {"security_group": {"name": "www", "description": "d"}}, who=P1)
    assert renamed.body["security_group"]["name"] == "www"
    assert api.store.security_group(group["id"]).name == "www"
    assert call(api, "DELETE", f"/os-security-group-rules/{body['id']}", who=P1).status == 202
    assert call(api, "DELETE", f"/os-security-group-rules/{peer['id']}", who=P1).status == 202
    assert call(api, "DELETE", f"/os-security-groups/{group['id']}", who=P1).status == 202
    assert get(api, f"/os-security-groups/{group['id']}").status == 404


def test_security_group_proxy_refusals(api: Api) -> None:
    group = call(api, "POST", "/os-security-groups", {"security_group": {
        "name": "web", "description": ""}}).body["security_group"]
    unknown = "00000000-0000-4000-8000-000000000000"
    assert get(api, f"/os-security-groups/{unknown}").status == 404
    assert get(api, "/os-security-groups/web").status == 400  # not a UUID
    assert call(api, "DELETE", f"/os-security-groups/{unknown}").status == 404
    assert call(api, "PUT", f"/os-security-groups/{unknown}",
                {"security_group": {"name": "x", "description": "y"}}).status == 404
    default = next(g for g in get(api, "/os-security-groups").body["security_groups"]
                   if g["name"] == "default")
    assert call(api, "DELETE", f"/os-security-groups/{default['id']}").status == 400

    def rule(**fields: Any) -> int:
        return call(api, "POST", "/os-security-group-rules", {"security_group_rule": {
            "parent_group_id": group["id"], "ip_protocol": "tcp", "from_port": 22,
            "to_port": 22, **fields}}).status

    assert rule(parent_group_id=unknown) == 404
    assert rule(parent_group_id="not-a-uuid") == 400
    bad: Any
    for bad in ({"ip_protocol": "tempest-999"}, {"from_port": 65536}, {"to_port": 70000},
                {"from_port": 22, "to_port": 21}, {"from_port": "x"}, {"cidr": "10.0.0.0/33"},
                {"ip_protocol": "icmp", "from_port": 300}, {"colour": "red"}):
        assert rule(**bad) == 400, bad
    assert rule() == 200
    assert rule() == 400  # the same rule again
    assert call(api, "DELETE", f"/os-security-group-rules/{unknown}").status == 404
    assert get(api, "/os-security-groups", version="2.36").status == 404
    assert call(api, "POST", "/os-security-groups", {"security_group": {"name": "web"}},
                who=P1).status == 409  # names are the host's, as on the network endpoint
    assert call(api, "POST", "/os-security-groups", {"security_group": {
        "name": "x", "description": "\x00"}}).status == 400
    assert call(api, "DELETE", "/os-security-groups").status == 404
    # A cidr's host bits go, as Neutron's; IPv6 and nonsense are 400.
    made = call(api, "POST", "/os-security-group-rules", {"security_group_rule": {
        "parent_group_id": group["id"], "ip_protocol": "udp", "from_port": 53, "to_port": 53,
        "cidr": "10.2.3.124/24"}})
    assert made.body["security_group_rule"]["ip_range"] == {"cidr": "10.2.3.0/24"}
    assert rule(cidr="::/0") == 400


def test_security_groups_of_the_proxy_belong_to_a_project(api: Api) -> None:
    mine = call(api, "POST", "/os-security-groups", {"security_group": {
        "name": "p1-web", "description": ""}}, who=P1).body["security_group"]
    assert mine["tenant_id"] == "p1"
    theirs = call(api, "POST", "/os-security-groups", {"security_group": {
        "name": "p2-web", "description": ""}}, who=P2).body["security_group"]

    def names(who: str, query: str = "") -> set[str]:
        return {g["name"] for g in get(api, f"/os-security-groups{query}", who=who).body[
            "security_groups"]}

    assert names(P1) == {"default", "p1-web"}
    assert names(P1, "?all_tenants=true") == {"default", "p1-web"}  # members: ignored
    assert names(ADMIN) == {"default"}
    assert names(ADMIN, "?all_tenants=true") == {"default", "p1-web", "p2-web"}
    assert get(api, f"/os-security-groups/{theirs['id']}", who=P1).status == 404
    assert call(api, "DELETE", f"/os-security-groups/{theirs['id']}", who=P1).status == 404
    assert call(api, "POST", "/os-security-group-rules", {"security_group_rule": {
        "parent_group_id": theirs["id"], "ip_protocol": "tcp", "from_port": 1,
        "to_port": 2}}, who=P1).status == 404
    assert get(api, f"/os-security-groups/{theirs['id']}").status == 200  # admins
    assert api.store.security_group(mine["id"]).project_id == "p1"


def test_the_host_wide_default_group_is_changed_by_admins_only(api: Api) -> None:
    default = next(g for g in get(api, "/os-security-groups", who=P1).body["security_groups"]
                   if g["name"] == "default")
    rule = {"security_group_rule": {"parent_group_id": default["id"], "ip_protocol": "tcp",
                                    "from_port": 22, "to_port": 22}}
    assert call(api, "POST", "/os-security-group-rules", rule, who=P1).status == 403
    assert call(api, "PUT", f"/os-security-groups/{default['id']}", {"security_group": {
        "name": "default", "description": "mine now"}}, who=P1).status == 403
    made = call(api, "POST", "/os-security-group-rules", rule).body["security_group_rule"]
    assert call(api, "DELETE", f"/os-security-group-rules/{made['id']}", who=P1).status == 403
    theirs = call(api, "POST", "/os-security-groups", {"security_group": {
        "name": "p2-db", "description": ""}}, who=P2).body["security_group"]
    their_rule = call(api, "POST", "/os-security-group-rules", {"security_group_rule": {
        "parent_group_id": theirs["id"], "ip_protocol": "tcp", "from_port": 5432,
        "to_port": 5432}}, who=P2).body["security_group_rule"]
    assert call(api, "DELETE", f"/os-security-group-rules/{their_rule['id']}",
                who=P1).status == 404
    assert call(api, "DELETE", f"/os-security-group-rules/{made['id']}").status == 202


def test_the_network_services_groups_belong_to_a_project(api: Api) -> None:
    """The Neutron-shaped endpoint: the same rules as the compute proxy."""
    def net(method: str, path: str, body: Any = None, who: str = ADMIN) -> Any:
        return api.call(method, f"/network/v2.0{path}", body, token=who)

    mine = net("POST", "/security-groups", {"security_group": {"name": "p1-web"}},
               who=P1).body["security_group"]
    assert mine["project_id"] == "p1"
    theirs = net("POST", "/security-groups", {"security_group": {"name": "p2-web"}},
                 who=P2).body["security_group"]
    names = {g["name"] for g in net("GET", "/security-groups", who=P1).body["security_groups"]}
    assert names == {"default", "p1-web"}
    assert {g["name"] for g in net("GET", "/security-groups").body["security_groups"]} == {
        "default", "p1-web", "p2-web"}  # admins see every project's, as Neutron's
    assert net("GET", f"/security-groups/{theirs['id']}", who=P1).status == 404
    assert net("PUT", f"/security-groups/{theirs['id']}", {"security_group": {
        "name": "mine"}}, who=P1).status == 404
    assert net("DELETE", f"/security-groups/{theirs['id']}", who=P1).status == 404
    rule = {"security_group_rule": {"security_group_id": theirs["id"], "direction": "ingress",
                                    "protocol": "tcp", "port_range_min": 80,
                                    "port_range_max": 80}}
    assert net("POST", "/security-group-rules", rule, who=P1).status == 404
    made = net("POST", "/security-group-rules", rule, who=P2).body["security_group_rule"]
    assert net("GET", f"/security-group-rules/{made['id']}", who=P1).status == 404
    assert made["id"] not in {r["id"] for r in net("GET", "/security-group-rules",
                                                   who=P1).body["security_group_rules"]}
    assert net("DELETE", f"/security-group-rules/{made['id']}", who=P1).status == 404
    default = next(g for g in net("GET", "/security-groups", who=P1).body["security_groups"]
                   if g["name"] == "default")
    to_default = {"security_group_rule": {**rule["security_group_rule"],
                                          "security_group_id": default["id"]}}
    assert net("POST", "/security-group-rules", to_default, who=P1).status == 403
    assert net("DELETE", f"/security-groups/{theirs['id']}", who=P2).status == 204
    assert net("DELETE", f"/security-groups/{mine['id']}", who=P1).status == 204


def test_another_projects_group_is_not_there_for_a_server(api: Api) -> None:
    """Joining it would let the server in wherever that group lets members in."""
    theirs = call(api, "POST", "/os-security-groups", {"security_group": {
        "name": "p2-db", "description": ""}}, who=P2).body["security_group"]
    refused = _create(api, P1, security_groups=[{"name": "p2-db"}])
    assert refused.status == 400 and "p2-db" in refused.fault()[1], refused.body
    assert api.store.instances() == []
    inst = owned(api, "web1", P1)
    for action in ("addSecurityGroup", "removeSecurityGroup"):
        answer = call(api, "POST", f"/servers/{inst.id}/action", {action: {"name": "p2-db"}},
                      who=P1)
        assert answer.status == 404, (action, answer.body)
    assert api.store.instance_group_ids(inst.id).get(inst.id, []) == []
    assert api.store.security_group(theirs["id"]).project_id == "p2"


def test_a_name_another_project_also_uses_is_neither_ambiguous_nor_told(api: Api) -> None:
    """Every API that takes a server looks it up the same way (api/scope.py)."""
    from tests.unit.test_api_nova_extras import owned

    mine = owned(api, "web", P1)
    api.store.update_instance(owned(api, "web-2", P2), name="web")  # its domain: vmops-web-2
    for path in ("/servers/web/metadata", "/servers/web/ips",
                 "/servers/web/os-volume_attachments"):
        assert get(api, path, who=P1).status == 200, path
    assert get(api, f"/servers/{mine.id}/metadata", who=P2).status == 404
    both = get(api, "/servers/web/metadata")  # the admin sees both
    assert both.status == 409 and mine.id in both.fault()[1]
