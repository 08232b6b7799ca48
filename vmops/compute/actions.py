"""Nova's instance actions: who asked for what on which instance, when it
ended and how (``GET /servers/{id}/os-instance-actions``).

An action is recorded once the verb has taken the instance (a refused
request, 409 for the state it is in, leaves no record, as in Nova) and
finished when the verb ends, in whatever thread it ends. Only one verb
holds an instance at a time (``tasks.TaskLocks``), so the open action of an
instance is the one its verb ends.

Who asked comes from the API: it runs each request inside
:func:`calling_as`; verbs started by the service itself (a restart resuming
guests) are recorded with a request id of their own and no user.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from vmops.errors import NotFound, VmopsError
from vmops.store import Instance, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """The request a verb runs for: its id (``req-<uuid>``, also sent back
    as ``X-OpenStack-Request-Id``) and who made it."""

    request_id: str
    user_id: str = ""
    project_id: str = ""


_CALLER: ContextVar[Caller | None] = ContextVar("vmops_caller", default=None)


@contextmanager
def calling_as(caller: Caller) -> Iterator[None]:
    token = _CALLER.set(caller)
    try:
        yield
    finally:
        _CALLER.reset(token)


def new_request_id() -> str:
    return f"req-{uuid.uuid4()}"


# vmops' verbs -> Nova's action names (nova/compute/instance_actions.py).
ACTION_OF_VERB = {
    "spawn": "create", "destroy": "delete", "reboot": "reboot", "hard-reboot": "reboot",
    "stop": "stop", "start": "start", "pause": "pause", "unpause": "unpause",
    "suspend": "suspend", "resume": "resume", "rebuild": "rebuild",
    "snapshot": "createImage", "rebuild-config-drive": "vmops:rebuildConfigDrive",
    "resize": "resize", "confirm-resize": "confirmResize", "revert-resize": "revertResize",
    "rescue": "rescue", "unrescue": "unrescue", "trigger-crash-dump": "trigger_crash_dump",
}
# The compute manager's event of each action, as Nova names it.
EVENT_OF_ACTION = {
    "create": "compute__do_build_and_run_instance", "delete": "compute_terminate_instance",
    "reboot": "compute_reboot_instance", "stop": "compute_stop_instance",
    "start": "compute_start_instance", "pause": "compute_pause_instance",
    "unpause": "compute_unpause_instance", "suspend": "compute_suspend_instance",
    "resume": "compute_resume_instance", "rebuild": "compute_rebuild_instance",
    "createImage": "compute_snapshot_instance", "resize": "compute_resize_instance",
    "confirmResize": "compute_confirm_resize", "revertResize": "compute_revert_resize",
    "rescue": "compute_rescue_instance", "unrescue": "compute_unrescue_instance",
    "trigger_crash_dump": "compute_trigger_crash_dump",
    "vmops:rebuildConfigDrive": "compute_rebuild_config_drive",
}
SUCCESS, ERROR = "Success", "Error"


@dataclass(frozen=True)
class InstanceAction:
    request_id: str
    instance_id: str
    action: str
    project_id: str
    user_id: str
    start_time: float
    finish_time: float | None = None
    result: str | None = None  # Success | Error; None while it runs
    message: str | None = None  # why it failed

    @property
    def event(self) -> str:
        return EVENT_OF_ACTION.get(self.action, f"compute_{self.action}")


class InstanceActionNotFound(NotFound):
    msg_fmt = "Action %(request_id)s not found"


class ActionLog:
    """The ``instance_actions`` table. Recording never fails a verb: a
    record that cannot be written is logged and skipped."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def begin(self, inst: Instance, verb: str) -> None:
        action = ACTION_OF_VERB.get(verb)
        if action is None:
            return
        caller = _CALLER.get() or Caller(new_request_id())
        try:
            with self.store.transaction() as db:
                # One open action per instance: a verb that ended unrecorded
                # (a crash between the two writes) is closed first.
                self._close_open(db, inst.id, time.time(), ERROR, "interrupted")
                db.execute("INSERT OR IGNORE INTO instance_actions (request_id, instance_id, "
                           "action, project_id, user_id, start_time) VALUES (?, ?, ?, ?, ?, ?)",
                           (caller.request_id, inst.id, action,
                            caller.project_id or inst.project_id,
                            caller.user_id or inst.user_id, time.time()))
        except Exception:  # noqa: BLE001 - a record must never fail the verb
            log.exception("%s: could not record the %s action", inst.name, action)

    def end(self, instance_id: str, failure: BaseException | None = None) -> None:
        """Close the instance's open action, if any: Success, or Error with why."""
        message = None
        if failure is not None:
            message = failure.message if isinstance(failure, VmopsError) \
                else f"{type(failure).__name__}: {failure}"
        try:
            with self.store.transaction() as db:
                self._close_open(db, instance_id, time.time(),
                                 SUCCESS if failure is None else ERROR, message)
        except Exception:  # noqa: BLE001 - a record must never fail the verb
            log.exception("%s: could not record the end of its action", instance_id)

    def end_interrupted(self) -> None:
        """At service start: actions a restart cut short ended in error."""
        with self.store.transaction() as db:
            db.execute("UPDATE instance_actions SET finish_time = ?, result = ?, message = ? "
                       "WHERE finish_time IS NULL",
                       (time.time(), ERROR, "interrupted by a service restart"))

    @staticmethod
    def _close_open(db: sqlite3.Connection, instance_id: str, now: float, result: str,
                    message: str | None) -> None:
        db.execute("UPDATE instance_actions SET finish_time = ?, result = ?, message = ? "
                   "WHERE instance_id = ? AND finish_time IS NULL",
                   (now, result, message, instance_id))

    def actions(self, instance_id: str) -> list[InstanceAction]:
        """Newest first, as Nova lists them."""
        rows = self.store.query("SELECT * FROM instance_actions WHERE instance_id = ? "
                                "ORDER BY start_time DESC, request_id", instance_id)
        return [InstanceAction(**dict(r)) for r in rows]

    def action(self, instance_id: str, request_id: str) -> InstanceAction:
        rows = self.store.query("SELECT * FROM instance_actions WHERE instance_id = ? "
                                "AND request_id = ?", instance_id, request_id)
        if not rows:
            raise InstanceActionNotFound(request_id=request_id)
        return InstanceAction(**dict(rows[0]))
