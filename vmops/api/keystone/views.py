"""Keystone v3 bodies: tokens, the service catalog, projects, users, roles,
the one domain, and Keystone's error shape."""

from __future__ import annotations

import datetime
import uuid
from http import HTTPStatus
from typing import Any

from vmops.api import discovery
from vmops.identity import Grant
from vmops.identity.directory import DOMAIN_ID, DOMAIN_NAME, Project, Role, User

ID = discovery.IDENTITY_PREFIX
REGION = "RegionOne"
INTERFACES = ("public", "internal", "admin")
# (type, name, path under the address the client used): every service vmops
# serves, each where its version document is.
SERVICES = (
    ("compute", "nova", discovery.COMPUTE_PREFIX),
    ("image", "glance", discovery.IMAGE_ROOT),
    ("network", "neutron", "/network"),
    ("block-storage", "cinder", "/volume/v3"),
    ("identity", "keystone", discovery.IDENTITY_PREFIX),
)
_IDS = uuid.UUID("5b0f8b8e-7c3e-4bd5-9c1f-6c1b1a3d7e21")  # namespace of stable ids


def iso(timestamp: float) -> str:
    """Keystone's time format: UTC, microseconds, a Z."""
    when = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def error(status: int, message: str) -> dict[str, Any]:
    """Keystone's error body (the router's fault shape for /identity)."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return {"error": {"code": status, "title": title, "message": message}}


def _stable_id(*parts: str) -> str:
    return uuid.uuid5(_IDS, "/".join(parts)).hex


def catalog(base: str) -> list[dict[str, Any]]:
    """The services, with their endpoints at the address the client used."""
    return [{
        "id": _stable_id(kind), "type": kind, "name": name,
        "endpoints": [{"id": _stable_id(kind, interface), "interface": interface,
                       "region": REGION, "region_id": REGION, "url": f"{base}{path}"}
                      for interface in INTERFACES],
    } for kind, name, path in SERVICES]


def domain_ref() -> dict[str, str]:
    return {"id": DOMAIN_ID, "name": DOMAIN_NAME}


def token(grant: Grant, base: str, with_catalog: bool = True) -> dict[str, Any]:
    record = grant.record
    body: dict[str, Any] = {
        "methods": list(record.methods),
        "user": {"id": grant.user.id, "name": grant.user.name, "domain": domain_ref(),
                 "password_expires_at": None},
        "audit_ids": [record.audit_id],
        "issued_at": iso(record.issued_at),
        "expires_at": iso(record.expires_at),
    }
    if grant.project is not None:
        body["project"] = {"id": grant.project.id, "name": grant.project.name,
                           "domain": domain_ref()}
        body["is_domain"] = False
        body["roles"] = [{"id": r.id, "name": r.name} for r in grant.roles]
        if with_catalog:
            body["catalog"] = catalog(base)
    return {"token": body}


def _self(base: str, path: str) -> dict[str, str]:
    return {"self": f"{base}{ID}/{path}"}


def collection(name: str, items: list[dict[str, Any]], base: str,
               path: str) -> dict[str, Any]:
    return {name: items, "links": {"self": f"{base}{ID}/{path}", "previous": None,
                                   "next": None}}


def domain(base: str) -> dict[str, Any]:
    return {"id": DOMAIN_ID, "name": DOMAIN_NAME, "description": "The default domain",
            "enabled": True, "tags": [], "options": {}, "links": _self(base,
                                                                      f"domains/{DOMAIN_ID}")}


def project(p: Project, base: str) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "domain_id": p.domain_id, "description": p.description,
            "enabled": p.enabled, "parent_id": p.domain_id, "is_domain": False, "tags": [],
            "options": {}, "links": _self(base, f"projects/{p.id}")}


def user(u: User, base: str) -> dict[str, Any]:
    body: dict[str, Any] = {"id": u.id, "name": u.name, "domain_id": u.domain_id,
                            "enabled": u.enabled, "password_expires_at": None, "options": {},
                            "links": _self(base, f"users/{u.id}")}
    if u.default_project_id:
        body["default_project_id"] = u.default_project_id
    if u.email:
        body["email"] = u.email
    return body


def role(r: Role, base: str) -> dict[str, Any]:
    return {"id": r.id, "name": r.name, "domain_id": None, "description": None,
            "options": {}, "links": _self(base, f"roles/{r.id}")}


def assignment(user_id: str, project_id: str, r: Role, base: str,
               names: dict[str, str] | None = None) -> dict[str, Any]:
    """One entry of GET /role_assignments; ``names`` (ids to names) with
    ``include_names``."""
    entry: dict[str, Any] = {
        "role": {"id": r.id}, "user": {"id": user_id},
        "scope": {"project": {"id": project_id}},
        "links": {"assignment": f"{base}{ID}/projects/{project_id}/users/{user_id}/roles/"
                                f"{r.id}"}}
    if names is not None:
        entry["role"]["name"] = r.name
        entry["user"].update(name=names.get(user_id, ""), domain=domain_ref())
        entry["scope"]["project"].update(name=names.get(project_id, ""), domain=domain_ref())
    return entry
