"""Functional fixtures: a real vmops service on a real embedded libvirt,
real QEMU guests from the test image, under TCG.

One service per session (the first domain define probes QEMU for several
seconds, cached in the embed root); each test gets a factory that destroys
every instance the test made, even when the test fails, and the session
ends by checking that nothing (domain, QEMU process, capture process,
instance file) was left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmops import socket_paths
from vmops.cli.client import Client
from vmops.console import shared
from vmops.network import nftables

REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT_S = 120.0
# Short waits so the fallback paths are exercised in seconds, not minutes.
SERVICE_ENV = {
    "VMOPS_ACCEL": "tcg",
    "VMOPS_WAIT_SOFT_REBOOT_SECONDS": "10",
    "VMOPS_SHUTDOWN_RETRY_INTERVAL": "2",
    "VMOPS_SHUTDOWN_TIMEOUT": "20",
    # User-mode NICs unless a test asks for the vmops network (test_network.py
    # gives each of its services a bridge of its own, and removes it).
    "VMOPS_NETWORK_MODE": "user",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/functional" in str(item.fspath):
            item.add_marker(pytest.mark.functional)


@pytest.fixture(scope="session")
def test_image_dir() -> Path:
    out = Path(os.environ.get("VMOPS_TEST_IMAGE_DIR", REPO / ".cache" / "test-image"))
    subprocess.run([sys.executable, str(REPO / "tools" / "testimage" / "build.py"),
                    "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    return out


class Vmops:
    """Drives one state directory through the real CLI and the API client."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.env = {**os.environ, **SERVICE_ENV, "VMOPS_STATE_DIR": str(state_dir)}
        self.client = Client(state_dir, autostart=False)

    def run(self, *args: str, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "vmops", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"vmops {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def server(self, name: str) -> dict[str, Any]:
        server: dict[str, Any] = self.client.get(f"/servers/{name}")["server"]
        return server

    def console(self, name: str) -> bytes:
        data: bytes = self.client.get(f"/servers/{name}/console-log")
        return data

    def wait_console(self, name: str, pattern: str, count: int = 1,
                     timeout: float = BOOT_TIMEOUT_S) -> list[re.Match[bytes]]:
        """Wait until ``pattern`` appears ``count`` times in the console log."""
        regex = re.compile(pattern.encode())
        deadline = time.monotonic() + timeout
        while True:
            found = list(regex.finditer(self.console(name)))
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                tail = self.console(name)[-2000:].decode(errors="replace")
                raise AssertionError(f"{pattern!r} x{count} not in {name}'s console after "
                                     f"{timeout:g}s; last output:\n{tail}")
            time.sleep(0.25)

    def wait_status(self, name: str, status: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            server = self.server(name)
            if server["status"] == status and server["OS-EXT-STS:task_state"] is None:
                return server
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} is {server['status']}, not {status}, after "
                                     f"{timeout:g}s")
            time.sleep(0.1)

    def heartbeat(self, name: str) -> int:
        beats = re.findall(rb"VMOPS-HEARTBEAT (\d+)", self.console(name))
        return int(beats[-1]) if beats else 0

    def import_image(self, name: str, path: Path) -> None:
        if self.run("image", "show", name, check=False).returncode != 0:
            self.run("image", "import", name, str(path))


def start_service(state_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = (state_dir / "serve.out").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "vmops", "serve"], env=env,
                            stdout=log, stderr=log, start_new_session=True)
    client = Client(state_dir, autostart=False)
    deadline = time.monotonic() + 60
    while not client.answers():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError("vmops serve did not start:\n"
                                 + (state_dir / "serve.out").read_text(errors="replace"))
        time.sleep(0.1)
    return proc


def stop_service(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def leftovers(state_dir: Path, service: int | None = None) -> list[str]:
    """QEMU and capture processes, and instance files, tied to this state
    dir; with ``service`` (the pid of its running service), not its console
    process while that watches nothing and only that service holds it: it
    stays for the service's life (docs/console.md). Once the service is
    stopped, or killed, it is a leftover like any other."""
    found = processes_of(state_dir, service)
    instances = state_dir / "instances"
    if instances.exists():
        found += [str(p) for p in instances.iterdir()]
    return found


@pytest.fixture(scope="session")
def service_state_dir() -> Iterator[Path]:
    # Short: UNIX socket paths under it are limited to 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="vmops-ft-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def vmops_session(service_state_dir: Path, test_image_dir: Path) -> Iterator[Vmops]:
    vm = Vmops(service_state_dir)
    proc = start_service(service_state_dir, vm.env)
    vm.service = proc  # type: ignore[attr-defined]
    try:
        vm.import_image("tiny", test_image_dir / "tiny.qcow2")
        yield vm
    finally:
        for server in vm.client.get("/servers")["servers"]:
            vm.client.delete(f"/servers/{server['id']}")
        stop_service(vm.service)  # type: ignore[attr-defined]
    left = leftovers(service_state_dir)
    assert not left, f"left behind: {left}"


@pytest.fixture
def vmops(vmops_session: Vmops) -> Iterator[Vmops]:
    """The session's service; every instance a test makes is destroyed after it."""
    before = {s["id"] for s in vmops_session.client.get("/servers")["servers"]}
    yield vmops_session
    for server in vmops_session.client.get("/servers")["servers"]:
        if server["id"] not in before:
            vmops_session.client.delete(f"/servers/{server['id']}")


def _servers(vm: Vmops) -> list[dict[str, Any]]:
    servers: list[dict[str, Any]] = vm.client.get("/servers")["servers"]
    return servers


def destroy_servers(vm: Vmops, keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Destroy every instance of ``vm``'s service whose id is not in ``keep``."""
    for server in _servers(vm):
        if server["id"] not in keep:
            vm.client.delete(f"/servers/{server['id']}")


def settled_leftovers(state_dir: Path, timeout: float = 30.0,
                      service: int | None = None) -> list[str]:
    """What :func:`leftovers` finds once the state directory's console
    process has had time to go: it exits a moment after it has no instance
    and no live holder (its service ended), or, started for a spawn whose
    service was killed before it asked for a watch, ``START_GRACE`` (10 s)
    after its start. ``service`` as for :func:`leftovers`. A bound on the
    wait, not a speed check."""
    deadline = time.monotonic() + timeout
    while (left := leftovers(state_dir, service)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def processes_of(state_dir: Path, service: int | None = None) -> list[str]:
    """"pid args" of the QEMU and capture processes tied to ``state_dir``;
    ``service`` as for :func:`leftovers`.

    ``ps -ww``: without it ps may cut lines at 80 columns (when it cannot
    tell the terminal's width), before the state dir in the arguments.
    """
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True,
                        check=True).stdout
    kept = None if service is None else shared.held_idle_pid(
        socket_paths.socket_root(state_dir) / "run", service)
    return [line.strip() for line in ps.splitlines()
            if str(state_dir) in line and ("qemu-system" in line or "vmops.console" in line)
            and line.split(maxsplit=1)[0] != str(kept)]


def service_pid(vm: Vmops) -> int:
    """The pid of ``vm``'s running service."""
    pid: int = vm.service.pid  # type: ignore[attr-defined]
    return pid


def _kill_leftover_processes(state_dir: Path) -> None:
    """SIGKILL the QEMU and capture processes a failed test left in ``state_dir``."""
    for line in processes_of(state_dir):
        pid = line.split(maxsplit=1)[0]
        if pid.isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


@contextlib.contextmanager
def separate_service(test_image_dir: Path, state_dir_length: int = 0,
                     **settings: str) -> Iterator[Vmops]:
    """A service of its own, in a new short state dir (or, with
    ``state_dir_length``, one whose path is that many bytes long, below
    it), with extra settings (``use_cow_images="false"`` sets
    VMOPS_USE_COW_IMAGES), the test image imported as "tiny". At the end,
    even on failure, its instances are destroyed (the service restarted
    first if a test left it stopped), it is stopped, and nothing may be left
    behind."""
    path = Path(tempfile.mkdtemp(prefix="vmops-", dir="/tmp"))
    state_dir = path
    if state_dir_length:
        state_dir = path / ("s" * (state_dir_length - len(os.fsencode(path)) - 1))
        state_dir.mkdir(mode=0o700)
    vm = Vmops(state_dir)
    vm.env.update({f"VMOPS_{k.upper()}": v for k, v in settings.items()})
    try:
        vm.service = start_service(state_dir, vm.env)  # type: ignore[attr-defined]
        try:
            vm.import_image("tiny", test_image_dir / "tiny.qcow2")
            yield vm
        finally:
            try:
                if vm.service.poll() is not None:  # type: ignore[attr-defined]
                    vm.service = start_service(state_dir, vm.env)  # type: ignore[attr-defined]
                destroy_servers(vm)
            finally:
                stop_service(vm.service)  # type: ignore[attr-defined]
        left = settled_leftovers(path)
        assert not left, f"left behind: {left}"
    finally:
        _kill_leftover_processes(path)
        alias = socket_paths.alias_path(state_dir)  # made by the service for a long one
        if state_dir_length and alias.is_symlink() \
                and os.readlink(alias) == os.path.realpath(state_dir):
            alias.unlink()
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def bridged_service(test_image_dir: Path, **settings: str) -> Iterator[Vmops]:
    """``separate_service`` on the vmops network, with a bridge and subnet of
    its own; at the end its dnsmasq, nftables tables and bridge are removed
    too (a stopped service leaves them to its guests, on purpose)."""
    tag = secrets.token_hex(3)
    bridge = f"vmf{tag}"
    subnet = f"10.252.{int(tag[:2], 16)}.0/24"
    state_dirs: list[Path] = []
    try:
        with separate_service(test_image_dir, 0, network_mode="bridge", network_bridge=bridge,
                              network_subnet=subnet, **settings) as vm:
            state_dirs.append(vm.state_dir)
            yield vm
    finally:
        for state_dir in state_dirs:
            conf = state_dir / "network" / "dnsmasq.conf"
            subprocess.run(["pkill", "-f", f"^dnsmasq --conf-file={conf}$"], check=False)
        for family in ("inet", "bridge"):
            subprocess.run(["nft", "delete", "table", family, nftables.table_name(bridge)],
                           capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
