"""Config drive: the metadata tree (against golden files), limits, and the ISO.

Regenerate the golden trees after an intended change with

    VMOPS_REGEN_GOLDEN=1 pytest tests/unit/test_configdrive.py

and review the diff under tests/unit/golden/configdrive/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from vmops.configdrive import (
    InstanceMetadata,
    Limits,
    Nic,
    build_config_drive,
    build_tree,
    read_iso,
    validate,
    write_iso,
)
from vmops.configdrive.metadata import OPENSTACK_VERSIONS
from vmops.errors import ConfigDriveInvalid

GOLDEN = Path(__file__).parent / "golden" / "configdrive"
SECRET = "s3cret-Adm1n-pass"
UUID = "0b5e6a3c-8f3e-4c4e-9d7a-1f2b3c4d5e6f"

# The dated versions cloud-init's OpenStack reader knows (cloudinit/sources/helpers/openstack.py).
CLOUD_INIT_VERSIONS = (
    "2012-08-10",
    "2013-04-04",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
)


def minimal() -> InstanceMetadata:
    return InstanceMetadata(uuid=UUID, name="tiny", hostname="tiny", project_id="demo")


def full() -> InstanceMetadata:
    return InstanceMetadata(
        uuid=UUID,
        name="web 1",
        hostname="web-1",
        project_id="demo",
        launch_index=2,
        availability_zone="zone-a",
        properties={"role": "web", "dsmode": "local"},
        public_keys={
            "laptop": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyOne alice@laptop\n",
            "ci": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABFakeKeyTwo ci@build\n",
        },
        injected_files=[
            ("/etc/motd", b"hello from vmops\n"),
            ("/opt/app/blob.bin", bytes(range(256))),
        ],
        user_data=b"#cloud-config\nruncmd:\n  - [touch, /run/booted]\n",
        admin_password=SECRET,
        nics=[
            Nic(
                mac="52:54:00:AB:CD:01",
                address="192.0.2.10",
                prefix=24,
                gateway="192.0.2.1",
                dns=("192.0.2.53", "2001:db8::53"),
                mtu=1450,
            ),
            Nic(mac="52:54:00:ab:cd:02"),
        ],
        vendor_data={"cloud-init": "#cloud-config\npackage_upgrade: false\n"},
        random_seed=bytes(range(256)) * 2,
    )


CASES: dict[str, tuple[InstanceMetadata, bool]] = {
    "minimal": (minimal(), False),
    "full": (full(), False),
    "with_admin_password": (full(), True),
}


# --------------------------------------------------------------------------- golden trees


def _read_golden(case_dir: Path) -> dict[str, bytes]:
    return {
        path.relative_to(case_dir).as_posix(): path.read_bytes()
        for path in case_dir.rglob("*")
        if path.is_file()
    }


def _write_golden(case_dir: Path, tree: dict[str, bytes]) -> None:
    shutil.rmtree(case_dir, ignore_errors=True)
    for name, content in tree.items():
        path = case_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


@pytest.mark.parametrize("case", sorted(CASES))
def test_tree_matches_golden(case: str) -> None:
    md, include_password = CASES[case]
    validate(md, Limits())
    tree = build_tree(md, include_password)
    case_dir = GOLDEN / case
    if os.environ.get("VMOPS_REGEN_GOLDEN") == "1":
        _write_golden(case_dir, tree)
    golden = _read_golden(case_dir)
    assert sorted(tree) == sorted(golden)
    for name, content in tree.items():
        assert content == golden[name], f"{name} differs from {case_dir / name}"


def test_tree_is_deterministic() -> None:
    assert build_tree(full(), True) == build_tree(full(), True)


def _json_file(tree: dict[str, bytes], path: str) -> Any:
    return json.loads(tree[path])


def test_cloud_init_picks_the_newest_version_it_knows_and_finds_everything() -> None:
    """Read the tree the way cloud-init's ConfigDriveReader.read_v2 does."""
    tree = build_tree(full(), include_admin_password=False)
    present = {path.split("/")[1] for path in tree if path.startswith("openstack/")}
    version = next(v for v in reversed(CLOUD_INIT_VERSIONS) if v in present)
    assert version == "2018-08-27"
    base = f"openstack/{version}"
    meta = _json_file(tree, f"{base}/meta_data.json")
    assert meta["uuid"] == UUID
    assert meta["hostname"] == "web-1"
    assert meta["meta"]["dsmode"] == "local"
    assert tree[f"{base}/user_data"] == full().user_data
    files = {f["path"]: tree["openstack" + f["content_path"]] for f in meta["files"]}
    assert files == dict(full().injected_files)
    assert json.loads(tree[f"{base}/vendor_data.json"])["cloud-init"].startswith("#cloud")
    assert _json_file(tree, "ec2/latest/meta-data.json")["instance-id"] == UUID


def test_every_known_version_and_latest_has_a_directory() -> None:
    tree = build_tree(minimal(), include_admin_password=False)
    for version in (*OPENSTACK_VERSIONS, "latest"):
        assert f"openstack/{version}/meta_data.json" in tree
    assert set(OPENSTACK_VERSIONS) == set(CLOUD_INIT_VERSIONS)


@pytest.mark.parametrize(
    ("name", "first_version"),
    [
        ("vendor_data.json", "2013-10-17"),
        ("network_data.json", "2015-10-15"),
        ("vendor_data2.json", "2016-10-06"),
    ],
)
def test_files_appear_from_the_version_that_introduced_them(name: str, first_version: str) -> None:
    tree = build_tree(full(), include_admin_password=False)
    for version in OPENSTACK_VERSIONS:
        assert (f"openstack/{version}/{name}" in tree) == (version >= first_version), version
    assert f"openstack/latest/{name}" in tree


@pytest.mark.parametrize(
    ("key", "first_version"),
    [("random_seed", "2013-04-04"), ("project_id", "2015-10-15"), ("devices", "2016-06-30")],
)
def test_meta_data_fields_appear_from_their_version(key: str, first_version: str) -> None:
    tree = build_tree(full(), include_admin_password=False)
    for version in OPENSTACK_VERSIONS:
        meta = _json_file(tree, f"openstack/{version}/meta_data.json")
        assert (key in meta) == (version >= first_version), version


def test_minimal_instance_has_no_user_data_files_or_keys() -> None:
    tree = build_tree(minimal(), include_admin_password=False)
    assert not any(path.endswith(("user_data", "user-data")) for path in tree)
    assert not any(path.startswith("openstack/content/") for path in tree)
    meta = _json_file(tree, "openstack/latest/meta_data.json")
    assert {"files", "keys", "public_keys", "meta", "random_seed", "admin_pass"}.isdisjoint(meta)


def test_network_data_static_and_dhcp_nics() -> None:
    tree = build_tree(full(), include_admin_password=False)
    net = _json_file(tree, "openstack/latest/network_data.json")
    assert [link["ethernet_mac_address"] for link in net["links"]] == [
        "52:54:00:ab:cd:01",
        "52:54:00:ab:cd:02",
    ]
    assert net["links"][0] == {
        "id": "interface0",
        "type": "phy",
        "ethernet_mac_address": "52:54:00:ab:cd:01",
        "mtu": 1450,
    }
    static, dhcp = net["networks"]
    assert static["type"] == "ipv4"
    assert static["link"] == "interface0"
    assert (static["ip_address"], static["netmask"]) == ("192.0.2.10", "255.255.255.0")
    assert static["routes"] == [
        {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "192.0.2.1"}
    ]
    assert [s["address"] for s in static["services"]] == ["192.0.2.53", "2001:db8::53"]
    assert dhcp == {"id": "network1", "link": "interface1", "type": "ipv4_dhcp"}
    assert net["services"] == static["services"]


def test_keys_are_listed_by_name_with_type() -> None:
    meta = _json_file(build_tree(full(), False), "openstack/latest/meta_data.json")
    assert [(k["name"], k["type"]) for k in meta["keys"]] == [("ci", "ssh"), ("laptop", "ssh")]
    assert meta["public_keys"] == dict(full().public_keys)


# --------------------------------------------------------------------------- admin password


def test_admin_password_only_when_asked() -> None:
    without = build_tree(full(), include_admin_password=False)
    assert not any(SECRET.encode() in content for content in without.values())
    with_password = build_tree(full(), include_admin_password=True)
    for version in (*OPENSTACK_VERSIONS, "latest"):
        meta = _json_file(with_password, f"openstack/{version}/meta_data.json")
        assert meta["admin_pass"] == SECRET


def test_admin_password_never_in_repr_or_str() -> None:
    md = full()
    assert SECRET not in repr(md)
    assert SECRET not in str(md)
    assert "web-1" in repr(md)


def test_admin_password_never_in_error_text() -> None:
    md = dataclasses.replace(full(), injected_files=[("relative/path", b"x")])
    assert md.admin_password == SECRET
    with pytest.raises(ConfigDriveInvalid) as caught:
        validate(md, Limits())
    error = caught.value
    for text in (str(error), repr(error), error.message, repr(error.fields)):
        assert SECRET not in text


# --------------------------------------------------------------------------- refusals


def _refused(md: InstanceMetadata, limits: Limits | None = None) -> str:
    with pytest.raises(ConfigDriveInvalid) as caught:
        validate(md, limits or Limits())
    message = str(caught.value)
    assert message.startswith("invalid config drive content: ")
    assert SECRET not in message
    return message


def _with_files(*files: tuple[str, bytes]) -> InstanceMetadata:
    return dataclasses.replace(full(), injected_files=list(files))


def test_refuses_relative_injected_path() -> None:
    message = _refused(_with_files(("etc/motd", b"x")))
    assert "'etc/motd'" in message and "relative" in message


def test_refuses_dot_dot_in_injected_path() -> None:
    message = _refused(_with_files(("/etc/../root/.ssh/authorized_keys", b"x")))
    assert "'..'" in message and "/etc/../root" in message


def test_refuses_nul_in_injected_path() -> None:
    message = _refused(_with_files(("/etc/mo\x00td", b"x")))
    assert "control character" in message and "\\x00" in message


def test_refuses_control_character_in_injected_path() -> None:
    message = _refused(_with_files(("/etc/mo\ntd", b"x")))
    assert "control character" in message and "\\n" in message


def test_refuses_too_long_injected_path() -> None:
    path = "/" + "a" * 255
    message = _refused(_with_files((path, b"x")))
    assert "256 bytes long" in message and "at most 255" in message


def test_refuses_injected_path_naming_a_directory() -> None:
    assert "directory" in _refused(_with_files(("/etc/", b"x")))


def test_refuses_duplicate_injected_path() -> None:
    assert "given twice" in _refused(_with_files(("/etc/a", b"1"), ("/etc/a", b"2")))


def test_refuses_too_many_injected_files() -> None:
    files = [(f"/etc/f{i}", b"x") for i in range(6)]
    message = _refused(_with_files(*files))
    assert "6 injected files" in message and "at most 5" in message


def test_refuses_too_large_injected_file() -> None:
    message = _refused(_with_files(("/etc/big", b"x" * 10241)))
    assert "'/etc/big'" in message and "10241 bytes" in message and "10240" in message


def test_accepts_files_exactly_at_the_limits() -> None:
    files = [(f"/{'a' * 250}{i}", b"x" * 10240) for i in range(5)]
    validate(_with_files(*files), Limits())


def test_refuses_too_large_user_data() -> None:
    md = dataclasses.replace(full(), user_data=b"x" * 65536)
    message = _refused(md)
    assert "user data is 65536 bytes" in message and "65535" in message


def test_refuses_empty_metadata_key() -> None:
    md = dataclasses.replace(full(), properties={"": "v"})
    assert "empty key" in _refused(md)


def test_refuses_too_long_metadata_key() -> None:
    md = dataclasses.replace(full(), properties={"k" * 256: "v"})
    message = _refused(md)
    assert "metadata key 'kkkk" in message and "256 characters" in message


def test_refuses_too_long_metadata_value() -> None:
    md = dataclasses.replace(full(), properties={"role": "v" * 256})
    message = _refused(md)
    assert "value of metadata key 'role'" in message and "256 characters" in message


def test_refuses_too_many_metadata_items() -> None:
    md = dataclasses.replace(full(), properties={f"k{i}": "v" for i in range(129)})
    assert "129 metadata properties" in _refused(md)


def test_limits_are_configurable() -> None:
    message = _refused(full(), Limits(max_injected_files=1))
    assert "2 injected files; at most 1" in message


@pytest.mark.parametrize(
    ("nic", "expected"),
    [
        (Nic(mac="52:54:00:00:00"), "MAC address"),
        (Nic(mac="52:54:00:00:00:01", address="10.0.0.300", prefix=24), "not an IPv4 address"),
        (Nic(mac="52:54:00:00:00:01", address="10.0.0.3"), "prefix length"),
        (Nic(mac="52:54:00:00:00:01", gateway="10.0.0.1"), "needs a static address"),
        (Nic(mac="52:54:00:00:00:01", dns=("dns.example",)), "DNS server 'dns.example'"),
        (Nic(mac="52:54:00:00:00:01", mtu=9), "MTU 9"),
    ],
)
def test_refuses_malformed_nic(nic: Nic, expected: str) -> None:
    md = dataclasses.replace(full(), nics=[nic])
    message = _refused(md)
    assert "NIC 0" in message and expected in message


def test_refuses_vendor_data_that_is_not_json() -> None:
    md = dataclasses.replace(full(), vendor_data={"when": object()})
    assert "vendor data" in _refused(md)


# --------------------------------------------------------------------------- the ISO


def _iso9660_files(path: Path) -> set[str]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        found: set[str] = set()
        for directory, _, files in iso.walk(iso_path="/"):
            found.update(f"{directory.rstrip('/')}/{name}" for name in files)
        return found
    finally:
        iso.close()


def _volume_labels(path: Path) -> tuple[str, str]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        pvd = iso.pvd.volume_identifier.decode("ascii").rstrip()
        assert iso.joliet_vd is not None
        joliet = iso.joliet_vd.volume_identifier.decode("utf-16-be").rstrip()
        return pvd, joliet
    finally:
        iso.close()


def test_iso_round_trip_in_every_name_space(tmp_path: Path) -> None:
    tree = build_tree(full(), include_admin_password=True)
    dest = tmp_path / "disk.config"
    write_iso(tree, dest)
    assert read_iso(dest) == tree
    assert read_iso(dest, names="joliet") == tree
    iso_names = _iso9660_files(dest)
    assert len(iso_names) == len(tree)
    assert "/OPENSTAC/LATEST/META_DAT.JSO;1" in iso_names
    assert "/OPENSTAC/CONTENT/0000.;1" in iso_names
    assert "/EC2/LATEST/META_DAT.JSO;1" in iso_names
    for name in iso_names:
        stem, _, ext = name.rsplit("/", 1)[1].removesuffix(";1").partition(".")
        assert len(stem) <= 8 and len(ext) <= 3 and (stem + ext).replace("_", "").isalnum()
        assert name.upper() == name


def test_iso_label_is_config_2(tmp_path: Path) -> None:
    dest = tmp_path / "disk.config"
    write_iso(build_tree(minimal(), False), dest)
    assert _volume_labels(dest) == ("config-2", "config-2")


def test_iso9660_names_stay_unique_when_real_names_collide(tmp_path: Path) -> None:
    tree = {f"d/very_long_name_{i}.json": str(i).encode() for i in range(12)}
    dest = tmp_path / "x.iso"
    write_iso(tree, dest)
    assert read_iso(dest) == tree
    assert len(_iso9660_files(dest)) == 12


def test_write_replaces_an_existing_drive(tmp_path: Path) -> None:
    dest = tmp_path / "disk.config"
    write_iso(build_tree(minimal(), False), dest)
    write_iso(build_tree(full(), False), dest)
    assert read_iso(dest) == build_tree(full(), False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.config"]


def test_failing_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_write(self: pycdlib.PyCdlib, outfp: Any, *args: Any, **kwargs: Any) -> None:
        outfp.write(b"\0" * 4096)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pycdlib.PyCdlib, "write_fp", half_write)
    with pytest.raises(OSError, match="No space left"):
        write_iso(build_tree(full(), False), tmp_path / "disk.config")
    assert list(tmp_path.iterdir()) == []


def test_failing_write_keeps_the_previous_drive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "disk.config"
    write_iso(build_tree(minimal(), False), dest)
    monkeypatch.setattr(pycdlib.PyCdlib, "write_fp", _raise_keyboard_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_iso(build_tree(full(), False), dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.config"]
    assert read_iso(dest) == build_tree(minimal(), False)


def _raise_keyboard_interrupt(*args: Any, **kwargs: Any) -> None:
    raise KeyboardInterrupt


def test_write_into_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_iso(build_tree(minimal(), False), tmp_path / "absent" / "disk.config")
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_unclean_tree_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigDriveInvalid, match="not a clean relative path"):
        write_iso({"openstack/../x": b""}, tmp_path / "disk.config")
    assert list(tmp_path.iterdir()) == []


def test_build_config_drive_validates_before_writing(tmp_path: Path) -> None:
    dest = tmp_path / "disk.config"
    bad = _with_files(("relative", b"x"))
    with pytest.raises(ConfigDriveInvalid):
        build_config_drive(bad, dest, Limits(), include_admin_password=False)
    assert list(tmp_path.iterdir()) == []
    build_config_drive(full(), dest, Limits(), include_admin_password=True)
    meta = json.loads(read_iso(dest)["openstack/latest/meta_data.json"])
    assert meta["admin_pass"] == SECRET


# -- what cannot be a file path or a printable value -------------------------


@pytest.mark.parametrize("path", ["/.", "/etc/.", "/etc/./motd", "/etc//motd", "//etc/motd",
                                  "/" + "a" * 256 + "/b"])
def test_refuses_what_cannot_be_one_file_path(path: str) -> None:
    limits = Limits(max_injected_file_path_bytes=1024)
    message = _refused(_with_files((path, b"x")), limits)
    assert "injected file path" in message


@pytest.mark.parametrize(("text", "problem"), [
    ("a\ud800b", "lone surrogate"),
    ("a\x1bb", "control character"),
    ("a\x85b", "control character"),  # C1: NEL
    ("a\x9bb", "control character"),  # C1: CSI
    ("a\u202eb", "bidirectional override"),
    ("a\u2066b", "bidirectional override"),
])
def test_refuses_unprintable_paths_keys_and_values(text: str, problem: str) -> None:
    assert problem in _refused(_with_files(("/etc/" + text, b"x")))
    assert problem in _refused(dataclasses.replace(full(), properties={text: "v"}))
    assert problem in _refused(dataclasses.replace(full(), properties={"k": text}))
    assert problem in _refused(dataclasses.replace(full(), public_keys={"k": text}))


def test_accepts_printable_unicode() -> None:
    md = dataclasses.replace(full(), properties={"ville": "Zürich – 東京 ✓"},
                             injected_files=[("/etc/motd-été", b"x")])
    validate(md, Limits())


def test_refuses_a_huge_public_key() -> None:
    from vmops.configdrive.metadata import MAX_PUBLIC_KEY_BYTES

    key = "ssh-ed25519 " + "A" * 900_000
    message = _refused(dataclasses.replace(full(), public_keys={"big": key}))
    assert "900012 bytes" in message and str(MAX_PUBLIC_KEY_BYTES) in message
    at_limit = "ssh-rsa " + "A" * (MAX_PUBLIC_KEY_BYTES - len("ssh-rsa "))
    validate(dataclasses.replace(full(), public_keys={"ok": at_limit}), Limits())


def test_refuses_unprintable_admin_password_without_showing_it() -> None:
    md = dataclasses.replace(full(), admin_password=SECRET + "\x00")
    assert "admin password" in _refused(md)  # _refused checks SECRET is not shown
