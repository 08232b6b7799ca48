"""The routes of Nova's admin APIs that schema 8 brought: flavor access and
extra specs, host aggregates, server diagnostics, the instance usage audit
log, ``os-networks`` and the compute API's image metadata (one call from
``Routes.router()``)."""

from __future__ import annotations

from vmops.api import (
    aggregates_api,
    diagnostics_api,
    flavor_access_api,
    image_metadata_api,
    networks_api,
    usage_audit_api,
)
from vmops.api.server import Router
from vmops.compute.manager import Compute


def add_routes(r: Router, compute: Compute) -> None:
    flavor_access_api.add_routes(r, compute.store)  # access lists, extra specs
    aggregates_api.add_routes(r, compute.store)
    image_metadata_api.add_routes(r, compute)
    diagnostics_api.add_routes(r, compute)
    usage_audit_api.add_routes(r, compute.store)
    networks_api.add_routes(r, compute.store)
