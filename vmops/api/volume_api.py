"""The volume service (a subset of Cinder v3) and the compute API's
``os-volume_attachments`` (Nova 2.1), both over :mod:`vmops.volumes`.

Cinder v3 at ``/volume/v3``: volumes list (and ``detail``), show, create,
delete and the ``os-extend`` action, with the project in the path as
Cinder's endpoints have it (``/volume/v3/{project_id}/volumes``) or without
(``/volume/v3/volumes``, as Cinder allows from 3.67). Microversions 3.0
to 3.42, negotiated as Cinder does (:func:`volume_microversion`): the one
behaviour of that range vmops serves beyond 3.0 is 3.42's extend of an
in-use volume. A caller sees its own project's volumes; an admin sees every one.
Cinder's answers for refusals: 400 for a volume in the wrong status or
attached (Cinder's InvalidVolume), 404 for another project's volume.

Nova 2.1's ``/servers/{id}/os-volume_attachments``: list, attach (200 with
the attachment), show and detach (202; the volume is ``detaching`` until
the guest lets go, then ``available``, or ``in-use`` again with a fault).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from typing import Any

from vmops.api import image_service, parse, scope, views
from vmops.api.server import (
    MICROVERSION_PATTERN,
    Context,
    Handler,
    Request,
    Response,
    Router,
    fault,
)
from vmops.api.volume_quota_api import VolumeQuotaApi
from vmops.compute.manager import Compute
from vmops.errors import (
    Conflict,
    Forbidden,
    InUse,
    Invalid,
    InvalidState,
    NotFound,
    VmopsError,
)
from vmops.store import Instance
from vmops.volumes.manager import Volumes
from vmops.volumes.records import Attachment, Volume, VolumeStatus

VOLUME_ROOT = "/volume"
VOLUME_PREFIX = "/volume/v3"
VOLUME_VERSION = "v3.0"
# The volume microversions served: 3.42 lets an in-use volume be extended,
# which OpenStackClient asks for (--os-volume-api-version 3.42).
MIN_VOLUME_MICROVERSION = (3, 0)
MAX_VOLUME_MICROVERSION = (3, 42)
EXTEND_IN_USE = (3, 42)
MAX_LIMIT = 1000
AVAILABILITY_ZONE = "nova"
VOLUME_TYPE = "__DEFAULT__"
# Fields of Cinder's create that vmops takes only empty (a client sends them as null).
_UNSUPPORTED_CREATE = ("snapshot_id", "source_volid", "backup_id", "consistencygroup_id",
                       "group_id", "scheduler_hints")


def add_routes(r: Router, volumes: Volumes) -> None:
    compute = volumes.compute
    api = VolumeApi(volumes, compute)
    r.add("GET", VOLUME_ROOT, volume_versions, public=True)
    r.add("GET", VOLUME_PREFIX, volume_current, public=True)
    for base in (f"{VOLUME_PREFIX}/volumes", f"{VOLUME_PREFIX}/{{project_id}}/volumes"):
        r.add("GET", base, _versioned(api.list_brief))
        r.add("POST", base, _versioned(api.create))
        r.add("GET", f"{base}/detail", _versioned(api.list_detail))
        r.add("GET", f"{base}/{{volume_id}}", _versioned(api.show))
        r.add("PUT", f"{base}/{{volume_id}}", _versioned(api.update))
        r.add("DELETE", f"{base}/{{volume_id}}", _versioned(api.delete))
        r.add("POST", f"{base}/{{volume_id}}/action", _versioned(api.action))
    quota_sets = VolumeQuotaApi(compute)
    for quota_set in (f"{VOLUME_PREFIX}/os-quota-sets/{{target}}",
                      f"{VOLUME_PREFIX}/{{project_id}}/os-quota-sets/{{target}}"):
        r.add("GET", quota_set, _versioned(quota_sets.show))
        r.add("GET", f"{quota_set}/defaults", _versioned(quota_sets.defaults))
        r.add("PUT", quota_set, _versioned(quota_sets.update))
        r.add("DELETE", quota_set, _versioned(quota_sets.delete))
    attachments = f"{views.API_PREFIX}/servers/{{id}}/os-volume_attachments"
    r.add("GET", attachments, api.list_attachments)
    r.add("POST", attachments, api.attach)
    r.add("GET", f"{attachments}/{{volume_id}}", api.show_attachment)
    r.add("DELETE", f"{attachments}/{{volume_id}}", api.detach)


# -- microversions -------------------------------------------------------------------
def _text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


class UnsupportedMicroversion(Exception):
    """A well-formed volume microversion outside the range served (406)."""


def volume_microversion(req: Request) -> tuple[int, int]:
    """The volume microversion of the request, as Cinder reads it: the
    ``volume`` entry of ``OpenStack-API-Version`` (3.0 without one;
    ``latest``: the highest served). Invalid (400) for a malformed one;
    UnsupportedMicroversion (406) for one outside 3.0 to 3.42."""
    value = None
    for part in req.headers.get("openstack-api-version", "").split(","):
        service, *version = part.split(None, 1) or [""]  # any whitespace, as Cinder
        if service.lower() == "volume":
            value = version[0].strip() if version else ""
    if value is None:
        return MIN_VOLUME_MICROVERSION
    if value.lower() == "latest":
        return MAX_VOLUME_MICROVERSION
    match = re.fullmatch(MICROVERSION_PATTERN, value)
    if match is None:
        raise Invalid(reason=f"Version {value[:20]!r} is not valid: use MAJOR.MINOR, "
                      "e.g. 3.0")
    wanted = (int(match.group(1)), int(match.group(2)))
    if not MIN_VOLUME_MICROVERSION <= wanted <= MAX_VOLUME_MICROVERSION:
        raise UnsupportedMicroversion(
            f"Version {value} is not supported by the API. Minimum is "
            f"{_text(MIN_VOLUME_MICROVERSION)} and maximum is "
            f"{_text(MAX_VOLUME_MICROVERSION)}.")
    return wanted


def _versioned(handler: Handler) -> Handler:
    """Answer with the microversion the request is served at (Cinder's
    ``OpenStack-API-Version: volume 3.x``), or 406 for one not served."""
    @functools.wraps(handler)
    def serve(req: Request) -> Response:
        try:
            version = volume_microversion(req)
        except UnsupportedMicroversion as exc:
            return fault(406, "computeFault", str(exc))
        resp = handler(req)
        resp.headers.update({"OpenStack-API-Version": f"volume {_text(version)}",
                             "Vary": "OpenStack-API-Version"})
        return resp
    return serve


# -- version documents -------------------------------------------------------------
def volume_version(base: str) -> dict[str, Any]:
    return {
        "id": VOLUME_VERSION, "status": "CURRENT",
        "version": _text(MAX_VOLUME_MICROVERSION),
        "min_version": _text(MIN_VOLUME_MICROVERSION),
        "updated": "2016-02-08T12:20:21Z",
        "links": [{"rel": "describedby", "type": "text/html",
                   "href": "https://docs.openstack.org/"},
                  {"rel": "self", "href": f"{base}{VOLUME_PREFIX}/"}],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.volume+json;version=3"}],
    }


def volume_versions(req: Request) -> Response:
    """Cinder answers its root with 300 Multiple Choices."""
    return Response(300, {"versions": [volume_version(req.base_url)]})


def volume_current(req: Request) -> Response:
    return Response(200, {"versions": [volume_version(req.base_url)]})


# -- views ---------------------------------------------------------------------------
def device_path(device: str) -> str:
    return f"/dev/{device}"


def attachment_view(att: Attachment) -> dict[str, Any]:
    """An attachment inside Cinder's volume view."""
    return {"id": att.volume_id, "attachment_id": att.id, "volume_id": att.volume_id,
            "server_id": att.instance_id, "host_name": None,
            "device": device_path(att.device), "attached_at": views.iso_time(att.created_at)}


def volume_view(vol: Volume, att: Attachment | None, base: str,
                extra: bool = False) -> dict[str, Any]:
    """A volume in Cinder v3's shape; vmops' own keys only for ``extra``."""
    href = f"{base}{VOLUME_PREFIX}/{vol.project_id or views.TENANT}/volumes/{vol.id}"
    view: dict[str, Any] = {
        "id": vol.id, "name": vol.name or None, "description": vol.description or None,
        "status": vol.status, "size": vol.size_gb, "availability_zone": AVAILABILITY_ZONE,
        "bootable": "true" if vol.bootable else "false", "encrypted": False,
        "multiattach": False, "volume_type": VOLUME_TYPE, "snapshot_id": None,
        "source_volid": None, "consistencygroup_id": None, "group_id": None,
        "replication_status": None, "migration_status": None, "metadata": {},
        "user_id": vol.user_id or views.TENANT,
        "os-vol-tenant-attr:tenant_id": vol.project_id or views.TENANT,
        "created_at": views.iso_time(vol.created_at),
        "updated_at": views.iso_time(vol.updated_at),
        "attachments": [attachment_view(att)] if att else [],
        "links": [{"rel": "self", "href": href},
                  {"rel": "bookmark", "href": href.replace(VOLUME_PREFIX, VOLUME_ROOT, 1)}],
        "provider_id": None, "service_uuid": None, "shared_targets": False,
    }
    if vol.image_id:
        view["volume_image_metadata"] = {"image_id": vol.image_id}
    if extra:
        view["vmops:format"] = vol.format
        view["vmops:path"] = vol.path
        view["vmops:fault"] = vol.fault or None
        if vol.remote:  # where it is; the CHAP secret only by its libvirt uuid
            view["vmops:remote"] = {"protocol": vol.protocol, "url": vol.path,
                                    "chap_user": vol.chap_user or None,
                                    "secret_uuid": vol.secret_uuid or None}
    return view


def nova_attachment(att: Attachment) -> dict[str, Any]:
    """Nova 2.1's volumeAttachment: its id is the volume's."""
    return {"id": att.volume_id, "volumeId": att.volume_id, "serverId": att.instance_id,
            "device": device_path(att.device)}


# -- handlers ------------------------------------------------------------------------
class VolumeApi:
    def __init__(self, volumes: Volumes, compute: Compute) -> None:
        self.volumes = volumes
        self.compute = compute

    # Cinder ------------------------------------------------------------------------
    def list_brief(self, req: Request) -> Response:
        page, links = self._page(req)
        return Response(200, _with_links({"volumes": [
            {"id": v.id, "name": v.name or None,
             "links": volume_view(v, None, req.base_url)["links"]} for v in page]}, links))

    def list_detail(self, req: Request) -> Response:
        page, links = self._page(req)
        return Response(200, _with_links({"volumes": [
            self._view(req, v) for v in page]}, links))

    def show(self, req: Request) -> Response:
        return Response(200, {"volume": self._view(req, self._volume(req))})

    def create(self, req: Request) -> Response:
        body = parse.section(req.json(), "volume")
        parse.no_unknown(body, {"size", "name", "description", "imageRef", "volume_type",
                                "availability_zone", "metadata", "multiattach",
                                "display_name", "display_description", "vmops:format",
                                "vmops:remote",
                                *_UNSUPPORTED_CREATE}, "volume")
        _refuse_unsupported(body)
        ctx = _scope_path(req)
        name = parse.field(body, "name", str) or parse.field(body, "display_name", str) or ""
        description = parse.field(body, "description", str) \
            or parse.field(body, "display_description", str) or ""
        remote = parse.field(body, "vmops:remote", dict)
        if remote is not None:
            return self._register_remote(req, ctx, body, remote, name, description)
        size = parse.field(body, "size", int, required=True)
        image_ref = parse.field(body, "imageRef", str)
        if image_ref:  # another project's private image is not there for this caller
            image_ref = image_service.visible_image(self.volumes.store, image_ref, ctx).id
        volume = self.volumes.create(
            name, size, image_ref=image_ref, fmt=parse.field(body, "vmops:format", str,
                                                             default="qcow2"),
            description=description,
            project_id=ctx.project_id or req.params.get("project_id", ""),
            user_id=ctx.user_id)
        return self._created(req, volume)

    def _created(self, req: Request, volume: Volume) -> Response:
        """The 202 of a create: the volume's view without the extended
        attributes Cinder adds to show and list (its create reply's schema
        refuses them)."""
        view = self._view(req, volume)
        for key in ("os-vol-tenant-attr:tenant_id", "volume_image_metadata"):
            view.pop(key, None)
        return Response(202, {"volume": view})

    def _register_remote(self, req: Request, ctx: Context, body: dict[str, Any],
                         remote: dict[str, Any], name: str, description: str) -> Response:
        """vmops' own ``vmops:remote``: an NBD export or iSCSI LUN, its size the
        target's (``{"url": ..., "chap_user": ..., "chap_secret": ...}``).
        Admins only: registering asks qemu-img, on the host, to connect to
        any address or UNIX socket named, and the volume could then be
        attached to a guest (Cinder's backends are the operator's too)."""
        if not ctx.is_admin:
            raise Forbidden(reason="vmops:remote (registering an NBD or iSCSI target) is "
                            "for admins only")
        for key in ("size", "imageRef", "vmops:format"):
            if body.get(key) is not None:
                raise Invalid(reason=f"{key} does not go with vmops:remote: a remote volume "
                              "is the target's raw bytes, of the target's size")
        parse.no_unknown(remote, {"url", "chap_user", "chap_secret"}, "vmops:remote")
        secret = parse.field(remote, "chap_secret", str)
        volume = self.volumes.register_remote(
            name, parse.field(remote, "url", str, required=True),
            chap_user=parse.field(remote, "chap_user", str) or "",
            chap_secret=secret.encode() if secret is not None else None,
            description=description,
            project_id=ctx.project_id or req.params.get("project_id", ""),
            user_id=ctx.user_id)
        return self._created(req, volume)

    def update(self, req: Request) -> Response:
        """Cinder's update: the name and the description."""
        body = parse.section(req.json(), "volume")
        parse.no_unknown(body, {"name", "description", "display_name", "display_description"},
                         "volume")
        changes: dict[str, str] = {}
        for key, alias in (("name", "display_name"), ("description", "display_description")):
            for name in (key, alias):
                if name in body:
                    value = parse.field(body, name, str)
                    changes[key] = value or ""
        volume = self.volumes.rename(self._volume(req).id, **changes)
        return Response(200, {"volume": self._view(req, volume)})

    def delete(self, req: Request) -> Response:
        volume = self._volume(req)
        with _as_cinder():
            self.volumes.delete(volume.id)
        return Response(202)

    def action(self, req: Request) -> Response:
        action, arg = parse.one_action(req.json())
        volume = self._volume(req)
        if action != "os-extend":
            raise Invalid(reason=f"unknown volume action {action!r}; vmops knows os-extend")
        if not isinstance(arg, dict):
            raise Invalid(reason='os-extend takes {"new_size": <GiB>}')
        parse.no_unknown(arg, {"new_size", "vmops:attached"}, "os-extend")
        new_size = parse.field(arg, "new_size", int, required=True)
        # Cinder extends an in-use volume from microversion 3.42; vmops' own
        # flag asks for it at any microversion (docs/volumes.md).
        attached = parse.field(arg, "vmops:attached", bool, default=False) \
            or volume_microversion(req) >= EXTEND_IN_USE
        with _as_cinder():
            self.volumes.extend(volume.id, new_size, attached=bool(attached))
        return Response(202)

    def _view(self, req: Request, volume: Volume) -> dict[str, Any]:
        return volume_view(volume, self.volumes.attachment_of(volume.id), req.base_url,
                           extra=req.headers.get("x-vmops-extra") == "1")

    def _volume(self, req: Request) -> Volume:
        ctx = _scope_path(req)
        return self.volumes.volume(req.params["volume_id"], _project_filter(ctx))

    def _page(self, req: Request) -> tuple[list[Volume], list[dict[str, str]]]:
        """Cinder's filters (name, status), then marker and limit; a next
        link while more remain."""
        ctx = _scope_path(req)
        found = self.volumes.volumes(_project_filter(ctx))
        for arg in ("name", "status"):
            wanted = req.arg(arg)
            if wanted is not None:
                found = [v for v in found if getattr(v, arg) == wanted]
        marker = req.arg("marker")
        if marker:
            ids = [v.id for v in found]
            if marker not in ids:
                raise Invalid(reason=f"marker {marker!r} not found")
            found = found[ids.index(marker) + 1:]
        text = req.arg("limit")
        limit = min(parse.count_arg(text, "limit"), MAX_LIMIT) if text else MAX_LIMIT
        page = found[:limit]
        links = []
        if len(found) > limit and page:
            links = [{"rel": "next", "href": f"{req.base_url}{req.path}?limit={limit}"
                                             f"&marker={page[-1].id}"}]
        return page, links

    # Nova --------------------------------------------------------------------------
    def list_attachments(self, req: Request) -> Response:
        inst = self._instance(req)
        return Response(200, {"volumeAttachments": [
            nova_attachment(a) for a in self.volumes.attached_to(inst.id)]})

    def show_attachment(self, req: Request) -> Response:
        inst = self._instance(req)
        return Response(200, {"volumeAttachment": nova_attachment(
            self._attachment(inst, req.params["volume_id"]))})

    def attach(self, req: Request) -> Response:
        inst = self._unlocked(req)
        body = parse.section(req.json(), "volumeAttachment")
        parse.no_unknown(body, {"volumeId", "device"}, "volumeAttachment")
        volume_id = parse.field(body, "volumeId", str, required=True)
        device = parse.field(body, "device", str)
        volume = self.volumes.volume(volume_id, _project_filter(req.context))
        if volume.status != VolumeStatus.AVAILABLE:  # Nova: 400 InvalidVolume
            raise Invalid(reason=f"volume {volume.id} is {volume.status}; only an available "
                          "volume can be attached")
        try:
            attachment = self.volumes.attach(volume.id, inst.id, device)
        except InUse as exc:
            raise _bad_request(exc) from None
        except Conflict as exc:
            if type(exc) is not Conflict:
                raise  # the server's state or another task on it: Nova's 409
            raise _bad_request(exc) from None  # the device: Nova's 400
        return Response(200, {"volumeAttachment": nova_attachment(attachment)})

    def detach(self, req: Request) -> Response:
        inst = self._unlocked(req)
        attachment = self._attachment(inst, req.params["volume_id"])
        self.volumes.detach(attachment.volume_id, inst.id)
        return Response(202)

    def _instance(self, req: Request) -> Instance:
        return scope.instance(self.compute.store, req)

    def _unlocked(self, req: Request) -> Instance:
        """Nova's InstanceIsLocked (409): a locked server's volumes are
        changed by admins only, as its other devices."""
        inst = self._instance(req)
        if inst.locked_by and not req.context.is_admin:
            raise Conflict(reason=f"Instance {inst.id} is locked")
        return inst

    def _attachment(self, inst: Instance, volume_id: str) -> Attachment:
        for attachment in self.volumes.attached_to(inst.id):
            if attachment.volume_id == volume_id:
                return attachment
        raise NotFound(f"volume {volume_id} is not attached to server {inst.id}",
                       what=volume_id)


def _project_filter(ctx: Context) -> str | None:
    """The project whose volumes the caller sees; None: all (admin)."""
    return None if ctx.is_admin else ctx.project_id


def _scope_path(req: Request) -> Context:
    """The caller, refused (403) when the path names another project."""
    ctx = req.context
    asked = req.params.get("project_id")
    if asked and not ctx.is_admin and asked != ctx.project_id:
        raise Forbidden(reason=f"the path names project {asked}, not the project of the "
                        "token")
    return ctx


def _refuse_unsupported(body: dict[str, Any]) -> None:
    for name in _UNSUPPORTED_CREATE:
        if body.get(name) not in (None, "", {}):
            raise Invalid(reason=f"vmops does not support {name} in a volume create")
    if body.get("volume_type") not in (None, "", VOLUME_TYPE):
        raise Invalid(reason=f"volume_type {body['volume_type']!r}: vmops has one, "
                      f"{VOLUME_TYPE!r}")
    if body.get("availability_zone") not in (None, "", AVAILABILITY_ZONE):
        raise Invalid(reason=f"availability_zone {body['availability_zone']!r}: vmops has "
                      f"one, {AVAILABILITY_ZONE!r}")
    if body.get("multiattach") not in (None, False):
        raise Invalid(reason="vmops volumes attach to one server at a time (no multiattach)")
    if body.get("metadata") not in (None, {}):
        raise Invalid(reason="vmops does not keep volume metadata")


def _bad_request(exc: VmopsError) -> Invalid:
    """The same refusal, answered 400 as Cinder and Nova do."""
    text = str(exc.fields.get("reason") or exc.message)
    return Invalid(text, reason=text)


def _with_links(body: dict[str, Any], links: list[dict[str, str]]) -> dict[str, Any]:
    if links:
        body["volumes_links"] = links
    return body


@contextlib.contextmanager
def _as_cinder() -> Iterator[None]:
    """Cinder answers 400 (InvalidVolume) where vmops' records say 409: a
    volume attached, or in a status that does not allow the call."""
    try:
        yield
    except (InUse, InvalidState) as exc:
        raise _bad_request(exc) from None


