"""The console process on a serial port of FIFOs (QEMU's pipe chardev, the
domains vmops defines: vmops/serial_pipes.py), for real: real processes
and FIFOs, ``FakePipeQemu`` for QEMU's side (no guest). Timeouts are only
bounds against hanging."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import vmops
from tests.integration.test_console_capture import BOUND, _is_alive, _lines, _wait_for
from vmops import serial_pipes
from vmops.console import (
    attach,
    capture_generation,
    capture_pid,
    poke_capture,
    read_log,
    release_holds,
    start_capture,
    stop_capture,
    wait_connected,
)
from vmops.console.daemon import PIPE_BYTES
from vmops.console.layout import DAEMON_MODULE, DAEMON_VERSION
from vmops.console.shared import NotRunning, request
from vmops.errors import HypervisorError

pytestmark = pytest.mark.integration
MARKER = b"[vmops: the console capture was restarted at "


class FakePipeQemu:
    """QEMU's end of ``<serial type='pipe'>``: both FIFOs opened read-write
    (so neither open waits, as QEMU's char-pipe.c does), output written
    to ``.out``, input read from ``.in``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.fds: tuple[int, int] | None = None

    def start(self) -> None:
        to_guest, from_guest = serial_pipes.paths(self.base)
        self.fds = (os.open(to_guest, os.O_RDWR | os.O_NONBLOCK),
                    os.open(from_guest, os.O_RDWR))

    def send(self, data: bytes, one_byte_at_a_time: bool = False) -> None:
        """Write the guest's output (blocking while the pipe is full, as the
        guest's UART waits), by single bytes as QEMU 7.2 does if asked."""
        assert self.fds is not None
        if one_byte_at_a_time:
            for i in range(len(data)):
                os.write(self.fds[1], data[i:i + 1])
            return
        view = memoryview(data)
        while view:
            view = view[os.write(self.fds[1], view):]

    def typed(self, size: int) -> bytes:
        """What was typed into the guest (waits for ``size`` bytes)."""
        assert self.fds is not None
        got = bytearray()
        while len(got) < size:
            assert select.select([self.fds[0]], [], [], BOUND)[0], "nothing typed"
            got += os.read(self.fds[0], size - len(got))
        return bytes(got)

    def exit(self) -> None:
        if self.fds is not None:
            for fd in self.fds:
                os.close(fd)
        self.fds = None


@dataclass
class PipeConsole:
    base: Path
    log_dir: Path
    qemu: FakePipeQemu
    pids: list[int] = field(default_factory=list)

    def start(self, max_bytes: int = 4 * 1024 * 1024) -> int:
        pid = start_capture(self.base, self.log_dir, max_bytes)
        self.pids.append(pid)
        return pid

    def stored(self, data: bytes) -> None:
        _wait_for(f"{len(data)} bytes stored", lambda: read_log(self.log_dir) == data)


@pytest.fixture
def consoles() -> Iterator[Callable[[], PipeConsole]]:
    root = Path(tempfile.mkdtemp(prefix="vmp-", dir="/tmp"))
    made: list[PipeConsole] = []

    def make() -> PipeConsole:
        n = len(made)
        base = root / f"s{n}.sock"
        serial_pipes.make(base)
        console = PipeConsole(base, root / f"log{n}", FakePipeQemu(base))
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
        for pid in {pid for console in made for pid in console.pids}:
            if _is_alive(pid):
                leftovers.append(pid)
                os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)
    assert not leftovers, f"console processes left running: {leftovers}"


def _kill(pid: int) -> None:
    pidfd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        assert select.select([pidfd], [], [], BOUND)[0]
    finally:
        os.close(pidfd)


def _ends_with(console: PipeConsole, data: bytes) -> bool:
    return read_log(console.log_dir).endswith(data)


def _generation_is(console: PipeConsole, state: tuple[bool, int]) -> bool:
    return capture_generation(console.log_dir) == state


def _state(console: PipeConsole) -> dict[str, object]:
    return request(console.base.parent, {"op": "state", "log_dir": str(console.log_dir)})


def test_output_is_captured_and_each_qemu_is_a_generation(
        consoles: Callable[[], PipeConsole]) -> None:
    console = consoles()
    console.start()
    for life in range(1, 4):  # three QEMUs in turn (a power cycle each)
        console.qemu.start()
        poke_capture(console.log_dir)
        assert wait_connected(console.log_dir, life - 1, timeout=BOUND) == life
        console.qemu.send(b"boot %d\n" % life)
        _wait_for("the line", functools.partial(_ends_with, console, b"boot %d\n" % life))
        console.qemu.exit()
        _wait_for("the end of that QEMU seen",
                  functools.partial(_generation_is, console, (False, life)))
    assert read_log(console.log_dir) == b"boot 1\nboot 2\nboot 3\n"


def test_output_before_the_capture_connects_waits_in_the_pipe(
        consoles: Callable[[], PipeConsole]) -> None:
    # QEMU runs and the guest writes before any console process reads (on a
    # socket these bytes would be dropped: docs/console.md).
    console = consoles()
    console.qemu.start()
    early = _lines(0, 500)
    assert len(early) < 64 * 1024  # what a pipe holds before anyone sets its size
    console.qemu.send(early)
    console.start()
    wait_connected(console.log_dir, 0, timeout=BOUND)
    console.qemu.send(b"later\n")
    console.stored(early + b"later\n")


def test_a_killed_console_process_loses_nothing_the_pipe_held(
        consoles: Callable[[], PipeConsole]) -> None:
    console = consoles()
    pid = console.start()
    console.qemu.start()
    poke_capture(console.log_dir)
    wait_connected(console.log_dir, 0, timeout=BOUND)
    before = _lines(0, 100)
    console.qemu.send(before)
    console.stored(before)
    _kill(pid)
    assert capture_pid(console.log_dir) is None
    # While no console process runs, the guest goes on writing: more than
    # a default pipe holds (the console process made it PIPE_BYTES).
    during = _lines(100, 20_000)
    assert 64 * 1024 < len(during) < PIPE_BYTES
    console.qemu.send(during)
    new = console.start()  # the service's capture watch does this
    assert new != pid
    wait_connected(console.log_dir, 1, timeout=BOUND)
    after = _lines(20_100, 10)
    console.qemu.send(after)
    marker_at = len(before) + 2  # the marker starts a line of its own

    def whole() -> bool:
        log = read_log(console.log_dir)
        return log.endswith(after)

    _wait_for("everything stored", whole)
    log = read_log(console.log_dir)
    # The restart is marked where it happened, and no byte is missing.
    assert log.startswith(before) and log.index(MARKER) == marker_at
    marker_end = log.index(b"\n", marker_at) + 1
    assert b"waited in the serial port's pipe" in log[marker_at:marker_end]
    assert log[marker_end:] == during + after


def test_input_goes_to_the_guest_and_output_to_the_client(
        consoles: Callable[[], PipeConsole]) -> None:
    console = consoles()
    console.start()
    console.qemu.start()
    poke_capture(console.log_dir)
    wait_connected(console.log_dir, 0, timeout=BOUND)
    client = attach(console.log_dir)
    client.settimeout(BOUND)
    try:
        client.sendall(b"root\n")
        assert console.qemu.typed(5) == b"root\n"
        console.qemu.send(b"login: ")
        got = b""
        while not got.endswith(b"login: "):
            chunk = client.recv(4096)
            assert chunk, "the client was closed"
            got += chunk
        # QEMU's end closes the clients that joined it, as on a socket.
        console.qemu.exit()
        while chunk := client.recv(4096):
            pass
    finally:
        client.close()


def test_a_burst_of_one_byte_writes_arrives_whole_and_in_order(
        consoles: Callable[[], PipeConsole]) -> None:
    console = consoles()
    console.start()
    console.qemu.start()
    poke_capture(console.log_dir)
    wait_connected(console.log_dir, 0, timeout=BOUND)
    data = _lines(0, 4000)  # ~100 KB, one write per byte as QEMU 7.2 writes a UART's
    console.qemu.send(data, one_byte_at_a_time=True)
    console.stored(data)


def test_an_upgrade_keeps_the_pipes_without_losing_a_byte(
        consoles: Callable[[], PipeConsole]) -> None:
    console = consoles()
    pid = console.start()
    console.qemu.start()
    poke_capture(console.log_dir)
    wait_connected(console.log_dir, 0, timeout=BOUND)
    sent = bytearray()
    for batch in range(30):
        if batch in (10, 20):
            os.kill(pid, signal.SIGHUP) if batch == 10 else \
                request(console.base.parent, {"op": "upgrade"})
        data = _lines(batch * 500, 500)
        console.qemu.send(data)
        sent += data
    console.stored(bytes(sent))
    assert capture_pid(console.log_dir) == pid  # the same process, re-exec'ed
    state = _state(console)
    assert state["connected"] is True and state["generation"] == 1
    # Still connected to the same QEMU: its end is seen after the upgrade.
    console.qemu.exit()
    _wait_for("the end seen", lambda: capture_generation(console.log_dir) == (False, 1))


def test_fifos_that_no_qemu_holds_are_not_connected(
        consoles: Callable[[], PipeConsole]) -> None:
    console = consoles()
    console.start()
    poke_capture(console.log_dir)
    with pytest.raises(HypervisorError, match="not connected|within"):
        wait_connected(console.log_dir, 0, timeout=0.3)
    assert _state(console)["error"] is None and _state(console)["log_error"] is None


def test_serial_pipes_are_made_checked_and_removed(tmp_path: Path) -> None:
    base = tmp_path / "x.sock"
    assert not serial_pipes.exist(base)
    serial_pipes.make(base)
    serial_pipes.make(base)  # again: a no-op
    assert serial_pipes.exist(base)
    for path in serial_pipes.paths(base):
        assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    serial_pipes.remove(base)
    assert not serial_pipes.exist(base)
    serial_pipes.paths(base)[1].write_text("a file")
    with pytest.raises(HypervisorError, match="x.sock.out exists and is not a FIFO"):
        serial_pipes.make(base)
    assert not serial_pipes.exist(base)
    with pytest.raises(OSError) as raised:  # no reader: what the console process sees
        os.open(serial_pipes.paths(base)[0], os.O_WRONLY | os.O_NONBLOCK)
    assert raised.value.errno == errno.ENXIO


def test_a_socket_domain_defined_again_moves_to_its_fifos(
        consoles: Callable[[], PipeConsole]) -> None:
    # A domain from an older vmops serves a socket at the path; once vmops
    # defines it again (a resize, a rescue) its next QEMU has the FIFOs.
    from tests.integration.test_console_capture import FakeQemu

    console = consoles()
    serial_pipes.remove(console.base)  # as the old domain had none
    old = FakeQemu(console.base)
    console.start()
    old.start()
    poke_capture(console.log_dir)
    assert wait_connected(console.log_dir, 0, timeout=BOUND) == 1
    old.accept()
    old.send(b"on the socket\n")
    old.wait_stored()
    old.exit()
    _wait_for("the socket's end seen", lambda: capture_generation(console.log_dir) == (False, 1))
    serial_pipes.make(console.base)
    console.qemu.start()
    poke_capture(console.log_dir)
    assert wait_connected(console.log_dir, 1, timeout=BOUND) == 2
    console.qemu.send(b"on the fifos\n")
    console.stored(b"on the socket\non the fifos\n")


# A console process from before the FIFOs, as one still runs after vmops
# is upgraded (it outlives the service while it watches guests): it knows
# only the socket and its answers carry no version. Its upgrade re-execs
# ``python -m vmops.console.daemon``: this tree's code.
_OLD_CONSOLE_PROCESS = """
import sys
from vmops import serial_pipes
from vmops.console import daemon
serial_pipes.exist = lambda base: False
answer = daemon.Loop.answer
def old_answer(self, line, conn=None):
    reply = answer(self, line, conn)
    reply.pop("version", None)
    return reply
daemon.Loop.answer = old_answer
sys.exit(daemon.main(sys.argv[2:]))
"""


def test_a_console_process_from_before_the_fifos_is_upgraded_by_a_watch(
        consoles: Callable[[], PipeConsole]) -> None:
    console = consoles()
    run_dir = console.base.parent
    env = dict(os.environ, PYTHONPATH=str(Path(vmops.__file__).parent.parent))
    old = subprocess.Popen(
        [sys.executable, "-c", _OLD_CONSOLE_PROCESS, DAEMON_MODULE, "--run-dir", str(run_dir)],
        env=env, cwd="/", stdin=subprocess.DEVNULL, start_new_session=True)
    console.pids.append(old.pid)
    try:
        _wait_for("the old console process", functools.partial(_answers, run_dir))
        assert "version" not in request(run_dir, {"op": "status"})
        assert console.start() == old.pid  # the service's watch: it asks that one
        # Upgraded in place (the same process), it connects to the FIFOs: the
        # boot's wait (any connection, on FIFOs) would time out otherwise.
        assert request(run_dir, {"op": "status"})["version"] == DAEMON_VERSION
        console.qemu.start()
        poke_capture(console.log_dir)
        assert wait_connected(console.log_dir, -1, timeout=BOUND) == 1
        console.qemu.send(b"after the upgrade\n")
        console.stored(b"after the upgrade\n")
        assert capture_pid(console.log_dir) == old.pid
    finally:
        console.qemu.exit()
        stop_capture(console.log_dir, timeout=BOUND)
        release_holds(timeout=BOUND)
        with contextlib.suppress(subprocess.TimeoutExpired):
            old.wait(timeout=BOUND)


def _answers(run_dir: Path) -> bool:
    try:
        request(run_dir, {"op": "status"}, timeout=1.0)
    except NotRunning:
        return False
    return True
