"""Who may read what vmops keeps: the user running vmops, and no one else.

The state directory holds user data (user data and keys in ``vmops.db``,
console logs, guest disks, imported images that may have been root-only).
The service and the CLI, when it starts the service, create everything
under a umask of 077 (:data:`PRIVATE_UMASK`): the state directory is 0700,
files 0600, cached base images 0400. QEMU runs as vmops' own user (see
docs/architecture.md), so it needs nothing more.

Installs made before that have group/other bits here and there: the service
removes them at start (:func:`tighten`, logged once) and ``vmops doctor``
reports them (:func:`loose_files`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PRIVATE_UMASK = 0o077
GROUP_OTHER_BITS = 0o077


@dataclass(frozen=True)
class LooseFile:
    path: Path
    mode: int  # permission bits as found

    @property
    def private_mode(self) -> int:
        return self.mode & ~GROUP_OTHER_BITS

    def __str__(self) -> str:
        return f"{self.path} ({self.mode:04o})"


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Create files inside the block under :data:`PRIVATE_UMASK`."""
    old = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def loose_files(state_dir: Path, libvirt_root: Path | None = None) -> list[LooseFile]:
    """Everything under ``state_dir`` (itself included) that its group or others
    may use. Symbolic links are not followed (their own mode means nothing).

    Inside the embedded ``libvirt_root`` only files are looked at: libvirt
    gives some of its directories their modes again at every start (0711,
    0770), and no one else can reach them through the 0700 root.
    """
    found: list[LooseFile] = []
    if not state_dir.exists():
        return found
    if libvirt_root is not None:
        libvirt_root = _as_below(state_dir, libvirt_root)
    for path in _tree(state_dir):
        try:
            st = path.lstat()
        except FileNotFoundError:  # removed while we looked (a temp file, a socket)
            continue
        if stat.S_ISLNK(st.st_mode) or (stat.S_ISDIR(st.st_mode) and libvirt_root is not None
                                        and path.is_relative_to(libvirt_root)
                                        and path != libvirt_root):
            continue
        mode = stat.S_IMODE(st.st_mode)
        if mode & GROUP_OTHER_BITS:
            found.append(LooseFile(path, mode))
    return found


def _as_below(state_dir: Path, path: Path) -> Path:
    """``path`` spelled below ``state_dir`` when it is there through a symbolic
    link (the embedded libvirt root reached through the state directory's
    short alias: vmops/socket_paths.py), else as it is."""
    real, real_state_dir = Path(os.path.realpath(path)), Path(os.path.realpath(state_dir))
    if real.is_relative_to(real_state_dir):
        return state_dir / real.relative_to(real_state_dir)
    return path


def tighten(loose: list[LooseFile]) -> tuple[list[LooseFile], list[str]]:
    """Remove group/other bits: (what was changed, what could not be and why)."""
    changed: list[LooseFile] = []
    failed: list[str] = []
    for item in loose:
        try:
            _chmod_nofollow(item.path, item.private_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            failed.append(f"{item}: {exc.strerror}")
            continue
        changed.append(item)
    return changed, failed


def _chmod_nofollow(path: Path, mode: int) -> None:
    # A path swapped for a symlink after it was looked at must not make us
    # change whatever the link points to: hold the file itself (O_PATH opens
    # any type, sockets included, without reading it) and chmod that.
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def _tree(root: Path) -> Iterator[Path]:
    yield root
    for top, dirs, files in os.walk(root, followlinks=False):
        for name in (*dirs, *files):
            yield Path(top, name)
