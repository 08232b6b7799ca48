"""Version documents, which OpenStack clients read before any other request.

keystoneauth discovers each service's versioned URL from these documents:
the compute API at ``/`` and ``/v2.1``, and, so that clients which build an
image or identity client on their way to the compute API find one, a
minimal image service (Glance v2, at ``/image``) and an identity version
document at ``/identity`` (there is no identity API behind it: the token is
the one vmops is configured with).
"""

from __future__ import annotations

from typing import Any

from vmops.api.server import MAX_MICROVERSION, MIN_MICROVERSION, Request, Response, version_text

COMPUTE_PREFIX = "/v2.1"
IMAGE_ROOT = "/image"
IMAGE_PREFIX = "/image/v2"
IDENTITY_ROOT = "/identity"
IDENTITY_PREFIX = "/identity/v3"

IMAGE_VERSION = "v2.0"
IDENTITY_VERSION = "v3.0"


LEGACY_PREFIX = "/v2"  # Nova still lists v2.0; only its version document is served
DESCRIBED_BY = {"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"}


def compute_version(base: str, listed: bool = False) -> dict[str, Any]:
    """v2.1; ``listed``: as in the list at ``/`` (no media types, as Nova)."""
    doc: dict[str, Any] = {
        "id": "v2.1", "status": "CURRENT", "version": version_text(MAX_MICROVERSION),
        "min_version": version_text(MIN_MICROVERSION), "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": f"{base}{COMPUTE_PREFIX}/"}],
    }
    if not listed:
        doc["links"].append(DESCRIBED_BY)
        doc["media-types"] = [{"base": "application/json",
                               "type": "application/vnd.openstack.compute+json;version=2.1"}]
    return doc


def legacy_compute_version(base: str, listed: bool = False) -> dict[str, Any]:
    """Nova's v2.0 entry: SUPPORTED, without microversions."""
    doc: dict[str, Any] = {
        "id": "v2.0", "status": "SUPPORTED", "version": "", "min_version": "",
        "updated": "2011-01-21T11:33:21Z",
        "links": [{"rel": "self", "href": f"{base}{LEGACY_PREFIX}/"}],
    }
    if not listed:
        doc["links"].append(DESCRIBED_BY)
        doc["media-types"] = [{"base": "application/json",
                               "type": "application/vnd.openstack.compute+json;version=2"}]
    return doc


def image_version(base: str) -> dict[str, Any]:
    return {"id": IMAGE_VERSION, "status": "CURRENT",
            "links": [{"rel": "self", "href": f"{base}{IMAGE_PREFIX}/"}]}


def identity_version(base: str) -> dict[str, Any]:
    return {
        "id": IDENTITY_VERSION, "status": "stable", "updated": "2013-03-06T00:00:00Z",
        "links": [{"rel": "self", "href": f"{base}{IDENTITY_PREFIX}/"}],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.identity-v3+json"}],
    }


def compute_versions(req: Request) -> Response:
    """As Nova's: v2.0 first, then v2.1 (clients take the newest)."""
    return Response(200, {"versions": [legacy_compute_version(req.base_url, listed=True),
                                       compute_version(req.base_url, listed=True)]})


def legacy_compute_current(req: Request) -> Response:
    return Response(200, {"version": legacy_compute_version(req.base_url)})


def compute_current(req: Request) -> Response:
    return Response(200, {"version": compute_version(req.base_url)})


def image_versions(req: Request) -> Response:
    return Response(200, {"versions": [image_version(req.base_url)]})


def identity_versions(req: Request) -> Response:
    return Response(200, {"versions": {"values": [identity_version(req.base_url)]}})


def identity_current(req: Request) -> Response:
    return Response(200, {"version": identity_version(req.base_url)})
