"""A vmops service of the harness's own, set up for Tempest.

It runs in a new short state directory under /tmp (the API's unix socket
path must stay under 107 bytes), listens on a free loopback port, puts
guests on a vmops network of its own (as root: a bridge and subnet no one
else uses, removed at the end; servers then have addresses and security
groups as Nova's do) or on user-mode NICs (nothing to set up), and gets
the test image twice (image_ref and image_ref_alt) and two small flavors
the test guest boots with. Everything is done through vmops' own CLI over
the unix socket (which acts as admin) and the public HTTP API, as a user
would; stop() destroys every server and checks nothing was left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Short waits, as the functional tests use: a guest that ignores ACPI is
# powered off after 20 s rather than a minute (Tempest stops many guests).
SERVICE_ENV = {
    "VMOPS_ACCEL": os.environ.get("VMOPS_ACCEL", "tcg"),
    "VMOPS_WAIT_SOFT_REBOOT_SECONDS": "10",
    "VMOPS_SHUTDOWN_RETRY_INTERVAL": "2",
    "VMOPS_SHUTDOWN_TIMEOUT": "20",
}
ADMIN = "admin"
ADMIN_PROJECT = "admin"
ADMIN_DOMAIN = "Default"
START_TIMEOUT_S = 120.0
# (name, RAM MiB, vCPUs, disk GiB): the test guest needs far less than
# m1.tiny's 512 MiB; the alternative is larger, as Tempest wants.
FLAVORS = (("tempest.small", 256, 1, 1), ("tempest.medium", 384, 1, 2))
IMAGES = ("tempest-tiny", "tempest-tiny-alt")


class ServiceError(Exception):
    pass


@dataclass(frozen=True)
class Network:
    """How the service's guests are connected: "user", or "bridge" with a
    bridge and subnet of this run's own (10.253.X.0/24: the functional
    tests take theirs from 10.252.0.0/16)."""

    mode: str
    bridge: str = ""
    subnet: str = ""

    @classmethod
    def own_bridge(cls) -> Network:
        tag = secrets.token_hex(2)
        # "vmtp": vmops' tap devices are vmt + hex digits, never a "p".
        return cls("bridge", f"vmtp{tag}", f"10.253.{int(tag[:2], 16)}.0/24")

    def env(self) -> dict[str, str]:
        env = {"VMOPS_NETWORK_MODE": self.mode}
        if self.mode == "bridge":
            env |= {"VMOPS_NETWORK_BRIDGE": self.bridge, "VMOPS_NETWORK_SUBNET": self.subnet}
        return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def http(method: str, url: str, body: Any = None, token: str = "",
         timeout: float = 30) -> Answer:
    """One JSON request; an HTTP error status is an answer, not an exception."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["X-Auth-Token"] = token
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            status, raw, head = reply.status, reply.read(), dict(reply.headers)
    except urllib.error.HTTPError as error:
        status, raw, head = error.code, error.read(), dict(error.headers)
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode(errors="replace")
    return Answer(status, {k.lower(): v for k, v in head.items()}, parsed)


class Service:
    """One ``vmops serve`` in its own state directory."""

    def __init__(self, repo: Path, python: Path, log_to: Path, network: Network) -> None:
        self.repo = repo
        self.network = network
        self.python = python
        self.state_dir = Path(tempfile.mkdtemp(prefix="vmops-tempest-", dir="/tmp"))
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api_token = secrets.token_hex(24)
        self.admin_password = secrets.token_urlsafe(18)
        self.log_to = log_to
        self.env = {**os.environ, **SERVICE_ENV, **network.env(),
                    # The vmops of ``repo`` (a commit's export, or the checkout).
                    "PYTHONPATH": str(repo),
                    "VMOPS_STATE_DIR": str(self.state_dir),
                    "VMOPS_LISTEN": f"127.0.0.1:{self.port}",
                    "VMOPS_API_TOKEN": self.api_token,
                    # The built-in identity service's admin password
                    # (vmops/identity): Tempest logs in with it.
                    "VMOPS_IDENTITY_ADMIN_PASSWORD": self.admin_password}
        self.proc: subprocess.Popen[bytes] | None = None

    # -- life ----------------------------------------------------------------
    def start(self) -> None:
        log = self.log_to.open("ab")
        self.proc = subprocess.Popen([str(self.python), "-m", "vmops", "serve"], env=self.env,
                                     cwd=self.repo, stdout=log, stderr=log,
                                     start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise ServiceError(f"vmops serve exited {self.proc.returncode}; see {self.log_to}")
            with contextlib.suppress(OSError):
                if http("GET", f"{self.base_url}/", timeout=5).status == 200:
                    return
            if time.monotonic() > deadline:
                raise ServiceError(f"vmops serve did not answer in {START_TIMEOUT_S:g}s; "
                                   f"see {self.log_to}")
            time.sleep(0.5)

    def stop(self) -> list[str]:
        """Destroy every server, stop the service; what was left behind."""
        if self.proc is None:
            return []
        try:
            if self.proc.poll() is None:
                for server in self.cli_json("list"):
                    self.cli("destroy", server["id"], check=False)
        finally:
            self._terminate()
        left = self.leftovers()
        self._kill(left)
        if self.network.mode == "bridge":
            self._remove_network()
        return left

    def _terminate(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def leftovers(self) -> list[str]:
        """"pid args" of QEMU and console capture processes of this state dir."""
        ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True,
                            check=True).stdout
        return [line.strip() for line in ps.splitlines()
                if str(self.state_dir) in line
                and ("qemu-system" in line or "vmops.console" in line)]

    @staticmethod
    def _kill(lines: list[str]) -> None:
        for line in lines:
            pid = line.split(maxsplit=1)[0]
            if pid.isdigit():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)

    def _remove_network(self) -> None:
        """What a stopped service leaves to its guests on purpose: its
        dnsmasq, its nftables tables and its bridge."""
        conf = f"--conf-file={self.state_dir / 'network' / 'dnsmasq.conf'}"
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                args = (proc / "cmdline").read_bytes().split(b"\0")
                if proc.name.isdigit() and args[:2] == [b"dnsmasq", conf.encode()]:
                    os.kill(int(proc.name), signal.SIGTERM)
        table = f"vmops_{self.network.bridge}"
        for family in ("inet", "bridge"):
            subprocess.run(["nft", "delete", "table", family, table], capture_output=True,
                           check=False)
        subprocess.run(["ip", "link", "del", self.network.bridge], capture_output=True,
                       check=False)

    def remove(self) -> None:
        shutil.rmtree(self.state_dir, ignore_errors=True)

    # -- the CLI -------------------------------------------------------------
    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.python), "-m", "vmops", *args], env=self.env,
                              cwd=self.repo, capture_output=True, text=True, timeout=600)
        if check and proc.returncode != 0:
            raise ServiceError(f"vmops {' '.join(args)} exited {proc.returncode}:\n"
                               f"{proc.stdout}{proc.stderr}")
        return proc

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    # -- what Tempest needs --------------------------------------------------
    def add_images(self, image_file: Path) -> list[str]:
        """The test image under each of IMAGES' names; their ids."""
        return [self.cli_json("image", "import", name, str(image_file))["id"]
                for name in IMAGES]

    def add_flavors(self) -> list[str]:
        return [self.cli_json("flavor", "create", name, "--ram", str(ram), "--vcpus",
                              str(vcpus), "--disk", str(disk))["id"]
                for name, ram, vcpus, disk in FLAVORS]

    def microversions(self) -> tuple[str, str]:
        """The compute API's (min, max) microversion, from its version document."""
        answer = http("GET", f"{self.base_url}/v2.1/")
        version = answer.body["version"] if answer.status == 200 else None
        if not version:
            raise ServiceError(f"GET /v2.1/ answered {answer.status}: {answer.body}")
        return version["min_version"] or "2.1", version["version"] or "2.1"

    def password_token(self) -> tuple[str, set[str]] | None:
        """An admin token from the identity service's password method and the
        service types of its catalog, or None when it gives none."""
        body = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": ADMIN, "domain": {"name": ADMIN_DOMAIN},
                "password": self.admin_password}}},
            "scope": {"project": {"name": ADMIN_PROJECT, "domain": {"name": ADMIN_DOMAIN}}}}}
        answer = http("POST", f"{self.base_url}/identity/v3/auth/tokens", body)
        token = answer.headers.get("x-subject-token")
        if answer.status != 201 or not token or not isinstance(answer.body, dict):
            return None
        catalog = answer.body.get("token", {}).get("catalog", [])
        return token, {entry.get("type", "") for entry in catalog}

    def identity_admin_calls(self, token: str) -> bool:
        """Whether the identity admin calls of Tempest's dynamic credentials
        answer: listing projects, users and roles."""
        return all(http("GET", f"{self.base_url}/identity/v3/{what}", token=token).status == 200
                   for what in ("projects", "users", "roles"))

    def image_upload(self, token: str) -> bool:
        """Whether Glance's image create works (an empty queued image, deleted)."""
        answer = http("POST", f"{self.base_url}/image/v2/images",
                      {"name": "tempest-probe", "disk_format": "qcow2",
                       "container_format": "bare"}, token=token)
        if answer.status != 201 or not isinstance(answer.body, dict):
            return False
        http("DELETE", f"{self.base_url}/image/v2/images/{answer.body['id']}", token=token)
        return True


def vmops_python(repo: Path) -> Path:
    venv = repo / ".venv" / "bin" / "python"
    return venv if venv.exists() else Path(sys.executable)
