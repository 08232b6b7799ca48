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
    """Make both FIFOs (mode 0600) if missing. One already there is kept
    only if it is one vmops made: a FIFO of this user's that no one else
    may open. Anything else (not a FIFO: QEMU would write the guest's
    output into it, or fail; another user's, or one others may open: they
    could read the console or type into it) is a ``HypervisorError``
    naming the path and what is wrong with it, and is left as it is."""
    for path in paths(base):
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            wrong = _not_ours(os.lstat(path))
            if wrong:
                raise HypervisorError(reason=f"{path} exists and {wrong}: it cannot be "
                                      "the guest's serial port") from None


def _not_ours(found: os.stat_result) -> str:
    """What keeps an existing file from being a serial port FIFO of ours
    ('' if nothing)."""
    if not stat.S_ISFIFO(found.st_mode):
        return "is not a FIFO"
    if found.st_uid != os.geteuid():
        return f"belongs to uid {found.st_uid}, not to vmops' uid {os.geteuid()}"
    if stat.S_IMODE(found.st_mode) & 0o077:
        return f"others may open it (mode {stat.S_IMODE(found.st_mode):04o}, not 0600)"
    return ""


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
