"""The vmops network with real guests: DHCP, the host reaching a guest's
server, a port forward from "outside", security groups between two guests,
and nothing left behind by destroy.

Each service here gets a bridge and subnet of its own, and the test removes
them (dnsmasq, nftables tables, bridge) at the end. At most two guests run
at a time. Traffic goes only to the guests and to namespaces made here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.conftest import Vmops, bridged_service

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the vmops network needs root")

OUTSIDE_HOST = "198.51.100.1"
OUTSIDE_PEER = "198.51.100.2"
HTTPD_SCRIPT = """#!/bin/sh
mkdir -p /www
echo "page-of-{name}" > /www/index.html
httpd -p 80 -h /www && echo VMOPS-HTTPD-UP
"""
# Fetches the other guest's page every second and says what came back.
FETCH_SCRIPT = """#!/bin/sh
while :; do
    page=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {target} 80 | tail -n 1)
    echo "VMOPS-FETCH [$page]"
    sleep 1
done
"""


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


@contextlib.contextmanager
def outside_namespace() -> Iterator[str]:
    """The world beyond the host: a namespace routed through the host."""
    tag = secrets.token_hex(3)
    ns, host_end = f"vmf-out-{tag}", f"vmo{tag}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "addr", "add", f"{OUTSIDE_HOST}/24", "dev", host_end)
        sh("ip", "link", "set", host_end, "up")
        for cmd in (("ip", "addr", "add", f"{OUTSIDE_PEER}/24", "dev", "eth0"),
                    ("ip", "link", "set", "eth0", "up"),
                    ("ip", "route", "add", "default", "via", OUTSIDE_HOST)):
            sh("ip", "netns", "exec", ns, *cmd)
        yield ns
    finally:
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", host_end, check=False)


def network_diagnostics(vm: Vmops, bridge: str) -> str:
    """What to look at when a guest gets no address: the service's and
    dnsmasq's logs, the reservations and leases, the rules, the bridge."""
    net = vm.state_dir / "network"

    def tail(path: Path) -> str:
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(none)"

    parts = {"vmops.log": tail(vm.state_dir / "vmops.log"),
             "dnsmasq.log": tail(net / "dnsmasq.log"),
             "hosts.dhcp": tail(net / "hosts.dhcp"),
             "leases": tail(net / "dnsmasq.leases"),
             "bridge table": sh("nft", "list", "table", "bridge", f"vmops_{bridge}",
                                check=False).stdout,
             "bridge links": sh("bridge", "link", check=False).stdout,
             "dnsmasq processes": sh("pgrep", "-a", "dnsmasq", check=False).stdout}
    return "\n".join(f"--- {name}\n{text}" for name, text in parts.items())


def spawn_with_script(vm: Vmops, name: str, script: str, *extra: str) -> dict[str, object]:
    path = vm.state_dir / f"{name}-user-data"
    path.write_text(script)
    server: dict[str, object] = vm.json(
        "spawn", name, "--image", "tiny", "--flavor", "m1.tiny", "--config-drive",
        "--user-data", str(path), *extra)
    return server


def address_of(server: dict[str, object]) -> str:
    addresses = server["addresses"]
    assert isinstance(addresses, dict) and list(addresses) == ["vmops"], addresses
    (entry,) = addresses["vmops"]
    assert entry["version"] == 4 and entry["OS-EXT-IPS:type"] == "fixed"
    return str(entry["addr"])


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - a test guest's page
        return str(resp.read().decode().strip())


def test_a_guest_is_reached_by_dhcp_address_and_through_a_forward(test_image_dir: Path) -> None:
    with bridged_service(test_image_dir) as vm, outside_namespace() as outside:
        server = spawn_with_script(vm, "web", HTTPD_SCRIPT.format(name="web"))
        address = address_of(server)
        # The guest got the recorded address by DHCP, and its config drive
        # carries it too (for cloud-init's static configuration).
        vm.wait_console("web", rf"VMOPS-IP eth0 {address}/24")
        console = vm.console("web").decode(errors="replace")
        assert f'"ip_address": "{address}"' in console
        vm.wait_console("web", "VMOPS-HTTPD-UP")
        assert fetch(f"http://{address}/") == "page-of-web"
        assert address in vm.run("list").stdout

        # A forward from the host's "outside" address: closed by the default
        # group until a rule lets the outside in.
        vm.json("forward", "add", "web", "18080", "80")
        curl = ("ip", "netns", "exec", outside, "busybox", "nc", "-w", "3", OUTSIDE_HOST,
                "18080")
        request = "GET / HTTP/1.0\r\n\r\n"
        closed = subprocess.run(curl, input=request, capture_output=True, text=True, timeout=20)
        assert "page-of-web" not in closed.stdout
        vm.run("security-group", "rule-add", "default", "--protocol", "tcp", "--port", "80",
               "--remote-cidr", "198.51.100.0/24")
        opened = subprocess.run(curl, input=request, capture_output=True, text=True,
                                timeout=20)
        assert "page-of-web" in opened.stdout
        # From the host itself, through loopback (hairpin).
        assert fetch("http://127.0.0.1:18080/") == "page-of-web"

        server_id = str(server["id"])
        tap = vm.server("web")["vmops:nics"][0]["tap"]
        vm.run("destroy", "web")
        assert not Path(f"/sys/class/net/{tap}").exists()
        ruleset = sh("nft", "list", "ruleset").stdout
        assert tap not in ruleset and "18080" not in ruleset
        hosts = next(Path(vm.state_dir, "network").glob("hosts.dhcp")).read_text()
        assert address not in hosts and server_id not in hosts


def test_a_guest_reaches_another_only_when_a_group_allows(test_image_dir: Path) -> None:
    with bridged_service(test_image_dir) as vm:
        vm.run("security-group", "create", "web")
        target = spawn_with_script(vm, "target", HTTPD_SCRIPT.format(name="target"),
                                   "--security-group", "web")
        target_ip = address_of(target)
        vm.wait_console("target", "VMOPS-HTTPD-UP")
        spawn_with_script(vm, "client", FETCH_SCRIPT.format(target=target_ip))
        # "web" has no rule: the client (in default) is refused...
        vm.wait_console("client", r"VMOPS-FETCH \[\]", count=3)
        assert b"page-of-target" not in vm.console("client")
        # ...until the group admits default's members: at once, no restart.
        vm.run("security-group", "rule-add", "web", "--protocol", "tcp", "--port", "80",
               "--remote-group", "default")
        vm.wait_console("client", r"VMOPS-FETCH \[page-of-target\]")
        # Leaving the group it was admitted through closes it again.
        vm.run("security-group", "join", "target", "default")
        vm.run("security-group", "leave", "client", "default")
        before = vm.console("client").count(b"VMOPS-FETCH")
        vm.wait_console("client", r"VMOPS-FETCH", count=before + 3)
        assert vm.console("client").rsplit(b"VMOPS-FETCH", 2)[-1].startswith(b" []")


@pytest.mark.extended
def test_a_host_reboot_gives_every_guest_its_network_back(test_image_dir: Path) -> None:
    from tests.functional.conftest import start_service, stop_service
    from tests.functional.test_recovery import _capture_pids, _kill, _qemu_pids

    with bridged_service(test_image_dir, resume_guests_state_on_host_boot="true") as vm:
        server = spawn_with_script(vm, "web", HTTPD_SCRIPT.format(name="web"))
        address = address_of(server)
        vm.wait_console("web", "VMOPS-HTTPD-UP")
        vm.wait_console("web", rf"VMOPS-IP eth0 {address}/24")  # DHCP comes after the script
        bridge = vm.env["VMOPS_NETWORK_BRIDGE"]
        # What a reboot ends: QEMU (its tap with it), the capture, dnsmasq,
        # the bridge and every nftables rule.
        stop_service(vm.service)  # type: ignore[attr-defined]
        qemu, capture = _qemu_pids(vm, "web"), _capture_pids(vm, str(server["id"]))
        assert len(qemu) == 1 and len(capture) == 1, (qemu, capture)
        _kill(qemu + capture)
        dnsmasq_pid = (vm.state_dir / "network" / "dnsmasq.pid").read_text().strip()
        _kill([int(dnsmasq_pid)])
        for family in ("inet", "bridge"):
            sh("nft", "delete", "table", family, f"vmops_{bridge}")
        sh("ip", "link", "del", bridge)

        vm.service = start_service(vm.state_dir, vm.env)  # type: ignore[attr-defined]
        vm.wait_console("web", "VMOPS-BOOT-COMPLETE", count=2)
        vm.wait_status("web", "ACTIVE")
        try:
            vm.wait_console("web", rf"VMOPS-IP eth0 {address}/24", count=2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{network_diagnostics(vm, bridge)}") from None
        vm.wait_console("web", "VMOPS-HTTPD-UP", count=2)
        assert fetch(f"http://{address}/") == "page-of-web"
        assert address_of(vm.server("web")) == address
