"""Nova's flavor access and extra specs at microversion 2.1:
``/flavors/{id}/os-flavor-access``, the ``addTenantAccess`` and
``removeTenantAccess`` actions (``/flavors/{id}/action``) and
``/flavors/{id}/os-extra_specs[/{key}]``.

Changing either is for admins (``policy.py``); anyone who may see a flavor
reads its extra specs. A private flavor that the caller may not use is
"not found" here as everywhere (``vmops/compute/flavor_access.py``).
"""

from __future__ import annotations

import re
from typing import Any

from vmops.api import parse, views
from vmops.api.server import Request, Response, Router
from vmops.compute import flavor_access
from vmops.errors import Invalid, NotFound
from vmops.store import Flavor, Store

P = views.API_PREFIX
# Nova's extra spec keys and values (schemas/flavors_extraspecs.py).
_SPEC_KEY = re.compile(r"[a-zA-Z0-9\-_:. ]{1,255}")
MAX_SPEC_VALUE = 255
MAX_PROJECT_ID = 255


def add_routes(r: Router, store: Store) -> None:
    api = FlavorAccessApi(store)
    r.add("GET", f"{P}/flavors/{{id}}/os-flavor-access", api.list_access)
    r.add("POST", f"{P}/flavors/{{id}}/action", api.action)
    r.add("GET", f"{P}/flavors/{{id}}/os-extra_specs", api.list_specs)
    r.add("POST", f"{P}/flavors/{{id}}/os-extra_specs", api.create_specs)
    r.add("GET", f"{P}/flavors/{{id}}/os-extra_specs/{{key}}", api.show_spec)
    r.add("PUT", f"{P}/flavors/{{id}}/os-extra_specs/{{key}}", api.update_spec)
    r.add("DELETE", f"{P}/flavors/{{id}}/os-extra_specs/{{key}}", api.delete_spec)


# oslo's bool_from_string words, which Nova's is_public filter takes.
_TRUE = {"1", "t", "true", "on", "y", "yes"}
_FALSE = {"0", "f", "false", "off", "n", "no"}


def visible_flavors(store: Store, req: Request) -> list[Flavor]:
    """The flavors the caller may list: ``?is_public=`` (admins; Nova
    ignores it for anyone else) chooses public ones (the default), private
    ones (false) or all (none)."""
    text = (req.arg("is_public") if req.context.is_admin else None) or "true"
    text = text.lower()
    if text not in _TRUE | _FALSE | {"none"}:
        raise Invalid(reason=f"Invalid is_public filter [{text[:40]}]")
    is_public = None if text == "none" else text in _TRUE
    return flavor_access.listed(store, store.flavors(), req.context.project_id,
                                req.context.is_admin, is_public)


def _access_body(flavor_id: str, projects: list[str]) -> dict[str, Any]:
    return {"flavor_access": [{"flavor_id": flavor_id, "tenant_id": p} for p in projects]}


class FlavorAccessApi:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _flavor(self, req: Request) -> Flavor:
        return flavor_access.visible_flavor(self.store, req.params["id"],
                                            req.context.project_id, req.context.is_admin)

    # -- os-flavor-access --------------------------------------------------------
    def list_access(self, req: Request) -> Response:
        flavor = self._flavor(req)
        if flavor.is_public:
            raise NotFound("Access list not available for public flavors.")
        return Response(200, _access_body(flavor.id, flavor_access.projects(
            self.store, flavor.id)))

    def action(self, req: Request) -> Response:
        """``{"addTenantAccess": {"tenant": ID}}`` or ``removeTenantAccess``."""
        name, arg = parse.one_action(req.json())
        if name not in ("addTenantAccess", "removeTenantAccess"):
            raise Invalid(reason=f"unknown flavor action {name[:60]!r}; known: "
                          "addTenantAccess, removeTenantAccess")
        if not isinstance(arg, dict):
            raise Invalid(reason=f"{name} takes an object with 'tenant'")
        parse.no_unknown(arg, {"tenant"}, name)
        project_id = parse.field(arg, "tenant", str, required=True)
        if not 1 <= len(project_id) <= MAX_PROJECT_ID or not project_id.isprintable():
            raise Invalid(reason=f"tenant is 1 to {MAX_PROJECT_ID} printable characters")
        flavor = self._flavor(req)
        change = flavor_access.add_project if name == "addTenantAccess" \
            else flavor_access.remove_project
        return Response(200, _access_body(flavor.id, change(self.store, flavor, project_id)))

    # -- os-extra_specs ------------------------------------------------------------
    def list_specs(self, req: Request) -> Response:
        flavor = self._flavor(req)
        return Response(200, {"extra_specs": flavor_access.extra_specs(self.store, flavor.id)})

    def create_specs(self, req: Request) -> Response:
        """Add or change keys, keeping the others; answers with those given."""
        body = req.json()
        specs = _specs(parse.section(body, "extra_specs"))
        parse.no_unknown(body, {"extra_specs"}, "the request body")
        flavor = self._flavor(req)
        flavor_access.set_extra_specs(self.store, flavor.id, specs)
        return Response(200, {"extra_specs": specs})

    def show_spec(self, req: Request) -> Response:
        flavor, key = self._flavor(req), req.params["key"]
        return Response(200, {key: flavor_access.extra_spec(self.store, flavor.id, key)})

    def update_spec(self, req: Request) -> Response:
        """The body is ``{KEY: VALUE}`` with the key of the path (Nova's words
        for a mismatch or more than one key)."""
        body, key = req.json(), req.params["key"]
        if not isinstance(body, dict) or not body:
            raise Invalid(reason="the request body must be a JSON object {key: value}")
        if key not in body:
            raise Invalid(reason="Request body and URI mismatch")
        if len(body) > 1:
            raise Invalid(reason="Request body contains too many items")
        specs = _specs(body)
        flavor = self._flavor(req)
        flavor_access.set_extra_specs(self.store, flavor.id, specs)
        return Response(200, specs)

    def delete_spec(self, req: Request) -> Response:
        flavor = self._flavor(req)
        flavor_access.delete_extra_spec(self.store, flavor.id, req.params["key"])
        return Response(200)


def _specs(values: dict[str, Any]) -> dict[str, str]:
    """Nova's schema: keys of letters, digits and ``-_:. `` (1 to 255); values
    strings of at most 255 characters, or numbers or booleans (kept as text)."""
    specs: dict[str, str] = {}
    for key, value in values.items():
        if not _SPEC_KEY.fullmatch(key):
            raise Invalid(reason=f"extra spec key {key[:60]!r} must be 1 to 255 letters, "
                          "digits, '-', '_', ':', '.' or spaces")
        if isinstance(value, (bool, int, float)):
            value = str(value)
        if not isinstance(value, str) or len(value) > MAX_SPEC_VALUE:
            raise Invalid(reason=f"extra spec {key!r} must be a string of at most "
                          f"{MAX_SPEC_VALUE} characters (or a number or boolean)")
        specs[key] = value
    return specs
