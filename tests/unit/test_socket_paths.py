"""The state directory's short alias for UNIX socket paths (vmops/socket_paths.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmops import config, file_modes, socket_paths
from vmops.errors import HostNotReady
from vmops.hypervisor.libvirt import MAX_EMBED_ROOT_CHARS, embed_root, embed_root_too_long


def long_dir(parent: Path, length: int) -> Path:
    """A directory below ``parent`` whose absolute path is ``length`` bytes."""
    pad = length - len(os.fsencode(parent)) - 1
    assert pad > 0
    path = parent / ("d" * pad)
    path.mkdir()
    assert len(os.fsencode(path)) == length
    return path


@pytest.fixture
def base() -> Iterator[Path]:
    """A runtime directory as short as a real one (not made yet)."""
    parent = Path(tempfile.mkdtemp(prefix="vr-", dir="/tmp"))
    yield parent / "rt"
    shutil.rmtree(parent)


def test_a_short_state_dir_is_its_own_socket_root(tmp_path: Path, base: Path) -> None:
    short = Path("/s") / ("x" * (socket_paths.MAX_DIRECT_STATE_DIR - 3))
    assert socket_paths.fits(short)
    assert socket_paths.socket_root(short, base) == short
    assert socket_paths.ensure_socket_root(short, base) == short
    assert not base.exists(), "no alias is made for a state dir that needs none"


@pytest.mark.parametrize("name", ["vm#1", "a&b=c", "a+b", "a%41b", "a?b", "my vms"])
def test_a_state_dir_a_uri_would_misread_gets_the_alias(
        name: str, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded libvirt root goes in a URI's query: '/tmp/x/vm#1' read
    back was '/tmp/x/vm' (libvirt's root and qemu.conf made, and chmod
    0700, outside the state directory). Short as it is, it gets the alias."""
    monkeypatch.setattr(socket_paths, "runtime_base", lambda: base)
    parent = Path(tempfile.mkdtemp(prefix="vs-", dir="/tmp"))
    try:
        state_dir = parent / name
        state_dir.mkdir()
        assert not socket_paths.fits(state_dir)
        alias = socket_paths.ensure_socket_root(state_dir)
        assert alias.parent == base and alias.resolve() == state_dir.resolve()
        s = config.load(state_dir, env={})
        assert embed_root(s.effective_libvirt_uri) == alias / "libvirt"
    finally:
        shutil.rmtree(parent)


def test_a_long_state_dir_gets_a_private_alias(tmp_path: Path, base: Path) -> None:
    state_dir = long_dir(tmp_path, 150)
    alias = socket_paths.ensure_socket_root(state_dir, base)
    assert alias == socket_paths.socket_root(state_dir, base) == socket_paths.alias_path(
        state_dir, base)
    assert alias.parent == base and alias.is_symlink()
    assert os.readlink(alias) == os.path.realpath(state_dir)
    assert (base.stat().st_mode & 0o777) == 0o700
    root = alias / socket_paths.LIBVIRT_SUBDIR
    assert embed_root_too_long(root) is None
    assert len(os.fsencode(root)) <= MAX_EMBED_ROOT_CHARS
    # what is made through the alias is in the state dir
    (alias / "run").mkdir()
    assert (state_dir / "run").is_dir()
    # idempotent: the same link, nothing else in the runtime dir
    assert socket_paths.ensure_socket_root(state_dir, base) == alias
    assert sorted(p.name for p in base.iterdir()) == [alias.name]


def test_a_socket_bound_through_the_alias_is_in_the_state_dir(tmp_path: Path,
                                                              base: Path) -> None:
    state_dir = long_dir(tmp_path, 150)
    alias = socket_paths.ensure_socket_root(state_dir, base)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(alias / "s.sock"))
        server.listen(1)
        assert (state_dir / "s.sock").is_socket()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client, \
                socket_paths.socket_address(state_dir / "s.sock") as address:
            assert address.startswith("/proc/self/fd/")  # 150 + 7 bytes do not fit
            client.connect(address)


def test_two_state_dirs_get_two_aliases(tmp_path: Path, base: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = socket_paths.ensure_socket_root(long_dir(tmp_path / "a", 120), base)
    two = socket_paths.ensure_socket_root(long_dir(tmp_path / "b", 120), base)
    assert one != two
    assert os.readlink(one) != os.readlink(two)


def test_a_collision_is_refused_not_shared(tmp_path: Path, base: Path) -> None:
    state_dir = long_dir(tmp_path, 150)
    other = tmp_path / "other"
    other.mkdir()
    alias = socket_paths.alias_path(state_dir, base)
    base.mkdir(mode=0o700)
    alias.symlink_to(other)  # as if another state dir had the same hash
    with pytest.raises(HostNotReady, match="already names another state directory"):
        socket_paths.ensure_socket_root(state_dir, base)
    assert os.readlink(alias) == str(other), "the other state dir's alias is kept"


def test_a_stale_alias_is_replaced(tmp_path: Path, base: Path) -> None:
    state_dir = long_dir(tmp_path, 150)
    alias = socket_paths.alias_path(state_dir, base)
    base.mkdir(mode=0o700)
    alias.symlink_to(tmp_path / "moved-away")
    assert socket_paths.ensure_socket_root(state_dir, base) == alias
    assert os.readlink(alias) == os.path.realpath(state_dir)
    assert [p.name for p in base.iterdir()] == [alias.name], "no staging link left"


def test_aliases_of_removed_state_dirs_are_pruned(tmp_path: Path, base: Path) -> None:
    gone = long_dir(tmp_path, 140)
    kept = long_dir(tmp_path, 141)
    gone_alias = socket_paths.ensure_socket_root(gone, base)
    kept_alias = socket_paths.ensure_socket_root(kept, base)
    gone.rmdir()
    unrelated = base / "not-an-alias"
    unrelated.symlink_to(tmp_path / "nowhere")
    state_dir = long_dir(tmp_path, 142)
    alias = socket_paths.ensure_socket_root(state_dir, base)
    assert not gone_alias.is_symlink()
    assert kept_alias.is_symlink() and alias.is_symlink() and unrelated.is_symlink()


def test_staging_links_of_dead_processes_are_pruned(tmp_path: Path, base: Path) -> None:
    """A process killed between making its ``.<hash>.<pid>`` link and renaming
    it over the alias left the link; a live process's is its own business."""
    dead = _a_dead_pid()
    target = long_dir(tmp_path, 150)
    alias = socket_paths.alias_path(target, base)
    base.mkdir(mode=0o700)
    left = base / f".{alias.name}.{dead}"
    left.symlink_to(target)
    busy = base / f".{alias.name}.1"  # pid 1 runs
    busy.symlink_to(target)
    other = long_dir(tmp_path, 151)
    assert socket_paths.ensure_socket_root(other, base).is_symlink()
    assert not left.is_symlink()
    assert busy.is_symlink()


def _a_dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_something_in_the_way_is_refused(tmp_path: Path, base: Path) -> None:
    state_dir = long_dir(tmp_path, 150)
    alias = socket_paths.alias_path(state_dir, base)
    alias.mkdir(parents=True)
    with pytest.raises(HostNotReady, match="is in the way"):
        socket_paths.ensure_socket_root(state_dir, base)


def test_a_runtime_dir_that_is_a_symlink_is_refused(tmp_path: Path, base: Path) -> None:
    state_dir = long_dir(tmp_path, 150)
    (tmp_path / "elsewhere").mkdir()
    base.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(HostNotReady, match="must be a directory owned by"):
        socket_paths.ensure_socket_root(state_dir, base)


def test_a_runtime_dir_of_someone_else_is_refused_saying_the_ways_out(
        tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone who made /tmp/vmops-<uid> first: the user cannot remove it
    (sticky /tmp), so the error names its owner and what the user can do."""
    base.mkdir(mode=0o700)
    monkeypatch.setattr(os, "geteuid", lambda: base.stat().st_uid + 1)
    with pytest.raises(HostNotReady) as refused:
        socket_paths.ensure_socket_root(long_dir(tmp_path, 150), base)
    message = str(refused.value)
    assert f"it is a directory of uid {base.stat().st_uid}" in message
    assert "XDG_RUNTIME_DIR" in message and "at most 41 bytes" in message


def test_an_open_runtime_dir_is_made_private(tmp_path: Path, base: Path) -> None:
    base.mkdir(mode=0o755)
    os.chmod(base, 0o755)
    socket_paths.ensure_socket_root(long_dir(tmp_path, 150), base)
    assert (base.stat().st_mode & 0o777) == 0o700


def test_runtime_base(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    uid = os.geteuid()
    if uid == 0:
        assert socket_paths.runtime_base() == Path("/run/vmops")
        uid = 1000
        monkeypatch.setattr(os, "geteuid", lambda: uid)
    runtime = tmp_path / "user"
    runtime.mkdir(mode=0o700)
    if os.getuid() == 0:
        os.chown(runtime, uid, -1)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert socket_paths.runtime_base() == runtime / "vmops"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert socket_paths.runtime_base() == Path(f"/tmp/vmops-{uid}")


def test_a_runtime_dir_of_another_user_is_not_used(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """runuser, su and sudo pass on the caller's XDG_RUNTIME_DIR: a directory
    of someone else's (or none at all, or a link) is not this user's runtime
    directory, and the aliases go to /tmp/vmops-<uid> instead."""
    uid = os.geteuid()
    if uid == 0:
        uid = 1000
        monkeypatch.setattr(os, "geteuid", lambda: uid)
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    if os.getuid() == 0:
        os.chown(theirs, uid + 1, -1)
    link = tmp_path / "link"
    link.symlink_to(theirs)
    for runtime in (theirs, link, tmp_path / "missing"):
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
        assert socket_paths.runtime_base() == Path(f"/tmp/vmops-{uid}"), runtime


def test_a_runtime_dir_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    state_dir = long_dir(tmp_path, 150)
    with pytest.raises(HostNotReady, match="cannot make .*short aliases"):
        socket_paths.ensure_socket_root(state_dir, tmp_path / "no" / "such" / "rt")


def test_settings_put_sockets_and_the_libvirt_root_under_the_alias(
        tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket_paths, "runtime_base", lambda: base)
    state_dir = long_dir(tmp_path, 150)
    s = config.load(state_dir, env={})
    assert s.socket_root == state_dir, "no alias yet: nothing is made in its place"
    alias = socket_paths.ensure_socket_root(state_dir)
    assert alias.parent == base
    assert s.socket_root == alias
    assert s.run_dir == alias / "run"
    assert embed_root(s.effective_libvirt_uri) == alias / "libvirt"
    short = config.load(Path("/var/lib/vmops"), env={})
    assert short.socket_root == Path("/var/lib/vmops")
    assert embed_root(short.effective_libvirt_uri) == Path("/var/lib/vmops/libvirt")


def test_an_alias_naming_another_dir_is_not_used(tmp_path: Path, base: Path) -> None:
    state_dir = long_dir(tmp_path, 150)
    base.mkdir(mode=0o700)
    socket_paths.alias_path(state_dir, base).symlink_to(tmp_path)
    assert socket_paths.socket_root(state_dir, base) == state_dir


def test_an_alias_in_a_directory_that_is_no_longer_private_is_not_used(
        tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime directory is checked at each use, not only when the alias
    was made: one removed and made again by someone else (a /tmp cleaner,
    then another user), or opened to others, no longer names the sockets."""
    state_dir = long_dir(tmp_path, 150)
    alias = socket_paths.ensure_socket_root(state_dir, base)
    assert socket_paths.socket_root(state_dir, base) == alias
    os.chmod(base, 0o733)
    assert socket_paths.socket_root(state_dir, base) == state_dir
    os.chmod(base, 0o700)
    assert socket_paths.socket_root(state_dir, base) == alias
    monkeypatch.setattr(os, "geteuid", lambda: base.stat().st_uid + 1)
    assert socket_paths.socket_root(state_dir, base) == state_dir


def test_a_runtime_dir_others_may_write_in_is_not_used(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    uid = os.geteuid()
    if uid == 0:
        uid = 1000
        monkeypatch.setattr(os, "geteuid", lambda: uid)
    runtime = tmp_path / "open"
    runtime.mkdir()
    os.chmod(runtime, 0o777)
    if os.getuid() == 0:
        os.chown(runtime, uid, -1)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert socket_paths.runtime_base() == Path(f"/tmp/vmops-{uid}")
    os.chmod(runtime, 0o755)
    assert socket_paths.runtime_base() == runtime / "vmops"


def test_libvirt_root_reached_through_the_alias_keeps_its_own_modes(tmp_path: Path,
                                                                    base: Path) -> None:
    """libvirt sets some of its directories to 0711 at every start; the
    state dir's tightening leaves them alone also when the root is named
    through the alias."""
    state_dir = long_dir(tmp_path, 150)
    os.chmod(state_dir, 0o700)
    alias = socket_paths.ensure_socket_root(state_dir, base)
    libvirt_dir = state_dir / "libvirt" / "lib"
    libvirt_dir.mkdir(parents=True)
    os.chmod(state_dir / "libvirt", 0o700)
    os.chmod(libvirt_dir, 0o711)
    loose = file_modes.loose_files(state_dir, alias / "libvirt")
    assert [item.path for item in loose] == []


def test_the_api_socket_of_a_long_state_dir_serves_the_cli(tmp_path: Path) -> None:
    """vmops.sock, 160 bytes: bound and reached through /proc/self/fd."""
    from tests.unit.test_api import start_api
    from vmops.cli.client import Client

    state_dir = long_dir(tmp_path, 150)
    _, servers = start_api(state_dir)
    try:
        assert (state_dir / "vmops.sock").is_socket()
        assert Client(state_dir, autostart=False).get("/flavors")["flavors"]
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()
