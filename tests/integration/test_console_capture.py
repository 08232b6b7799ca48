"""The capture process for real: real processes, real UNIX sockets, no QEMU.

``FakeQemu`` plays QEMU's side of the serial socket: it serves the socket
(bind + listen, as QEMU does at start even while the guest is paused),
accepts the capture process, writes "guest output", and exits (closes
everything and unlinks the socket), possibly to be started again as a
power cycle does. Timeouts in here are only bounds against hanging.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vmops.console import (
    capture_generation,
    capture_pid,
    follow,
    poke_capture,
    read_log,
    release_holds,
    start_capture,
    stop_capture,
    wait_connected,
)
from vmops.console.layout import CAPTURE_MODULE, DAEMON_MODULE, EXIT_ALREADY_RUNNING, LogFiles
from vmops.errors import HypervisorError

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
BOUND = 20.0  # seconds; only ever a bound against hanging


def _lines(first: int, count: int, width: int = 0) -> bytes:
    """Numbered lines, optionally padded: any loss or repeat changes the text."""
    return b"".join(
        b"guest line %08d %s\n" % (i, b"." * width) for i in range(first, first + count)
    )


def _wait_for(what: str, predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + BOUND
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.005)


def _is_alive(pid: int) -> bool:
    """Running (not a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _is_console_process(pid: int) -> bool:
    """A per-instance capture process or the shared console process."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return CAPTURE_MODULE.encode() in args or DAEMON_MODULE.encode() in args


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


class FakeQemu:
    """QEMU's end of a serial ``<serial type='unix'><source mode='bind'>``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener: socket.socket | None = None
        self.conn: socket.socket | None = None

    def start(self) -> None:
        """Serve the socket, as QEMU does as soon as it starts (paused or not)."""
        self.path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(1)

    def accept(self) -> None:
        assert self.listener is not None
        self.listener.settimeout(BOUND)
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(BOUND)

    def send(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(data)

    def wait_stored(self) -> None:
        """Close our sending side and wait until the capture process has
        stored everything: it closes its end only after writing all it read."""
        assert self.conn is not None
        self.conn.shutdown(socket.SHUT_WR)
        assert self.conn.recv(1) == b""

    def exit(self) -> None:
        """QEMU exits: the socket and the connection go away.

        The listening socket goes first: the capture process, seeing the
        connection end, must find nothing to reconnect to (it would
        otherwise connect into the dying listener's backlog and count a
        generation for a QEMU that is already gone).
        """
        for sock in (self.listener, self.conn):
            if sock is not None:
                sock.close()
        self.conn = self.listener = None
        self.path.unlink(missing_ok=True)


@dataclass
class Console:
    """One instance's console: its socket, its log dir, its fake QEMU."""

    socket: Path
    log_dir: Path
    qemu: FakeQemu
    pids: list[int] = field(default_factory=list)

    @property
    def files(self) -> LogFiles:
        return LogFiles(self.log_dir)

    def start(self, max_bytes: int = 512 * 1024) -> int:
        pid = start_capture(self.socket, self.log_dir, max_bytes)
        self.pids.append(pid)
        return pid


@pytest.fixture
def consoles() -> Iterator[Callable[[], Console]]:
    """Factory of consoles; always stops their capture processes and fails
    the test if one is left running once this process has let go of the
    console processes it used (as the service does when it stops: they
    outlive their last instance while their user lives)."""
    # Short paths: a UNIX socket address holds at most 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="vmc-", dir="/tmp"))
    made: list[Console] = []

    def make() -> Console:
        n = len(made)
        console = Console(root / f"s{n}.sock", root / f"log{n}", FakeQemu(root / f"s{n}.sock"))
        made.append(console)
        return console

    yield make
    leftovers = []
    try:
        for console in made:
            console.qemu.exit()
            stop_capture(console.log_dir, timeout=BOUND)
        release_holds(timeout=BOUND)
    finally:
        # Only once all are stopped: the console process serves them all.
        for pid in {pid for console in made for pid in console.pids}:
            if _is_alive(pid) and _is_console_process(pid):
                leftovers.append(pid)
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"capture processes left running: {leftovers}"


def test_every_line_arrives_once_and_in_order_across_rotations(
    consoles: Callable[[], Console],
) -> None:
    console = consoles()
    console.start(max_bytes=4096)
    console.qemu.start()
    wait_connected(console.log_dir, 0, timeout=BOUND)
    console.qemu.accept()
    stop = threading.Event()
    received = bytearray()
    follower_done = threading.Event()

    def collect() -> None:
        try:
            for chunk in follow(console.log_dir, from_offset_end=False, poll=0.002, stop=stop):
                received.extend(chunk)
        finally:
            follower_done.set()

    thread = threading.Thread(target=collect, daemon=True)
    thread.start()
    sent = b""
    try:
        for batch in range(120):
            # A quarter of a file per batch, and the next batch only once it
            # was read: the follower never falls a whole file behind, so it
            # must see the stream exactly, through some 30 rotations.
            data = _lines(batch * 20, 20, width=20)
            console.qemu.send(data)
            sent += data

            def caught_up(n: int = len(sent)) -> bool:
                return len(received) >= n

            _wait_for("the follower to catch up", caught_up)
    finally:
        stop.set()
        follower_done.wait(BOUND)
    assert bytes(received) == sent
    assert console.files.old.stat().st_size == 4096
    assert console.files.current.stat().st_size <= 4096
    kept = read_log(console.log_dir)
    assert kept == sent[-len(kept) :]


def test_a_flood_keeps_exactly_the_tail_in_two_bounded_files(
    consoles: Callable[[], Console],
) -> None:
    console = consoles()
    console.start(max_bytes=4096)
    console.qemu.start()
    wait_connected(console.log_dir, 0, timeout=BOUND)
    console.qemu.accept()
    sent = _lines(0, 200_000)  # about 5 MiB: over a thousand rotations
    console.qemu.send(sent)
    console.qemu.wait_stored()
    assert console.files.old.stat().st_size == 4096
    assert 1 <= console.files.current.stat().st_size <= 4096
    kept = read_log(console.log_dir)
    assert len(kept) > 4096
    assert kept == sent[-len(kept) :]


def test_each_new_qemu_is_a_new_generation(consoles: Callable[[], Console]) -> None:
    console = consoles()
    console.start()
    assert capture_generation(console.log_dir) == (False, 0)
    for boot in range(1, 4):
        console.qemu.start()
        assert wait_connected(console.log_dir, boot - 1, timeout=BOUND) == boot
        assert capture_generation(console.log_dir) == (True, boot)
        console.qemu.accept()
        console.qemu.send(b"boot %d\n" % boot)
        logged = b"".join(b"boot %d\n" % n for n in range(1, boot + 1))

        def stored(want: bytes = logged) -> bool:
            return read_log(console.log_dir) == want

        _wait_for("the output stored", stored)
        console.qemu.exit()  # power off: the capture process waits for the next QEMU
        _wait_for("disconnected", lambda: capture_generation(console.log_dir)[0] is False)
    assert capture_generation(console.log_dir) == (False, 3)
    assert read_log(console.log_dir) == b"boot 1\nboot 2\nboot 3\n"


def test_start_paused_then_resume_captures_the_first_byte(
    consoles: Callable[[], Console],
) -> None:
    console = consoles()
    console.start()
    _, before = capture_generation(console.log_dir)
    # Nothing serves the socket yet: waiting gives a clear error.
    with pytest.raises(HypervisorError, match="did not connect"):
        wait_connected(console.log_dir, before, timeout=0.2)
    console.qemu.start()  # QEMU started with the vCPUs paused
    assert wait_connected(console.log_dir, before, timeout=BOUND) == before + 1
    console.qemu.accept()  # vCPUs resumed: the guest writes at once
    first_words = b"\x00\xffSeaBIOS (version 1.16)\r\n" + _lines(0, 1000)
    console.qemu.send(first_words)
    console.qemu.wait_stored()
    assert read_log(console.log_dir) == first_words


def test_a_poke_only_wakes_the_capture(consoles: Callable[[], Console]) -> None:
    console = consoles()
    pid = console.start()
    _wait_for("the capture's state", console.files.state.exists)
    _, before = capture_generation(console.log_dir)
    for _ in range(5):  # nothing to connect to yet: pokes change nothing
        poke_capture(console.log_dir)
    assert capture_pid(console.log_dir) == pid
    console.qemu.start()
    poke_capture(console.log_dir)
    assert wait_connected(console.log_dir, before, timeout=BOUND) == before + 1
    console.qemu.accept()
    poke_capture(console.log_dir)  # while connected: still harmless
    console.qemu.send(b"still here\n")
    console.qemu.wait_stored()
    assert read_log(console.log_dir) == b"still here\n"
    assert capture_pid(console.log_dir) == pid


def test_capture_survives_its_parent_and_runs_in_its_own_session(
    consoles: Callable[[], Console],
) -> None:
    console = consoles()
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from vmops.console import start_capture\n"
        "print(start_capture(Path(sys.argv[1]), Path(sys.argv[2]), 4096))\n"
    )
    parent = subprocess.run(
        [sys.executable, "-c", script, str(console.socket), str(console.log_dir)],
        env=_child_env(),
        capture_output=True,
        timeout=BOUND,
        check=True,
    )
    pid = int(parent.stdout)
    console.pids.append(pid)
    assert capture_pid(console.log_dir) == pid  # the parent is gone, it is not
    assert os.getsid(pid) == pid != os.getsid(0)
    assert os.getpgid(pid) == pid
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    console.qemu.start()
    assert wait_connected(console.log_dir, 0, timeout=BOUND) == 1
    console.qemu.accept()
    console.qemu.send(b"still here\n")
    console.qemu.wait_stored()
    assert read_log(console.log_dir) == b"still here\n"


def test_a_second_capture_for_the_same_directory_refuses(
    consoles: Callable[[], Console],
) -> None:
    console = consoles()
    pid = console.start()
    second = subprocess.run(
        [sys.executable, "-m", CAPTURE_MODULE, "--socket", str(console.socket),
         "--log-dir", str(console.log_dir)],
        env=_child_env(),
        capture_output=True,
        timeout=BOUND,
    )  # fmt: skip
    assert second.returncode == EXIT_ALREADY_RUNNING
    assert capture_pid(console.log_dir) == pid
    assert console.files.pid.read_text().strip() == str(pid)
    assert start_capture(console.socket, console.log_dir, 4096) == pid  # a no-op


def test_stop_capture_stores_what_is_queued_and_leaves_no_process(
    consoles: Callable[[], Console],
) -> None:
    console = consoles()
    pid = console.start()
    console.qemu.start()
    wait_connected(console.log_dir, 0, timeout=BOUND)
    console.qemu.accept()
    last_words = _lines(0, 2000)
    console.qemu.send(last_words)  # queued in the socket when SIGTERM comes
    stop_capture(console.log_dir)
    assert capture_pid(console.log_dir) is None
    assert not console.files.pid.exists()
    assert capture_generation(console.log_dir) == (False, 1)
    assert read_log(console.log_dir) == last_words
    stop_capture(console.log_dir)  # nothing running: fine
    release_holds()  # this process, its user, lets go: it has nothing left
    assert not Path(f"/proc/{pid}").exists()  # exited and reaped


def test_sigkill_loses_nothing_already_read_and_a_restart_continues(
    consoles: Callable[[], Console],
) -> None:
    console = consoles()
    pid = console.start()
    console.qemu.start()
    wait_connected(console.log_dir, 0, timeout=BOUND)
    console.qemu.accept()
    before = b"a few bytes, far less than any buffer would hold before a flush\n"
    console.qemu.send(before)
    # In the file while the process still runs: nothing sits in a buffer.
    _wait_for("the bytes in the file", lambda: read_log(console.log_dir) == before)
    pidfd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        assert select.select([pidfd], [], [], BOUND)[0]
    finally:
        os.close(pidfd)
    assert read_log(console.log_dir) == before
    assert capture_pid(console.log_dir) is None
    # Its state file still says "connected"; nobody is, and we say so.
    assert capture_generation(console.log_dir) == (False, 1)

    assert console.qemu.conn is not None
    console.qemu.conn.close()  # that connection died with the process
    assert console.start() != pid
    assert wait_connected(console.log_dir, 1, timeout=BOUND) == 2  # the count goes on
    console.qemu.accept()
    after = b"after the restart\n"
    console.qemu.send(after)
    console.qemu.wait_stored()
    # Between the two, the new process marks where output may be missing.
    log = read_log(console.log_dir)
    assert log.startswith(before) and log.endswith(after)
    assert b"[vmops: the console capture was restarted at " in log[len(before):-len(after)]


def test_capture_pid_ignores_a_recycled_pid(consoles: Callable[[], Console]) -> None:
    console = consoles()
    console.log_dir.mkdir()
    # A pid file naming a live process that is not a capture process.
    console.files.pid.write_text(f"{os.getpid()}\n")
    assert capture_pid(console.log_dir) is None
    stop_capture(console.log_dir)  # and we must not signal it
    pid = console.start()
    assert pid != os.getpid()
    # A capture process for another directory is not ours either.
    other = consoles()
    other.log_dir.mkdir()
    other.files.pid.write_text(f"{pid}\n")
    assert capture_pid(other.log_dir) is None


def test_start_capture_refuses_what_cannot_work(consoles: Callable[[], Console]) -> None:
    console = consoles()
    with pytest.raises(HypervisorError, match="at least 1 byte"):
        start_capture(console.socket, console.log_dir, 0)
    too_long = console.socket.parent / ("s" * 120 + ".sock")
    with pytest.raises(HypervisorError, match="longer than"):
        start_capture(too_long, console.log_dir, 4096)
    assert capture_pid(console.log_dir) is None
    with pytest.raises(HypervisorError, match="no console capture process is running"):
        wait_connected(console.log_dir, 0, timeout=BOUND)
