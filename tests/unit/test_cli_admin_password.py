"""The CLI takes the admin password from a file, stdin or a prompt, so it
need not appear in the command line (which ``ps`` shows every local user)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from vmops.cli.main import _admin_password, build_parser
from vmops.errors import VmopsError

SPAWN = ["spawn", "web1", "--image", "tiny", "--flavor", "m1.tiny"]


def _password(*extra: str) -> str | None:
    return _admin_password(build_parser().parse_args([*SPAWN, *extra]))


def test_from_a_file_without_its_line_end(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret with spaces \r\n")
    assert _password("--admin-password-file", str(secret)) == "s3cret with spaces "


def test_from_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("from-stdin\n"))
    assert _password("--admin-password-file", "-") == "from-stdin"


def test_empty_or_missing_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(VmopsError, match="is empty"):
        _password("--admin-password-file", str(tmp_path / "empty"))
    with pytest.raises(VmopsError, match="cannot read admin password file"):
        _password("--admin-password-file", str(tmp_path / "missing"))


def test_prompt_asks_twice_and_needs_both_equal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: True, raising=False)
    answers = iter(["typed", "typed", "one", "other"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    assert _password("--admin-password-prompt") == "typed"
    with pytest.raises(VmopsError, match="differ"):
        _password("--admin-password-prompt")


def test_prompt_without_a_terminal_says_what_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(VmopsError, match="--admin-password-file -"):
        _password("--admin-password-prompt")


def test_one_source_only(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*SPAWN, "--admin-password", "x",
                                   "--admin-password-file", str(tmp_path / "pw")])


def test_none_given_is_none() -> None:
    assert _password() is None
