"""How the libvirt hypervisor runs its threads: one process-wide choice.

libvirt's event loop (``virEventRunDefaultImpl``, which with the embedded
driver also runs the QEMU monitors) blocks in C, so it must run on a real
OS thread; what it hears (lifecycle, device and I/O error events) is handed
to a consumer thread, which calls vmops' callbacks. Two things decide how:

- :meth:`ThreadModel.start_native` starts the event loop's thread: always a
  real OS thread.
- :meth:`ThreadModel.handoff` makes the queue between the two: ``put`` on
  the native thread, ``get`` on the consumer, which is a ``threading.Thread``
  (a green thread when a caller has monkey-patched ``threading``).

The default, :class:`NativeThreads`, is plain ``threading`` and
``queue.Queue``. A process whose ``threading`` is patched (Nova's eventlet
mode) installs its own with :func:`install` before it opens a hypervisor:
vmops' Nova driver does (``vmops/nova_driver.py``, the only code that knows
eventlet), so vmops' core never imports eventlet. It is process-wide
because libvirt's event loop is: it is started once per process.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")


class Handoff(Protocol[T]):
    """A queue whose ``put`` may be called on any OS thread and whose
    ``get`` blocks only the consumer thread that calls it."""

    def put(self, item: T) -> None: ...

    def get(self) -> T: ...


class ThreadModel(Protocol):
    def start_native(self, target: Callable[[], None], name: str) -> None:
        """Run ``target`` on a new daemon OS thread."""

    def handoff(self) -> Handoff[Any]:
        """A new queue from a native thread to a consumer thread."""


class _Queue(Generic[T]):
    def __init__(self) -> None:
        self._queue: queue.Queue[T] = queue.Queue()

    def put(self, item: T) -> None:
        self._queue.put(item)

    def get(self) -> T:
        return self._queue.get()


class NativeThreads:
    """Plain threads: ``threading.Thread`` and ``queue.Queue``."""

    def start_native(self, target: Callable[[], None], name: str) -> None:
        threading.Thread(target=target, name=name, daemon=True).start()

    def handoff(self) -> Handoff[Any]:
        return _Queue()


_model: ThreadModel = NativeThreads()


def install(model: ThreadModel) -> None:
    """Use ``model`` for the hypervisors opened from now on in this process."""
    global _model
    _model = model


def current() -> ThreadModel:
    return _model
