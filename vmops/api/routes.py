"""Request handlers: parse and check the body, call compute/, shape the answer.

The compute API (Nova v2.1 shapes) lives under ``/v2.1``; the minimal image
service under ``/image`` (``image_service.py``); version documents in
``discovery.py``; ``/metrics`` and ``/openapi.json`` at the root.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import re2

from vmops import console
from vmops.api import discovery, image_service, network_api, openapi, parse, views
from vmops.api.metrics import Metrics
from vmops.api.server import Request, Response, Router
from vmops.compute.catalog import Catalog
from vmops.compute.manager import Compute
from vmops.errors import FlavorNotFound, ImageNotFound, Invalid, KeypairNotFound
from vmops.store import Instance, Port

P = views.API_PREFIX
MAX_NAME_FILTER_CHARS = 255


class Routes:
    def __init__(self, compute: Compute, catalog: Catalog,
                 doctor: Callable[[], list[dict[str, Any]]]) -> None:
        self.compute = compute
        self.catalog = catalog
        self.store = compute.store
        self.doctor = doctor
        self.metrics = Metrics(compute)
        self.server_list = views.ServerList()

    def router(self) -> Router:
        r = Router()
        r.add("GET", "/", discovery.compute_versions, public=True)
        r.add("GET", P, discovery.compute_current, public=True)
        self._server_routes(r)
        self._catalog_routes(r)
        image_service.add_routes(r, self.catalog)
        network_api.add_routes(r, self.compute)
        r.add("GET", discovery.IDENTITY_ROOT, discovery.identity_versions, public=True)
        r.add("GET", discovery.IDENTITY_PREFIX, discovery.identity_current, public=True)
        r.add("GET", f"{P}/os-vmops/doctor", self.host_checks)
        r.add("GET", "/metrics", self.metrics.scrape)
        r.add("GET", "/openapi.json", openapi.serve)
        return r

    def _server_routes(self, r: Router) -> None:
        r.add("GET", f"{P}/servers", self.list_servers)
        r.add("GET", f"{P}/servers/detail", self.list_servers_detail)
        r.add("POST", f"{P}/servers", self.create_server)
        r.add("GET", f"{P}/servers/{{id}}", self.show_server)
        r.add("DELETE", f"{P}/servers/{{id}}", self.delete_server)
        r.add("POST", f"{P}/servers/{{id}}/action", self.server_action)
        r.add("GET", f"{P}/servers/{{id}}/console-log", self.console_log)
        r.add("GET", f"{P}/servers/{{id}}/os-security-groups", self.server_groups)

    def _catalog_routes(self, r: Router) -> None:
        r.add("GET", f"{P}/flavors", self.list_flavors)
        r.add("GET", f"{P}/flavors/detail", self.list_flavors_detail)
        r.add("POST", f"{P}/flavors", self.create_flavor)
        r.add("GET", f"{P}/flavors/{{id}}", self.show_flavor)
        r.add("DELETE", f"{P}/flavors/{{id}}", self.delete_flavor)
        r.add("GET", f"{P}/flavors/{{id}}/os-extra_specs", self.flavor_extra_specs)
        r.add("GET", f"{P}/images", self.list_images)
        r.add("GET", f"{P}/images/detail", self.list_images_detail)
        r.add("POST", f"{P}/images", self.import_image)
        r.add("POST", f"{P}/images/prune", self.prune_images)
        r.add("GET", f"{P}/images/{{id}}", self.show_image)
        r.add("DELETE", f"{P}/images/{{id}}", self.delete_image)
        r.add("GET", f"{P}/os-keypairs", self.list_keypairs)
        r.add("POST", f"{P}/os-keypairs", self.add_keypair)
        r.add("GET", f"{P}/os-keypairs/{{id}}", self.show_keypair)
        r.add("DELETE", f"{P}/os-keypairs/{{id}}", self.delete_keypair)

    # -- servers -------------------------------------------------------------
    def _servers(self, req: Request) -> list[Instance]:
        """Nova's list filters: name (a regular expression), status, image,
        flavor; then marker and limit. Other query parameters are ignored, as
        Nova does below microversion 2.75."""
        insts = self.store.instances()
        name = req.arg("name")
        if name:
            pattern = _name_pattern(name)
            insts = [i for i in insts if pattern.search(i.name)]
        status = req.arg("status")
        if status:
            insts = [i for i in insts if views.server_status(i) == status.upper()]
        for arg, attr in (("image", "image_id"), ("flavor", "flavor_id")):
            wanted = req.arg(arg)
            if wanted:
                insts = [i for i in insts if getattr(i, attr) == wanted]
        return _page(insts, req, lambda i: i.id)

    def list_servers(self, req: Request) -> Response:
        base = req.base_url
        return Response(200, {"servers": [views.server_brief(i, base)
                                          for i in self._servers(req)]})

    def list_servers_detail(self, req: Request) -> Response:
        insts = self._servers(req)
        complete = not req.query  # unfiltered: these are all the instances
        return Response(200, self.server_list.encode(insts, req.base_url, complete,
                                                     self._network_views()),
                        headers={"Content-Type": "application/json"})

    def _network_views(self) -> Callable[[Instance], views.ServerNetwork]:
        """Each instance's NICs and groups, read from the store once (on the
        first instance whose view is not cached)."""
        cache: dict[str, Any] = {}

        def net_of(inst: Instance) -> views.ServerNetwork:
            if not cache:
                ports: dict[str, list[Port]] = {}
                for port in self.store.ports():
                    ports.setdefault(port.instance_id, []).append(port)
                cache.update(ports=ports, members=self.store.instance_group_ids(),
                             names={g.id: g.name for g in self.store.security_groups()})
            nics = cache["ports"].get(inst.id) or self.compute.nics(inst)
            groups = [cache["names"].get(g, g) for g in cache["members"].get(inst.id, [])]
            return views.ServerNetwork(tuple(nics), tuple(sorted(groups)))

        return net_of

    def _network_view(self, inst: Instance) -> views.ServerNetwork:
        return self._network_views()(inst)

    def create_server(self, req: Request) -> Response:
        spawn = parse.spawn_request(req.json())
        if spawn.key_name is not None:
            try:
                self.store.keypair(spawn.key_name)
            except KeypairNotFound:
                raise Invalid(reason=f"invalid key_name {spawn.key_name!r}: no such keypair "
                              "(add it with POST /os-keypairs)") from None
        try:
            inst = self.compute.create(spawn)
        except (ImageNotFound, FlavorNotFound) as exc:
            raise Invalid(reason=exc.message) from None  # Nova: 400 for a bad ref
        created = views.server_created(inst, req.base_url, self._network_view(inst))
        return Response(202, {"server": created},
                        headers={"Location": created["links"][0]["href"]})

    def show_server(self, req: Request) -> Response:
        inst = self.compute.instance(req.params["id"])
        live = self.compute.live_info(inst)
        return Response(200, {"server": views.server(inst, req.base_url, live,
                                                     self._network_view(inst))})

    def delete_server(self, req: Request) -> Response:
        inst = self.compute.instance(req.params["id"])
        self.compute.destroy(inst.id)
        return Response(204)

    def server_groups(self, req: Request) -> Response:
        """Compute 2.1's view of a server's groups (ingress rules only, as Nova's)."""
        inst = self.compute.instance(req.params["id"])
        ids = self.store.instance_group_ids(inst.id).get(inst.id, [])
        groups = [self.store.security_group(g) for g in ids]
        return Response(200, {"security_groups": [
            {"id": g.id, "name": g.name, "description": g.description,
             "tenant_id": views.TENANT, "rules": []} for g in groups]})

    def _group_membership(self, inst_id: str, arg: Any, member: bool) -> None:
        if not isinstance(arg, dict) or set(arg) != {"name"} or not isinstance(arg["name"], str):
            raise Invalid(reason='the action takes {"name": "<security group>"}')
        network = self.compute.network
        if network is None or not any(p.ip for p in self.store.ports(inst_id)):
            raise Invalid(reason="security groups apply to NICs on the vmops network; "
                          "this server has none")
        network.set_membership(self.store.instance(inst_id), arg["name"], member)

    def server_action(self, req: Request) -> Response:
        action, arg = parse.one_action(req.json())
        inst = self.compute.instance(req.params["id"])
        if action in ("addSecurityGroup", "removeSecurityGroup"):
            self._group_membership(inst.id, arg, action == "addSecurityGroup")
            return Response(202)
        if action == "os-getConsoleOutput":
            data = self.compute.console_log(inst.id, tail_lines=parse.console_length(arg))
            return Response(200, {"output": data.decode("utf-8", errors="replace")})
        handler = self._actions().get(action)
        if handler is None:
            raise Invalid(reason=f"unknown action {action!r}; known: "
                          f"{', '.join(sorted(self._actions()))}, os-getConsoleOutput")
        wait = req.arg("vmops:wait")
        seconds = parse.wait_seconds(wait) if wait is not None else None
        # An action with an answer of its own returns it (headers and body).
        answer = handler(inst.id, arg, req.base_url) or Response(202)
        # vmops' own: answer when the action has ended, so a client need not poll.
        if seconds is None or not self.compute.wait_idle(inst.id, seconds):
            return answer
        inst = self.compute.instance(inst.id)
        return Response(200, {"server": views.server(inst, req.base_url,
                                                     net=self._network_view(inst))},
                        headers=answer.headers)

    def _actions(self) -> dict[str, Callable[[str, Any, str], Response | None]]:
        """Each action's handler: (server id, argument, base URL) -> its own
        answer, or None for a bare 202."""
        c = self.compute

        def simple(action: str, verb: Callable[[str], Any]) -> Callable[[str, Any, str], None]:
            def run(ref: str, arg: Any, _base: str) -> None:
                parse.no_argument(action, arg)
                verb(ref)
            return run

        return {
            "pause": simple("pause", c.pause),
            "unpause": simple("unpause", c.unpause),
            "suspend": simple("suspend", c.suspend),
            "resume": simple("resume", c.resume),
            "os-start": simple("os-start", c.start),
            "vmops:rebuildConfigDrive": simple("vmops:rebuildConfigDrive",
                                               c.rebuild_config_drive),
            "os-stop": self._stop,
            "reboot": self._reboot,
            "createImage": self._create_image,
            "rebuild": self._rebuild,
        }

    def _stop(self, ref: str, arg: Any, _base: str) -> None:
        timeout, hard = parse.stop_options(arg)
        self.compute.stop(ref, timeout=timeout, hard=hard)

    def _reboot(self, ref: str, arg: Any, _base: str) -> None:
        self.compute.reboot(ref, hard=parse.reboot_hard(arg))

    def _create_image(self, ref: str, arg: Any, base: str) -> Response:
        """Nova 2.1: 202, no body, the new image's URL in Location."""
        image = self.compute.snapshot(ref, parse.create_image_name(arg), self.catalog.cache)
        return Response(202, headers={"Location": views.link(base, "images", image.id)[0]["href"]})

    def _rebuild(self, ref: str, arg: Any, _base: str) -> None:
        """202 without a body (Nova sends the server too; clients read it back)."""
        try:
            self.compute.rebuild(ref, parse.rebuild_image(arg))
        except ImageNotFound as exc:
            raise Invalid(reason=exc.message) from None  # Nova: 400 for a bad imageRef

    def console_log(self, req: Request) -> Response:
        """vmops' own: the raw bytes, optionally the last N lines, optionally followed."""
        inst = self.compute.instance(req.params["id"])
        tail = req.arg("tail")
        data = self.compute.console_log(
            inst.id, tail_lines=parse.count_arg(tail, "tail") if tail else None)
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
        flavors = _page(self.store.flavors(), req, lambda f: f.id)
        return Response(200, {"flavors": [views.flavor_brief(f, req.base_url)
                                          for f in flavors]})

    def list_flavors_detail(self, req: Request) -> Response:
        flavors = _page(self.store.flavors(), req, lambda f: f.id)
        return Response(200, {"flavors": [views.flavor(f, req.base_url) for f in flavors]})

    def show_flavor(self, req: Request) -> Response:
        flavor = self.store.flavor(req.params["id"])
        return Response(200, {"flavor": views.flavor(flavor, req.base_url)})

    def flavor_extra_specs(self, req: Request) -> Response:
        """vmops flavors have no extra specs; clients ask when showing one."""
        self.store.flavor(req.params["id"])
        return Response(200, {"extra_specs": {}})

    def create_flavor(self, req: Request) -> Response:
        f = parse.section(req.json(), "flavor")
        parse.no_unknown(f, {"name", "ram", "vcpus", "disk", "OS-FLV-EXT-DATA:ephemeral",
                             "id", "swap", "rxtx_factor", "os-flavor-access:is_public"},
                         "flavor")
        _refuse_unsupported(f, {"swap": (0, ""), "rxtx_factor": (1, 1.0),
                                "os-flavor-access:is_public": (True,)})
        flavor = self.catalog.create_flavor(
            parse.field(f, "name", str, required=True),
            parse.field(f, "ram", int, required=True),
            parse.field(f, "vcpus", int, required=True),
            parse.field(f, "disk", int, required=True),
            parse.field(f, "OS-FLV-EXT-DATA:ephemeral", int, default=0),
            parse.field(f, "id", str))
        return Response(200, {"flavor": views.flavor(flavor, req.base_url)})

    def delete_flavor(self, req: Request) -> Response:
        self.catalog.delete_flavor(req.params["id"])
        return Response(202)

    # -- images (Nova's image proxy shapes, and vmops' import) ---------------
    def _image_view(self, image: Any, base: str) -> dict[str, Any]:
        return views.image(image, self.store.instances_using("image_id", image.id), base)

    def list_images(self, req: Request) -> Response:
        images = _page(self.store.images(), req, lambda i: i.id)
        return Response(200, {"images": [
            {"id": i.id, "name": i.name, "links": views.link(req.base_url, "images", i.id)}
            for i in images]})

    def list_images_detail(self, req: Request) -> Response:
        images = _page(self.store.images(), req, lambda i: i.id)
        return Response(200, {"images": [self._image_view(i, req.base_url) for i in images]})

    def show_image(self, req: Request) -> Response:
        image = self.store.image(req.params["id"])
        return Response(200, {"image": self._image_view(image, req.base_url)})

    def import_image(self, req: Request) -> Response:
        """vmops' own: {"image": {"name", "source", "checksum"?, "disk_format"?,
        "login_user"?}}."""
        i = parse.section(req.json(), "image")
        parse.no_unknown(i, {"name", "source", "checksum", "disk_format", "login_user"},
                         "image")
        image = self.catalog.import_image(
            parse.field(i, "name", str, required=True),
            parse.field(i, "source", str, required=True),
            parse.field(i, "checksum", str), parse.field(i, "disk_format", str),
            any_host_path=req.via_unix_socket,  # a TCP client: image_import_dirs only
            login_user=parse.field(i, "login_user", str, default=""),
            host_paths=req.context.is_admin, owner=req.context.project_id)
        return Response(202, {"image": self._image_view(image, req.base_url)})

    def delete_image(self, req: Request) -> Response:
        self.catalog.delete_image(req.params["id"])
        return Response(204)

    def prune_images(self, req: Request) -> Response:
        body = req.json()
        body = {} if body is None else body
        if not isinstance(body, dict):
            raise Invalid(reason="the request body must be a JSON object")
        parse.no_unknown(body, {"older_than"}, "the request body")
        age = parse.seconds(body.get("older_than", self.compute.settings.image_cache_max_age),
                            "older_than")
        return Response(200, {"removed": self.catalog.prune_images(age)})

    # -- keypairs ------------------------------------------------------------
    def list_keypairs(self, req: Request) -> Response:
        return Response(200, {"keypairs": [{"keypair": views.keypair(k)}
                                           for k in self.store.keypairs()]})

    def show_keypair(self, req: Request) -> Response:
        keypair = self.store.keypair(req.params["id"])
        return Response(200, {"keypair": views.keypair_detail(keypair)})

    def add_keypair(self, req: Request) -> Response:
        k = parse.section(req.json(), "keypair")
        parse.no_unknown(k, {"name", "public_key", "type"}, "keypair")
        if parse.field(k, "type", str, default="ssh") != "ssh":
            raise Invalid(reason="vmops keeps SSH keys only: type must be 'ssh'")
        public_key = parse.field(k, "public_key", str)
        if public_key is None:
            raise Invalid(reason="vmops only imports keys: give 'public_key'")
        keypair = self.catalog.add_keypair(parse.field(k, "name", str, required=True),
                                           public_key)
        return Response(200, {"keypair": views.keypair(keypair)})

    def delete_keypair(self, req: Request) -> Response:
        self.store.delete_keypair(req.params["id"])
        return Response(202)

    # -- host ----------------------------------------------------------------
    def host_checks(self, req: Request) -> Response:
        return Response(200, {"checks": self.doctor()})


def _name_pattern(text: str) -> Any:
    """Nova's ``name`` filter, a regular expression searched in each name,
    compiled by RE2: time linear in the name whatever the pattern (Python's
    ``re`` backtracks: ``^a{3}(a+)+$`` took seconds, holding the GIL, so the
    whole service). RE2 has no backreferences or lookaround."""
    if len(text) > MAX_NAME_FILTER_CHARS:
        raise Invalid(reason=f"the name filter is over {MAX_NAME_FILTER_CHARS} characters")
    try:
        return re2.compile(text, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and \
            isinstance(exc.args[0], bytes) else str(exc)
        raise Invalid(reason=f"the name filter is not a regular expression RE2 accepts "
                      f"({reason}); backreferences and lookaround are not supported") from None


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is the client's error, answered 400
_RE2_OPTIONS.max_mem = 1 << 20  # a compiled filter is small; a huge one is refused


def _page(items: list[Any], req: Request, key: Callable[[Any], str]) -> list[Any]:
    """Nova's marker/limit paging: the items after ``marker``, at most ``limit``."""
    marker = req.arg("marker")
    if marker:
        ids = [key(i) for i in items]
        if marker not in ids:
            raise Invalid(reason=f"marker {marker!r} not found")
        items = items[ids.index(marker) + 1:]
    limit = req.arg("limit")
    if limit is not None:
        items = items[:parse.count_arg(limit, "limit")]
    return items


def _refuse_unsupported(obj: dict[str, Any], only: dict[str, tuple[Any, ...]]) -> None:
    for name, allowed in only.items():
        if name in obj and obj[name] is not None and obj[name] not in allowed:
            raise Invalid(reason=f"vmops does not support {name}={obj[name]!r}; "
                          f"allowed: {', '.join(map(repr, allowed))}")
