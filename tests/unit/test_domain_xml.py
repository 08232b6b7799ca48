"""Domain XML builder: golden files for representative instances, and its rules.

Regenerate the golden files after an intended change with

    VMOPS_REGEN_GOLDEN=1 pytest tests/unit/test_domain_xml.py

and review the diff under tests/unit/golden/domain/.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmops.hypervisor.base import (
    Accel,
    DiskBus,
    DiskDevice,
    DiskSpec,
    DomainSpec,
    NicSpec,
)
from vmops.hypervisor.libvirt.domain_xml import VMOPS_XMLNS, build_domain_xml, serial_pipe_of

GOLDEN = Path(__file__).parent / "golden" / "domain"
INSTANCE_DIR = Path("/var/lib/vmops/instances/0b5e6a3c-8f3e-4c4e-9d7a-1f2b3c4d5e6f")
NS = {"vmops": VMOPS_XMLNS}


def _root_disk() -> DiskSpec:
    return DiskSpec(path=INSTANCE_DIR / "root.qcow2", format="qcow2", target="vda")


BASIC = DomainSpec(
    uuid="0b5e6a3c-8f3e-4c4e-9d7a-1f2b3c4d5e6f",
    name="vmops-web1",
    memory_mib=512,
    vcpus=1,
    disks=(_root_disk(),),
    nics=(NicSpec(mac="52:54:00:12:34:56"),),
    console_socket=Path("/var/lib/vmops/run/0b5e6a3c-8f3e-4c4e-9d7a-1f2b3c4d5e6f.sock"),
    metadata={"name": "web1", "flavor": "m1.small", "image": "cirros"},
)

CASES: dict[str, DomainSpec] = {
    "basic_tcg": BASIC,
    "kvm_limit_cpu_features": dataclasses.replace(
        BASIC, accel=Accel.KVM, vcpus=2, limit_cpu_features=True),
    "dynamic_memory_ratio_2": dataclasses.replace(
        BASIC, memory_mib=2048, dynamic_memory_ratio=2.0),
    "config_drive_ephemeral_two_nics": dataclasses.replace(
        BASIC,
        disks=(
            _root_disk(),
            DiskSpec(path=INSTANCE_DIR / "ephemeral.qcow2", format="qcow2", target="vdb"),
            DiskSpec(path=INSTANCE_DIR / "config.iso", format="raw", target="hdc",
                     bus=DiskBus.IDE, device=DiskDevice.CDROM, readonly=True),
        ),
        nics=(NicSpec(mac="52:54:00:12:34:56"),
              NicSpec(mac="52:54:00:AB:CD:EF", kind="bridge", source="br0")),
        emulator="/usr/bin/qemu-system-x86_64",
    ),
    # A NIC on the vmops network: the tap is named by vmops, so its firewall
    # rules can name it before the domain exists.
    "vmops_bridge_nic": dataclasses.replace(
        BASIC, nics=(NicSpec(mac="52:54:00:12:34:56", kind="bridge", source="vmops0",
                             target="vmt0b5e6a3c8f3"),)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_xml_matches_golden(case: str) -> None:
    xml = build_domain_xml(CASES[case])
    golden = GOLDEN / f"{case}.xml"
    if os.environ.get("VMOPS_REGEN_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(xml)
    assert xml == golden.read_text(), f"regenerate with VMOPS_REGEN_GOLDEN=1 and review {golden}"


def test_output_does_not_depend_on_metadata_order() -> None:
    reordered = dataclasses.replace(BASIC, metadata=dict(reversed(BASIC.metadata.items())))
    assert build_domain_xml(reordered) == build_domain_xml(BASIC)


def _parse(spec: DomainSpec) -> ET.Element:
    return ET.fromstring(build_domain_xml(spec))


def _find(parent: ET.Element, path: str) -> ET.Element:
    found = parent.find(path)
    assert found is not None, path
    return found


def test_accel_sets_domain_type() -> None:
    assert _parse(BASIC).get("type") == "qemu"
    assert _parse(dataclasses.replace(BASIC, accel=Accel.KVM)).get("type") == "kvm"


@pytest.mark.parametrize(("accel", "limit", "mode", "model"), [
    (Accel.TCG, False, "maximum", None),
    (Accel.KVM, False, "host-passthrough", None),
    (Accel.TCG, True, "custom", "Nehalem"),
    (Accel.KVM, True, "custom", "Nehalem"),
])
def test_cpu_mode(accel: Accel, limit: bool, mode: str, model: str | None) -> None:
    cpu = _parse(dataclasses.replace(BASIC, accel=accel, limit_cpu_features=limit)).find("cpu")
    assert cpu is not None and cpu.get("mode") == mode
    assert cpu.findtext("model") == model


def test_dynamic_memory_starts_lower_and_balloon_deflates() -> None:
    root = _parse(dataclasses.replace(BASIC, memory_mib=1000, dynamic_memory_ratio=3.0))
    assert root.findtext("memory") == str(1000 * 1024)
    assert root.findtext("currentMemory") == str(333 * 1024)
    balloon = root.find("devices/memballoon")
    assert balloon is not None and balloon.get("autodeflate") == "on"


def test_ratio_one_keeps_all_memory_and_a_plain_balloon() -> None:
    root = _parse(BASIC)
    assert root.findtext("memory") == root.findtext("currentMemory") == str(512 * 1024)
    balloon = root.find("devices/memballoon")
    assert balloon is not None and balloon.get("model") == "virtio"
    assert balloon.get("autodeflate") is None


def test_every_disk_names_its_format() -> None:
    root = _parse(CASES["config_drive_ephemeral_two_nics"])
    drivers = root.findall("devices/disk/driver")
    assert [d.get("type") for d in drivers] == ["qcow2", "qcow2", "raw"]


def test_cdrom_is_readonly_and_writable_disks_are_not() -> None:
    disks = _parse(CASES["config_drive_ephemeral_two_nics"]).findall("devices/disk")
    assert [d.find("readonly") is not None for d in disks] == [False, False, True]


def test_mark_carries_metadata_and_escapes_values() -> None:
    spec = dataclasses.replace(BASIC, metadata={"name": "a<b>&'\"c"})
    mark = _parse(spec).find("metadata/vmops:instance", NS)
    assert mark is not None
    assert mark.findtext("vmops:name", namespaces=NS) == "a<b>&'\"c"


def test_mark_present_without_metadata() -> None:
    root = _parse(dataclasses.replace(BASIC, metadata={}))
    assert root.find("metadata/vmops:instance", NS) is not None


@pytest.mark.parametrize("key", ["Name", "1st", "a b", "x:y", ""])
def test_metadata_keys_must_be_element_names(key: str) -> None:
    with pytest.raises(ValueError, match="metadata key"):
        build_domain_xml(dataclasses.replace(BASIC, metadata={key: "v"}))


def test_network_and_bridge_nics_name_their_source() -> None:
    spec = dataclasses.replace(BASIC, nics=(
        NicSpec(mac="52:54:00:00:00:01", kind="network", source="default"),
        NicSpec(mac="52:54:00:00:00:02", kind="bridge", source="br0", model="e1000")))
    nics = _parse(spec).findall("devices/interface")
    assert [(n.get("type"), _find(n, "source").attrib) for n in nics] == [
        ("network", {"network": "default"}), ("bridge", {"bridge": "br0"})]
    assert _find(nics[1], "model").get("type") == "e1000"


@pytest.mark.parametrize("nic", [
    NicSpec(mac="52:54:00:00:00:01", kind="bridge"),
    NicSpec(mac="52:54:00:00:00:01", kind="macvtap", source="eth0"),
])
def test_bad_nics_are_refused(nic: NicSpec) -> None:
    with pytest.raises(ValueError):
        build_domain_xml(dataclasses.replace(BASIC, nics=(nic,)))


@pytest.mark.parametrize("spec", [
    dataclasses.replace(BASIC, vcpus=0),
    dataclasses.replace(BASIC, memory_mib=0),
    dataclasses.replace(BASIC, dynamic_memory_ratio=0.5),
])
def test_impossible_sizes_are_refused(spec: DomainSpec) -> None:
    with pytest.raises(ValueError):
        build_domain_xml(spec)


def test_serial_port_and_console_share_the_pipes() -> None:
    root = _parse(BASIC)
    paths = {e.get("path") for e in root.findall("devices/*/source")
             if e.get("path") is not None and e.get("path", "").endswith(".sock")}
    assert paths == {str(BASIC.console_socket)}
    assert _find(root, "devices/serial").get("type") == "pipe"
    assert _find(root, "devices/console").get("type") == "pipe"


def test_the_serial_pipe_is_read_back_from_a_domains_xml() -> None:
    assert serial_pipe_of(build_domain_xml(BASIC)) == BASIC.console_socket
    socket_domain = build_domain_xml(BASIC).replace("type=\"pipe\"", "type=\"unix\"")
    assert "type=\"unix\"" in socket_domain  # a domain from before the FIFOs
    assert serial_pipe_of(socket_domain) is None
    assert serial_pipe_of("<domain><devices/></domain>") is None


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_usb_controller(case: str) -> None:
    # Without the explicit "none", libvirt adds a PIIX3 UHCI controller that
    # no vmops device uses and whose probe slows every TCG boot.
    controllers = _parse(CASES[case]).findall("devices/controller")
    assert [(c.get("type"), c.get("model")) for c in controllers] == [("usb", "none")]
