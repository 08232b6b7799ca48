"""Starting, finding, watching and stopping an instance's capture.

Every instance is captured by the one console process of its run
directory (the serial socket's directory: ``daemon.py``, reached through
``shared.py``); a vmops from before it ran one capture process per
instance (``capture.py``), which the console process takes over. Both run
in their own session with stdio on /dev/null, so they outlive the vmops
service. Everything here finds the capture again from the log directory
alone: the pid file, checked against ``/proc/<pid>/cmdline`` (and, for the
console process, its watch list) so that a recycled pid is never mistaken
for it, and the state file it keeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket as socketlib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import vmops
from vmops.console import shared
from vmops.console.layout import CAPTURE_MODULE, EXIT_ALREADY_RUNNING, LogFiles
from vmops.errors import Conflict, HypervisorError
from vmops.socket_paths import MAX_SOCKET_PATH, socket_address

_POLL_INTERVAL = 0.02
# wait_connected reads the state file this soon after it was poked, then
# twice as late each time up to _POLL_INTERVAL: a poked console process
# connects within a millisecond or two, and a first wait of the whole
# interval put ~20 ms on every start of a stopped guest (issue #17).
_FIRST_POLL = 0.0005
# While waiting for a connection, how often the console process is asked
# whether it can write the instance's state file at all (a full disk).
_ASK_INTERVAL = 0.1
_START_TIMEOUT = 10.0
_KILL_TIMEOUT = 5.0

# Capture processes this process started, kept so they can be reaped:
# a capture process that dies while we run would otherwise stay a zombie.
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()
# True: the one console process per run directory captures every instance;
# False: one capture process per instance (what vmops did before it).
USE_CONSOLE_PROCESS = True


@dataclass(frozen=True)
class _State:
    pid: int | None
    connected: bool
    generation: int
    error: str | None


def start_capture(socket: Path, log_dir: Path, max_bytes: int, python: str = sys.executable) -> int:
    """Have ``log_dir`` captured from ``socket``; return the capturing pid.

    A no-op returning the running process's pid if there is one (but a
    per-instance capture process left by an older vmops is taken over by
    the console process). Returns once the process holds the directory's
    lock, not once it is connected: use ``wait_connected`` for that.
    """
    running = capture_pid(log_dir)
    if running is not None and not USE_CONSOLE_PROCESS:
        return running
    run_dir = shared.daemon_run_dir(running) if running is not None else None
    if running is not None and run_dir is not None:
        shared.hold(run_dir)  # as a watch would: this process uses it now
        return running
    if max_bytes < 1:
        raise HypervisorError(
            reason=f"the console log size limit must be at least 1 byte, not {max_bytes}"
        )
    socket = socket.absolute()
    if len(os.fsencode(socket)) > MAX_SOCKET_PATH:
        raise HypervisorError(
            reason=f"serial socket path {socket} is longer than the "
            f"{MAX_SOCKET_PATH} bytes a UNIX socket address can hold"
        )
    log_dir = log_dir.absolute()
    log_dir.mkdir(parents=True, exist_ok=True)
    if USE_CONSOLE_PROCESS:
        return shared.watch(socket.parent, socket, log_dir, max_bytes, _remember,
                            _child_env())
    command = [
        python, "-m", CAPTURE_MODULE,
        "--socket", str(socket), "--log-dir", str(log_dir), "--max-bytes", str(max_bytes),
    ]  # fmt: skip
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd="/",  # keep no directory of ours busy
        env=_child_env(),
    )
    with _children_lock:
        _children[proc.pid] = proc
    try:
        return _wait_started(proc, log_dir, command)
    finally:
        _reap(proc.pid)  # forget it at once if it did not stay


def release_holds(timeout: float = 5.0, run_dir: Path | None = None) -> None:
    """This process no longer needs the console processes it used (with
    ``run_dir``: that run directory's only): each one that then watches
    nothing and has no other holder exits, and is waited for (up to
    ``timeout`` s each). The service calls it as it stops, Nova's driver at
    ``cleanup_host``; a process that just exits needs not (its end lets go
    too)."""
    shared.release_all(timeout, only=run_dir)
    with _children_lock:
        for pid, proc in list(_children.items()):
            if proc.poll() is not None:  # reaped: no zombie left
                del _children[pid]


def capture_pid(log_dir: Path) -> int | None:
    """The pid of the capture process running for ``log_dir``, if any."""
    pid = _read_pid(LogFiles(log_dir).pid)
    if pid is None:
        return None
    _reap(pid)
    return pid if _is_capture_for(pid, log_dir) else None


def capture_generation(log_dir: Path) -> tuple[bool, int]:
    """``(connected, generation)``: is the capture process connected to a
    QEMU now, and how many connections it has made over the log's life."""
    state = _read_state(LogFiles(log_dir))
    connected = state.connected and state.pid is not None and state.pid == capture_pid(log_dir)
    return connected, state.generation


def poke_capture(log_dir: Path) -> None:
    """Tell the capture process to try connecting now (QEMU just started).

    Only a process that has written its state file gets the signal: it
    installs its SIGUSR1 handler before that, and the default action of
    SIGUSR1 would kill it."""
    state = _read_state(LogFiles(log_dir))
    if state.pid is not None and state.pid == capture_pid(log_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGUSR1)


def attach(log_dir: Path) -> socketlib.socket:
    """A connection to the capture process's console socket (blocking): it
    receives the guest's output from now on, and what is sent on it goes to
    the guest. It ends when the guest's QEMU does (fanout.py)."""
    path = LogFiles(log_dir).console_socket
    sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    try:
        with socket_address(path) as address:
            sock.connect(address)
    except OSError as exc:
        sock.close()
        raise Conflict(reason=f"the serial console cannot be reached: no console capture "
                       f"process listens on {path} ({exc.strerror or exc})") from None
    return sock


def wait_connected(log_dir: Path, after_generation: int, timeout: float) -> int:
    """Wait until the capture process is connected with a generation above
    ``after_generation`` (i.e. to a QEMU started after that was read);
    return that generation. Fails at once if the console process cannot
    write the state file this reads (a full disk), naming why."""
    start = time.monotonic()
    deadline = start + timeout
    asked_at = start
    delay = _FIRST_POLL
    while True:
        state = _read_state(LogFiles(log_dir))
        pid = capture_pid(log_dir)
        if pid is None:
            raise HypervisorError(
                reason=f"no console capture process is running for {log_dir}: "
                "the guest's serial output would not be logged"
            )
        if state.connected and state.pid == pid and state.generation > after_generation:
            return state.generation
        now = time.monotonic()
        if now - asked_at >= _ASK_INTERVAL:
            asked_at = now
            _raise_if_unwritable(pid, log_dir)
        if now >= deadline:
            raise HypervisorError(
                reason=f"the console capture process (pid {pid}) for {log_dir} did not "
                f"connect to the guest's serial port within {timeout:g}s "
                f"(generation {state.generation}, waiting for one above "
                f"{after_generation}; last error: {state.error or 'none'})"
            )
        time.sleep(delay)
        delay = min(delay * 2, _POLL_INTERVAL)


def _raise_if_unwritable(pid: int, log_dir: Path) -> None:
    run_dir = shared.daemon_run_dir(pid)
    if run_dir is None:
        return
    error = shared.state_error(run_dir, log_dir.absolute())
    if error is not None:
        raise HypervisorError(
            reason=f"the console capture process (pid {pid}) for {log_dir} cannot keep "
            f"its files: {error}; the guest's serial output would not be logged"
        )


def stop_capture(log_dir: Path, timeout: float = 5.0) -> None:
    """SIGTERM the capture process and wait; SIGKILL it after ``timeout``.

    Fine if none is running. Raises only if the process survives SIGKILL.
    """
    pid = capture_pid(log_dir)
    if pid is None:
        return
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        # Checked again with the process pinned by the pidfd: the signals
        # below cannot reach a process that took over a recycled pid.
        if not _is_capture_for(pid, log_dir):
            return
        run_dir = shared.daemon_run_dir(pid)
        if run_dir is not None:
            _unwatch(pidfd, run_dir, log_dir, timeout)
            return
        if _signal_and_wait(pidfd, signal.SIGTERM, timeout):
            return
        if not _signal_and_wait(pidfd, signal.SIGKILL, _KILL_TIMEOUT):
            raise HypervisorError(
                reason=f"the console capture process (pid {pid}) for {log_dir} "
                "did not exit after SIGKILL"
            )
    finally:
        os.close(pidfd)
        _reap(pid)


def _unwatch(pidfd: int, run_dir: Path, log_dir: Path, timeout: float) -> None:
    """Have the console process forget ``log_dir``; if that was its last
    instance, wait for it to exit (so it is reaped, and gone, on return)."""
    if shared.unwatch(run_dir, log_dir):
        _exited(pidfd, timeout)


def _wait_started(proc: subprocess.Popen[bytes], log_dir: Path, command: list[str]) -> int:
    files = LogFiles(log_dir)
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if _read_pid(files.pid) == proc.pid:
            return proc.pid
        status = proc.poll()
        if status == EXIT_ALREADY_RUNNING:
            # Lost a race with another start: that one is the capture.
            other = capture_pid(log_dir)
            if other is not None:
                return other
        elif status is not None:
            raise HypervisorError(
                reason=f"the console capture process for {log_dir} exited with "
                f"status {status} as it started; run {' '.join(command)} to see why"
            )
        time.sleep(_POLL_INTERVAL / 2)
    proc.kill()
    proc.wait()
    raise HypervisorError(
        reason=f"the console capture process for {log_dir} did not start within {_START_TIMEOUT:g}s"
    )


def _child_env() -> dict[str, str]:
    """Our environment, with the vmops we run first on the import path, so
    that the capture process runs the same code even from a source tree."""
    env = dict(os.environ)
    package_root = str(Path(vmops.__file__).resolve().parent.parent)
    paths = [package_root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _signal_and_wait(pidfd: int, signum: int, timeout: float) -> bool:
    """Send a signal through the pidfd; True if the process exited in time."""
    try:
        signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        return True
    return _exited(pidfd, timeout)


def _exited(pidfd: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for the process to exit (its pidfd becomes
    readable). Through ``selectors``, not ``select.poll``: a process that
    monkey-patches with eventlet (nova-compute running vmops' Nova driver)
    has no ``select.poll``, and its patched ``selectors`` waits in the hub."""
    with selectors.DefaultSelector() as selector:
        selector.register(pidfd, selectors.EVENT_READ)
        return bool(selector.select(max(0.0, timeout)))


def _remember(proc: subprocess.Popen[bytes]) -> None:
    with _children_lock:
        _children[proc.pid] = proc


def _reap(pid: int) -> None:
    with _children_lock:
        proc = _children.get(pid)
        if proc is not None and proc.poll() is not None:
            del _children[pid]


def _is_capture_for(pid: int, log_dir: Path) -> bool:
    """Is ``pid`` a capture process (not a zombie) writing to ``log_dir``?"""
    args = shared.command_line(pid)
    if args is None:
        return False
    run_dir = shared.daemon_run_dir(pid)
    if run_dir is not None:
        return shared.watches(run_dir, log_dir)
    if CAPTURE_MODULE not in args:
        return False
    its_dir = _option_value(args, "--log-dir")
    if its_dir is None:
        return False
    if not os.path.isabs(its_dir):
        try:
            its_dir = os.path.join(os.readlink(f"/proc/{pid}/cwd"), its_dir)
        except OSError:
            return False
    return os.path.realpath(its_dir) == os.path.realpath(log_dir)


def _option_value(args: list[str], option: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(option + "="):
            return arg.partition("=")[2]
    return None


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _read_state(files: LogFiles) -> _State:
    try:
        raw = json.loads(files.state.read_bytes())
    except (OSError, ValueError):
        return _State(pid=None, connected=False, generation=0, error=None)
    if not isinstance(raw, dict):
        raw = {}
    pid, generation, error = raw.get("pid"), raw.get("generation"), raw.get("error")
    return _State(
        pid=pid if isinstance(pid, int) else None,
        connected=raw.get("connected") is True,
        generation=generation if isinstance(generation, int) else 0,
        error=error if isinstance(error, str) else None,
    )
