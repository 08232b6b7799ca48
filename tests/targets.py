"""Real remote volume targets for tests, on loopback, started and stopped by
the test itself: an NBD export (``qemu-nbd``) and an iSCSI target (Debian's
userspace ``tgtd``, a private instance: its own control port, hence its
own control socket ``/var/run/tgtd/socket.<port>``, and its own portal
port, so it never meets a system tgtd).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TGTD_SOCKET_DIR = Path("/var/run/tgtd")
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class NbdExport:
    port: int
    export: str
    image: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"nbd://127.0.0.1:{self.port}/{self.export}"

    def stop(self) -> None:
        _stop(self.proc)

    def restart(self) -> None:
        """The same export on the same port again (after :meth:`stop`)."""
        self.proc = subprocess.Popen(self.proc.args, stdin=subprocess.DEVNULL)
        _wait_listening(self.port, self.proc, "qemu-nbd")


@contextlib.contextmanager
def nbd_export(tmp: Path, size_mib: int = 64, export: str = "data") -> Iterator[NbdExport]:
    """A raw image served by qemu-nbd on 127.0.0.1 (``--persistent``: more
    than one client, one after the other)."""
    image = tmp / f"nbd-{export}.raw"
    with open(image, "wb") as f:
        f.truncate(size_mib << 20)
    port = free_port()
    proc = subprocess.Popen(["qemu-nbd", "--persistent", "--shared=4", "-f", "raw",
                             "--bind", "127.0.0.1", "--port", str(port), "-x", export,
                             str(image)], stdin=subprocess.DEVNULL)
    served = NbdExport(port, export, image, proc)
    try:
        _wait_listening(port, proc, "qemu-nbd")
        yield served
    finally:
        served.stop()  # the process it runs now: a test may have restarted it


@dataclass
class IscsiTarget:
    port: int
    control_port: int
    iqn: str
    lun_image: Path
    chap_user: str
    chap_secret: str
    proc: subprocess.Popen[bytes]

    def url(self, lun: int = 1) -> str:
        return f"iscsi://127.0.0.1:{self.port}/{self.iqn}/{lun}"

    def stop(self) -> None:
        """tgtd ignores SIGTERM while it has targets: delete them, then the
        daemon ("system"), and kill it if it still runs."""
        if self.proc.poll() is None:
            with contextlib.suppress(subprocess.SubprocessError):
                _tgtadm(self.control_port, "--mode", "target", "--op", "delete", "--force",
                        "--tid", "1")
                _tgtadm(self.control_port, "--mode", "system", "--op", "delete")
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for leftover in (f"socket.{self.control_port}", f"socket.{self.control_port}.lock"):
            (TGTD_SOCKET_DIR / leftover).unlink(missing_ok=True)

    def kill(self) -> None:
        """tgtd dies (SIGKILL): its portal stops answering, its sessions break."""
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        """The same tgtd again (after :meth:`kill`): the same portal, control
        port, target, LUN file and CHAP account."""
        for leftover in (f"socket.{self.control_port}", f"socket.{self.control_port}.lock"):
            (TGTD_SOCKET_DIR / leftover).unlink(missing_ok=True)
        self.proc = subprocess.Popen(self.proc.args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _configure(self)


def _tgtadm(control_port: int, *args: str) -> None:
    subprocess.run(["tgtadm", "-C", str(control_port), "--lld", "iscsi", *args],
                   check=True, capture_output=True, timeout=30)


def _free_control_port() -> int:
    for _ in range(100):
        port = random.randint(2000, 32000)  # tgtd takes at most 32767
        if not (TGTD_SOCKET_DIR / f"socket.{port}").exists():
            return port
    raise RuntimeError(f"no free tgtd control port: {TGTD_SOCKET_DIR} is full")


@contextlib.contextmanager
def iscsi_target(tmp: Path, size_mib: int = 48, chap_user: str = "vmopsuser",
                 chap_secret: str = "chap-secret-1234",
                 from_image: Path | None = None) -> Iterator[IscsiTarget]:
    """A private tgtd with one target (LUN 1: a raw file of ``size_mib``,
    blank or starting with a raw copy of the qcow2 ``from_image``),
    reachable from 127.0.0.1 only with CHAP ``chap_user``/``chap_secret``
    (empty user: no CHAP)."""
    image = tmp / "iscsi-lun1.raw"
    if from_image is not None:
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(from_image),
                        str(image)], check=True, capture_output=True)
    with open(image, "ab") as f:
        f.truncate(size_mib << 20)
    port, control = free_port(), _free_control_port()
    iqn = f"iqn.2026-12.dev.vmops.test:{os.getpid()}-{port}"
    proc = subprocess.Popen(["tgtd", "-f", "-C", str(control),
                             "--iscsi", f"portal=127.0.0.1:{port}"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    target = IscsiTarget(port, control, iqn, image, chap_user, chap_secret, proc)
    try:
        _configure(target)
        yield target
    finally:
        target.stop()


def _configure(t: IscsiTarget) -> None:
    """Once tgtd listens: the target, LUN 1 (its file), loopback only, CHAP."""
    _wait_listening(t.port, t.proc, "tgtd")
    _tgtadm(t.control_port, "--mode", "target", "--op", "new", "--tid", "1",
            "--targetname", t.iqn)
    _tgtadm(t.control_port, "--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1",
            "--backing-store", str(t.lun_image))
    _tgtadm(t.control_port, "--mode", "target", "--op", "bind", "--tid", "1",
            "--initiator-address", "127.0.0.1")
    if t.chap_user:
        _tgtadm(t.control_port, "--mode", "account", "--op", "new", "--user", t.chap_user,
                "--password", t.chap_secret)
        _tgtadm(t.control_port, "--mode", "account", "--op", "bind", "--tid", "1",
                "--user", t.chap_user)
