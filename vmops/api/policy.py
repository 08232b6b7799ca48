"""Who may call what: one table from each route to the role it needs.

The router checks it before any handler runs (``Router(authorize=enforce)``),
so handlers never look at roles for access to a route; what they still do
is decide which records a caller sees (their project's, or all for admin).

Rules, each allowing what the next allows and more:

- ``public``: anyone, no token (version documents, asking for a token);
- ``authenticated``: any valid token, unscoped ones too (the caller's own
  tokens and projects: what an unscoped token is for);
- ``reader``: a token scoped to a project with any role on it;
- ``member``: the ``member`` or ``admin`` role (``reader`` alone only reads);
- ``admin``: the ``admin`` role (flavors, the host, quotas, the identity
  service's users, projects and roles, image import from host files).

A route must have an entry (a unit test walks every route of
``Routes.router()``); one that somehow has none needs ``reader`` to read and
``admin`` for anything else. ``FAMILIES`` gives a rule to every route under
a path pattern, for Nova's smaller APIs whose routes come and go together.
A refusal answers 403 in the API's own error shape.
"""

from __future__ import annotations

from enum import StrEnum
from fnmatch import fnmatchcase

from vmops.api import discovery
from vmops.api.server import Context, Request
from vmops.errors import PolicyForbidden


class Rule(StrEnum):
    PUBLIC = "public"
    AUTHENTICATED = "authenticated"
    READER = "reader"
    MEMBER = "member"
    ADMIN = "admin"


PUBLIC, AUTHENTICATED, READER, MEMBER = Rule.PUBLIC, Rule.AUTHENTICATED, Rule.READER, Rule.MEMBER
ADMIN = Rule.ADMIN
P = discovery.COMPUTE_PREFIX
IMG = discovery.IMAGE_PREFIX
NET = "/network/v2.0"
ID = discovery.IDENTITY_PREFIX
FORWARDS = f"{P}/os-vmops/port-forwards"

_VERSIONS = {("GET", path): PUBLIC for path in (
    "/", P, discovery.LEGACY_PREFIX, discovery.IMAGE_ROOT, IMG, "/network",
    discovery.IDENTITY_ROOT, ID)}

_COMPUTE = {
    ("GET", f"{P}/servers"): READER,
    ("GET", f"{P}/servers/detail"): READER,
    ("POST", f"{P}/servers"): MEMBER,
    ("GET", f"{P}/servers/{{id}}"): READER,
    ("PUT", f"{P}/servers/{{id}}"): MEMBER,
    ("DELETE", f"{P}/servers/{{id}}"): MEMBER,
    ("POST", f"{P}/servers/{{id}}/action"): MEMBER,
    ("GET", f"{P}/servers/{{id}}/console-log"): READER,
    # Nova's os-remote-consoles rule: a console types into the guest.
    ("POST", f"{P}/servers/{{id}}/remote-consoles"): MEMBER,
    # The console URL's WebSocket: its single-use token is the credential.
    ("GET", "/serial-console"): PUBLIC,
    ("GET", f"{P}/servers/{{id}}/os-security-groups"): READER,
    ("GET", f"{P}/servers/{{id}}/tags"): READER,
    ("PUT", f"{P}/servers/{{id}}/tags"): MEMBER,
    ("DELETE", f"{P}/servers/{{id}}/tags"): MEMBER,
    ("GET", f"{P}/servers/{{id}}/tags/{{tag}}"): READER,
    ("PUT", f"{P}/servers/{{id}}/tags/{{tag}}"): MEMBER,
    ("DELETE", f"{P}/servers/{{id}}/tags/{{tag}}"): MEMBER,
    ("GET", f"{P}/flavors"): READER,
    ("GET", f"{P}/flavors/detail"): READER,
    ("POST", f"{P}/flavors"): ADMIN,
    ("GET", f"{P}/flavors/{{id}}"): READER,
    ("DELETE", f"{P}/flavors/{{id}}"): ADMIN,
    ("GET", f"{P}/flavors/{{id}}/os-extra_specs"): READER,
    ("GET", f"{P}/images"): READER,
    ("GET", f"{P}/images/detail"): READER,
    # vmops' own import reads host files (as the service's user) or URLs.
    ("POST", f"{P}/images"): ADMIN,
    ("POST", f"{P}/images/prune"): ADMIN,
    ("GET", f"{P}/images/{{id}}"): READER,
    ("DELETE", f"{P}/images/{{id}}"): MEMBER,
    ("GET", f"{P}/os-keypairs"): READER,
    ("POST", f"{P}/os-keypairs"): MEMBER,
    ("GET", f"{P}/os-keypairs/{{id}}"): READER,
    ("DELETE", f"{P}/os-keypairs/{{id}}"): MEMBER,
    ("GET", f"{P}/os-vmops/doctor"): ADMIN,
    ("GET", "/metrics"): ADMIN,
    ("GET", "/openapi.json"): READER,
}

_IMAGE = {
    ("GET", f"{IMG}/images"): READER,
    ("POST", f"{IMG}/images"): MEMBER,
    ("GET", f"{IMG}/images/{{id}}"): READER,
    ("PATCH", f"{IMG}/images/{{id}}"): MEMBER,
    ("DELETE", f"{IMG}/images/{{id}}"): MEMBER,
    ("PUT", f"{IMG}/images/{{id}}/file"): MEMBER,
    ("GET", f"{IMG}/images/{{id}}/file"): READER,
    ("PUT", f"{IMG}/images/{{id}}/tags/{{tag}}"): MEMBER,
    ("DELETE", f"{IMG}/images/{{id}}/tags/{{tag}}"): MEMBER,
    ("GET", f"{IMG}/schemas/image"): READER,
    ("GET", f"{IMG}/schemas/images"): READER,
    # Glance's interoperable import: web-download and glance-direct read
    # what the service can reach, so admin only.
    ("POST", f"{IMG}/images/{{id}}/import"): ADMIN,
}

_NETWORK = {
    ("GET", f"{NET}/security-groups"): READER,
    ("POST", f"{NET}/security-groups"): MEMBER,
    ("GET", f"{NET}/security-groups/{{id}}"): READER,
    ("PUT", f"{NET}/security-groups/{{id}}"): MEMBER,
    ("DELETE", f"{NET}/security-groups/{{id}}"): MEMBER,
    ("GET", f"{NET}/security-group-rules"): READER,
    ("POST", f"{NET}/security-group-rules"): MEMBER,
    ("GET", f"{NET}/security-group-rules/{{id}}"): READER,
    ("DELETE", f"{NET}/security-group-rules/{{id}}"): MEMBER,
    # A forward opens a port on the host itself.
    ("GET", FORWARDS): READER,
    ("POST", FORWARDS): ADMIN,
    ("GET", f"{FORWARDS}/{{id}}"): READER,
    ("DELETE", f"{FORWARDS}/{{id}}"): ADMIN,
}

_ASSIGNMENT = f"{ID}/projects/{{project_id}}/users/{{user_id}}/roles"
_IDENTITY = {
    ("POST", f"{ID}/auth/tokens"): PUBLIC,
    # Your own tokens (admin: anyone's); checked in the handler.
    ("GET", f"{ID}/auth/tokens"): AUTHENTICATED,
    ("HEAD", f"{ID}/auth/tokens"): AUTHENTICATED,
    ("DELETE", f"{ID}/auth/tokens"): AUTHENTICATED,
    ("GET", f"{ID}/auth/projects"): AUTHENTICATED,
    ("GET", f"{ID}/auth/catalog"): AUTHENTICATED,
    ("GET", f"{ID}/users"): ADMIN,
    ("POST", f"{ID}/users"): ADMIN,
    # Yourself (admin: anyone); checked in the handler.
    ("GET", f"{ID}/users/{{user_id}}"): AUTHENTICATED,
    ("PATCH", f"{ID}/users/{{user_id}}"): ADMIN,
    ("DELETE", f"{ID}/users/{{user_id}}"): ADMIN,
    ("POST", f"{ID}/users/{{user_id}}/password"): AUTHENTICATED,
    ("GET", f"{ID}/users/{{user_id}}/projects"): AUTHENTICATED,
    ("GET", f"{ID}/projects"): ADMIN,
    ("POST", f"{ID}/projects"): ADMIN,
    # A project you have a role on (admin: any); checked in the handler.
    ("GET", f"{ID}/projects/{{project_id}}"): AUTHENTICATED,
    ("PATCH", f"{ID}/projects/{{project_id}}"): ADMIN,
    ("DELETE", f"{ID}/projects/{{project_id}}"): ADMIN,
    ("GET", _ASSIGNMENT): ADMIN,
    ("PUT", f"{_ASSIGNMENT}/{{role_id}}"): ADMIN,
    ("HEAD", f"{_ASSIGNMENT}/{{role_id}}"): ADMIN,
    ("GET", f"{_ASSIGNMENT}/{{role_id}}"): ADMIN,
    ("DELETE", f"{_ASSIGNMENT}/{{role_id}}"): ADMIN,
    ("GET", f"{ID}/role_assignments"): ADMIN,
    ("GET", f"{ID}/roles"): ADMIN,
    ("GET", f"{ID}/roles/{{role_id}}"): ADMIN,
    ("GET", f"{ID}/domains"): ADMIN,
    ("GET", f"{ID}/domains/{{domain_id}}"): ADMIN,
}

RULES: dict[tuple[str, str], Rule] = {**_VERSIONS, **_COMPUTE, **_IMAGE, **_NETWORK,
                                      **_IDENTITY}

# (method or "*", path pattern with "*" for any text, rule): the first that
# matches a route with no entry in RULES gives its rule.
FAMILIES: tuple[tuple[str, str, Rule], ...] = (
    ("*", f"{P}/os-services*", ADMIN),
    ("*", f"{P}/os-hosts*", ADMIN),
    ("*", f"{P}/os-hypervisors*", ADMIN),
    ("GET", f"{P}/os-quota-sets*", READER),
    ("*", f"{P}/os-quota-sets*", ADMIN),
    ("GET", f"{P}/os-quota-class-sets*", READER),
    ("*", f"{P}/os-quota-class-sets*", ADMIN),
    ("GET", f"{P}/limits*", READER),
    ("GET", f"{P}/os-availability-zone/detail", ADMIN),
    ("GET", f"{P}/os-availability-zone*", READER),
    ("GET", f"{P}/os-simple-tenant-usage", ADMIN),  # every project's usage
    ("GET", f"{P}/os-simple-tenant-usage/*", READER),
    ("GET", f"{P}/servers/*/os-instance-actions*", READER),
    ("GET", f"{P}/servers/*/metadata*", READER),
    ("*", f"{P}/servers/*/metadata*", MEMBER),
    ("GET", f"{P}/servers/*/ips*", READER),
    ("GET", f"{P}/servers/*/os-server-password", READER),
    ("*", f"{P}/servers/*/os-server-password", MEMBER),
    ("GET", f"{P}/servers/*/os-interface*", READER),
    ("GET", f"{P}/os-server-groups*", READER),
    ("*", f"{P}/os-server-groups*", MEMBER),
    ("GET", f"{P}/flavors/*/os-flavor-access", ADMIN),
    ("GET", f"{P}/flavors/*", READER),
    ("*", f"{P}/flavors/*", ADMIN),  # extra specs, flavor access
    ("GET", f"{P}/extensions*", READER),
    # Engineer C2's: aggregates, diagnostics, the usage audit log, os-networks
    # and the compute API's image metadata.
    ("*", f"{P}/os-aggregates*", ADMIN),
    ("GET", f"{P}/servers/*/diagnostics", ADMIN),
    ("GET", f"{P}/os-instance_usage_audit_log*", ADMIN),
    ("GET", f"{P}/os-networks*", READER),
    ("GET", f"{P}/images/*/metadata*", READER),
    ("*", f"{P}/images/*/metadata*", MEMBER),
    # The compute API's security group proxy: as the network endpoint's.
    ("GET", f"{P}/os-security-groups*", READER),
    ("*", f"{P}/os-security-group*", MEMBER),
    ("GET", f"{P}/os-keypairs*", READER),
    # Volumes (vmops/api/volume_api.py): Cinder's version documents are
    # public (clients discover without a token); its project check is in the handlers.
    ("GET", "/volume", PUBLIC),
    ("GET", "/volume/v3", PUBLIC),
    ("GET", "/volume/v3/*", READER),
    ("*", "/volume/v3/*", MEMBER),
    ("GET", f"{P}/servers/*/os-volume_attachments*", READER),
    ("*", f"{P}/servers/*/os-volume_attachments*", MEMBER),
)

_RANK = {Rule.READER: {"admin", "member", "reader"}, Rule.MEMBER: {"admin", "member"},
         Rule.ADMIN: {"admin"}}


def rule_for(method: str, template: str) -> Rule | None:
    """The rule the table gives the route, or None if it has none."""
    rule = RULES.get((method, template))
    if rule is not None:
        return rule
    for family_method, pattern, family_rule in FAMILIES:
        if family_method in ("*", method) and fnmatchcase(template, pattern):
            return family_rule
    return None


def effective_rule(method: str, template: str) -> Rule:
    rule = rule_for(method, template)
    if rule is None:
        return READER if method in ("GET", "HEAD") else ADMIN
    return rule


def allows(rule: Rule, context: Context) -> bool:
    if rule == Rule.PUBLIC:
        return True
    if rule == Rule.AUTHENTICATED:
        return bool(context.user_id or context.roles)
    return bool(context.roles & _RANK[rule])


def enforce(req: Request, method: str, template: str) -> None:
    """The router's check: raise PolicyForbidden (403) if the caller's
    roles do not allow the route."""
    rule = effective_rule(method, template)
    if not allows(rule, req.context):
        roles = ", ".join(sorted(req.context.roles)) or "no role (an unscoped token)"
        raise PolicyForbidden(method=method, route=template, rule=rule.value, roles=roles)
