"""Cycles through a real ``vmops serve`` and its HTTP API."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.soak.measure import Sample, growth, sample, settled
from vmops import config, console
from vmops.cli.client import ApiError, Client
from vmops.compute.catalog import Catalog
from vmops.errors import ServiceUnavailable
from vmops.store import Store

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
FAKE_TIMEOUT_S = 60.0
GUEST_TIMEOUT_S = 180.0
BUSY_RETRY_S = 10.0
NAME = "soak"  # one name for every cycle: libvirt keeps one QEMU log per name
FAKE_SETTINGS = {"VMOPS_LIBVIRT_URI": "fake:///", "VMOPS_NETWORK_MODE": "user",
                 "VMOPS_ACCEL": "tcg"}
GUEST_SETTINGS = {"VMOPS_NETWORK_MODE": "user", "VMOPS_ACCEL": "tcg",
                  "VMOPS_SHUTDOWN_RETRY_INTERVAL": "2", "VMOPS_SHUTDOWN_TIMEOUT": "30"}


class ConsoleSocket:
    """Stands in for QEMU's serial socket on the fake hypervisor, so the
    console capture connects and spawn and start can finish; every
    connection is ended at once (the capture reconnects: a start is then
    seen as a new connection)."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.listener.settimeout(0.1)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                self.listener.accept()[0].close()
            except (TimeoutError, OSError):
                continue

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.listener.close()


@dataclass
class Soak:
    """One state directory, one service, the samples taken."""

    state_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    samples: list[tuple[str, Sample]] = field(default_factory=list)
    busy_retries: int = 0

    @property
    def client(self) -> Client:
        return Client(self.state_dir, autostart=False, timeout=120.0)

    def serve(self) -> None:
        with open(self.state_dir / "service.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vmops", "--state-dir", str(self.state_dir), "serve"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env, cwd=REPO)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vmops serve exited: {self.log_tail()}")
            try:
                self.client.get("/flavors")
                return
            except ServiceUnavailable:
                time.sleep(0.05)
        raise RuntimeError(f"vmops serve did not answer: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self) -> str:
        return (self.state_dir / "service.log").read_text(errors="replace")[-3000:]

    def measure(self, label: str, floor: Sample | None = None) -> Sample:
        assert self.proc is not None
        taken = settled(self.proc.pid, self.state_dir, floor)
        self.samples.append((label, taken))
        return taken

    # -- the API ---------------------------------------------------------------
    def spawn(self, image: str) -> str:
        server = self.client.post("/servers", {"server": {
            "name": NAME, "imageRef": image, "flavorRef": "m1.tiny"}})["server"]
        return str(server["id"])

    def action(self, server_id: str, body: dict[str, Any]) -> None:
        self._busy_retried(lambda: self.client.post(f"/servers/{server_id}/action", body))

    def _busy_retried(self, call: Callable[[], object]) -> None:
        """``call``, again while it is refused as busy: the record says the
        last task ended a moment before compute lets the instance go
        (Compute._finish writes it first), and the soak asks at once."""
        deadline = time.monotonic() + BUSY_RETRY_S
        while True:
            try:
                call()
                return
            except ApiError as exc:
                if exc.status != 409 or "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                self.busy_retries += 1
                time.sleep(0.05)

    def wait_status(self, server_id: str, status: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            server = self.client.get(f"/servers/{server_id}")["server"]
            if server["status"] == status and server["OS-EXT-STS:task_state"] is None:
                return
            if server["status"] == "ERROR" or time.monotonic() > deadline:
                raise RuntimeError(f"{server_id} is {server['status']} "
                                   f"({server.get('fault')}), not {status}: {self.log_tail()}")
            time.sleep(0.05)

    def destroy(self, server_id: str, timeout: float) -> None:
        self._busy_retried(lambda: self.client.delete(f"/servers/{server_id}"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.client.get(f"/servers/{server_id}")
            except ApiError as exc:
                if exc.status == 404:
                    return
                raise
            time.sleep(0.05)
        raise RuntimeError(f"{server_id} was not destroyed: {self.log_tail()}")

    def heartbeats(self, server_id: str, wanted: int, timeout: float) -> None:
        """Wait for the guest's console to show ``wanted`` boots' first heartbeat."""
        deadline = time.monotonic() + timeout
        pattern = re.compile(rb"VMOPS-HEARTBEAT 1\b")
        while len(pattern.findall(self.client.get(f"/servers/{server_id}/console-log"))) \
                < wanted:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server_id}: boot {wanted} not seen on its console")
            time.sleep(0.25)


def fake_cycle(soak: Soak) -> None:
    server_id = soak.spawn("base")
    console = ConsoleSocket(config.load(soak.state_dir, env={}).run_dir / f"{server_id}.sock")
    try:
        soak.wait_status(server_id, "ACTIVE", FAKE_TIMEOUT_S)
        soak.action(server_id, {"os-stop": None})
        soak.wait_status(server_id, "SHUTOFF", FAKE_TIMEOUT_S)
        soak.action(server_id, {"os-start": None})
        soak.wait_status(server_id, "ACTIVE", FAKE_TIMEOUT_S)
        soak.destroy(server_id, FAKE_TIMEOUT_S)
    finally:
        console.close()


def guest_cycle(soak: Soak) -> None:
    server_id = soak.spawn("tiny")
    soak.wait_status(server_id, "ACTIVE", GUEST_TIMEOUT_S)
    soak.heartbeats(server_id, 1, GUEST_TIMEOUT_S)
    soak.action(server_id, {"os-stop": None})
    soak.wait_status(server_id, "SHUTOFF", GUEST_TIMEOUT_S)
    soak.action(server_id, {"os-start": None})
    soak.wait_status(server_id, "ACTIVE", GUEST_TIMEOUT_S)
    soak.heartbeats(server_id, 2, GUEST_TIMEOUT_S)  # the same console log, a second boot
    soak.destroy(server_id, GUEST_TIMEOUT_S)


def import_image(state_dir: Path, name: str, path: Path) -> None:
    settings = config.load(state_dir, env={})
    store = Store(settings.db_path)
    try:
        Catalog.from_settings(settings, store).import_image(name, str(path), background=False)
    finally:
        store.close()


@contextmanager
def soak_dir(settings: dict[str, str], image: tuple[str, Path] | None = None) -> Iterator[Soak]:
    """A short state directory with a service on it; removed at the end."""
    state_dir = Path(tempfile.mkdtemp(prefix="vmops-soak-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMOPS_")}
    env.update(settings)
    soak = Soak(state_dir, env)
    try:
        if image is None:
            base = state_dir / "base.qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"],
                           check=True)
            image = ("base", base)
        import_image(state_dir, *image)
        soak.serve()
        yield soak
    finally:
        soak.stop()
        for pid_file in state_dir.glob("instances/*/capture.pid"):  # a cycle that failed
            console.stop_capture(pid_file.parent)  # (captures outlive the service)
        kill_guests(state_dir)  # a cycle cut short (Ctrl-C, a failure) leaves its guest running
        shutil.rmtree(state_dir, ignore_errors=True)


def kill_guests(state_dir: Path) -> None:
    """SIGKILL every QEMU and console process whose command line names
    ``state_dir``: guests outlive a stopped service on purpose, and the soak's
    own must not outlive the soak."""
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True,
                        check=True).stdout
    for line in ps.splitlines():
        pid, _, args = line.strip().partition(" ")
        if str(state_dir) in args and ("qemu-system" in args or "vmops.console" in args):
            with suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def run_cycles(soak: Soak, cycle: Callable[[Soak], None], cycles: int, warmup: int,
               report: Callable[[str], None] = print) -> list[str]:
    """``cycles`` cycles; samples at start, after ``warmup`` cycles and at the
    end (each with the service idle); returns what grew beyond its bound."""
    start = soak.measure("start")
    report(start.row("start"))
    warm = start
    began = time.monotonic()
    for n in range(1, cycles + 1):
        cycle(soak)
        if n == warmup:
            warm = soak.measure("after warm-up")
            report(warm.row(f"warm-up ({n})"))
        elif n % max(1, cycles // 10) == 0:
            assert soak.proc is not None
            now = sample(soak.proc.pid, soak.state_dir)
            report(f"  {n} cycles, {time.monotonic() - began:.0f} s, "
                   f"rss {now.rss_kib / 1024:.1f} MiB, vmops.db "
                   f"{(soak.state_dir / 'vmops.db').stat().st_size // 1024} KiB")
    end = soak.measure("end", floor=warm)
    report(end.row(f"end ({cycles})"))
    report(f"{time.monotonic() - began:.0f} s; requests retried because the instance was "
           f"still busy just after its task ended: {soak.busy_retries}")
    return growth(warm, end)
