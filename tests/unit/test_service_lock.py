"""The state directory's lock (vmops/service.py ``take_lock``)."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import pytest

from vmops import service
from vmops.errors import ConfigError, ServiceAlreadyRunning


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    first = service.take_lock(tmp_path)
    try:
        with pytest.raises(ServiceAlreadyRunning) as refused:
            service.take_lock(tmp_path)
        assert str(tmp_path) in refused.value.message
        assert f"pid {os.getpid()}" in refused.value.message
        # The refused one did not clear the holder's pid.
        assert (tmp_path / service.LOCK_FILE).read_text().strip().isdigit()
    finally:
        first.close()
    service.take_lock(tmp_path).close()  # let go: the next one takes it


def test_started_at_the_same_moment_it_waits_for_the_holders_pid(tmp_path: Path) -> None:
    """The holder writes its pid just after it takes the lock: one refused in
    between reported "pid ?" before."""
    holder = (tmp_path / service.LOCK_FILE).open("a+")
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def write_pid() -> None:
        holder.write("4242\n")
        holder.flush()

    timer = threading.Timer(0.3, write_pid)
    timer.start()
    try:
        with pytest.raises(ServiceAlreadyRunning) as refused:
            service.take_lock(tmp_path)
        assert "pid 4242" in refused.value.message
    finally:
        timer.join()
        holder.close()


def test_a_holder_that_never_writes_its_pid(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "HOLDER_PID_WAIT_S", 0.1)
    holder = (tmp_path / service.LOCK_FILE).open("a+")
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(ServiceAlreadyRunning) as refused:
            service.take_lock(tmp_path)
        assert "pid ?" in refused.value.message
    finally:
        holder.close()


def test_a_state_dir_it_cannot_use_is_a_clear_error(tmp_path: Path) -> None:
    """A careless start (another user's state directory, a file in the way)
    names the state directory and why, instead of an OSError's traceback."""
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"state_dir='.*/file/state': a directory uid \d+ "
                                          r"can make and write in \(Not a directory"):
        service.take_lock(tmp_path / "file" / "state")
    if os.geteuid() == 0:
        return  # root writes anywhere: the next case needs a user
    locked = tmp_path / "theirs"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="Permission denied"):
        service.take_lock(locked)
