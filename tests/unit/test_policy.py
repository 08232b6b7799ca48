"""The policy table (vmops/api/policy.py): every route is classified, and
the classes mean what they say."""

from __future__ import annotations

import pytest

from vmops import config
from vmops.api import policy
from vmops.api.policy import ADMIN, AUTHENTICATED, MEMBER, PUBLIC, READER, Rule
from vmops.api.server import ANONYMOUS, Context, Request
from vmops.errors import PolicyForbidden
from vmops.hypervisor.fake import FakeHypervisor
from vmops.service import build


@pytest.fixture(scope="module")
def router_routes(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[str, str]],
                                                                      set[tuple[str, str]]]:
    state = tmp_path_factory.mktemp("policy")
    settings = config.load(state, env={})
    engine = build(settings, hypervisor=FakeHypervisor())
    router = engine.routes().router()
    engine.store.close()
    return router.templates(), router.public_templates()


def test_every_route_has_an_explicit_rule(router_routes: tuple[list[tuple[str, str]],
                                                               set[tuple[str, str]]]) -> None:
    """A new route must be classified in vmops/api/policy.py (RULES or FAMILIES)."""
    routes, _ = router_routes
    missing = [f"{m} {t}" for m, t in routes if policy.rule_for(m, t) is None]
    assert not missing, f"routes without a rule in vmops/api/policy.py: {missing}"


def test_public_routes_are_exactly_the_public_rules(
        router_routes: tuple[list[tuple[str, str]], set[tuple[str, str]]]) -> None:
    routes, public = router_routes
    by_rule = {(m, t) for m, t in routes if policy.rule_for(m, t) == PUBLIC}
    assert by_rule == public


@pytest.mark.parametrize(("method", "template"), [
    ("POST", "/v2.1/flavors"), ("DELETE", "/v2.1/flavors/{id}"),
    ("POST", "/v2.1/flavors/{id}/os-extra_specs"),
    ("PUT", "/v2.1/flavors/{id}/os-extra_specs/{key}"),
    ("POST", "/v2.1/flavors/{id}/action"),
    ("GET", "/v2.1/os-hosts"), ("GET", "/v2.1/os-hypervisors/detail"),
    ("GET", "/v2.1/os-services"), ("PUT", "/v2.1/os-services/{id}"),
    ("PUT", "/v2.1/os-quota-sets/{project_id}"), ("DELETE", "/v2.1/os-quota-sets/{project_id}"),
    ("POST", "/v2.1/images"), ("POST", "/v2.1/images/prune"),
    ("POST", "/image/v2/images/{id}/import"),
    ("GET", "/identity/v3/users"), ("POST", "/identity/v3/projects"),
    ("PUT", "/identity/v3/projects/{project_id}/users/{user_id}/roles/{role_id}"),
    ("GET", "/metrics"), ("POST", "/v2.1/os-vmops/port-forwards"),
])
def test_admin_only(method: str, template: str) -> None:
    assert policy.effective_rule(method, template) == ADMIN


@pytest.mark.parametrize(("method", "template", "rule"), [
    ("GET", "/v2.1/servers", READER), ("POST", "/v2.1/servers", MEMBER),
    ("POST", "/v2.1/servers/{id}/action", MEMBER), ("GET", "/v2.1/os-quota-sets/{id}", READER),
    ("GET", "/v2.1/limits", READER), ("POST", "/v2.1/os-server-groups", MEMBER),
    ("PUT", "/v2.1/servers/{id}/metadata/{key}", MEMBER),
    ("POST", "/image/v2/images", MEMBER), ("PUT", "/image/v2/images/{id}/file", MEMBER),
    ("POST", "/identity/v3/auth/tokens", PUBLIC), ("GET", "/identity/v3/auth/projects",
                                                   AUTHENTICATED),
])
def test_rules(method: str, template: str, rule: Rule) -> None:
    assert policy.effective_rule(method, template) == rule


def test_unlisted_routes_read_as_reader_and_write_as_admin() -> None:
    assert policy.rule_for("GET", "/nowhere") is None
    assert policy.effective_rule("GET", "/nowhere") == READER
    assert policy.effective_rule("HEAD", "/nowhere") == READER
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert policy.effective_rule(method, "/nowhere") == ADMIN


def ctx(*roles: str, user: str = "u") -> Context:
    return Context(user, "p" if roles else "", frozenset(roles))


@pytest.mark.parametrize(("context", "allowed"), [
    (ANONYMOUS, {PUBLIC}),
    (ctx(), {PUBLIC, AUTHENTICATED}),  # an unscoped token
    (ctx("reader"), {PUBLIC, AUTHENTICATED, READER}),
    (ctx("member", "reader"), {PUBLIC, AUTHENTICATED, READER, MEMBER}),
    (ctx("member"), {PUBLIC, AUTHENTICATED, READER, MEMBER}),
    (ctx("admin", "member", "reader"), set(Rule)),
    (ctx("admin"), set(Rule)),
    (ctx("heat_stack_owner"), {PUBLIC, AUTHENTICATED}),
])
def test_who_each_rule_allows(context: Context, allowed: set[Rule]) -> None:
    assert {r for r in Rule if policy.allows(r, context)} == allowed


def test_enforce_names_the_route_and_the_role() -> None:
    req = Request("POST", "/v2.1/flavors", {}, {}, b"", context=ctx("member"))
    with pytest.raises(PolicyForbidden) as refused:
        policy.enforce(req, "POST", "/v2.1/flavors")
    assert refused.value.http_status == 403
    assert refused.value.message == ("POST /v2.1/flavors needs the admin role (this token has: "
                                     "member)")
    policy.enforce(Request("GET", "/v2.1/flavors", {}, {}, b"", context=ctx("member")),
                   "GET", "/v2.1/flavors")
