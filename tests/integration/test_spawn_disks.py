"""Spawn's disk step: the config drive is written on a thread of its own
while qemu-img makes the disks (vmops/compute/spawn.py, #17). What it gives
is what it gave in turn, and a failure of either side is raised only once
both are done, so the rollback removes everything and nothing is written
after it. Fake hypervisor, real qemu-img, real ISO.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_compute import _spawn
from tests.integration.test_compute import env as env  # noqa: F401 - the fixture, shared
from vmops import configdrive
from vmops.compute import spawn, states
from vmops.compute.catalog import Catalog
from vmops.disks import qemu_img
from vmops.errors import DiskError

pytestmark = pytest.mark.integration


def test_every_disk_and_the_config_drive_in_order(env: dict[str, Any]) -> None:
    catalog: Catalog = env["catalog"]
    catalog.create_flavor("full", 256, 1, 1, ephemeral_gb=1, swap_mb=16)
    inst = _spawn(env, flavor="full", config_drive=True, user_data=b"hello")
    assert inst.vm_state == states.ACTIVE
    assert [(d.role, d.target, d.device) for d in inst.disks] == [
        ("root", "vda", "disk"), ("ephemeral", "vdb", "disk"), ("swap", "vdc", "disk"),
        ("config", "hda", "cdrom")]
    assert configdrive.read_iso(Path(inst.disks[3].path))["openstack/latest/user_data"] \
        == b"hello"


def test_a_config_drive_that_fails_rolls_back_after_the_root_disk_is_made(
        env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_a: Any, **_k: Any) -> Path:
        raise RuntimeError("the drive broke")

    monkeypatch.setattr(spawn, "write_config_drive", broken)
    inst = _spawn(env, config_drive=True)
    assert inst.vm_state == states.ERROR and "the drive broke" in inst.fault
    assert not env["compute"].instance_dir(inst).exists()


def test_a_root_disk_that_fails_waits_for_the_drive_and_is_the_error_raised(
        env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The drive is still being written when the root disk fails: the spawn
    waits for it before rolling back, so no file appears after the rollback."""
    finished: list[Path] = []
    write = spawn.write_config_drive

    def slow(*args: Any, **kw: Any) -> Path:
        time.sleep(0.3)
        path = write(*args, **kw)
        finished.append(path)
        return path

    def no_overlay(*_a: Any, **_k: Any) -> None:
        raise DiskError(reason="qemu-img refused")

    monkeypatch.setattr(spawn, "write_config_drive", slow)
    monkeypatch.setattr(qemu_img, "create_overlay", no_overlay)
    inst = _spawn(env, config_drive=True)
    assert finished, "the spawn did not wait for the config drive"
    assert inst.vm_state == states.ERROR and "qemu-img refused" in inst.fault
    assert not env["compute"].instance_dir(inst).exists()
