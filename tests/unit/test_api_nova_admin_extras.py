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

from tests.unit.test_api import Api
from tests.unit.test_api_nova_extras import (  # noqa: F401 (api: its fixture, with 3 projects)
    ADMIN,
    P1,
    P2,
    _create,
    api,
    call,
    get,
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
