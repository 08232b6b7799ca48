"""The identity service's logic (vmops/identity): passwords, the guessing
throttle, tokens, authentication rules, the admin's first password. A fake
clock stands in for time: nothing here waits or measures time."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmops.errors import (
    AlreadyExists,
    Forbidden,
    TokenNotFound,
    TooManyAttempts,
    Unauthorized,
)
from vmops.identity import AuthRequest, Identity, Ref, passwords
from vmops.identity.bootstrap import ensure_admin_password
from vmops.identity.throttle import MAX_DELAY_S, WINDOW_S, Throttle
from vmops.store import Store

DEFAULT = Ref(domain_id="default")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "vmops.db")
    yield s
    s.close()


@pytest.fixture
def identity(store: Store, clock: Clock) -> Identity:
    ident = Identity(store, token_ttl=3600, api_token="fixed-token", clock=clock,
                     throttle_clock=clock)
    ident.update_user(ident.directory.admin_user().id, password="admin-pw")
    return ident


def password_auth(name: str, password: str, project: str | None = None,
                  domain: Ref = DEFAULT) -> AuthRequest:
    scope = Ref(name=project, domain_id="default") if project else None
    return AuthRequest(("password",), Ref(name=name, domain_id=domain.domain_id,
                                          domain_name=domain.domain_name), password,
                       project=scope)


def member_of(identity: Identity, project_name: str, user_name: str, role: str = "member",
              default: bool = False) -> tuple[str, str]:
    d = identity.directory
    project = d.create_project(project_name)
    user = d.create_user(user_name, "pw-" + user_name,
                         default_project_id=project.id if default else None)
    d.assign(user.id, project.id, d.role(role).id)
    return user.id, project.id


# -- passwords -------------------------------------------------------------------------
def test_password_hash_is_salted_scrypt_with_its_parameters() -> None:
    one, two = passwords.hash_password("s3cret"), passwords.hash_password("s3cret")
    assert one != two  # salted
    scheme, log2_n, r, p, salt, key = one.split("$")
    assert (scheme, log2_n, r, p) == ("scrypt", "14", "8", "1")
    assert "s3cret" not in one
    assert passwords.verify_password("s3cret", one)
    assert not passwords.verify_password("s3cret ", one)
    assert not passwords.verify_password("", one)


@pytest.mark.parametrize("stored", ["", "plain", "scrypt$14$8$1$$", "scrypt$99$8$1$AA$AA",
                                    "scrypt$x$8$1$AA$AA", "md5$1$1$1$AA$AA"])
def test_no_password_or_a_malformed_hash_never_matches(stored: str) -> None:
    assert not passwords.verify_password("", stored)
    assert not passwords.verify_password("anything", stored)


# -- the guessing throttle -------------------------------------------------------------
def test_throttle_refuses_after_five_failures_for_a_growing_delay(clock: Clock) -> None:
    throttle = Throttle(5, clock)
    for _ in range(4):
        throttle.check("u")
        throttle.failed("u")
    throttle.check("u")  # four failures: still free
    throttle.failed("u")
    with pytest.raises(TooManyAttempts, match="try again in 1 seconds"):
        throttle.check("u")
    throttle.check("other")  # per user
    clock.now += 1.5
    throttle.check("u")
    throttle.failed("u")  # the sixth: 2 s
    with pytest.raises(TooManyAttempts, match="in 2 seconds"):
        throttle.check("u")
    for _ in range(20):
        throttle.failed("u")
    with pytest.raises(TooManyAttempts, match=f"in {int(MAX_DELAY_S)} seconds"):
        throttle.check("u")
    clock.now += MAX_DELAY_S + 1
    throttle.check("u")
    throttle.succeeded("u")
    throttle.failed("u")
    throttle.check("u")  # the count started again


def test_throttle_forgets_failures_spread_over_more_than_its_window(clock: Clock) -> None:
    throttle = Throttle(3, clock)
    for _ in range(10):
        throttle.failed("u")
        clock.now += WINDOW_S + 1
    throttle.check("u")


def test_throttle_off(clock: Clock) -> None:
    throttle = Throttle(0, clock)
    for _ in range(50):
        throttle.failed("u")
    throttle.check("u")


# -- tokens ----------------------------------------------------------------------------
def test_issue_validate_expire(identity: Identity, clock: Clock, store: Store) -> None:
    grant = identity.authenticate(password_auth("admin", "admin-pw", "admin"))
    assert len(grant.token) >= 43
    assert grant.record.expires_at == clock.now + 3600
    assert grant.project is not None and grant.project.name == "admin"
    assert {r.name for r in grant.roles} == {"admin", "member", "reader"}
    # Only the token's sha256 is kept.
    dump = "\n".join(store._db.iterdump())
    assert grant.token not in dump and grant.record.id_hash in dump
    principal = identity.principal(grant.token)
    assert principal is not None and principal.project_name == "admin"
    assert identity.validate(grant.token).user.name == "admin"
    clock.now += 3599
    assert identity.principal(grant.token) is not None
    clock.now += 1
    assert identity.principal(grant.token) is None
    with pytest.raises(TokenNotFound):
        identity.validate(grant.token)


def test_revoke(identity: Identity) -> None:
    grant = identity.authenticate(password_auth("admin", "admin-pw", "admin"))
    identity.revoke(grant.token)
    assert identity.principal(grant.token) is None
    with pytest.raises(TokenNotFound):
        identity.revoke(grant.token)


def test_expired_rows_are_purged_lazily(identity: Identity, clock: Clock) -> None:
    for _ in range(3):
        identity.authenticate(password_auth("admin", "admin-pw", "admin"))
    assert identity.tokens.count() == 3
    clock.now += 7200
    identity.authenticate(password_auth("admin", "admin-pw", "admin"))
    assert identity.tokens.count() == 1


@pytest.mark.parametrize("token", ["", "x", "a" * 100_000, "\udcff", "fixed-token "])
def test_unknown_tokens_speak_for_nobody(identity: Identity, token: str) -> None:
    assert identity.principal(token) is None


def test_the_fixed_api_token_is_the_admin_in_the_admin_project(identity: Identity) -> None:
    admin = identity.principal("fixed-token")
    assert admin is not None
    assert admin.user_id == identity.directory.admin_user().id
    assert admin.project_id == identity.directory.admin_project().id
    assert admin.roles == {"admin", "member", "reader"}


# -- authentication --------------------------------------------------------------------
def test_wrong_password_and_unknown_user_answer_alike(identity: Identity) -> None:
    with pytest.raises(Unauthorized) as wrong:
        identity.authenticate(password_auth("admin", "nope", "admin"))
    with pytest.raises(Unauthorized) as unknown:
        identity.authenticate(password_auth("nobody", "nope", "admin"))
    assert wrong.value.message == unknown.value.message
    with pytest.raises(Unauthorized):
        identity.authenticate(password_auth("admin", "admin-pw", "admin",
                                            Ref(domain_id="other")))


def test_user_by_id_or_by_name_and_domain_name(identity: Identity) -> None:
    admin_id = identity.directory.admin_user().id
    by_id = identity.authenticate(AuthRequest(("password",), Ref(id=admin_id), "admin-pw"))
    assert by_id.user.name == "admin"
    by_name = identity.authenticate(password_auth("admin", "admin-pw", None,
                                                  Ref(domain_name="Default")))
    assert by_name.user.id == admin_id


def test_scope_rules(identity: Identity) -> None:
    user_id, project_id = member_of(identity, "p1", "alice", default=True)
    member_of(identity, "p2", "bob")
    # No scope: the default project, where alice has a role.
    grant = identity.authenticate(password_auth("alice", "pw-alice"))
    assert grant.project is not None and grant.project.id == project_id
    assert {r.name for r in grant.roles} == {"member", "reader"}  # member implies reader
    # No scope and no default project: unscoped.
    bob = identity.authenticate(password_auth("bob", "pw-bob"))
    assert bob.project is None and bob.roles == ()
    principal = identity.principal(bob.token)
    assert principal is not None and principal.project_id == "" and not principal.roles
    # "unscoped" even with a default project.
    assert identity.authenticate(AuthRequest(
        ("password",), Ref(name="alice", domain_id="default"), "pw-alice",
        unscoped=True)).project is None
    # A project without a role on it, or no such project: 401.
    for project in ("p2", "nope"):
        with pytest.raises(Unauthorized):
            identity.authenticate(password_auth("alice", "pw-alice", project))
    by_id = identity.authenticate(AuthRequest(("password",), Ref(id=user_id), "pw-alice",
                                              project=Ref(id=project_id)))
    assert by_id.project is not None and by_id.project.name == "p1"


def test_token_method_rescopes_keeping_the_expiry(identity: Identity, clock: Clock) -> None:
    member_of(identity, "p2", "bob")
    unscoped = identity.authenticate(password_auth("bob", "pw-bob"))
    clock.now += 600
    scoped = identity.authenticate(AuthRequest(("token",), token=unscoped.token,
                                               project=Ref(name="p2", domain_id="default")))
    assert scoped.user.name == "bob" and scoped.project is not None
    assert scoped.record.expires_at == unscoped.record.expires_at
    assert set(scoped.record.methods) == {"token", "password"}
    with pytest.raises(Unauthorized):
        identity.authenticate(AuthRequest(("token",), token="not-a-token"))
    admin = identity.authenticate(AuthRequest(("token",), token="fixed-token",
                                              project=Ref(name="admin", domain_id="default")))
    assert admin.user.name == "admin"


def test_unsupported_methods(identity: Identity) -> None:
    for methods in ((), ("totp",), ("password", "application_credential")):
        with pytest.raises(Unauthorized, match="Unsupported"):
            identity.authenticate(AuthRequest(methods, Ref(name="admin", domain_id="default"),
                                              "admin-pw"))


def test_a_disabled_user_cannot_authenticate_and_loses_its_tokens(identity: Identity) -> None:
    user_id, _ = member_of(identity, "p1", "alice")
    grant = identity.authenticate(password_auth("alice", "pw-alice", "p1"))
    identity.update_user(user_id, enabled=False)
    assert identity.principal(grant.token) is None
    with pytest.raises(Unauthorized):
        identity.authenticate(password_auth("alice", "pw-alice", "p1"))


def test_taking_rights_away_revokes_tokens(identity: Identity) -> None:
    d = identity.directory
    user_id, project_id = member_of(identity, "p1", "alice")
    member = d.role("member").id

    def token() -> str:
        return identity.authenticate(password_auth("alice", "pw-alice", "p1")).token

    t = token()
    d.unassign(user_id, project_id, member)
    assert identity.principal(t) is None
    d.assign(user_id, project_id, member)
    t = token()
    identity.update_user(user_id, password="new-pw")
    assert identity.principal(t) is None
    identity.update_user(user_id, password="pw-alice")
    t = token()
    d.delete_project(project_id)
    assert identity.principal(t) is None
    assert d.user(user_id).default_project_id is None


def test_the_bootstrap_admin_is_kept(identity: Identity) -> None:
    d = identity.directory
    admin, project = d.admin_user(), d.admin_project()
    for call in (lambda: d.delete_user(admin.id), lambda: d.delete_project(project.id),
                 lambda: d.update_user(admin.id, enabled=False),
                 lambda: d.update_user(admin.id, name="root"),
                 lambda: d.update_project(project.id, name="x"),
                 lambda: d.unassign(admin.id, project.id, d.role("admin").id)):
        with pytest.raises(Forbidden):
            call()


def test_password_guessing_is_slowed_per_user(identity: Identity, clock: Clock) -> None:
    member_of(identity, "p1", "alice")
    for _ in range(5):
        with pytest.raises(Unauthorized):
            identity.authenticate(password_auth("alice", "guess", "p1"))
    with pytest.raises(TooManyAttempts):  # even the right password, for now
        identity.authenticate(password_auth("alice", "pw-alice", "p1"))
    identity.authenticate(password_auth("admin", "admin-pw", "admin"))  # others are not
    clock.now += 1.1
    identity.authenticate(password_auth("alice", "pw-alice", "p1"))


def test_names_are_unique_in_the_domain(identity: Identity) -> None:
    d = identity.directory
    d.create_project("p1")
    d.create_user("u1")
    with pytest.raises(AlreadyExists):
        d.create_project("p1")
    with pytest.raises(AlreadyExists):
        d.create_user("u1")


# -- the admin's first password ----------------------------------------------------------
def test_first_start_generates_the_admin_password_into_a_private_file(
        store: Store, tmp_path: Path) -> None:
    ident = Identity(store, admin_password_file=tmp_path / "admin-password")
    path = tmp_path / "admin-password"
    ensure_admin_password(ident.directory, path, "")
    assert path.stat().st_mode & 0o777 == 0o600
    generated = path.read_text().strip()
    assert len(generated) >= 20
    admin = ident.directory.admin_user()
    assert passwords.verify_password(generated, admin.password_hash)
    ensure_admin_password(ident.directory, path, "")  # kept at the next start
    assert ident.directory.admin_user().password_hash == admin.password_hash
    # Changing it makes the file stale: it goes.
    ident.update_user(admin.id, password="chosen")
    assert not path.exists()


def test_the_admin_password_setting_wins_at_every_start(store: Store, tmp_path: Path) -> None:
    ident = Identity(store)
    path = tmp_path / "admin-password"
    ensure_admin_password(ident.directory, path, "")
    ensure_admin_password(ident.directory, path, "from-settings")
    assert not path.exists()
    assert passwords.verify_password("from-settings", ident.directory.admin_user().password_hash)


def test_a_new_database_reuses_the_generated_password_file(store: Store,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "admin-password"
    path.write_text("kept-password\n")
    os.chmod(path, 0o600)
    ident = Identity(store)
    ensure_admin_password(ident.directory, path, "")
    assert passwords.verify_password("kept-password", ident.directory.admin_user().password_hash)


def test_the_schema_6_tables_hold_only_hashes(identity: Identity, store: Store) -> None:
    d = identity.directory
    d.create_user("carol", "carol-secret")
    rows = store.query("SELECT password_hash FROM users WHERE name = 'carol'")
    assert rows[0][0].startswith("scrypt$") and "carol-secret" not in rows[0][0]
    with pytest.raises(sqlite3.IntegrityError), store.transaction() as db:
        db.execute("INSERT INTO users VALUES ('x', 'carol', 'default', '', NULL, '', 1, 0)")
