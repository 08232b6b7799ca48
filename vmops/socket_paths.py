"""Paths for UNIX sockets, which must fit ``sun_path``: 107 bytes.

Three kinds of socket live under the state directory:

- sockets vmops binds or connects to itself (the API's ``vmops.sock``, each
  capture process's ``console.sock``): reached through ``socket_address``,
  which, for a path too long, goes through ``/proc/self/fd/N`` of the
  socket's directory instead;
- sockets QEMU and libvirt bind from a path vmops gives them (the serial
  socket in ``run/``, QEMU's monitor socket deep in the embedded libvirt
  root): those paths must be short as written. When the state directory's
  own path leaves too little room, they are made under its *alias*: a
  symbolic link ``<runtime dir>/<hash of the state dir>`` to the state
  directory, where the runtime directory is ``/run/vmops`` for root,
  ``$XDG_RUNTIME_DIR/vmops`` for a user (``/tmp/vmops-<uid>`` without one),
  mode 0700. libvirt takes the embedded root's path as it is given (it
  does not resolve symbolic links: QEMU's command line names the alias),
  so the files stay in the state directory and only the names are short.

``ensure_socket_root`` makes the alias at service start (``socket_root``,
hence ``Settings.run_dir`` and the default libvirt URI, name it once it
is there): idempotent, a
stale one (left pointing elsewhere) is replaced, aliases whose state
directory is gone are removed, and one whose hash names another existing
state directory is refused rather than shared.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

from vmops.errors import HostNotReady
from vmops.hypervisor.libvirt import MAX_EMBED_ROOT_CHARS

# sockaddr_un.sun_path is 108 bytes, including the terminating NUL.
MAX_SOCKET_PATH = 107
# The state directory's subdirectory that is the embedded libvirt root.
LIBVIRT_SUBDIR = "libvirt"
# Hex digits of the state directory's hash naming its alias (48 bits: a
# collision is refused, never shared).
ALIAS_HASH_CHARS = 12
# Longest state directory used as it is: its libvirt root must leave room
# for QEMU's monitor socket (and then run/<uuid>.sock fits too).
MAX_DIRECT_STATE_DIR = MAX_EMBED_ROOT_CHARS - len("/" + LIBVIRT_SUBDIR)
_ALIAS_NAME = re.compile(f"[0-9a-f]{{{ALIAS_HASH_CHARS}}}")
# A link made beside an alias, then renamed over it: ``.<hash>.<pid>``. One
# is left behind only by a process that died between the two.
_STAGING_NAME = re.compile(f"\\.[0-9a-f]{{{ALIAS_HASH_CHARS}}}\\.([0-9]+)")
# What a path may hold to be put in a URI's query as it is.
_URI_SAFE = re.compile(r"[A-Za-z0-9/._~-]*")


@contextlib.contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """An address for the UNIX socket ``path`` that fits ``sun_path``: the
    path itself, or, when it is longer than that, the same file reached
    through ``/proc/self/fd/N`` of its directory (for bind and connect)."""
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def runtime_base() -> Path:
    """The directory holding this user's state directory aliases.

    ``$XDG_RUNTIME_DIR`` only when it is a directory of this user's, as the
    XDG spec requires: ``su``, ``runuser`` and ``sudo`` pass on the one of
    the user who ran them, which this user cannot write to (or, worse,
    may share with others)."""
    if os.geteuid() == 0:
        return Path("/run/vmops")
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and Path(runtime).is_absolute() and _owned_dir(Path(runtime), OTHERS_WRITE):
        return Path(runtime) / "vmops"
    return Path(f"/tmp/vmops-{os.geteuid()}")


# Mode bits a directory of this user's must not have: others writing in it
# (who could rename what is in it and put their own in its place), and
# others using it at all (the aliases' directory, made 0700).
OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
OTHERS_ANY = 0o077


def _owned_dir(path: Path, forbidden: int) -> bool:
    """Whether ``path`` is a directory (not a link to one) of this user's
    with none of the ``forbidden`` mode bits."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and not stat.S_IMODE(st.st_mode) & forbidden)


def fits(state_dir: Path) -> bool:
    """Whether ``state_dir`` itself can be used for the sockets and the
    embedded libvirt root below it: short enough, and of characters the
    embed URI (``qemu:///embed?root=<path>``) carries as they are. A ``#``,
    ``&``, ``+``, ``%``, ``?`` or space would be read by the URI's parsers
    as something else (``/srv/vm#1`` as the root ``/srv/vm``, outside the
    state directory); such a directory gets the alias too, whose name is
    hex digits."""
    path = str(state_dir.absolute())
    return (len(os.fsencode(path)) <= MAX_DIRECT_STATE_DIR
            and _URI_SAFE.fullmatch(path) is not None)


def alias_path(state_dir: Path, base: Path | None = None) -> Path:
    """Where ``state_dir``'s alias is (whether or not it exists yet)."""
    real = os.fsencode(os.path.realpath(state_dir))
    return (base or runtime_base()) / hashlib.sha256(real).hexdigest()[:ALIAS_HASH_CHARS]


def socket_root(state_dir: Path, base: Path | None = None) -> Path:
    """The directory under which socket paths are made: ``state_dir`` when
    it fits; else its alias, once ``ensure_socket_root`` has made it (until
    then, ``state_dir``: nothing is ever made in an alias's place, and code
    that binds no socket, such as tests on the fake hypervisor, works)."""
    if fits(state_dir):
        return state_dir
    alias = alias_path(state_dir, base)
    # Read at every use, not only when ensure_socket_root checked it: a
    # directory that is no longer the private one it made (removed by a /tmp
    # cleaner and made again by someone else) would hand them the sockets.
    if not _owned_dir(alias.parent, OTHERS_ANY):
        return state_dir
    try:
        target = os.readlink(alias)
    except OSError:
        return state_dir
    return alias if target == os.path.realpath(state_dir) else state_dir


def ensure_socket_root(state_dir: Path, base: Path | None = None) -> Path:
    """``socket_root(state_dir)``, with the alias made (or repaired) if one
    is needed; call before anything is made below the socket root."""
    if fits(state_dir):
        return state_dir
    alias = alias_path(state_dir, base)
    _private_dir(alias.parent)
    target = os.path.realpath(state_dir)
    _prune_dangling(alias.parent, keep=alias.name)
    try:
        current: str | None = os.readlink(alias)
    except FileNotFoundError:
        current = None
    except OSError as exc:  # EINVAL: there, but not a symbolic link
        raise HostNotReady(reason=f"{alias} (the short alias of the state directory "
                                  f"{state_dir}) is in the way: {exc.strerror}; "
                                  "remove it") from None
    if current == target:
        return alias
    if current is not None and os.path.isdir(current):
        raise HostNotReady(reason=(
            f"the alias {alias} of the state directory {state_dir} already names another "
            f"state directory, {current} (the same hash): two state directories never "
            "share one; remove it if that directory is no longer used"))
    staging = alias.with_name(f".{alias.name}.{os.getpid()}")
    staging.unlink(missing_ok=True)
    staging.symlink_to(target)
    os.replace(staging, alias)
    return alias


def _private_dir(path: Path) -> None:
    """Make ``path`` a directory only this user can use; refuse one that is
    a symbolic link or someone else's (it would hand them our sockets)."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise HostNotReady(reason=(
            f"cannot make {path} (to hold the short aliases of state directories): "
            f"{exc.strerror}")) from None
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        # In /tmp only its owner (or root) can remove it: the other ways out.
        what = ("a symbolic link" if stat.S_ISLNK(st.st_mode)
                else "not a directory" if not stat.S_ISDIR(st.st_mode)
                else "a directory")
        raise HostNotReady(reason=(
            f"{path} must be a directory owned by uid {os.geteuid()} (it holds the short "
            f"aliases of state directories); it is {what} of uid {st.st_uid}: have it "
            f"removed (by its owner or root), or set XDG_RUNTIME_DIR to a directory of "
            f"yours, or use a state directory of at most {MAX_DIRECT_STATE_DIR} bytes"))
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def _prune_dangling(base: Path, keep: str) -> None:
    """Remove the aliases in ``base`` whose state directory is gone, and the
    staging links of processes that died before renaming theirs."""
    for entry in base.iterdir():
        staging = _STAGING_NAME.fullmatch(entry.name)
        if staging and entry.is_symlink() and not _alive(int(staging.group(1))):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
            continue
        if entry.name == keep or not _ALIAS_NAME.fullmatch(entry.name) or not entry.is_symlink():
            continue
        if not entry.exists():  # follows the link: its target is gone
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's
    return True


def listen_private(path: Path, backlog: int) -> socket.socket:
    """A UNIX stream socket listening at ``path``, made with umask 077 so
    only its owner may connect; a stale socket file there is replaced (the
    caller holds the lock that makes it stale). Raises ``OSError``."""
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    try:
        with socket_address(path) as address:
            listener.bind(address)
        listener.listen(backlog)
    except OSError:
        listener.close()
        raise
    finally:
        os.umask(old_umask)
    return listener
