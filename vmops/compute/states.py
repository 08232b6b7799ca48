"""Instance states: vmops' vm_state/task_state and how they read in OpenStack terms.

Each state and status is written once, here, as a ``StrEnum`` member: it
compares equal to (and hashes as) its string, so records in the store, JSON
bodies and the CLI's comparisons with what the API sent need no conversion.
The module-level names (``ACTIVE``, ``SPAWNING``, ...) are those members.
"""

from __future__ import annotations

import enum

from vmops.hypervisor.base import PowerState


class VmState(enum.StrEnum):
    """What the instance is, as recorded (Nova's vm_state names)."""

    BUILDING = "building"
    ACTIVE = "active"
    STOPPED = "stopped"
    PAUSED = "paused"
    SUSPENDED = "suspended"
    ERROR = "error"
    RESIZED = "resized"  # resized, waiting for confirmResize or revertResize
    RESCUED = "rescued"  # booted from a rescue disk, waiting for unrescue


class TaskState(enum.StrEnum):
    """The operation in progress, if any."""

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


class Status(enum.StrEnum):
    """The OpenStack server status a client shows (Nova's ``status``), in the
    order the API lists them."""

    ACTIVE = "ACTIVE"
    BUILD = "BUILD"
    SHUTOFF = "SHUTOFF"
    PAUSED = "PAUSED"
    SUSPENDED = "SUSPENDED"
    REBOOT = "REBOOT"
    HARD_REBOOT = "HARD_REBOOT"
    REBUILD = "REBUILD"
    RESIZE = "RESIZE"
    VERIFY_RESIZE = "VERIFY_RESIZE"
    REVERT_RESIZE = "REVERT_RESIZE"
    RESCUE = "RESCUE"
    ERROR = "ERROR"
    # Nova's soft-deleted servers: its list filter takes it, so vmops' does;
    # vmops removes the record of a deleted server, so it never shows it.
    DELETED = "DELETED"
    UNKNOWN = "UNKNOWN"  # a vm_state this table does not know (never written by vmops)


BUILDING = VmState.BUILDING
ACTIVE = VmState.ACTIVE
STOPPED = VmState.STOPPED
PAUSED = VmState.PAUSED
SUSPENDED = VmState.SUSPENDED
ERROR = VmState.ERROR
RESIZED = VmState.RESIZED
RESCUED = VmState.RESCUED

SPAWNING = TaskState.SPAWNING
DELETING = TaskState.DELETING
REBOOTING = TaskState.REBOOTING
REBOOTING_HARD = TaskState.REBOOTING_HARD
POWERING_OFF = TaskState.POWERING_OFF
POWERING_ON = TaskState.POWERING_ON
PAUSING = TaskState.PAUSING
UNPAUSING = TaskState.UNPAUSING
SUSPENDING = TaskState.SUSPENDING
RESUMING = TaskState.RESUMING
REBUILDING_CONFIG_DRIVE = TaskState.REBUILDING_CONFIG_DRIVE
IMAGE_SNAPSHOT = TaskState.IMAGE_SNAPSHOT
REBUILDING = TaskState.REBUILDING
RESIZE_PREP = TaskState.RESIZE_PREP
RESIZE_MIGRATING = TaskState.RESIZE_MIGRATING
RESIZE_FINISH = TaskState.RESIZE_FINISH
RESIZE_CONFIRMING = TaskState.RESIZE_CONFIRMING
RESIZE_REVERTING = TaskState.RESIZE_REVERTING
RESCUING = TaskState.RESCUING
UNRESCUING = TaskState.UNRESCUING
CRASH_DUMPING = TaskState.CRASH_DUMPING

# vm_states the power state does not decide: the instance stays resized or
# rescued whether its guest runs or not, until the verb that ends it.
HELD_VM_STATES = frozenset({RESIZED, RESCUED})

RESIZE_TASKS = frozenset({RESIZE_PREP, RESIZE_MIGRATING, RESIZE_FINISH})

# What the hypervisor reports, as the vm_state it implies.
VM_STATE_OF_POWER: dict[PowerState, VmState] = {
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

# The status of each vm_state, and of the tasks that show their own status
# whatever the vm_state (Nova's _STATE_MAP); every other task shows its
# vm_state's.
STATUS_OF_VM_STATE: dict[VmState, Status] = {
    BUILDING: Status.BUILD,
    ACTIVE: Status.ACTIVE,
    STOPPED: Status.SHUTOFF,
    PAUSED: Status.PAUSED,
    SUSPENDED: Status.SUSPENDED,
    ERROR: Status.ERROR,
    RESIZED: Status.VERIFY_RESIZE,
    RESCUED: Status.RESCUE,
}
STATUS_OF_TASK: dict[TaskState, Status] = {
    REBOOTING: Status.REBOOT,
    REBOOTING_HARD: Status.HARD_REBOOT,
    REBUILDING: Status.REBUILD,
    RESIZE_PREP: Status.RESIZE,
    RESIZE_MIGRATING: Status.RESIZE,
    RESIZE_FINISH: Status.RESIZE,
    RESIZE_REVERTING: Status.REVERT_RESIZE,
}

# Every status a server can be listed with (the API's status filter, the
# metrics' counts and the OpenAPI document's enum, with UNKNOWN).
STATUSES = tuple(s for s in Status if s is not Status.UNKNOWN)

# Nova shows ``progress`` only in these statuses.
PROGRESS_STATUSES = frozenset({Status.BUILD, Status.ACTIVE, Status.REBUILD, Status.RESIZE,
                               Status.VERIFY_RESIZE})


def server_status(vm_state: str, task_state: str | None) -> Status:
    """The OpenStack status name a client shows for this instance."""
    if task_state is not None and task_state in STATUS_OF_TASK:
        return STATUS_OF_TASK[TaskState(task_state)]
    if vm_state in STATUS_OF_VM_STATE:
        return STATUS_OF_VM_STATE[VmState(vm_state)]
    return Status.UNKNOWN
