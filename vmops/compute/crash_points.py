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
``ACTION_STEPS``.
"""

from __future__ import annotations

import os

ENV = "VMOPS_FAULT_AT"
EXIT_STATUS = 137  # 128 + SIGKILL: what a shell reports for a killed process

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


def reached(verb: str, step: str) -> None:
    """Die here if the environment asks for ``verb:step``."""
    wanted = os.environ.get(ENV)
    if wanted and f"{verb}:{step}" in wanted.split(","):
        os.write(2, f"vmops: {ENV}: dying at {verb}:{step}\n".encode())
        os._exit(EXIT_STATUS)
