"""The state and status table (vmops/compute/states.py): one source for every
name, the statuses derived from it, and StrEnum members that records, JSON and
the CLI's comparisons treat as the plain strings they were before."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests import records
from vmops.compute import states
from vmops.compute.states import Status, TaskState, VmState
from vmops.store import Store

# The API's order (its status filter's error message and the OpenAPI enum
# list them in it): pinned so a reordering of the enum shows up here.
API_ORDER = ("ACTIVE", "BUILD", "SHUTOFF", "PAUSED", "SUSPENDED", "REBOOT", "HARD_REBOOT",
             "REBUILD", "RESIZE", "VERIFY_RESIZE", "REVERT_RESIZE", "RESCUE", "ERROR",
             "DELETED")


def test_statuses_come_from_the_enum_in_the_apis_order() -> None:
    assert states.STATUSES == API_ORDER
    assert list(Status) == [*API_ORDER, "UNKNOWN"]


def test_every_vm_state_has_a_status_and_every_status_is_listed() -> None:
    assert set(states.STATUS_OF_VM_STATE) == set(VmState)
    shown = set(states.STATUS_OF_VM_STATE.values()) | set(states.STATUS_OF_TASK.values())
    assert shown <= set(states.STATUSES)
    assert set(states.PROGRESS_STATUSES) <= set(states.STATUSES)


@pytest.mark.parametrize("vm_state", list(VmState))
@pytest.mark.parametrize("task_state", [None, *TaskState])
def test_server_status_is_listed_for_every_pair(vm_state: VmState,
                                                task_state: TaskState | None) -> None:
    status = states.server_status(vm_state, task_state)
    assert status in states.STATUSES
    # The same answer for the plain strings a record read from the store holds.
    assert states.server_status(str(vm_state), None if task_state is None
                                else str(task_state)) == status


@pytest.mark.parametrize(("vm_state", "task_state", "status"), [
    ("active", None, "ACTIVE"), ("stopped", "powering-on", "SHUTOFF"),
    ("active", "rebooting", "REBOOT"), ("stopped", "rebooting_hard", "HARD_REBOOT"),
    ("active", "resize_migrating", "RESIZE"), ("resized", "resize_confirming", "VERIFY_RESIZE"),
    ("resized", "resize_reverting", "REVERT_RESIZE"), ("building", "spawning", "BUILD"),
    ("rescued", None, "RESCUE"), ("error", "deleting", "ERROR"),
    ("no-such-state", None, "UNKNOWN")])
def test_server_status_names(vm_state: str, task_state: str | None, status: str) -> None:
    assert states.server_status(vm_state, task_state) == status


def test_members_are_their_strings_in_json_sqlite_and_text() -> None:
    assert states.ACTIVE is VmState.ACTIVE and states.SPAWNING is TaskState.SPAWNING
    assert json.dumps({states.ACTIVE: states.RESIZE_PREP}) == '{"active": "resize_prep"}'
    assert f"{states.ERROR} {Status.VERIFY_RESIZE}" == "error VERIFY_RESIZE"
    assert {"active": 1}[states.ACTIVE] == 1 and states.ACTIVE in {"active"}


def test_a_record_written_with_members_reads_back_as_the_same_strings(tmp_path: Path) -> None:
    store = Store(tmp_path / "vmops.db")
    store.add_instance(records.instance("one", id="i-1", vm_state=states.BUILDING,
                                        task_state=states.SPAWNING, power_state="nostate"))
    with sqlite3.connect(tmp_path / "vmops.db") as db:
        row = db.execute("SELECT vm_state, task_state, typeof(vm_state) FROM instances "
                         "WHERE id = 'i-1'").fetchone()
    assert row == ("building", "spawning", "text")
    back = store.instance("i-1")
    assert (back.vm_state, back.task_state) == (states.BUILDING, states.SPAWNING)
    assert states.server_status(back.vm_state, back.task_state) is Status.BUILD
