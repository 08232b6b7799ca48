"""Request handlers: parse and check the body, call compute/, shape the answer.

The compute API (Nova v2.1 shapes) lives under ``/v2.1``; the minimal image
service under ``/image`` (``image_service.py``); version documents in
``discovery.py``; ``/metrics`` and ``/openapi.json`` at the root.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import re2

from vmops import console
from vmops.api import (
    backup_actions,
    change_actions,
    discovery,
    flavor_access_api,
    host_api,
    image_service,
    keypairs,
    network_api,
    nova_admin,
    openapi,
    parse,
    quota_api,
    scope,
    serial_console_api,
    server_extras,
    server_groups_api,
    views,
    volume_api,
)
from vmops.api.keystone import add_routes as add_identity_routes
from vmops.api.metrics import Metrics
from vmops.api.policy import enforce
from vmops.api.security_groups_proxy import visible_group
from vmops.api.server import Context, Request, Response, Router
from vmops.compute import flavor_access
from vmops.compute.catalog import Catalog
from vmops.compute.manager import Compute, SpawnRequest
from vmops.compute.names import check_resource_name
from vmops.errors import (
    Conflict,
    FlavorNotFound,
    Forbidden,
    ImageNotFound,
    Invalid,
    KeypairNotFound,
    NotFound,
    SecurityGroupNotFound,
    VmopsError,
    VolumeNotFound,
)
from vmops.identity import Identity
from vmops.store import Image, Instance, Port
from vmops.volumes.manager import Volumes
from vmops.volumes.records import VolumeRecords

P = views.API_PREFIX
MAX_NAME_FILTER_CHARS = 255
# What Nova drops from console output: control characters but tab and newline.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f]")


class Routes:
    def __init__(self, compute: Compute, catalog: Catalog,
                 doctor: Callable[[], list[dict[str, Any]]],
                 identity: Identity | None = None, volumes: Volumes | None = None) -> None:
        """``identity`` and ``volumes``: the engine's (vmops.service.build);
        made over ``compute`` when not given (tests)."""
        self.compute = compute
        self.identity = identity or Identity(compute.store,
                                             compute.settings.identity_token_ttl)
        self.volumes = volumes or Volumes(compute)
        self.catalog = catalog
        self.store = compute.store
        self.doctor = doctor
        self.metrics = Metrics(compute)
        self.server_list = views.ServerList()
        self.serial_consoles = serial_console_api.SerialConsoles(compute)

    def router(self) -> Router:
        r = Router(authorize=enforce)  # vmops/api/policy.py
        r.add("GET", "/", discovery.compute_versions, public=True)
        r.add("GET", P, discovery.compute_current, public=True)
        r.add("GET", discovery.LEGACY_PREFIX, discovery.legacy_compute_current, public=True)
        self._server_routes(r)
        self._catalog_routes(r)
        image_service.add_routes(r, self.catalog)
        network_api.add_routes(r, self.compute)
        volume_api.add_routes(r, self.volumes)  # Cinder v3 subset, os-volume_attachments
        host_api.add_routes(r, self.compute)
        quota_api.add_routes(r, self.compute)
        server_extras.add_routes(r, self.compute)
        self.serial_consoles.add_routes(r)  # remote-consoles, the console WebSocket
        server_groups_api.add_routes(r, self.compute)
        nova_admin.add_routes(r, self.compute)  # flavor access, aggregates, diagnostics...
        add_identity_routes(r, self.identity)
        r.add("GET", f"{P}/os-vmops/doctor", self.host_checks)
        r.add("GET", "/metrics", self.metrics.scrape)
        r.add("GET", "/openapi.json", openapi.serve)
        return r

    def _server_routes(self, r: Router) -> None:
        r.add("GET", f"{P}/servers", self.list_servers)
        r.add("GET", f"{P}/servers/detail", self.list_servers_detail)
        r.add("POST", f"{P}/servers", self.create_server)
        r.add("GET", f"{P}/servers/{{id}}", self.show_server)
        r.add("PUT", f"{P}/servers/{{id}}", self.update_server)
        r.add("DELETE", f"{P}/servers/{{id}}", self.delete_server)
        r.add("POST", f"{P}/servers/{{id}}/action", self.server_action)
        r.add("GET", f"{P}/servers/{{id}}/console-log", self.console_log)
        r.add("GET", f"{P}/servers/{{id}}/os-security-groups", self.server_groups)
        r.add("GET", f"{P}/servers/{{id}}/tags", self.list_tags)
        r.add("PUT", f"{P}/servers/{{id}}/tags", self.replace_tags)
        r.add("DELETE", f"{P}/servers/{{id}}/tags", self.delete_tags)
        r.add("GET", f"{P}/servers/{{id}}/tags/{{tag}}", self.check_tag)
        r.add("PUT", f"{P}/servers/{{id}}/tags/{{tag}}", self.add_tag)
        r.add("DELETE", f"{P}/servers/{{id}}/tags/{{tag}}", self.delete_tag)

    def _catalog_routes(self, r: Router) -> None:
        r.add("GET", f"{P}/flavors", self.list_flavors)
        r.add("GET", f"{P}/flavors/detail", self.list_flavors_detail)
        r.add("POST", f"{P}/flavors", self.create_flavor)
        r.add("GET", f"{P}/flavors/{{id}}", self.show_flavor)
        r.add("DELETE", f"{P}/flavors/{{id}}", self.delete_flavor)
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
    def instance(self, req: Request, ref: str | None = None) -> Instance:
        """The server ``ref`` (default: the path's id) names, if the caller
        may see it (:func:`scope.instance`)."""
        return scope.instance(self.store, req, ref)

    def _servers(self, req: Request) -> list[Instance]:
        """Nova's list: the caller's project's servers (an admin's with
        all_tenants: everyone's, or project_id's), newest first; filters name
        and ip (regular expressions), status, image, flavor, reservation_id,
        changes-since (changed at or after); then marker and limit.
        Other query parameters are ignored, as Nova does below 2.75."""
        insts = self._scoped(req, self.store.instances())
        name = req.arg("name")
        if name:
            pattern = _name_pattern(name)
            insts = [i for i in insts if pattern.search(i.name)]
        status = req.arg("status")
        if status:
            if status.upper() not in views.STATUSES:
                if req.at_least("2.38"):
                    raise Invalid(reason=f"invalid status {status!r}; one of "
                                  f"{', '.join(views.STATUSES)}")
                return []
            insts = [i for i in insts if views.server_status(i) == status.upper()]
        for arg, attr in (("image", "image_id"), ("flavor", "flavor_id"),
                          ("reservation_id", "reservation_id")):
            wanted = req.arg(arg)
            if wanted:
                insts = [i for i in insts if getattr(i, attr) == wanted]
        if req.at_least("2.26"):
            insts = _tag_filters(insts, req)
        host = req.arg("host")  # admins: the compute host's name (this host's)
        if host and req.context.is_admin and host != views.host_name():
            return []
        since = req.arg("changes-since")
        if since:
            after = parse.timestamp(since, "changes-since")
            insts = [i for i in insts if i.updated_at >= after]
        address = req.arg("ip")
        if address:
            pattern = _name_pattern(address)
            ips = {p.instance_id for p in self.store.ports() if p.ip and pattern.search(p.ip)}
            insts = [i for i in insts if i.id in ips]
        insts.sort(key=lambda i: (i.created_at, i.id), reverse=True)
        return _page(insts, req, lambda i: i.id)

    def _scoped(self, req: Request, insts: list[Instance]) -> list[Instance]:
        ctx = req.context
        everyone = req.arg("all_tenants") or ""
        if req.given("all_tenants") and (everyone == "" or parse.boolean(everyone,
                                                                         "all_tenants")):
            if not ctx.is_admin:
                raise Forbidden(reason="only an admin may list all projects' servers "
                                "(all_tenants)")
            project = req.arg("project_id") or req.arg("tenant_id")
            return [i for i in insts if not project or i.project_id == project]
        if ctx.project_id:
            return [i for i in insts if i.project_id == ctx.project_id]
        return insts if ctx.is_admin else []

    def list_servers(self, req: Request) -> Response:
        base = req.base_url
        return Response(200, {"servers": [views.server_brief(i, base)
                                          for i in self._servers(req)]})

    def list_servers_detail(self, req: Request) -> Response:
        insts = self._servers(req)
        existing = {i.id for i in self.store.instances()}  # read again only if changed
        return Response(200, self.server_list.encode(insts, req.base_url, views.View.of(req),
                                                     existing, self._network_views()),
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
                             names=self._group_names(),
                             volumes=VolumeRecords(self.store).volumes_attached())
            return self._net(inst, cache["ports"].get(inst.id, []),
                             cache["members"].get(inst.id, []), cache["names"],
                             cache["volumes"].get(inst.id, []))

        return net_of

    def _network_view(self, inst: Instance) -> views.ServerNetwork:
        """One server's: its own rows only, so a show costs the same however
        many servers there are (the list reads everyone's at once)."""
        group_ids = self.store.instance_group_ids(inst.id).get(inst.id, [])
        return self._net(inst, self.store.ports(inst.id), group_ids,
                         self._group_names() if group_ids else {},
                         [a.volume_id for a in VolumeRecords(self.store).attachments(inst.id)])

    def _group_names(self) -> dict[str, str]:
        return {g.id: g.name for g in self.store.security_groups()}

    def _net(self, inst: Instance, ports: list[Port], group_ids: list[str],
             names: dict[str, str], volumes: list[str]) -> views.ServerNetwork:
        nics = ports or self.compute.nics(inst)
        groups = [names.get(g, g) for g in group_ids]
        return views.ServerNetwork(tuple(nics), tuple(sorted(groups)), tuple(volumes))

    def create_server(self, req: Request) -> Response:
        """Nova's create: max_count servers named name-1, name-2, ... when
        more than one (at least min_count, or none: those made are removed);
        the reply is the first's, or the reservation id."""
        create = parse.spawn_request(req.json(), req.microversion)
        wait = req.arg("vmops:wait")
        seconds = parse.wait_seconds(wait) if wait is not None else None
        if seconds is not None and create.return_reservation_id:
            raise Invalid(reason="vmops:wait answers with the server; it cannot be used "
                          "with return_reservation_id")
        ctx = req.context
        spawn = dataclasses.replace(create.spawn, project_id=ctx.project_id,
                                    user_id=ctx.user_id,
                                    reservation_id=f"r-{secrets.token_hex(4)}")
        spawn = server_groups_api.with_scheduler_hint(self.compute, req, spawn)
        if spawn.image:  # a boot volume's size, not the flavor's disk, must fit the image
            self._check_image_visible(spawn.image, ctx, spawn.flavor,
                                      volume_backed=spawn.boot_volume is not None)
        for name in spawn.security_groups:  # 400 as Nova's, for one not there for them too
            try:
                if visible_group(self.store.security_group(name), req):
                    continue
            except SecurityGroupNotFound:
                pass
            raise Invalid(reason=f"Security group {name} not found.")
        if spawn.key_name is not None:
            try:
                self.store.keypair(spawn.key_name, ctx.user_id)
            except KeypairNotFound:
                raise Invalid(reason=f"invalid key_name {spawn.key_name!r}: no such keypair "
                              "(add it with POST /os-keypairs)") from None
        password = spawn.admin_password
        if password is None and self.compute.settings.enable_instance_password:
            password = secrets.token_urlsafe(9)  # Nova's 12 characters
        spawn = dataclasses.replace(spawn, admin_password=password)
        made = self._spawn_many(spawn, create.min_count, create.max_count)
        if create.return_reservation_id:
            return Response(202, {"reservation_id": spawn.reservation_id})
        shown = password if self.compute.settings.enable_instance_password else None
        location = {"Location": views.link(req.base_url, "servers", made[0].id)[0]["href"]}
        # vmops' own: answer once every server made has finished building
        # (ACTIVE, SHUTOFF or ERROR), so a client need not poll.
        if seconds is not None and self._built(made, seconds):
            try:
                inst = self.compute.instance(made[0].id)
            except NotFound:
                inst = None  # deleted while it built: the answer without the wait
            if inst is not None:
                server = views.server(inst, req.base_url, views.View.of(req),
                                      net=self._network_view(inst))
                if shown is not None:
                    server["adminPass"] = shown
                return Response(200, {"server": server}, headers=location)
        created = views.server_created(made[0], req.base_url, self._network_view(made[0]),
                                       shown)
        return Response(202, {"server": created}, headers=location)

    def _built(self, made: list[Instance], seconds: float) -> bool:
        """Wait up to ``seconds`` in all for every server in ``made`` to have
        finished building; False if one has not."""
        deadline = time.monotonic() + seconds
        return all(self.compute.wait_idle(inst.id, max(0.0, deadline - time.monotonic()))
                   for inst in made)

    def _spawn_many(self, spawn: SpawnRequest, least: int, most: int) -> list[Instance]:
        made: list[Instance] = []
        for index in range(most):
            one = spawn if most == 1 else dataclasses.replace(
                spawn, name=f"{spawn.name}-{index + 1}", launch_index=index)
            try:
                made.append(self._spawn_one(one))
            except VmopsError:
                if len(made) >= least and made:
                    break  # Nova makes as many as it can, at least min_count
                for inst in made:
                    self.compute.delete(inst.id)
                raise
        return made

    def _spawn_one(self, spawn: SpawnRequest) -> Instance:
        try:
            return self.compute.create(spawn)
        except (ImageNotFound, FlavorNotFound, SecurityGroupNotFound, VolumeNotFound) as exc:
            raise Invalid(reason=exc.message) from None  # Nova: 400 for a bad ref

    def show_server(self, req: Request) -> Response:
        inst = self.instance(req)
        view = views.View.of(req)
        live = self.compute.live_info(inst) if view.extra else None
        timings = self.compute.last_timings.get(inst.id) if view.extra else None
        return Response(200, {"server": views.server(inst, req.base_url, view, live,
                                                     self._network_view(inst),
                                                     timings=timings)})

    def update_server(self, req: Request) -> Response:
        """PUT: rename, access addresses, description (2.19). The guest's
        hostname stays the one it was given at spawn, as with Nova."""
        changes = parse.server_update(req.json(), req.microversion)
        inst = self.instance(req)
        if changes:
            inst = self.store.update_instance(inst, **changes)
        return Response(200, {"server": views.server(inst, req.base_url, views.View.of(req),
                                                     net=self._network_view(inst),
                                                     full=False)})

    def delete_server(self, req: Request) -> Response:
        """Allowed while the server builds: the build stops and it goes."""
        inst = self.instance(req)
        _check_unlocked(req.context, inst)
        self.compute.delete(inst.id)
        return Response(204)

    def server_groups(self, req: Request) -> Response:
        """Compute 2.1's view of a server's groups (ingress rules only, as Nova's)."""
        inst = self.instance(req)
        ids = self.store.instance_group_ids(inst.id).get(inst.id, [])
        groups = [self.store.security_group(g) for g in ids]
        return Response(200, {"security_groups": [
            {"id": g.id, "name": g.name, "description": g.description,
             "tenant_id": g.project_id or inst.project_id, "rules": []} for g in groups]})

    def _group_membership(self, req: Request, inst_id: str, arg: Any, member: bool) -> None:
        if not isinstance(arg, dict) or set(arg) != {"name"} or not isinstance(arg["name"], str):
            raise Invalid(reason='the action takes {"name": "<security group>"}')
        # Another project's group is not there for this caller: joining it
        # would let this server in wherever that group's rules let members in.
        group = self.store.security_group(arg["name"])
        if not visible_group(group, req):
            raise SecurityGroupNotFound(group=arg["name"])
        network = self.compute.network
        if network is None or not any(p.ip for p in self.store.ports(inst_id)):
            raise Invalid(reason="security groups apply to NICs on the vmops network; "
                          "this server has none")
        network.set_membership(self.store.instance(inst_id), arg["name"], member)

    def server_action(self, req: Request) -> Response:
        action, arg = parse.one_action(req.json())
        inst = self.instance(req)
        if action in ("addSecurityGroup", "removeSecurityGroup"):
            self._group_membership(req, inst.id, arg, action == "addSecurityGroup")
            return Response(202)
        if action == "os-getConsoleOutput":
            return Response(200, {"output": self._console_output(inst.id, arg)})
        if action in ("lock", "unlock"):
            parse.no_argument(action, arg)
            self._lock(req.context, inst, action == "lock")
            return Response(202)
        handler = self._actions().get(action)
        if handler is None:
            raise Invalid(reason=f"unknown action {action!r}; known: "
                          f"{', '.join(sorted(self._actions()))}, lock, unlock, "
                          "os-getConsoleOutput")
        if action not in _NOT_LOCKED:
            _check_unlocked(req.context, inst)
        wait = req.arg("vmops:wait")
        seconds = parse.wait_seconds(wait) if wait is not None else None
        # An action with an answer of its own returns it (headers and body).
        # Waited, a quick verb runs in this thread (compute's waiting()).
        with self.compute.waiting(seconds) as waited:
            answer = handler(inst.id, arg, req) or Response(202)
        # vmops' own: answer when the action has ended, so a client need not poll.
        if waited is None:
            return answer
        # Run here, it has ended: what is left of the wait only covers
        # anything else the handler started (none of the quick verbs does).
        left = waited.deadline - time.monotonic() if waited.ran else waited.seconds
        if left < 0 or not self.compute.wait_idle(inst.id, left):
            return answer  # it outlasted the wait (run here), or is still running
        try:
            inst = self.compute.instance(inst.id)
        except NotFound:
            return answer  # deleted once the action ended: the answer without the wait
        server = views.server(inst, req.base_url, views.View.of(req),
                              net=self._network_view(inst))
        return Response(200, _with_own_answer({"server": server}, answer.body),
                        headers=answer.headers)

    def _lock(self, ctx: Context, inst: Instance, lock: bool) -> None:
        """Nova's lock: then only an admin may act on the server; a lock an
        admin set only an admin lifts."""
        if lock:
            if not inst.locked_by:
                self.store.update_instance(inst, locked_by="admin" if ctx.is_admin
                                           else "owner")
            return
        if inst.locked_by == "admin" and not ctx.is_admin:
            raise Forbidden(reason=f"server {inst.id} was locked by an admin; only an admin "
                            "may unlock it")
        if inst.locked_by:
            self.store.update_instance(inst, locked_by="")

    def _console_output(self, instance_id: str, arg: Any) -> str:
        """Nova's os-getConsoleOutput: control characters but tab and newline
        dropped (so lines end in "\n"), then the last ``length`` pieces of
        the text split at newlines (a log ending in a newline ends in an
        empty piece, as with Nova)."""
        length = parse.console_length(arg)
        if length == 0:
            return ""
        data = self.compute.console_log(
            instance_id, tail_lines=None if length is None else length + 1)
        text = _CONTROL.sub("", data.decode("utf-8", errors="replace"))
        return text if length is None else "\n".join(text.split("\n")[-length:])

    def _actions(self) -> dict[str, Callable[[str, Any, Request], Response | None]]:
        """Each action's handler: (server id, argument, request) -> its own
        answer, or None for a bare 202."""
        c = self.compute

        def simple(action: str, verb: Callable[[str], Any]) -> Callable[[str, Any, Request],
                                                                          None]:
            def run(ref: str, arg: Any, _req: Request) -> None:
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
            **backup_actions.handlers(c, self.catalog),  # os-resetState, createBackup, ...
            **change_actions.handlers(c),  # resize, rescue, trigger_crash_dump, ...
            **self.serial_consoles.action_handlers(),  # os-getSerialConsole (2.1-2.5)
        }

    def _stop(self, ref: str, arg: Any, _req: Request) -> None:
        timeout, hard = parse.stop_options(arg)
        self.compute.stop(ref, timeout=timeout, hard=hard)

    def _reboot(self, ref: str, arg: Any, _req: Request) -> None:
        self.compute.reboot(ref, hard=parse.reboot_hard(arg))

    def _create_image(self, ref: str, arg: Any, req: Request) -> Response:
        """Nova: 202, the new image's URL in Location; from 2.45 its id in
        the body instead."""
        name, properties = parse.create_image(arg)
        image = self.compute.snapshot(ref, name, self.catalog.cache, properties=properties,
                                      owner=req.context.project_id)
        if req.at_least("2.45"):
            return Response(202, {"image_id": image.id})
        return Response(202, headers={
            "Location": views.link(req.base_url, "images", image.id)[0]["href"]})

    def _check_image_visible(self, ref: str, ctx: Context, flavor_ref: str = "",
                             volume_backed: bool = False) -> None:
        """Another project's private image is no image to this caller: a
        server is never made from it (Nova: 400 for an imageRef not found).
        With a flavor: the image's min_ram and min_disk must fit in it (Nova's
        words; a flavor with no root disk takes the image's size; a boot
        volume's own size is held to min_disk instead of the flavor's disk)."""
        try:
            image = image_service.visible_image(self.store, ref, ctx)
        except ImageNotFound as exc:
            raise Invalid(reason=exc.message) from None
        if not flavor_ref:
            return
        try:
            flavor = flavor_access.visible_flavor(self.store, flavor_ref, ctx.project_id,
                                                  ctx.is_admin)
        except FlavorNotFound as exc:  # Nova: 400 for a flavorRef it cannot find
            raise Invalid(reason=exc.message) from None
        if int(image.extra.get("min_ram", 0)) > flavor.ram_mib:
            raise Invalid(reason="Flavor's memory is too small for requested image.")
        if not volume_backed and flavor.root_gb and \
                int(image.extra.get("min_disk", 0)) > flavor.root_gb:
            raise Invalid(reason=f"Flavor's disk is smaller than the minimum size specified "
                          f"in image metadata. Flavor disk is {flavor.root_gb << 30} bytes, "
                          f"minimum size is {int(image.extra['min_disk']) << 30} bytes.")

    def _rebuild(self, ref: str, arg: Any, req: Request) -> Response:
        """Nova: 202 with the server (and its new admin password)."""
        rebuild = parse.rebuild(arg, req.microversion)
        self._check_image_visible(rebuild.image, req.context)
        before = self.store.instance(ref)
        if rebuild.changes:
            self.store.update_instance(before, **rebuild.changes)
        try:
            inst = self.compute.rebuild(ref, rebuild.image)
        except ImageNotFound as exc:
            self._undo(before, rebuild.changes)
            raise Invalid(reason=exc.message) from None  # Nova: 400 for a bad imageRef
        except BaseException:
            self._undo(before, rebuild.changes)
            raise
        body = views.server(inst, req.base_url, views.View.of(req),
                            net=self._network_view(inst), full=False)
        image_id = self.store.image(rebuild.image).id  # Nova answers the new image
        body["image"] = {"id": image_id, "links": views.link(req.base_url, "images",
                                                            image_id)[1:]}
        if self.compute.settings.enable_instance_password:
            body["adminPass"] = rebuild.admin_password or secrets.token_urlsafe(9)
        return Response(202, {"server": body})

    def _undo(self, before: Instance, changes: dict[str, Any]) -> None:
        if changes:
            self.store.update_instance(before.id, **{k: getattr(before, k) for k in changes})

    def console_log(self, req: Request) -> Response:
        """vmops' own: the raw bytes, optionally the last N lines, optionally followed."""
        inst = self.instance(req)
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

    # -- server tags (2.26) ----------------------------------------------------
    def _tagged(self, req: Request) -> Instance:
        if not req.at_least("2.26"):
            raise NotFound(what=f"no resource at {req.path} (server tags need microversion "
                           "2.26 or later)")
        return self.instance(req)

    def list_tags(self, req: Request) -> Response:
        return Response(200, {"tags": list(self._tagged(req).tags)})

    def replace_tags(self, req: Request) -> Response:
        inst = self._tagged(req)
        body = req.json()
        if not isinstance(body, dict) or set(body) != {"tags"} \
                or not isinstance(body["tags"], list):
            raise Invalid(reason='the body is {"tags": ["tag", ...]}')
        inst = self.store.update_instance(inst, tags=parse.tags(body["tags"]))
        return Response(200, {"tags": list(inst.tags)})

    def delete_tags(self, req: Request) -> Response:
        self.store.update_instance(self._tagged(req), tags=())
        return Response(204)

    def check_tag(self, req: Request) -> Response:
        if req.params["tag"] not in self._tagged(req).tags:
            raise NotFound(what=f"tag {req.params['tag']!r} on this server")
        return Response(204)

    def add_tag(self, req: Request) -> Response:
        inst = self._tagged(req)
        tag = req.params["tag"]
        if tag in inst.tags:
            return Response(204)
        inst = self.store.update_instance(inst, tags=parse.tags([*inst.tags, tag]))
        return Response(201, headers={"Location": f"{req.base_url}{req.path}"})

    def delete_tag(self, req: Request) -> Response:
        inst = self._tagged(req)
        tag = req.params["tag"]
        if tag not in inst.tags:
            raise NotFound(what=f"tag {tag!r} on this server")
        self.store.update_instance(inst, tags=tuple(t for t in inst.tags if t != tag))
        return Response(204)

    # -- flavors -------------------------------------------------------------
    def _flavors(self, req: Request) -> list[Any]:
        """Nova's flavor list: filters minRam, minDisk and is_public (private
        flavors: flavor_access.listed), sorted by sort_key/sort_dir (default:
        id ascending), then marker and limit."""
        flavors = flavor_access_api.visible_flavors(self.store, req)
        for arg, attr in (("minRam", "ram_mib"), ("minDisk", "root_gb")):
            text = req.arg(arg)
            if text:
                least = parse.whole_number(text, arg)
                flavors = [f for f in flavors if getattr(f, attr) >= least]
        key = _FLAVOR_SORT_KEYS.get(req.arg("sort_key") or "flavorid")
        if key is None:
            raise Invalid(reason=f"invalid sort_key {req.arg('sort_key')!r}; one of "
                          f"{', '.join(sorted(_FLAVOR_SORT_KEYS))}")
        direction = (req.arg("sort_dir") or "asc").lower()
        if direction not in ("asc", "desc"):
            raise Invalid(reason=f"invalid sort_dir {direction!r}: asc or desc")
        flavors.sort(key=lambda f: getattr(f, key), reverse=direction == "desc")
        return _page(flavors, req, lambda f: f.id)

    def list_flavors(self, req: Request) -> Response:
        return Response(200, {"flavors": [views.flavor_brief(f, req.base_url)
                                          for f in self._flavors(req)]})

    def list_flavors_detail(self, req: Request) -> Response:
        view = views.View.of(req)
        return Response(200, {"flavors": [views.flavor(f, req.base_url, view)
                                          for f in self._flavors(req)]})

    def show_flavor(self, req: Request) -> Response:
        flavor = flavor_access.visible_flavor(self.store, req.params["id"],
                                              req.context.project_id, req.context.is_admin)
        return Response(200, {"flavor": views.flavor(flavor, req.base_url, views.View.of(req))})

    def create_flavor(self, req: Request) -> Response:
        """Nova's flavor create. Numbers may come as digit strings and
        is_public as any of Nova's boolean spellings (a private flavor:
        flavor_access_api); swap in MiB ("" or 0: none; the guest gets a swap
        disk), rxtx_factor recorded and shown (nothing here limits by it)."""
        f = parse.section(req.json(), "flavor")
        parse.no_unknown(f, {"name", "ram", "vcpus", "disk", "OS-FLV-EXT-DATA:ephemeral",
                             "id", "swap", "rxtx_factor", "os-flavor-access:is_public"},
                         "flavor")
        swap = f.get("swap")
        swap_mb = 0 if swap in (None, "") else parse.whole_number(swap, "swap")
        public = parse.boolean(f.get("os-flavor-access:is_public", True),
                               "os-flavor-access:is_public")
        rxtx = parse.field(f, "rxtx_factor", (int, float), default=1.0)
        if not 0 < rxtx <= MAX_RXTX_FACTOR:
            raise Invalid(reason=f"rxtx_factor must be above 0 and at most {MAX_RXTX_FACTOR:g}")
        flavor_id = f.get("id")
        if isinstance(flavor_id, int) and not isinstance(flavor_id, bool):
            flavor_id = str(flavor_id)
        flavor = self.catalog.create_flavor(
            parse.field(f, "name", str, required=True),
            parse.whole_number(parse.field(f, "ram", (int, str), required=True), "ram", 1),
            parse.whole_number(parse.field(f, "vcpus", (int, str), required=True), "vcpus", 1),
            parse.whole_number(parse.field(f, "disk", (int, str), required=True), "disk"),
            parse.whole_number(f.get("OS-FLV-EXT-DATA:ephemeral") or 0,
                               "OS-FLV-EXT-DATA:ephemeral"),
            parse.field({"id": flavor_id}, "id", str), is_public=public, swap_mb=swap_mb,
            rxtx_factor=float(rxtx))
        return Response(200, {"flavor": views.flavor(flavor, req.base_url, views.View.of(req))})

    def delete_flavor(self, req: Request) -> Response:
        self.catalog.delete_flavor(req.params["id"])
        return Response(202)

    # -- images (Nova's image proxy shapes, and vmops' import) ---------------
    def _images(self, req: Request) -> list[Any]:
        """The images the caller may use: public ones and their project's
        (an admin: all). Nova's proxy is gone from microversion 2.36."""
        if req.at_least("2.36"):
            raise NotFound(what=f"no resource at {req.path} (the image proxy API ends at "
                           "microversion 2.35; use the image service)")
        ctx = req.context
        images = [i for i in self.store.images()
                  if ctx.is_admin or i.visibility == "public" or i.owner == ctx.project_id]
        return _page(_image_filters(images, req), req, lambda i: i.id)

    def _image_view(self, image: Any, req: Request) -> dict[str, Any]:
        return views.image(image, self.store.instances_using("image_id", image.id),
                           req.base_url, views.View.of(req))

    def list_images(self, req: Request) -> Response:
        return Response(200, {"images": [views.image_brief(i, req.base_url)
                                         for i in self._images(req)]})

    def list_images_detail(self, req: Request) -> Response:
        return Response(200, {"images": [self._image_view(i, req) for i in self._images(req)]})

    def show_image(self, req: Request) -> Response:
        if req.at_least("2.36"):
            raise NotFound(what=f"no resource at {req.path}")
        image = self.store.image(req.params["id"])
        ctx = req.context
        if not (ctx.is_admin or image.visibility == "public" or image.owner == ctx.project_id):
            raise ImageNotFound(image=req.params["id"])
        return Response(200, {"image": self._image_view(image, req)})

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
        return Response(202, {"image": self._image_view(image, req)})

    def delete_image(self, req: Request) -> Response:
        """Only the image's project (or an admin) deletes it: 404 for an image
        the caller cannot see, 403 for one it sees but does not own."""
        ctx = req.context
        image = image_service.visible_image(self.store, req.params["id"], ctx)
        image_service.owned_image(self.store, image.id, ctx)
        self.catalog.delete_image(image.id, None if ctx.is_admin else ctx.project_id)
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
    def _key_owner(self, req: Request) -> str:
        """Whose keypairs: the caller's; an admin may name a user (2.10)."""
        user = req.arg("user_id")
        if user is not None and req.at_least("2.10"):
            if not req.context.is_admin and user != req.context.user_id:
                raise Forbidden(reason="only an admin may name another user's keypairs")
            return user
        return req.context.user_id

    def list_keypairs(self, req: Request) -> Response:
        view = views.View.of(req)
        keys = self.store.keypairs(self._key_owner(req))
        if req.at_least("2.35"):
            keys = _page(keys, req, lambda k: k.name)
        return Response(200, {"keypairs": [{"keypair": views.keypair(k, view)} for k in keys]})

    def show_keypair(self, req: Request) -> Response:
        keypair = self.store.keypair(req.params["id"], self._key_owner(req))
        return Response(200, {"keypair": views.keypair_detail(keypair, views.View.of(req))})

    def add_keypair(self, req: Request) -> Response:
        """Import a public key, or (none given) make a pair and answer the
        private key once. 201 from 2.2, with the type (ssh or x509)."""
        k = parse.section(req.json(), "keypair")
        allowed = {"name", "public_key"} | ({"type"} if req.at_least("2.2") else set()) \
            | ({"user_id"} if req.at_least("2.10") else set())
        parse.no_unknown(k, allowed, "keypair")
        kind = parse.field(k, "type", str, default="ssh")
        if kind not in ("ssh", "x509"):
            raise Invalid(reason=f"keypair type must be ssh or x509, not {kind!r}")
        owner = parse.field(k, "user_id", str, default=req.context.user_id)
        if owner != req.context.user_id and not req.context.is_admin:
            raise Forbidden(reason="only an admin may add a keypair for another user")
        name = check_resource_name(parse.field(k, "name", str, required=True), "keypair")
        public_key = parse.field(k, "public_key", str)
        private_key = None
        if public_key is None:
            private_key, public_key = keypairs.generate_x509(name) if kind == "x509" \
                else keypairs.generate()
        fingerprint = None
        if kind == "x509":
            fingerprint = keypairs.x509_fingerprint(public_key)
        else:
            keypairs.check_ssh_public_key(public_key)
        with self.compute.quotas.lock:  # the key_pairs quota: checked and used at once
            self.compute.quotas.check_key_pairs(req.context.project_id, owner)
            keypair = self.catalog.add_keypair(name, public_key, user_id=owner,
                                               key_type=kind, fingerprint=fingerprint)
        body = views.keypair_created(keypair, views.View.of(req), private_key)
        return Response(201 if req.at_least("2.2") else 200, {"keypair": body})

    def delete_keypair(self, req: Request) -> Response:
        self.store.delete_keypair(req.params["id"], self._key_owner(req))
        return Response(204 if req.at_least("2.2") else 202)

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


def _tag_filters(insts: list[Instance], req: Request) -> list[Instance]:
    """Nova's tag filters (2.26), each a comma-separated list: tags (has all),
    tags-any (has one), not-tags (lacks one of them), not-tags-any (has none)."""
    tests: dict[str, Callable[[set[str], set[str]], bool]] = {
        "tags": lambda want, has: want <= has, "tags-any": lambda want, has: bool(want & has),
        "not-tags": lambda want, has: not want <= has,
        "not-tags-any": lambda want, has: not want & has}
    for arg, test in tests.items():
        text = req.arg(arg)
        if text:
            want = set(text.split(","))
            insts = [i for i in insts if test(want, set(i.tags))]
    return insts


def _image_filters(images: list[Image], req: Request) -> list[Image]:
    """The image proxy's filters, as Nova passes them to Glance: name,
    status, server (the instance a snapshot is of: its id or URL), type (the
    image_type property: snapshot, backup), changes-since."""
    name, status, server, kind = (req.arg(a) for a in ("name", "status", "server", "type"))
    if name:
        images = [i for i in images if i.name == name]
    if status:
        images = [i for i in images if views.IMAGE_STATUS[i.status] == status.upper()]
    if server:
        server_id = server.rstrip("/").rsplit("/", 1)[-1]
        images = [i for i in images if i.instance_uuid == server_id]
    if kind:
        images = [i for i in images if views.image_properties(i).get("image_type") == kind]
    since = req.arg("changes-since")
    if since:
        after = parse.timestamp(since, "changes-since")
        images = [i for i in images if i.updated_at >= after]
    return images


# Actions Nova allows on a locked server (its lock guards the others).
_NOT_LOCKED = {"createImage", "addSecurityGroup", "removeSecurityGroup",
               "os-getSerialConsole"}


def _with_own_answer(waited: dict[str, Any], own: Any) -> dict[str, Any]:
    """A waited action's answer: the server, and what the action's own
    answer said that the server view does not (rescue's ``adminPass``,
    createImage's ``image_id`` from 2.45, rebuild's ``adminPass``), which
    the client has no other way to learn."""
    if not isinstance(own, dict):
        return waited
    for key, value in own.items():
        if key != "server":
            waited[key] = value
    given = own.get("server")
    if isinstance(given, dict) and "adminPass" in given:
        waited["server"]["adminPass"] = given["adminPass"]
    return waited


def _check_unlocked(ctx: Context, inst: Instance) -> None:
    """Nova's InstanceIsLocked: a locked server is changed by admins only."""
    if inst.locked_by and not ctx.is_admin:
        raise Conflict(reason=f"Instance {inst.id} is locked")


# Nova's bound on a flavor's rxtx_factor (the largest float its database keeps).
MAX_RXTX_FACTOR = 3.40282e38

# Nova's flavor sort keys, as vmops' flavor fields.
_FLAVOR_SORT_KEYS = {"flavorid": "id", "id": "id", "name": "name", "memory_mb": "ram_mib",
                     "vcpus": "vcpus", "root_gb": "root_gb", "ephemeral_gb": "ephemeral_gb",
                     "created_at": "created_at"}
