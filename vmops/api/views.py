"""Resource shapes, after the OpenStack Compute API v2.1 and its microversions.

A body has exactly the keys Nova sends at the request's microversion (the
tests check them against Tempest's schemas), and what Nova shows admins
only (``OS-EXT-SRV-ATTR:*``, ``host_status``) only to admins. vmops' own
additions (``vmops:*`` keys) are sent only to a client that asks for them
with the request header ``X-Vmops-Extra: 1`` (vmops' CLI does).
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
import weakref
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vmops.api.server import MIN_MICROVERSION, Microversion, Request, parse_version
from vmops.compute import states
from vmops.hypervisor.base import PowerState
from vmops.store import Flavor, Image, Instance, InstanceFlavor, Keypair, Port

API_PREFIX = "/v2.1"
TENANT = "vmops"  # what records from before projects were shown as owned by
AVAILABILITY_ZONE = "nova"
EXTRA_HEADER = "x-vmops-extra"


def host_name() -> str:
    """This host as Nova names a compute host (OS-EXT-SRV-ATTR:host,
    hypervisor_hostname): the machine's hostname."""
    return socket.gethostname()


@dataclass(frozen=True)
class View:
    """How one request's bodies are shaped: its microversion, whether the
    caller is an admin, and whether it asked for vmops' own keys."""

    version: Microversion = MIN_MICROVERSION
    admin: bool = True
    extra: bool = False

    @classmethod
    def of(cls, req: Request) -> View:
        return cls(req.microversion, req.context.is_admin,
                   req.headers.get(EXTRA_HEADER, "").strip().lower() in ("1", "true", "yes"))

    def at_least(self, version: str) -> bool:
        return self.version >= parse_version(version)


NOVA_21 = View()


def iso_time(ts: float | None) -> str | None:
    if not ts:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def usage_time(ts: float | None) -> str | None:
    """Nova's form for OS-SRV-USG times: naive UTC with microseconds."""
    if not ts:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}"


def link(base: str, kind: str, ident: str) -> list[dict[str, str]]:
    """Nova's self and bookmark links; ``base`` is the URL the client used
    (``http://host:port``), so the links work from where the client stands."""
    return [{"rel": "self", "href": f"{base}{API_PREFIX}/{kind}/{ident}"},
            {"rel": "bookmark", "href": f"{base}/{kind}/{ident}"}]


def server_brief(inst: Instance, base: str) -> dict[str, Any]:
    return {"id": inst.id, "name": inst.name, "links": link(base, "servers", inst.id)}


@dataclass(frozen=True, slots=True)  # kept by ServerList per server: no __dict__
class ServerNetwork:
    """What the server view shows of an instance's network."""

    nics: tuple[Port, ...] = ()
    groups: tuple[str, ...] = ()  # security group names
    # And, though not the network's, the ids of its attached volumes, by device.
    volumes: tuple[str, ...] = ()


def server_created(inst: Instance, base: str, net: ServerNetwork = ServerNetwork(),
                   admin_password: str | None = None) -> dict[str, Any]:
    """The reply to POST /servers: no name (Nova sends none), the admin
    password when one was given or made."""
    body: dict[str, Any] = {"id": inst.id, "links": link(base, "servers", inst.id),
                            "OS-DCF:diskConfig": inst.disk_config,
                            "security_groups": [{"name": g} for g in net.groups]}
    if admin_password is not None:
        body["adminPass"] = admin_password
    return body


def addresses(nics: Sequence[Port], extended: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Nova's ``addresses``: addresses by network name, ``extended`` with
    their type and MAC (show and list; not update or rebuild below 2.75).
    User-mode NICs have none anyone can reach, so they are not listed
    (``vmops:nics`` shows them)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for nic in nics:
        if nic.ip:
            entry: dict[str, Any] = {"version": 4, "addr": nic.ip}
            if extended:
                entry.update({"OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": nic.mac})
            out.setdefault(nic.network, []).append(entry)
    return out


def nic(port: Port) -> dict[str, Any]:
    return {"mac": port.mac, "mode": port.mode, "network": port.network, "ip": port.ip,
            "tap": port.tap}


STATUSES = states.STATUSES


def server_status(inst: Instance) -> str:
    return states.server_status(inst.vm_state, inst.task_state)


def host_id(project_id: str) -> str:
    """Nova's hostId: the host hashed with the project, so projects cannot
    compare hosts but a project sees which of its servers share one."""
    return hashlib.sha224((project_id + host_name()).encode()).hexdigest()


def domain_name(inst: Instance) -> str:
    """The libvirt domain's name (Nova's OS-EXT-SRV-ATTR:instance_name)."""
    return inst.domain_name or "vmops-" + inst.name


def server(inst: Instance, base: str, view: View = NOVA_21,
           live: dict[str, Any] | None = None, net: ServerNetwork = ServerNetwork(),
           full: bool = True, timings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A server as Nova's show at ``view``'s microversion; ``full`` False is
    the shorter body Nova answers update (PUT) and rebuild with. ``live`` and
    ``timings`` (its last verb's steps) are shown with X-Vmops-Extra only."""
    status = server_status(inst)
    body: dict[str, Any] = {
        **server_brief(inst, base),
        "status": status,
        "tenant_id": inst.project_id,
        "user_id": inst.user_id,
        "metadata": dict(inst.properties),
        "hostId": host_id(inst.project_id),
        # A volume-backed server has no image: Nova shows "".
        "image": "" if inst.boot_volume_id else {
            "id": inst.image_id, "links": link(base, "images", inst.image_id)[1:]},
        "flavor": _server_flavor(inst, base, view),
        "created": iso_time(inst.created_at),
        "updated": iso_time(inst.updated_at),
        "addresses": addresses(net.nics, extended=full),
        "accessIPv4": inst.access_ipv4,
        "accessIPv6": inst.access_ipv6,
        "OS-DCF:diskConfig": inst.disk_config,
    }
    if status in states.PROGRESS_STATUSES:
        body["progress"] = 0
    if inst.fault and inst.vm_state == states.ERROR:
        body["fault"] = {"code": 500, "message": inst.fault, "created": iso_time(inst.updated_at)}
    if full:
        body.update(_show_only(inst, view, net))
    if view.at_least("2.9"):
        body["locked"] = bool(inst.locked_by)
    if view.at_least("2.19"):
        body["description"] = inst.description
    if view.at_least("2.26"):
        body["tags"] = list(inst.tags)
    if view.extra:
        body.update(_extra(inst, net, live))
        if timings:
            body["vmops:timings"] = dict(timings)  # a compact timings.Finished
    return body


def _show_only(inst: Instance, view: View, net: ServerNetwork) -> dict[str, Any]:
    """The keys of show and list detail that update and rebuild leave out
    (below 2.75)."""
    power = PowerState(inst.power_state)
    body: dict[str, Any] = {
        "key_name": inst.key_name,
        "security_groups": [{"name": g} for g in net.groups],
        "OS-SRV-USG:launched_at": usage_time(inst.launched_at),
        "OS-SRV-USG:terminated_at": None,
        "OS-EXT-AZ:availability_zone": AVAILABILITY_ZONE,
        "OS-EXT-STS:task_state": inst.task_state,
        "OS-EXT-STS:vm_state": inst.vm_state,
        "OS-EXT-STS:power_state": states.NOVA_POWER_STATE[power],
        "os-extended-volumes:volumes_attached": [
            {"id": v, "delete_on_termination": (v == inst.boot_volume_id
                                                and inst.delete_on_termination)
             or v in inst.volumes_deleted_on_termination}
            if view.at_least("2.3") else {"id": v}
            for v in net.volumes],
        "config_drive": "True" if inst.config_drive else "",
    }
    if view.admin:
        host = host_name()
        body.update({"OS-EXT-SRV-ATTR:host": host,
                     "OS-EXT-SRV-ATTR:hypervisor_hostname": host,
                     "OS-EXT-SRV-ATTR:instance_name": domain_name(inst)})
        if view.at_least("2.3"):
            body.update({
                "OS-EXT-SRV-ATTR:reservation_id": inst.reservation_id or None,
                "OS-EXT-SRV-ATTR:launch_index": inst.launch_index,
                "OS-EXT-SRV-ATTR:kernel_id": "", "OS-EXT-SRV-ATTR:ramdisk_id": "",
                "OS-EXT-SRV-ATTR:hostname": inst.hostname or inst.name,
                "OS-EXT-SRV-ATTR:root_device_name": "/dev/vda",
                "OS-EXT-SRV-ATTR:user_data": inst.user_data})
        if view.at_least("2.16"):
            body["host_status"] = "UP"
    return body


def _server_flavor(inst: Instance, base: str, view: View) -> dict[str, Any]:
    """The flavor's id and link; from 2.47 the flavor as it was at spawn."""
    f = inst.flavor
    if not view.at_least("2.47"):
        return {"id": inst.flavor_id, "links": link(base, "flavors", inst.flavor_id)[1:]}
    return {"vcpus": f.vcpus, "ram": f.ram_mib, "disk": f.root_gb, "ephemeral": f.ephemeral_gb,
            "swap": f.swap_mb, "original_name": f.name, "extra_specs": dict(f.extra_specs)}


def _extra(inst: Instance, net: ServerNetwork, live: dict[str, Any] | None) -> dict[str, Any]:
    """vmops' own keys (X-Vmops-Extra: 1)."""
    body: dict[str, Any] = {
        "vmops:flavor": _flavor_snapshot(inst.flavor),
        "vmops:power_state": PowerState(inst.power_state).value,
        "vmops:image_name": inst.image_name,
        "vmops:disks": [{"role": d.role, "path": d.path, "format": d.format,
                         "target": d.target, "device": d.device} for d in inst.disks],
        "vmops:macs": list(inst.macs),
        "vmops:nics": [nic(p) for p in net.nics],
        "vmops:fault": inst.fault,
    }
    if live:
        body["vmops:live"] = live
    return body


def _flavor_snapshot(flavor: InstanceFlavor) -> dict[str, Any]:
    """The flavor as it was at spawn."""
    return {"id": flavor.id, "name": flavor.name, "ram": flavor.ram_mib, "vcpus": flavor.vcpus,
            "disk": flavor.root_gb, "ephemeral": flavor.ephemeral_gb}


def flavor_brief(f: Flavor, base: str) -> dict[str, Any]:
    return {"id": f.id, "name": f.name, "links": link(base, "flavors", f.id)}


def flavor(f: Flavor, base: str, view: View = NOVA_21) -> dict[str, Any]:
    """Nova's flavor: swap in MiB, "" for none; always enabled here (vmops
    flavors have no disabled state); private ones: compute/flavor_access.py."""
    body: dict[str, Any] = {
        "id": f.id, "name": f.name, "ram": f.ram_mib, "vcpus": f.vcpus, "disk": f.root_gb,
        "OS-FLV-EXT-DATA:ephemeral": f.ephemeral_gb, "swap": f.swap_mb or "",
        "rxtx_factor": f.rxtx_factor,
        "os-flavor-access:is_public": f.is_public, "OS-FLV-DISABLED:disabled": False,
        "links": link(base, "flavors", f.id)}
    if view.extra:
        body["vmops:builtin"] = f.builtin
    return body


IMAGE_STATUS = {"queued": "SAVING", "saving": "SAVING", "active": "ACTIVE", "error": "ERROR"}


def image(img: Image, users: list[str], base: str, view: View = NOVA_21) -> dict[str, Any]:
    """The compute API's image proxy (Nova's shape of a Glance image)."""
    body: dict[str, Any] = {
        "id": img.id, "name": img.name, "status": IMAGE_STATUS[img.status], "minDisk": 0,
        "minRam": 0, "progress": _progress(img), "created": iso_time(img.created_at),
        "updated": iso_time(img.updated_at), "OS-EXT-IMG-SIZE:size": img.file_size,
        "metadata": image_properties(img), "links": _image_links(base, img.id)}
    if img.instance_uuid:
        body["server"] = {"id": img.instance_uuid,
                          "links": link(base, "servers", img.instance_uuid)}
    if view.extra:
        body.update({
            "vmops:format": img.format, "vmops:virtual_size": img.virtual_size,
            "vmops:checksum": img.checksum, "vmops:source": img.source,
            "vmops:bytes_done": img.bytes_done, "vmops:bytes_total": img.bytes_total,
            "vmops:fault": img.fault, "vmops:used_by": users,
            "vmops:login_user": img.login_user or None})
    return body


def image_brief(img: Image, base: str) -> dict[str, Any]:
    return {"id": img.id, "name": img.name, "links": _image_links(base, img.id)}


def _image_links(base: str, image_id: str) -> list[dict[str, str]]:
    """Nova adds an ``alternate`` link to the image in Glance."""
    return [*link(base, "images", image_id),
            {"rel": "alternate", "type": "application/vnd.openstack.image",
             "href": f"{base}/image/images/{image_id}"}]


def image_properties(img: Image) -> dict[str, str]:
    """The image's properties under Glance's names: ``os_admin_user`` is the
    user to log in as (Glance's default for Linux: root); a snapshot carries
    Nova's ``image_type`` snapshot and the ``instance_uuid`` it was taken of;
    then the user's properties (createImage's metadata among them), which win
    over those, as in Nova."""
    from vmops.compute.catalog import user_properties

    props: dict[str, str] = {}
    if img.instance_uuid:
        props.update(image_type="snapshot", instance_uuid=img.instance_uuid)
    if img.login_user:
        props["os_admin_user"] = img.login_user
    props.update({str(k): str(v) for k, v in user_properties(img).items()})
    return props


def _progress(img: Image) -> int:
    if img.status == "active":
        return 100
    if img.bytes_total:
        return min(99, img.bytes_done * 100 // img.bytes_total)
    return 0


def keypair(k: Keypair, view: View = NOVA_21) -> dict[str, Any]:
    """A keypair as Nova lists it: ``type`` from 2.2."""
    body: dict[str, Any] = {"name": k.name, "public_key": k.public_key,
                            "fingerprint": k.fingerprint}
    if view.at_least("2.2"):
        body["type"] = k.type
    if view.extra:
        body["vmops:created_at"] = iso_time(k.created_at)
    return body


def keypair_created(k: Keypair, view: View = NOVA_21,
                    private_key: str | None = None) -> dict[str, Any]:
    """The reply to POST /os-keypairs: the owner, and the private key if
    vmops made the pair."""
    body = {**keypair(k, view), "user_id": k.user_id}
    if private_key is not None:
        body["private_key"] = private_key
    return body


def keypair_detail(k: Keypair, view: View = NOVA_21) -> dict[str, Any]:
    """GET /os-keypairs/{name}: Nova adds the bookkeeping fields."""
    return {**keypair(k, view), "user_id": k.user_id, "id": _keypair_number(k),
            "created_at": usage_time(k.created_at), "deleted": False, "updated_at": None,
            "deleted_at": None}


def _keypair_number(k: Keypair) -> int:
    """Nova's keypairs have an integer id; vmops' are keyed by user and
    name, so this is a stable number made from them."""
    digest = hashlib.sha256(f"{k.user_id}/{k.name}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


# A server's part of the list: its record (weakly), what else it was
# rendered for, and the JSON.
_Part = tuple["weakref.ref[Instance]", str, View, ServerNetwork, bytes]


class ServerList:
    """``GET /servers/detail`` as JSON bytes, each server's part kept until its
    record or what it shows from other records changes (its NICs, its
    security groups' names, its attached volumes: none of them touches the
    instance record): listing 200 servers then costs a lookup each, not a
    rendering. A part is kept for the record object it was rendered from:
    the store hands out the same ``Instance`` while the row is unchanged
    and a new one when it changed, whoever changed it
    (``store._DecodedRows``), so the check is an identity test and no
    change the store sees is missed, even one that left ``updated_at`` as
    it was. The part refers to its record weakly: the record is the
    store's, and one the store lets go of (a destroyed server's) is not
    kept alive by its part. Only servers that exist keep a part (at most
    one each), so a service whose clients only ever list with filters does
    not keep one for every server it has had. Safe across threads: entries
    are replaced whole, never changed."""

    def __init__(self) -> None:
        self._parts: dict[str, _Part] = {}

    def encode(self, insts: list[Instance], base: str, view: View, existing: Container[str],
               net_of: Callable[[Instance], ServerNetwork]) -> bytes:
        """``existing``: the ids of every instance there is now (``insts``
        are some of them): the parts of any other are forgotten."""
        fresh: dict[str, _Part] = {}
        for inst in insts:
            part = self._parts.get(inst.id)
            net = net_of(inst)  # a group renamed, a volume attached: the record is as it was
            if part is None or part[0]() is not inst or part[1:4] != (base, view, net):
                part = (weakref.ref(inst), base, view, net,
                        json.dumps(server(inst, base, view, net=net)).encode())
            fresh[inst.id] = part
        kept = {i: p for i, p in self._parts.items() if i in existing and i not in fresh}
        self._parts = {**kept, **fresh}
        return b'{"servers": [' + b", ".join(p[4] for p in fresh.values()) + b"]}"

    def kept(self) -> int:
        """How many servers' parts are kept."""
        return len(self._parts)
