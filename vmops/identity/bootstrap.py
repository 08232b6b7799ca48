"""The admin user's password, at the service's start.

- ``identity_admin_password`` set (vmops.toml or VMOPS_IDENTITY_ADMIN_PASSWORD):
  the admin's password is made that one at every start.
- Not set, and the admin has no password yet (a new state directory, or
  one from before schema 6): a random one is generated and written to
  ``<state_dir>/admin-password`` (``Settings.admin_password_file``; mode
  0600, the owner's alone), where the operator reads it. If that file is
  already there (the database was made anew), its password is used again.
- Otherwise nothing changes: the password is what was last set (``vmops
  user set-password admin``; that removes the file, which would be stale).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vmops.identity import passwords
from vmops.identity.directory import Directory

log = logging.getLogger(__name__)


def ensure_admin_password(directory: Directory, path: Path, configured: str) -> None:
    """``path``: the file a generated password is kept in."""
    admin = directory.admin_user()
    if configured:
        if not passwords.verify_password(configured, admin.password_hash):
            directory.update_user(admin.id, password=configured)
            log.info("the admin user's password was set from identity_admin_password")
        if path.exists():
            path.unlink()
            log.info("removed %s: identity_admin_password is in force", path)
        return
    if admin.password_hash:
        return
    password = _read(path) or passwords.generate_password()
    if not path.exists():
        _write_private(path, password + "\n")
    directory.update_user(admin.id, password=password)
    log.info("the admin user's password is in %s (user admin, project admin, domain "
             "Default)", path)


def forget_admin_password_file(path: Path) -> None:
    """The admin's password was changed: the file no longer holds it."""
    if path.exists():
        path.unlink()
        log.info("removed %s: the admin's password was changed", path)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
