"""The identity API's part of the OpenAPI document (``vmops/api/openapi.py``
builds the whole with these paths)."""

from __future__ import annotations

from typing import Any

from vmops.api.discovery import IDENTITY_PREFIX as ID
from vmops.api.openapi import ANY_OBJ, BOOL, NULL_STR, STR, array, obj, ok, op, query

LINKS = obj({"self": STR}, {"previous": NULL_STR, "next": NULL_STR})
REF = obj({"id": STR, "name": STR})
PROJECT = obj({"id": STR, "name": STR, "domain_id": STR, "description": STR, "enabled": BOOL,
               "links": obj({"self": STR})},
              {"parent_id": NULL_STR, "is_domain": BOOL, "tags": array(STR), "options": ANY_OBJ})
USER = obj({"id": STR, "name": STR, "domain_id": STR, "enabled": BOOL,
            "links": obj({"self": STR})},
           {"default_project_id": STR, "email": STR, "password_expires_at": NULL_STR,
            "options": ANY_OBJ})
ROLE = obj({"id": STR, "name": STR, "links": obj({"self": STR})},
           {"domain_id": NULL_STR, "description": NULL_STR, "options": ANY_OBJ})
DOMAIN = obj({"id": STR, "name": STR, "enabled": BOOL, "links": obj({"self": STR})},
             {"description": STR, "tags": array(STR), "options": ANY_OBJ})
ENDPOINT = obj({"id": STR, "interface": {"enum": ["public", "internal", "admin"]},
                "region": STR, "region_id": STR, "url": STR})
CATALOG = array(obj({"id": STR, "type": STR, "name": STR, "endpoints": array(ENDPOINT)}))
TOKEN = obj({"token": obj(
    {"methods": array(STR), "user": obj({"id": STR, "name": STR, "domain": REF}),
     "audit_ids": array(STR), "issued_at": STR, "expires_at": STR},
    {"project": obj({"id": STR, "name": STR, "domain": REF}), "is_domain": BOOL,
     "roles": array(REF), "catalog": CATALOG})})
SUBJECT = {"name": "X-Subject-Token", "in": "header", "required": True, "schema": STR,
           "description": "the token to check or revoke"}
NO_BODY = ok(None, "204", "Done")


def _ref_schema() -> dict[str, Any]:
    domain = {"type": "object", "properties": {"id": STR, "name": STR}}
    return {"type": "object", "properties": {"id": STR, "name": STR, "domain": domain}}


def _auth_body() -> dict[str, Any]:
    user = {**_ref_schema()}
    user["properties"] = {**user["properties"], "password": STR}
    identity = obj({"methods": array({"enum": ["password", "token"]})},
                   {"password": obj({"user": user}), "token": obj({"id": STR})})
    scope = {"oneOf": [obj({"project": _ref_schema()}), {"enum": ["unscoped"]}]}
    return obj({"auth": obj({"identity": identity}, {"scope": scope})})


def _param(name: str, what: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": STR,
            "description": f"the {what}'s id"}


def _listing(name: str, item: dict[str, Any]) -> dict[str, Any]:
    return obj({name: array(item), "links": LINKS})


def paths() -> dict[str, Any]:
    user, project, role = (_param("user_id", "user"), _param("project_id", "project"),
                           _param("role_id", "role"))
    assignment = f"{ID}/projects/{{project_id}}/users/{{user_id}}/roles"
    user_body = obj({"user": obj({}, {"name": STR, "password": STR, "enabled": BOOL,
                                      "default_project_id": NULL_STR, "email": STR,
                                      "domain_id": STR})})
    project_body = obj({"project": obj({}, {"name": STR, "description": STR, "enabled": BOOL,
                                            "domain_id": STR})})
    enabled = query("enabled", "only enabled (true) or disabled (false) ones")
    return {
        f"{ID}/auth/tokens": {
            "post": {**op("Keystone v3: get a token (methods password and token; scope: a "
                          "project, or none). The token is in X-Subject-Token",
                          ok(TOKEN, "201", "Created"), body=_auth_body()), "security": []},
            "get": op("Keystone v3: validate a token (your own; admin: any)", ok(TOKEN),
                      params=[SUBJECT, query("nocatalog", "1: without the catalog")]),
            "head": op("Keystone v3: check a token", ok(None, "200", "Valid"),
                       params=[SUBJECT]),
            "delete": op("Keystone v3: revoke a token", NO_BODY, params=[SUBJECT])},
        f"{ID}/auth/projects": {"get": op("Keystone v3: the projects you have a role on",
                                          ok(_listing("projects", PROJECT)))},
        f"{ID}/auth/catalog": {"get": op("Keystone v3: the service catalog",
                                         ok(obj({"catalog": CATALOG, "links": LINKS})))},
        f"{ID}/users": {
            "get": op("Keystone v3: list users (admin)", ok(_listing("users", USER)),
                      params=[query("name", "only this name"), query("domain_id", "default"),
                              enabled]),
            "post": op("Keystone v3: create a user (admin)", ok(obj({"user": USER}), "201"),
                       body=user_body)},
        f"{ID}/users/{{user_id}}": {
            "parameters": [user],
            "get": op("Keystone v3: show a user (yourself; admin: any)", ok(obj({"user": USER}))),
            "patch": op("Keystone v3: change a user (admin); a new password or disabling "
                        "revokes their tokens", ok(obj({"user": USER})), body=user_body),
            "delete": op("Keystone v3: delete a user (admin)", NO_BODY)},
        f"{ID}/users/{{user_id}}/password": {
            "parameters": [user],
            "post": op("Keystone v3: change your own password", NO_BODY, body=obj({"user": obj(
                {"password": STR, "original_password": STR})}))},
        f"{ID}/users/{{user_id}}/projects": {
            "parameters": [user],
            "get": op("Keystone v3: the projects a user has a role on",
                      ok(_listing("projects", PROJECT)))},
        f"{ID}/projects": {
            "get": op("Keystone v3: list projects (admin)", ok(_listing("projects", PROJECT)),
                      params=[query("name", "only this name"), query("domain_id", "default"),
                              enabled]),
            "post": op("Keystone v3: create a project (admin)",
                       ok(obj({"project": PROJECT}), "201"), body=project_body)},
        f"{ID}/projects/{{project_id}}": {
            "parameters": [project],
            "get": op("Keystone v3: show a project (one you have a role on; admin: any)",
                      ok(obj({"project": PROJECT}))),
            "patch": op("Keystone v3: change a project (admin)",
                        ok(obj({"project": PROJECT})), body=project_body),
            "delete": op("Keystone v3: delete a project (admin)", NO_BODY)},
        assignment: {
            "parameters": [project, user],
            "get": op("Keystone v3: a user's roles on a project (admin)",
                      ok(_listing("roles", ROLE)))},
        f"{assignment}/{{role_id}}": {
            "parameters": [project, user, role],
            "put": op("Keystone v3: give a user a role on a project (admin)", NO_BODY),
            "head": op("Keystone v3: does the user have the role? (admin)", NO_BODY),
            "get": op("Keystone v3: does the user have the role? (admin)", NO_BODY),
            "delete": op("Keystone v3: take a role away (admin); revokes their tokens on "
                         "the project", NO_BODY)},
        f"{ID}/role_assignments": {"get": op(
            "Keystone v3: list role assignments (admin)",
            ok(_listing("role_assignments", obj({"role": ANY_OBJ, "user": ANY_OBJ,
                                                 "scope": ANY_OBJ}))),
            params=[query("user.id", "this user's"), query("scope.project.id",
                                                           "on this project"),
                    query("role.id", "this role's"), query("include_names", "1: with names")])},
        f"{ID}/roles": {"get": op("Keystone v3: the roles: admin, member, reader (admin)",
                                  ok(_listing("roles", ROLE)),
                                  params=[query("name", "only this name")])},
        f"{ID}/roles/{{role_id}}": {
            "parameters": [role],
            "get": op("Keystone v3: show a role (admin)", ok(obj({"role": ROLE})))},
        f"{ID}/domains": {"get": op("Keystone v3: the one domain, default (admin)",
                                    ok(_listing("domains", DOMAIN)),
                                    params=[query("name", "only this name")])},
        f"{ID}/domains/{{domain_id}}": {
            "parameters": [_param("domain_id", "domain")],
            "get": op("Keystone v3: show the domain (admin)", ok(obj({"domain": DOMAIN})))},
    }
