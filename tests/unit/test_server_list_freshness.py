"""GET /servers/detail keeps each server's JSON between lists (views.ServerList)
until what it shows changes: these check what changes without touching the
instance record (a security group renamed, its NICs) still shows, as
GET /servers/{id} shows it at once."""

from __future__ import annotations

import gc
import json
import weakref
from dataclasses import replace
from typing import Any

import pytest

from tests import records
from tests.unit.test_api import Api
from vmops.api import views
from vmops.store import Instance, Port, SecurityGroup


def _listed(api: Api, server_id: str) -> dict[str, Any]:
    servers = api.get("/v2.1/servers/detail").body["servers"]
    found: dict[str, Any] = next(s for s in servers if s["id"] == server_id)
    return found


def test_a_renamed_security_group_shows_in_the_list_as_in_the_show(api: Api) -> None:
    group = api.store.add_security_group(SecurityGroup(
        id="0b5c7f7e-4f0e-4a55-9a53-3f1b9b1c2d01", name="web", project_id="vmops"))
    inst = records.instance("web1", project_id="vmops")
    port = Port(id="p1", instance_id=inst.id, position=0, mode="bridge", network="vmops",
                mac="52:54:00:00:00:11", ip="10.99.0.11", tap="vmtap1")
    api.store.add_instance(inst, ports=[port], group_ids=[group.id])
    assert _listed(api, inst.id)["security_groups"] == [{"name": "web"}]  # now kept

    renamed = api.call("PUT", f"/v2.1/os-security-groups/{group.id}",
                       {"security_group": {"name": "frontend", "description": "d"}})
    assert renamed.status == 200, renamed.body
    shown = api.get(f"/v2.1/servers/{inst.id}").body["server"]["security_groups"]
    assert shown == [{"name": "frontend"}]
    assert _listed(api, inst.id)["security_groups"] == [{"name": "frontend"}]


def test_only_existing_servers_keep_a_part_when_lists_are_filtered() -> None:
    """A client that only lists with filters (by name, as it waits for one
    server) must not make the list keep a part for every server there has
    been: a part is kept for an existing server only."""
    kept = views.ServerList()
    no_net = views.ServerNetwork((), (), ())
    insts = [records.instance(f"web{n}") for n in range(1, 5)]

    def listed(shown: list[Instance], existing: list[Instance]) -> list[str]:
        body = kept.encode(shown, "http://x", views.NOVA_21, {i.id for i in existing},
                           lambda i: no_net)
        return [s["name"] for s in json.loads(body)["servers"]]

    for inst in insts[:3]:  # each made, then listed by name
        assert listed([inst], insts[:3]) == [inst.name]
    assert kept.kept() == 3
    assert listed(insts[:3], insts[:3]) == ["web1", "web2", "web3"]  # unfiltered
    assert listed([insts[3]], insts[2:]) == ["web4"]  # web1 and web2 destroyed, web4 made
    assert kept.kept() == 2  # web3's and web4's
    assert listed([], []) == [] and kept.kept() == 0


def test_a_record_changed_behind_the_stores_back_shows_in_the_list(api: Api) -> None:
    """A part is kept while the record is the same, not while its
    ``updated_at`` is: a change that leaves ``updated_at`` alone (SQL by
    hand) still shows in the next list."""
    inst = records.instance("web1", project_id="vmops", vm_state="active",
                            power_state="running")
    api.store.add_instance(inst)
    api.store.add_instance(records.instance("web2", project_id="vmops"))
    first = _listed(api, inst.id)
    assert first["OS-EXT-STS:vm_state"] == "active"  # now kept
    with api.store.transaction() as db:
        db.execute("UPDATE instances SET vm_state = 'stopped', "
                   "body = json_set(body, '$.description', 'moved') WHERE id = ?", (inst.id,))
    listed = _listed(api, inst.id)
    assert listed["OS-EXT-STS:vm_state"] == "stopped" and listed["status"] == "SHUTOFF"
    assert listed["updated"] == first["updated"]


def test_an_unchanged_record_is_not_rendered_again(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = views.ServerList()
    no_net = views.ServerNetwork((), (), ())
    insts = [records.instance(f"web{n}") for n in range(1, 3)]
    rendered: list[str] = []
    real = views.server

    def counting(inst: Instance, *args: Any, **kwargs: Any) -> dict[str, Any]:
        rendered.append(inst.name)
        return real(inst, *args, **kwargs)

    monkeypatch.setattr(views, "server", counting)
    ids = {i.id for i in insts}
    first = kept.encode(insts, "http://x", views.NOVA_21, ids, lambda i: no_net)
    assert rendered == ["web1", "web2"]
    changed = replace(insts[1], vm_state="error")  # the store's new record for web2
    again = kept.encode([insts[0], changed], "http://x", views.NOVA_21, ids, lambda i: no_net)
    assert rendered == ["web1", "web2", "web2"]
    assert json.loads(again)["servers"][1]["OS-EXT-STS:vm_state"] == "error"
    assert json.loads(first)["servers"][0] == json.loads(again)["servers"][0]
    kept.encode([insts[0], changed], "http://x", views.NOVA_21, ids, lambda i: no_net)
    assert rendered == ["web1", "web2", "web2"]  # the same records: nothing rendered
    equal = replace(insts[0])  # decoded again (a new object): rendered again, the same
    again = kept.encode([equal, changed], "http://x", views.NOVA_21, ids, lambda i: no_net)
    assert rendered == ["web1", "web2", "web2", "web1"]
    assert json.loads(first)["servers"][0] == json.loads(again)["servers"][0]


def test_a_part_does_not_keep_its_record_alive() -> None:
    """The record is the store's: once the store lets go of it (a destroyed
    server), the part kept until the next list does not hold it."""
    kept = views.ServerList()
    inst = records.instance("web1")
    held = weakref.ref(inst)
    kept.encode([inst], "http://x", views.NOVA_21, {inst.id},
                lambda i: views.ServerNetwork((), (), ()))
    del inst
    gc.collect()
    assert held() is None and kept.kept() == 1
