"""The one console process of a run directory (vmops/console/daemon.py) for
real: real processes and UNIX sockets, ``FakeQemu`` for QEMU's side (no
guest). Timeouts are only bounds against hanging."""

from __future__ import annotations

import contextlib
import os
import resource
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.test_console_capture import (
    BOUND,
    Console,
    FakeQemu,
    _child_env,
    _is_alive,
    _lines,
    _wait_for,
)
from tests.integration.test_console_capture import consoles as consoles  # noqa: F401
from vmops.console import (
    attach,
    capture_pid,
    read_log,
    release_holds,
    start_capture,
    stop_capture,
    wait_connected,
)
from vmops.console.daemon import MAX_HOLDERS, Loop
from vmops.console.layout import (
    CAPTURE_MODULE,
    DAEMON_MODULE,
    DAEMON_VERSION,
    EXIT_ALREADY_RUNNING,
    ConsoleProcessFiles,
)
from vmops.console.shared import command_line, request
from vmops.errors import HypervisorError

pytestmark = pytest.mark.integration
MARKER = b"[vmops: the console capture was restarted at "


def _running(console: Console, max_bytes: int = 512 * 1024) -> int:
    pid = console.start(max_bytes)
    console.qemu.start()
    wait_connected(console.log_dir, 0, timeout=BOUND)
    console.qemu.accept()
    return pid


def _kill(pid: int) -> None:
    pidfd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        assert select.select([pidfd], [], [], BOUND)[0]
    finally:
        os.close(pidfd)


def test_one_process_captures_every_instance(consoles: Callable[[], Console]) -> None:
    made = [consoles() for _ in range(3)]
    pids = {_running(console) for console in made}
    assert len(pids) == 1
    (pid,) = pids
    for n, console in enumerate(made):
        console.qemu.send(b"guest %d\n" % n)
        console.qemu.wait_stored()
        assert read_log(console.log_dir) == b"guest %d\n" % n
        assert capture_pid(console.log_dir) == pid
    files = ConsoleProcessFiles(made[0].socket.parent)
    assert stat.S_IMODE(files.control.stat().st_mode) & 0o077 == 0  # the owner's only
    assert os.getsid(pid) == pid != os.getsid(0)
    # A second console process for the same run directory refuses to start.
    second = subprocess.run([sys.executable, "-m", DAEMON_MODULE, "--run-dir", str(files.dir)],
                            env=_child_env(), capture_output=True, timeout=BOUND)
    assert second.returncode == EXIT_ALREADY_RUNNING
    assert request(files.dir, {"op": "status"})["pid"] == pid


def test_an_upgrade_re_execs_without_losing_a_byte(consoles: Callable[[], Console]) -> None:
    console = consoles()
    pid = _running(console, max_bytes=64 * 1024)
    client = attach(console.log_dir)
    client.settimeout(BOUND)
    sent = bytearray()
    for batch in range(40):
        if batch in (10, 25):  # twice, in the middle of the stream
            (os.kill(pid, signal.SIGHUP) if batch == 10 else
             request(console.socket.parent, {"op": "upgrade"}))
        data = _lines(batch * 500, 500)
        console.qemu.send(data)
        sent += data
    # The interactive client was handed over too: it gets the whole stream
    # (read before QEMU's end closes it).
    got = bytearray()
    while len(got) < len(sent):
        chunk = client.recv(65536)
        assert chunk, "the client was closed"
        got += chunk
    assert bytes(got) == bytes(sent)
    console.qemu.wait_stored()
    assert capture_pid(console.log_dir) == pid  # the same process, re-exec'ed
    kept = read_log(console.log_dir)
    assert kept == bytes(sent[-len(kept):]) and len(kept) > 64 * 1024
    assert MARKER not in kept
    client.close()


def test_a_killed_console_process_is_replaced_and_marks_each_gap(
        consoles: Callable[[], Console]) -> None:
    made = [consoles() for _ in range(2)]
    pid = 0
    for console in made:
        pid = _running(console)
        console.qemu.send(b"before\n")
    for console in made:
        def stored(c: Console = console) -> bool:
            return read_log(c.log_dir) == b"before\n"

        _wait_for("the line stored", stored)
    _kill(pid)
    for console in made:
        assert capture_pid(console.log_dir) is None
        assert console.qemu.conn is not None
        console.qemu.conn.close()  # that connection died with the process
    # What the service's capture watch does for its first instance: the new
    # console process adopts every instance of the watch list.
    new = made[0].start()
    assert new != pid
    for console in made:
        assert capture_pid(console.log_dir) == new
        assert wait_connected(console.log_dir, 1, timeout=BOUND) == 2
        console.qemu.accept()
        console.qemu.send(b"after\n")
        console.qemu.wait_stored()
        log = read_log(console.log_dir)
        assert log.startswith(b"before\n") and log.endswith(b"after\n")
        assert MARKER in log


def test_it_takes_over_from_a_per_instance_capture_process(
        consoles: Callable[[], Console]) -> None:
    """An upgrade of vmops: the old capture process still runs; the console
    process connects first (in QEMU's backlog), then stops it."""
    console = consoles()
    old = subprocess.Popen(
        [sys.executable, "-m", CAPTURE_MODULE, "--socket", str(console.socket),
         "--log-dir", str(console.log_dir)], env=_child_env(), start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for("the old capture", lambda: capture_pid(console.log_dir) == old.pid)
        console.qemu.start()
        wait_connected(console.log_dir, 0, timeout=BOUND)
        console.qemu.accept()
        console.qemu.send(b"to the old one\n")
        _wait_for("the old one's line", lambda: read_log(console.log_dir) != b"")
        assert console.qemu.listener is not None
        handed_over = threading.Thread(target=console.qemu.accept, daemon=True)
        taken: list[int] = []
        starter = threading.Thread(target=lambda: taken.append(console.start()), daemon=True)
        starter.start()
        # The old one exits once it has stored what it read: QEMU's
        # connection ends, and QEMU accepts the next one, ours.
        assert old.wait(BOUND) == 0
        handed_over.start()
        handed_over.join(BOUND)
        starter.join(BOUND)
        assert taken and taken[0] != old.pid
        assert capture_pid(console.log_dir) == taken[0]
        console.qemu.send(b"to the new one\n")
        console.qemu.wait_stored()
        assert read_log(console.log_dir) == b"to the old one\nto the new one\n"
    finally:
        if old.poll() is None:
            old.kill()
            old.wait()


# A vmops process of its own (the service, say) using the console process:
# it has one instance captured, then (unless told to keep it) destroyed,
# and lives on until it is killed.
_USER = """
import sys
from pathlib import Path
from vmops.console import start_capture, stop_capture
log_dir = Path(sys.argv[2])
print(start_capture(Path(sys.argv[1]), log_dir, 4096), flush=True)
if sys.argv[3] == "destroy":
    stop_capture(log_dir)
print("ready", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def _user(console: Console, destroy: bool = True) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """That process, and the pid of the console process it used."""
    user = subprocess.Popen(
        [sys.executable, "-c", _USER, str(console.socket), str(console.log_dir),
         "destroy" if destroy else "keep"], env=_child_env(), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE)
    try:
        assert user.stdout is not None
        pid = int(user.stdout.readline())
        console.pids.append(pid)
        assert user.stdout.readline() == b"ready\n"
        yield user, pid
    finally:
        user.kill()
        user.wait()


def _exits(pid: int) -> bool:
    """Does ``pid`` exit (within BOUND: a bound against hanging)?"""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], BOUND)[0])
    finally:
        os.close(pidfd)


def test_it_outlives_its_last_instance_while_its_user_lives(
        consoles: Callable[[], Console]) -> None:
    """This process is its user: after the last instance is unwatched the
    console process stays, and the next start asks it (no new interpreter);
    once its user lets go (the service's clean stop) it exits."""
    first, second = consoles(), consoles()
    pid = first.start()
    files = ConsoleProcessFiles(first.socket.parent)
    stop_capture(first.log_dir, timeout=BOUND)
    assert capture_pid(first.log_dir) is None
    assert _is_alive(pid)
    assert request(files.dir, {"op": "status"}) == {
        "pid": pid, "error": None, "watching": [], "holders": [os.getpid()],
        "version": DAEMON_VERSION}
    assert second.start() == pid  # the same process: no interpreter started
    stop_capture(second.log_dir, timeout=BOUND)
    release_holds(timeout=BOUND)
    assert not _is_alive(pid)  # waited for by release_holds
    assert not files.control.exists() and not files.pid.exists()
    assert first.start() != pid  # the next start starts a new one


def test_letting_go_of_one_run_directory_keeps_the_others() -> None:
    """release_holds(run_dir=...) (Nova's driver's cleanup_host): that run
    directory's console process goes; another one this process holds
    (another driver's, in the same process) stays."""
    root = Path(tempfile.mkdtemp(prefix="vmc-", dir="/tmp"))
    made = []
    try:
        for name in ("a", "b"):
            (root / name).mkdir()
            sock = root / name / "s.sock"
            made.append(Console(sock, root / f"log-{name}", FakeQemu(sock)))
        first, second = (console.start() for console in made)
        assert first != second  # a console process per run directory
        for console in made:
            stop_capture(console.log_dir, timeout=BOUND)
        release_holds(timeout=BOUND, run_dir=root / "a")
        assert not _is_alive(first)
        assert _is_alive(second)
        assert request(root / "b", {"op": "status"})["holders"] == [os.getpid()]
    finally:
        for console in made:
            console.qemu.exit()
            stop_capture(console.log_dir, timeout=BOUND)
        release_holds(timeout=BOUND)
        shutil.rmtree(root, ignore_errors=True)
    assert not any(_is_alive(pid) for console in made for pid in console.pids)


def test_it_exits_when_its_user_is_killed(consoles: Callable[[], Console]) -> None:
    console = consoles()
    files = ConsoleProcessFiles(console.socket.parent)
    with _user(console) as (user, pid):
        assert _is_alive(pid)  # watching nothing, held by its user
        assert request(files.dir, {"op": "status"})["holders"] == [user.pid]
        user.kill()  # SIGKILL: no release
        assert _exits(pid)
    assert not files.control.exists() and not files.pid.exists()


def test_capture_outlives_its_killed_user_and_ends_with_its_last_instance(
        consoles: Callable[[], Console]) -> None:
    """A killed service leaves its guests captured; the last unwatch (from
    a process that is not a holder) then ends the console process."""
    console = consoles()
    files = ConsoleProcessFiles(console.socket.parent)
    with _user(console, destroy=False) as (user, pid):
        user.kill()
        user.wait()
        _wait_for("the hold to go", lambda: request(files.dir, {"op": "status"})[
            "holders"] == [])
        assert capture_pid(console.log_dir) == pid
    stop_capture(console.log_dir, timeout=BOUND)  # waits for it to exit
    assert not _is_alive(pid)


def test_an_upgrade_keeps_the_hold_of_a_user(consoles: Callable[[], Console]) -> None:
    """SIGHUP re-execs the console process: its user's hold is handed over
    (its pidfd), so it still stays for that user, and exits when it dies."""
    console = consoles()
    files = ConsoleProcessFiles(console.socket.parent)
    with _user(console) as (user, pid):
        os.kill(pid, signal.SIGHUP)
        _wait_for("the re-exec", lambda: "--handoff" in (command_line(pid) or []))
        assert request(files.dir, {"op": "status"})["holders"] == [user.pid]
        assert _is_alive(pid)
        user.kill()
        assert _exits(pid)
    assert not files.control.exists() and not files.pid.exists()


def test_bad_requests_are_refused_with_a_reason(consoles: Callable[[], Console]) -> None:
    console = consoles()
    console.start()
    run_dir = console.socket.parent
    bad = run_dir / "bad"
    with pytest.raises(HypervisorError, match="max_bytes must be"):
        request(run_dir, {"op": "watch", "log_dir": str(bad), "socket": f"{bad}.sock",
                          "max_bytes": 0})
    with pytest.raises(HypervisorError, match="log_dir must be an absolute path"):
        request(run_dir, {"op": "watch", "log_dir": "bad", "socket": f"{bad}.sock",
                          "max_bytes": 1})
    with pytest.raises(HypervisorError, match="unknown request"):
        request(run_dir, {"op": "explode"})
    assert request(run_dir, {"op": "status"})["watching"] == [str(console.log_dir)]
    assert not bad.exists()


def test_a_stopped_console_process_is_named_when_it_does_not_answer(
        consoles: Callable[[], Console]) -> None:
    """A SIGSTOPped console process still takes connections (its socket's
    backlog does): the request times out, and the error says which process
    and what to do, instead of a bare TimeoutError."""
    console = consoles()
    pid = console.start()
    run_dir = console.socket.parent
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(HypervisorError) as caught:
            request(run_dir, {"op": "status"}, timeout=0.5)
        assert f"the console process {pid} for {run_dir}" in caught.value.message
        assert "'status' request but did not answer within 0.5s" in caught.value.message
        assert "SIGSTOP" in caught.value.message
    finally:
        os.kill(pid, signal.SIGCONT)
    assert request(run_dir, {"op": "status"})["pid"] == pid


def test_start_capture_of_a_watched_instance_is_a_no_op(
        consoles: Callable[[], Console]) -> None:
    console = consoles()
    pid = _running(console)
    assert start_capture(console.socket, console.log_dir, 4096) == pid
    console.qemu.send(b"once\n")
    console.qemu.wait_stored()
    assert read_log(console.log_dir) == b"once\n"


def test_an_upgrade_keeps_instances_that_wait_for_their_qemu(
        consoles: Callable[[], Console]) -> None:
    waiting, running = consoles(), consoles()
    pid = waiting.start()
    _running(running)
    os.kill(pid, signal.SIGHUP)
    _wait_for("the re-exec", lambda: request(waiting.socket.parent, {"op": "status"})[
        "watching"] == sorted([str(waiting.log_dir), str(running.log_dir)]))
    assert capture_pid(waiting.log_dir) == capture_pid(running.log_dir) == pid
    waiting.qemu.start()  # its QEMU comes after the upgrade
    assert wait_connected(waiting.log_dir, 0, timeout=BOUND) == 1
    waiting.qemu.accept()
    for console in (waiting, running):
        console.qemu.send(b"after the upgrade\n")
        console.qemu.wait_stored()
        assert read_log(console.log_dir) == b"after the upgrade\n"


def test_a_poke_in_the_middle_of_an_upgrade_does_not_kill_it(
        consoles: Callable[[], Console]) -> None:
    # vmops pokes (SIGUSR1) after every QEMU start; an exec resets the
    # handlers to the default action, which for SIGUSR1 is to terminate.
    console = consoles()
    pid = _running(console)
    os.kill(pid, signal.SIGHUP)
    _wait_for("the exec", lambda: "--handoff" in (command_line(pid) or []))
    os.kill(pid, signal.SIGUSR1)  # the new interpreter is still starting
    _wait_for("the new code to serve", lambda: request(
        console.socket.parent, {"op": "status"}, timeout=BOUND)["pid"] == pid)
    assert _is_alive(pid)
    console.qemu.send(b"after the upgrade\n")
    console.qemu.wait_stored()
    assert read_log(console.log_dir) == b"after the upgrade\n"


def test_a_burst_of_tiny_writes_arrives_whole_and_in_order(
        consoles: Callable[[], Console]) -> None:
    """Two guests write numbered lines a few bytes per write, interleaved
    (as QEMU passes on a UART's output), while the console process lets
    output gather between reads (daemon.GATHER_S): each log and each
    attached client gets every byte, once, in order."""
    made = [consoles() for _ in range(2)]
    for console in made:
        _running(console)
    clients = [attach(console.log_dir) for console in made]
    for client in clients:
        client.settimeout(BOUND)
    sent = [_lines(0, 3000), _lines(100_000, 3000)]
    for start in range(0, len(sent[0]), 7):
        for console, data in zip(made, sent, strict=True):
            console.qemu.send(data[start:start + 7])
        if start % 140 == 0:
            time.sleep(0.001)  # a busy stream, not one too fast to gather
    for client, data in zip(clients, sent, strict=True):
        got = bytearray()
        while len(got) < len(data):
            chunk = client.recv(65536)
            assert chunk, "the client was closed"
            got += chunk
        assert bytes(got) == data
        client.close()
    for console, data in zip(made, sent, strict=True):
        console.qemu.wait_stored()
        assert read_log(console.log_dir) == data


def test_a_watch_on_a_full_disk_is_refused_naming_it_and_undone(tmp_path: Path) -> None:
    """The instance's log directory is on a full file system (a small tmpfs
    filled to its last page): the console process cannot write its state
    file, so the watch is refused with a reason naming the disk, undone
    (nothing watched, no temporary file), and the process, started for it,
    exits. With room again the same watch works."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "full"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    root = Path(tempfile.mkdtemp(prefix="vmc-", dir="/tmp"))  # short: socket paths
    log_dir, sock = disk / "log", root / "s.sock"
    pid = None
    try:
        log_dir.mkdir()
        ballast = disk / "ballast"
        with contextlib.suppress(OSError), ballast.open("wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        with pytest.raises(HypervisorError, match="No space left on device") as refused:
            start_capture(sock, log_dir, 4096)
        assert "capture.state" in str(refused.value)
        assert sorted(p.name for p in log_dir.iterdir()) == ["capture.lock"]
        files = ConsoleProcessFiles(root)
        _wait_for("the console process to exit", lambda: not files.control.exists())
        assert not files.watch_list.exists()
        ballast.unlink()
        pid = start_capture(sock, log_dir, 4096)
        assert request(root, {"op": "state", "log_dir": str(log_dir)})["state_error"] is None
    finally:
        try:
            if pid is not None:
                stop_capture(log_dir, timeout=BOUND)
                release_holds(timeout=BOUND)
        finally:
            subprocess.run(["umount", str(disk)], check=False)
            shutil.rmtree(root, ignore_errors=True)
    assert not _is_alive(pid)


def test_holders_beyond_the_bound_are_refused_and_captures_go_on(
        consoles: Callable[[], Console]) -> None:
    """Each holder costs the console process a pidfd: MAX_HOLDERS at most,
    the next are refused naming the bound, and the descriptors its
    captures need stay free (with its limit just above what the bound
    takes, more holders took them all before and the next watch failed)."""
    first = consoles()
    pid = _running(first)  # this process is its first holder
    run_dir = first.socket.parent
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    limit = in_use + MAX_HOLDERS + 8
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    release_r, release_w = os.pipe()
    answers_r, answers_w = os.pipe()
    children = []
    for _ in range(MAX_HOLDERS + 16):
        child = os.fork()
        if child == 0:  # a holder: asks, says what it got, waits to be let go
            try:
                os.close(release_w)
                try:
                    said = "held" if request(run_dir, {"op": "hold"})["held"] else "not held"
                except HypervisorError as exc:
                    said = exc.message
                os.write(answers_w, said.encode() + b"\n")
                os.read(release_r, 1)
            finally:
                os._exit(0)
        children.append(child)
    os.close(release_r)
    os.close(answers_w)
    try:
        answers = b""
        while answers.count(b"\n") < len(children):
            answers += os.read(answers_r, 4096)
        replies = answers.decode().splitlines()
        assert replies.count("held") == MAX_HOLDERS - 1
        refused = [s for s in replies if s != "held"]
        assert len(refused) == len(children) - (MAX_HOLDERS - 1)
        assert all(f"at most {MAX_HOLDERS}" in s for s in refused), refused[0]
        second = consoles()  # a new instance is still captured
        assert _running(second) == pid
        second.qemu.send(b"still captured\n")
        second.qemu.wait_stored()
        assert read_log(second.log_dir) == b"still captured\n"
    finally:
        os.close(release_w)
        for child in children:
            os.waitpid(child, 0)
        os.close(answers_r)
    _wait_for("the holders to go", lambda: request(run_dir, {"op": "status"})[
        "holders"] == [os.getpid()])


def test_a_new_process_with_an_ended_holders_pid_is_held(tmp_path: Path) -> None:
    """A holder ends and its pid is another process's before the console
    process has seen the end: a hold from that new process takes a pidfd
    on it, not the ended one's (which would let go of it at once). Here
    the ended holder is a child, and this process stands for the one
    that got its pid."""
    loop = Loop(tmp_path)
    child = os.fork()
    if child == 0:
        os._exit(0)
    ended = os.pidfd_open(child)
    assert select.select([ended], [], [], BOUND)[0]
    os.waitpid(child, 0)
    loop.holders[os.getpid()] = ended  # the ended holder, with this process's pid
    ours, theirs = socket.socketpair()  # SO_PEERCRED: this process
    try:
        assert loop.hold(ours)
        assert loop.live_holders() == [os.getpid()]
    finally:
        ours.close()
        theirs.close()
        for pid in list(loop.holders):
            loop.let_go(pid)
        loop.epoll.close()


def test_a_request_it_has_no_descriptor_for_waits_without_spinning_the_loop() -> None:
    """accept() failing for want of a descriptor leaves the connection
    queued and the control socket readable: polled, every turn of the loop
    would find it ready at once (a full core while it lasts). It is left
    out of the poll for CONTROL_PAUSE, then polled again, and the request
    waiting meanwhile is answered."""
    run_dir = Path(tempfile.mkdtemp(prefix="vmc-", dir="/tmp"))
    loop = Loop(run_dir)
    loop.control = loop._bind_control()
    control = loop.control.fileno()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.settimeout(BOUND)
        client.connect(str(loop.files.control))
        client.sendall(b'{"op": "status"}\n')
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        probe = os.dup(0)  # the lowest free descriptor: the next one made gets it
        os.close(probe)
        resource.setrlimit(resource.RLIMIT_NOFILE, (probe, hard))  # which is now too many
        try:
            loop.on_control(select.EPOLLIN)  # accept(): EMFILE
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert control not in dict(loop.epoll.poll(0))  # was ready again at once
        loop.resume_control(loop.control_paused_until)
        assert control in dict(loop.epoll.poll(0))
        loop.on_control(select.EPOLLIN)
        assert b'"watching": []' in client.recv(4096)
    finally:
        client.close()
        loop.control.close()
        loop.epoll.close()
        shutil.rmtree(run_dir, ignore_errors=True)
