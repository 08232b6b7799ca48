"""Remote volumes' URLs, QEMU options and domain XML (no target, no libvirt)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmops.errors import Invalid
from vmops.hypervisor.base import DiskSpec, NetworkSource
from vmops.hypervisor.libvirt.domain_xml import disk_xml, disks_of, secret_xml
from vmops.volumes import remote
from vmops.volumes.records import Volume, disk_of, network_source

IQN = "iqn.2026-12.dev.vmops:store"


@pytest.mark.parametrize(("url", "expected"), [
    ("nbd://10.1.2.3:10810/exp", NetworkSource("nbd", "exp", host="10.1.2.3", port=10810)),
    ("nbd://storage.example/exp", NetworkSource("nbd", "exp", host="storage.example",
                                                port=10809)),
    ("nbd://127.0.0.1:10809/", NetworkSource("nbd", "", host="127.0.0.1", port=10809)),
    ("nbd://[::1]:10811/e", NetworkSource("nbd", "e", host="::1", port=10811)),
    ("nbd+unix:///exp?socket=/run/nbd.sock", NetworkSource("nbd", "exp",
                                                           socket="/run/nbd.sock")),
])
def test_nbd_urls(url: str, expected: NetworkSource) -> None:
    source = remote.parse_nbd(url)
    assert source == expected
    assert remote.parse_nbd(source.url) == source  # the recorded URL reads back the same


@pytest.mark.parametrize(("url", "expected"), [
    (f"iscsi://127.0.0.1:3261/{IQN}/1", NetworkSource("iscsi", f"{IQN}/1", host="127.0.0.1",
                                                      port=3261)),
    (f"iscsi://san.example/{IQN}/0", NetworkSource("iscsi", f"{IQN}/0", host="san.example",
                                                   port=3260)),
])
def test_iscsi_urls(url: str, expected: NetworkSource) -> None:
    source = remote.parse_iscsi(url)
    assert source == expected and remote.parse_iscsi(source.url) == source


@pytest.mark.parametrize(("url", "reason"), [
    ("nbd://h:0/e", "port '0'"),
    ("nbd://h:x/e", "port 'x'"),
    ("nbd://h/e x", "export name"),
    ("nbd://h,x/e", "host 'h,x'"),
    ("nbd://h/e?tls=1", "NBD URL"),
    ("nbd+unix:///e?socket=relative", "nbd\\+unix:///EXPORT"),
    ("nbd+unix://h/e?socket=/s", "nbd\\+unix:///EXPORT"),
    ("iscsi://h/" + IQN, "iSCSI URL"),
    (f"iscsi://h/{IQN}/16384", "LUN '16384'"),
    (f"iscsi://h/{IQN}/1/2", "iSCSI URL"),
    (f"iscsi://user:pw@h/{IQN}/1", "carries no user or password"),
    # str.isdigit() takes these, int() does not: no ValueError (a 500)
    ("nbd://h:\u00b2/e", "port '\u00b2'"),
    (f"iscsi://h:1\u0663/{IQN}/0", "port '1\u0663'"),
    (f"iscsi://h/{IQN}/\u00b2", "LUN '\u00b2'"),
    (f"iscsi://[::1/{IQN}/0", "iSCSI URL"),
    ("nbd://[::1/e", "NBD URL"),
    ("iscsi://h/iqn.2020-01.org.example:" + "t" * 224 + "/0", "at most 223"),
    # A trailing newline (percent-encoded, so urlsplit keeps it) is no
    # letter: re's '$' matches before it. Define no longer validates against
    # libvirt's schema (3d26ced), which refused it in a socket path.
    ("nbd://h/e%0A", "NBD export name"),
    ("nbd+unix:///e?socket=/tmp/s.sock%0A", "NBD URL"),
])
def test_bad_urls_are_refused_naming_what_is_wrong(url: str, reason: str) -> None:
    parse = remote.parse_nbd if url.startswith("nbd") else remote.parse_iscsi
    with pytest.raises(Invalid, match=reason):
        parse(url)


def test_qemu_image_opts_name_the_secret_object_never_the_password() -> None:
    source = NetworkSource("iscsi", f"{IQN}/2", host="127.0.0.1", port=3261, auth_user="u")
    assert remote.image_opts(source, with_secret=True) == (
        f"driver=iscsi,transport=tcp,portal=127.0.0.1:3261,target={IQN},lun=2,"
        "user=u,password-secret=sec0")
    assert remote.image_opts(remote.parse_nbd("nbd+unix:///e?socket=/s.sock"), False) == (
        "driver=nbd,server.type=unix,server.path=/s.sock,export=e")


@pytest.mark.parametrize(("user", "secret", "reason"), [
    ("u", None, "needs both"), ("", b"s", "needs both"), ("u u", b"s", "CHAP user"),
    ("u", b"", "1 to 255 bytes"), ("u", b"a\0b", "no NUL"), ("u\n", b"s", "CHAP user"),
])
def test_bad_chap_is_refused(user: str, secret: bytes | None, reason: str) -> None:
    with pytest.raises(Invalid, match=reason):
        remote.check_chap(remote.parse_iscsi(f"iscsi://h/{IQN}/1"), user, secret)


def _iscsi_volume() -> Volume:
    return Volume(id="v1", name="lun", size_gb=1, status="available", format="raw",
                  path=f"iscsi://127.0.0.1:3261/{IQN}/1", protocol="iscsi",
                  remote_host="127.0.0.1", remote_port=3261, remote_export=IQN, remote_lun=1,
                  chap_user="vmops", secret_uuid="0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f")


def test_an_iscsi_disk_with_chap_names_its_secret_by_uuid() -> None:
    disk = ET.fromstring(disk_xml(disk_of(_iscsi_volume(), "vdc")))
    assert (disk.get("type"), disk.get("device")) == ("network", "disk")
    assert disk.find("driver").attrib["type"] == "raw"  # type: ignore[union-attr]
    source = disk.find("source")
    assert source is not None and source.attrib == {"protocol": "iscsi", "name": f"{IQN}/1"}
    assert source.find("host").attrib == {"name": "127.0.0.1", "port": "3261"}  # type: ignore[union-attr]
    assert source.find("auth").attrib == {"username": "vmops"}  # type: ignore[union-attr]
    assert source.find("auth/secret").attrib == {  # type: ignore[union-attr]
        "type": "iscsi", "uuid": "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"}
    assert disk.find("target").attrib == {"dev": "vdc", "bus": "virtio"}  # type: ignore[union-attr]


def test_an_nbd_disk_over_a_unix_socket() -> None:
    spec = DiskSpec(path=Path(), format="raw", target="vdb",
                    network=remote.parse_nbd("nbd+unix:///exp?socket=/run/n.sock"))
    source = ET.fromstring(disk_xml(spec)).find("source")
    assert source is not None and source.attrib == {"protocol": "nbd", "name": "exp"}
    assert source.find("host").attrib == {"transport": "unix", "socket": "/run/n.sock"}  # type: ignore[union-attr]
    assert source.find("auth") is None


def test_the_disks_of_a_domain_read_a_network_disk_back_as_its_url() -> None:
    volume = _iscsi_volume()
    domain = f"<domain><devices>{disk_xml(disk_of(volume, 'vdb'))}</devices></domain>"
    assert disks_of(domain) == {"vdb": (volume.path, "")}
    assert network_source(volume).url == volume.path


def test_a_chap_user_without_a_secret_is_refused() -> None:
    spec = DiskSpec(path=Path(), format="raw", target="vdb",
                    network=NetworkSource("iscsi", f"{IQN}/1", host="h", port=3260,
                                          auth_user="u"))
    with pytest.raises(ValueError, match="without a secret"):
        disk_xml(spec)


def test_the_secret_is_private_and_persistent() -> None:
    secret = ET.fromstring(secret_xml("vmops-volume-v1", "CHAP"))
    assert secret.attrib == {"ephemeral": "no", "private": "yes"}
    assert secret.find("usage").attrib == {"type": "iscsi"}  # type: ignore[union-attr]
    assert secret.findtext("usage/target") == "vmops-volume-v1"
