"""The domain XML vmops builds is valid against libvirt's own schema.

The driver defines domains without ``VIR_DOMAIN_DEFINE_VALIDATE``: that
flag makes libvirt load and check its RelaxNG schema on every define
(~8-12 ms of each spawn on the bench host, issue #17), and without it
libvirt silently ignores an element or attribute it does not know. So the
check is made here instead, on the builder's output for the representative
instances of tests/unit/test_domain_xml.py (whose golden files pin that
output) and for the builder's other branches (``MORE_CASES``: KVM, virtio
and CD-ROM config drives, rescue, file/NBD/iSCSI volumes with CHAP,
network NICs), with libvirt's real schema through its in-process test driver.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.unit.test_domain_xml import BASIC, CASES, INSTANCE_DIR, _root_disk
from vmops.compute.manager import _disk_spec
from vmops.hypervisor.base import Accel, DiskSpec, DomainSpec, NicSpec
from vmops.hypervisor.libvirt.domain_xml import build_domain_xml
from vmops.store import DiskRecord
from vmops.volumes import remote
from vmops.volumes.records import Volume, disk_of, volume_disk

SECRET = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"


def _remote(url: str, target: str, chap_user: str = "", secret_uuid: str = "") -> DiskSpec:
    """A remote volume's disk, recorded as registering ``url`` records it."""
    source = remote.parse_nbd(url) if url.startswith("nbd") else remote.parse_iscsi(url)
    iqn, _, lun = source.name.rpartition("/") if source.protocol == "iscsi" else ("", "", "")
    return disk_of(Volume(
        id="v1", name="v1", size_gb=1, status="available", format="raw", path=source.url,
        protocol=source.protocol, remote_host=source.host, remote_port=source.port,
        remote_socket=source.socket, remote_export=iqn or source.name,
        remote_lun=int(lun or 0), chap_user=chap_user, secret_uuid=secret_uuid), target)


def _record(role: str, name: str, target: str, device: str = "disk") -> DiskRecord:
    fmt = "raw" if name.endswith(".iso") else "qcow2"
    return DiskRecord(role, str(INSTANCE_DIR / name), fmt, target, device=device)


# Branches of the builder the golden cases above do not take, made as the
# service makes them (compute's _disk_spec from disk records, the volumes'
# disk_of from remote URLs): without VIR_DOMAIN_DEFINE_VALIDATE at define,
# this is where libvirt's schema sees them.
MORE_CASES: dict[str, DomainSpec] = {
    "kvm_host_passthrough": dataclasses.replace(BASIC, accel=Accel.KVM, vcpus=4),
    "virtio_config_drive_swap": dataclasses.replace(BASIC, disks=tuple(_disk_spec(d) for d in (
        _record("root", "root.qcow2", "vda"), _record("swap", "swap.qcow2", "vdb"),
        _record("config", "config.iso", "vdc")))),
    "cdrom_config_drive": dataclasses.replace(BASIC, disks=tuple(_disk_spec(d) for d in (
        _record("root", "root.qcow2", "vda"), _record("config", "config.iso", "hda", "cdrom")))),
    "rescue": dataclasses.replace(BASIC, disks=tuple(_disk_spec(d) for d in (
        _record("rescue", "rescue/rescue.qcow2", "vda"), _record("root", "root.qcow2", "vdb"),
        _record("config", "rescue/config.iso", "hda", "cdrom")))),
    "volumes_file_nbd_iscsi": dataclasses.replace(BASIC, disks=(
        _root_disk(),
        volume_disk(Path("/var/lib/vmops/volumes/v1.qcow2"), "qcow2", "vdb"),
        _remote("nbd://10.1.2.3:10810/exp", "vdc"),
        _remote("nbd://[fd00::1]/e", "vdd"),
        _remote("nbd+unix:///exp?socket=/run/nbd.sock", "vde"),
        _remote("iscsi://storage.example/iqn.2026-12.dev.vmops:store/1", "vdf"),
        _remote("iscsi://10.0.0.1:3261/iqn.2026-12.dev.vmops:store/2", "vdg",
                chap_user="vmops", secret_uuid=SECRET),
    )),
    "boot_volume_only": dataclasses.replace(BASIC, disks=(
        _remote("iscsi://10.0.0.1/iqn.2026-12.dev.vmops:store/0", "vda"),)),
    "network_and_user_nics": dataclasses.replace(BASIC, nics=(
        NicSpec(mac="52:54:00:12:34:56", kind="network", source="default"),
        NicSpec(mac="52:54:00:12:34:57"),
        NicSpec(mac="52:54:00:12:34:58", kind="bridge", source="vmops0", target="vmt1"))),
    "no_nics_metadata_escaped": dataclasses.replace(
        BASIC, nics=(), metadata={"name": "<web & \"1\">", "image": "\u00e9t\u00e9"}),
}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def conn() -> Iterator[libvirt.virConnect]:
    c = libvirt.open("test:///default")
    yield c
    c.close()


@pytest.mark.parametrize("case", sorted(CASES) + sorted(MORE_CASES))
def test_the_builders_xml_validates_against_libvirts_schema(conn: libvirt.virConnect,
                                                            case: str) -> None:
    dom = conn.defineXMLFlags(build_domain_xml({**CASES, **MORE_CASES}[case]),
                              libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
    dom.undefine()
