"""`vmops serve` on a damaged vmops.db: a clear error and a non-zero exit,
no traceback, the file untouched. A real process on libvirt's test driver
(no daemon, no QEMU); it stops at the database, before any network set-up."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
FIXTURE = Path(__file__).parent.parent / "unit" / "fixtures" / "store_v1.db"


def test_serve_refuses_a_truncated_database_with_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db = state / "vmops.db"
    shutil.copy(FIXTURE, db)
    with db.open("r+b") as f:
        f.truncate(8192)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    env = {**os.environ, "VMOPS_LIBVIRT_URI": "test:///default", "VMOPS_ACCEL": "tcg"}
    env.pop("VMOPS_STATE_DIR", None)
    done = subprocess.run([sys.executable, "-m", "vmops", "--state-dir", str(state), "serve"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert f"vmops: error: the database {db} is damaged" in done.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    assert not (state / "vmops.sock").exists()
