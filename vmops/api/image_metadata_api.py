"""The compute API's image metadata proxy (Nova's ``/images/{id}/metadata``,
gone from microversion 2.39): an image's Glance user properties, read and
changed as Nova's proxy does it through Glance.

The metadata are the image's properties less Glance's own attributes
(``disk_format``, ``min_ram``, ``protected``...: changed through the image
service only); ``os_admin_user`` is the record's login user. Anyone who
sees the image reads them; its project (or an admin) changes them, as
Glance allows (404 for an image the caller cannot see, 403 for another
project's). The project's ``metadata_items`` quota bounds how many there
are, as Nova checks it.
"""

from __future__ import annotations

import re
from typing import Any

from vmops.api import image_service, parse, views
from vmops.api.server import Request, Response, Router
from vmops.compute.catalog import GLANCE_BASE, check_login_user
from vmops.compute.manager import Compute
from vmops.errors import Forbidden, ImageNotFound, Invalid, NotFound
from vmops.store import Image

P = views.API_PREFIX
MAX_TEXT = 255
LOGIN_USER = image_service.LOGIN_USER_PROPERTY
_KEY = re.compile(r"[^\x00-\x1f\x7f]{1,255}")


def add_routes(r: Router, compute: Compute) -> None:
    api = ImageMetadataApi(compute)
    r.add("GET", f"{P}/images/{{id}}/metadata", api.list)
    r.add("POST", f"{P}/images/{{id}}/metadata", api.merge)
    r.add("PUT", f"{P}/images/{{id}}/metadata", api.replace)
    r.add("GET", f"{P}/images/{{id}}/metadata/{{key}}", api.show)
    r.add("PUT", f"{P}/images/{{id}}/metadata/{{key}}", api.set_item)
    r.add("DELETE", f"{P}/images/{{id}}/metadata/{{key}}", api.delete)


def metadata(img: Image) -> dict[str, str]:
    return {k: v for k, v in views.image_properties(img).items() if k not in GLANCE_BASE}


class ImageMetadataApi:
    def __init__(self, compute: Compute) -> None:
        self.compute = compute
        self.store = compute.store

    def _image(self, req: Request, change: bool = False) -> Image:
        if req.at_least("2.39"):
            raise NotFound("the compute API's image proxy is gone from microversion 2.39: "
                           "use the image service")
        image_id = req.params["id"]
        try:
            img = image_service.owned_image(self.store, image_id, req.context) if change \
                else image_service.visible_image(self.store, image_id, req.context)
        except ImageNotFound:
            raise ImageNotFound("Image not found.") from None
        if img.id != image_id:  # a name is no image id here
            raise ImageNotFound("Image not found.")
        return img

    def _write(self, req: Request, img: Image, wanted: dict[str, str]) -> Image:
        """Make the image's metadata ``wanted`` (its Glance attributes kept)."""
        self.compute.quotas.check_metadata(req.context.project_id, len(wanted))
        login_user = wanted.get(LOGIN_USER, "")
        check_login_user(login_user)
        extra = {k: v for k, v in img.extra.items() if k in GLANCE_BASE}
        extra.update({k: v for k, v in wanted.items() if k != LOGIN_USER})
        return self.store.update_image(img, extra=extra, login_user=login_user)

    # -- the whole set --------------------------------------------------------------
    def list(self, req: Request) -> Response:
        return Response(200, {"metadata": metadata(self._image(req))})

    def merge(self, req: Request) -> Response:
        """POST: add or change these items, keeping the others."""
        items = _items(req.json(), "metadata")
        img = self._image(req, change=True)
        img = self._write(req, img, {**metadata(img), **items})
        return Response(200, {"metadata": metadata(img)})

    def replace(self, req: Request) -> Response:
        """PUT: these items and no others."""
        items = _items(req.json(), "metadata")
        img = self._write(req, self._image(req, change=True), items)
        return Response(200, {"metadata": metadata(img)})

    # -- one item ---------------------------------------------------------------------
    def show(self, req: Request) -> Response:
        key = req.params["key"]
        items = metadata(self._image(req))
        if key not in items:
            raise NotFound(f"Image has no metadata item {key[:60]!r}.")
        return Response(200, {"meta": {key: items[key]}})

    def set_item(self, req: Request) -> Response:
        """The body is ``{"meta": {KEY: VALUE}}`` with the path's key."""
        key = req.params["key"]
        items = _items(req.json(), "meta")
        if key not in items:
            raise Invalid(reason="Request body and URI mismatch")
        if len(items) > 1:
            raise Invalid(reason="Request body contains too many items")
        img = self._image(req, change=True)
        self._write(req, img, {**metadata(img), **items})
        return Response(200, {"meta": items})

    def delete(self, req: Request) -> Response:
        key = req.params["key"]
        img = self._image(req, change=True)
        items = metadata(img)
        if key not in items:
            raise NotFound(f"Image has no metadata item {key[:60]!r}.")
        del items[key]
        self._write(req, img, items)
        return Response(204)


def _items(body: Any, name: str) -> dict[str, str]:
    """Nova's schema: keys of 1 to 255 characters, string values of at most
    255; Glance's own attributes are not metadata (403, as Glance)."""
    items = parse.section(body, name)
    parse.no_unknown(body, {name}, "the request body")
    for key, value in items.items():
        if not _KEY.fullmatch(key):
            raise Invalid(reason=f"metadata key {key[:60]!r} must be 1 to {MAX_TEXT} "
                          "printable characters")
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise Invalid(reason=f"metadata {key!r} must be a string of at most {MAX_TEXT} "
                          "characters")
        if key in GLANCE_BASE or key in image_service.RESERVED \
                or key.startswith(image_service.RESERVED_PREFIX):
            raise Forbidden(reason=f"{key!r} is an attribute of Glance's, not metadata: "
                            "change it through the image service")
    return items
