"""Resource shapes, after the OpenStack Compute API v2.1.

Nova's field names are kept where Nova has one, so OpenStack clients can
read them; vmops' additions live under ``vmops:`` keys.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vmops.compute import states
from vmops.hypervisor.base import PowerState
from vmops.store import Flavor, Image, Instance, Keypair, Port

API_PREFIX = "/v2.1"
TENANT = "vmops"  # one host, one owner: project and user ids are fixed
AVAILABILITY_ZONE = "nova"


def iso_time(ts: float | None) -> str | None:
    if not ts:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def link(base: str, kind: str, ident: str) -> list[dict[str, str]]:
    """Nova's self and bookmark links; ``base`` is the URL the client used
    (``http://host:port``), so the links work from where the client stands."""
    return [{"rel": "self", "href": f"{base}{API_PREFIX}/{kind}/{ident}"},
            {"rel": "bookmark", "href": f"{base}/{kind}/{ident}"}]


def server_brief(inst: Instance, base: str) -> dict[str, Any]:
    return {"id": inst.id, "name": inst.name, "links": link(base, "servers", inst.id)}


@dataclass(frozen=True)
class ServerNetwork:
    """What the server view shows of an instance's network."""

    nics: tuple[Port, ...] = ()
    groups: tuple[str, ...] = ()  # security group names


def server_created(inst: Instance, base: str,
                   net: ServerNetwork = ServerNetwork()) -> dict[str, Any]:
    return {**server_brief(inst, base), "OS-DCF:diskConfig": "MANUAL",
            "security_groups": [{"name": g} for g in net.groups]}


def addresses(nics: Sequence[Port]) -> dict[str, list[dict[str, Any]]]:
    """Nova's ``addresses``: addresses by network name. User-mode NICs have
    none anyone can reach, so they are not listed (``vmops:nics`` shows them)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for nic in nics:
        if nic.ip:
            out.setdefault(nic.network, []).append(
                {"version": 4, "addr": nic.ip, "OS-EXT-IPS:type": "fixed",
                 "OS-EXT-IPS-MAC:mac_addr": nic.mac})
    return out


def nic(port: Port) -> dict[str, Any]:
    return {"mac": port.mac, "mode": port.mode, "network": port.network, "ip": port.ip,
            "tap": port.tap}


# Nova reports progress only in these states.
_PROGRESS_STATUSES = {"BUILD", "ACTIVE"}


STATUSES = ("ACTIVE", "BUILD", "SHUTOFF", "PAUSED", "SUSPENDED", "REBOOT", "HARD_REBOOT",
            "ERROR", "DELETED")


def server_status(inst: Instance) -> str:
    return states.server_status(inst.vm_state, inst.task_state)


def server(inst: Instance, base: str, live: dict[str, Any] | None = None,
           net: ServerNetwork = ServerNetwork()) -> dict[str, Any]:
    """A server at microversion 2.1, plus vmops' own ``vmops:`` keys."""
    power = PowerState(inst.power_state)
    status = server_status(inst)
    body: dict[str, Any] = {
        **server_brief(inst, base),
        "status": status,
        "OS-EXT-STS:vm_state": inst.vm_state,
        "OS-EXT-STS:task_state": inst.task_state,
        "OS-EXT-STS:power_state": states.NOVA_POWER_STATE[power],
        "OS-SRV-USG:launched_at": iso_time(inst.launched_at),
        "OS-SRV-USG:terminated_at": None,
        "created": iso_time(inst.created_at),
        "updated": iso_time(inst.updated_at),
        "flavor": {"id": inst.flavor_id, "links": link(base, "flavors", inst.flavor_id)[1:]},
        "image": {"id": inst.image_id, "links": link(base, "images", inst.image_id)[1:]},
        "addresses": addresses(net.nics),
        "metadata": dict(inst.properties),
        "key_name": inst.key_name,
        "config_drive": "True" if inst.config_drive else "",
        "hostId": "",
        "tenant_id": TENANT,
        "user_id": TENANT,
        "accessIPv4": "",
        "accessIPv6": "",
        "OS-DCF:diskConfig": "MANUAL",
        "OS-EXT-AZ:availability_zone": AVAILABILITY_ZONE,
        "OS-EXT-SRV-ATTR:instance_name": "vmops-" + inst.name,
        "os-extended-volumes:volumes_attached": [],
        "security_groups": [{"name": g} for g in net.groups],
        "vmops:flavor": _flavor_snapshot(inst.flavor),
        "vmops:power_state": power.value,
        "vmops:image_name": inst.image_name,
        "vmops:disks": [{"role": d.role, "path": d.path, "format": d.format,
                         "target": d.target, "device": d.device} for d in inst.disks],
        "vmops:macs": list(inst.macs),
        "vmops:nics": [nic(p) for p in net.nics],
    }
    if status in _PROGRESS_STATUSES:
        body["progress"] = 0
    if inst.fault:
        body["fault"] = {"code": 500, "message": inst.fault, "created": iso_time(inst.updated_at)}
    if live:
        body["vmops:live"] = live
    return body


def _flavor_snapshot(flavor: dict[str, Any]) -> dict[str, Any]:
    """The flavor as it was at spawn (Nova embeds it from microversion 2.47 on)."""
    return {"id": flavor.get("id"), "name": flavor.get("name"), "ram": flavor.get("ram_mib"),
            "vcpus": flavor.get("vcpus"), "disk": flavor.get("root_gb"),
            "ephemeral": flavor.get("ephemeral_gb")}


def flavor_brief(f: Flavor, base: str) -> dict[str, Any]:
    return {"id": f.id, "name": f.name, "links": link(base, "flavors", f.id)}


def flavor(f: Flavor, base: str) -> dict[str, Any]:
    return {"id": f.id, "name": f.name, "ram": f.ram_mib, "vcpus": f.vcpus, "disk": f.root_gb,
            "OS-FLV-EXT-DATA:ephemeral": f.ephemeral_gb, "swap": "",
            "rxtx_factor": 1.0, "os-flavor-access:is_public": True,
            "OS-FLV-DISABLED:disabled": False, "description": None,
            "vmops:builtin": f.builtin, "links": link(base, "flavors", f.id)}


def image(img: Image, users: list[str], base: str) -> dict[str, Any]:
    status = {"queued": "SAVING", "saving": "SAVING", "active": "ACTIVE",
              "error": "ERROR"}[img.status]
    return {"id": img.id, "name": img.name, "status": status, "minDisk": 0, "minRam": 0,
            "progress": _progress(img), "created": iso_time(img.created_at),
            "updated": iso_time(img.updated_at), "OS-EXT-IMG-SIZE:size": img.file_size,
            "metadata": image_properties(img), "links": link(base, "images", img.id),
            "vmops:format": img.format, "vmops:virtual_size": img.virtual_size,
            "vmops:checksum": img.checksum, "vmops:source": img.source,
            "vmops:bytes_done": img.bytes_done, "vmops:bytes_total": img.bytes_total,
            "vmops:fault": img.fault, "vmops:used_by": users,
            "vmops:login_user": img.login_user or None}


def image_properties(img: Image) -> dict[str, str]:
    """The image's properties under Glance's names: ``os_admin_user`` is the
    user to log in as (Glance's default for Linux: root); a snapshot carries
    Nova's ``image_type`` snapshot and the ``instance_uuid`` it was taken of."""
    props = {"os_admin_user": img.login_user} if img.login_user else {}
    if img.instance_uuid:
        props.update(image_type="snapshot", instance_uuid=img.instance_uuid)
    return props


def _progress(img: Image) -> int:
    if img.status == "active":
        return 100
    if img.bytes_total:
        return min(99, img.bytes_done * 100 // img.bytes_total)
    return 0


def keypair(k: Keypair) -> dict[str, Any]:
    return {"name": k.name, "public_key": k.public_key, "fingerprint": k.fingerprint,
            "type": k.type, "created_at": iso_time(k.created_at)}


def keypair_detail(k: Keypair) -> dict[str, Any]:
    """GET /os-keypairs/{name}: Nova adds the bookkeeping fields."""
    return {**keypair(k), "user_id": TENANT, "id": 0, "deleted": False,
            "updated_at": None, "deleted_at": None}


class ServerList:
    """``GET /servers/detail`` as JSON bytes, each server's part kept until its
    record changes (every change sets ``updated_at``): listing 200 servers
    then costs a lookup each, not a rendering. Safe across threads: entries
    are replaced whole, never changed."""

    def __init__(self) -> None:
        self._parts: dict[str, tuple[float, str, bytes]] = {}

    def encode(self, insts: list[Instance], base: str, complete: bool,
               net_of: Callable[[Instance], ServerNetwork]) -> bytes:
        """``complete``: ``insts`` are all the instances, so forget the others.
        A change of an instance's network (a group joined) touches its record."""
        fresh: dict[str, tuple[float, str, bytes]] = {}
        for inst in insts:
            part = self._parts.get(inst.id)
            if part is None or part[:2] != (inst.updated_at, base):
                part = (inst.updated_at, base,
                        json.dumps(server(inst, base, net=net_of(inst))).encode())
            fresh[inst.id] = part
        self._parts = fresh if complete else {**self._parts, **fresh}
        return b'{"servers": [' + b", ".join(p[2] for p in fresh.values()) + b"]}"
