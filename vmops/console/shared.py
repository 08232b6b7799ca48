"""The service's side of the console process (``daemon.py``): find it or
start it (never a second one), and ask it to watch or forget an instance.

Requests are one JSON line each way over ``console.ctl`` in the run
directory (0600: only the service's user may ask).

A process that asks for a watch holds the console process: it stays,
even watching nothing, while that process lives (so the next spawn does
not start an interpreter). ``release`` lets go before the end (the
service's clean stop), and waits for the console process to exit if it
then has nothing to do.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmops.console.layout import (
    DAEMON_MODULE,
    DAEMON_VERSION,
    EXIT_ALREADY_RUNNING,
    ConsoleProcessFiles,
)
from vmops.errors import HypervisorError
from vmops.socket_paths import socket_address

log = logging.getLogger(__name__)

_START_TIMEOUT = 15.0
_REQUEST_TIMEOUT = 30.0  # taking over from an old capture process may take 10 s
_POLL = 0.01
_EXEC_WAIT = 2.0  # an exec shows an empty command line for about a millisecond
_PF_KTHREAD = 0x00200000  # /proc/PID/stat flags: a kernel thread
# One start at a time from this process; other processes are kept out by
# the console process's own lock (a second one exits at once).
_starting = threading.Lock()
# The run directories whose console process this process holds, with the
# pid that holds them (a forked child does not).
_held: set[tuple[int, Path]] = set()
_held_lock = threading.Lock()
# The run directories whose console process, older than this code, this
# process has asked to upgrade: once each (the code on disk it re-execs
# may be no newer, and asking again would only re-exec it again).
_upgraded: set[tuple[int, Path]] = set()
_UPGRADE_TIMEOUT = 10.0


class NotRunning(Exception):
    """No console process answers on that run directory."""


def request(run_dir: Path, message: dict[str, Any],
            timeout: float = _REQUEST_TIMEOUT) -> dict[str, Any]:
    """Send one request to the console process; its answer. ``NotRunning``
    when none answers; ``HypervisorError`` when it refuses, or takes the
    connection but does not answer within ``timeout`` s (stopped, stuck)."""
    path = ConsoleProcessFiles(run_dir).control
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            with socket_address(path) as address:
                sock.connect(address)
        except OSError as exc:
            raise NotRunning(str(exc)) from None
        try:
            sock.sendall(json.dumps(message).encode() + b"\n")
            data = bytearray()
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionError as exc:  # it exited as we asked: ask the next one
            raise NotRunning(str(exc)) from None
        except TimeoutError:  # its socket's backlog took the connection
            raise HypervisorError(reason=_unanswered(run_dir, message, timeout)) from None
    finally:
        sock.close()
    if not data:
        raise NotRunning("the console process closed the request unanswered")
    answer = json.loads(data)
    if not isinstance(answer, dict):
        raise HypervisorError(reason=f"the console process answered {answer!r}")
    if answer.get("error"):
        raise HypervisorError(reason=f"the console process refused: {answer['error']}")
    return answer


def _unanswered(run_dir: Path, message: dict[str, Any], timeout: float) -> str:
    """Why a request went unanswered, naming the console process."""
    pid = ""
    with contextlib.suppress(OSError, ValueError):
        pid = f" {int(ConsoleProcessFiles(run_dir).pid.read_text())}"
    return (f"the console process{pid} for {run_dir} took the {message.get('op')!r} request "
            f"but did not answer within {timeout:g}s: is it stopped (SIGSTOP) or stuck? "
            "SIGCONT it, or kill it and vmops starts another (docs/console.md)")


def watch(run_dir: Path, serial_socket: Path, log_dir: Path, max_bytes: int,
          remember: Callable[[subprocess.Popen[bytes]], None], env: dict[str, str]) -> int:
    """Have the console process capture ``log_dir`` (starting it if none
    runs); its pid."""
    message = {"op": "watch", "log_dir": str(log_dir), "socket": str(serial_socket),
               "max_bytes": max_bytes}
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        try:
            answer = request(run_dir, message)
        except NotRunning:
            if time.monotonic() > deadline:
                raise HypervisorError(
                    reason=f"the console process for {run_dir} did not start within "
                    f"{_START_TIMEOUT:g}s") from None
        else:
            if answer.get("hold_error"):  # captured, but it may exit once it watches nothing
                log.warning("%s", answer["hold_error"])
            elif answer.get("held", True):  # one from before says nothing: a watch held it
                with _held_lock:
                    _held.add((os.getpid(), run_dir))
            if answer.get("version", 0) < DAEMON_VERSION:
                _upgrade_once(run_dir, int(answer["pid"]))
            return int(answer["pid"])
        _start(run_dir, remember, env)


def _upgrade_once(run_dir: Path, pid: int) -> None:
    """Ask ``run_dir``'s console process, older than this code (it outlived
    the service's upgrade: it still watched guests), to re-exec the code on
    disk, and wait until the new code answers; once per process. A
    console process from before the FIFOs would never connect to a domain
    defined now, and every boot would wait 30 s for it, then fail."""
    key = (os.getpid(), run_dir)
    with _held_lock:
        if key in _upgraded:
            return
        _upgraded.add(key)
    log.warning("the console process %d for %s runs an older vmops: asking it to upgrade "
                "itself (docs/console.md)", pid, run_dir)
    deadline = time.monotonic() + _UPGRADE_TIMEOUT
    try:
        request(run_dir, {"op": "upgrade"}, timeout=5.0)
        # Until the new code answers (the old may answer a request that
        # came with the upgrade's): by then it has its signal handlers, and
        # poke_capture's SIGUSR1 cannot kill it in the middle of its exec.
        while request(run_dir, {"op": "status"}).get("version", 0) < DAEMON_VERSION:
            if time.monotonic() > deadline:
                log.warning("the console process %d for %s still runs an older vmops after "
                            "its upgrade (is the vmops it runs elsewhere?): stop it", pid,
                            run_dir)
                return
            time.sleep(_POLL)
    except (NotRunning, HypervisorError, OSError, ValueError) as exc:
        log.warning("the console process %d for %s could not be upgraded: %s", pid, run_dir,
                    exc)


def hold(run_dir: Path) -> None:
    """Hold ``run_dir``'s console process (it stays while this process
    lives), if this process does not already; nothing if none runs."""
    key = (os.getpid(), run_dir)
    with _held_lock:
        if key in _held:
            return
    # One from before holders refuses: it exits once it watches nothing.
    try:
        held = request(run_dir, {"op": "hold"}, timeout=5.0).get("held")
    except NotRunning:
        return
    except HypervisorError as exc:
        if "unknown request" not in exc.message:  # one from before holders
            log.warning("%s", exc.message)  # it goes once it watches nothing
        return
    if held:
        with _held_lock:
            _held.add(key)


def release(run_dir: Path, timeout: float = 5.0) -> None:
    """Let go of ``run_dir``'s console process; if it has nothing left to
    do (no watch, no other holder), wait up to ``timeout`` s for it to exit.
    ``HypervisorError`` if it refuses (a console process from before holds)."""
    with _held_lock:
        _held.discard((os.getpid(), run_dir))
    pidfd = _pidfd_of(run_dir)
    try:
        answer = request(run_dir, {"op": "release"}, timeout=timeout)
        if pidfd is not None and answer.get("exiting"):
            with selectors.DefaultSelector() as selector:  # see process._exited
                selector.register(pidfd, selectors.EVENT_READ)
                selector.select(timeout)
    except NotRunning:
        pass
    finally:
        if pidfd is not None:
            os.close(pidfd)


def release_all(timeout: float = 5.0, only: Path | None = None) -> None:
    """Let go of every console process this process holds (``release``),
    or with ``only`` of that run directory's; one that refuses or does not
    answer in time is left to see this process end."""
    with _held_lock:
        run_dirs = [run_dir for pid, run_dir in _held
                    if pid == os.getpid() and (only is None or run_dir == only)]
    for run_dir in run_dirs:
        with contextlib.suppress(HypervisorError, OSError, ValueError):
            release(run_dir, timeout)


def _pidfd_of(run_dir: Path) -> int | None:
    """A pidfd on ``run_dir``'s console process (None if none runs), taken
    before asking it anything that may make it exit: its pid cannot be
    another process's by the time we wait on it."""
    try:
        pid = int(request(run_dir, {"op": "status"}, timeout=5.0)["pid"])
        pidfd = os.pidfd_open(pid)
    except (NotRunning, HypervisorError, OSError, ValueError, KeyError):
        return None
    its_dir = daemon_run_dir(pid)
    if its_dir is None or os.path.realpath(its_dir) != os.path.realpath(run_dir):
        os.close(pidfd)
        return None
    return pidfd


def state_error(run_dir: Path, log_dir: Path) -> str | None:
    """Why the console process cannot write ``log_dir``'s pid or state file
    (a full disk: its state file would then never say it connected); None
    if it can, or if no console process (or one without this request)
    answers."""
    try:
        answer = request(run_dir, {"op": "state", "log_dir": str(log_dir)}, timeout=5.0)
    except (NotRunning, HypervisorError, OSError, ValueError):
        return None
    error = answer.get("state_error")
    return error if isinstance(error, str) else None


def unwatch(run_dir: Path, log_dir: Path) -> bool:
    """Stop capturing ``log_dir``; True if the console process now exits
    (it watches nothing). False too if none runs."""
    try:
        return bool(request(run_dir, {"op": "unwatch", "log_dir": str(log_dir)})["exiting"])
    except NotRunning:
        return False


def _start(run_dir: Path, remember: Callable[[subprocess.Popen[bytes]], None],
           env: dict[str, str]) -> None:
    """Start a console process unless one answers; return once one answers
    (or the one we started has exited)."""
    with _starting:
        with contextlib.suppress(NotRunning):
            request(run_dir, {"op": "status"}, timeout=5.0)
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", DAEMON_MODULE, "--run-dir", str(run_dir.absolute())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, cwd="/", env=env)
        remember(proc)  # to be reaped when it exits
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(NotRunning):
                request(run_dir, {"op": "status"}, timeout=5.0)
                return
            status = proc.poll()
            if status == EXIT_ALREADY_RUNNING:
                return  # another one holds the lock (perhaps exiting): ask again
            if status is not None:
                raise HypervisorError(
                    reason=f"the console process for {run_dir} exited with status {status} "
                    f"as it started; run {sys.executable} -m {DAEMON_MODULE} --run-dir "
                    f"{run_dir} to see why")
            time.sleep(_POLL)
        proc.kill()
        proc.wait()
        raise HypervisorError(
            reason=f"the console process for {run_dir} did not start within "
            f"{_START_TIMEOUT:g}s")


def command_line(pid: int) -> list[str] | None:
    """``pid``'s arguments; None if it is gone, a zombie or a kernel thread.

    A process in the middle of an exec (the console process upgrading
    itself) shows an empty command line for a moment: wait that out."""
    deadline = time.monotonic() + _EXEC_WAIT
    while True:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        if raw:
            return [os.fsdecode(arg) for arg in raw.split(b"\0")]
        fields = stat.rpartition(")")[2].split()
        if fields[0] in ("Z", "X") or int(fields[6]) & _PF_KTHREAD \
                or time.monotonic() > deadline:
            return None
        time.sleep(_POLL / 2)


def daemon_run_dir(pid: int) -> Path | None:
    """The run directory of console process ``pid``; None if ``pid`` is not one."""
    args = command_line(pid)
    if args is None or DAEMON_MODULE not in args or "--run-dir" not in args:
        return None
    index = args.index("--run-dir")
    return Path(args[index + 1]) if index + 1 < len(args) else None


def watches(run_dir: Path, log_dir: Path) -> bool:
    """Does the watch list in ``run_dir`` name ``log_dir``?"""
    try:
        raw = json.loads(ConsoleProcessFiles(run_dir).watch_list.read_bytes())
    except (OSError, ValueError):
        return False
    wanted = os.path.realpath(log_dir)
    return isinstance(raw, list) and any(
        isinstance(item, dict) and isinstance(item.get("log_dir"), str)
        and os.path.realpath(item["log_dir"]) == wanted for item in raw)


def held_idle_pid(run_dir: Path, holder: int) -> int | None:
    """The pid of ``run_dir``'s console process if it watches nothing and
    ``holder`` alone holds it: it stays for that process (a running
    service), so it is not left behind while that runs; None otherwise
    (none answers, it watches something, or another process holds it,
    or none does)."""
    try:
        status = request(run_dir, {"op": "status"}, timeout=5.0)
    except (NotRunning, HypervisorError, OSError, ValueError):
        return None
    if status.get("watching") == [] and status.get("holders") == [holder]:
        return int(status["pid"])
    return None
