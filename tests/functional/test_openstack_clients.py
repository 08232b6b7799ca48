"""OpenStack's own clients against a real service on TCP, real guests.

The `openstack` command line and openstacksdk, with exactly the clouds.yaml
of docs/openstack-clients.md (its port and token filled in). Three guests
in all, one at a time: one driven by the command line through every power
action, one snapshotted and rebuilt on its snapshot, one by the SDK.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket
from openstack import config as os_config
from openstack import connection, exceptions
from prometheus_client.parser import text_string_to_metric_families

from tests.functional.conftest import REPO, Vmops, bridged_service

# openstacksdk warns about its own deprecations on every call.
pytestmark = [pytest.mark.extended, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")]

TOKEN = "functional-test-token"
OPENSTACK = str(Path(sys.executable).parent / "openstack")
DOC = REPO / "docs" / "openstack-clients.md"
BEAT = r"VMOPS-HEARTBEAT \d+"


@pytest.fixture(scope="module")
def port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free: int = probe.getsockname()[1]
    return free


@pytest.fixture(scope="module")
def tcp_vmops(test_image_dir: Path, port: int) -> Iterator[Vmops]:
    """A service of its own listening on 127.0.0.1:port with a token, its
    guests on a vmops network of their own."""
    with bridged_service(test_image_dir, listen=f"127.0.0.1:{port}", api_token=TOKEN) as vm:
        yield vm


def clouds_yaml(port: int, token: str = TOKEN) -> str:
    """The admin_token clouds.yaml block of the docs, for this port and token."""
    blocks: list[str] = re.findall(r"```yaml\n(clouds:.*?)```", DOC.read_text(), re.S)
    block = next((b for b in blocks if "auth_type: admin_token" in b), None)
    assert block, f"no admin_token clouds.yaml block in {DOC}"
    return block.replace(":8774", f":{port}").replace("TOKEN", token)


@pytest.fixture(scope="module")
def clouds(tmp_path_factory: pytest.TempPathFactory, port: int) -> Path:
    path = tmp_path_factory.mktemp("os") / "clouds.yaml"
    path.write_text(clouds_yaml(port))
    return path


class OpenStackCLI:
    def __init__(self, clouds: Path, cwd: Path) -> None:
        self.env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd),
                    "OS_CLIENT_CONFIG_FILE": str(clouds), "OS_CLOUD": "vmops"}
        self.cwd = cwd

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([OPENSTACK, *args], env=self.env, cwd=self.cwd, text=True,
                              capture_output=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"openstack {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-f", "json").stdout)


@pytest.fixture(scope="module")
def cli(tcp_vmops: Vmops, clouds: Path) -> OpenStackCLI:
    return OpenStackCLI(clouds, clouds.parent)


@pytest.fixture(scope="module")
def sdk(tcp_vmops: Vmops, clouds: Path) -> connection.Connection:
    cloud = os_config.OpenStackConfig(config_files=[str(clouds)]).get_one(cloud="vmops")
    return connection.Connection(config=cloud)


def wait_idle(sdk: connection.Connection, name: str, status: str,
              timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        server = sdk.compute.find_server(name, ignore_missing=False)
        if server.status == status and server.task_state is None:
            return server
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} is {server.status}/{server.task_state}, not {status}")
        time.sleep(0.2)


def test_catalog_commands(cli: OpenStackCLI, tmp_path: Path) -> None:
    assert cli.json("server", "list") == []
    flavors = {f["Name"]: f for f in cli.json("flavor", "list")}
    assert flavors["m1.tiny"]["RAM"] == 512
    assert cli.json("flavor", "show", "m1.tiny")["vcpus"] == 1
    (image,) = cli.json("image", "list")
    assert (image["Name"], image["Status"]) == ("tiny", "active")
    assert cli.json("image", "show", "tiny")["disk_format"] == "qcow2"
    key = tmp_path / "k.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILhE/Js2CulLK1ww4aieoN8RmA8eQUrJs/"
                   "5Q17XzDxXB me@host\n")
    cli.run("keypair", "create", "--public-key", str(key), "me")
    assert [k["Name"] for k in cli.json("keypair", "list")] == ["me"]
    cli.run("keypair", "delete", "me")
    assert cli.json("keypair", "list") == []


def test_without_the_token_nothing_is_told(cli: OpenStackCLI, port: int, clouds: Path) -> None:
    """No token or a wrong one: 401 to everything but the version documents,
    which the clients report as the docs say."""
    told = re.compile(r"401: Client Error for url: .*, authentication required")
    wrong = clouds.parent / "wrong.yaml"
    wrong.write_text(clouds_yaml(port, token="not-the-token"))
    bad = OpenStackCLI(wrong, clouds.parent).run("server", "list", check=False)
    assert bad.returncode != 0 and told.search(bad.stderr), bad.stderr
    assert bad.stdout == ""
    for path in ("/v2.1/servers", "/metrics", "/openapi.json"):
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
        assert raised.value.code == 401
        assert json.loads(raised.value.read()) == {
            "unauthorized": {"code": 401, "message": "authentication required"}}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as versions:
        assert {v["id"] for v in json.loads(versions.read())["versions"]} == {"v2.0", "v2.1"}


def test_server_lifecycle_with_the_openstack_cli(cli: OpenStackCLI, sdk: connection.Connection,
                                                 tcp_vmops: Vmops, port: int) -> None:
    created = cli.json("server", "create", "--image", "tiny", "--flavor", "m1.tiny", "web1",
                       "--wait")
    assert created["status"] == "ACTIVE"
    shown = cli.json("server", "show", "web1")
    assert (shown["status"], shown["OS-EXT-STS:vm_state"]) == ("ACTIVE", "active")
    assert shown["OS-EXT-STS:power_state"] == 1  # -f json: Nova's number (Running)
    # From microversion 2.47 (the CLI takes up to vmops' 2.52) the flavor is
    # embedded as it was at spawn.
    assert shown["flavor"]["original_name"] == "m1.tiny" and shown["image"].startswith("tiny")
    assert [s["Name"] for s in cli.json("server", "list")] == ["web1"]
    tcp_vmops.wait_console("web1", BEAT, count=2)
    lines = cli.run("console", "log", "show", "web1", "--lines", "3").stdout.splitlines()
    # Nova's count: the last 3 pieces of the log split at newlines, the last
    # of which is the empty one after the final newline.
    assert len(lines) == 2 and any("VMOPS-HEARTBEAT" in line for line in lines)
    _scrape_shows(port, "vmops-web1")
    for args, status, power in [
            (["server", "pause"], "PAUSED", 3),
            (["server", "unpause"], "ACTIVE", 1),
            (["server", "suspend"], "SUSPENDED", 4),
            (["server", "resume"], "ACTIVE", 1),
            (["server", "stop"], "SHUTOFF", 4),
            (["server", "start"], "ACTIVE", 1),
            (["server", "reboot"], "ACTIVE", 1),
            (["server", "reboot", "--hard"], "ACTIVE", 1)]:
        cli.run(*args, "web1")
        wait_idle(sdk, "web1", status)
        server = cli.json("server", "show", "web1")
        assert (server["status"], server["OS-EXT-STS:power_state"]) == (status, power), args
    # The vmops network and its security groups, through the networking
    # service's commands and Compute's add/remove security group.
    address = cli.json("server", "show", "web1")["addresses"]
    assert re.fullmatch(r"\{'vmops': \['10\.252\.\d+\.\d+'\]\}|vmops=10\.252\.\d+\.\d+",
                        str(address)), address
    cli.json("security", "group", "create", "web", "--description", "web servers")
    rule = cli.json("security", "group", "rule", "create", "--protocol", "tcp", "--dst-port",
                    "80", "--remote-ip", "198.51.100.0/24", "web")
    assert (rule["port_range_min"], rule["remote_ip_prefix"]) == (80, "198.51.100.0/24")
    assert {g["Name"] for g in cli.json("security", "group", "list")} == {"default", "web"}
    cli.run("server", "add", "security", "group", "web1", "web")
    groups = cli.json("server", "show", "web1")["security_groups"]
    assert sorted(g["name"] for g in groups) == ["default", "web"], groups
    ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    assert "198.51.100.0/24 tcp dport 80 accept" in ruleset
    in_use = cli.run("security", "group", "delete", "web", check=False)
    assert in_use.returncode != 0 and "web1" in in_use.stderr
    cli.run("server", "remove", "security", "group", "web1", "web")
    cli.run("security", "group", "delete", "web")
    refused = cli.run("server", "unpause", "web1", check=False)
    assert refused.returncode != 0 and "409" in refused.stderr
    cli.run("server", "delete", "web1", "--wait")
    assert cli.json("server", "list") == []


@pytest.mark.extended
def test_serial_console_url_with_the_openstack_cli(cli: OpenStackCLI, sdk: connection.Connection,
                                                  tcp_vmops: Vmops, port: int) -> None:
    """`openstack console url show --serial`, then a plain WebSocket client
    types into the guest and reads its answer; a stopped server has none."""
    cli.json("server", "create", "--image", "tiny", "--flavor", "m1.tiny", "sc1", "--wait")
    tcp_vmops.wait_console("sc1", BEAT)  # its console shell has started
    shown = cli.json("console", "url", "show", "--serial", "sc1")
    assert (shown["type"], shown["protocol"]) == ("serial", "serial"), shown
    url = shown["url"]
    assert url.startswith(f"ws://127.0.0.1:{port}/serial-console?token="), url
    ws = websocket.create_connection(url, timeout=120)
    try:
        ws.send_binary(b"echo VMOPS-ANSWER-$((6*7))\n")
        seen = b""
        deadline = time.monotonic() + 120  # a bound against hanging only
        while b"VMOPS-ANSWER-42" not in seen and time.monotonic() < deadline:
            opcode, data = ws.recv_data()
            assert opcode == websocket.ABNF.OPCODE_BINARY
            seen += data
        assert b"VMOPS-ANSWER-42" in seen, seen[-2000:]
    finally:
        ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as used:
        websocket.create_connection(url, timeout=30)
    assert used.value.status_code == 401  # single-use
    # Below microversion 2.6 the client asks with the os-getSerialConsole action.
    old = cli.json("--os-compute-api-version", "2.1", "console", "url", "show", "--serial",
                   "sc1")
    assert old["type"] == "serial" and old["url"].startswith("ws://"), old
    cli.run("server", "stop", "sc1")
    wait_idle(sdk, "sc1", "SHUTOFF")
    refused = cli.run("console", "url", "show", "--serial", "sc1", check=False)
    assert refused.returncode != 0 and "409" in refused.stderr, refused.stderr
    cli.run("server", "delete", "sc1", "--wait")


def _scrape_shows(port: int, domain: str) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    assert any(s.name == "libvirt_domain_info_cpu_time_seconds_total"
               and s.labels == {"domain": domain} for s in samples)
    assert any(s.name == "libvirt_domain_block_stats_read_bytes_total" and s.value >= 1
               and s.labels["domain"] == domain and s.labels["source_file"]
               and s.labels["target_device"] == "vda" for s in samples)
    assert any(s.name == "vmops_operations_total" and s.value >= 1
               and s.labels == {"verb": "spawn", "result": "ok"} for s in samples)


def test_openstacksdk(sdk: connection.Connection, tcp_vmops: Vmops) -> None:
    image = sdk.image.find_image("tiny", ignore_missing=False)
    flavor = sdk.compute.find_flavor("m1.tiny", ignore_missing=False)
    # At 2.52 (the highest vmops offers) Nova requires networks (from 2.37).
    server = sdk.compute.create_server(name="sdk1", image_id=image.id, flavor_id=flavor.id,
                                       networks="auto")
    server = sdk.compute.wait_for_server(server, wait=120)
    assert (server.status, server.vm_state, server.power_state) == ("ACTIVE", "active", 1)
    tcp_vmops.wait_console("sdk1", BEAT)
    output = sdk.compute.get_server_console_output(server, length=2)["output"]
    assert len(output.split("\n")) == 2 and "VMOPS" in output  # Nova's count
    with pytest.raises(exceptions.ConflictException):
        sdk.compute.start_server(server)
    with pytest.raises(exceptions.NotFoundException):
        sdk.compute.get_server("00000000-0000-0000-0000-000000000000")
    with pytest.raises(exceptions.BadRequestException):
        sdk.compute.create_server(name=" padded", image_id=image.id, flavor_id=flavor.id,
                                  networks="auto")
    sdk.compute.stop_server(server)
    assert wait_idle(sdk, "sdk1", "SHUTOFF").power_state == 4
    sdk.compute.delete_server(server)
    sdk.compute.wait_for_delete(server, wait=60)
    assert list(sdk.compute.servers()) == []


def test_snapshot_and_rebuild_with_the_openstack_cli(cli: OpenStackCLI,
                                                     sdk: connection.Connection,
                                                     tcp_vmops: Vmops) -> None:
    cli.json("server", "create", "--image", "tiny", "--flavor", "m1.tiny", "snap1", "--wait")
    try:
        image = cli.json("server", "image", "create", "--name", "snap1-image", "--wait",
                         "snap1")
        assert (image["name"], image["status"]) == ("snap1-image", "active")
        before = cli.json("server", "show", "snap1")
        assert before["status"] == "ACTIVE"
        cli.run("server", "rebuild", "--image", "snap1-image", "--wait", "snap1")
        after = wait_idle(sdk, "snap1", "ACTIVE")
        assert after.id == before["id"]
        assert after.image["id"] == image["id"]
    finally:
        cli.run("server", "delete", "snap1", "--wait", check=False)
        tcp_vmops.run("image", "delete", "snap1-image", check=False)
