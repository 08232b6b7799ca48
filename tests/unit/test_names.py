import pytest

from vmops.compute.names import check_instance_name, check_mac, check_resource_name, generate_mac
from vmops.errors import Invalid, InvalidName


@pytest.mark.parametrize("name", ["web1", "a", "a" * 63, "web-1", "WEB1"])
def test_good_instance_names(name: str) -> None:
    assert check_instance_name(name) == name


@pytest.mark.parametrize(("name", "reason"), [
    ("", "empty"),
    ("a" * 64, "64 characters"),
    ("a/b", "path separator"),
    ("a\\b", "path separator"),
    ("web\n1", "control character"),
    ("-web", "hostname"),
    ("web_1", "hostname"),
    ("web.1", "hostname"),
    ("wéb", "hostname"),
])
def test_bad_instance_names(name: str, reason: str) -> None:
    with pytest.raises(InvalidName, match=reason):
        check_instance_name(name)


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
