"""The serial console's state rules (Nova's): a console exists while the
guest's QEMU runs (ACTIVE, PAUSED, RESCUE, VERIFY_RESIZE, and during a
reboot); not while the server builds, is deleted, copies its disks for a
resize, is stopped or suspended (409, nothing changed). The console itself
is the capture process's socket (vmops/console/fanout.py)."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from vmops.compute import states
from vmops.errors import InvalidState
from vmops.store import Instance

if TYPE_CHECKING:
    from vmops.compute.manager import Compute

# Tasks during which there is no console to give (Nova refuses deleting and
# migrating; a spawning guest has no record of a running QEMU yet).
_NO_CONSOLE_TASKS = frozenset({states.SPAWNING, states.DELETING, states.RESIZE_MIGRATING})


def check(compute: Compute, ref: str) -> Instance:
    """The instance, if its serial console can be opened now; else
    InvalidState (409)."""
    inst = compute.instance(ref)
    if inst.vm_state == states.BUILDING or inst.task_state in _NO_CONSOLE_TASKS:
        raise InvalidState(action="open the serial console of", instance=inst.name,
                           state=inst.task_state or inst.vm_state)
    if not compute.guest_runs(inst):
        raise InvalidState(action="open the serial console of", instance=inst.name,
                           state=f"{inst.vm_state}, its guest not running")
    return inst


def open_console(compute: Compute, inst: Instance) -> socket.socket:
    """A connection to the instance's console (blocking socket): the guest's
    output from now on; what is sent goes to the guest. Conflict (409) if
    no capture process listens."""
    sock: socket.socket = compute.console.attach(compute.instance_dir(inst))
    return sock
