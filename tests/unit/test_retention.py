"""The records of destroyed servers are pruned once they are old enough
(vmops/compute/retention.py); those of servers that exist never are."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import records
from vmops.compute import retention, usage
from vmops.compute.actions import ActionLog
from vmops.store import Instance, Store

DAY = retention.DAY_S


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "vmops.db")
    yield s
    s.close()


def _with_actions(store: Store, name: str, verbs: tuple[str, ...] = ("spawn", "stop")) -> Instance:
    inst = store.add_instance(records.instance(name, launched_at=time.time()))
    log = ActionLog(store)
    for verb in verbs:
        log.begin(inst, verb)
        log.end(inst.id)
    return inst


def _destroyed(store: Store, name: str, days_ago: float) -> Instance:
    inst = _with_actions(store, name)
    ActionLog(store).begin(inst, "destroy")
    store.delete_instance(inst.id)
    _age(store, inst.id, days_ago)
    return inst


def _age(store: Store, instance_id: str, days_ago: float) -> None:
    """Move every row of the server ``days_ago`` days back in time."""
    back = days_ago * DAY
    with store.transaction() as db:
        db.execute("UPDATE instance_actions SET start_time = start_time - ?, "
                   "finish_time = finish_time - ? WHERE instance_id = ?",
                   (back, back, instance_id))
        db.execute("UPDATE instance_usage SET deleted_at = deleted_at - ?, "
                   "launched_at = launched_at - ?, created_at = created_at - ? "
                   "WHERE instance_id = ?", (back, back, back, instance_id))


def _counts(store: Store, instance_id: str) -> tuple[int, int]:
    actions = store.query("SELECT COUNT(*) FROM instance_actions WHERE instance_id = ?",
                          instance_id)[0][0]
    used = store.query("SELECT COUNT(*) FROM instance_usage WHERE instance_id = ?",
                       instance_id)[0][0]
    return int(actions), int(used)


def test_only_the_rows_of_servers_destroyed_before_the_age_go(store: Store) -> None:
    old = _destroyed(store, "old", days_ago=91)
    recent = _destroyed(store, "recent", days_ago=89)
    alive = _with_actions(store, "alive")
    _age(store, alive.id, days_ago=400)  # a server's own age does not matter
    assert _counts(store, old.id) == (3, 1)

    pruned = retention.prune_old(store, 90)

    assert pruned == retention.Pruned(actions=3, usage=1)
    assert _counts(store, old.id) == (0, 0)
    assert _counts(store, recent.id) == (3, 1)
    assert _counts(store, alive.id) == (2, 0)
    assert [a.action for a in ActionLog(store).actions(alive.id)] == ["stop", "create"]
    assert retention.prune_old(store, 90) == retention.Pruned(0, 0)  # nothing left to do


def test_zero_keeps_everything(store: Store) -> None:
    old = _destroyed(store, "old", days_ago=10_000)
    assert retention.prune_old(store, 0) == retention.Pruned(0, 0)
    assert _counts(store, old.id) == (3, 1)


def test_actions_without_a_server_or_usage_row_go_once_all_are_old(store: Store) -> None:
    """A database from before the usage table: a destroyed server left only actions."""
    gone = _destroyed(store, "gone", days_ago=100)
    stale = _destroyed(store, "stale", days_ago=100)
    fresh = _destroyed(store, "fresh", days_ago=100)
    with store.transaction() as db:
        db.execute("DELETE FROM instance_usage")
        db.execute("UPDATE instance_actions SET start_time = ? WHERE instance_id = ? "
                   "AND action = 'delete'", (time.time(), fresh.id))

    retention.prune_old(store, 90)

    assert _counts(store, gone.id) == (0, 0) and _counts(store, stale.id) == (0, 0)
    assert _counts(store, fresh.id) == (3, 0)  # one of its actions is recent


def test_a_usage_period_no_longer_counts_a_pruned_server(store: Store) -> None:
    old = _destroyed(store, "old", days_ago=200)
    now = time.time()
    period = (now - 365 * DAY, now)
    assert old.id in {u.id for u in usage.in_period(store, *period)}
    retention.prune_old(store, 90)
    assert old.id not in {u.id for u in usage.in_period(store, *period)}
