"""A server show reads its own rows, however many servers there are."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_api import Api, _create, _wait_idle


def test_show_reads_only_its_own_servers_network_rows(api: Api,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A show costs the same whatever the number of servers: it reads its
    own ports and groups, not every server's (the list reads those)."""
    created = _create(api).body["server"]
    _create(api, name="web2")
    asked: list[tuple[str, str | None]] = []
    for name in ("ports", "instance_group_ids"):
        real = getattr(api.store, name)

        def spy(instance_id: str | None = None, _real: Any = real, _name: str = name) -> Any:
            asked.append((_name, instance_id))
            return _real(instance_id)

        monkeypatch.setattr(api.store, name, spy)
    shown = api.get(f"/v2.1/servers/{created['id']}")
    assert shown.status == 200, shown.body
    assert asked and all(instance_id == created["id"] for _, instance_id in asked), asked
    asked.clear()
    assert api.get("/v2.1/servers/detail").status == 200
    assert ("ports", None) in asked  # the list reads everyone's at once
    # Both spawns end before the store closes (their threads would
    # otherwise die on a closed database in a later test).
    monkeypatch.undo()
    _wait_idle(api, "web1")
    _wait_idle(api, "web2")
