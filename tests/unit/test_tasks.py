"""TaskLocks: one operation per instance; a finishing one is waited for."""

from __future__ import annotations

import threading

import pytest

from vmops.compute import tasks
from vmops.compute.tasks import TaskLocks
from vmops.errors import InstanceBusy


def test_a_busy_instance_is_refused_at_once_naming_the_task() -> None:
    locks = TaskLocks()
    locks.acquire("i1", "web", "rebooting")
    with pytest.raises(InstanceBusy, match="rebooting"):
        locks.acquire("i1", "web", "powering-off")
    locks.acquire("i2", "db", "powering-off")  # another instance is free
    assert locks.current("i2") == "powering-off"


def test_an_operation_waits_for_a_finishing_one_instead_of_being_refused() -> None:
    locks = TaskLocks()
    locks.acquire("i1", "web", "powering-off")
    locks.finishing("i1")  # the record now says the task ended
    taken = threading.Event()

    def next_verb() -> None:
        locks.acquire("i1", "web", "powering-on")
        taken.set()

    waiter = threading.Thread(target=next_verb)
    waiter.start()
    assert not taken.wait(0.2)  # still held: it waits rather than failing
    locks.release("i1")
    waiter.join(timeout=30)
    assert taken.is_set()
    assert locks.current("i1") == "powering-on"


def test_a_finishing_holder_that_never_lets_go_ends_in_busy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "FINISHING_WAIT_S", 0.05)
    locks = TaskLocks()
    locks.acquire("i1", "web", "powering-off")
    locks.finishing("i1")
    with pytest.raises(InstanceBusy):
        locks.acquire("i1", "web", "powering-on")


def test_finishing_an_instance_nobody_holds_changes_nothing() -> None:
    locks = TaskLocks()
    locks.finishing("i1")
    locks.acquire("i1", "web", "powering-on")  # no wait, no refusal
    assert locks.current("i1") == "powering-on"


def test_busy_waits_for_a_finishing_task_and_names_a_running_one() -> None:
    """What a change beside no task (metadata) asks: a running task is
    named at once; one whose record already says it ended is waited for."""
    locks = TaskLocks()
    locks.acquire("i1", "web", "resize_reverting")
    assert locks.busy("i1") == "resize_reverting"
    locks.finishing("i1")
    seen: list[str | None] = []
    asker = threading.Thread(target=lambda: seen.append(locks.busy("i1")))
    asker.start()
    asker.join(timeout=0.2)
    assert asker.is_alive() and seen == []  # waiting, not answering "busy"
    locks.release("i1")
    asker.join(timeout=30)
    assert seen == [None]
