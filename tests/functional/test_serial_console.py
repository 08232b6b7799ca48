"""The interactive serial console with a real guest: a command typed through
`vmops console` runs in the test guest (its console shell) and its answer
comes back, while the console log keeps every byte; the state rules."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

from tests.functional.conftest import Vmops

ANSWER_WAIT_S = 120.0  # only a bound against hanging: a loaded host is slow


def _read_until(proc: subprocess.Popen[bytes], wanted: bytes) -> bytes:
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + ANSWER_WAIT_S
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{wanted!r} not seen; the console showed {seen[-2000:]!r}"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, f"the console ended before {wanted!r}: {seen[-2000:]!r}"
            seen += chunk
    return seen


def test_type_a_command_and_read_its_answer(vmops: Vmops) -> None:
    vmops.run("spawn", "sc1", "--image", "tiny", "--flavor", "m1.tiny")
    vmops.wait_console("sc1", r"VMOPS-HEARTBEAT 1\b")  # its console shell has started
    proc = subprocess.Popen([sys.executable, "-m", "vmops", "console", "sc1", "--linger", "1"],
                            env=vmops.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        hello = proc.stderr.readline()
        assert b"connected to the serial console of sc1" in hello, hello
        proc.stdin.write(b"echo VMOPS-ANSWER-$((6*7))\n")
        proc.stdin.flush()
        shown = _read_until(proc, b"VMOPS-ANSWER-42")
        proc.stdin.close()  # the input ends: it detaches after --linger
        shown += proc.stdout.read() if proc.stdout else b""
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"detached (the input ended)" in proc.stderr.read()
    assert b"echo VMOPS-ANSWER-$((6*7))" in shown  # the guest's tty echoed the typing
    # Every byte the console showed is in the log, in order, with the typing's
    # echo and the answer.
    assert shown in vmops.console("sc1")
    vmops.run("stop", "sc1", "--hard")
    stopped = vmops.run("console", "sc1", check=False)
    assert stopped.returncode == 1
    assert "cannot open the serial console of instance 'sc1' while it is stopped" in \
        stopped.stderr, stopped.stderr
    missing = vmops.run("console", "no-such-server", check=False)
    assert missing.returncode == 1 and "no-such-server" in missing.stderr
