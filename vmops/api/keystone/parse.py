"""Keystone v3 request bodies, checked: anything malformed is a 400 that
names the field, never a 500; sizes are bounded before anything is hashed."""

from __future__ import annotations

from typing import Any

from vmops.errors import Invalid, Unauthorized
from vmops.identity import AuthRequest, Ref
from vmops.identity.passwords import MAX_PASSWORD_CHARS
from vmops.identity.tokens import MAX_TOKEN_CHARS

MAX_ID_CHARS = 64
MAX_NAME_CHARS = 255
MAX_TEXT_CHARS = 65535


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(reason=f"Invalid input for field '{where}': expected an object.")
    return value


def _string(obj: dict[str, Any], key: str, where: str, limit: int,
            required: bool = False) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise Invalid(reason=f"Invalid input for field '{where}/{key}': it is required.")
        return None
    if not isinstance(value, str):
        raise Invalid(reason=f"Invalid input for field '{where}/{key}': expected a string.")
    if len(value) > limit:
        raise Invalid(reason=f"Invalid input for field '{where}/{key}': longer than {limit} "
                      "characters.")
    return value


def _bool(obj: dict[str, Any], key: str, where: str) -> bool | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        raise Invalid(reason=f"Invalid input for field '{where}/{key}': expected true or "
                      "false.")
    return value


def _ref(obj: dict[str, Any], where: str) -> Ref:
    """A user or project: ``id``, or ``name`` with a ``domain`` (id or name)."""
    ref_id = _string(obj, "id", where, MAX_ID_CHARS)
    name = _string(obj, "name", where, MAX_NAME_CHARS)
    if ref_id is None and name is None:
        raise Invalid(reason=f"Invalid input for field '{where}': give its id, or its name "
                      "and domain.")
    domain_id = domain_name = None
    if ref_id is None:
        if "domain" not in obj:
            raise Invalid(reason=f"Invalid input for field '{where}': a name needs a domain "
                          '({"id": "default"} or {"name": "Default"}).')
        domain = _object(obj["domain"], f"{where}/domain")
        domain_id = _string(domain, "id", f"{where}/domain", MAX_ID_CHARS)
        domain_name = _string(domain, "name", f"{where}/domain", MAX_NAME_CHARS)
        if domain_id is None and domain_name is None:
            raise Invalid(reason=f"Invalid input for field '{where}/domain': give its id or "
                          "name.")
    return Ref(ref_id, name, domain_id, domain_name)


def auth_request(body: Any) -> AuthRequest:
    """POST /auth/tokens: ``{"auth": {"identity": {...}, "scope": ...}}``."""
    auth = _object(_object(body, "body").get("auth"), "auth")
    identity = _object(auth.get("identity"), "auth/identity")
    methods = identity.get("methods")
    if not isinstance(methods, list) or not methods or \
            not all(isinstance(m, str) and len(m) <= 64 for m in methods):
        raise Invalid(reason="Invalid input for field 'auth/identity/methods': expected a "
                      "list of method names, e.g. [\"password\"].")
    user = password = token = None
    if "password" in methods:
        section = _object(identity.get("password"), "auth/identity/password")
        user_obj = _object(section.get("user"), "auth/identity/password/user")
        user = _ref(user_obj, "auth/identity/password/user")
        password = _string(user_obj, "password", "auth/identity/password/user",
                           MAX_PASSWORD_CHARS, required=True)
    if "token" in methods:
        section = _object(identity.get("token"), "auth/identity/token")
        token = _string(section, "id", "auth/identity/token", MAX_TOKEN_CHARS, required=True)
    project, unscoped = _scope(auth.get("scope"))
    return AuthRequest(tuple(methods), user, password, token, project, unscoped)


def _scope(scope: Any) -> tuple[Ref | None, bool]:
    if scope is None:
        return None, False
    if scope == "unscoped":
        return None, True
    scope = _object(scope, "auth/scope")
    if "project" in scope:
        return _ref(_object(scope["project"], "auth/scope/project"), "auth/scope/project"), False
    if "domain" in scope or "system" in scope or "OS-TRUST:trust" in scope:
        raise Unauthorized(reason="vmops issues project-scoped and unscoped tokens only: "
                           "scope to a project.")
    raise Invalid(reason="Invalid input for field 'auth/scope': expected a project.")


def section(body: Any, name: str) -> dict[str, Any]:
    return _object(_object(body, "body").get(name), name)


def user_fields(body: Any, creating: bool) -> dict[str, Any]:
    """POST /users and PATCH /users/{id}: what vmops keeps. Other keys
    (Keystone stores any as extra attributes) are accepted and dropped."""
    u = section(body, "user")
    fields = {
        "name": _string(u, "name", "user", MAX_NAME_CHARS, required=creating),
        "password": _string(u, "password", "user", MAX_PASSWORD_CHARS),
        "default_project_id": _string(u, "default_project_id", "user", MAX_ID_CHARS),
        "email": _string(u, "email", "user", MAX_NAME_CHARS),
        "enabled": _bool(u, "enabled", "user"),
        "domain_id": _string(u, "domain_id", "user", MAX_ID_CHARS),
    }
    if not creating:
        fields.pop("domain_id")
    return {k: v for k, v in fields.items() if v is not None or
            (k == "default_project_id" and k in u and not creating)}


def password_change(body: Any) -> tuple[str, str]:
    """POST /users/{id}/password: (original password, new password)."""
    u = section(body, "user")
    original = _string(u, "original_password", "user", MAX_PASSWORD_CHARS, required=True)
    new = _string(u, "password", "user", MAX_PASSWORD_CHARS, required=True)
    assert original is not None and new is not None  # required
    return original, new


def project_fields(body: Any, creating: bool) -> dict[str, Any]:
    p = section(body, "project")
    if p.get("is_domain"):
        raise Invalid(reason="vmops has one domain; projects cannot be domains.")
    parent = _string(p, "parent_id", "project", MAX_ID_CHARS)
    if parent not in (None, "default"):
        raise Invalid(reason="vmops projects have no parents (besides the domain).")
    fields = {
        "name": _string(p, "name", "project", MAX_NAME_CHARS, required=creating),
        "description": _string(p, "description", "project", MAX_TEXT_CHARS),
        "enabled": _bool(p, "enabled", "project"),
        "domain_id": _string(p, "domain_id", "project", MAX_ID_CHARS),
    }
    if not creating:
        fields.pop("domain_id")
    return {k: v for k, v in fields.items() if v is not None}
