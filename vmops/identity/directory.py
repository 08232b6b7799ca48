"""Projects, users, roles and role assignments: the records behind the
identity service, in the store's schema-6 tables.

One domain, ``default`` (Keystone's, named "Default"). Three roles, fixed:
``admin`` implies ``member``, which implies ``reader`` (Keystone's default
implied roles), so a token lists every role its assignments imply. The
``admin`` user and project made by the schema-6 migration are the
bootstrap account: they cannot be deleted, renamed or disabled, nor the
admin role taken from that user on that project, so the service always
has an administrator.

Changes that take rights away revoke the tokens that carried them, in the
same transaction: deleting a user or project, changing or disabling a
user, disabling a project, removing a role assignment.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from vmops.errors import (
    AlreadyExists,
    Forbidden,
    Invalid,
    ProjectNotFound,
    RoleNotFound,
    UserNotFound,
)
from vmops.identity import passwords
from vmops.store import ADMIN_NAME, IDENTITY_DOMAIN, ROLES, Store

DOMAIN_ID = IDENTITY_DOMAIN
DOMAIN_NAME = "Default"
MAX_NAME_CHARS = 255
IMPLIED = {"admin": ("member", "reader"), "member": ("reader",), "reader": ()}


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    domain_id: str = DOMAIN_ID
    description: str = ""
    enabled: bool = True
    created_at: float = 0.0


@dataclass(frozen=True)
class User:
    id: str
    name: str
    domain_id: str = DOMAIN_ID
    default_project_id: str | None = None
    email: str = ""
    enabled: bool = True
    created_at: float = 0.0
    password_hash: str = field(default="", repr=False)


@dataclass(frozen=True)
class Role:
    id: str
    name: str


def _project(row: sqlite3.Row) -> Project:
    return Project(row["id"], row["name"], row["domain_id"], row["description"],
                   bool(row["enabled"]), row["created_at"])


def _user(row: sqlite3.Row) -> User:
    return User(row["id"], row["name"], row["domain_id"], row["default_project_id"],
                row["email"], bool(row["enabled"]), row["created_at"], row["password_hash"])


def check_name(kind: str, name: str) -> str:
    if not name.strip() or len(name) > MAX_NAME_CHARS:
        raise Invalid(reason=f"a {kind} name must be 1 to {MAX_NAME_CHARS} characters, "
                      "not only spaces")
    return name


def check_password(password: str) -> str:
    if not password or len(password) > passwords.MAX_PASSWORD_CHARS:
        raise Invalid(reason=f"a password must be 1 to {passwords.MAX_PASSWORD_CHARS} "
                      "characters")
    return password


def check_domain(domain_id: str | None) -> None:
    if domain_id not in (None, DOMAIN_ID):
        raise Invalid(reason=f"vmops has one domain, {DOMAIN_ID!r} ({DOMAIN_NAME}); "
                      f"no domain {domain_id!r}")


class Directory:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- projects --------------------------------------------------------------
    def projects(self, name: str | None = None) -> list[Project]:
        if name is None:
            rows = self.store.query("SELECT * FROM projects ORDER BY created_at, id")
        else:
            rows = self.store.query("SELECT * FROM projects WHERE name = ?", name)
        return [_project(r) for r in rows]

    def project(self, project_id: str) -> Project:
        rows = self.store.query("SELECT * FROM projects WHERE id = ?", project_id)
        if not rows:
            raise ProjectNotFound(project=project_id)
        return _project(rows[0])

    def project_named(self, name: str, domain_id: str = DOMAIN_ID) -> Project:
        rows = self.store.query("SELECT * FROM projects WHERE name = ? AND domain_id = ?",
                                name, domain_id)
        if not rows:
            raise ProjectNotFound(project=name)
        return _project(rows[0])

    def admin_project(self) -> Project:
        return self.project_named(ADMIN_NAME)

    def create_project(self, name: str, description: str = "", enabled: bool = True,
                       domain_id: str | None = None) -> Project:
        check_domain(domain_id)
        project = Project(uuid.uuid4().hex, check_name("project", name), DOMAIN_ID,
                          description, enabled, time.time())
        try:
            with self.store.transaction() as db:
                db.execute("INSERT INTO projects VALUES (?, ?, ?, ?, ?, ?)",
                           (project.id, project.name, project.domain_id, project.description,
                            int(project.enabled), project.created_at))
        except sqlite3.IntegrityError:
            raise AlreadyExists(kind="project", name=name) from None
        return project

    def update_project(self, project_id: str, **changes: Any) -> Project:
        """``name``, ``description``, ``enabled``; disabling revokes its tokens."""
        project = self.project(project_id)
        if project.name == ADMIN_NAME and (changes.get("enabled") is False or
                                           changes.get("name", ADMIN_NAME) != ADMIN_NAME):
            raise Forbidden(reason="the admin project cannot be renamed or disabled")
        if "name" in changes:
            check_name("project", changes["name"])
        merged = {**project.__dict__, **changes}
        try:
            with self.store.transaction() as db:
                db.execute("UPDATE projects SET name = ?, description = ?, enabled = ? "
                           "WHERE id = ?", (merged["name"], merged["description"],
                                            int(merged["enabled"]), project_id))
                if not merged["enabled"]:
                    db.execute("DELETE FROM tokens WHERE project_id = ?", (project_id,))
        except sqlite3.IntegrityError:
            raise AlreadyExists(kind="project", name=merged["name"]) from None
        return self.project(project_id)

    def delete_project(self, project_id: str) -> None:
        """Its role assignments and the tokens scoped to it go with it. What
        it owns (servers, images, ...) stays, visible to admin."""
        project = self.project(project_id)
        if project.name == ADMIN_NAME:
            raise Forbidden(reason="the admin project cannot be deleted")
        with self.store.transaction() as db:
            db.execute("DELETE FROM role_assignments WHERE project_id = ?", (project_id,))
            db.execute("DELETE FROM tokens WHERE project_id = ?", (project_id,))
            db.execute("UPDATE users SET default_project_id = NULL "
                       "WHERE default_project_id = ?", (project_id,))
            db.execute("DELETE FROM projects WHERE id = ?", (project_id,))

    # -- users -----------------------------------------------------------------
    def users(self, name: str | None = None) -> list[User]:
        if name is None:
            rows = self.store.query("SELECT * FROM users ORDER BY created_at, id")
        else:
            rows = self.store.query("SELECT * FROM users WHERE name = ?", name)
        return [_user(r) for r in rows]

    def user(self, user_id: str) -> User:
        rows = self.store.query("SELECT * FROM users WHERE id = ?", user_id)
        if not rows:
            raise UserNotFound(user=user_id)
        return _user(rows[0])

    def user_named(self, name: str, domain_id: str = DOMAIN_ID) -> User:
        rows = self.store.query("SELECT * FROM users WHERE name = ? AND domain_id = ?",
                                name, domain_id)
        if not rows:
            raise UserNotFound(user=name)
        return _user(rows[0])

    def admin_user(self) -> User:
        return self.user_named(ADMIN_NAME)

    def create_user(self, name: str, password: str | None = None,
                    default_project_id: str | None = None, email: str = "",
                    enabled: bool = True, domain_id: str | None = None) -> User:
        """A user without a password cannot authenticate until one is set."""
        check_domain(domain_id)
        if default_project_id is not None:
            self.project(default_project_id)
        hashed = passwords.hash_password(check_password(password)) if password is not None \
            else ""
        user = User(uuid.uuid4().hex, check_name("user", name), DOMAIN_ID, default_project_id,
                    email, enabled, time.time(), hashed)
        try:
            with self.store.transaction() as db:
                db.execute("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (user.id, user.name, user.domain_id, hashed,
                            user.default_project_id, user.email, int(user.enabled),
                            user.created_at))
        except sqlite3.IntegrityError:
            raise AlreadyExists(kind="user", name=name) from None
        return user

    def update_user(self, user_id: str, **changes: Any) -> User:
        """``name``, ``password``, ``enabled``, ``default_project_id``,
        ``email``. A new password or disabling revokes the user's tokens."""
        user = self.user(user_id)
        if user.name == ADMIN_NAME and (changes.get("enabled") is False or
                                        changes.get("name", ADMIN_NAME) != ADMIN_NAME):
            raise Forbidden(reason="the admin user cannot be renamed or disabled")
        if "name" in changes:
            check_name("user", changes["name"])
        if changes.get("default_project_id") is not None:
            self.project(changes["default_project_id"])
        password = changes.pop("password", None)
        merged = {**user.__dict__, **changes}
        if password is not None:
            merged["password_hash"] = passwords.hash_password(check_password(password))
        try:
            with self.store.transaction() as db:
                db.execute("UPDATE users SET name = ?, password_hash = ?, "
                           "default_project_id = ?, email = ?, enabled = ? WHERE id = ?",
                           (merged["name"], merged["password_hash"],
                            merged["default_project_id"], merged["email"],
                            int(merged["enabled"]), user_id))
                if password is not None or not merged["enabled"]:
                    db.execute("DELETE FROM tokens WHERE user_id = ?", (user_id,))
        except sqlite3.IntegrityError:
            raise AlreadyExists(kind="user", name=merged["name"]) from None
        return self.user(user_id)

    def delete_user(self, user_id: str) -> None:
        user = self.user(user_id)
        if user.name == ADMIN_NAME:
            raise Forbidden(reason="the admin user cannot be deleted")
        with self.store.transaction() as db:
            db.execute("DELETE FROM role_assignments WHERE user_id = ?", (user_id,))
            db.execute("DELETE FROM tokens WHERE user_id = ?", (user_id,))
            db.execute("DELETE FROM users WHERE id = ?", (user_id,))

    # -- roles -----------------------------------------------------------------
    def roles(self, name: str | None = None) -> list[Role]:
        rows = self.store.query("SELECT id, name FROM roles ORDER BY name")
        found = [Role(r["id"], r["name"]) for r in rows]
        return found if name is None else [r for r in found if r.name == name]

    def role(self, ref: str) -> Role:
        """By id, or by name (``admin``, ``member``, ``reader``)."""
        for role in self.roles():
            if ref in (role.id, role.name):
                return role
        raise RoleNotFound(role=ref)

    def assign(self, user_id: str, project_id: str, role_id: str) -> None:
        """Idempotent, as Keystone's PUT."""
        self.user(user_id)
        self.project(project_id)
        role = self.role(role_id)
        with self.store.transaction() as db:
            db.execute("INSERT OR IGNORE INTO role_assignments VALUES (?, ?, ?)",
                       (user_id, project_id, role.id))

    def unassign(self, user_id: str, project_id: str, role_id: str) -> None:
        """Revokes the user's tokens on that project (their roles changed)."""
        role = self.role(role_id)
        if not self.has_assignment(user_id, project_id, role.id):
            raise RoleNotFound(role=f"{role_id} for user {user_id} on project {project_id}")
        admin = self.admin_user()
        if (user_id, role.name) == (admin.id, "admin") and \
                project_id == self.admin_project().id:
            raise Forbidden(reason="the admin user keeps the admin role on the admin project")
        with self.store.transaction() as db:
            db.execute("DELETE FROM role_assignments WHERE user_id = ? AND project_id = ? "
                       "AND role_id = ?", (user_id, project_id, role.id))
            db.execute("DELETE FROM tokens WHERE user_id = ? AND project_id = ?",
                       (user_id, project_id))

    def has_assignment(self, user_id: str, project_id: str, role_id: str) -> bool:
        return bool(self.store.query(
            "SELECT 1 FROM role_assignments WHERE user_id = ? AND project_id = ? AND "
            "role_id = ?", user_id, project_id, role_id))

    def assignments(self, user_id: str | None = None,
                    project_id: str | None = None) -> list[tuple[str, str, Role]]:
        """(user id, project id, role) of each direct assignment."""
        rows = self.store.query(
            "SELECT a.user_id, a.project_id, r.id, r.name FROM role_assignments a "
            "JOIN roles r ON r.id = a.role_id WHERE (? IS NULL OR a.user_id = ?) AND "
            "(? IS NULL OR a.project_id = ?) ORDER BY a.user_id, a.project_id, r.name",
            user_id, user_id, project_id, project_id)
        return [(r[0], r[1], Role(r[2], r[3])) for r in rows]

    def assigned_roles(self, user_id: str, project_id: str) -> list[Role]:
        return [role for _, _, role in self.assignments(user_id, project_id)]

    def effective_roles(self, user_id: str, project_id: str) -> list[Role]:
        """The assigned roles and those they imply, by name."""
        names = set()
        for role in self.assigned_roles(user_id, project_id):
            names.add(role.name)
            names.update(IMPLIED.get(role.name, ()))
        return [r for r in self.roles() if r.name in names]

    def user_projects(self, user_id: str) -> list[Project]:
        """The projects the user has a role on."""
        rows = self.store.query(
            "SELECT DISTINCT p.* FROM projects p JOIN role_assignments a "
            "ON a.project_id = p.id WHERE a.user_id = ? ORDER BY p.created_at, p.id", user_id)
        return [_project(r) for r in rows]


__all__ = ["DOMAIN_ID", "DOMAIN_NAME", "IMPLIED", "ROLES", "Directory", "Project", "Role",
           "User"]
