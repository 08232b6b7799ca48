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
RESIZED = "resized"  # resized, waiting for confirmResize or revertResize
RESCUED = "rescued"  # booted from a rescue disk, waiting for unrescue

# vm_states the power state does not decide: the instance stays resized or
# rescued whether its guest runs or not, until the verb that ends it.
HELD_VM_STATES = frozenset({RESIZED, RESCUED})

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
IMAGE_SNAPSHOT = "image_snapshot"  # Nova's names for these and those below
REBUILDING = "rebuilding"
RESIZE_PREP = "resize_prep"  # the record says what to go back to; disks untouched
RESIZE_MIGRATING = "resize_migrating"  # the old disks are copied whole; growing
RESIZE_FINISH = "resize_finish"  # the record has the new flavor; booting it
RESIZE_CONFIRMING = "resize_confirming"
RESIZE_REVERTING = "resize_reverting"
RESCUING = "rescuing"
UNRESCUING = "unrescuing"
CRASH_DUMPING = "triggering-crash-dump"  # Nova has none; vmops holds the instance
RESIZE_TASKS = frozenset({RESIZE_PREP, RESIZE_MIGRATING, RESIZE_FINISH})

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


def vm_state_of(power: PowerState, current: str) -> str:
    """The vm_state a record in ``current`` takes when the hypervisor reports
    ``power``: a held one (resized, rescued) stays."""
    return current if current in HELD_VM_STATES else VM_STATE_OF_POWER[power]


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

# Every status server_status gives (the API's filter and documents use it).
STATUSES = ("ACTIVE", "BUILD", "SHUTOFF", "PAUSED", "SUSPENDED", "REBOOT", "HARD_REBOOT",
            "REBUILD", "RESIZE", "VERIFY_RESIZE", "REVERT_RESIZE", "RESCUE", "ERROR",
            "DELETED")
_STATUS = {
    BUILDING: "BUILD",
    ACTIVE: "ACTIVE",
    STOPPED: "SHUTOFF",
    PAUSED: "PAUSED",
    SUSPENDED: "SUSPENDED",
    ERROR: "ERROR",
    RESIZED: "VERIFY_RESIZE",
    RESCUED: "RESCUE",
}


def server_status(vm_state: str, task_state: str | None) -> str:
    """The OpenStack status name a client shows for this instance."""
    if task_state == REBOOTING:
        return "REBOOT"
    if task_state == REBOOTING_HARD:
        return "HARD_REBOOT"
    if task_state == REBUILDING:
        return "REBUILD"
    if task_state in RESIZE_TASKS:
        return "RESIZE"
    if task_state == RESIZE_REVERTING:
        return "REVERT_RESIZE"
    if task_state == DELETING:
        return "DELETED" if vm_state == "deleted" else _STATUS.get(vm_state, "UNKNOWN")
    return _STATUS.get(vm_state, "UNKNOWN")
