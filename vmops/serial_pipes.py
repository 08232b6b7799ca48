"""The two FIFOs of a guest's serial port (QEMU's ``pipe`` chardev).

A domain vmops defines has ``<serial type='pipe'>`` with a source path
``P`` (``Compute.console_socket``: ``run/<id>.sock``). QEMU opens
``P.in`` (what the guest reads) and ``P.out`` (what the guest writes),
both read-write, so neither open waits for the other side and nothing
the guest writes is dropped while no console process reads: it waits in
the pipe. The console process (``console/daemon.py``) reads ``P.out``
and writes typed input to ``P.in``. Domains defined by a vmops from
before the pipes have ``<serial type='unix'>`` at ``P`` instead; the
console process connects to whichever the QEMU of the moment serves.

vmops makes the FIFOs when it defines the domain (libvirt would not:
QEMU fails to start without them) and removes them with the instance,
once its domain is gone (``Compute._teardown``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from vmops.errors import HypervisorError

# The guest's side: QEMU reads what the guest receives from .in, writes
# what the guest sends to .out (QEMU's char-pipe.c).
TO_GUEST, FROM_GUEST = ".in", ".out"


def paths(base: Path) -> tuple[Path, Path]:
    """``(to the guest, from the guest)`` for the chardev path ``base``."""
    return Path(f"{base}{TO_GUEST}"), Path(f"{base}{FROM_GUEST}")


def make(base: Path) -> None:
    """Make both FIFOs (mode 0600) if missing. ``HypervisorError`` naming
    the path if one exists and is not a FIFO (QEMU would write the guest's
    output into it, or fail)."""
    for path in paths(base):
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            if not stat.S_ISFIFO(os.lstat(path).st_mode):
                raise HypervisorError(
                    reason=f"{path} exists and is not a FIFO: it cannot be the "
                    "guest's serial port") from None


def exist(base: Path) -> bool:
    """Does ``base`` name a serial port of two FIFOs (a domain defined
    with the pipe chardev), rather than a UNIX socket?"""
    to_guest, from_guest = paths(base)
    try:
        return stat.S_ISFIFO(os.lstat(to_guest).st_mode) \
            and stat.S_ISFIFO(os.lstat(from_guest).st_mode)
    except OSError:
        return False


def remove(base: Path) -> None:
    for path in paths(base):
        path.unlink(missing_ok=True)
