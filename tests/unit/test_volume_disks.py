"""A volume as a domain disk: the ``<disk>`` element attach and detach send
(the same builder as the domain's), reading disks back from libvirt's XML,
and the fake's attach/detach rules (libvirt's test:// driver has no device
hotplug; the real one is proven by tests/functional/test_volumes.py)."""

from __future__ import annotations

import uuid as uuidlib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmops.errors import AlreadyExists, DetachTimeout, InvalidState
from vmops.hypervisor.base import DiskSpec, DomainSpec, NicSpec, PowerState
from vmops.hypervisor.fake import FakeHypervisor
from vmops.hypervisor.libvirt.domain_xml import (
    build_domain_xml,
    disk_element,
    disk_xml,
    disks_of,
)
from vmops.volumes.records import volume_disk

VOLUME = volume_disk(Path("/state/volumes/volume-1.raw"), "raw", "vdb")


def _spec() -> DomainSpec:
    return DomainSpec(
        uuid=str(uuidlib.uuid4()), name="vmops-t", memory_mib=256, vcpus=1,
        disks=(DiskSpec(path=Path("/state/instances/t/root.qcow2"), format="qcow2",
                        target="vda"),),
        nics=(NicSpec(mac="52:54:00:12:34:56"),), console_socket=Path("/run/t.sock"))


def test_a_volume_disk_names_its_format_and_target() -> None:
    disk = ET.fromstring(disk_xml(VOLUME))
    assert (disk.tag, disk.get("type"), disk.get("device")) == ("disk", "file", "disk")
    driver = disk.find("driver")
    assert driver is not None and driver.get("type") == "raw"  # never probed
    source, target = disk.find("source"), disk.find("target")
    assert source is not None and source.get("file") == "/state/volumes/volume-1.raw"
    assert target is not None and (target.get("dev"), target.get("bus")) == ("vdb", "virtio")
    assert disk.find("readonly") is None


def test_disks_read_back_from_domain_xml() -> None:
    spec = _spec()
    xml = build_domain_xml(DomainSpec(**{**spec.__dict__, "disks": (*spec.disks, VOLUME)}))
    assert disks_of(xml) == {"vda": ("/state/instances/t/root.qcow2", ""),
                             "vdb": ("/state/volumes/volume-1.raw", "")}
    # A running domain's live XML carries aliases, which the unplug waits on.
    live = xml.replace('<target dev="vdb" bus="virtio" />',
                       '<target dev="vdb" bus="virtio" /><alias name="virtio-disk1" />')
    assert disks_of(live)["vdb"] == ("/state/volumes/volume-1.raw", "virtio-disk1")
    element = disk_element(live, "vdb")
    assert element is not None and "virtio-disk1" in element
    assert disk_element(live, "vdz") is None


def test_the_fake_follows_libvirts_rules() -> None:
    hv = FakeHypervisor()
    spec = _spec()
    hv.define(spec)
    hv.attach_disk(spec.uuid, VOLUME)  # shut off: the definition only
    with pytest.raises(AlreadyExists):
        hv.attach_disk(spec.uuid, VOLUME)
    hv.start(spec.uuid)
    assert hv.disk_targets(spec.uuid)["vdb"] == str(VOLUME.path)
    hv.pause(spec.uuid)
    with pytest.raises(DetachTimeout):  # a paused guest cannot let go
        hv.detach_disk(spec.uuid, "vdb", 1.0)
    hv.unpause(spec.uuid)
    hv.detach_disk(spec.uuid, "vdb", 1.0)
    hv.detach_disk(spec.uuid, "vdb", 1.0)  # not there: not an error
    assert list(hv.disk_targets(spec.uuid)) == ["vda"]
    hv.suspend(spec.uuid)
    assert hv.info(spec.uuid).state is PowerState.SUSPENDED
    with pytest.raises(InvalidState):
        hv.attach_disk(spec.uuid, VOLUME)
