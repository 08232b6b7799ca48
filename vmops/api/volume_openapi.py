"""The OpenAPI paths of the volume service (Cinder v3 subset) and Nova's
``os-volume_attachments`` (``volume_api``), with the clients' exact keys:
each object is closed, as in Tempest's response schemas. Merged into
``openapi.document()``.
"""

from __future__ import annotations

from typing import Any

from vmops.api.openapi import BOOL, INT, NULL_STR, STR, array, obj, ok, op, query
from vmops.api.volume_api import VOLUME_PREFIX, VOLUME_ROOT

P = "/v2.1"
LINKS = array(obj({"rel": STR, "href": STR}, {"type": STR}))
NULL_TIME = {"type": ["string", "null"]}
ACCEPTED = ok(None, "202", "Accepted")


def closed(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return obj(required, optional, extra=False)


def _path(name: str, text: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": STR, "description": text}


PROJECT = _path("project_id", "the project (the token's, unless admin)")
VOLUME = _path("volume_id", "the volume's id (or, in vmops, its name)")
SERVER = _path("id", "the server's id")

ATTACHMENT = closed({"id": STR, "attachment_id": STR, "volume_id": STR, "server_id": STR,
                     "host_name": NULL_STR, "device": NULL_STR, "attached_at": NULL_TIME})
# vmops' own: where a remote volume is (docs/volumes.md); in a request
# with its CHAP password, in a view with the libvirt secret's uuid only.
REMOTE_VIEW = closed({"protocol": STR, "url": STR, "chap_user": NULL_STR,
                      "secret_uuid": NULL_STR})
REMOTE_REQUEST = closed({"url": STR}, {"chap_user": STR, "chap_secret": STR})
VOLUME_VIEW = closed({
    "id": STR, "name": NULL_STR, "description": NULL_STR, "status": STR, "size": INT,
    "availability_zone": NULL_STR, "bootable": STR, "encrypted": BOOL, "multiattach": BOOL,
    "volume_type": NULL_STR, "snapshot_id": NULL_STR, "source_volid": NULL_STR,
    "consistencygroup_id": NULL_STR, "group_id": NULL_STR, "replication_status": NULL_STR,
    "migration_status": NULL_STR, "metadata": {"type": "object"}, "user_id": STR,
    "os-vol-tenant-attr:tenant_id": STR, "created_at": STR, "updated_at": NULL_TIME,
    "attachments": array(ATTACHMENT), "links": LINKS, "provider_id": NULL_STR,
    "service_uuid": NULL_STR, "shared_targets": BOOL,
}, {"volume_image_metadata": {"type": "object"}, "vmops:format": STR, "vmops:path": STR,
    "vmops:fault": NULL_STR, "vmops:remote": REMOTE_VIEW})
# Cinder's create reply: the view without the extended attributes.
VOLUME_CREATED = closed(
    {k: v for k, v in VOLUME_VIEW["properties"].items()
     if k in VOLUME_VIEW["required"] and k != "os-vol-tenant-attr:tenant_id"},
    {"vmops:format": STR, "vmops:path": STR, "vmops:fault": NULL_STR,
     "vmops:remote": REMOTE_VIEW})
VOLUME_BRIEF = closed({"id": STR, "name": NULL_STR, "links": LINKS})
VERSION = closed({"id": STR, "status": STR, "version": STR, "min_version": STR,
                  "updated": STR, "links": LINKS,
                  "media-types": array(obj({"base": STR, "type": STR}))})
CREATE = closed({"volume": closed({"size": INT}, {
    "name": NULL_STR, "description": NULL_STR, "display_name": NULL_STR,
    "display_description": NULL_STR, "imageRef": NULL_STR, "volume_type": NULL_STR,
    "availability_zone": NULL_STR, "metadata": {"type": ["object", "null"]},
    "multiattach": {"type": ["boolean", "null"]}, "snapshot_id": NULL_STR,
    "source_volid": NULL_STR, "backup_id": NULL_STR, "consistencygroup_id": NULL_STR,
    "group_id": NULL_STR, "scheduler_hints": {"type": ["object", "null"]},
    "vmops:format": {"enum": ["qcow2", "raw"]},
    "vmops:remote": REMOTE_REQUEST})})  # then no size: the target's
UPDATE = closed({"volume": closed({}, {"name": NULL_STR, "description": NULL_STR,
                                       "display_name": NULL_STR,
                                       "display_description": NULL_STR})})
EXTEND = closed({"os-extend": closed({"new_size": INT},
                                     {"vmops:attached": {"type": "boolean"}})})
NOVA_ATTACHMENT = closed({"id": STR, "volumeId": STR, "serverId": STR, "device": STR})
LIST_FILTERS = [query("name", "only volumes of this name"),
                query("status", "only volumes in this status (available, in-use, ...)"),
                query("limit", "at most this many", {"type": "integer", "minimum": 0}),
                query("marker", "the volumes after this id")]


def _volume_paths(base: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    volumes = closed({"volumes": array(VOLUME_VIEW)}, {"volumes_links": LINKS})
    one = closed({"volume": VOLUME_VIEW})
    return {
        base: {
            "get": op("Cinder: list volumes (the caller's project; all for an admin)",
                      ok(closed({"volumes": array(VOLUME_BRIEF)}, {"volumes_links": LINKS})),
                      params=params + LIST_FILTERS),
            "post": op("Cinder: create a volume, blank or a copy of an image (creating, "
                       "then available or error)",
                       ok(closed({"volume": VOLUME_CREATED}), "202", "Accepted"), body=CREATE,
                       params=params),
        },
        f"{base}/detail": {"get": op("Cinder: list volumes in detail", ok(volumes),
                                     params=params + LIST_FILTERS)},
        f"{base}/{{volume_id}}": {
            "get": op("Cinder: show a volume", ok(one), params=params + [VOLUME]),
            "put": op("Cinder: update a volume's name or description", ok(one),
                      body=UPDATE, params=params + [VOLUME]),
            "delete": op("Cinder: delete a volume that is not attached", ACCEPTED,
                         params=params + [VOLUME]),
        },
        f"{base}/{{volume_id}}/action": {
            "post": op("Cinder: os-extend, grow an available volume (an attached one "
                       "at microversion 3.42, or with vmops:attached true)", ACCEPTED, body=EXTEND,
                       params=params + [VOLUME]),
        },
    }


TARGET = _path("target", "the project whose volume quotas")
# Each value an integer, or with ?usage=True {"limit", "in_use", "reserved"}.
QUOTA_SET = closed({"quota_set": obj({"volumes": {}, "gigabytes": {}})})
QUOTA_UPDATE = closed({"quota_set": closed({}, {"volumes": INT, "gigabytes": INT,
                                                "tenant_id": STR})})


def _quota_paths(base: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        base: {
            "get": op("Cinder: a project's volume quotas, volumes and gigabytes (the others "
                      "0: vmops has no snapshots, backups or groups)", ok(QUOTA_SET),
                      params=params + [query("usage", "True: each with what is in use")]),
            "put": op("Cinder: change a project's volumes or gigabytes quota (admins)",
                      ok(QUOTA_SET), body=QUOTA_UPDATE, params=params),
            "delete": op("Cinder: a project's volume quotas back to the defaults (admins)",
                         ok(None), params=params),
        },
        f"{base}/defaults": {"get": op("Cinder: the default volume quotas", ok(QUOTA_SET),
                                       params=params)},
    }


def paths() -> dict[str, Any]:
    attachments = f"{P}/servers/{{id}}/os-volume_attachments"
    one = closed({"volumeAttachment": NOVA_ATTACHMENT})
    return {
        VOLUME_ROOT: {"get": op("Cinder's version document (300 Multiple Choices)",
                                ok(closed({"versions": array(VERSION)}), "300",
                                   "Multiple Choices"))},
        VOLUME_PREFIX: {"get": op("the Cinder v3 version document",
                                  ok(closed({"versions": array(VERSION)})))},
        **_volume_paths(f"{VOLUME_PREFIX}/volumes", []),
        **_volume_paths(f"{VOLUME_PREFIX}/{{project_id}}/volumes", [PROJECT]),
        **_quota_paths(f"{VOLUME_PREFIX}/os-quota-sets/{{target}}", [TARGET]),
        **_quota_paths(f"{VOLUME_PREFIX}/{{project_id}}/os-quota-sets/{{target}}",
                       [PROJECT, TARGET]),
        attachments: {
            "get": op("Nova: a server's volume attachments",
                      ok(closed({"volumeAttachments": array(NOVA_ATTACHMENT)})),
                      params=[SERVER]),
            "post": op("Nova: attach a volume (hot-plugged into a running guest, and kept "
                       "in its definition)", ok(one),
                       body=closed({"volumeAttachment": closed({"volumeId": STR},
                                                               {"device": NULL_STR})}),
                       params=[SERVER]),
        },
        f"{attachments}/{{volume_id}}": {
            "get": op("Nova: one attachment (its id is the volume's)", ok(one),
                      params=[SERVER, VOLUME]),
            "delete": op("Nova: detach a volume (detaching until the guest lets go)",
                         ACCEPTED, params=[SERVER, VOLUME]),
        },
    }
