"""Instance states: vmops' vm_state/task_state and how they read in OpenStack terms."""

from __future__ import annotations

from vmops.hypervisor.base import PowerState

# vm_state: what the instance is, as recorded.
BUILDING = "building"
ACTIVE = "active"
STOPPED = "stopped"
PAUSED = "paused"
SUSPENDED = "suspended"
ERROR = "error"

# task_state: the operation in progress, if any.
SPAWNING = "spawning"
DELETING = "deleting"
REBOOTING = "rebooting"
REBOOTING_HARD = "rebooting_hard"
POWERING_OFF = "powering-off"
POWERING_ON = "powering-on"
PAUSING = "pausing"
UNPAUSING = "unpausing"
SUSPENDING = "suspending"
RESUMING = "resuming"
REBUILDING_CONFIG_DRIVE = "rebuilding-config-drive"
IMAGE_SNAPSHOT = "image_snapshot"  # Nova's names for these two
REBUILDING = "rebuilding"

# What the hypervisor reports, as the vm_state it implies.
VM_STATE_OF_POWER = {
    PowerState.RUNNING: ACTIVE,
    PowerState.BLOCKED: ACTIVE,
    PowerState.SHUTDOWN: ACTIVE,  # still running while the guest shuts down
    PowerState.PAUSED: PAUSED,
    PowerState.PMSUSPENDED: PAUSED,
    PowerState.SUSPENDED: SUSPENDED,
    PowerState.SHUTOFF: STOPPED,
    PowerState.CRASHED: STOPPED,
    PowerState.NOSTATE: STOPPED,
}

# Nova's power_state numbers, for the API.
NOVA_POWER_STATE = {
    PowerState.NOSTATE: 0,
    PowerState.RUNNING: 1,
    PowerState.BLOCKED: 1,
    PowerState.PAUSED: 3,
    PowerState.SHUTDOWN: 4,
    PowerState.SHUTOFF: 4,
    PowerState.CRASHED: 6,
    PowerState.SUSPENDED: 4,  # Nova: a suspended (saved) domain is shut down
    PowerState.PMSUSPENDED: 7,
}

_STATUS = {
    BUILDING: "BUILD",
    ACTIVE: "ACTIVE",
    STOPPED: "SHUTOFF",
    PAUSED: "PAUSED",
    SUSPENDED: "SUSPENDED",
    ERROR: "ERROR",
}


def server_status(vm_state: str, task_state: str | None) -> str:
    """The OpenStack status name a client shows for this instance."""
    if task_state == REBOOTING:
        return "REBOOT"
    if task_state == REBOOTING_HARD:
        return "HARD_REBOOT"
    if task_state == REBUILDING:
        return "REBUILD"
    if task_state == DELETING:
        return "DELETED" if vm_state == "deleted" else _STATUS.get(vm_state, "UNKNOWN")
    return _STATUS.get(vm_state, "UNKNOWN")
