"""The serial port's FIFOs: made when missing, kept only when they are vmops' own."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vmops import serial_pipes
from vmops.errors import HypervisorError


def test_both_fifos_are_made_private_and_made_again_is_a_no_op(tmp_path: Path) -> None:
    base = tmp_path / "id.sock"
    serial_pipes.make(base)
    serial_pipes.make(base)  # as a start after a define does
    for path in serial_pipes.paths(base):
        found = os.lstat(path)
        assert stat.S_ISFIFO(found.st_mode) and stat.S_IMODE(found.st_mode) == 0o600
    assert serial_pipes.exist(base)


def test_a_file_in_a_fifos_place_is_refused_naming_it(tmp_path: Path) -> None:
    base = tmp_path / "id.sock"
    to_guest, _ = serial_pipes.paths(base)
    to_guest.write_text("not a pipe")
    with pytest.raises(HypervisorError, match=rf"{to_guest} exists and is not a FIFO"):
        serial_pipes.make(base)
    assert to_guest.read_text() == "not a pipe"


def test_a_fifo_others_may_open_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "id.sock"
    _, from_guest = serial_pipes.paths(base)
    os.mkfifo(from_guest)
    os.chmod(from_guest, 0o622)
    with pytest.raises(HypervisorError, match=rf"{from_guest} exists and others may open it "
                                              r"\(mode 0622, not 0600\)"):
        serial_pipes.make(base)
    assert stat.S_IMODE(os.lstat(from_guest).st_mode) == 0o622  # left as found


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_another_users_fifo_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "id.sock"
    to_guest, _ = serial_pipes.paths(base)
    os.mkfifo(to_guest, 0o600)
    os.chown(to_guest, 65534, 65534)
    with pytest.raises(HypervisorError, match=rf"{to_guest} exists and belongs to uid 65534"):
        serial_pipes.make(base)
