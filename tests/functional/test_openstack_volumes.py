"""The `openstack` command line's volume commands, unchanged, against a
real service on TCP and one real guest: volume create/list/show/set (size, name, description)/delete
and server add volume / server volume list / server remove volume, with the
admin_token clouds.yaml of docs/openstack-clients.md (its
volume_endpoint_override line included). The guest sees the disk come and
go (tools/testimage's VMOPS-DISK lines)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import Vmops, separate_service
from tests.functional.test_openstack_clients import BEAT, TOKEN, OpenStackCLI, clouds_yaml

pytestmark = [pytest.mark.extended, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")]
GIB = 1 << 30


@pytest.fixture
def served(test_image_dir: Path, tmp_path: Path) -> Iterator[tuple[Vmops, OpenStackCLI]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with separate_service(test_image_dir, listen=f"127.0.0.1:{port}", api_token=TOKEN) as vm:
        clouds = tmp_path / "clouds.yaml"
        clouds.write_text(clouds_yaml(port))
        yield vm, OpenStackCLI(clouds, tmp_path)


def _wait_volume(cli: OpenStackCLI, name: str, status: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        volume = cli.json("volume", "show", name)
        if volume["status"] == status:
            return volume
        assert time.monotonic() < deadline, f"volume {name} is {volume['status']}, not {status}"
        time.sleep(0.5)


def test_openstack_volume_commands(served: tuple[Vmops, OpenStackCLI]) -> None:
    vm, cli = served
    created = cli.json("volume", "create", "--size", "1", "data")
    assert (created["name"], created["size"]) == ("data", 1)
    volume = _wait_volume(cli, "data", "available")
    assert [(v["Name"], v["Size"]) for v in cli.json("volume", "list")] == [("data", 1)]

    vm.run("spawn", "s1", "--image", "tiny", "--flavor", "m1.tiny")
    vm.wait_console("s1", BEAT)  # booted: the guest answers hotplug requests
    cli.run("server", "add", "volume", "s1", "data")
    assert _wait_volume(cli, "data", "in-use")["attachments"][0]["device"] == "/dev/vdb"
    vm.wait_console("s1", f"VMOPS-DISK vdb {GIB}")
    (attachment,) = cli.json("server", "volume", "list", "s1")
    assert (attachment["Volume ID"], attachment["Device"]) == (volume["id"], "/dev/vdb")
    refused = cli.run("volume", "delete", "data", check=False)
    assert refused.returncode != 0
    assert _wait_volume(cli, "data", "in-use")

    cli.run("server", "remove", "volume", "s1", "data")
    _wait_volume(cli, "data", "available")
    vm.wait_console("s1", "VMOPS-DISK-GONE vdb")
    assert cli.json("server", "volume", "list", "s1") == []

    cli.run("volume", "set", "--size", "2", "data")
    assert _wait_volume(cli, "data", "available")["size"] == 2
    cli.run("volume", "set", "--name", "logs", "--description", "the logs", "data")
    renamed = cli.json("volume", "show", "logs")
    assert (renamed["id"], renamed["description"]) == (volume["id"], "the logs")
    cli.run("volume", "delete", "logs")
    assert cli.json("volume", "list") == []


def test_openstack_extends_an_in_use_volume_at_microversion_342(
        served: tuple[Vmops, OpenStackCLI]) -> None:
    """`openstack volume set --size` on an attached volume: OpenStackClient
    (openstacksdk) reads 3.0 to 3.42 from the version document, negotiates
    3.42 and vmops grows the volume, still in-use; held to 3.0
    (--os-volume-api-version 3.0) the client refuses it itself, as against
    a Cinder before 3.42. The server is made without booting (--no-start):
    a stopped instance's volume is grown by qemu-img (a running guest seeing
    its disk grow: tests/functional/test_volumes.py)."""
    vm, cli = served
    cli.run("volume", "create", "--size", "1", "data")
    volume = _wait_volume(cli, "data", "available")
    vm.run("spawn", "s0", "--image", "tiny", "--flavor", "m1.tiny", "--no-start")
    cli.run("server", "add", "volume", "s0", "data")
    _wait_volume(cli, "data", "in-use")
    refused = cli.run("--os-volume-api-version", "3.0", "volume", "set", "--size", "2",
                      "data", check=False)
    assert "--os-volume-api-version 3.42 or greater is required" in refused.stderr
    assert _wait_volume(cli, "data", "in-use")["size"] == 1
    cli.run("volume", "set", "--size", "2", "data")
    grown = _wait_volume(cli, "data", "in-use")
    assert (grown["id"], grown["size"]) == (volume["id"], 2)
    cli.run("--os-volume-api-version", "3.42", "volume", "set", "--size", "3", "data")
    assert _wait_volume(cli, "data", "in-use")["size"] == 3
    beyond = cli.run("--os-volume-api-version", "3.43", "volume", "show", "data", check=False)
    assert beyond.returncode != 0
    cli.run("server", "remove", "volume", "s0", "data")
    _wait_volume(cli, "data", "available")
    vm.run("destroy", "s0")
    cli.run("volume", "delete", "data")


def test_openstack_quota_set_and_show_the_volume_quotas(
        served: tuple[Vmops, OpenStackCLI]) -> None:
    """`openstack quota set --volumes --gigabytes` and `quota show --volume`
    go to the volume service's os-quota-sets (enforcement:
    tests/integration/test_volume_quota.py). No guest boots."""
    vm, cli = served
    project = cli.json("project", "list")[0]["ID"]
    cli.run("quota", "set", "--volumes", "1", "--gigabytes", "3", project)
    shown = {row["Resource"]: row["Limit"]
             for row in cli.json("quota", "show", "--volume", project)}
    assert (shown["volumes"], shown["gigabytes"]) == (1, 3), shown
    limits = vm.client.get(f"/volume/v3/{project}/os-quota-sets/{project}")["quota_set"]
    assert (limits["volumes"], limits["gigabytes"]) == (1, 3)


@pytest.mark.extended
def test_openstack_server_create_boots_from_volumes(served: tuple[Vmops, OpenStackCLI]) -> None:
    """`openstack server create --boot-from-volume N --image I` (a new root
    volume from the image) and `--volume V` (an existing one), unchanged."""
    vm, cli = served
    cli.json("server", "create", "--image", "tiny", "--flavor", "m1.tiny",
             "--boot-from-volume", "1", "bfv1", "--wait")
    vm.wait_console("bfv1", f"VMOPS-DISK vda {GIB}")  # its root disk is the 1 GiB volume
    shown = cli.json("server", "show", "bfv1")
    assert shown["image"] == "N/A (booted from volume)"  # the client's words for image ""
    (attached,) = shown["volumes_attached"]
    assert attached["delete_on_termination"] is False
    volume = _wait_volume(cli, attached["id"], "in-use")
    assert (volume["bootable"], volume["attachments"][0]["device"]) == (True, "/dev/vda")
    cli.run("server", "delete", "--wait", "bfv1")
    _wait_volume(cli, attached["id"], "available")  # kept: not deleted on termination

    cli.json("server", "create", "--volume", attached["id"], "--flavor", "m1.tiny", "bfv2",
             "--wait")
    vm.wait_console("bfv2", f"VMOPS-DISK vda {GIB}")
    refused = cli.run("server", "remove", "volume", "bfv2", attached["id"], check=False)
    assert refused.returncode != 0 and "Cannot detach a root device volume" in refused.stderr
    cli.run("server", "delete", "--wait", "bfv2")
    _wait_volume(cli, attached["id"], "available")
    cli.run("volume", "delete", attached["id"])
    assert cli.json("volume", "list") == []


def test_openstack_server_create_with_more_volumes(served: tuple[Vmops, OpenStackCLI]) -> None:
    """`openstack server create --image I --block-device-mapping vdb=VOL
    --block-device source_type=blank,...`: an existing volume and a new
    blank one besides the root, which the guest sees at boot; server delete
    deletes the one made with delete_on_termination and keeps the other."""
    vm, cli = served
    cli.json("volume", "create", "--size", "1", "data")
    data = _wait_volume(cli, "data", "available")
    cli.json("server", "create", "--image", "tiny", "--flavor", "m1.tiny",
             "--block-device-mapping", f"vdb={data['id']}",
             "--block-device", "source_type=blank,destination_type=volume,volume_size=2,"
             "delete_on_termination=true", "more1", "--wait")
    vm.wait_console("more1", f"VMOPS-DISK vdb {GIB}")  # the guest sees both at boot
    vm.wait_console("more1", f"VMOPS-DISK vdc {2 * GIB}")
    vm.wait_console("more1", BEAT)
    attached = {v["id"]: v["delete_on_termination"]
                for v in cli.json("server", "show", "more1")["volumes_attached"]}
    assert attached.pop(data["id"]) is False
    ((blank_id, blank_deleted),) = attached.items()
    assert blank_deleted is True
    blank = _wait_volume(cli, blank_id, "in-use")
    assert (blank["size"], blank["attachments"][0]["device"]) == (2, "/dev/vdc")
    assert _wait_volume(cli, "data", "in-use")["attachments"][0]["device"] == "/dev/vdb"
    cli.run("server", "delete", "--wait", "more1")
    _wait_volume(cli, "data", "available")  # kept
    assert [v["ID"] for v in cli.json("volume", "list")] == [data["id"]]  # the blank one: gone
    cli.run("volume", "delete", "data")
