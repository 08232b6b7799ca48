"""vmops' Nova driver as shipped, on the real libvirt hypervisor, for one run
of Nova's driver tests with real guests (``scripts/nova-tests --hypervisor
libvirt``).

Nothing is stood in for: :class:`~vmops.nova_driver.VmopsDriver`'s own
``_open`` opens vmops' compute layer on a state directory whose
``vmops.toml`` asks for TCG and user-mode NICs, with vmops' embedded
libvirt (``qemu:///embed``) and real QEMU and console capture processes.
Glance's images are the test image (tools/testimage), so each spawn boots
a real guest.

One state directory serves the whole run (``$VMOPS_NOVA_TESTS_STATE``), and
one libvirt connection: a process can open vmops' embedded libvirt (its
QEMU and secret drivers) once only, where Nova's suite makes a driver per
test (nova-compute makes one per process). So the first driver's
``open_hypervisor`` opens it and every driver gets a :class:`SharedHypervisor`
view of it. After each test, the test case destroys what the test left and
calls the driver's ``cleanup_host``, which gives back the directory's lock
for the next test's driver.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any
from unittest import mock

from nova import conf

from vmops.hypervisor import open_hypervisor
from vmops.hypervisor.base import (
    Accel,
    DiskErrorCallback,
    DiskErrorEvent,
    EventCallback,
    LifecycleEvent,
)
from vmops.nova_driver import VmopsDriver
from vmops.service import Engine

# Short waits, as the functional tests' service: a soft reboot or a stop of
# a guest that is still booting falls back in seconds, not minutes.
VMOPS_TOML = """\
accel = "tcg"
network_mode = "user"
wait_soft_reboot_seconds = 10
shutdown_timeout = 20
shutdown_retry_interval = 2
"""


def prepare_state_dir() -> Path:
    """The run's state directory, with its vmops.toml."""
    state_dir = Path(os.environ["VMOPS_NOVA_TESTS_STATE"])
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "vmops.toml").write_text(VMOPS_TOML)
    return state_dir


class SharedHypervisor:
    """One driver's view of the run's libvirt connection: ``connect`` and
    ``close`` leave the connection as it is, and the lifecycle and disk
    error events go to the callbacks registered on this view until it is
    closed."""

    _connection: Any = None
    _lock = threading.Lock()

    def __init__(self, uri: str, accel: Accel) -> None:
        with SharedHypervisor._lock:
            if SharedHypervisor._connection is None:
                hv = open_hypervisor(uri, accel)
                hv.connect()
                SharedHypervisor._connection = hv
        self._hv = SharedHypervisor._connection
        self._callbacks: list[EventCallback] = []
        self._disk_error_callbacks: list[DiskErrorCallback] = []
        self._hv.on_lifecycle_event(self._deliver)
        self._hv.on_disk_error(self._deliver_disk_error)

    def connect(self) -> None:
        pass

    def close(self) -> None:
        self._callbacks.clear()
        self._disk_error_callbacks.clear()

    def on_lifecycle_event(self, callback: EventCallback) -> None:
        self._callbacks.append(callback)

    def on_disk_error(self, callback: DiskErrorCallback) -> None:
        self._disk_error_callbacks.append(callback)

    def _deliver(self, event: LifecycleEvent) -> None:
        for callback in list(self._callbacks):
            callback(event)

    def _deliver_disk_error(self, event: DiskErrorEvent) -> None:
        for callback in list(self._disk_error_callbacks):
            callback(event)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hv, name)


class LibvirtHostVmopsDriver(VmopsDriver):
    """VmopsDriver as shipped; ``[vmops] state_dir`` is set for it, and its
    ``open_hypervisor`` (called by vmops.service.open_host) gives the run's one
    connection."""

    def __init__(self, virtapi: Any, read_only: bool = False) -> None:
        conf.CONF.set_override("state_dir", str(prepare_state_dir()), group="vmops")
        super().__init__(virtapi, read_only)
        self._released = False

    def _open(self) -> Engine:
        with mock.patch("vmops.service.open_hypervisor", SharedHypervisor):
            return super()._open()

    def release(self) -> None:
        """Destroy every instance the test left, then give the host back
        (once: a test may have done it already)."""
        if self._released:
            return
        self._released = True
        for inst in self.compute.store.instances():
            self.compute.destroy(inst.id)
        self.cleanup_host("myhostname")
