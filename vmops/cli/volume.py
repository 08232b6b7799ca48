"""The volume verbs: create, list, show, delete, extend, attach, detach.

A client of the volume service (``/volume/v3``) and of the compute API's
``os-volume_attachments``, like any OpenStack client. Verbs that end in
the background (create, extend, detach) wait for the volume to settle
unless ``--no-wait``; a detach the guest did not complete exits non-zero
with the reason, the volume still attached.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vmops.cli.client import Client
from vmops.cli.output import print_json, print_kv, print_table
from vmops.errors import VmopsError

VOLUMES = "/volume/v3/volumes"
WAIT_TIMEOUT_S = 900.0

Command = Callable[..., argparse.ArgumentParser]
ClientOf = Callable[[argparse.Namespace], Client]


def add_commands(sub: Any, cmd: Command, client_of: ClientOf) -> None:
    """Register ``volume`` and its actions under ``sub``."""
    verbs = _Verbs(client_of)
    vol = sub.add_parser("volume", help="volumes: block storage that outlives servers").\
        add_subparsers(dest="volume_command", required=True, metavar="ACTION")
    sp = cmd("create", verbs.create, "create a volume, blank or a full copy of an image; or "
             "register a remote one (an NBD export or iSCSI LUN; docs/volumes.md)",
             parent=vol)
    sp.add_argument("name")
    where = sp.add_mutually_exclusive_group(required=True)
    where.add_argument("--size", type=_gib, metavar="GiB")
    where.add_argument("--nbd", metavar="URL", help="an NBD export QEMU opens itself: "
                       "nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH")
    where.add_argument("--iscsi", metavar="URL", help="an iSCSI LUN QEMU opens itself: "
                       "iscsi://HOST[:PORT]/IQN/LUN")
    sp.add_argument("--chap-user", default="", metavar="USER", help="iSCSI CHAP user")
    sp.add_argument("--chap-secret-file", metavar="FILE", help="read the CHAP password "
                    "from FILE ('-': stdin; one trailing newline dropped); kept in a libvirt "
                    "secret")
    sp.add_argument("--image", help="copy this image onto it (grown to the size)")
    sp.add_argument("--format", choices=("qcow2", "raw"), default="qcow2",
                    help="the volume file's format (default qcow2)")
    sp.add_argument("--description", default="")
    sp.add_argument("--no-wait", action="store_true", help="return while it is creating")
    cmd("list", verbs.list, "list volumes", parent=vol)
    sp = cmd("show", verbs.show, "show one volume", parent=vol)
    sp.add_argument("volume")
    sp = cmd("delete", verbs.delete, "delete a volume that is not attached", json_flag=False,
             parent=vol)
    sp.add_argument("volume")
    sp = cmd("extend", verbs.extend, "grow a volume (an attached one under its guest)",
             parent=vol)
    sp.add_argument("volume")
    sp.add_argument("--size", type=_gib, required=True, metavar="GiB", help="the new size")
    sp = cmd("attach", verbs.attach, "attach a volume to an instance (hot-plugged if it runs; "
             "kept across stop/start)", parent=vol)
    sp.add_argument("volume")
    sp.add_argument("server", help="the instance")
    sp.add_argument("--device", metavar="vdX", help="the disk's name (default: the first "
                    "free vdb..vdz; the guest may name it differently)")
    sp = cmd("detach", verbs.detach, "detach a volume (waits for a running guest to release "
             "it; volume_detach_timeout)", parent=vol)
    sp.add_argument("volume")
    sp.add_argument("server", help="the instance")
    sp.add_argument("--no-wait", action="store_true", help="return while it is detaching")


def _gib(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of GiB") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: a volume has at least 1 GiB")
    return value


class _Verbs:
    def __init__(self, client_of: ClientOf) -> None:
        self.client_of = client_of

    def create(self, args: argparse.Namespace) -> int:
        client = self.client_of(args)
        if args.nbd or args.iscsi:
            return self._register(client, args)
        if args.chap_user or args.chap_secret_file:
            raise VmopsError("--chap-user and --chap-secret-file go with --iscsi")
        body: dict[str, Any] = {"name": args.name, "size": args.size,
                                "description": args.description, "vmops:format": args.format}
        if args.image:
            body["imageRef"] = args.image  # an id or a name
        volume = client.post(VOLUMES, {"volume": body})["volume"]
        if not args.no_wait:
            volume = _wait(client, volume["id"], ("creating",))
            if volume["status"] == "error":
                raise VmopsError(f"volume {args.name} could not be made: "
                                 f"{volume.get('vmops:fault') or 'see the service log'}")
        return _show(client, volume["id"], args.json)

    def _register(self, client: Client, args: argparse.Namespace) -> int:
        if args.image or args.format != "qcow2":
            raise VmopsError("--image and --format do not go with --nbd or --iscsi: a remote "
                             "volume is the target's own bytes")
        remote: dict[str, Any] = {"url": args.nbd or args.iscsi}
        if args.chap_user:
            remote["chap_user"] = args.chap_user
        if args.chap_secret_file:
            remote["chap_secret"] = _read_secret(args.chap_secret_file)
        volume = client.post(VOLUMES, {"volume": {
            "name": args.name, "description": args.description, "vmops:remote": remote}})
        return _show(client, volume["volume"]["id"], args.json)

    def list(self, args: argparse.Namespace) -> int:
        volumes = self.client_of(args).get(f"{VOLUMES}/detail")["volumes"]
        if args.json:
            print_json(volumes)
            return 0
        print_table(["NAME", "ID", "STATUS", "SIZE", "FORMAT", "ATTACHED TO"],
                    [[v["name"] or "-", v["id"], v["status"], f"{v['size']} GiB",
                      v.get("vmops:format", "-"), _attached(v)] for v in volumes])
        return 0

    def show(self, args: argparse.Namespace) -> int:
        return _show(self.client_of(args), args.volume, args.json)

    def delete(self, args: argparse.Namespace) -> int:
        client = self.client_of(args)
        volume = _volume(client, args.volume)
        client.delete(f"{VOLUMES}/{volume['id']}")
        print(f"deleted volume {volume['name'] or volume['id']}")
        return 0

    def extend(self, args: argparse.Namespace) -> int:
        client = self.client_of(args)
        volume = _volume(client, args.volume)
        # Attached or not: an attached volume grows under its guest (vmops' own flag).
        client.post(f"{VOLUMES}/{volume['id']}/action",
                    {"os-extend": {"new_size": args.size, "vmops:attached": True}})
        volume = _wait(client, volume["id"], ("extending",))
        if volume.get("vmops:fault"):
            raise VmopsError(f"extend of {args.volume} failed: {volume['vmops:fault']}")
        return _show(client, volume["id"], args.json)

    def attach(self, args: argparse.Namespace) -> int:
        client = self.client_of(args)
        volume = _volume(client, args.volume)
        server = client.get(f"/servers/{args.server}")["server"]
        body: dict[str, Any] = {"volumeId": volume["id"]}
        if args.device:
            body["device"] = args.device
        client.post(f"/servers/{server['id']}/os-volume_attachments",
                    {"volumeAttachment": body})
        return _show(client, volume["id"], args.json)

    def detach(self, args: argparse.Namespace) -> int:
        client = self.client_of(args)
        volume = _volume(client, args.volume)
        server = client.get(f"/servers/{args.server}")["server"]
        client.delete(f"/servers/{server['id']}/os-volume_attachments/{volume['id']}")
        if args.no_wait:
            return _show(client, volume["id"], args.json)
        volume = _wait(client, volume["id"], ("detaching",))
        if volume["status"] == "in-use":
            raise VmopsError(f"volume {args.volume} is still attached to {args.server}: "
                             f"{volume.get('vmops:fault') or 'the detach failed'}")
        return _show(client, volume["id"], args.json)


def _read_secret(path: str) -> str:
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise VmopsError(f"cannot read the CHAP secret from {path}: {exc.strerror}") from None
    data = data[:-1] if data.endswith(b"\n") else data
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise VmopsError(f"the CHAP secret in {path} is not UTF-8 text") from None


def _volume(client: Client, ref: str) -> dict[str, Any]:
    volume: dict[str, Any] = client.get(f"{VOLUMES}/{ref}")["volume"]
    return volume


def _wait(client: Client, volume_id: str, passing: tuple[str, ...]) -> dict[str, Any]:
    """Poll until the volume leaves the ``passing`` statuses."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    delay = 0.05
    while True:
        volume = _volume(client, volume_id)
        if volume["status"] not in passing:
            return volume
        if time.monotonic() > deadline:
            raise VmopsError(f"gave up waiting for volume {volume_id} after "
                             f"{WAIT_TIMEOUT_S:g}s; it is {volume['status']}")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _attached(volume: dict[str, Any]) -> str:
    return ", ".join(f"{a['server_id']} ({a['device']})" for a in volume["attachments"]) or "-"


def _show(client: Client, ref: str, as_json: bool) -> int:
    v = _volume(client, ref)
    if as_json:
        print_json(v)
        return 0
    items = [("name", v["name"] or "-"), ("id", v["id"]), ("status", v["status"]),
             ("size", f"{v['size']} GiB"), ("format", v.get("vmops:format", "-")),
             ("bootable", v["bootable"]), ("attached to", _attached(v)),
             ("created", v["created_at"])]
    if v.get("volume_image_metadata"):
        items.append(("image", v["volume_image_metadata"]["image_id"]))
    if v.get("description"):
        items.append(("description", v["description"]))
    remote = v.get("vmops:remote")
    if remote:
        items.append(("remote", remote["url"]))
        if remote.get("chap_user"):
            items.append(("chap", f"user {remote['chap_user']}, password in libvirt secret "
                          f"{remote['secret_uuid']}"))
    elif v.get("vmops:path"):
        items.append(("file", v["vmops:path"]))
    if v.get("vmops:fault"):
        items.append(("fault", v["vmops:fault"]))
    print_kv(items)
    return 0

