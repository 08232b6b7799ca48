from pathlib import Path

import pytest

from vmops import config
from vmops.errors import ConfigError


def test_defaults_and_derived_paths(tmp_path: Path) -> None:
    s = config.load(tmp_path, env={})
    assert s.state_dir == tmp_path
    assert s.accel == "auto"
    assert s.use_cow_images is True
    assert s.effective_libvirt_uri == f"qemu:///embed?root={tmp_path}/libvirt"
    assert s.api_socket == tmp_path / "vmops.sock"


def test_every_option_has_help() -> None:
    for f in config.options():
        assert len(f.metadata["help"]) > 10, f.name


def test_toml_then_environment_override(tmp_path: Path) -> None:
    (tmp_path / "vmops.toml").write_text('accel = "kvm"\nshutdown_timeout = 7\n')
    s = config.load(tmp_path, env={"VMOPS_ACCEL": "tcg"})
    assert s.accel == "tcg"
    assert s.shutdown_timeout == 7


def test_state_dir_from_environment(tmp_path: Path) -> None:
    assert config.load(env={"VMOPS_STATE_DIR": str(tmp_path)}).state_dir == tmp_path


@pytest.mark.parametrize(("name", "value", "words"), [
    ("VMOPS_ACCEL", "hvf", "one of auto, kvm, tcg"),
    ("VMOPS_USE_COW_IMAGES", "maybe", "true or false"),
    ("VMOPS_DYNAMIC_MEMORY_RATIO", "0.5", "from 1 to 64"),
    ("VMOPS_CONFIG_DRIVE_FORMAT", "floppy", "one of cdrom, disk"),
    ("VMOPS_SHUTDOWN_TIMEOUT", "soon", "an integer"),
])
def test_bad_value_names_option_and_allowed(tmp_path: Path, name: str, value: str,
                                            words: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.load(tmp_path, env={name: value})
    option = name.removeprefix("VMOPS_").lower()
    assert option in err.value.message
    assert words in err.value.message


def test_unknown_toml_option_refused(tmp_path: Path) -> None:
    (tmp_path / "vmops.toml").write_text("acel = 'tcg'\n")
    with pytest.raises(ConfigError, match="acel"):
        config.load(tmp_path, env={})


def test_a_config_file_it_cannot_read_is_a_clear_error(tmp_path: Path) -> None:
    """Another user's state directory (EACCES, even for a vmops.toml that is
    not there), or something unreadable in its place: the state directory is
    named with the reason, not an OSError's traceback."""
    (tmp_path / "vmops.toml").mkdir()
    with pytest.raises(ConfigError, match=r"state_dir='.*': a directory whose vmops.toml uid "
                                          r"\d+ can read \(Is a directory"):
        config.load(tmp_path, env={})


def test_listen_needs_no_fixed_token(tmp_path: Path) -> None:
    """TCP clients can authenticate with a password (the identity service)."""
    s = config.load(tmp_path, env={"VMOPS_LISTEN": "127.0.0.1:8774"})
    assert (s.listen, s.api_token) == ("127.0.0.1:8774", "")
    s = config.load(tmp_path, env={"VMOPS_LISTEN": "127.0.0.1:8774", "VMOPS_API_TOKEN": "x"})
    assert s.api_token == "x"


def test_docs_list_every_option() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    for f in config.options():
        assert f"`{f.name}`" in doc, f"docs/configuration.md does not describe {f.name}"


def test_allowed_ranges_print_integers_whole() -> None:
    fields = {f.name: f for f in config.options()}
    assert config.describe_allowed(fields["max_injected_file_bytes"]) == \
        "an integer from 0 to 67108864"
    assert config.describe_allowed(fields["dynamic_memory_ratio"]) == "a number from 1 to 64"
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    for f in config.options():
        assert config.describe_allowed(f) in doc, f"docs/configuration.md: {f.name}'s range"
