"""A real distribution image: Debian 12 with systemd and cloud-init
(tools/cloudimage), configured by vmops' config drive alone.

Slow (a first build takes minutes; a boot to cloud-init's final stage takes
2-3 minutes under TCG on a shared 2-core machine), so deselected by default:
`scripts/test-slow` runs it.
The first test's guest (user-mode NIC) reports through a runcmd in the
user-data that writes to the serial console; the second's is on the vmops
network and is asked over `vmops ssh`. Nothing inside the image knows about
vmops.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.conftest import REPO, Vmops, bridged_service
from tests.functional.test_network import address_of, network_diagnostics

pytestmark = [pytest.mark.slow, pytest.mark.functional]

BUILD = REPO / "tools" / "cloudimage" / "build.py"
IMAGE = "debian-12"
FLAVOR = "ci.debian"
KEY_NAME = "ci-key"
BUILD_TIMEOUT_S = 1800.0
CLOUD_INIT_TIMEOUT_S = 400.0  # a wait bound only: 2-3 minutes under TCG
SSH_TIMEOUT_S = 300.0  # after cloud-init finished: a wait bound for sshd to let us in
SSH_TRY_TIMEOUT_S = 90.0  # one `vmops ssh` (key exchange is slow under TCG)
# cloud-init writes this to the console when its last stage ends.
FINISHED = r"Cloud-init v\. \S+ finished at [^\r\n]*Datasource (\S+)"
USER_DATA = """\
#cloud-config
runcmd:
  - - sh
    - -c
    - |
      {
        echo "VMOPS-CI-HOSTNAME $(hostname)"
        sed 's/^/VMOPS-CI-KEY /' /home/debian/.ssh/authorized_keys
        echo "VMOPS-CI-ROOT-BYTES $(df -B1 --output=size / | tail -n 1 | tr -d ' ')"
        echo VMOPS-CI-RUNCMD-DONE
      } > /dev/ttyS0
"""


@pytest.fixture(scope="module")
def cloud_image() -> Path:
    proc = subprocess.run([sys.executable, str(BUILD)], capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT_S)
    assert proc.returncode == 0, f"building the cloud image failed:\n{proc.stderr[-4000:]}"
    return Path(proc.stdout.strip())


@pytest.fixture
def public_key(vmops: Vmops, tmp_path: Path) -> Iterator[str]:
    """A real ed25519 key pair (the private half is in tmp_path), added as KEY_NAME."""
    key_file = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ci@vmops-test",
                    "-f", str(key_file)], check=True)
    vmops.run("keypair", "delete", KEY_NAME, check=False)  # left by an earlier failure
    vmops.run("keypair", "add", KEY_NAME, "--public-key", f"{key_file}.pub")
    yield (tmp_path / "id_ed25519.pub").read_text().strip()
    vmops.run("keypair", "delete", KEY_NAME, check=False)


@pytest.fixture
def flavor(vmops: Vmops) -> Iterator[str]:
    # The image is 2 GiB: the root disk must be larger, so growpart has work.
    if vmops.run("flavor", "show", FLAVOR, check=False).returncode != 0:
        vmops.run("flavor", "create", FLAVOR, "--ram", "1024", "--vcpus", "1", "--disk", "3")
    yield FLAVOR


def _console_text(vmops: Vmops, name: str) -> str:
    return vmops.console(name).replace(b"\r\n", b"\n").decode(errors="replace")


def test_debian_cloud_image_is_configured_from_the_config_drive(
        vmops: Vmops, cloud_image: Path, public_key: str, flavor: str,
        tmp_path: Path) -> None:
    vmops.import_image(IMAGE, cloud_image)
    (tmp_path / "user-data").write_text(USER_DATA)
    started = time.monotonic()
    vmops.run("spawn", "deb1", "--image", IMAGE, "--flavor", flavor, "--config-drive",
              "--key-name", KEY_NAME, "--user-data", str(tmp_path / "user-data"))
    (finished,) = vmops.wait_console("deb1", FINISHED, timeout=CLOUD_INIT_TIMEOUT_S)
    elapsed = time.monotonic() - started
    vmops.wait_console("deb1", r"VMOPS-CI-RUNCMD-DONE", timeout=30)
    print(f"\nspawn to cloud-init finished: {elapsed:.0f} s", file=sys.stderr)

    console = _console_text(vmops, "deb1")
    (tmp_path / "console.log").write_text(console)  # kept by pytest, to read afterwards
    # The config drive was the datasource, and cloud-init ran without errors.
    assert finished.group(1).startswith(b"DataSourceConfigDrive"), finished.group(0)
    warnings = re.findall(r".*\[(?:WARNING|ERROR)\].*", console)
    assert not warnings, warnings
    assert "VMOPS-CI-HOSTNAME deb1\n" in console, console[-3000:]
    # The keypair was installed for Debian's default user.
    keys = re.findall(r"VMOPS-CI-KEY (.+)", console)
    assert public_key in [k.strip() for k in keys], keys
    # growpart and resizefs grew the root filesystem to the 3 GB flavor disk.
    (root_bytes,) = re.findall(r"VMOPS-CI-ROOT-BYTES (\d+)", console)
    assert int(root_bytes) > 2_500_000_000, root_bytes


def _vmops_ssh(vm: Vmops, name: str, *command: str) -> subprocess.CompletedProcess[str]:
    """``vmops ssh NAME -- COMMAND``, with no terminal: should the key be
    refused, ssh cannot fall back to asking for a password."""
    return subprocess.run([sys.executable, "-m", "vmops", "ssh", name, "--", *command],
                          env=vm.env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=SSH_TRY_TIMEOUT_S, start_new_session=True)


def _wait_for_ssh(vm: Vmops, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            done = _vmops_ssh(vm, name, "true")
            if done.returncode == 0:
                return
            why = f"exit {done.returncode}: {done.stderr.strip()[-500:]}"
        except subprocess.TimeoutExpired:
            why = f"no answer in {SSH_TRY_TIMEOUT_S:g}s"
        if time.monotonic() > deadline:
            raise AssertionError(f"vmops ssh {name} -- true failed for {timeout:g}s; "
                                 f"last: {why}")
        time.sleep(5)


@pytest.mark.skipif(os.geteuid() != 0, reason="the vmops network needs root")
def test_debian_cloud_image_on_the_vmops_network_answers_vmops_ssh(
        cloud_image: Path, test_image_dir: Path, tmp_path: Path) -> None:
    """The image on the vmops network, from the config drive alone: cloud-init
    configures the NIC statically from network_data.json (the address vmops
    recorded), and sshd lets `vmops ssh` in as the image's login user with
    the key `vmops keypair create` made."""
    with bridged_service(test_image_dir) as vm:
        bridge = vm.env["VMOPS_NETWORK_BRIDGE"]
        vm.run("image", "import", IMAGE, str(cloud_image), "--login-user", "debian")
        vm.run("flavor", "create", FLAVOR, "--ram", "1024", "--vcpus", "1", "--disk", "3")
        vm.run("keypair", "create", KEY_NAME)
        started = time.monotonic()
        server = vm.json("spawn", "deb1", "--image", IMAGE, "--flavor", FLAVOR,
                         "--config-drive", "--key-name", KEY_NAME)
        address = address_of(server)
        try:
            (finished,) = vm.wait_console("deb1", FINISHED, timeout=CLOUD_INIT_TIMEOUT_S)
            cloud_init_s = time.monotonic() - started
            _wait_for_ssh(vm, "deb1", SSH_TIMEOUT_S)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{network_diagnostics(vm, bridge)}") from None
        finally:
            (tmp_path / "console.log").write_text(_console_text(vm, "deb1"))
        ssh_s = time.monotonic() - started
        print(f"\nspawn to cloud-init finished: {cloud_init_s:.0f} s, to vmops ssh: "
              f"{ssh_s:.0f} s", file=sys.stderr)
        assert finished.group(1).startswith(b"DataSourceConfigDrive"), finished.group(0)

        def remote(*command: str) -> str:
            done = _vmops_ssh(vm, "deb1", *command)
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            return done.stdout

        # Logged in as the image's login user, with the key vmops made.
        assert remote("id", "-un").strip() == "debian"
        assert remote("cat", "/etc/hostname").strip() == "deb1"
        # The guest has the address vmops recorded...
        addr_show = remote("ip", "-4", "-o", "addr", "show")
        assert re.search(rf"inet {re.escape(address)}/24 ", addr_show), (address, addr_show)
        # ...set statically by cloud-init from network_data.json, not by DHCP.
        eni = remote("cat", "/etc/network/interfaces.d/50-cloud-init")
        assert re.search(r"^iface \S+ inet static$", eni, re.M), eni
        assert re.search(rf"^\s*address {re.escape(address)}/24$", eni, re.M), eni
        assert "dhcp" not in eni, eni
        print(f"50-cloud-init:\n{eni}", file=sys.stderr)
        # The default route is the bridge's address (the subnet's first).
        gateway = ipaddress.IPv4Network(vm.env["VMOPS_NETWORK_SUBNET"])[1]
        routes = remote("ip", "-4", "route", "show", "default")
        assert routes.startswith(f"default via {gateway} "), (gateway, routes)
