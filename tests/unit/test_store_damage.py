"""A damaged vmops.db is refused with a clear error and left as it was; an
empty one next to vmops' domains is said out loud (log and doctor)."""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
from pathlib import Path

import pytest

from vmops import config, doctor
from vmops.errors import DatabaseCorrupt
from vmops.hypervisor.base import DomainSpec
from vmops.hypervisor.fake import FakeHypervisor
from vmops.service import build, report_unrecorded
from vmops.store import SCHEMA_VERSION, Store, database_problem

FIXTURE = Path(__file__).parent / "fixtures" / "store_v1.db"
UUID = "aaaaaaaa-0000-4000-8000-000000000001"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def good_db(tmp_path: Path) -> Path:
    db = tmp_path / "vmops.db"
    shutil.copy(FIXTURE, db)
    return db


@pytest.mark.parametrize("keep", [100, 4096, 8192, 40960])
def test_a_truncated_database_is_refused_and_kept(good_db: Path, keep: int) -> None:
    with good_db.open("r+b") as f:
        f.truncate(keep)
    digest = _digest(good_db)
    with pytest.raises(DatabaseCorrupt, match=r"vmops\.db is damaged .* restore a copy"):
        Store(good_db)
    assert _digest(good_db) == digest
    assert database_problem(good_db) is not None


def test_a_file_that_is_no_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vmops.db"
    path.write_bytes(b"this is not SQLite" * 300)
    with pytest.raises(DatabaseCorrupt, match="not a database"):
        Store(path)


def test_a_damaged_page_is_found_by_quick_check(good_db: Path) -> None:
    """Size intact, a b-tree page overwritten: only a check of the file finds it."""
    db = sqlite3.connect(good_db)
    page = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'instances'").fetchone()[0]
    db.close()
    with good_db.open("r+b") as f:
        f.seek((page - 1) * 4096)
        f.write(b"\x0d\xff\xff\xff" + b"\xee" * 60)
    with pytest.raises(DatabaseCorrupt):
        Store(good_db)
    problem = database_problem(good_db)
    assert problem is not None and "damaged" in problem


def test_a_sound_database_has_no_problem(good_db: Path, tmp_path: Path) -> None:
    assert database_problem(good_db) is None
    assert database_problem(tmp_path / "missing.db") is None
    assert not (tmp_path / "missing.db").exists()  # the check makes nothing
    store = Store(good_db)
    assert not store.started_empty
    store.close()
    assert database_problem(good_db) is None


def test_a_newer_database_is_a_doctor_problem(tmp_path: Path) -> None:
    path = tmp_path / "vmops.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    assert "newer than this vmops" in (database_problem(path) or "")


def test_an_empty_file_starts_empty_and_doctor_says_so(tmp_path: Path) -> None:
    path = tmp_path / "vmops.db"
    path.write_bytes(b"")
    check = doctor._database(path)
    assert not check.ok and "empty (0 bytes)" in check.detail
    store = Store(path)
    assert store.started_empty and store.instances() == []


def _hv_with_a_vmops_domain() -> FakeHypervisor:
    hv = FakeHypervisor()
    hv.connect()
    hv.define(DomainSpec(uuid=UUID, name="vmops-web1", memory_mib=64, vcpus=1, disks=(),
                         nics=(), console_socket=Path("/nonexistent/web1.sock")))
    return hv


def test_starting_empty_next_to_vmops_domains_is_said_out_loud(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "vmops.db").write_bytes(b"")  # a 0-byte vmops.db, as found on a host
    settings = config.load(tmp_path, env={})
    hv = _hv_with_a_vmops_domain()
    engine = build(settings, hypervisor=hv)
    compute, store = engine.compute, engine.store
    with caplog.at_level(logging.WARNING):
        orphans = compute.recover()
        check = report_unrecorded(hv, orphans, settings.db_path, store.started_empty)
    assert orphans == [UUID]
    loud = [r.getMessage() for r in caplog.records if "records are lost" in r.getMessage()]
    assert len(loud) == 1 and f"vmops-web1 ({UUID})" in loud[0]
    assert not check.ok and "was empty or missing" in check.detail
    assert "vmops-web1" in check.detail
    assert hv.list_uuids() == [UUID]  # left alone


def test_an_orphan_next_to_records_is_reported_without_the_alarm(
        good_db: Path, caplog: pytest.LogCaptureFixture) -> None:
    hv = _hv_with_a_vmops_domain()
    with caplog.at_level(logging.WARNING):
        check = report_unrecorded(hv, [UUID], good_db, started_empty=False)
    assert not [r for r in caplog.records if "records are lost" in r.getMessage()]
    assert not check.ok and "their records are gone" in check.detail
    assert report_unrecorded(hv, [], good_db, started_empty=True).ok
