"""One operation per instance at a time; different instances in parallel.

A second operation on a busy instance fails at once with InstanceBusy rather
than queueing: a queued "stop" behind a 60-second soft reboot would act on a
state the user no longer sees, and the CLI can simply retry.

One exception: an operation that is finishing (its record already says the
task ended, or is being written to say so) is waited for, briefly. A client
that polls the record and sends the next verb as soon as the task is gone
must not be told the instance is busy by bookkeeping it cannot see.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

# How long an operation waits for a finishing one to let go. Finishing is a
# few store writes and counters: far less, unless the machine is starved.
FINISHING_WAIT_S = 10.0


class TaskLocks:
    def __init__(self) -> None:
        self._released = threading.Condition(threading.Lock())
        self._running: dict[str, str] = {}  # instance id -> task name
        self._finishing: set[str] = set()

    def acquire(self, instance_id: str, instance_name: str, task: str) -> None:
        from vmops.errors import InstanceBusy

        with self._released:
            self._wait_finishing(instance_id)
            current = self._running.get(instance_id)
            if current is not None:
                raise InstanceBusy(instance=instance_name, task=current)
            self._running[instance_id] = task

    def finishing(self, instance_id: str) -> None:
        """The holder is about to record that its task ended: from now on a
        new operation waits for the release instead of being refused."""
        with self._released:
            if instance_id in self._running:
                self._finishing.add(instance_id)

    def release(self, instance_id: str) -> None:
        with self._released:
            self._running.pop(instance_id, None)
            self._finishing.discard(instance_id)
            self._released.notify_all()

    def current(self, instance_id: str) -> str | None:
        with self._released:
            return self._running.get(instance_id)

    def busy(self, instance_id: str) -> str | None:
        """The task holding the instance, for a change that must not run
        beside one (metadata): as :meth:`acquire`, a finishing task is
        waited for, briefly, rather than counted."""
        with self._released:
            self._wait_finishing(instance_id)
            return self._running.get(instance_id)

    def _wait_finishing(self, instance_id: str) -> None:
        """Wait (up to FINISHING_WAIT_S) while the instance's task is
        finishing; the caller holds ``_released``."""
        deadline = time.monotonic() + FINISHING_WAIT_S
        while instance_id in self._finishing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._released.wait(remaining)

    @contextmanager
    def hold(self, instance_id: str, instance_name: str, task: str) -> Iterator[None]:
        self.acquire(instance_id, instance_name, task)
        try:
            yield
        finally:
            self.release(instance_id)
