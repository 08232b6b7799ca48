"""Volumes with a real guest (one at a time): a volume attached to the
running test guest appears in it with its size, stays through stop/start,
suspend/resume and a service restart, disappears when detached, comes
back when attached again, and is kept (available) when the instance is
destroyed. The guest reports block devices as they come and go
(``VMOPS-DISK <dev> <bytes>``, ``VMOPS-DISK-GONE <dev>``; tools/testimage)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import Vmops, separate_service, start_service, stop_service
from tests.targets import iscsi_target, nbd_export
from vmops.compute import crash_points
from vmops.errors import ServiceUnavailable
from vmops.volumes.manager import ATTACH_STEPS, DETACH_STEPS

GIB = 1 << 30
BEAT = r"VMOPS-HEARTBEAT \d+"


@pytest.fixture
def vm(test_image_dir: Path) -> Iterator[Vmops]:
    with separate_service(test_image_dir) as service:
        yield service


def _disk_lines(vm: Vmops, name: str) -> list[str]:
    return re.findall(r"VMOPS-DISK(?:-GONE)? vd[b-z](?: \d+)?",
                      vm.console(name).decode(errors="replace"))


def test_a_volume_comes_and_goes_in_a_running_guest(vm: Vmops) -> None:
    vm.run("spawn", "v1", "--image", "tiny", "--flavor", "m1.tiny")
    vm.wait_console("v1", BEAT)
    assert _disk_lines(vm, "v1") == []  # only vda at boot
    volume = vm.json("volume", "create", "data", "--size", "1")
    assert (volume["status"], volume["size"], volume["vmops:format"]) == \
        ("available", 1, "qcow2")

    attached = vm.json("volume", "attach", "data", "v1")
    assert attached["status"] == "in-use"
    assert attached["attachments"][0]["device"] == "/dev/vdb"
    vm.wait_console("v1", f"VMOPS-DISK vdb {GIB}")  # hot-plugged: the guest sees it

    # In the persistent definition: a cold boot finds it again.
    vm.run("stop", "v1")
    vm.run("start", "v1")
    vm.wait_console("v1", f"VMOPS-DISK vdb {GIB}", count=2)
    # Suspend/resume and a service restart keep it; the detach after them
    # proves it is still plugged into the running guest.
    vm.run("suspend", "v1")
    vm.run("resume", "v1")
    stop_service(vm.service)  # type: ignore[attr-defined]
    vm.service = start_service(vm.state_dir, vm.env)  # type: ignore[attr-defined]
    assert vm.json("volume", "show", "data")["status"] == "in-use"

    detached = vm.json("volume", "detach", "data", "v1")
    assert (detached["status"], detached["attachments"]) == ("available", [])
    vm.wait_console("v1", "VMOPS-DISK-GONE vdb")
    beats = vm.heartbeat("v1")
    vm.wait_console("v1", f"VMOPS-HEARTBEAT {beats + 2}")  # the guest runs on without it

    vm.run("volume", "attach", "data", "v1", "--device", "vdc")
    vm.wait_console("v1", f"VMOPS-DISK vd[b-z] {GIB}", count=3)
    # Destroy releases it and keeps it; it can be deleted then.
    vm.run("destroy", "v1")
    kept = vm.json("volume", "show", "data")
    assert (kept["status"], kept["attachments"]) == ("available", [])
    assert Path(kept["vmops:path"]).is_file()
    vm.run("volume", "delete", "data")
    assert not Path(kept["vmops:path"]).exists()
    assert vm.json("volume", "list") == []


@pytest.mark.extended  # a second proof of detach (CI's: the first test above)
def test_a_detach_while_the_guest_boots_is_asked_again_until_it_lets_go(vm: Vmops) -> None:
    """Attach and detach as soon as the server is ACTIVE, as Tempest does:
    the guest, still booting, ignores the first unplug request; vmops asks
    again every few seconds, and once the guest's hotplug driver is up it
    lets go, within volume_detach_timeout. The guest runs on without it."""
    vm.run("spawn", "b1", "--image", "tiny", "--flavor", "m1.tiny")
    vm.run("volume", "create", "early", "--size", "1")
    vm.run("volume", "attach", "early", "b1")
    detached = vm.json("volume", "detach", "early", "b1")
    assert (detached["status"], detached["vmops:fault"]) == ("available", None)
    vm.wait_console("b1", BEAT)
    beats = vm.heartbeat("b1")
    vm.wait_console("b1", f"VMOPS-HEARTBEAT {beats + 2}")
    (definition,) = (vm.state_dir / "libvirt" / "etc" / "qemu").glob("*.xml")
    assert "vdb" not in definition.read_text()
    vm.run("destroy", "b1")
    vm.run("volume", "delete", "early")


# The guest prints vdb's size each time it changes (and once at each boot).
WATCH_VDB_SIZE = """#!/bin/sh
last=""
while :; do
  if [ -e /sys/block/vdb/size ]; then
    now=$(( $(cat /sys/block/vdb/size) * 512 ))
    [ "$now" = "$last" ] || echo "VMOPS-SIZE vdb $now"
    last=$now
  fi
  sleep 1
done
"""


@pytest.mark.extended  # a second proof of the volume verbs: CI's budget
def test_an_attached_volume_grows_under_its_guest(vm: Vmops, tmp_path: Path) -> None:
    """`vmops volume extend` on an attached volume: with the guest running,
    QEMU grows the file and the guest sees the new size at once; with the
    instance stopped, the file grows and the guest sees it at its next boot."""
    (tmp_path / "size.sh").write_text(WATCH_VDB_SIZE)
    vm.run("spawn", "g1", "--image", "tiny", "--flavor", "m1.tiny", "--config-drive",
           "--user-data", str(tmp_path / "size.sh"))
    vm.wait_console("g1", BEAT)
    vm.run("volume", "create", "data", "--size", "1")
    vm.run("volume", "attach", "data", "g1")
    vm.wait_console("g1", f"VMOPS-SIZE vdb {GIB}")
    grown = vm.json("volume", "extend", "data", "--size", "2")
    assert (grown["status"], grown["size"], grown["vmops:fault"]) == ("in-use", 2, None)
    vm.wait_console("g1", f"VMOPS-SIZE vdb {2 * GIB}")  # the running guest sees it
    info = subprocess.run(["qemu-img", "info", "-U", "-f", "qcow2", "--output=json",
                           grown["vmops:path"]], check=True, capture_output=True, text=True)
    assert json.loads(info.stdout)["virtual-size"] == 2 * GIB
    vm.run("stop", "g1")
    assert vm.json("volume", "extend", "data", "--size", "3")["size"] == 3
    vm.run("start", "g1")
    vm.wait_console("g1", f"VMOPS-SIZE vdb {3 * GIB}")
    vm.run("destroy", "g1")
    vm.run("volume", "delete", "data")


def test_volume_refusals_through_the_cli(vm: Vmops) -> None:
    """Bad input gets a clear error and leaves nothing; no guest needed."""
    for args, words in ((("volume", "create", "z", "--size", "0"), "at least 1 GiB"),
                        (("volume", "create", "big", "--size", "60000"), "free in"),
                        (("volume", "create", "x", "--size", "1", "--image", "nope"),
                         "no image"),
                        (("volume", "show", "nope"), "no volume"),
                        (("volume", "attach", "nope", "nosuch"), "no volume")):
        proc = vm.run(*args, check=False)
        assert proc.returncode != 0 and words in proc.stderr, (args, proc.stderr)
    assert json.loads(vm.run("volume", "list", "--json").stdout) == []
    assert not (vm.state_dir / "volumes").exists() or \
        list((vm.state_dir / "volumes").iterdir()) == []


def _serve_again(vm: Vmops, fault_at: str | None = None) -> None:
    """Start the service again (it died at a crash point), dying at
    ``fault_at`` next if given."""
    vm.env.pop(crash_points.ENV, None)
    if fault_at:
        vm.env[crash_points.ENV] = fault_at
    vm.service = start_service(vm.state_dir, vm.env)  # type: ignore[attr-defined]


def _died(vm: Vmops, step: str) -> None:
    assert vm.service.wait(timeout=60) == crash_points.EXIT_STATUS  # type: ignore[attr-defined]
    assert f"dying at {step}" in (vm.state_dir / "serve.out").read_text(errors="replace")


def test_a_service_killed_mid_attach_or_detach_agrees_with_the_domain_after(
        vm: Vmops) -> None:
    """Killed between libvirt's call and the record update, both ways: the
    next start reads the domain and records what it has."""
    vm.run("spawn", "v1", "--image", "tiny", "--flavor", "m1.tiny")
    vm.wait_console("v1", BEAT)
    volume_id = vm.json("volume", "create", "data", "--size", "1")["id"]
    server_id = vm.server("v1")["id"]
    stop_service(vm.service)  # type: ignore[attr-defined]
    _serve_again(vm, f"attach-volume:{ATTACH_STEPS[1]}")
    # Through the API client, which never starts a service (the CLI would,
    # with the fault still in its environment).
    # It dies under the request: the client says so, and that it may be done.
    with pytest.raises(ServiceUnavailable, match="may or may not have been done"):
        vm.client.post(f"/servers/{server_id}/os-volume_attachments",
                       {"volumeAttachment": {"volumeId": volume_id}})
    _died(vm, f"attach-volume:{ATTACH_STEPS[1]}")
    _serve_again(vm)
    assert vm.json("volume", "show", "data")["status"] == "in-use"  # the domain has it
    vm.wait_console("v1", f"VMOPS-DISK vdb {GIB}")

    stop_service(vm.service)  # type: ignore[attr-defined]
    _serve_again(vm, f"detach-volume:{DETACH_STEPS[1]}")
    vm.client.delete(f"/servers/{server_id}/os-volume_attachments/{volume_id}")  # 202 first
    _died(vm, f"detach-volume:{DETACH_STEPS[1]}")
    _serve_again(vm)
    settled = vm.json("volume", "show", "data")
    assert (settled["status"], settled["attachments"]) == ("available", [])
    vm.wait_console("v1", "VMOPS-DISK-GONE vdb")
    vm.run("volume", "attach", "data", "v1")  # and it works as ever
    vm.wait_console("v1", f"VMOPS-DISK vdb {GIB}", count=2)


def test_remote_volumes_nbd_and_iscsi_with_chap_in_a_running_guest(
        vm: Vmops, tmp_path: Path) -> None:
    """An NBD export and an iSCSI LUN (CHAP) that QEMU opens itself, from
    targets this test runs on loopback: registered with the targets' sizes,
    hot-plugged into one running guest, which sees both; the CHAP password
    is in no domain XML, record or log; after a service restart and a cold
    boot (QEMU logs in to the target again with the secret libvirt kept)
    the guest has them still; a target that goes away leaves a service that
    answers; detached, the guest loses them; deleted, the targets keep their
    data and the secret is gone."""
    with nbd_export(tmp_path, size_mib=64) as nbd, \
            iscsi_target(tmp_path, size_mib=48) as iscsi:
        secret_file = tmp_path / "chap"
        secret_file.write_text(iscsi.chap_secret + "\n")
        (tmp_path / "read-vdb.sh").write_text(READ_VDB_FOREVER)
        vm.run("spawn", "r1", "--image", "tiny", "--flavor", "m1.tiny", "--config-drive",
               "--user-data", str(tmp_path / "read-vdb.sh"))
        nbd_vol = vm.json("volume", "create", "exp", "--nbd", nbd.url)
        assert nbd_vol["vmops:remote"] == {"protocol": "nbd", "url": nbd.url,
                                           "chap_user": None, "secret_uuid": None}
        wrong = tmp_path / "wrong"
        wrong.write_text("not-the-password\n")
        refused = vm.run("volume", "create", "bad", "--iscsi", iscsi.url(1), "--chap-user",
                         iscsi.chap_user, "--chap-secret-file", str(wrong), check=False)
        assert refused.returncode != 0 and "Authentication failure" in refused.stderr
        lun = vm.json("volume", "create", "lun", "--iscsi", iscsi.url(1), "--chap-user",
                      iscsi.chap_user, "--chap-secret-file", str(secret_file))
        assert lun["vmops:remote"]["chap_user"] == iscsi.chap_user
        assert [v["name"] for v in vm.json("volume", "list")] == ["exp", "lun"]

        vm.wait_console("r1", BEAT)
        vm.run("volume", "attach", "exp", "r1")
        vm.run("volume", "attach", "lun", "r1")
        vm.wait_console("r1", f"VMOPS-DISK vdb {64 << 20}")
        vm.wait_console("r1", f"VMOPS-DISK vdc {48 << 20}")
        (definition,) = (vm.state_dir / "libvirt" / "etc" / "qemu").glob("*.xml")
        assert f"uuid='{lun['vmops:remote']['secret_uuid']}'" in definition.read_text()
        _nowhere_in_plain_text(vm.state_dir, iscsi.chap_secret)
        secrets = vm.state_dir / "libvirt" / "etc" / "secrets"
        uuid = lun["vmops:remote"]["secret_uuid"]
        assert sorted(p.name for p in secrets.iterdir()) == [f"{uuid}.base64", f"{uuid}.xml"]
        assert (secrets / f"{uuid}.base64").stat().st_mode & 0o777 == 0o600

        # A restart, then a cold boot: QEMU opens both again, the iSCSI LUN
        # with the password libvirt kept in its secret through the restart.
        stop_service(vm.service)  # type: ignore[attr-defined]
        vm.service = start_service(vm.state_dir, vm.env)  # type: ignore[attr-defined]
        # The start found both disks in the domain as recorded (libvirt's own
        # XML read back to the same URLs), so it re-attached nothing.
        assert "lacks it" not in (vm.state_dir / "vmops.log").read_text()
        assert [v["status"] for v in vm.json("volume", "list")] == ["in-use", "in-use"]
        vm.run("stop", "r1")
        vm.run("start", "r1")
        vm.wait_console("r1", f"VMOPS-DISK vdb {64 << 20}", count=2)
        vm.wait_console("r1", f"VMOPS-DISK vdc {48 << 20}", count=2)
        vm.wait_console("r1", BEAT, count=2)

        # The NBD target goes away under the guest reading it: QEMU gives
        # the guest an I/O error (it is not paused) and libvirt's I/O error
        # event puts the volume in error, saying why; the service answers.
        vm.wait_console("r1", r"VMOPS-IO vdb ok")
        nbd.stop()
        vm.wait_console("r1", r"VMOPS-IO vdb failed")
        failed = _wait_volume_status(vm, "exp", "error")
        assert "could not read or write disk vdb" in failed["vmops:fault"]
        assert f"its target {nbd.url} does not answer" in failed["vmops:fault"]
        assert failed["attachments"][0]["device"] == "/dev/vdb"
        assert vm.server("r1")["status"] == "ACTIVE"
        assert vm.json("volume", "show", "lun")["status"] == "in-use"
        # The target comes back: QEMU connects again at the guest's next
        # read, which succeeds; the volume stays in error until it is
        # detached (or the instance started anew: docs/volumes.md).
        nbd.restart()
        oks = len(re.findall(rb"VMOPS-IO vdb ok", vm.console("r1")))
        vm.wait_console("r1", r"VMOPS-IO vdb ok", count=oks + 1)
        assert vm.json("volume", "show", "exp")["status"] == "error"
        detached = vm.json("volume", "detach", "exp", "r1")
        assert (detached["status"], detached["vmops:fault"]) == ("available", None)
        vm.run("volume", "detach", "lun", "r1")
        vm.wait_console("r1", "VMOPS-DISK-GONE vdb")
        vm.wait_console("r1", "VMOPS-DISK-GONE vdc")
        vm.run("volume", "delete", "exp")
        vm.run("volume", "delete", "lun")
        assert vm.json("volume", "list") == []
        assert list(secrets.iterdir()) == []
        assert nbd.image.stat().st_size == 64 << 20 and iscsi.lun_image.stat().st_size == 48 << 20
        vm.run("destroy", "r1")


@pytest.mark.extended  # CI's tier proves a lost NBD target (above); this is iSCSI's
def test_an_iscsi_target_killed_under_a_guest_puts_its_volume_in_error(
        test_image_dir: Path, tmp_path: Path) -> None:
    """tgtd killed under the test guest reading its LUN every second: the
    guest's read waits (QEMU's initiator keeps trying to log in; no error
    reaches the guest, no I/O error event comes), the service's target
    watch finds the portal silent and puts the volume in error, naming the
    target; the service answers, the server stays ACTIVE and the guest runs
    on. tgtd back: QEMU logs in again, the guest's waiting read completes,
    the volume is in-use again, and detaches as any other."""
    with iscsi_target(tmp_path, size_mib=16, chap_user="") as iscsi, \
            separate_service(test_image_dir, volume_target_check_interval="1",
                             volume_target_timeout="3") as vm:
        (tmp_path / "read-vdb.sh").write_text(READ_VDB_FOREVER)
        vm.run("spawn", "i1", "--image", "tiny", "--flavor", "m1.tiny", "--config-drive",
               "--user-data", str(tmp_path / "read-vdb.sh"))
        vm.run("volume", "create", "lun", "--iscsi", iscsi.url(1))
        vm.wait_console("i1", BEAT)
        vm.run("volume", "attach", "lun", "i1")
        vm.wait_console("i1", f"VMOPS-DISK vdb {16 << 20}")
        vm.wait_console("i1", r"VMOPS-IO vdb ok")

        # (A read racing the hot-plug may fail before the first ok: count.)
        failed = vm.console("i1").count(b"VMOPS-IO vdb failed")
        iscsi.kill()
        lost = _wait_volume_status(vm, "lun", "error")
        assert lost["vmops:fault"].startswith(
            f"iSCSI target not answering: {iscsi.url(1)} has not accepted a connection for "
            "3 s (Connection refused); the guest's reads and writes on disk vdb wait"), lost
        assert lost["attachments"][0]["device"] == "/dev/vdb"
        assert vm.server("i1")["status"] == "ACTIVE"
        oks = len(re.findall(rb"VMOPS-IO vdb ok", vm.console("i1")))
        beats = vm.heartbeat("i1")
        vm.wait_console("i1", f"VMOPS-HEARTBEAT {beats + 3}")  # the guest runs on...
        console = vm.console("i1")
        assert console.count(b"VMOPS-IO vdb failed") == failed  # ...its read waits: no
        assert len(re.findall(rb"VMOPS-IO vdb ok", console)) == oks  # error, no success

        iscsi.restart()
        back = _wait_volume_status(vm, "lun", "in-use")
        assert back["vmops:fault"] is None
        vm.wait_console("i1", r"VMOPS-IO vdb ok", count=oks + 1)  # QEMU logged in again
        assert vm.console("i1").count(b"VMOPS-IO vdb failed") == failed
        vm.run("volume", "detach", "lun", "i1")
        vm.wait_console("i1", "VMOPS-DISK-GONE vdb")
        vm.run("volume", "delete", "lun")
        vm.run("destroy", "i1")


# The guest reads the first block of vdb, past its page cache, every second.
READ_VDB_FOREVER = """#!/bin/sh
while :; do
  if [ -e /dev/vdb ]; then
    if dd if=/dev/vdb of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null; then
      echo VMOPS-IO vdb ok
    else
      echo VMOPS-IO vdb failed
    fi
  fi
  sleep 1
done
"""


def _wait_volume_status(vm: Vmops, name: str, status: str,
                        timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        volume: dict[str, Any] = vm.json("volume", "show", name)
        if volume["status"] == status or time.monotonic() > deadline:
            assert volume["status"] == status, volume
            return volume
        time.sleep(0.5)


def _nowhere_in_plain_text(state_dir: Path, secret: str) -> None:
    """Not in the store (and its WAL), the logs, the domain definitions."""
    for path in state_dir.rglob("*"):
        if path.is_file() and "secrets" not in path.parts and path.stat().st_size < 64 << 20:
            assert secret.encode() not in path.read_bytes(), path
