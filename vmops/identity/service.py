"""The identity service: who a request comes from, by password or token.

``Identity.authenticate`` follows Keystone v3's rules: the ``password``
method names a user by id, or by name and domain; the ``token`` method
takes a token vmops issued (or the fixed ``api_token``, which speaks for
the admin user) and makes one of another scope, expiring when the first
does. The scope is a project, by id or by name and domain; without one the
user's default project is used if they have a role on it, else the token
is unscoped (it can list the user's projects and get a scoped token, and
nothing else). A project the user has no role on is refused with 401.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmops.errors import NotFound, TokenNotFound, Unauthorized
from vmops.identity import bootstrap, passwords
from vmops.identity.directory import DOMAIN_ID, DOMAIN_NAME, Directory, Project, Role, User
from vmops.identity.throttle import Throttle
from vmops.identity.tokens import TokenRecord, Tokens
from vmops.store import ROLES, Store

log = logging.getLogger(__name__)

METHODS = ("password", "token")


@dataclass(frozen=True)
class Ref:
    """A user or project as an auth request names it."""

    id: str | None = None
    name: str | None = None
    domain_id: str | None = None
    domain_name: str | None = None

    def in_default_domain(self) -> bool:
        if self.domain_id is not None:
            return self.domain_id == DOMAIN_ID
        return (self.domain_name or "").lower() == DOMAIN_NAME.lower()


@dataclass(frozen=True)
class AuthRequest:
    methods: tuple[str, ...]
    user: Ref | None = None
    password: str | None = None
    token: str | None = None
    project: Ref | None = None
    unscoped: bool = False  # "scope": "unscoped": no default project either


@dataclass(frozen=True)
class Grant:
    """A valid token and what it speaks for."""

    token: str
    record: TokenRecord
    user: User
    project: Project | None
    roles: tuple[Role, ...]


@dataclass(frozen=True)
class Principal:
    """Who is asking and in what scope: what a Context is made of."""

    user_id: str
    project_id: str
    roles: frozenset[str]
    user_name: str
    project_name: str


class Identity:
    def __init__(self, store: Store, token_ttl: float = 3600.0, api_token: str = "",
                 lockout_failures: int = 5, clock: Callable[[], float] = time.time,
                 throttle_clock: Callable[[], float] | None = None,
                 admin_password_file: Path | None = None) -> None:
        """``admin_password_file``: where a generated admin password is kept."""
        self.directory = Directory(store)
        self.admin_password_file = admin_password_file
        self.tokens = Tokens(store, token_ttl, clock)
        self.throttle = Throttle(lockout_failures, throttle_clock)
        self.api_token = api_token
        self._admin: Principal | None = None

    # -- authentication ------------------------------------------------------------
    def authenticate(self, req: AuthRequest) -> Grant:
        unknown = [m for m in req.methods if m not in METHODS]
        if unknown or not req.methods:
            raise Unauthorized(reason=f"Unsupported authentication method {unknown[:1]}; "
                               f"vmops takes {', '.join(METHODS)}.")
        user: User | None = None
        expires_at: float | None = None
        from_methods: tuple[str, ...] = ()
        if "token" in req.methods:
            user, expires_at, from_methods = self._from_token(req.token or "")
        if "password" in req.methods:
            by_password = self._from_password(req.user, req.password or "")
            if user is not None and user.id != by_password.id:
                raise Unauthorized(reason="The methods name different users.")
            user = by_password
        assert user is not None  # one of the two methods ran
        if not user.enabled:
            raise Unauthorized(reason="The user is disabled.")
        project = self._scope(user, req)
        methods = tuple(dict.fromkeys((*req.methods, *from_methods)))
        token, record = self.tokens.issue(user.id, project.id if project else None, methods,
                                          expires_at)
        roles = tuple(self.directory.effective_roles(user.id, project.id)) if project else ()
        log.info("issued a token for user %s (%s), %s", user.id, "+".join(methods),
                 f"project {project.id}" if project else "unscoped")
        return Grant(token, record, user, project, roles)

    def _from_token(self, token: str) -> tuple[User, float | None, tuple[str, ...]]:
        if self.api_token and hmac.compare_digest(token.encode("utf-8", "replace"),
                                                  self.api_token.encode()):
            return self.directory.admin_user(), None, ()
        try:
            grant = self.validate(token)
        except TokenNotFound:
            raise Unauthorized(reason="The token is unknown, expired or revoked.") from None
        return grant.user, grant.record.expires_at, grant.record.methods

    def _from_password(self, ref: Ref | None, password: str) -> User:
        if ref is None or (ref.id is None and ref.name is None):
            raise Unauthorized(reason="The password method needs a user id, or a user name "
                               "and domain.")
        user = self._find_user(ref)
        key = user.id if user else f"{'id' if ref.id else 'name'}:{ref.id or ref.name}"
        self.throttle.check(key)
        stored = user.password_hash if user else passwords.DUMMY_HASH
        if not passwords.verify_password(password, stored):
            self.throttle.failed(key)
            log.info("authentication failed for %s", f"user {user.id}" if user
                     else "an unknown user")
            raise Unauthorized(reason="Wrong user name or password.")
        self.throttle.succeeded(key)
        return user  # type: ignore[return-value]  # a None user never verifies

    def _find_user(self, ref: Ref) -> User | None:
        try:
            if ref.id is not None:
                return self.directory.user(ref.id)
            if ref.name is not None and ref.in_default_domain():
                return self.directory.user_named(ref.name)
        except NotFound:
            pass
        return None

    def _scope(self, user: User, req: AuthRequest) -> Project | None:
        if req.project is None:
            if req.unscoped or user.default_project_id is None:
                return None
            try:
                default = self.directory.project(user.default_project_id)
            except NotFound:
                return None
            usable = default.enabled and self.directory.assigned_roles(user.id, default.id)
            return default if usable else None
        project = self._find_project(req.project)
        if project is None or not project.enabled:
            raise Unauthorized(reason="No such project, or it is disabled.")
        if not self.directory.assigned_roles(user.id, project.id):
            raise Unauthorized(reason=f"User {user.id} has no role on project {project.id}.")
        return project

    def _find_project(self, ref: Ref) -> Project | None:
        try:
            if ref.id is not None:
                return self.directory.project(ref.id)
            if ref.name is not None and ref.in_default_domain():
                return self.directory.project_named(ref.name)
        except NotFound:
            pass
        return None

    # -- tokens in use -------------------------------------------------------------
    def validate(self, token: str) -> Grant:
        """The grant of a token vmops issued, still valid; else TokenNotFound.

        Valid means: not expired or revoked, its user still enabled, and if
        scoped, its project still enabled and the user still has a role on it.
        """
        record = self.tokens.lookup(token)
        if record is None:
            raise TokenNotFound()
        try:
            user = self.directory.user(record.user_id)
            project = self.directory.project(record.project_id) if record.project_id \
                else None
        except NotFound:
            raise TokenNotFound() from None
        roles = tuple(self.directory.effective_roles(user.id, project.id)) if project else ()
        if not user.enabled or (project is not None and (not project.enabled or not roles)):
            raise TokenNotFound()
        return Grant(token, record, user, project, roles)

    def principal(self, token: str) -> Principal | None:
        """Who a token speaks for (the api_token: the admin), or None."""
        if self.api_token and hmac.compare_digest(token.encode("utf-8", "replace"),
                                                  self.api_token.encode()):
            return self.admin()
        try:
            grant = self.validate(token)
        except TokenNotFound:
            return None
        return Principal(grant.user.id, grant.project.id if grant.project else "",
                         frozenset(r.name for r in grant.roles), grant.user.name,
                         grant.project.name if grant.project else "")

    def revoke(self, token: str) -> None:
        if not self.tokens.revoke(token):
            raise TokenNotFound()

    def update_user(self, user_id: str, **changes: Any) -> User:
        """Directory.update_user; a new admin password also removes the file
        the generated one was in, which would no longer hold it."""
        user = self.directory.update_user(user_id, **changes)
        if "password" in changes and user.id == self.admin().user_id and \
                self.admin_password_file is not None:
            bootstrap.forget_admin_password_file(self.admin_password_file)
        return user

    def admin(self) -> Principal:
        """The bootstrap admin user in the admin project: what the unix socket
        and the fixed api_token act as."""
        if self._admin is None:
            user, project = self.directory.admin_user(), self.directory.admin_project()
            self._admin = Principal(user.id, project.id, frozenset(ROLES), user.name,
                                    project.name)
        return self._admin
