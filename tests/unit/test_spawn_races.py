"""Spawns at once over the HTTP API on the fake hypervisor: the quota
check and the domain name are decided holding ``Quotas.lock`` with the
record written (vmops/compute/manager.py), so two spawns can neither both
take the last unit of a quota nor both take ``vmops-<hostname>``."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.unit.test_api import Answer, Api, _create, _settle

SPAWNS = 8


def _at_once(api: Api, **changes: Any) -> list[Answer]:
    """``SPAWNS`` POST /servers started together (a barrier), their answers."""
    barrier = threading.Barrier(SPAWNS)
    answers: list[Answer] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        answer = _create(api, **changes)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=one) for _ in range(SPAWNS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def _slow_domain_name_lookup(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Widen the window between deciding and writing: each lookup lets the
    other threads run (a yield, not a timed wait)."""
    taken = api.store.domain_name_taken

    def yielding(name: str, prefix: str) -> bool:
        answer = taken(name, prefix)
        for _ in range(20):
            time.sleep(0)  # gives up the GIL
        return answer

    monkeypatch.setattr(api.store, "domain_name_taken", yielding)


def test_spawns_at_once_for_the_last_instance_of_a_quota_let_one_win(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    api.compute.quotas.update_class("default", {"instances": 1})
    _slow_domain_name_lookup(api, monkeypatch)
    answers = _at_once(api, name="race")
    assert sorted(a.status for a in answers) == [202] + [403] * (SPAWNS - 1), \
        [a.body for a in answers]
    assert len(api.store.instances()) == 1
    _settle(api)


def test_spawns_at_once_of_one_hostname_get_distinct_domain_names(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    _slow_domain_name_lookup(api, monkeypatch)
    answers = _at_once(api, name="same")
    assert [a.status for a in answers] == [202] * SPAWNS, [a.body for a in answers]
    names = [i.domain_name for i in api.store.instances()]
    assert len(names) == SPAWNS
    assert len(set(names)) == SPAWNS, names
    assert names.count("vmops-same") == 1
    _settle(api)

