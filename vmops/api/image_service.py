"""The part of the image service (Glance v2) OpenStack clients need to name
images: list (with Glance's filters and paging), show, and its version
document. Read-only: images are imported with vmops' own API
(``POST /v2.1/images``, ``vmops image import``).
"""

from __future__ import annotations

from typing import Any

from vmops.api import discovery, parse, views
from vmops.api.server import Request, Response, Router
from vmops.errors import ImageNotFound, Invalid
from vmops.store import Image, Store

PREFIX = discovery.IMAGE_PREFIX
# Glance's status names for vmops' image states.
STATUS = {"queued": "queued", "saving": "saving", "active": "active", "error": "killed"}
VISIBILITIES = ("public", "private", "shared", "community", "all")
MAX_LIMIT = 1000


def add_routes(r: Router, store: Store) -> None:
    images = ImageService(store)
    r.add("GET", discovery.IMAGE_ROOT, discovery.image_versions, public=True)
    r.add("GET", PREFIX, discovery.image_versions, public=True)
    r.add("GET", f"{PREFIX}/images", images.list)
    r.add("GET", f"{PREFIX}/images/{{id}}", images.show)


class ImageService:
    def __init__(self, store: Store) -> None:
        self.store = store

    def list(self, req: Request) -> Response:
        """GET /v2/images: filters name, id, status, visibility, disk_format;
        paging with limit and marker; a ``next`` link while more remain."""
        found = [i for i in self.store.images() if _matches(i, req)]
        marker = req.arg("marker")
        if marker:
            ids = [i.id for i in found]
            if marker not in ids:
                raise Invalid(reason=f"marker {marker!r} not found")
            found = found[ids.index(marker) + 1:]
        limit = _limit(req.arg("limit"))
        page = found[:limit]
        body: dict[str, Any] = {"images": [image(i) for i in page],
                                "first": "/v2/images", "schema": "/v2/schemas/images"}
        if len(found) > limit and page:
            body["next"] = f"/v2/images?marker={page[-1].id}&limit={limit}"
        return Response(200, body)

    def show(self, req: Request) -> Response:
        """GET /v2/images/{id}; a name is accepted too, as vmops' names are unique."""
        try:
            return Response(200, image(self.store.image(req.params["id"])))
        except ImageNotFound:
            raise ImageNotFound(image=req.params["id"]) from None


def _limit(text: str | None) -> int:
    if text is None:
        return MAX_LIMIT
    return min(parse.count_arg(text, "limit"), MAX_LIMIT)


def _matches(img: Image, req: Request) -> bool:
    visibility = req.arg("visibility")
    if visibility is not None and visibility not in VISIBILITIES:
        raise Invalid(reason=f"visibility must be one of {', '.join(VISIBILITIES)}")
    wanted = {"name": img.name, "id": img.id, "status": STATUS[img.status],
              "disk_format": img.format, "visibility": "public"}
    for arg, value in wanted.items():
        asked = req.arg(arg)
        if asked is None or (arg == "visibility" and asked == "all"):
            continue
        if asked.removeprefix("in:") != asked:
            if value not in asked[3:].split(","):
                return False
        elif asked != value:
            return False
    return True


def image(img: Image) -> dict[str, Any]:
    """An image in Glance v2's shape. ``checksum`` is Glance's MD5, which
    vmops does not compute; the SHA-256 of the imported bytes is given as
    ``os_hash_algo``/``os_hash_value``."""
    return {
        "id": img.id, "name": img.name, "status": STATUS[img.status],
        "visibility": "public", "protected": False, "os_hidden": False, "owner": views.TENANT,
        "checksum": None,
        "os_hash_algo": "sha256" if img.checksum else None,
        "os_hash_value": img.checksum or None,
        "size": img.file_size or None, "virtual_size": img.virtual_size or None,
        "disk_format": img.format or None, "container_format": "bare" if img.format else None,
        "min_ram": 0, "min_disk": 0, "tags": [],
        "created_at": views.iso_time(img.created_at), "updated_at": views.iso_time(img.updated_at),
        "self": f"/v2/images/{img.id}", "file": f"/v2/images/{img.id}/file",
        "schema": "/v2/schemas/image",
        **views.image_properties(img),  # Glance puts properties at the top level
    }
