"""The image service (Glance v2) OpenStack clients use: list (Glance's
filters, sorting and paging), show, create, update (JSON patch), delete,
tags, the image data (upload and download), the image schemas, and the
version document.

An image is created ``queued`` with no data; ``PUT /v2/images/{id}/file``
streams its bytes into the same checks and cache as ``vmops image import``
(:meth:`Catalog.upload_image`): raw or qcow2 as declared, no backing or
data file, within ``image_import_max_bytes``. Who sees what, as Glance: a
user sees public and community images and their project's own; only the
owner's project (or an admin) changes, uploads to or deletes an image;
only an admin makes an image public or gives it to another project.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from vmops.api import discovery, parse, views
from vmops.api.body_stream import BodyStream
from vmops.api.server import Context, Request, Response, Router
from vmops.compute.catalog import GLANCE_BASE, Catalog, check_login_user, user_properties
from vmops.disks.sources import CHUNK
from vmops.errors import Conflict, Forbidden, ImageNotFound, Invalid, NotFound
from vmops.store import Image, Store

PREFIX = discovery.IMAGE_PREFIX
# Glance's status names for vmops' image states.
STATUS = {"queued": "queued", "saving": "saving", "active": "active", "error": "killed"}
VISIBILITIES = ("public", "community", "shared", "private")
DISK_FORMATS = ("ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso",
                "ploop")
CONTAINER_FORMATS = ("ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed")
MAX_LIMIT = 1000
MAX_TEXT = 255  # names, tags, property names and owners, as Glance's schema
MAX_TAGS = 128  # Glance's image_tag_quota
MAX_PROPERTIES = 128  # Glance's image_property_quota
MAX_INT = 2**31 - 1
PATCH_TYPES = {"application/openstack-images-v2.0-json-patch": 4,
               "application/openstack-images-v2.1-json-patch": 10}
# Set by the service, never by a client (Glance: 403 "is read-only").
READ_ONLY = ("created_at", "updated_at", "status", "checksum", "size", "virtual_size",
             "direct_url", "self", "file", "schema", "id", "os_hash_algo", "os_hash_value",
             "stores", "locations")
RESERVED = ("location", "deleted", "deleted_at")
RESERVED_PREFIX = "os_glance"
# Base attributes a patch may set (``id`` only at create).
SETTABLE = ("name", "visibility", "protected", "os_hidden", "min_disk", "min_ram",
            "disk_format", "container_format", "tags", "owner")
LOGIN_USER_PROPERTY = "os_admin_user"  # kept in the record's login_user
SORT_KEYS = ("name", "status", "container_format", "disk_format", "size", "id", "created_at",
             "updated_at")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}")


def add_routes(r: Router, catalog: Catalog) -> None:
    images = ImageService(catalog)
    r.add("GET", discovery.IMAGE_ROOT, discovery.image_versions, public=True)
    r.add("GET", PREFIX, discovery.image_versions, public=True)
    r.add("GET", f"{PREFIX}/images", images.list)
    r.add("POST", f"{PREFIX}/images", images.create)
    r.add("GET", f"{PREFIX}/images/{{id}}", images.show)
    r.add("PATCH", f"{PREFIX}/images/{{id}}", images.update)
    r.add("DELETE", f"{PREFIX}/images/{{id}}", images.delete)
    r.add("PUT", f"{PREFIX}/images/{{id}}/file", images.upload, stream=True)
    r.add("GET", f"{PREFIX}/images/{{id}}/file", images.download)
    r.add("PUT", f"{PREFIX}/images/{{id}}/tags/{{tag}}", images.add_tag)
    r.add("DELETE", f"{PREFIX}/images/{{id}}/tags/{{tag}}", images.delete_tag)
    r.add("GET", f"{PREFIX}/schemas/image", images.image_schema)
    r.add("GET", f"{PREFIX}/schemas/images", images.images_schema)


# -- who sees and who changes an image ------------------------------------------


def can_see(img: Image, ctx: Context) -> bool:
    """Glance's rule: public and community images, and the project's own
    (shared ones are its own too: vmops has no image members)."""
    return ctx.is_admin or img.visibility in ("public", "community") \
        or img.owner == ctx.project_id


def visible_images(store: Store, ctx: Context) -> list[Image]:
    return [i for i in store.images() if can_see(i, ctx)]


def visible_image(store: Store, ref: str, ctx: Context) -> Image:
    """The image ``ref`` (id, or a name) names, if ``ctx`` may see it; else 404."""
    try:
        img = store.image(ref)
    except ImageNotFound:
        raise ImageNotFound(image=ref) from None
    if not can_see(img, ctx):
        raise ImageNotFound(image=ref)
    return img


def owned_image(store: Store, image_id: str, ctx: Context) -> Image:
    """The image with this id if ``ctx`` may change it: 404 if it may not
    see it, 403 if it sees but does not own it (or only reads)."""
    img = visible_image(store, image_id, ctx)
    if img.id != image_id:
        raise ImageNotFound(image=image_id)
    if not ctx.can_write:
        raise Forbidden(reason="the reader role may not change images")
    if not ctx.is_admin and img.owner != ctx.project_id:
        raise Forbidden(reason=f"image {image_id} belongs to another project; only its "
                        "owner may change it")
    return img


class ImageService:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.store = catalog.store

    # -- reading ---------------------------------------------------------------

    def list(self, req: Request) -> Response:
        """GET /v2/images: filters name, id, status, visibility, owner,
        disk_format, container_format, protected, os_hidden, tag; sort_key
        and sort_dir (or sort=key:dir); paging with limit and marker."""
        found = [i for i in visible_images(self.store, req.context) if _matches(i, req)]
        found = _sorted(found, req)
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
        """GET /v2/images/{id} (a name is taken too, the first by id)."""
        return Response(200, image(visible_image(self.store, req.params["id"], req.context)))

    def download(self, req: Request) -> Response:
        """GET /v2/images/{id}/file: the stored bytes; 204 while it has none."""
        img = visible_image(self.store, req.params["id"], req.context)
        path = Path(img.path)
        if img.status != "active" or not img.path or not path.is_file():
            return Response(204)
        headers = {"Content-Type": "application/octet-stream"}
        if img.extra.get("checksum"):
            headers["Content-MD5"] = str(img.extra["checksum"])
        return Response(200, headers=headers, stream=_file_chunks(path))

    def image_schema(self, req: Request) -> Response:
        return Response(200, schema())

    def images_schema(self, req: Request) -> Response:
        return Response(200, {"name": "images", "properties": {
            "images": {"type": "array", "items": schema()}, "first": {"type": "string"},
            "next": {"type": "string"}, "schema": {"type": "string"}},
            "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
                      {"rel": "describedby", "href": "{schema}"}]})

    # -- changing --------------------------------------------------------------

    def create(self, req: Request) -> Response:
        """POST /v2/images: a queued record (201); its data comes with PUT .../file."""
        ctx = req.context
        if not ctx.can_write:
            raise Forbidden(reason="the reader role may not create images")
        body = req.json()
        if not isinstance(body, dict):
            raise Invalid(reason="the request body must be a JSON object of image attributes")
        ident = body.pop("id", None)
        for key in body:
            _check_key(key)
        if ident is not None and (not isinstance(ident, str) or not _UUID.fullmatch(ident)):
            raise Invalid(reason=f"id {ident!r} is not a UUID")
        img = Image(id=ident or str(uuidlib.uuid4()), name="", status="queued",
                    owner=ctx.project_id, visibility="shared",
                    extra={"protected": False, "os_hidden": False, "min_disk": 0, "min_ram": 0,
                           "tags": []})
        img = _apply(img, body, ctx)
        return Response(201, image(self.store.add_image(img)),
                        headers={"Location": f"{req.base_url}{PREFIX}/images/{img.id}"})

    def update(self, req: Request) -> Response:
        """PATCH /v2/images/{id}: a JSON patch (Glance's media types) of
        name, visibility, protected, os_hidden, min_disk, min_ram, tags,
        owner (admin), the formats (while queued) and user properties."""
        kind = (req.headers.get("content-type") or "").split(";")[0].strip().lower()
        if kind not in PATCH_TYPES:
            return Response(415, {"badMediaType": {"code": 415, "message": (
                f"unsupported Content-Type {kind[:80]!r}: send "
                f"{' or '.join(sorted(PATCH_TYPES))}")}},
                headers={"Accept-Patch": ", ".join(sorted(PATCH_TYPES))})
        img = owned_image(self.store, req.params["id"], req.context)
        changes = _patch_operations(req.json(), PATCH_TYPES[kind])
        for op, name, value in changes:
            img = _patched(img, op, name, value, req.context)
        if changes:
            img = self.store.update_image(img)
        return Response(200, image(img))

    def delete(self, req: Request) -> Response:
        """DELETE /v2/images/{id}: 204; refused for a protected image (403)
        and one instances use (409)."""
        img = owned_image(self.store, req.params["id"], req.context)
        self.catalog.delete_image(img.id, None if req.context.is_admin
                                  else req.context.project_id)
        return Response(204)

    def upload(self, req: Request) -> Response:
        """PUT /v2/images/{id}/file: the body (application/octet-stream,
        with a Content-Length or chunked) becomes the image's data: 204."""
        img = owned_image(self.store, req.params["id"], req.context)
        kind = (req.headers.get("content-type") or "").split(";")[0].strip().lower()
        if kind != "application/octet-stream":
            return Response(415, {"badMediaType": {"code": 415, "message": (
                f"unsupported Content-Type {kind[:80]!r}: send the image data as "
                "application/octet-stream")}})
        if req.stream is None:
            raise Invalid(reason="no request body")
        self.catalog.upload_image(img.id, Upload(req.stream, img.id))
        return Response(204)

    def add_tag(self, req: Request) -> Response:
        img = owned_image(self.store, req.params["id"], req.context)
        tag = req.params["tag"]
        tags = _tags([*img.extra.get("tags", []), tag])
        self.store.update_image(img, extra={**img.extra, "tags": tags})
        return Response(204)

    def delete_tag(self, req: Request) -> Response:
        img = owned_image(self.store, req.params["id"], req.context)
        tag = req.params["tag"]
        tags = list(img.extra.get("tags", []))
        if tag not in tags:
            raise NotFound(what=f"tag {tag!r} of image {img.id}")
        tags.remove(tag)
        self.store.update_image(img, extra={**img.extra, "tags": tags})
        return Response(204)


class Upload:
    """A request body as an image source (:class:`vmops.disks.sources.Source`)."""

    def __init__(self, stream: BodyStream, image_id: str) -> None:
        self.stream = stream
        self.shown = f"the upload to image {image_id}"
        self.length = stream.length

    def read(self) -> bytes:
        return self.stream.read(CHUNK)

    def close(self) -> None:
        pass


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


# -- create and patch: Glance's validation ----------------------------------------


def _check_key(key: str) -> None:
    if key in READ_ONLY:
        raise Forbidden(reason=f"attribute {key!r} is read-only")
    if key in RESERVED or key.startswith(RESERVED_PREFIX):
        raise Forbidden(reason=f"attribute {key!r} is reserved")
    if len(key) > MAX_TEXT or not key:
        raise Invalid(reason=f"a property name is 1 to {MAX_TEXT} characters")


def _apply(img: Image, attrs: dict[str, Any], ctx: Context) -> Image:
    for name, value in attrs.items():
        img = _set(img, name, value, ctx)
    return img


def _set(img: Image, name: str, value: Any, ctx: Context) -> Image:
    """``img`` with attribute or user property ``name`` set to ``value``."""
    _check_key(name)
    if name == "name":
        if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
            raise Invalid(reason=f"name must be a string of at most {MAX_TEXT} characters")
        return _replace(img, name=value or "")
    if name == "visibility":
        if value not in VISIBILITIES:
            raise Invalid(reason=f"visibility must be one of {', '.join(VISIBILITIES)}")
        if value == "public" and not ctx.is_admin:
            raise Forbidden(reason="only an admin may make an image public")
        return _replace(img, visibility=value)
    if name == "owner":
        if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
            raise Invalid(reason=f"owner must be a project id of at most {MAX_TEXT} characters")
        if (value or "") != img.owner and not ctx.is_admin:
            raise Forbidden(reason="only an admin may give an image to another project")
        return _replace(img, owner=value or "")
    if name == LOGIN_USER_PROPERTY:
        if not isinstance(value, str):
            raise Invalid(reason=f"property {name!r} must be a string")
        check_login_user(value)
        return _replace(img, login_user=value)
    return _replace(img, extra={**img.extra, name: _value(img, name, value)})


def _value(img: Image, name: str, value: Any) -> Any:
    """A checked value for Glance's attribute or user property ``name``."""
    if name in ("protected", "os_hidden"):
        if not isinstance(value, bool):
            raise Invalid(reason=f"{name} must be true or false")
        return value
    if name in ("min_disk", "min_ram"):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
            raise Invalid(reason=f"{name} must be a whole number from 0 to {MAX_INT}")
        return value
    if name in ("disk_format", "container_format"):
        allowed = DISK_FORMATS if name == "disk_format" else CONTAINER_FORMATS
        if value is not None and value not in allowed:
            raise Invalid(reason=f"{name} must be one of {', '.join(allowed)}")
        if img.status != "queued" and value != img.extra.get(name):
            raise Forbidden(reason=f"{name} can be changed only while the image is queued")
        return value
    if name == "tags":
        if not isinstance(value, list):
            raise Invalid(reason="tags must be a list of strings")
        return _tags(value)
    if name in GLANCE_BASE:  # checksum: read-only, refused before
        raise Forbidden(reason=f"attribute {name!r} is read-only")
    if not isinstance(value, str):
        raise Invalid(reason=f"property {name!r} must be a string, as Glance's are")
    if name not in img.extra and len(user_properties(img)) >= MAX_PROPERTIES:
        raise Invalid(reason=f"an image has at most {MAX_PROPERTIES} properties")
    return value


def _tags(tags: list[Any]) -> list[str]:
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or not tag or len(tag) > MAX_TEXT:
            raise Invalid(reason=f"a tag is a string of 1 to {MAX_TEXT} characters")
        if tag not in out:
            out.append(tag)
    if len(out) > MAX_TAGS:
        raise Invalid(reason=f"an image has at most {MAX_TAGS} tags")
    return out


def _replace(img: Image, **changes: Any) -> Image:
    return replace(img, **changes)


def _patch_operations(body: Any, draft: int) -> list[tuple[str, str, Any]]:
    """Glance's JSON patch: a list of (op, attribute, value); draft 10 is
    ``{"op": "replace", "path": "/name", "value": ...}``, draft 4 (v2.0)
    ``{"replace": "/name", "value": ...}``."""
    if not isinstance(body, list):
        raise Invalid(reason="the request body must be a JSON array of operation objects")
    changes = []
    for raw in body:
        if not isinstance(raw, dict):
            raise Invalid(reason="each operation must be a JSON object")
        op, path = _op_and_path(raw, draft)
        name = _pointer(path)
        if op != "remove" and "value" not in raw:
            raise Invalid(reason=f"operation {op!r} requires a member named 'value'")
        changes.append((op, name, raw.get("value")))
    return changes


def _op_and_path(raw: dict[str, Any], draft: int) -> tuple[str, Any]:
    ops = ("add", "remove", "replace")
    if draft == 10:
        op = raw.get("op")
        if op not in ops:
            raise Invalid(reason=f"operation 'op' must be one of {', '.join(ops)}")
        if "path" not in raw:
            raise Invalid(reason="operation has no 'path'")
        return str(op), raw["path"]
    named = [k for k in ops if k in raw]
    if len(named) != 1:
        raise Invalid(reason="an operation must contain exactly one member named 'add', "
                      "'remove' or 'replace'")
    return named[0], raw[named[0]]


def _pointer(path: Any) -> str:
    """The one attribute a JSON pointer names (Glance takes no deeper path)."""
    if not isinstance(path, str) or not path.startswith("/") or len(path) < 2:
        raise Invalid(reason=f"path {str(path)[:80]!r} is not a JSON pointer like '/name'")
    if "/" in path[1:] or re.search("~[^01]|~$", path):
        raise Invalid(reason=f"invalid JSON pointer for an image: {path[:80]!r}")
    name = path[1:].replace("~1", "/").replace("~0", "~")
    _check_key(name)
    return name


def _patched(img: Image, op: str, name: str, value: Any, ctx: Context) -> Image:
    known = name in SETTABLE or name in img.extra or \
        (name == LOGIN_USER_PROPERTY and bool(img.login_user))
    if op == "remove":
        if name in SETTABLE:
            raise Forbidden(reason=f"attribute {name!r} may not be removed")
        if not known:
            raise Conflict(reason=f"property {name!r} does not exist")
        if name == LOGIN_USER_PROPERTY:
            return _replace(img, login_user="")
        return _replace(img, extra={k: v for k, v in img.extra.items() if k != name})
    if op == "replace" and not known:
        raise Conflict(reason=f"property {name!r} does not exist")
    return _set(img, name, value, ctx)


# -- list filters -------------------------------------------------------------------


def _limit(text: str | None) -> int:
    if text is None:
        return MAX_LIMIT
    return min(parse.count_arg(text, "limit"), MAX_LIMIT)


def _matches(img: Image, req: Request) -> bool:
    visibility = req.arg("visibility")
    if visibility is not None and visibility not in (*VISIBILITIES, "all"):
        raise Invalid(reason=f"visibility must be one of {', '.join(VISIBILITIES)} or all")
    if visibility is None and img.visibility == "community" \
            and img.owner != req.context.project_id:
        return False  # Glance lists others' community images only when asked
    hidden = req.arg("os_hidden")
    if (hidden or "false").lower() not in ("true", "false"):
        raise Invalid(reason="os_hidden must be true or false")
    if bool(img.extra.get("os_hidden")) != ((hidden or "false").lower() == "true"):
        return False
    view = image(img)
    tags = req.query.get("tag", [])
    if any(t not in view["tags"] for t in tags):
        return False
    for arg in ("name", "id", "status", "visibility", "owner", "disk_format",
                "container_format", "protected"):
        asked = req.arg(arg)
        if asked is None or (arg == "visibility" and asked == "all"):
            continue
        value = view[arg]
        value = str(value).lower() if isinstance(value, bool) else value
        if asked.startswith("in:"):
            if value not in asked[3:].split(","):
                return False
        elif asked != value:
            return False
    return True


def _sorted(images: list[Image], req: Request) -> list[Image]:
    """Glance's order: sort_key/sort_dir or sort=key:dir (one key), created_at
    newest first by default; id breaks ties, so paging is stable."""
    key, direction = req.arg("sort_key") or "created_at", req.arg("sort_dir") or "desc"
    sort = req.arg("sort")
    if sort:
        key, _, direction = sort.split(",")[0].partition(":")
        direction = direction or "desc"
    if key not in SORT_KEYS:
        raise Invalid(reason=f"sort key {key[:40]!r} must be one of {', '.join(SORT_KEYS)}")
    if direction not in ("asc", "desc"):
        raise Invalid(reason="sort direction must be asc or desc")
    views_ = {i.id: image(i) for i in images}

    def order(img: Image) -> tuple[bool, Any, str]:
        value = views_[img.id][key]
        return value is None, value if value is not None else 0, img.id
    return sorted(images, key=order, reverse=direction == "desc")


# -- shapes ---------------------------------------------------------------------------


def image(img: Image) -> dict[str, Any]:
    """An image in Glance v2's shape. ``checksum`` is the MD5 of uploaded
    data (Glance's); images vmops imported itself have the SHA-256 of their
    bytes only, as ``os_hash_algo``/``os_hash_value``. User properties are
    at the top level, as Glance puts them."""
    extra = img.extra
    disk_format = extra.get("disk_format", img.format or None)
    return {
        **user_properties(img), **views.image_properties(img),
        "id": img.id, "name": img.name or None, "status": STATUS[img.status],
        "visibility": img.visibility, "protected": bool(extra.get("protected", False)),
        "os_hidden": bool(extra.get("os_hidden", False)), "owner": img.owner or None,
        "checksum": extra.get("checksum"),
        "os_hash_algo": "sha256" if img.checksum else None,
        "os_hash_value": img.checksum or None,
        "size": img.file_size or None, "virtual_size": img.virtual_size or None,
        "disk_format": disk_format,
        "container_format": extra.get("container_format", "bare" if img.format else None),
        "min_ram": extra.get("min_ram", 0), "min_disk": extra.get("min_disk", 0),
        "tags": list(extra.get("tags", [])),
        "created_at": views.iso_time(img.created_at), "updated_at": views.iso_time(img.updated_at),
        "self": f"/v2/images/{img.id}", "file": f"/v2/images/{img.id}/file",
        "schema": "/v2/schemas/image",
    }


def schema() -> dict[str, Any]:
    """GET /v2/schemas/image: what an image is, for clients that read it
    (glanceclient); user properties are strings (``additionalProperties``)."""
    text, null_text = {"type": "string"}, {"type": ["null", "string"]}
    read_only = {"readOnly": True}
    props: dict[str, Any] = {
        "id": {**text, "pattern": _UUID.pattern},
        "name": {**null_text, "maxLength": MAX_TEXT},
        "status": {**text, **read_only, "enum": sorted(set(STATUS.values()))},
        "visibility": {**text, "enum": list(VISIBILITIES)},
        "protected": {"type": "boolean"}, "os_hidden": {"type": "boolean"},
        "checksum": {**null_text, **read_only, "maxLength": 32},
        "os_hash_algo": {**null_text, **read_only, "maxLength": 64},
        "os_hash_value": {**null_text, **read_only, "maxLength": 128},
        "owner": {**null_text, "maxLength": MAX_TEXT},
        "size": {"type": ["null", "integer"], **read_only},
        "virtual_size": {"type": ["null", "integer"], **read_only},
        "container_format": {**null_text, "enum": [None, *CONTAINER_FORMATS]},
        "disk_format": {**null_text, "enum": [None, *DISK_FORMATS]},
        "created_at": {**text, **read_only}, "updated_at": {**text, **read_only},
        "tags": {"type": "array", "items": {**text, "maxLength": MAX_TEXT}},
        "min_ram": {"type": "integer", "minimum": 0},
        "min_disk": {"type": "integer", "minimum": 0},
        "self": {**text, **read_only}, "file": {**text, **read_only},
        "schema": {**text, **read_only},
    }
    return {"name": "image", "properties": props, "additionalProperties": text,
            "links": [{"rel": "self", "href": "{self}"}, {"rel": "enclosure", "href": "{file}"},
                      {"rel": "describedby", "href": "{schema}"}]}


__all__ = ["add_routes", "can_see", "image", "owned_image", "visible_image",
           "visible_images"]
