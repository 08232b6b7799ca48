"""Nova's ``os-aggregates`` (admin): create, list, show, update, delete,
and the ``add_host``, ``remove_host`` and ``set_metadata`` actions, over
the records of ``vmops/compute/aggregates.py``. The only host there is to
add is this one (another name: 404, as Nova for a host it does not know).

Microversions: the aggregate's ``uuid`` from 2.41.
"""

from __future__ import annotations

import re
from typing import Any

from vmops.api import parse, views
from vmops.api.host_api import nova_time
from vmops.api.server import Request, Response, Router
from vmops.compute import host_facts
from vmops.compute.aggregates import Aggregate, Aggregates
from vmops.errors import Invalid
from vmops.store import Store

P = views.API_PREFIX
MAX_NAME = 255
# Nova's metadata keys (schemas/aggregates.py).
_META_KEY = re.compile(r"[a-zA-Z0-9\-_:. ]{1,255}")


def add_routes(r: Router, store: Store) -> None:
    api = AggregatesApi(Aggregates(store, host_facts.hostname()))
    r.add("GET", f"{P}/os-aggregates", api.list)
    r.add("POST", f"{P}/os-aggregates", api.create)
    r.add("GET", f"{P}/os-aggregates/{{id}}", api.show)
    r.add("PUT", f"{P}/os-aggregates/{{id}}", api.update)
    r.add("DELETE", f"{P}/os-aggregates/{{id}}", api.delete)
    r.add("POST", f"{P}/os-aggregates/{{id}}/action", api.action)


def view(aggregate: Aggregate, req: Request, full: bool = True) -> dict[str, Any]:
    """Nova's aggregate; the create answer has no hosts or metadata."""
    body: dict[str, Any] = {
        "id": aggregate.id, "name": aggregate.name,
        "availability_zone": aggregate.availability_zone,
        "created_at": nova_time(aggregate.created_at),
        "updated_at": None if aggregate.updated_at is None else nova_time(aggregate.updated_at),
        "deleted": False, "deleted_at": None}
    if full:
        body.update(hosts=list(aggregate.hosts), metadata=dict(aggregate.metadata))
    if req.at_least("2.41"):
        body["uuid"] = aggregate.uuid
    return body


def _aggregate_id(text: str) -> int:
    """Nova's ids are integers: anything else is a 400."""
    try:
        return int(text)
    except ValueError:
        raise Invalid(reason=f"Invalid aggregate id {text[:40]!r}: an integer") from None


def _name(value: Any, what: str) -> str:
    """Nova's names: 1 to 255 printable characters, no leading or trailing space."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME \
            or not value.isprintable() or value != value.strip():
        raise Invalid(reason=f"{what} must be 1 to {MAX_NAME} printable characters, "
                      "without leading or trailing spaces")
    return value


def _zone(value: Any) -> str | None:
    return None if value is None else _name(value, "availability_zone")


class AggregatesApi:
    def __init__(self, aggregates: Aggregates) -> None:
        self.aggregates = aggregates

    def list(self, req: Request) -> Response:
        return Response(200, {"aggregates": [view(a, req) for a in self.aggregates.all()]})

    def create(self, req: Request) -> Response:
        body = req.json()
        fields = parse.section(body, "aggregate")
        parse.no_unknown(body, {"aggregate"}, "the request body")
        parse.no_unknown(fields, {"name", "availability_zone"}, "aggregate")
        if "name" not in fields:
            raise Invalid(reason="'name' is required")
        aggregate = self.aggregates.create(_name(fields["name"], "name"),
                                           _zone(fields.get("availability_zone")))
        return Response(200, {"aggregate": view(aggregate, req, full=False)})

    def show(self, req: Request) -> Response:
        return Response(200, {"aggregate": view(self.aggregates.get(
            _aggregate_id(req.params["id"])), req)})

    def update(self, req: Request) -> Response:
        body = req.json()
        fields = parse.section(body, "aggregate")
        parse.no_unknown(body, {"aggregate"}, "the request body")
        parse.no_unknown(fields, {"name", "availability_zone"}, "aggregate")
        if not fields:
            raise Invalid(reason="give name and/or availability_zone")
        name = _name(fields["name"], "name") if "name" in fields else None
        aggregate = self.aggregates.update(
            _aggregate_id(req.params["id"]), name, _zone(fields.get("availability_zone")),
            "availability_zone" in fields)
        return Response(200, {"aggregate": view(aggregate, req)})

    def delete(self, req: Request) -> Response:
        self.aggregates.delete(_aggregate_id(req.params["id"]))
        return Response(200)

    def action(self, req: Request) -> Response:
        """``add_host`` / ``remove_host`` ``{"host": NAME}``, or
        ``set_metadata`` ``{"metadata": {KEY: VALUE or null}}``."""
        name, arg = parse.one_action(req.json())
        if name not in ("add_host", "remove_host", "set_metadata"):
            raise Invalid(reason=f"unknown aggregate action {name[:60]!r}; known: add_host, "
                          "remove_host, set_metadata")
        if not isinstance(arg, dict):
            raise Invalid(reason=f"{name} takes an object")
        aggregate_id = _aggregate_id(req.params["id"])
        if name == "set_metadata":
            parse.no_unknown(arg, {"metadata"}, name)
            aggregate = self.aggregates.set_metadata(aggregate_id, _metadata(arg))
        else:
            parse.no_unknown(arg, {"host"}, name)
            host = _name(arg.get("host"), "host")
            change = self.aggregates.add_host if name == "add_host" \
                else self.aggregates.remove_host
            aggregate = change(aggregate_id, host)
        return Response(200, {"aggregate": view(aggregate, req)})


def _metadata(arg: dict[str, Any]) -> dict[str, str | None]:
    """Nova's schema: at least one item; keys of letters, digits and
    ``-_:. `` (1 to 255); values strings of at most 255 characters, or null
    to remove the item."""
    items = arg.get("metadata")
    if not isinstance(items, dict) or not items:
        raise Invalid(reason="set_metadata takes {\"metadata\": {key: value or null, ...}} "
                      "with at least one item")
    for key, value in items.items():
        if not _META_KEY.fullmatch(key):
            raise Invalid(reason=f"metadata key {key[:60]!r} must be 1 to 255 letters, "
                          "digits, '-', '_', ':', '.' or spaces")
        if value is not None and (not isinstance(value, str) or len(value) > MAX_NAME):
            raise Invalid(reason=f"metadata {key!r} must be a string of at most {MAX_NAME} "
                          "characters, or null to remove it")
        if key == "availability_zone" and value is not None:
            _zone(value)
    return items
