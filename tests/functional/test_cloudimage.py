"""A real distribution image: Debian 12 with systemd and cloud-init
(tools/cloudimage), configured by vmops' config drive alone.

Slow (a first build takes minutes; a boot to cloud-init's final stage takes
2-3 minutes under TCG on a shared 2-core machine), so deselected by default:
`scripts/test-slow` runs it.
The guest reports through a runcmd in the user-data that writes to the
serial console; nothing inside the image knows about vmops.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.conftest import REPO, Vmops

pytestmark = [pytest.mark.slow, pytest.mark.functional]

BUILD = REPO / "tools" / "cloudimage" / "build.py"
IMAGE = "debian-12"
FLAVOR = "ci.debian"
KEY_NAME = "ci-key"
BUILD_TIMEOUT_S = 1800.0
CLOUD_INIT_TIMEOUT_S = 400.0  # a wait bound only: 2-3 minutes under TCG
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
