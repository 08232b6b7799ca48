"""Request handlers: parse and check the body, call compute/, shape the answer."""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Callable, Iterator
from typing import Any

from vmops import console
from vmops.api import views
from vmops.api.server import Request, Response, Router
from vmops.compute.catalog import Catalog
from vmops.compute.manager import Compute, SpawnRequest
from vmops.errors import Invalid

P = views.API_PREFIX


def _require(body: Any, key: str) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get(key), dict):
        raise Invalid(reason=f"the request body must be a JSON object with a {key!r} object")
    value: dict[str, Any] = body[key]
    return value


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...],
           required: bool = False, default: Any = None) -> Any:
    if name not in obj or obj[name] is None:
        if required:
            raise Invalid(reason=f"{name!r} is required")
        return default
    value = obj[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        raise Invalid(reason=f"{name!r} must be {' or '.join(k.__name__ for k in kinds)}, "
                      f"got {type(value).__name__}")
    return value


def _no_unknown(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise Invalid(reason=f"unknown field(s) in {where}: {', '.join(unknown)}")


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(reason=f"{what} must be base64") from None


def _ref(value: Any) -> str:
    """imageRef/flavorRef may be an id, a name or a link ending in the id."""
    if not isinstance(value, str | int) or isinstance(value, bool) or value == "":
        raise Invalid(reason="imageRef and flavorRef must be non-empty strings")
    return str(value).rstrip("/").rsplit("/", 1)[-1]


SERVER_FIELDS = {"name", "imageRef", "flavorRef", "networks", "config_drive", "user_data",
                 "key_name", "metadata", "personality", "adminPass", "min_count",
                 "max_count", "vmops:mac", "availability_zone", "security_groups",
                 "description"}


def spawn_request(body: Any) -> SpawnRequest:
    srv = _require(body, "server")
    _no_unknown(srv, SERVER_FIELDS, "server")
    name = _field(srv, "name", str, required=True)
    metadata = _field(srv, "metadata", dict, default={})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise Invalid(reason="metadata keys and values must be strings")
    files = []
    for item in _field(srv, "personality", list, default=[]):
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) \
                or not isinstance(item.get("contents"), str):
            raise Invalid(reason="each personality item needs a 'path' and base64 'contents'")
        files.append((item["path"], _b64(item["contents"], f"contents of {item['path']}")))
    user_data = _field(srv, "user_data", str)
    return SpawnRequest(
        name=name, image=_ref(srv.get("imageRef")), flavor=_ref(srv.get("flavorRef")),
        mac=_field(srv, "vmops:mac", str), config_drive=_field(srv, "config_drive", bool,
                                                                default=False),
        user_data=_b64(user_data, "user_data") if user_data is not None else None,
        key_name=_field(srv, "key_name", str), files=tuple(files), properties=metadata,
        admin_password=_field(srv, "adminPass", str))


class Routes:
    def __init__(self, compute: Compute, catalog: Catalog,
                 doctor: Callable[[], list[dict[str, Any]]]) -> None:
        self.compute = compute
        self.catalog = catalog
        self.store = compute.store
        self.doctor = doctor

    def router(self) -> Router:
        r = Router()
        r.add("GET", "/", self.versions)
        r.add("GET", P, self.version)
        r.add("GET", f"{P}/servers", self.list_servers)
        r.add("GET", f"{P}/servers/detail", self.list_servers_detail)
        r.add("POST", f"{P}/servers", self.create_server)
        r.add("GET", f"{P}/servers/{{id}}", self.show_server)
        r.add("DELETE", f"{P}/servers/{{id}}", self.delete_server)
        r.add("POST", f"{P}/servers/{{id}}/action", self.server_action)
        r.add("GET", f"{P}/servers/{{id}}/console-log", self.console_log)
        r.add("GET", f"{P}/flavors", self.list_flavors)
        r.add("GET", f"{P}/flavors/detail", self.list_flavors)
        r.add("POST", f"{P}/flavors", self.create_flavor)
        r.add("GET", f"{P}/flavors/{{id}}", self.show_flavor)
        r.add("DELETE", f"{P}/flavors/{{id}}", self.delete_flavor)
        r.add("GET", f"{P}/images", self.list_images)
        r.add("GET", f"{P}/images/detail", self.list_images)
        r.add("POST", f"{P}/images", self.import_image)
        r.add("POST", f"{P}/images/prune", self.prune_images)
        r.add("GET", f"{P}/images/{{id}}", self.show_image)
        r.add("DELETE", f"{P}/images/{{id}}", self.delete_image)
        r.add("GET", f"{P}/os-keypairs", self.list_keypairs)
        r.add("POST", f"{P}/os-keypairs", self.add_keypair)
        r.add("GET", f"{P}/os-keypairs/{{id}}", self.show_keypair)
        r.add("DELETE", f"{P}/os-keypairs/{{id}}", self.delete_keypair)
        r.add("GET", f"{P}/os-vmops/doctor", self.host_checks)
        return r

    # -- versions ------------------------------------------------------------
    def _version_doc(self) -> dict[str, Any]:
        return {"id": "v2.1", "status": "CURRENT", "version": "2.1", "min_version": "2.1",
                "updated": "2013-07-23T11:33:21Z",
                "links": [{"rel": "self", "href": f"{P}/"}]}

    def versions(self, req: Request) -> Response:
        return Response(200, {"versions": [self._version_doc()]})

    def version(self, req: Request) -> Response:
        return Response(200, {"version": self._version_doc()})

    # -- servers -------------------------------------------------------------
    def _servers(self, req: Request) -> list[Any]:
        insts = self.store.instances()
        name = req.arg("name")
        if name:
            insts = [i for i in insts if i.name == name]
        return insts

    def list_servers(self, req: Request) -> Response:
        return Response(200, {"servers": [views.server_brief(i) for i in self._servers(req)]})

    def list_servers_detail(self, req: Request) -> Response:
        return Response(200, {"servers": [views.server(i) for i in self._servers(req)]})

    def create_server(self, req: Request) -> Response:
        inst = self.compute.create(spawn_request(req.json()))
        return Response(202, {"server": {**views.server_brief(inst), "OS-DCF:diskConfig":
                                         "MANUAL", "security_groups": []}})

    def show_server(self, req: Request) -> Response:
        inst = self.compute.instance(req.params["id"])
        return Response(200, {"server": views.server(inst, self.compute.live_info(inst))})

    def delete_server(self, req: Request) -> Response:
        inst = self.compute.instance(req.params["id"])
        self.compute.destroy(inst.id)
        return Response(204)

    def server_action(self, req: Request) -> Response:
        body = req.json()
        if not isinstance(body, dict) or len(body) != 1:
            raise Invalid(reason="an action body is a JSON object with exactly one action")
        (action, arg), = body.items()
        ref = req.params["id"]
        if action == "os-getConsoleOutput":
            return self._console_output(ref, arg)
        handler = self._actions().get(action)
        if handler is None:
            raise Invalid(reason=f"unknown action {action!r}; known: "
                          f"{', '.join(sorted(self._actions()))}, os-getConsoleOutput")
        handler(ref, arg if arg is not None else {})
        return Response(202)

    def _actions(self) -> dict[str, Callable[[str, Any], Any]]:
        c = self.compute
        return {
            "pause": lambda ref, _: c.pause(ref),
            "unpause": lambda ref, _: c.unpause(ref),
            "suspend": lambda ref, _: c.suspend(ref),
            "resume": lambda ref, _: c.resume(ref),
            "os-start": lambda ref, _: c.start(ref),
            "os-stop": self._stop,
            "reboot": self._reboot,
        }

    def _stop(self, ref: str, arg: Any) -> None:
        if not isinstance(arg, dict):
            raise Invalid(reason="os-stop takes null or an object")
        _no_unknown(arg, {"vmops:timeout", "vmops:hard"}, "os-stop")
        timeout = _field(arg, "vmops:timeout", (int, float))
        if timeout is not None and not 0 <= timeout <= 3600:
            raise Invalid(reason="vmops:timeout must be from 0 to 3600 seconds")
        self.compute.stop(ref, timeout=timeout, hard=_field(arg, "vmops:hard", bool,
                                                            default=False))

    def _reboot(self, ref: str, arg: Any) -> None:
        if not isinstance(arg, dict):
            raise Invalid(reason="reboot takes an object: {\"type\": \"SOFT\" or \"HARD\"}")
        kind = _field(arg, "type", str, required=True).upper()
        if kind not in ("SOFT", "HARD"):
            raise Invalid(reason=f"reboot type must be SOFT or HARD, not {kind!r}")
        self.compute.reboot(ref, hard=kind == "HARD")

    def _console_output(self, ref: str, arg: Any) -> Response:
        length = arg.get("length") if isinstance(arg, dict) else None
        if length is not None and (not isinstance(length, int) or isinstance(length, bool)
                                   or length < 0):
            raise Invalid(reason="length must be a non-negative integer")
        data = self.compute.console_log(ref, tail_lines=length)
        return Response(200, {"output": data.decode("utf-8", errors="replace")})

    def console_log(self, req: Request) -> Response:
        """vmops' own: the raw bytes, optionally the last N lines, optionally followed."""
        inst = self.compute.instance(req.params["id"])
        tail = req.arg("tail")
        if tail is not None and not tail.isdigit():
            raise Invalid(reason="tail must be a non-negative integer")
        data = self.compute.console_log(inst.id, tail_lines=int(tail) if tail else None)
        if req.arg("follow") not in ("1", "true"):
            return Response(200, data)
        return Response(200, headers={"Content-Type": "application/octet-stream"},
                        stream=self._follow(data, inst.id))

    def _follow(self, first: bytes, instance_id: str) -> Iterator[bytes]:
        yield first
        stop = threading.Event()
        yield from console.follow(self.compute.instance_dir(self.compute.instance(instance_id)),
                                  stop=stop)

    # -- flavors -------------------------------------------------------------
    def list_flavors(self, req: Request) -> Response:
        return Response(200, {"flavors": [views.flavor(f) for f in self.store.flavors()]})

    def show_flavor(self, req: Request) -> Response:
        return Response(200, {"flavor": views.flavor(self.store.flavor(req.params["id"]))})

    def create_flavor(self, req: Request) -> Response:
        f = _require(req.json(), "flavor")
        _no_unknown(f, {"name", "ram", "vcpus", "disk", "OS-FLV-EXT-DATA:ephemeral", "id",
                        "swap", "rxtx_factor", "os-flavor-access:is_public", "description"},
                    "flavor")
        flavor = self.catalog.create_flavor(
            _field(f, "name", str, required=True), _field(f, "ram", int, required=True),
            _field(f, "vcpus", int, required=True), _field(f, "disk", int, required=True),
            _field(f, "OS-FLV-EXT-DATA:ephemeral", int, default=0), _field(f, "id", str))
        return Response(200, {"flavor": views.flavor(flavor)})

    def delete_flavor(self, req: Request) -> Response:
        self.catalog.delete_flavor(req.params["id"])
        return Response(202)

    # -- images --------------------------------------------------------------
    def _image_view(self, image: Any) -> dict[str, Any]:
        return views.image(image, self.store.instances_using("image_id", image.id))

    def list_images(self, req: Request) -> Response:
        return Response(200, {"images": [self._image_view(i) for i in self.store.images()]})

    def show_image(self, req: Request) -> Response:
        return Response(200, {"image": self._image_view(self.store.image(req.params["id"]))})

    def import_image(self, req: Request) -> Response:
        """vmops' own: {"image": {"name", "source", "checksum"?, "disk_format"?}}."""
        i = _require(req.json(), "image")
        _no_unknown(i, {"name", "source", "checksum", "disk_format"}, "image")
        image = self.catalog.import_image(
            _field(i, "name", str, required=True), _field(i, "source", str, required=True),
            _field(i, "checksum", str), _field(i, "disk_format", str))
        return Response(202, {"image": self._image_view(image)})

    def delete_image(self, req: Request) -> Response:
        self.catalog.delete_image(req.params["id"])
        return Response(204)

    def prune_images(self, req: Request) -> Response:
        body = req.json() or {}
        age = body.get("older_than", self.compute.settings.image_cache_max_age) \
            if isinstance(body, dict) else None
        if not isinstance(age, int | float) or isinstance(age, bool) or age < 0:
            raise Invalid(reason="older_than must be a non-negative number of seconds")
        return Response(200, {"removed": self.catalog.prune_images(float(age))})

    # -- keypairs ------------------------------------------------------------
    def list_keypairs(self, req: Request) -> Response:
        return Response(200, {"keypairs": [{"keypair": views.keypair(k)}
                                           for k in self.store.keypairs()]})

    def show_keypair(self, req: Request) -> Response:
        return Response(200, {"keypair": views.keypair(self.store.keypair(req.params["id"]))})

    def add_keypair(self, req: Request) -> Response:
        k = _require(req.json(), "keypair")
        _no_unknown(k, {"name", "public_key", "type"}, "keypair")
        public_key = _field(k, "public_key", str)
        if public_key is None:
            raise Invalid(reason="vmops only imports keys: give 'public_key'")
        keypair = self.catalog.add_keypair(_field(k, "name", str, required=True), public_key)
        return Response(200, {"keypair": views.keypair(keypair)})

    def delete_keypair(self, req: Request) -> Response:
        self.store.delete_keypair(req.params["id"])
        return Response(202)

    # -- host ----------------------------------------------------------------
    def host_checks(self, req: Request) -> Response:
        return Response(200, {"checks": self.doctor()})

