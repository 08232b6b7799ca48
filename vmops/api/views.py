"""Resource shapes, after the OpenStack Compute API v2.1.

Nova's field names are kept where Nova has one, so OpenStack clients can
read them; vmops' additions live under ``vmops:`` keys.
"""

from __future__ import annotations

import time
from typing import Any

from vmops.compute import states
from vmops.hypervisor.base import PowerState
from vmops.store import Flavor, Image, Instance, Keypair

API_PREFIX = "/v2.1"


def iso_time(ts: float | None) -> str | None:
    if not ts:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def link(kind: str, ident: str) -> list[dict[str, str]]:
    return [{"rel": "self", "href": f"{API_PREFIX}/{kind}/{ident}"},
            {"rel": "bookmark", "href": f"/{kind}/{ident}"}]


def server_brief(inst: Instance) -> dict[str, Any]:
    return {"id": inst.id, "name": inst.name, "links": link("servers", inst.id)}


def server(inst: Instance, live: dict[str, Any] | None = None) -> dict[str, Any]:
    power = PowerState(inst.power_state)
    flavor = inst.flavor
    body: dict[str, Any] = {
        **server_brief(inst),
        "status": states.server_status(inst.vm_state, inst.task_state),
        "OS-EXT-STS:vm_state": inst.vm_state,
        "OS-EXT-STS:task_state": inst.task_state,
        "OS-EXT-STS:power_state": states.NOVA_POWER_STATE[power],
        "OS-SRV-USG:launched_at": iso_time(inst.launched_at),
        "created": iso_time(inst.created_at),
        "updated": iso_time(inst.updated_at),
        "flavor": {"id": flavor.get("id"), "original_name": flavor.get("name"),
                   "ram": flavor.get("ram_mib"), "vcpus": flavor.get("vcpus"),
                   "disk": flavor.get("root_gb"), "ephemeral": flavor.get("ephemeral_gb")},
        "image": {"id": inst.image_id, "links": link("images", inst.image_id)},
        "addresses": {"user": [{"OS-EXT-IPS-MAC:mac_addr": mac, "version": 4,
                                "addr": None, "OS-EXT-IPS:type": "fixed"}
                               for mac in inst.macs]},
        "metadata": dict(inst.properties),
        "key_name": inst.key_name,
        "config_drive": "True" if inst.config_drive else "",
        "hostId": "",
        "tenant_id": "vmops",
        "user_id": "vmops",
        "accessIPv4": "",
        "accessIPv6": "",
        "OS-EXT-SRV-ATTR:instance_name": "vmops-" + inst.name,
        "os-extended-volumes:volumes_attached": [],
        "vmops:power_state": power.value,
        "vmops:image_name": inst.image_name,
        "vmops:disks": [{"role": d.role, "path": d.path, "format": d.format,
                         "target": d.target, "device": d.device} for d in inst.disks],
        "vmops:macs": list(inst.macs),
    }
    if inst.fault:
        body["fault"] = {"code": 500, "message": inst.fault, "created": iso_time(inst.updated_at)}
    if live:
        body["vmops:live"] = live
    return body


def flavor(f: Flavor) -> dict[str, Any]:
    return {"id": f.id, "name": f.name, "ram": f.ram_mib, "vcpus": f.vcpus, "disk": f.root_gb,
            "OS-FLV-EXT-DATA:ephemeral": f.ephemeral_gb, "swap": "",
            "rxtx_factor": 1.0, "os-flavor-access:is_public": True,
            "OS-FLV-DISABLED:disabled": False, "description": None,
            "vmops:builtin": f.builtin, "links": link("flavors", f.id)}


def image(img: Image, users: list[str]) -> dict[str, Any]:
    status = {"queued": "SAVING", "saving": "SAVING", "active": "ACTIVE",
              "error": "ERROR"}[img.status]
    return {"id": img.id, "name": img.name, "status": status, "minDisk": 0, "minRam": 0,
            "progress": _progress(img), "created": iso_time(img.created_at),
            "updated": iso_time(img.updated_at), "OS-EXT-IMG-SIZE:size": img.file_size,
            "metadata": {}, "links": link("images", img.id),
            "vmops:format": img.format, "vmops:virtual_size": img.virtual_size,
            "vmops:checksum": img.checksum, "vmops:source": img.source,
            "vmops:bytes_done": img.bytes_done, "vmops:bytes_total": img.bytes_total,
            "vmops:fault": img.fault, "vmops:used_by": users}


def _progress(img: Image) -> int:
    if img.status == "active":
        return 100
    if img.bytes_total:
        return min(99, img.bytes_done * 100 // img.bytes_total)
    return 0


def keypair(k: Keypair) -> dict[str, Any]:
    return {"name": k.name, "public_key": k.public_key, "fingerprint": k.fingerprint,
            "type": k.type, "created_at": iso_time(k.created_at)}
