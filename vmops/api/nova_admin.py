"""The routes of Nova's admin APIs that schema 8 brought: flavor access and
extra specs, host aggregates, server diagnostics, the instance usage audit
log, ``os-networks``, the compute API's image metadata and its security
group proxy (one call from ``Routes.router()``)."""

from __future__ import annotations

from vmops.api import (
    aggregates_api,
    diagnostics_api,
    flavor_access_api,
    image_metadata_api,
    networks_api,
    security_groups_proxy,
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
    security_groups_proxy.add_routes(r, compute)
