"""`openstack image create --file` against a real service on TCP: the qcow2
test image uploaded through Glance's calls (create, then PUT .../file),
then a guest booted from it (its console heartbeat shows it running).
One guest. Connects as the other OpenStack client tests do (the clouds.yaml
of docs/openstack-clients.md)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.conftest import Vmops, bridged_service
from tests.functional.test_openstack_clients import (
    BEAT,
    TOKEN,
    OpenStackCLI,
    clouds_yaml,
)
from tests.functional.test_openstack_clients import port as port  # the fixture

pytestmark = [pytest.mark.extended, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def tcp_vmops(test_image_dir: Path, port: int) -> Iterator[Vmops]:
    with bridged_service(test_image_dir, listen=f"127.0.0.1:{port}", api_token=TOKEN) as vm:
        yield vm


@pytest.fixture(scope="module")
def cli(tcp_vmops: Vmops, tmp_path_factory: pytest.TempPathFactory, port: int) -> OpenStackCLI:
    path = tmp_path_factory.mktemp("os") / "clouds.yaml"
    path.write_text(clouds_yaml(port))
    return OpenStackCLI(path, path.parent)


def test_an_uploaded_image_boots(cli: OpenStackCLI, tcp_vmops: Vmops,
                                 test_image_dir: Path) -> None:
    disk = test_image_dir / "tiny.qcow2"
    made = cli.json("image", "create", "--file", str(disk), "--disk-format", "qcow2",
                    "--container-format", "bare", "uploaded")
    assert (made["status"], made["disk_format"], made["size"]) == \
        ("active", "qcow2", disk.stat().st_size)
    assert hashlib.sha256(disk.read_bytes()).hexdigest() in str(made)  # os_hash_value
    assert cli.json("image", "show", "uploaded")["id"] == made["id"]
    server = cli.json("server", "create", "--image", made["id"], "--flavor", "m1.tiny",
                      "up1", "--wait")
    assert server["status"] == "ACTIVE"
    tcp_vmops.wait_console("up1", BEAT, count=2)
    in_use = cli.run("image", "delete", made["id"], check=False)
    assert in_use.returncode != 0 and "up1" in in_use.stderr
    cli.run("server", "delete", "up1", "--wait")
    cli.run("image", "delete", made["id"])
    assert "uploaded" not in {i["Name"] for i in cli.json("image", "list")}


def test_a_refused_upload_keeps_nothing(cli: OpenStackCLI, tmp_path: Path) -> None:
    text = tmp_path / "notes.qcow2"
    text.write_bytes(b"not a disk\n" * 1024)
    refused = cli.run("image", "create", "--file", str(text), "--disk-format", "qcow2",
                      "--container-format", "bare", "notes", check=False)
    assert refused.returncode != 0 and "the upload to image" in refused.stderr
    assert "not a disk image" in refused.stderr
    # openstacksdk deletes the image it made when the upload fails.
    assert "notes" not in {i["Name"] for i in cli.json("image", "list")}


def test_image_set_unset_and_delete(cli: OpenStackCLI, tmp_path: Path) -> None:
    disk = tmp_path / "blank.raw"
    disk.write_bytes(b"\x01" * 4096)
    made = cli.json("image", "create", "--file", str(disk), "--disk-format", "raw",
                    "--container-format", "bare", "--private", "blank")
    assert (made["status"], made["visibility"], made["size"]) == ("active", "private", 4096)
    cli.run("image", "set", "--property", "os_distro=debian", "--tag", "web",
            "--min-ram", "64", "--name", "blank2", made["id"])
    shown = cli.json("image", "show", made["id"])
    assert (shown["name"], shown["min_ram"], shown["tags"]) == ("blank2", 64, ["web"])
    assert shown["properties"]["os_distro"] == "debian"
    cli.run("image", "unset", "--property", "os_distro", "--tag", "web", made["id"])
    shown = cli.json("image", "show", made["id"])
    assert "os_distro" not in shown.get("properties", {}) and shown["tags"] == []
    cli.run("image", "set", "--protected", made["id"])
    assert cli.run("image", "delete", made["id"], check=False).returncode != 0
    cli.run("image", "set", "--unprotected", made["id"])
    cli.run("image", "delete", made["id"])
