"""The room the service keeps next to vmops.db for the records that end a
task on a full disk (``Store(reserve_bytes=...)``, ``release_reserve``).
The full disk itself is in tests/integration/test_faults_disk_full.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmops import store as store_module
from vmops.store import Store


def test_kept_released_once_and_made_again(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    reserve = tmp_path / "vmops.db.reserve"
    store = Store(tmp_path / "vmops.db", reserve_bytes=64 * 1024)
    try:
        assert reserve.stat().st_size == 64 * 1024
        assert store.release_reserve()
        assert not reserve.exists()
        assert not store.release_reserve()  # nothing left to give
        monkeypatch.setattr(store_module, "_RESERVE_RETRY_S", 0.0)
        store._reserve._next_try = 0.0
        with store.transaction() as db:
            db.execute("SELECT 1")
        assert reserve.stat().st_size == 64 * 1024
    finally:
        store.close()


def test_a_reserve_from_the_last_run_is_kept(tmp_path: Path) -> None:
    Store(tmp_path / "vmops.db", reserve_bytes=64 * 1024).close()
    again = Store(tmp_path / "vmops.db", reserve_bytes=64 * 1024)
    try:
        assert again.release_reserve()
    finally:
        again.close()


def test_none_by_default(tmp_path: Path) -> None:
    store = Store(tmp_path / "vmops.db")
    try:
        assert not (tmp_path / "vmops.db.reserve").exists()
        assert not store.release_reserve()
    finally:
        store.close()


def test_made_again_at_the_first_write_once_there_is_room(tmp_path: Path) -> None:
    """No wait after it was given up: the write after space is freed makes it
    again, so the next task on a full disk has it too."""
    reserve = tmp_path / "vmops.db.reserve"
    store = Store(tmp_path / "vmops.db", reserve_bytes=64 * 1024)
    try:
        assert store.release_reserve()
        with store.transaction() as db:
            db.execute("SELECT 1")
        assert reserve.stat().st_size == 64 * 1024
        assert store.release_reserve()
    finally:
        store.close()
