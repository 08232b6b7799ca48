"""The OpenAPI 3.1 document for everything vmops serves.

Built here, served at ``/openapi.json`` and kept as ``docs/openapi.json``
(``python -m vmops.api.openapi > docs/openapi.json``; a unit test checks the
file is current). The unit tests validate every answer they get against it,
and a fuzz test (schemathesis) sends it generated requests.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from vmops.api import discovery
from vmops.api.server import MAX_BODY_BYTES, MAX_MICROVERSION, Request, Response, version_text
from vmops.compute import states

P = discovery.COMPUTE_PREFIX
IMG = discovery.IMAGE_PREFIX


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: dict[str, Any], optional: dict[str, Any] | None = None,
        extra: bool = True) -> dict[str, Any]:
    """An object schema: ``required`` and ``optional`` properties."""
    schema: dict[str, Any] = {"type": "object", "properties": {**required, **(optional or {})},
                              "required": sorted(required)}
    if not extra:
        schema["additionalProperties"] = False
    return schema


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


STR = {"type": "string"}
INT = {"type": "integer"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}
ANY_OBJ = {"type": "object"}
NULL_STR = {"type": ["string", "null"]}
NULL_INT = {"type": ["integer", "null"]}
TIME = {"type": ["string", "null"], "format": "date-time"}
LINKS = array(obj({"rel": STR, "href": STR}))
IMAGE_LINKS = array(obj({"rel": STR, "href": STR}, {"type": STR}))
STR_MAP = {"type": "object", "additionalProperties": STR}


def _schemas() -> dict[str, Any]:
    return {
        "Fault": {"type": "object", "minProperties": 1, "maxProperties": 1,
                  "additionalProperties": obj({"code": INT, "message": STR})},
        "ComputeVersion": obj({"id": STR, "status": STR, "version": STR, "min_version": STR,
                               "updated": STR, "links": LINKS}),
        "ServerBrief": obj({"id": STR, "name": STR, "links": LINKS}),
        "ServerCreated": obj({"id": STR, "links": LINKS, "OS-DCF:diskConfig": STR,
                              "security_groups": array(obj({"name": STR}))},
                             {"adminPass": STR}, extra=False),
        "Server": _server_schema(),
        "SecurityGroup": obj({"id": STR, "name": STR, "description": STR,
                              "project_id": STR, "tenant_id": STR, "stateful": BOOL,
                              "security_group_rules": array(ref("SecurityGroupRule")),
                              "tags": array(STR), "revision_number": INT,
                              "created_at": TIME, "updated_at": TIME}),
        "SecurityGroupRule": obj({
            "id": STR, "security_group_id": STR, "direction": {"enum": ["ingress", "egress"]},
            "ethertype": {"enum": ["IPv4"]}, "protocol": NULL_STR,
            "port_range_min": NULL_INT, "port_range_max": NULL_INT,
            "remote_ip_prefix": NULL_STR, "remote_group_id": NULL_STR,
            "remote_address_group_id": NULL_STR, "description": STR, "project_id": STR,
            "tenant_id": STR, "revision_number": INT, "tags": array(STR),
            "created_at": TIME, "updated_at": TIME}),
        "PortForward": obj({"id": STR, "server_id": STR, "server_name": STR,
                            "protocol": {"enum": ["tcp", "udp"]}, "host_address": STR,
                            "host_port": INT, "guest_address": NULL_STR, "guest_port": INT,
                            "created_at": TIME}),
        "ServerCreate": _server_create_schema(),
        "FlavorBrief": obj({"id": STR, "name": STR, "links": LINKS}),
        "Flavor": obj({"id": STR, "name": STR, "ram": INT, "vcpus": INT, "disk": INT,
                       "OS-FLV-EXT-DATA:ephemeral": INT, "swap": {"type": ["string", "integer"]},
                       "rxtx_factor": NUM, "os-flavor-access:is_public": BOOL,
                       "OS-FLV-DISABLED:disabled": BOOL, "links": LINKS},
                      {"vmops:builtin": BOOL}, extra=False),
        "ImageBrief": obj({"id": STR, "name": STR, "links": IMAGE_LINKS}, extra=False),
        "Image": obj({"id": STR, "name": STR, "status": {"enum": ["SAVING", "ACTIVE", "ERROR"]},
                      "progress": INT, "minDisk": INT, "minRam": INT, "created": TIME,
                      "updated": TIME, "metadata": ANY_OBJ, "links": IMAGE_LINKS,
                      "OS-EXT-IMG-SIZE:size": INT},
                     {"server": obj({"id": STR, "links": LINKS}),
                      "vmops:format": STR,
                      "vmops:virtual_size": INT, "vmops:checksum": STR, "vmops:source": STR,
                      "vmops:bytes_done": INT, "vmops:bytes_total": NULL_INT,
                      "vmops:fault": STR, "vmops:used_by": array(STR),
                      "vmops:login_user": NULL_STR}, extra=False),
        "GlanceImage": {**obj({
            "id": STR, "name": NULL_STR,
            "status": {"enum": ["queued", "saving", "active", "killed"]},
            "visibility": {"enum": ["public", "community", "shared", "private"]},
            "protected": BOOL, "os_hidden": BOOL, "checksum": NULL_STR,
            "os_hash_algo": NULL_STR, "os_hash_value": NULL_STR, "size": NULL_INT,
            "virtual_size": NULL_INT, "disk_format": NULL_STR, "container_format": NULL_STR,
            "min_ram": INT, "min_disk": INT, "tags": array(STR), "created_at": TIME,
            "updated_at": TIME, "owner": NULL_STR, "self": STR, "file": STR, "schema": STR},
            {"os_admin_user": STR, "image_type": {"enum": ["snapshot"]},
             "instance_uuid": STR}),
            "additionalProperties": STR},  # user properties: strings, as Glance's
        "Keypair": obj({"name": STR, "public_key": STR, "fingerprint": STR},
                       {"type": STR, "created_at": NULL_STR, "user_id": STR, "id": INT,
                        "deleted": BOOL, "updated_at": TIME, "deleted_at": TIME,
                        "private_key": STR, "vmops:created_at": TIME}, extra=False),
        "Check": obj({"name": STR, "ok": BOOL, "required": BOOL, "detail": STR,
                      "advice": STR}),
    }


def _server_schema() -> dict[str, Any]:
    """A server at any microversion served: what every one has is required,
    what a microversion, admin rights or X-Vmops-Extra add is optional."""
    status = {"enum": list(states.Status)}
    flavor = {"oneOf": [obj({"id": STR, "links": LINKS}, extra=False),
                        obj({"vcpus": INT, "ram": INT, "disk": INT, "ephemeral": INT,
                             "swap": INT, "original_name": STR},
                            {"extra_specs": STR_MAP}, extra=False)]}
    return obj({
        "id": STR, "name": STR, "links": LINKS, "status": status, "tenant_id": STR,
        "user_id": STR, "metadata": STR_MAP, "hostId": STR,
        # "" for a volume-backed server, as Nova's.
        "image": {"oneOf": [obj({"id": STR, "links": LINKS}), {"const": ""}]},
        "flavor": flavor,
        "created": TIME, "updated": TIME, "addresses": ANY_OBJ, "accessIPv4": STR,
        "accessIPv6": STR, "OS-DCF:diskConfig": STR,
    }, {
        "progress": INT,
        "fault": obj({"code": INT, "message": STR, "created": TIME}),
        "key_name": NULL_STR, "security_groups": array(obj({"name": STR})),
        "OS-SRV-USG:launched_at": NULL_STR, "OS-SRV-USG:terminated_at": NULL_STR,
        "OS-EXT-AZ:availability_zone": STR,
        "OS-EXT-STS:vm_state": STR, "OS-EXT-STS:task_state": NULL_STR,
        "OS-EXT-STS:power_state": INT, "config_drive": STR,
        "os-extended-volumes:volumes_attached": array(obj(
            {"id": STR}, {"delete_on_termination": BOOL}, extra=False)),
        "OS-EXT-SRV-ATTR:host": STR, "OS-EXT-SRV-ATTR:hypervisor_hostname": STR,
        "OS-EXT-SRV-ATTR:instance_name": STR,
        "OS-EXT-SRV-ATTR:reservation_id": NULL_STR, "OS-EXT-SRV-ATTR:launch_index": INT,
        "OS-EXT-SRV-ATTR:kernel_id": STR, "OS-EXT-SRV-ATTR:ramdisk_id": STR,
        "OS-EXT-SRV-ATTR:hostname": STR, "OS-EXT-SRV-ATTR:root_device_name": STR,
        "OS-EXT-SRV-ATTR:user_data": NULL_STR,
        "locked": BOOL, "host_status": STR, "description": NULL_STR, "tags": array(STR),
        "adminPass": STR,
        "vmops:flavor": obj({"id": NULL_STR, "name": NULL_STR, "ram": NULL_INT,
                             "vcpus": NULL_INT, "disk": NULL_INT, "ephemeral": NULL_INT}),
        "vmops:power_state": STR, "vmops:image_name": STR, "vmops:fault": STR,
        "vmops:disks": array(obj({"role": STR, "path": STR, "format": STR, "target": STR,
                                  "device": STR})),
        "vmops:macs": array(STR),
        "vmops:nics": array(obj({"mac": STR, "mode": {"enum": ["bridge", "user"]},
                                 "network": STR, "ip": NULL_STR, "tap": NULL_STR})),
        "vmops:live": obj({"state": STR, "max_memory_kib": INT, "memory_kib": INT,
                           "vcpus": INT, "cpu_time_ns": INT}),
        # The last verb's steps (vmops/compute/timings.py), in show only.
        "vmops:timings": obj(
            {"verb": STR, "result": {"enum": ["ok", "error"]}, "total_ms": NUM,
             "steps": array(obj({"step": STR, "ms": NUM}, {"failed": BOOL}, extra=False))},
            {"failed_step": STR}, extra=False),
    }, extra=False)


def _server_create_schema() -> dict[str, Any]:
    count = {"type": ["integer", "string"]}
    return obj({"server": obj({"name": STR, "flavorRef": STR}, {
        "imageRef": STR,  # none (or "") when the root disk is a volume
        "config_drive": BOOL, "user_data": STR, "key_name": STR, "metadata": STR_MAP,
        "personality": array(obj({"path": STR, "contents": STR}, extra=False)),
        "adminPass": STR, "min_count": count, "max_count": count,
        "return_reservation_id": BOOL, "accessIPv4": STR, "accessIPv6": STR,
        "description": NULL_STR, "tags": array(STR),
        "networks": {"oneOf": [{"enum": ["auto", "none"]}, array(obj(
            {}, {"uuid": {"enum": ["vmops", "user"]}, "fixed_ip": STR, "tag": STR},
            extra=False))]},
        "availability_zone": STR,
        "security_groups": array(obj({"name": STR})),
        "OS-DCF:diskConfig": {"enum": ["AUTO", "MANUAL"]},
        # The root disk's mapping: an image onto a local disk or a new
        # volume, or an existing volume (vmops/api/block_devices.py).
        "block_device_mapping_v2": {**array(obj(
            {"uuid": STR, "source_type": {"enum": ["image", "volume"]},
             "boot_index": {"enum": [0, "0"]}},
            {"destination_type": {"enum": ["local", "volume"]},
             "volume_size": {"type": ["integer", "string", "null"]},
             "delete_on_termination": {"type": ["boolean", "string", "null"]},
             "device_type": {"enum": ["disk"]}, "device_name": STR, "disk_bus": STR,
             "tag": STR}, extra=False)), "minItems": 1, "maxItems": 1},
        "vmops:mac": STR,
        # false: define the domain only, the server ends SHUTOFF (not booted)
        "vmops:start": BOOL}, extra=False)}, {
        "os:scheduler_hints": ANY_OBJ, "OS-SCH-HNT:scheduler_hints": ANY_OBJ}, extra=False)


# -- operations ------------------------------------------------------------------
def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def ok(schema: dict[str, Any] | None, status: str = "200", text: str = "OK") -> dict[str, Any]:
    answer: dict[str, Any] = {"description": text}
    if schema is not None:
        answer.update(json_body(schema))
    return {status: answer}


def op(summary: str, answers: dict[str, Any], body: dict[str, Any] | None = None,
       params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One operation; every error answer is a Nova fault body."""
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {**answers, "default": {"description": "a fault: "
                                              "{name: {code, message}}",
                                              **json_body(ref("Fault"))}},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, **json_body(body)}
    if params:
        operation["parameters"] = params
    return operation


def path_id(what: str) -> dict[str, Any]:
    return {"name": "id", "in": "path", "required": True, "schema": STR,
            "description": f"the {what}'s id or name"}


def query(name: str, text: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema or STR,
            "description": text}


PAGING = [query("limit", "at most this many", {"type": "integer", "minimum": 0}),
          query("marker", "the items after this id")]
SERVER_FILTERS = [query("name", "a regular expression the name must match"),
                  query("status", "ACTIVE, SHUTOFF, ..."), query("image", "an image id"),
                  query("flavor", "a flavor id"),
                  query("reservation_id", "made by this request (create's reservation id)"),
                  query("ip", "a regular expression one of its addresses must match"),
                  query("changes-since", "changed at or after this ISO 8601 time"),
                  *(query(name, f"2.26: {text} (a comma-separated list)")
                    for name, text in (("tags", "has all these tags"),
                                       ("tags-any", "has one of these tags"),
                                       ("not-tags", "lacks one of these tags"),
                                       ("not-tags-any", "has none of these tags"))),
                  query("all_tenants", "admin: every project's servers"),
                  query("project_id", "admin, with all_tenants: this project's only"),
                  *PAGING]
FLAVOR_FILTERS = [query("minRam", "at least this many MiB of RAM", {"type": "integer"}),
                  query("minDisk", "a root disk of at least this many GiB",
                        {"type": "integer"}),
                  query("is_public", "admin: true, false or none (all)"),
                  query("sort_key", "flavorid (default), name, memory_mb, vcpus, root_gb, "
                        "ephemeral_gb, created_at"),
                  query("sort_dir", "asc (default) or desc", {"enum": ["asc", "desc"]}),
                  *PAGING]


def _server_paths() -> dict[str, Any]:
    servers = obj({"servers": array(ref("ServerBrief"))})
    action = {"oneOf": [
        obj({"reboot": obj({"type": {"enum": ["SOFT", "HARD"]}}, extra=False)}, extra=False),
        *(obj({name: {"type": ["object", "null"], "maxProperties": 0}}, extra=False)
          for name in ("pause", "unpause", "suspend", "resume", "os-start", "lock", "unlock",
                       "restore", "forceDelete",
                       "vmops:rebuildConfigDrive", "confirmResize", "revertResize",
                       "unrescue", "trigger_crash_dump")),
        obj({"resize": obj({"flavorRef": {"type": ["string", "integer"]}},
                           {"OS-DCF:diskConfig": {"enum": ["AUTO", "MANUAL"]}}, extra=False)},
            extra=False),
        obj({"rescue": {"type": ["object", "null"], "additionalProperties": False,
                        "properties": {"adminPass": STR, "rescue_image_ref": STR}}},
            extra=False),
        *(obj({name: obj({"name": STR}, extra=False)}, extra=False)
          for name in ("addSecurityGroup", "removeSecurityGroup")),
        obj({"os-stop": {"type": ["object", "null"], "additionalProperties": False,
                         "properties": {"vmops:timeout": NUM, "vmops:hard": BOOL}}},
            extra=False),
        obj({"createImage": obj({"name": STR}, {"metadata": STR_MAP}, extra=False)},
            extra=False),
        obj({"createBackup": obj({"name": STR, "backup_type": STR,
                                  "rotation": {"type": ["integer", "string"]}},
                                 {"metadata": STR_MAP}, extra=False)}, extra=False),
        obj({"os-resetState": obj({"state": {"enum": ["active", "error"]}}, extra=False)},
            extra=False),
        obj({"injectNetworkInfo": {"type": ["object", "null"], "maxProperties": 0}},
            extra=False),
        obj({"rebuild": obj({"imageRef": STR}, {
            "preserve_ephemeral": {"enum": [False]}, "name": STR, "metadata": STR_MAP,
            "adminPass": STR, "accessIPv4": STR, "accessIPv6": STR, "description": NULL_STR,
            "OS-DCF:diskConfig": {"enum": ["AUTO", "MANUAL"]},
            "personality": array(obj({"path": STR, "contents": STR}, extra=False))},
            extra=False)}, extra=False),
        obj({"os-getSerialConsole": obj({"type": {"enum": ["serial"]}}, extra=False)},
            extra=False),
        obj({"os-getConsoleOutput": {"type": ["object", "null"], "additionalProperties": False,
                                     "properties": {"length": {"type": ["integer", "string",
                                                                        "null"]}}}},
            extra=False),
    ]}
    tags = obj({"tags": array(STR)}, extra=False)
    tag_path = [path_id("server"), {"name": "tag", "in": "path", "required": True,
                                    "schema": STR, "description": "a tag"}]
    return {
        f"{P}/servers": {
            "get": op("List servers (id, name, links): the caller's project's; an admin's "
                      "with all_tenants=1, everyone's (or project_id's)", ok(servers),
                      params=SERVER_FILTERS),
            "post": op("Create a server (max_count: several, named NAME-1, NAME-2, ...); it "
                       "builds in the background",
                       {**ok({"oneOf": [obj({"server": ref("ServerCreated")}, extra=False),
                                        obj({"reservation_id": STR}, extra=False)]},
                             "202", "Accepted"),
                        **ok(obj({"server": ref("Server")}, extra=False), "200",
                             "vmops:wait: every server made has finished building (the "
                             "first one's view, with adminPass)")},
                       body=ref("ServerCreate"),
                       params=[query("vmops:wait", "vmops: answer 200 with the server once "
                                     "every server made has finished building (ACTIVE, "
                                     "SHUTOFF or ERROR), waiting at most this many seconds "
                                     "(202 if one has not); not with return_reservation_id",
                                     {"type": "number", "minimum": 0, "maximum": 3600})]),
        },
        f"{P}/servers/{{id}}/tags": {
            "parameters": [path_id("server")],
            "get": op("The server's tags (2.26)", ok(tags)),
            "put": op("Replace the server's tags (2.26)", ok(tags), body=tags),
            "delete": op("Remove every tag (2.26)", ok(None, "204", "Removed"))},
        f"{P}/servers/{{id}}/tags/{{tag}}": {
            "parameters": tag_path,
            "get": op("Whether the server has the tag (2.26): 204, else 404",
                      ok(None, "204", "It has")),
            "put": op("Add a tag (2.26)", {**ok(None, "201", "Added"),
                                           **ok(None, "204", "It had it")}),
            "delete": op("Remove a tag (2.26)", ok(None, "204", "Removed"))},
        f"{P}/servers/detail": {
            "get": op("List servers with details",
                      ok(obj({"servers": array(ref("Server"))})), params=SERVER_FILTERS)},
        f"{P}/servers/{{id}}": {
            "parameters": [path_id("server")],
            "get": op("Show a server", ok(obj({"server": ref("Server")}))),
            "put": op("Rename a server, set its access addresses or (2.19) description",
                      ok(obj({"server": ref("Server")})),
                      body=obj({"server": obj({}, {
                          "name": STR, "accessIPv4": STR, "accessIPv6": STR,
                          "description": NULL_STR,
                          "OS-DCF:diskConfig": {"enum": ["AUTO", "MANUAL"]}}, extra=False)},
                          extra=False)),
            "delete": op("Destroy a server and everything it has (while it builds: the "
                         "build stops, then it goes)", ok(None, "204", "Destroyed")),
        },
        f"{P}/servers/{{id}}/action": {
            "parameters": [path_id("server")],
            "post": op("Run an action: reboot, os-stop, os-start, pause, unpause, suspend, "
                       "resume, vmops:rebuildConfigDrive (stopped servers only), rebuild "
                       "(a new root disk from imageRef; same id, MACs, addresses, flavor), "
                       "createImage (a snapshot of the root disk: the new image's URL in "
                       "Location; from 2.45 its id in the body) (202, continues in the "
                       "background), os-getConsoleOutput (200); resize (to flavorRef: "
                       "VERIFY_RESIZE), then confirmResize (204) or revertResize; rescue "
                       "(200: the rescue adminPass; RESCUE), unrescue; trigger_crash_dump "
                       "(2.17: an NMI to the guest); os-getSerialConsole (2.1 to 2.5: 200, "
                       "the serial console's URL; 409 unless the guest runs)",
                       {**ok(obj({}, {"output": STR, "server": ref("Server"),
                                      "adminPass": STR, "image_id": STR,
                                      "console": obj({"type": STR, "url": STR},
                                                     extra=False)})),
                        **ok(None, "204", "No content (confirmResize)"),
                        "202": {"description": "Accepted (rebuild: the server; createImage "
                                "from 2.45: the image's id; the others: no body)",
                                "x-body-optional": True,
                                **json_body(obj({}, {"server": ref("Server"),
                                                     "image_id": STR}, extra=False))}},
                       body=action,
                       params=[query("vmops:wait", "vmops: answer 200 with the server when "
                                     "the action has ended, waiting at most this many "
                                     "seconds (202 if it has not)",
                                     {"type": "number", "minimum": 0, "maximum": 3600})]),
        },
        f"{P}/servers/{{id}}/remote-consoles": {
            "parameters": [path_id("server")],
            "post": op("A URL to the server's serial console (2.6): a WebSocket with a "
                       "single-use token that expires; only protocol and type serial (other "
                       "known ones: 400); 409 unless the guest runs",
                       ok(obj({"remote_console": obj(
                           {"protocol": STR, "type": STR, "url": STR}, extra=False)},
                           extra=False)),
                       body=obj({"remote_console": obj(
                           {"protocol": {"enum": ["vnc", "spice", "rdp", "serial", "mks"]},
                            "type": {"enum": ["novnc", "xvpvnc", "rdp-html5", "spice-html5",
                                              "serial", "webmks"]}}, extra=False)},
                           extra=False))},
        "/serial-console": {
            "get": {**op("The serial console URL's WebSocket (RFC 6455): binary frames both "
                         "ways, the guest's output and what is typed to it. No X-Auth-Token: "
                         "the URL's token, single-use, is the credential (401 if unknown, "
                         "used or expired); 409 once the guest no longer runs",
                         {"101": {"description": "Switching Protocols: the WebSocket is open"},
                          "426": {"description": "Upgrade Required: WebSocket version 13 "
                                  "only", **json_body(ref("Fault"))}},
                         params=[{**query("token", "the console URL's token"),
                                  "required": True}]),
                    "security": []}},
        f"{P}/servers/{{id}}/console-log": {
            "parameters": [path_id("server")],
            "get": op("vmops: the raw console log", {"200": {
                "description": "the log's bytes",
                "content": {"application/octet-stream": {"schema": STR}}}},
                params=[query("tail", "only the last N lines", {"type": "integer",
                                                                "minimum": 0}),
                        query("follow", "1: keep sending new output", {"enum": ["0", "1"]})]),
        },
    }


def _catalog_paths() -> dict[str, Any]:
    flavor_create = obj({"flavor": obj(
        {"name": STR, "ram": INT, "vcpus": INT, "disk": INT},
        {"OS-FLV-EXT-DATA:ephemeral": INT, "id": {"type": ["string", "integer"]},
         "swap": {"type": ["integer", "string"]}, "rxtx_factor": NUM,
         "os-flavor-access:is_public": {"type": ["boolean", "string"]}}, extra=False)},
        extra=False)
    image_import = obj({"image": obj({"name": STR, "source": STR},
                                     {"checksum": STR, "disk_format": STR, "login_user": STR},
                                     extra=False)},
                       extra=False)
    keypair_add = obj({"keypair": obj({"name": STR}, {"public_key": STR, "type": STR,
                                                      "user_id": STR},
                                      extra=False)}, extra=False)
    return {
        f"{P}/flavors": {
            "get": op("List flavors", ok(obj({"flavors": array(ref("FlavorBrief"))})),
                      params=FLAVOR_FILTERS),
            "post": op("Create a flavor", ok(obj({"flavor": ref("Flavor")})),
                       body=flavor_create)},
        f"{P}/flavors/detail": {"get": op("List flavors with details", ok(obj(
            {"flavors": array(ref("Flavor"))})), params=FLAVOR_FILTERS)},
        f"{P}/flavors/{{id}}": {
            "parameters": [path_id("flavor")],
            "get": op("Show a flavor", ok(obj({"flavor": ref("Flavor")}))),
            "delete": op("Delete an unused flavor", ok(None, "202", "Deleted"))},
        f"{P}/images": {
            "get": op("List images", ok(obj({"images": array(ref("ImageBrief"))})),
                      params=PAGING),
            "post": op("vmops: import an image from a file or URL; it imports in the "
                       "background", ok(obj({"image": ref("Image")}), "202", "Accepted"),
                       body=image_import)},
        f"{P}/images/detail": {"get": op("List images with details", ok(obj(
            {"images": array(ref("Image"))})), params=PAGING)},
        f"{P}/images/prune": {"post": op(
            "vmops: remove images unused for longer than older_than seconds",
            ok(obj({"removed": array(STR)})),
            body={"type": ["object", "null"], "additionalProperties": False,
                  "properties": {"older_than": {"type": "number", "minimum": 0}}})},
        f"{P}/images/{{id}}": {
            "parameters": [path_id("image")],
            "get": op("Show an image", ok(obj({"image": ref("Image")}))),
            "delete": op("Delete an unused image", ok(None, "204", "Deleted"))},
        f"{P}/os-keypairs": {
            "get": op("List keypairs", ok(obj({"keypairs": array(obj(
                {"keypair": ref("Keypair")}))}))),
            "post": op("Import a public key, or make a pair (no public_key: the private key "
                       "is answered once); 201 from 2.2",
                       {**ok(obj({"keypair": ref("Keypair")})),
                        **ok(obj({"keypair": ref("Keypair")}), "201", "Created")},
                       body=keypair_add)},
        f"{P}/os-keypairs/{{id}}": {
            "parameters": [{**path_id("keypair"), "description": "the keypair's name"}],
            "get": op("Show a keypair", ok(obj({"keypair": ref("Keypair")}))),
            "delete": op("Delete a keypair (204 from 2.2)",
                         {**ok(None, "202", "Deleted"), **ok(None, "204", "Deleted")})},
        f"{P}/os-vmops/doctor": {"get": op("vmops: the host checks",
                                           ok(obj({"checks": array(ref("Check"))})))},
    }


def _other_paths() -> dict[str, Any]:
    versions = obj({"versions": array(ref("ComputeVersion"))})
    image_versions = obj({"versions": array(obj({"id": STR, "status": STR, "links": LINKS}))})
    identity_version = obj({"id": STR, "status": STR, "links": LINKS})
    glance_list = obj({"images": array(ref("GlanceImage")), "first": STR, "schema": STR},
                      {"next": STR})
    glance_filters = [query(n, f"only images whose {n} is this (or in:a,b)")
                      for n in ("name", "id", "status", "visibility", "owner", "disk_format",
                                "container_format", "protected")]
    glance_filters += [query("os_hidden", "true: only hidden images (default false)"),
                       query("tag", "only images with this tag (repeatable)"),
                       query("sort_key", "name, status, container_format, disk_format, size, "
                             "id, created_at (default) or updated_at"),
                       query("sort_dir", "asc or desc (default)"),
                       query("sort", "key:dir, the other way to say both")]
    glance_create = {"type": "object", "additionalProperties": STR, "properties": {
        "id": STR, "name": NULL_STR, "visibility": STR, "protected": BOOL, "os_hidden": BOOL,
        "min_disk": INT, "min_ram": INT, "disk_format": NULL_STR,
        "container_format": NULL_STR, "tags": array(STR), "owner": NULL_STR}}
    patch = {"type": "array", "items": obj({"op": {"enum": ["add", "remove", "replace"]},
                                            "path": STR}, {"value": {}})}
    patch_body = {"required": True, "content": {
        kind: {"schema": patch} for kind in ("application/openstack-images-v2.1-json-patch",
                                             "application/openstack-images-v2.0-json-patch")}}
    binary = {"type": "string", "format": "binary"}
    image_id = [path_id("image")]
    tag_params = [path_id("image"), {"name": "tag", "in": "path", "required": True,
                                     "schema": STR, "description": "the tag"}]
    done = ok(None, "204", "Done")
    return {
        "/": {"get": op("Compute API versions", ok(versions))},
        P: {"get": op("The compute API version (min and max microversion)",
                      ok(obj({"version": ref("ComputeVersion")})))},
        discovery.LEGACY_PREFIX: {"get": op(
            "The v2.0 version document Nova lists (no v2.0 API is behind it)",
            ok(obj({"version": ref("ComputeVersion")})))},
        discovery.IMAGE_ROOT: {"get": op("Image API versions", ok(image_versions))},
        IMG: {"get": op("Image API versions", ok(image_versions))},
        f"{IMG}/images": {
            "get": op("Glance v2: list the images the caller may see", ok(glance_list),
                      params=[*glance_filters, *PAGING]),
            "post": op("Glance v2: create an image (queued; upload its data with PUT "
                       ".../file)", ok(ref("GlanceImage"), "201", "Created"),
                       body=glance_create)},
        f"{IMG}/images/{{id}}": {
            "parameters": image_id,
            "get": op("Glance v2: show an image", ok(ref("GlanceImage"))),
            "patch": {**op("Glance v2: update an image (JSON patch)", ok(ref("GlanceImage"))),
                      "requestBody": patch_body},
            "delete": op("Glance v2: delete an image (not protected, not in use)", done)},
        f"{IMG}/images/{{id}}/file": {
            "parameters": image_id,
            "put": {**op("Glance v2: upload the image's data (raw or qcow2 as its disk_format "
                         "says; Content-Length or chunked)", done),
                    "requestBody": {"required": True, "content": {
                        "application/octet-stream": {"schema": binary}}}},
            "get": op("Glance v2: download the image's data (204 while it has none)", {
                "200": {"description": "the data",
                        "content": {"application/octet-stream": {"schema": binary}}},
                **done})},
        f"{IMG}/images/{{id}}/tags/{{tag}}": {
            "parameters": tag_params,
            "put": op("Glance v2: add a tag", done),
            "delete": op("Glance v2: remove a tag", done)},
        f"{IMG}/schemas/image": {"get": op("Glance v2: the image schema", ok(ANY_OBJ))},
        f"{IMG}/schemas/images": {"get": op("Glance v2: the image list schema", ok(ANY_OBJ))},
        discovery.IDENTITY_ROOT: {"get": op("Identity version document only", ok(obj(
            {"versions": obj({"values": array(identity_version)})})))},
        discovery.IDENTITY_PREFIX: {"get": op("Identity version document only", ok(obj(
            {"version": identity_version})))},
        "/metrics": {"get": op("Prometheus metrics", {"200": {
            "description": "text exposition format 0.0.4",
            "content": {"text/plain": {"schema": STR}}}})},
        "/openapi.json": {"get": op("This document", ok(ANY_OBJ))},
    }


def _network_paths() -> dict[str, Any]:
    net = "/network/v2.0"
    group = obj({"security_group": ref("SecurityGroup")})
    rule = obj({"security_group_rule": ref("SecurityGroupRule")})
    forward = obj({"port_forward": ref("PortForward")})
    gone = ok(None, "204", "Deleted")
    return {
        f"{P}/servers/{{id}}/os-security-groups": {
            "parameters": [path_id("server")],
            "get": op("The server's security groups (Compute 2.1)", ok(obj(
                {"security_groups": array(obj({"id": STR, "name": STR, "description": STR,
                                                "tenant_id": STR, "rules": array(ANY_OBJ)}))}
            )))},
        "/network": {"get": op("Networking API versions", ok(obj({"versions": array(
            obj({"id": STR, "status": STR, "links": LINKS}))})))},
        f"{net}/security-groups": {
            "get": op("Neutron v2.0: list security groups", ok(obj(
                {"security_groups": array(ref("SecurityGroup"))})),
                params=[query("name", "only this name"), query("id", "only this id")]),
            "post": op("Neutron v2.0: create a security group (no rules)", ok(group, "201"),
                       body=obj({"security_group": obj({"name": STR}, {
                           "description": STR, "project_id": STR, "tenant_id": STR,
                           "stateful": BOOL}, extra=False)}))},
        f"{net}/security-groups/{{id}}": {
            "parameters": [path_id("security group")],
            "get": op("Neutron v2.0: show a security group", ok(group)),
            "put": op("Neutron v2.0: rename or describe a security group", ok(group),
                      body=obj({"security_group": obj({}, {"name": STR, "description": STR},
                                                      extra=False)})),
            "delete": op("Neutron v2.0: delete a security group no instance is in", gone)},
        f"{net}/security-group-rules": {
            "get": op("Neutron v2.0: list rules", ok(obj(
                {"security_group_rules": array(ref("SecurityGroupRule"))})),
                params=[query("security_group_id", "only this group's")]),
            "post": op("Neutron v2.0: add a rule (applied to running guests at once)",
                       ok(rule, "201"), body=obj({"security_group_rule": obj(
                           {"security_group_id": STR, "direction": {"enum": [
                               "ingress", "egress"]}},
                           {"ethertype": {"enum": ["IPv4"]},
                            "protocol": {"type": ["string", "integer", "null"]},
                            "port_range_min": NULL_INT, "port_range_max": NULL_INT,
                            "remote_ip_prefix": NULL_STR, "remote_group_id": NULL_STR,
                            "description": STR, "project_id": STR, "tenant_id": STR,
                            "remote_address_group_id": {"type": "null"}},
                           extra=False)}))},
        f"{net}/security-group-rules/{{id}}": {
            "parameters": [{**path_id("rule"), "description": "the rule's id"}],
            "get": op("Neutron v2.0: show a rule", ok(rule)),
            "delete": op("Neutron v2.0: delete a rule", gone)},
        f"{P}/os-vmops/port-forwards": {
            "get": op("vmops: list port forwards", ok(obj(
                {"port_forwards": array(ref("PortForward"))})),
                params=[query("server", "only this server's (id or name)")]),
            "post": op("vmops: forward a host port to a server's port", ok(forward, "201"),
                       body=obj({"port_forward": obj(
                           {"server": STR, "host_port": INT, "guest_port": INT},
                           {"protocol": {"enum": ["tcp", "udp"]}, "host_address": STR},
                           extra=False)}))},
        f"{P}/os-vmops/port-forwards/{{id}}": {
            "parameters": [{**path_id("port forward"), "description": "the forward's id"}],
            "get": op("vmops: show a port forward", ok(forward)),
            "delete": op("vmops: remove a port forward", gone)},
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vmops API", "version": version_text(MAX_MICROVERSION),
            "description": "The part of the OpenStack Compute API v2.1 one host needs "
            "(microversions 2.1 to the version above, sent in OpenStack-API-Version: compute "
            "2.x), a "
            "minimal image service (Glance v2) and identity version document for OpenStack "
            "clients, vmops' own additions (vmops: keys, sent only with the request header "
            "X-Vmops-Extra: 1; image import, console log, host checks) and Prometheus "
            "metrics. Over TCP every request needs the token in "
            f"X-Auth-Token (or Authorization: Bearer). Bodies are at most {MAX_BODY_BYTES} "
            "bytes of JSON.",
        },
        "servers": [{"url": "/"}],
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"token": {"type": "apiKey", "in": "header",
                                          "name": "X-Auth-Token"}},
        },
        "security": [{"token": []}],
        "paths": {**_other_paths(), **_server_paths(), **_catalog_paths(), **_identity_paths(),
                  **_network_paths(), **_nova_paths(), **_volume_paths()},
    }


def _volume_paths() -> dict[str, Any]:
    """The volume service (Cinder v3 subset) and os-volume_attachments."""
    from vmops.api import volume_openapi  # it builds on the helpers above

    return volume_openapi.paths()


def _nova_paths() -> dict[str, Any]:
    """Nova's smaller APIs (services, hypervisors, quotas, server groups...)."""
    from vmops.api import nova_openapi  # it builds on the helpers above

    return nova_openapi.paths()


def _identity_paths() -> dict[str, Any]:
    # Imported here: that module builds on this one's helpers.
    from vmops.api.keystone import openapi as keystone_openapi

    return keystone_openapi.paths()


def serve(req: Request) -> Response:
    return Response(200, document())


if __name__ == "__main__":
    json.dump(document(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
