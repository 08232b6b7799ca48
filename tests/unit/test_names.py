import pytest

from vmops.compute.names import (
    check_display_name,
    check_mac,
    check_resource_name,
    generate_mac,
    hostname_of,
)
from vmops.errors import Invalid, InvalidName


@pytest.mark.parametrize("name", ["web1", "a", "a" * 255, "Web Server 1", "wéb/1", "db_1.x"])
def test_good_display_names(name: str) -> None:
    assert check_display_name(name) == name


@pytest.mark.parametrize(("name", "reason"), [
    ("", "empty"),
    ("a" * 256, "256 characters"),
    ("web\n1", "not printable"),
    ("tab\there", "not printable"),
    (" web", "whitespace"),
    ("web ", "whitespace"),
    ("6b4b5e8e-8a6f-4a4a-9d59-3b5c2b0e6c11", "form of an id"),
])
def test_bad_display_names(name: str, reason: str) -> None:
    with pytest.raises(InvalidName, match=reason):
        check_display_name(name)


@pytest.mark.parametrize(("name", "hostname"), [
    ("web1", "web1"), ("Web Server_1.example", "web-server-1-example"),
    ("-web-", "web"), ("wéb!", "wb"), ("a" * 70, "a" * 63),
    ("日本", "server-6b4b5e8e-8a6f-4a4a-9d59-3b5c2b0e6c11"),
])
def test_hostnames_are_derived_as_novas(name: str, hostname: str) -> None:
    assert hostname_of(name, "6b4b5e8e-8a6f-4a4a-9d59-3b5c2b0e6c11") == hostname


def test_resource_names() -> None:
    assert check_resource_name("m1.tiny", "flavor") == "m1.tiny"
    with pytest.raises(InvalidName, match="flavor"):
        check_resource_name("../x", "flavor")


def test_macs() -> None:
    assert check_mac("52:54:00:AB:CD:EF") == "52:54:00:ab:cd:ef"
    with pytest.raises(Invalid, match="not of the form"):
        check_mac("52:54:00:ab:cd")
    with pytest.raises(Invalid, match="multicast"):
        check_mac("01:00:5e:00:00:01")
    assert check_mac(generate_mac()).startswith("52:54:00:")
