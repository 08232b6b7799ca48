"""The state directory is its owner's alone: created so by the CLI and the
service, loose modes of older installs tightened once and shown by doctor."""

from __future__ import annotations

import logging
import os
import stat
import sys
from pathlib import Path

import pytest

from vmops import doctor, file_modes
from vmops.cli.client import Client
from vmops.errors import ServiceUnavailable
from vmops.service import tighten_state_dir


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def old_install(tmp_path: Path) -> Path:
    """A state directory as vmops made it before: 0755, 0644, images 0444."""
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)
    state.chmod(0o755)
    (state / "images").chmod(0o755)
    for name, mode in (("vmops.db", 0o644), ("vmops.db-wal", 0o644), ("vmops.log", 0o640)):
        (state / name).write_text("x")
        (state / name).chmod(mode)
    (state / "images" / "abc.qcow2").write_text("image")
    (state / "images" / "abc.qcow2").chmod(0o444)
    outside = tmp_path / "not-ours"
    outside.write_text("")
    outside.chmod(0o644)
    (state / "link").symlink_to(outside)
    return state


def test_an_old_install_is_tightened(old_install: Path) -> None:
    loose = file_modes.loose_files(old_install)
    assert {p.path.name for p in loose} == {"state", "images", "vmops.db", "vmops.db-wal",
                                            "vmops.log", "abc.qcow2"}
    changed, failed = file_modes.tighten(loose)
    assert (len(changed), failed) == (6, [])
    assert _mode(old_install) == 0o700
    assert _mode(old_install / "images") == 0o700
    assert _mode(old_install / "vmops.db") == 0o600
    assert _mode(old_install / "vmops.log") == 0o600
    assert _mode(old_install / "images" / "abc.qcow2") == 0o400
    assert _mode(old_install.parent / "not-ours") == 0o644  # a link is not followed
    assert file_modes.loose_files(old_install) == []


def test_the_service_tightens_and_logs_once(old_install: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        tighten_state_dir(old_install)
        tighten_state_dir(old_install)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "6 path(s)" in warnings[0] and "vmops.db (0644)" in warnings[0]


def test_doctor_reports_loose_modes(old_install: Path) -> None:
    check = doctor._state_dir_private(old_install)
    assert not check.ok and not check.required
    assert "6 path(s)" in check.detail and "vmops.db (0644)" in check.detail
    assert "chmod -R go-rwx" in check.advice
    file_modes.tighten(file_modes.loose_files(old_install))
    assert doctor._state_dir_private(old_install).ok


def test_doctor_makes_a_missing_state_dir_private(tmp_path: Path) -> None:
    assert doctor._state_dir_writable(tmp_path / "new").ok
    assert _mode(tmp_path / "new") == 0o700


def test_the_cli_starts_the_service_under_a_private_umask(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The state directory and log the CLI makes are private, and so is all
    the service it starts makes (it inherits the umask)."""
    seen = tmp_path / "umask-seen"
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!/bin/sh\numask > {seen}\nexit 3\n")
    fake_python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake_python))
    old = os.umask(0o022)
    try:
        state = tmp_path / "state"
        with pytest.raises(ServiceUnavailable, match="exited at start"):
            Client(state).start_service()
        assert os.umask(0o022) == 0o022  # the CLI's own umask is given back
    finally:
        os.umask(old)
    assert seen.read_text().strip() == "0077"
    assert _mode(state) == 0o700
    assert _mode(state / "vmops.log") == 0o600


def test_libvirt_keeps_its_directory_modes_inside_its_private_root(tmp_path: Path) -> None:
    """libvirt sets lib/qemu/ram to 0711 at every start: not ours to fight,
    and unreachable through the 0700 root; its files are still checked."""
    state = tmp_path / "state"
    root = state / "libvirt"
    (root / "lib" / "qemu" / "ram").mkdir(parents=True)
    for d in (state, root):
        d.chmod(0o700)
    (root / "lib" / "qemu" / "ram").chmod(0o711)
    (root / "lib").chmod(0o755)
    (root / "lib" / "qemu").chmod(0o755)
    (root / "domain.log").write_text("")
    (root / "domain.log").chmod(0o644)
    assert [str(f) for f in file_modes.loose_files(state, root)] == [f"{root}/domain.log (0644)"]
    root.chmod(0o755)
    assert [f.path for f in file_modes.loose_files(state, root)] == [root, root / "domain.log"]
