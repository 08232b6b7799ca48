"""Ansible's openstack.cloud collection against a real service, a real guest.

The playbook (tests/functional/ansible/playbook.yml) is what a user would
write: flavor and image lookups, a keypair, a server created with
``wait: true`` (which deletes a server that comes up without addresses, so
the service is on the vmops network), stop, start, server info; then,
separately, the deletes. Its connection is exactly the password clouds.yaml
of docs/openstack-clients.md. The guest must have booted and read the
keypair and metadata from its config drive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.conftest import REPO, Vmops, bridged_service
from tests.functional.test_configdrive import DUMPED, _dumped_files, _public_key
from tests.functional.test_identity_clients import password_clouds_yaml
from tests.functional.test_openstack_clients import port as port  # the fixture

pytestmark = pytest.mark.extended

PLAYBOOK = REPO / "tests" / "functional" / "ansible" / "playbook.yml"
@pytest.fixture(scope="module")
def ansible_playbook() -> str:
    """The ansible-playbook of a virtualenv of its own (made once, cached)."""
    made = subprocess.run([str(REPO / "tools" / "ansible" / "venv")], capture_output=True,
                          text=True, timeout=900)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


@pytest.fixture(scope="module")
def service(test_image_dir: Path, port: int) -> Iterator[tuple[Vmops, int]]:
    with bridged_service(test_image_dir, listen=f"127.0.0.1:{port}") as vm:
        yield vm, port


def test_playbook_creates_acts_on_and_deletes_a_server(
        ansible_playbook: str, service: tuple[Vmops, int], tmp_path: Path) -> None:
    vm, port = service
    clouds = tmp_path / "clouds.yaml"
    password = (vm.state_dir / "admin-password").read_text().strip()
    clouds.write_text(password_clouds_yaml(port, password))
    out = tmp_path / "out.json"
    key = _public_key("ansible@vmops-test")
    env = {"PATH": f"{Path(ansible_playbook).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "OS_CLIENT_CONFIG_FILE": str(clouds), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
           "ANSIBLE_NOCOLOR": "1", "LANG": os.environ.get("LANG", "C.UTF-8")}

    def play(tag: str) -> None:
        proc = subprocess.run(
            [ansible_playbook, str(PLAYBOOK), "--tags", tag, "-e",
             json.dumps({"key": key, "server": "ans1", "out": str(out)})],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, f"{tag}:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"

    play("up")
    answers = json.loads(out.read_text())
    assert answers["created"]["name"] == "ans1"
    assert answers["created"]["status"] == "ACTIVE"
    assert answers["created"]["addresses"], answers["created"]
    (info,) = answers["info"]
    assert (info["status"], info["power_state"]) == ("ACTIVE", 1)
    server = vm.server("ans1")
    assert info["id"] == server["id"]

    # Stopped and started: Nova's instance actions say so. (The first boot
    # may not reach userspace before the stop: count the boots no further.)
    events = subprocess.run(
        [str(Path(sys.executable).parent / "openstack"), "server", "event", "list", "ans1",
         "-f", "json"], env={**env, "OS_CLOUD": "vmops"}, capture_output=True, text=True,
        timeout=120, check=True)
    actions = [e["Action"] for e in json.loads(events.stdout)]
    assert sorted(actions) == ["create", "start", "stop"], actions
    # It booted and read its config drive.
    vm.wait_console("ans1", DUMPED)
    meta = json.loads(_dumped_files(vm.console("ans1"))["openstack/latest/meta_data.json"])
    assert meta["uuid"] == server["id"]
    assert meta["meta"] == {"role": "ansible"}
    assert meta["public_keys"] == {"ansible-key": key}

    play("down")
    assert vm.json("list", "--json") == []
    assert vm.json("keypair", "list", "--json") == []
