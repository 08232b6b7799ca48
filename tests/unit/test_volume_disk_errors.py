"""A disk QEMU cannot read or write (a remote volume's target went away):
the hypervisor's I/O error event, on the fake, puts the attached volume in
``error`` with the reason in its view; the API keeps answering; the volume
can still be detached (``available`` again), and a new QEMU process for the
instance (stop and start) puts it back ``in-use``. What QEMU really does
when a target dies: tests/functional/test_volumes.py."""

from __future__ import annotations

import uuid as uuidlib

import pytest

from tests.unit.test_api import Api
from vmops.hypervisor.base import PowerState
from vmops.volumes.manager import Volumes
from vmops.volumes.records import Volume, VolumeRecords, VolumeStatus

NBD_URL = "nbd://127.0.0.1:10809/data"


def _remote_volume(api: Api, name: str = "exp") -> Volume:
    """A registered NBD volume (its target is not asked: the fake opens nothing)."""
    return VolumeRecords(api.store).add(Volume(
        id=str(uuidlib.uuid4()), name=name, size_gb=1, status=VolumeStatus.AVAILABLE,
        format="raw", path=NBD_URL, protocol="nbd", remote_host="127.0.0.1",
        remote_port=10809, remote_export="data"))


@pytest.fixture
def volumes(api: Api, monkeypatch: pytest.MonkeyPatch) -> Volumes:
    monkeypatch.setattr(api.compute, "background_actions", False)  # detach at once
    vols = Volumes(api.compute)
    vols.watch()
    return vols


def test_an_io_error_puts_the_attached_volume_in_error(api: Api, volumes: Volumes) -> None:
    inst = api.add_instance("web1")
    volume = _remote_volume(api)
    other = _remote_volume(api, "other")
    volumes.attach("exp", "web1")
    volumes.attach("other", "web1")
    api.hv.disk_error(inst.id, "vdb")
    failed = volumes.volume(volume.id)
    assert failed.status == VolumeStatus.ERROR
    assert "could not read or write disk vdb" in failed.fault
    assert f"its target {NBD_URL} does not answer" in failed.fault
    assert "the guest got the error" in failed.fault
    assert volumes.volume(other.id).status == VolumeStatus.IN_USE  # only the one that failed
    # The API answers, and the volume view says why (Cinder's status).
    shown = api.get(f"/volume/v3/volumes/{volume.id}",
                    headers={"X-Vmops-Extra": "1"}).body["volume"]  # as the CLI asks
    assert (shown["status"], shown["vmops:fault"]) == ("error", failed.fault)
    assert shown["attachments"][0]["device"] == "/dev/vdb"  # still attached
    assert api.get("/v2.1/servers/web1").body["server"]["status"] == "ACTIVE"
    # More errors change nothing; an error on a disk that is no volume neither.
    api.hv.disk_error(inst.id, "vdb")
    api.hv.disk_error(inst.id, "vda")
    api.hv.disk_error(inst.id, "vdz")  # libvirt could not name it
    assert volumes.volume(volume.id) == failed
    # It can be detached: available again, the error gone with the attachment.
    volumes.detach("exp", "web1")
    detached = volumes.volume(volume.id)
    assert (detached.status, detached.fault) == (VolumeStatus.AVAILABLE, "")
    assert "vdb" not in api.hv.disk_targets(inst.id)


def test_a_new_qemu_process_opens_it_again(api: Api, volumes: Volumes) -> None:
    inst = api.add_instance("web1")
    volume = _remote_volume(api)
    volumes.attach("exp", "web1")
    api.hv.disk_error(inst.id, "vdb")
    api.hv.pause(inst.id)
    api.hv.unpause(inst.id)  # the same QEMU process: still in error
    assert volumes.volume(volume.id).status == VolumeStatus.ERROR
    api.hv.power_off(inst.id)
    assert volumes.volume(volume.id).status == VolumeStatus.ERROR
    api.hv.start(inst.id)  # a new QEMU opened the target again: it answered
    started = volumes.volume(volume.id)
    assert (started.status, started.fault) == (VolumeStatus.IN_USE, "")


def test_no_space_pauses_the_guest_and_says_so(api: Api, volumes: Volumes) -> None:
    inst = api.add_instance("web1")
    volume = _remote_volume(api)
    volumes.attach("exp", "web1")
    api.hv.disk_error(inst.id, "vdb", reason="enospc")
    failed = volumes.volume(volume.id)
    assert failed.status == VolumeStatus.ERROR
    assert "no space left" in failed.fault and "QEMU paused the guest" in failed.fault
    assert api.hv.info(inst.id).state is PowerState.PAUSED


def test_a_volume_being_detached_keeps_its_status(api: Api, volumes: Volumes) -> None:
    inst = api.add_instance("web1")
    volume = _remote_volume(api)
    volumes.attach("exp", "web1")
    VolumeRecords(api.store).update(volume.id, status=VolumeStatus.DETACHING)
    api.hv.disk_error(inst.id, "vdb")
    assert volumes.volume(volume.id).status == VolumeStatus.DETACHING
