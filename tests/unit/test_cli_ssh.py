"""``vmops ssh`` and ``vmops keypair create``: the ssh command line built from
the service's views, and keys made with the real ssh-keygen."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from vmops.cli import main, ssh
from vmops.errors import VmopsError

SERVER_ID = "11111111-1111-4111-8111-111111111111"
IMAGE_ID = "22222222-2222-4222-8222-222222222222"


def server(**changes: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "id": SERVER_ID, "name": "web1", "status": "ACTIVE", "key_name": "mykey",
        "image": {"id": IMAGE_ID},
        "addresses": {"vmops": [{"version": 4, "addr": "10.213.0.5",
                                 "OS-EXT-IPS:type": "fixed",
                                 "OS-EXT-IPS-MAC:mac_addr": "52:54:00:00:00:01"}]},
        "vmops:nics": [{"mac": "52:54:00:00:00:01", "mode": "bridge", "network": "vmops",
                        "ip": "10.213.0.5", "tap": "vt-1"}],
    }
    return {**s, **changes}


class FakeClient:
    """The service's answers, by path; a missing path is a 404."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    def get(self, path: str) -> Any:
        if path not in self.answers:
            exc = VmopsError(f"{path}: not found")
            exc.status = 404  # type: ignore[attr-defined]
            raise exc
        return self.answers[path]


def ssh_args(state_dir: Path, *argv: str) -> argparse.Namespace:
    args = main.parse_args(["ssh", *argv])
    args.state_dir = state_dir
    return args


def answers(srv: dict[str, Any], login_user: str | None = None,
            public_key: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        f"/servers/{srv['name']}": {"server": srv},
        f"/images/{IMAGE_ID}": {"image": {"id": IMAGE_ID, "vmops:login_user": login_user}},
    }
    if public_key is not None:
        out["/os-keypairs/mykey"] = {"keypair": {"name": "mykey", "public_key": public_key}}
    return out


# -- the command line --------------------------------------------------------
def test_argv_without_a_known_key_leaves_the_key_to_ssh(tmp_path: Path) -> None:
    client = FakeClient(answers(server(), public_key="ssh-ed25519 AAAA other"))
    argv = main.ssh_command(client, ssh_args(tmp_path, "web1"))  # type: ignore[arg-type]
    assert argv == ["ssh", "-o", "StrictHostKeyChecking=accept-new",
                    "-o", f"UserKnownHostsFile={tmp_path}/known_hosts",
                    "-o", f"HostKeyAlias=vmops-{SERVER_ID}", "--", "root@10.213.0.5"]


def test_image_login_user_then_user_flag_and_command(tmp_path: Path) -> None:
    client = FakeClient(answers(server(), login_user="debian"))
    argv = main.ssh_command(client, ssh_args(tmp_path, "web1"))  # type: ignore[arg-type]
    assert argv[-2:] == ["--", "debian@10.213.0.5"]
    argv = main.ssh_command(client, ssh_args(  # type: ignore[arg-type]
        tmp_path, "web1", "--user", "admin", "--", "uname", "-a", "--", "-l"))
    assert argv[-6:] == ["--", "admin@10.213.0.5", "uname", "-a", "--", "-l"]


def test_address_from_vmops_nics_when_addresses_lack_it() -> None:
    assert ssh.guest_address(server(addresses={})) == "10.213.0.5"


@pytest.mark.parametrize(("changes", "message"), [
    ({"addresses": {}, "vmops:nics": [{"mode": "user", "network": "user", "ip": None}]},
     "web1 has only a user-mode NIC"),
    ({"status": "BUILD", "addresses": {}}, "web1 is still building"),
    ({"addresses": {}, "vmops:nics": []}, "web1 has no address"),
])
def test_no_address_is_a_clear_error(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(VmopsError, match=message):
        ssh.guest_address(server(**changes))


def test_no_key_and_not_running_are_clear_errors(tmp_path: Path) -> None:
    for srv, message in ((server(key_name=None), "web1 was spawned without a key"),
                         (server(status="SHUTOFF"), "web1 is shutoff")):
        client = FakeClient(answers(srv))
        with pytest.raises(VmopsError, match=message):
            main.ssh_command(client, ssh_args(tmp_path, "web1"))  # type: ignore[arg-type]


def test_main_reports_the_error_with_a_non_zero_status(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient(answers(server(key_name=None)))
    monkeypatch.setattr(main, "_client", lambda args, autostart=True: client)
    assert main.main(["--state-dir", str(tmp_path), "ssh", "web1"]) == 1
    assert "web1 was spawned without a key" in capsys.readouterr().err


def test_other_commands_parse_as_before() -> None:
    assert main.parse_args(["destroy", "a", "b"]).names == ["a", "b"]


# -- keypairs vmops makes (real ssh-keygen) ----------------------------------
def test_generated_key_is_private_and_used_by_ssh(tmp_path: Path) -> None:
    path, public_key = ssh.generate_key(tmp_path, "mykey")
    assert path == tmp_path / "keys" / "mykey"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert public_key.startswith("ssh-ed25519 ") and public_key.endswith(" vmops:mykey")
    assert os.listdir(path.parent) == ["mykey"]  # no .pub, no temporary directory
    client = FakeClient(answers(server(), public_key=public_key))
    argv = main.ssh_command(client, ssh_args(tmp_path, "web1"))  # type: ignore[arg-type]
    assert argv[argv.index("-i") + 1] == str(path)
    assert "IdentitiesOnly=yes" in argv
    # The keypair was deleted and made again elsewhere: that file is not its key.
    assert ssh.known_identity(tmp_path, {"public_key": "ssh-ed25519 AAAAother x"},
                              "mykey") is None
    # The keypair is gone, the instance kept its key: the file still fits.
    assert ssh.known_identity(tmp_path, None, "mykey") == path
    with pytest.raises(VmopsError, match="exists already"):
        ssh.generate_key(tmp_path, "mykey")
    assert ssh.forget_key(tmp_path, "mykey") and not path.exists()
    assert not ssh.forget_key(tmp_path, "mykey")


def test_names_that_are_not_file_names_are_refused(tmp_path: Path) -> None:
    for name in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(VmopsError):
            ssh.generate_key(tmp_path, name)
    assert not (tmp_path / "x").exists()


class RecordingClient:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.posted: list[Any] = []
        self.deleted: list[str] = []

    def post(self, path: str, body: Any) -> Any:
        if self.fail:
            raise VmopsError("keypair mykey already exists")
        self.posted.append((path, body))
        return {"keypair": {"name": "mykey", "fingerprint": "aa:bb"}}

    def delete(self, path: str) -> None:
        self.deleted.append(path)


def test_keypair_create_registers_the_public_key_and_delete_removes_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = RecordingClient()
    monkeypatch.setattr(main, "_client", lambda args, autostart=True: client)
    assert main.main(["--state-dir", str(tmp_path), "keypair", "create", "mykey"]) == 0
    ((path, body),) = client.posted
    assert path == "/os-keypairs"
    assert body["keypair"]["public_key"].startswith("ssh-ed25519 ")
    assert "PRIVATE" not in str(body)
    assert (tmp_path / "keys" / "mykey").exists()
    assert main.main(["--state-dir", str(tmp_path), "keypair", "delete", "mykey"]) == 0
    assert client.deleted == ["/os-keypairs/mykey"]
    assert not (tmp_path / "keys" / "mykey").exists()


def test_keypair_create_refused_by_the_service_leaves_no_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(main, "_client", lambda args, autostart=True: RecordingClient(True))
    assert main.main(["--state-dir", str(tmp_path), "keypair", "create", "mykey"]) == 1
    assert os.listdir(tmp_path / "keys") == []
