"""Named steps at which the process can be made to die: a test hook.

With ``VMOPS_FAULT_AT=spawn:after-disks`` in its environment (several steps:
comma-separated), the process ends the moment it reaches that step, as if
SIGKILLed: ``os._exit(137)``, so no ``finally`` block, ``atexit`` handler or
rollback runs. A test kills the service at an exact point this way, starts
it again and checks what recovery makes of it (issue #15). It is not a
setting, and nothing but a test should set it; unset, a step costs one
environment lookup.

The steps, in the order a verb passes them, are ``SPAWN_STEPS``,
``DESTROY_STEPS`` and, for every other verb (under the action name its
metrics use: ``stop``, ``suspend``, ``hard-reboot``, ``snapshot``, ...),
``ACTION_STEPS``, with the steps of ``VERB_STEPS`` between them for the
verbs that have more (``resize``: ``after-begin``, ``after-record``, ...,
``after-work``).

``VMOPS_PAUSE_AT=serve:after-shutdown`` makes the process stop itself there
(``pause_point``) instead, so a test can act while it is held at that step.
"""

from __future__ import annotations

import os
import signal

from vmops.compute import timings

ENV = "VMOPS_FAULT_AT"
EXIT_STATUS = 137  # 128 + SIGKILL: what a shell reports for a killed process
# Steps where the process can instead be made to stop itself (SIGSTOP) and
# wait there until the test sends SIGCONT: a process held in the middle of
# something it cannot be killed in without changing what is tested.
PAUSE_ENV = "VMOPS_PAUSE_AT"
SERVE_STEPS = (
    "after-shutdown",  # `vmops serve` closed its API, store and libvirt; it holds the lock still
)

SPAWN_STEPS = (
    "after-record",   # the record is written (building/spawning); nothing made yet
    "after-capture",  # the console capture process runs
    "after-disks",    # the disks and config drive exist and are recorded
    "after-define",   # the domain is defined, not started
    "after-boot",     # the guest runs; the record does not say so yet
)
DESTROY_STEPS = (
    "after-mark",      # the record says deleting; nothing removed yet
    "after-teardown",  # everything removed but the record
)
ACTION_STEPS = (
    "after-begin",  # the record shows the task; the hypervisor not yet asked
    "after-work",   # the hypervisor did it; the record does not say so yet
)
# The steps inside the work of these verbs (compute/resize.py, rescue.py).
VERB_STEPS = {
    "resize": (
        "after-record",  # the record keeps the old flavor and disks; nothing else done
        "after-copy",    # the guest is off, the old disks copied whole (resize_migrating)
        "after-grow",    # the disks are grown; the record has the old flavor still
        "after-define",  # the record and the domain have the new flavor; not booted
    ),
    "revert-resize": (
        "after-restore",  # the old disks are back; the record is still resized
    ),
    "confirm-resize": (
        "after-remove",  # the old disks are gone; the record still keeps them
    ),
    "rescue": (
        "after-record",  # the record names the rescue image; nothing else done
        "after-disks",   # the guest is off, the rescue disks made
        "after-define",  # the domain boots the rescue disk; not booted yet
    ),
    "unrescue": (
        "after-define",  # the domain has the instance's own disks again; not booted
    ),
}


def steps_of(verb: str) -> tuple[str, ...]:
    """Every step ``verb`` passes, in order."""
    return (ACTION_STEPS[0], *VERB_STEPS.get(verb, ()), ACTION_STEPS[1])


def reached(verb: str, step: str) -> None:
    """Die here if the environment asks for ``verb:step``; else the step
    ends in the verb's timings (vmops/compute/timings.py)."""
    wanted = os.environ.get(ENV)
    if wanted and f"{verb}:{step}" in wanted.split(","):
        os.write(2, f"vmops: {ENV}: dying at {verb}:{step}\n".encode())
        os._exit(EXIT_STATUS)
    timings.reached(verb, step)


def pause_point(verb: str, step: str) -> None:
    """Stop this process here (SIGSTOP) if ``VMOPS_PAUSE_AT`` asks for
    ``verb:step``; it goes on when sent SIGCONT."""
    wanted = os.environ.get(PAUSE_ENV)
    if wanted and f"{verb}:{step}" in wanted.split(","):
        os.write(2, f"vmops: {PAUSE_ENV}: pausing at {verb}:{step}\n".encode())
        os.kill(os.getpid(), signal.SIGSTOP)
