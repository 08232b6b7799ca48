"""``vmops doctor`` with no service answering runs its checks itself,
holding the state directory's lock (vmops.lock) meanwhile, so that no
service starts on the state directory while they open its embedded libvirt
root; a service holding the lock without answering is reported instead."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from vmops import config, doctor, service, socket_paths
from vmops.cli import main
from vmops.errors import ServiceAlreadyRunning
from vmops.hypervisor.base import Check


def test_the_checks_run_holding_the_lock_and_let_it_go(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    refusals: list[str] = []

    def checks(state_dir: Path, *args: Any, **kw: Any) -> list[Check]:
        try:  # what a service starting now would meet
            service.take_lock(state_dir).close()
        except ServiceAlreadyRunning as exc:
            refusals.append(exc.message)
        return [Check(name="probe", ok=True, required=True, detail="fine")]

    monkeypatch.setattr(doctor, "run_checks", checks)
    monkeypatch.setattr(main, "offline_network_checks", lambda s: [])
    # tmp_path is long: no short alias for it in /run/vmops (a test leaves none).
    monkeypatch.setattr(socket_paths, "ensure_socket_root", lambda state_dir: state_dir)
    found = main.offline_checks(config.load(tmp_path, env={}))

    assert [c["name"] for c in found] == ["probe"]
    assert len(refusals) == 1 and f"pid {os.getpid()}" in refusals[0]
    service.take_lock(tmp_path).close()  # let go: a service can start now


def test_a_service_holding_the_lock_without_answering_is_the_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: Any, **kw: Any) -> list[Check]:
        raise AssertionError("probed the state directory a service holds")

    monkeypatch.setattr(doctor, "run_checks", never)
    monkeypatch.setattr(main, "offline_network_checks", never)
    holder = service.take_lock(tmp_path)
    try:
        found = main.offline_checks(config.load(tmp_path, env={}))
    finally:
        holder.close()

    assert len(found) == 1, found
    check = found[0]
    assert (check["name"], check["ok"], check["required"]) == ("vmops service", False, True)
    assert f"pid {os.getpid()}" in check["detail"] and "does not answer" in check["detail"]
    assert "run vmops doctor again" in check["advice"]
    assert not (tmp_path / "libvirt").exists()
