"""A real vmops service for the benchmarks, driven through its HTTP API.

Like the functional tests: ``python -m vmops serve`` on a fresh short state
directory under /tmp with ``VMOPS_ACCEL=tcg`` and user-mode NICs (as root
the default would be the vmops network on ``vmops0``, the bridge a real
install on this host uses; the network scenarios run a service of their own
on a bridge of their own: bench/bridged.py). ``close()`` destroys every
instance through the API, stops the service, kills anything still running
from the state directory (QEMU, capture processes) and removes it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, kill_pids, pids_mentioning, remove_tree, short_tmpdir
from vmops import config, console
from vmops.cli.client import ApiError, Client

IMAGE = "tiny"
FLAVOR = "m1.tiny"  # 512 MiB, 1 vCPU, 1 GiB root disk, no ephemeral disk
START_TIMEOUT_S = 120.0
BUILD_TIMEOUT_S = 180.0


class RetryingClient(Client):
    """vmops' API client, retrying a connect refused with EAGAIN.

    vmops' API server keeps socketserver's default listen backlog of 5; with
    more clients at once than that, and the service busy, connecting to its
    UNIX socket fails at once with EAGAIN (the client sets a timeout, so the
    socket is non-blocking). The bench retries and counts it.
    """

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir, autostart=False, timeout=300.0)
        self.eagain_retries = 0
        self._lock = threading.Lock()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        for _ in range(500):
            try:
                return super().request(method, path, body)
            except BlockingIOError:
                with self._lock:
                    self.eagain_retries += 1
                time.sleep(0.01)
        return super().request(method, path, body)


class VmopsService:
    def __init__(self, settings_env: dict[str, str] | None = None,
                 source: Path = REPO) -> None:
        """``settings_env``: more ``VMOPS_*`` settings for the service;
        ``source``: the checkout whose vmops it runs (``python -m vmops`` there)."""
        self.source = source
        self.state_dir = short_tmpdir("vm")
        self.env = {**os.environ, "VMOPS_STATE_DIR": str(self.state_dir),
                    "VMOPS_ACCEL": "tcg", "VMOPS_IMAGE_CACHE_PRUNE_INTERVAL": "0",
                    "VMOPS_NETWORK_MODE": "user",
                    # mgmt_plane makes 1,000 servers through the API: past
                    # the default project quotas (10 servers), still counted.
                    "VMOPS_QUOTA_INSTANCES": "100000", "VMOPS_QUOTA_CORES": "100000",
                    "VMOPS_QUOTA_RAM": "100000000", **(settings_env or {})}
        self.settings = config.load(self.state_dir, env={})
        self.client = RetryingClient(self.state_dir)
        self.proc: subprocess.Popen[bytes] | None = None

    # -- paths (the service's own, from its settings) ---------------------------
    @property
    def instances_dir(self) -> Path:
        return self.settings.instances_dir

    @property
    def run_dir(self) -> Path:
        return self.settings.run_dir

    @property
    def libvirt_root(self) -> Path:
        return self.state_dir / "libvirt"  # what the default embed URI names

    def domain_xml_file(self, name: str) -> Path:
        """libvirt's saved (inactive) definition of an instance's domain."""
        return self.libvirt_root / "etc" / "qemu" / f"vmops-{name}.xml"

    def domain_status_file(self, name: str) -> Path:
        """libvirt's status XML of a running domain, rewritten at each change."""
        return self.libvirt_root / "run" / "qemu" / f"vmops-{name}.xml"

    def domain_xml(self, name: str) -> str:
        return self.domain_xml_file(name).read_text()

    # -- the process -------------------------------------------------------------
    def command(self) -> list[str]:
        """The service's command line (``vmops serve``)."""
        return [sys.executable, "-m", "vmops", "serve"]

    def start(self) -> float:
        """Start the service; return how long until it answered (s)."""
        log = (self.state_dir / "serve.out").open("ab")
        started = time.monotonic()
        self.proc = subprocess.Popen(self.command(), env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     start_new_session=True, cwd=self.source)
        log.close()
        while not self.client.answers():
            if self.proc.poll() is not None or time.monotonic() - started > START_TIMEOUT_S:
                raise RuntimeError("vmops serve did not start: " + self.log_tail())
            time.sleep(0.05)
        return time.monotonic() - started

    def stop_process(self) -> None:
        """Stop the service only: its VMs keep running (as with vmops itself)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 15) -> str:
        text = ""
        for name in ("serve.out",):
            with contextlib.suppress(OSError):
                text += (self.state_dir / name).read_text(errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(Exception):
                    self.destroy_all()
        finally:
            self.stop_process()
            kill_pids(pids_mentioning(str(self.state_dir)))
            remove_tree(self.state_dir)

    # -- catalog -----------------------------------------------------------------
    def ensure_image(self, path: Path, name: str = IMAGE) -> None:
        try:
            self.client.get(f"/images/{name}")
            return
        except ApiError as exc:
            if exc.status != 404:
                raise
        image = self.client.post("/images", {"image": {"name": name,
                                                       "source": str(path)}})["image"]
        deadline = time.monotonic() + 300
        while image["status"] == "SAVING" and time.monotonic() < deadline:
            time.sleep(0.1)
            image = self.client.get(f"/images/{image['id']}")["image"]
        if image["status"] != "ACTIVE":
            raise RuntimeError(f"image import failed: {image.get('vmops:fault')}")

    # -- servers -----------------------------------------------------------------
    def post_server(self, name: str, config_drive: bool = False,
                    user_data: bytes | None = None, network: str | None = None,
                    fixed_ip: str | None = None) -> str:
        """``network``: "vmops" (the bridge, with ``fixed_ip`` if given) or
        "user"; None: the service's mode. ``user_data`` implies a config drive."""
        return str(self._create(name, config_drive, user_data, network, fixed_ip)["id"])

    def spawn_waited(self, name: str, config_drive: bool = False,
                     timeout: float = BUILD_TIMEOUT_S) -> str:
        """Create and answer once built (the API's ``vmops:wait``: no polling);
        the server's id. Raises unless it ended ACTIVE."""
        server = self._create(name, config_drive, wait=timeout)
        if "status" not in server:  # 202: not built within the wait
            raise TimeoutError(f"{name} still building after {timeout:g}s")
        if server["status"] != "ACTIVE":
            fault = server.get("fault", {}).get("message")
            raise RuntimeError(f"spawn of {name} ended {server['status']}: {fault}")
        return str(server["id"])

    def _create(self, name: str, config_drive: bool = False, user_data: bytes | None = None,
                network: str | None = None, fixed_ip: str | None = None,
                wait: float | None = None) -> dict[str, Any]:
        server: dict[str, Any] = {"name": name, "imageRef": IMAGE, "flavorRef": FLAVOR,
                                  "config_drive": config_drive or user_data is not None}
        if user_data is not None:
            server["user_data"] = base64.b64encode(user_data).decode()
        if network is not None:
            server["networks"] = [{"uuid": network}]
            if fixed_ip is not None:
                server["networks"][0]["fixed_ip"] = fixed_ip
        query = "" if wait is None else f"?vmops:wait={wait:g}"
        created: dict[str, Any] = self.client.post(f"/servers{query}",
                                                   {"server": server})["server"]
        return created

    def brief(self, name: str) -> dict[str, Any]:
        """The record alone, by name (no libvirt call in the service)."""
        found = self.client.get(f"/servers/detail?name={name}")["servers"]
        if not found:
            raise RuntimeError(f"no server named {name}")
        server: dict[str, Any] = found[0]
        return server

    def wait_built(self, name: str, interval: float = 0.01,
                   timeout: float = BUILD_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            server = self.brief(name)
            if server["status"] != "BUILD":
                if server["status"] != "ACTIVE":
                    fault = server.get("fault", {}).get("message")
                    raise RuntimeError(f"spawn of {name} ended {server['status']}: {fault}")
                return server
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} still building after {timeout:g}s")
            time.sleep(interval)

    def define_many(self, name: str, count: int, timeout: float = 1800.0) -> list[str]:
        """``count`` servers ``NAME-1`` .. made through the API without booting
        them (``"vmops:start": false``, at most 100 per request, as Nova's
        ``max_count``); returns their ids once every one is SHUTOFF."""
        made = 0
        while made < count:
            batch = min(100, count - made)
            self.client.post("/servers", {"server": {
                "name": f"{name}{made // 100}", "imageRef": IMAGE, "flavorRef": FLAVOR,
                "min_count": batch, "max_count": batch, "vmops:start": False}})
            made += batch
        prefix = f"{name}"
        deadline = time.monotonic() + timeout
        while True:
            servers = [s for s in self.client.get("/servers/detail")["servers"]
                       if s["name"].startswith(prefix)]
            errors = [s for s in servers if s["status"] == "ERROR"]
            if errors:
                raise RuntimeError(f"{errors[0]['name']}: {errors[0].get('fault')}")
            if len(servers) >= count and all(s["status"] == "SHUTOFF" for s in servers):
                return [str(s["id"]) for s in servers]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}*: not all {count} SHUTOFF after {timeout:g}s")
            time.sleep(0.5)

    def spawn(self, name: str, config_drive: bool = False) -> str:
        server_id = self.post_server(name, config_drive)
        self.wait_built(name)
        return server_id

    def action(self, server_id: str, body: dict[str, Any]) -> None:
        """Run an action; the service answers when it has ended (vmops:wait)."""
        self.client.post(f"/servers/{server_id}/action?vmops:wait=300", body)

    def wait_idle(self, name: str, interval: float = 0.002,
                  timeout: float = 300.0) -> dict[str, Any]:
        """Until the instance's task ends (record only, polled by name)."""
        deadline = time.monotonic() + timeout
        while True:
            server = self.brief(name)
            if server["OS-EXT-STS:task_state"] is None:
                if server.get("vmops:fault"):  # Nova's fault shows in ERROR only
                    raise RuntimeError(f"{name}: {server['vmops:fault']}")
                return server
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} still busy after {timeout:g}s")
            time.sleep(interval)

    def console_log(self, server_id: str) -> bytes:
        """Read the console log files directly: no load on the service."""
        with contextlib.suppress(OSError):
            return console.read_log(self.instances_dir / server_id)
        return b""

    def destroy(self, server_id: str) -> None:
        with contextlib.suppress(ApiError):
            self.client.delete(f"/servers/{server_id}")

    def destroy_all(self, parallel: int = 4) -> None:
        ids = [s["id"] for s in self.client.get("/servers")["servers"]]
        def worker(chunk: list[str]) -> None:
            for server_id in chunk:
                self.destroy(server_id)

        threads = [threading.Thread(target=worker, args=(ids[i::parallel],))
                   for i in range(parallel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def server_count(self) -> int:
        return len(self.client.get("/servers")["servers"])
