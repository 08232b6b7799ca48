"""One operation per instance at a time; different instances in parallel.

A second operation on a busy instance fails at once with InstanceBusy rather
than queueing: a queued "stop" behind a 60-second soft reboot would act on a
state the user no longer sees, and the CLI can simply retry.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class TaskLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._running: dict[str, str] = {}  # instance id -> task name

    def acquire(self, instance_id: str, instance_name: str, task: str) -> None:
        from vmops.errors import InstanceBusy

        with self._guard:
            current = self._running.get(instance_id)
            if current is not None:
                raise InstanceBusy(instance=instance_name, task=current)
            self._running[instance_id] = task

    def release(self, instance_id: str) -> None:
        with self._guard:
            self._running.pop(instance_id, None)

    def current(self, instance_id: str) -> str | None:
        with self._guard:
            return self._running.get(instance_id)

    @contextmanager
    def hold(self, instance_id: str, instance_name: str, task: str) -> Iterator[None]:
        self.acquire(instance_id, instance_name, task)
        try:
            yield
        finally:
            self.release(instance_id)
