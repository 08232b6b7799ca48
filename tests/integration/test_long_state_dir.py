"""A real ``vmops serve`` on a 150-byte state directory, on the fake
hypervisor (no guest: tests/functional/test_long_state_dir.py boots one):
the service makes the short alias at start, serves its API on a 160-byte
vmops.sock, and a spawn's console capture connects to the serial socket
named through the alias; a restart keeps the alias, nothing is left."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.soak.run import FAKE_SETTINGS, ConsoleSocket, Soak, import_image
from vmops import config, socket_paths

pytestmark = [pytest.mark.integration]

LENGTH = 150


@pytest.fixture
def long_soak() -> Iterator[Soak]:
    parent = Path(tempfile.mkdtemp(prefix="vmops-long-", dir="/tmp"))
    state_dir = parent / ("s" * (LENGTH - len(os.fsencode(parent)) - 1))
    state_dir.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMOPS_")}
    soak = Soak(state_dir, {**env, **FAKE_SETTINGS})
    try:
        base = state_dir / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"],
                       check=True)
        import_image(state_dir, "base", base)
        yield soak
    finally:
        soak.stop()
        alias = socket_paths.alias_path(state_dir)
        if alias.is_symlink() and os.readlink(alias) == os.path.realpath(state_dir):
            alias.unlink()
        shutil.rmtree(parent, ignore_errors=True)


def test_the_service_on_a_150_byte_state_dir(long_soak: Soak) -> None:
    soak = long_soak
    alias = socket_paths.alias_path(soak.state_dir)
    assert not alias.exists()
    soak.serve()  # answers on <state dir>/vmops.sock, 160 bytes
    assert (soak.state_dir / "vmops.sock").is_socket()
    assert os.readlink(alias) == os.path.realpath(soak.state_dir)
    settings = config.load(soak.state_dir, env={})
    assert settings.run_dir == alias / "run"

    server_id = soak.spawn("base")
    console = ConsoleSocket(settings.run_dir / f"{server_id}.sock")
    try:
        soak.wait_status(server_id, "ACTIVE", 60)  # the capture connected through the alias
        assert (soak.state_dir / "run" / f"{server_id}.sock").is_socket()
        soak.stop()
        soak.serve()
        assert os.readlink(alias) == os.path.realpath(soak.state_dir)
        soak.destroy(server_id, 60)
    finally:
        console.close()
    assert not (soak.state_dir / "instances" / server_id).exists()
