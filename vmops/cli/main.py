"""The vmops command line: a client of the service, nothing else.

Tables for people by default, ``--json`` for scripts, a non-zero exit
status on any error.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import getpass
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from vmops import config, socket_paths
from vmops.cli import identity as identity_cli
from vmops.cli import network as network_cli
from vmops.cli import volume as volume_cli
from vmops.cli.client import Client
from vmops.cli.output import (
    human_bytes,
    print_error,
    print_json,
    print_kv,
    print_table,
    progress_bar,
)
from vmops.compute.states import Status
from vmops.errors import VmopsError

WAIT_TIMEOUT_S = 900.0
SPAWN_QUICK_WAIT_S = 2.0


def _client(args: argparse.Namespace, autostart: bool = True) -> Client:
    return Client(args.state_dir, autostart=autostart)


def _server_ref(client: Client, ref: str) -> dict[str, Any]:
    server: dict[str, Any] = client.get(f"/servers/{ref}")["server"]
    return server


def _wait_server(client: Client, server_id: str, until: str, quiet: bool) -> dict[str, Any]:
    """Poll until the server leaves BUILD (spawn) or its task ends (actions)."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    shown = None
    delay = 0.01  # quick operations (pause: ~10 ms) should return about as fast
    while True:
        server = _server_ref(client, server_id)
        task = server["OS-EXT-STS:task_state"]
        done = server["status"] != Status.BUILD if until == "built" else task is None
        if done:
            if not quiet and shown:
                print(file=sys.stderr)
            return server
        if not quiet and task != shown:
            print(f"{'' if shown is None else chr(10)}{server['name']}: {task}...",
                  end="", file=sys.stderr, flush=True)
            shown = task
        if time.monotonic() > deadline:
            raise VmopsError(f"gave up waiting for {server['name']} after {WAIT_TIMEOUT_S:g}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


# -- servers ------------------------------------------------------------------
def cmd_spawn(args: argparse.Namespace) -> int:
    client = _client(args)
    # A spawn that is built within SPAWN_QUICK_WAIT_S answers built (the
    # service's vmops:wait); a longer one is polled, showing its progress.
    path = "/servers" if args.no_wait else f"/servers?vmops:wait={SPAWN_QUICK_WAIT_S:g}"
    created = client.post(path, {"server": _spawn_body(client, args)})["server"]
    if args.no_wait:
        return _show_server(client, created["id"], args.json)
    server = created if "status" in created else _wait_server(client, created["id"], "built",
                                                                args.json)
    if server["status"] == Status.ERROR:
        fault = server.get("vmops:fault") or "unknown reason"
        print(f"vmops: spawn of {args.name} failed: {fault}", file=sys.stderr)
        print(f"vmops: the record is kept as ERROR; remove it with `vmops destroy {args.name}`",
              file=sys.stderr)
        return 1
    return _show_server(client, server["id"], args.json)


def _spawn_body(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    """The server create body ``vmops spawn`` sends for ``args``."""
    body: dict[str, Any] = {"name": args.name, "flavorRef": args.flavor,
                            "config_drive": args.config_drive, **_root_disk(client, args)}
    if args.no_start:
        body["vmops:start"] = False  # defined, not booted: SHUTOFF
    if args.mac:
        body["vmops:mac"] = args.mac
    if args.network or args.ip:
        network: dict[str, str] = {"uuid": "user" if args.network == "user" else "vmops"}
        if args.ip:
            network["fixed_ip"] = args.ip
        body["networks"] = [network]
    if args.security_group:
        body["security_groups"] = [{"name": g} for g in args.security_group]
    if args.user_data:
        body["user_data"] = base64.b64encode(_read(args.user_data, "user data")).decode()
    if args.key_name:
        body["key_name"] = args.key_name
    if args.property:
        body["metadata"] = dict(_pair(p, "--property", "KEY=VALUE") for p in args.property)
    if args.file:
        body["personality"] = [
            {"path": guest, "contents": base64.b64encode(_read(local, "file")).decode()}
            for guest, local in (_pair(f, "--file", "GUEST_PATH=LOCAL_FILE") for f in args.file)]
    admin_password = _admin_password(args)
    if admin_password is not None:
        body["adminPass"] = admin_password
    return body


def _root_disk(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    """imageRef, or the block device mapping of a root disk that is a
    volume: an existing one (--boot-volume) or a new one made from the
    image (--boot-volume-size), as OpenStackClient sends them."""
    if args.boot_volume is not None:
        if args.image is not None or args.boot_volume_size is not None:
            raise VmopsError("--boot-volume boots an existing volume: give no --image or "
                             "--boot-volume-size with it")
        volume = client.get(f"{volume_cli.VOLUMES}/{args.boot_volume}")["volume"]
        return {"block_device_mapping_v2": [{
            "uuid": volume["id"], "boot_index": 0, "source_type": "volume",
            "destination_type": "volume",
            "delete_on_termination": args.delete_on_termination}]}
    if args.image is None:
        raise VmopsError("give --image IMAGE, or --boot-volume VOLUME to boot from a volume")
    if args.boot_volume_size is None:
        if args.delete_on_termination:
            raise VmopsError("--delete-on-termination goes with --boot-volume or "
                             "--boot-volume-size: a local root disk always goes with its "
                             "instance")
        return {"imageRef": args.image}
    return {"block_device_mapping_v2": [{
        "uuid": args.image, "boot_index": 0, "source_type": "image",
        "destination_type": "volume", "volume_size": args.boot_volume_size,
        "delete_on_termination": args.delete_on_termination}]}


def _admin_password(args: argparse.Namespace) -> str | None:
    """The admin password from a file, stdin or a prompt: never from the
    command line alone, where every local user sees it in ``ps``."""
    if args.admin_password_file is not None:
        if args.admin_password_file == "-":
            text = sys.stdin.read()
        else:
            text = _read(args.admin_password_file, "admin password file").decode(
                "utf-8", "replace")
        password = text.removesuffix("\n").removesuffix("\r")  # the line's end only
        if not password:
            raise VmopsError(f"the admin password file {args.admin_password_file} is empty")
        return password
    if args.admin_password_prompt:
        if not sys.stdin.isatty():
            raise VmopsError("--admin-password-prompt needs a terminal; use "
                             "--admin-password-file - to read it from stdin")
        password = getpass.getpass("Admin password: ")
        if password != getpass.getpass("Again: "):
            raise VmopsError("the two admin passwords differ")
        return password or None
    given: str | None = args.admin_password
    return given


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise VmopsError(f"cannot read {what} {path}: {exc.strerror}") from None


def _pair(text: str, flag: str, form: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise VmopsError(f"{flag} takes {form}, got {text!r}")
    return key, value


def cmd_list(args: argparse.Namespace) -> int:
    # Every project's, oldest first (the API answers newest first, as Nova).
    servers = _client(args).get("/servers/detail?all_tenants=1")["servers"][::-1]
    if args.json:
        print_json(servers)
        return 0
    rows = [[s["name"], s["id"], s["status"].lower(), s["vmops:power_state"],
             _address(s), s["vmops:flavor"]["name"], s["vmops:image_name"], s["created"]]
            for s in servers]
    print_table(["NAME", "UUID", "STATUS", "POWER", "ADDRESS", "FLAVOR", "IMAGE", "CREATED"],
                rows)
    return 0


def _address(server: dict[str, Any]) -> str:
    """The first reachable address, or how the NIC is connected."""
    for entries in server.get("addresses", {}).values():
        for entry in entries:
            return str(entry["addr"])
    nics = server.get("vmops:nics") or []
    return "user-mode" if nics else "-"


def _show_server(client: Client, ref: str, as_json: bool) -> int:
    s = _server_ref(client, ref)
    if as_json:
        print_json(s)
        return 0
    live = s.get("vmops:live", {})
    flavor = s["vmops:flavor"]
    items = [
        ("name", s["name"]), ("uuid", s["id"]), ("status", s["status"].lower()),
        ("power state", s["vmops:power_state"]), ("task", s["OS-EXT-STS:task_state"] or "-"),
        ("flavor", f"{flavor['name']} ({flavor['ram']} MiB, {flavor['vcpus']} vCPU, "
                   f"{flavor['disk']} GiB)"),
        ("image", s["vmops:image_name"]),
        ("max memory", human_bytes(live["max_memory_kib"] * 1024) if live else "-"),
        ("memory", human_bytes(live["memory_kib"] * 1024) if live else "-"),
        ("vcpus", str(live.get("vcpus", flavor["vcpus"]))),
        ("cpu time", f"{live['cpu_time_ns'] / 1e9:.2f} s" if live else "-"),
        ("created", s["created"]), ("launched", s["OS-SRV-USG:launched_at"] or "-"),
        ("config drive", "yes" if s["config_drive"] else "no"),
    ]
    volumes = [v["id"] for v in s.get("os-extended-volumes:volumes_attached", [])]
    if not s["image"] and volumes:  # volume-backed: its root volume is listed first (vda)
        items.append(("disk vda", f"root volume {volumes[0]}"))
    items += [(f"disk {d['target']}", f"{d['role']} {d['format']} {d['device']} {d['path']}")
              for d in s["vmops:disks"]]
    nics = s.get("vmops:nics") or [{"mac": m, "mode": "user", "ip": None}
                                    for m in s["vmops:macs"]]
    items += [(f"nic {i}", f"mac {n['mac']} " + (
        f"address {n['ip']} on the vmops network (tap {n['tap']})" if n["ip"]
        else "user-mode networking (not reachable)")) for i, n in enumerate(nics)]
    if s.get("security_groups"):
        items.append(("security groups", ", ".join(g["name"] for g in s["security_groups"])))
    if s.get("vmops:fault"):
        items.append(("fault", s["vmops:fault"]))
    items += _timing_items(s.get("vmops:timings"))
    print_kv(items)
    return 0


def _timing_items(timings: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The last verb's steps (vmops:timings), one line each, in order."""
    if not timings:
        return []
    failed = f", failed in {timings['failed_step']}" if timings.get("failed_step") else ""
    items = [("last verb", f"{timings['verb']} ({timings['result']}{failed}) in "
                           f"{timings['total_ms']:.1f} ms")]
    items += [(f"  step {t['step']}", f"{t['ms']:.1f} ms" + (" (failed)" if t.get("failed")
                                                              else ""))
              for t in timings["steps"]]
    return items


def cmd_show(args: argparse.Namespace) -> int:
    return _show_server(_client(args), args.name, args.json)


def cmd_destroy(args: argparse.Namespace) -> int:
    client = _client(args)
    for name in args.names:
        try:
            client.delete(f"/servers/{name}")
        except VmopsError as exc:
            if getattr(exc, "status", None) != 404:
                raise
            print(f"vmops: {name} does not exist (nothing to destroy)", file=sys.stderr)
            continue
        print(f"destroyed {name}")
    return 0


def cmd_console_log(args: argparse.Namespace) -> int:
    client = _client(args)
    query = []
    if args.tail is not None:
        query.append(f"tail={args.tail}")
    if args.follow:
        query.append("follow=1")
    path = f"/servers/{args.name}/console-log" + ("?" + "&".join(query) if query else "")
    out = sys.stdout.buffer
    if not args.follow:
        out.write(client.get(path))
        out.flush()
        return 0
    try:
        for chunk in client.stream(path):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        pass
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    from vmops.cli import console

    sock, conn = console.open_console(_client(args), args.name)
    return console.run(sock, conn, args.name, args.linger)


def cmd_ssh(args: argparse.Namespace) -> int:
    from vmops.cli import ssh

    ssh.exec_ssh(ssh_command(_client(args), args))
    return 1  # not reached: exec replaced this process


def ssh_command(client: Client, args: argparse.Namespace) -> list[str]:
    """The ssh command line for ``vmops ssh``, from the service's records."""
    from vmops.cli import ssh

    server = _server_ref(client, args.name)
    ssh.check_reachable_state(server)
    key_name = ssh.injected_key_name(server)
    address = ssh.guest_address(server)
    image = _get_or_none(client, f"/images/{server['image']['id']}", "image") \
        if server["image"] else None  # a volume-backed server has none
    keypair = _get_or_none(client, f"/os-keypairs/{key_name}", "keypair")
    login = ssh.Login(address=address, user=ssh.login_user(image, args.user),
                      identity=ssh.known_identity(args.state_dir, keypair, key_name),
                      host_key_alias=f"vmops-{server['id']}")
    return ssh.ssh_argv(login, args.state_dir, args.command_args)


def _get_or_none(client: Client, path: str, kind: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = client.get(path)[kind]
    except VmopsError as exc:
        if getattr(exc, "status", None) != 404:
            raise
        return None
    return found


def _action(args: argparse.Namespace, body: dict[str, Any],
            microversion: str | None = None) -> int:
    client = _client(args)
    client.microversion = microversion  # for the action only: views stay 2.1's
    server = _server_ref(client, args.name)
    if not args.json:
        print(f"{server['name']}: {args.command}...", file=sys.stderr, flush=True)
    # The service answers when the action has ended (or after a minute: then poll).
    done = client.post(f"/servers/{server['id']}/action?vmops:wait=60", body)
    if isinstance(done, dict) and "server" in done:
        server = done["server"]
    else:
        server = _wait_server(client, server["id"], "idle", quiet=True)
    fault = server.get("vmops:fault")
    if fault:
        print(f"vmops: {args.command} of {args.name} failed: {fault}", file=sys.stderr)
        return 1
    if args.json:
        print_json(server)
    else:
        print(f"{server['name']}: {server['status'].lower()} ({server['vmops:power_state']})")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    arg: dict[str, Any] = {"vmops:hard": args.hard}
    if args.timeout is not None:
        arg["vmops:timeout"] = args.timeout
    return _action(args, {"os-stop": arg})


def cmd_reboot(args: argparse.Namespace) -> int:
    return _action(args, {"reboot": {"type": "HARD" if args.hard else "SOFT"}})


def cmd_rebuild(args: argparse.Namespace) -> int:
    return _action(args, {"rebuild": {"imageRef": args.image}})


def cmd_crash_dump(args: argparse.Namespace) -> int:
    return _action(args, {"trigger_crash_dump": None}, microversion="2.17")


def cmd_resize(args: argparse.Namespace) -> int:
    if args.confirm:
        return _action(args, {"confirmResize": None})
    if args.revert:
        return _action(args, {"revertResize": None})
    return _action(args, {"resize": {"flavorRef": args.flavor}})


def cmd_rescue(args: argparse.Namespace) -> int:
    """rescue answers the rescue password (the one given or a new one): sent
    without vmops:wait, which would answer the server instead."""
    arg: dict[str, Any] = {}
    if args.image:
        arg["rescue_image_ref"] = args.image
    password = _admin_password(args)
    if password is not None:
        arg["adminPass"] = password
    client = _client(args)
    server = _server_ref(client, args.name)
    if not args.json:
        print(f"{server['name']}: rescue...", file=sys.stderr, flush=True)
    answer = client.post(f"/servers/{server['id']}/action", {"rescue": arg})
    server = _wait_server(client, server["id"], "idle", quiet=True)
    if server.get("vmops:fault"):
        print_error(f"rescue of {args.name} failed: {server['vmops:fault']}")
        return 1
    given = answer.get("adminPass") if isinstance(answer, dict) else None
    if args.json:
        print_json({**server, **({"adminPass": given} if given else {})})
        return 0
    print(f"{server['name']}: {server['status'].lower()} ({server['vmops:power_state']})")
    if given and password is None:
        print(f"rescue admin password: {given}")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    """createImage, then wait for the task to end: the image is ACTIVE, or
    gone (a failed snapshot deletes it) and the server's fault says why."""
    client = _client(args)
    server = _server_ref(client, args.name)
    if not args.json:
        print(f"{server['name']}: snapshot to image {args.image_name}...", file=sys.stderr,
              flush=True)
    client.post(f"/servers/{server['id']}/action", {"createImage": {"name": args.image_name}})
    server = _wait_server(client, server["id"], "idle", quiet=True)
    image = _get_or_none(client, f"/images/{args.image_name}", "image")
    if image is None or image["status"] != "ACTIVE":
        fault = server.get("vmops:fault") or (image or {}).get("vmops:fault") or \
            "the image is gone"
        print_error(f"snapshot of {args.name} failed: {fault}")
        return 1
    return _print_image(image, args.json)


def _simple(action: str) -> Any:
    return lambda args: _action(args, {action: None})


# -- images, flavors, keypairs ------------------------------------------------
def cmd_image_import(args: argparse.Namespace) -> int:
    source = args.source
    if not source.startswith(("http://", "https://")):
        source = str(Path(source).expanduser().absolute())
    body: dict[str, Any] = {"name": args.name, "source": source}
    if args.checksum:
        body["checksum"] = args.checksum
    if args.format:
        body["disk_format"] = args.format
    if args.login_user:
        body["login_user"] = args.login_user
    client = _client(args)
    image = client.post("/images", {"image": body})["image"]
    started = time.monotonic()
    while image["status"] == "SAVING":
        if not args.json and time.monotonic() - started > 0.5:
            progress_bar(image["name"], image["vmops:bytes_done"], image["vmops:bytes_total"])
        time.sleep(0.2)
        image = client.get(f"/images/{image['id']}")["image"]
    if not args.json and time.monotonic() - started > 0.5:
        print(file=sys.stderr)
    if image["status"] == "ERROR":
        client.delete(f"/images/{image['id']}")
        print_error(f"image {args.name} refused: {image['vmops:fault']}")
        return 1
    return _print_image(image, args.json)


def _print_image(image: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print_json(image)
        return 0
    print_kv([("name", image["name"]), ("id", image["id"]), ("status", image["status"].lower()),
              ("format", image["vmops:format"]),
              ("virtual size", human_bytes(image["vmops:virtual_size"])),
              ("file size", human_bytes(image["OS-EXT-IMG-SIZE:size"])),
              ("checksum", image["vmops:checksum"]), ("source", image["vmops:source"]),
              ("login user", image.get("vmops:login_user") or "- (vmops ssh: root)"),
              ("used by", ", ".join(image["vmops:used_by"]) or "-")])
    return 0


def cmd_image_list(args: argparse.Namespace) -> int:
    images = _client(args).get("/images/detail")["images"]
    if args.json:
        print_json(images)
        return 0
    print_table(["NAME", "STATUS", "FORMAT", "VIRTUAL SIZE", "FILE SIZE", "CHECKSUM", "USED BY"],
                [[i["name"], i["status"].lower(), i["vmops:format"],
                  human_bytes(i["vmops:virtual_size"]), human_bytes(i["OS-EXT-IMG-SIZE:size"]),
                  i["vmops:checksum"][:16], ", ".join(i["vmops:used_by"]) or "-"]
                 for i in images])
    return 0


def cmd_image_show(args: argparse.Namespace) -> int:
    return _print_image(_client(args).get(f"/images/{args.name}")["image"], args.json)


def cmd_image_delete(args: argparse.Namespace) -> int:
    _client(args).delete(f"/images/{args.name}")
    print(f"deleted image {args.name}")
    return 0


def cmd_image_prune(args: argparse.Namespace) -> int:
    body = {} if args.older_than is None else {"older_than": args.older_than}
    removed = _client(args).post("/images/prune", body)["removed"]
    if args.json:
        print_json(removed)
    else:
        print("removed: " + (", ".join(removed) or "nothing"))
    return 0


def _flavor_row(f: dict[str, Any]) -> list[Any]:
    return [f["name"], f["id"], f["ram"], f["vcpus"], f["disk"],
            f["OS-FLV-EXT-DATA:ephemeral"], "yes" if f["vmops:builtin"] else "no"]


FLAVOR_COLUMNS = ["NAME", "ID", "RAM MiB", "VCPUS", "DISK GiB", "EPHEMERAL GiB", "BUILT-IN"]


def cmd_flavor_list(args: argparse.Namespace) -> int:
    flavors = sorted(_client(args).get("/flavors/detail?is_public=none")["flavors"],
                     key=lambda f: (f["ram"], f["vcpus"], f["name"]))
    if args.json:
        print_json(flavors)
    else:
        print_table(FLAVOR_COLUMNS, [_flavor_row(f) for f in flavors])
    return 0


def cmd_flavor_show(args: argparse.Namespace) -> int:
    f = _client(args).get(f"/flavors/{args.name}")["flavor"]
    if args.json:
        print_json(f)
    else:
        print_kv(list(zip(FLAVOR_COLUMNS, map(str, _flavor_row(f)), strict=True)))
    return 0


def cmd_flavor_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "ram": args.ram, "vcpus": args.vcpus, "disk": args.disk,
            "OS-FLV-EXT-DATA:ephemeral": args.ephemeral}
    f = _client(args).post("/flavors", {"flavor": body})["flavor"]
    if args.json:
        print_json(f)
    else:
        print_table(FLAVOR_COLUMNS, [_flavor_row(f)])
    return 0


def cmd_flavor_delete(args: argparse.Namespace) -> int:
    _client(args).delete(f"/flavors/{args.name}")
    print(f"deleted flavor {args.name}")
    return 0


def cmd_keypair_add(args: argparse.Namespace) -> int:
    key = _read(args.public_key, "public key").decode(errors="replace")
    k = _client(args).post("/os-keypairs", {"keypair": {"name": args.name,
                                                         "public_key": key}})["keypair"]
    print_json(k) if args.json else print(f"added keypair {k['name']} ({k['fingerprint']})")
    return 0


def cmd_keypair_create(args: argparse.Namespace) -> int:
    """Make a key with ssh-keygen; the service gets the public half only."""
    from vmops.cli import ssh

    path, public_key = ssh.generate_key(args.state_dir, args.name)
    try:
        k = _client(args).post("/os-keypairs", {"keypair": {"name": args.name,
                                                             "public_key": public_key}})
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    k = k["keypair"]
    print_json({**k, "private_key_file": str(path)}) if args.json else print(
        f"created keypair {k['name']} ({k['fingerprint']}); private key: {path}")
    return 0


def cmd_keypair_list(args: argparse.Namespace) -> int:
    keys = [k["keypair"] for k in _client(args).get("/os-keypairs")["keypairs"]]
    if args.json:
        print_json(keys)
    else:
        print_table(["NAME", "FINGERPRINT", "TYPE"],
                    [[k["name"], k["fingerprint"], k["type"]] for k in keys])
    return 0


def cmd_keypair_delete(args: argparse.Namespace) -> int:
    from vmops.cli import ssh

    _client(args).delete(f"/os-keypairs/{args.name}")
    removed = ssh.forget_key(args.state_dir, args.name)
    print(f"deleted keypair {args.name}" + (" and its private key" if removed else ""))
    return 0


# -- host ---------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from vmops import heap, service

    overrides = {"listen": args.listen} if args.listen else {}
    settings = config.load(args.state_dir, **overrides)
    # Before anything is made below the socket root: a long state dir's
    # sockets and libvirt root are named through its short alias.
    socket_paths.ensure_socket_root(settings.state_dir)
    # The service's freed memory, given back (vmops/heap.py); the arena
    # limit only holds if set before the first thread.
    heap.limit_arenas()
    heap.fix_mmap_threshold()
    trimmer = heap.Trimmer().start()
    try:
        service.main(settings)
    finally:
        trimmer.stop()
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    try:
        checks = _client(args, autostart=False).get("/os-vmops/doctor")["checks"]
    except VmopsError:
        checks = offline_checks(config.load(args.state_dir))
    failed = [c for c in checks if c["required"] and not c["ok"]]
    if args.json:
        print_json(checks)
        return 1 if failed else 0
    for c in checks:
        mark = "ok" if c["ok"] else ("FAIL" if c["required"] else "warn")
        print(f"[{mark:>4}] {c['name']}: {c['detail']}")
        if not c["ok"] and c["advice"]:
            print(f"       -> {c['advice']}")
    print("this host can run VMs" if not failed else
          f"this host cannot run VMs: {len(failed)} required check(s) failed")
    return 1 if failed else 0


def offline_checks(s: config.Settings) -> list[dict[str, Any]]:
    """The checks when no service answers, made here while holding the state
    directory's lock (vmops.lock), so that no service starts on it while they
    open its embedded libvirt root; if a service holds it (starting,
    stopping, or stuck) that is the one failed check."""
    from vmops import doctor, service
    from vmops.errors import ServiceAlreadyRunning
    from vmops.hypervisor.base import Check

    try:
        lock = service.take_lock(s.state_dir)
    except ServiceAlreadyRunning as exc:
        return [dataclasses.asdict(Check(
            name="vmops service", ok=False, required=True,
            detail=f"{exc.message}, but it does not answer on {s.api_socket}: it is "
                   "starting or stopping (or is a vmops doctor)",
            advice="wait until it answers, or stop it, then run vmops doctor again"))]
    try:
        socket_paths.ensure_socket_root(s.state_dir)  # the libvirt root is probed through it
        checks = [dataclasses.asdict(c) for c in
                  doctor.run_checks(s.state_dir, s.effective_libvirt_uri, s.accel,
                                    database=s.db_path)]
        return checks + [dataclasses.asdict(c) for c in offline_network_checks(s)]
    finally:
        lock.close()


def offline_network_checks(s: config.Settings) -> list[Any]:
    """The network checks when no service runs: its subnet from vmops.db."""
    from vmops.network.checks import network_checks
    from vmops.network.manager import NETWORK_NAME
    from vmops.store import recorded_network_cidr

    subnet = recorded_network_cidr(s.db_path, NETWORK_NAME) or s.network_subnet
    return network_checks(s.effective_network_mode, s.network_bridge, subnet)


def cmd_config(args: argparse.Namespace) -> int:
    s = config.load(args.state_dir)
    rows = []
    for f in config.options():
        value = getattr(s, f.name)
        if f.name in config.SECRET_OPTIONS and value:
            value = "(set)"
        rows.append({"option": f.name, "value": str(value), "env": f"VMOPS_{f.name.upper()}",
                     "allowed": config.describe_allowed(f), "help": f.metadata["help"]})
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(f"{r['option']} = {r['value']}\n    {r['help']}\n    "
                  f"allowed: {r['allowed']}; env: {r['env']}")
    return 0


# -- parser -------------------------------------------------------------------
def seconds(text: str) -> float:
    """An argparse type: a finite, non-negative number (``float`` alone takes
    ``nan`` and ``inf``, and NaN compares false with every bound)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite, non-negative number "
                                         "of seconds")
    return value


def count(text: str) -> int:
    """An argparse type: a non-negative integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmops", description="VM lifecycle engine for one host.")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="state directory (default: $VMOPS_STATE_DIR, /var/lib/vmops as root)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, func: Any, help: str, json_flag: bool = True,
            parent: Any = sub) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        # Accepted after the command too (`vmops serve --state-dir X`).
        sp.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    sp = cmd("spawn", cmd_spawn, "create and boot an instance")
    sp.add_argument("name")
    sp.add_argument("--image", help="the image of its root disk (required unless "
                    "--boot-volume)")
    sp.add_argument("--flavor", required=True)
    sp.add_argument("--boot-volume", metavar="VOLUME",
                    help="boot from this available volume: it is the root disk (vda)")
    sp.add_argument("--boot-volume-size", type=int, metavar="GIB",
                    help="make the root disk a new volume of GIB GiB from --image")
    sp.add_argument("--delete-on-termination", action="store_true",
                    help="destroy deletes the boot volume too (default: it is kept, "
                         "available)")
    sp.add_argument("--mac", help="MAC address of the NIC (default: generated 52:54:00:...)")
    sp.add_argument("--network", choices=("bridge", "user"),
                    help="bridge: the vmops network (an address others reach); user: QEMU "
                         "user-mode (default: the network_mode setting)")
    sp.add_argument("--ip", metavar="ADDRESS", help="a fixed address on the vmops network "
                    "(default: the first free one)")
    sp.add_argument("--security-group", action="append", metavar="GROUP",
                    help="security group to join (repeatable; default: default)")
    sp.add_argument("--config-drive", action="store_true", help="attach an OpenStack config drive")
    sp.add_argument("--user-data", metavar="FILE")
    sp.add_argument("--key-name")
    sp.add_argument("--file", action="append", metavar="GUEST_PATH=LOCAL_FILE",
                    help="inject a file through the config drive (repeatable)")
    sp.add_argument("--property", action="append", metavar="KEY=VALUE",
                    help="instance metadata (repeatable)")
    secret = sp.add_mutually_exclusive_group()
    secret.add_argument("--admin-password-file", metavar="FILE",
                        help="read the admin password from FILE ('-': stdin); it goes on the "
                             "config drive only if configured")
    secret.add_argument("--admin-password-prompt", action="store_true",
                        help="ask for the admin password on the terminal")
    secret.add_argument("--admin-password", metavar="PASSWORD",
                        help="the admin password itself: visible to every local user in "
                             "`ps`; prefer --admin-password-file or --admin-password-prompt")
    sp.add_argument("--no-start", action="store_true",
                    help="build it (disks, config drive, domain) but do not boot it: it ends "
                         "SHUTOFF; `vmops start` boots it")
    sp.add_argument("--no-wait", action="store_true", help="return while it is still building")
    cmd("list", cmd_list, "list instances")
    sp = cmd("show", cmd_show, "show one instance")
    sp.add_argument("name")
    sp = cmd("destroy", cmd_destroy, "destroy instances (no error if already gone)",
             json_flag=False)
    sp.add_argument("names", nargs="+", metavar="name")
    sp = cmd("console-log", cmd_console_log, "print the guest's serial console output",
             json_flag=False)
    sp.add_argument("name")
    sp.add_argument("--tail", type=count, metavar="N", help="only the last N lines")
    sp.add_argument("--follow", "-f", action="store_true", help="keep printing new output")
    sp = cmd("console", cmd_console, "the guest's serial console, read-write (on a terminal: "
             "raw, Ctrl-] detaches)", json_flag=False)
    sp.description = (
        "Attach to the guest's serial console: what you type goes to the guest, what it "
        "writes is shown (from now on; `console-log` has what came before, and keeps every "
        "byte of this session too). On a terminal every key goes to the guest, ^C included; "
        "Ctrl-] detaches. With piped input: send it, go on printing for --linger seconds, "
        "detach. The guest must be running (not stopped or suspended).")
    sp.add_argument("name")
    sp.add_argument("--linger", type=float, default=2.0, metavar="SECONDS",
                    help="with piped input: how long to go on printing after it ends "
                         "(default %(default)s)")
    sp = cmd("ssh", cmd_ssh, "log in to the guest with ssh, at its address on the vmops "
             "network", json_flag=False)
    sp.description = (
        "Run the system ssh to the guest's address on the vmops network, with the key "
        "injected at spawn (--key-name): if vmops made that keypair (`vmops keypair create`) "
        "its private key in <state dir>/keys is used; otherwise ssh uses your own keys and "
        "agent, which must hold the private half. Host keys are kept in <state dir>/"
        "known_hosts (a new guest's is accepted the first time).")
    sp.add_argument("name")
    sp.add_argument("--user", "-l", help="user to log in as (default: the image's login user, "
                    "set with `image import --login-user`, else root)")
    sp.add_argument("command_args", nargs="*", metavar="-- COMMAND",
                    help="run this command instead of a login shell (everything after "
                         "'--' is passed as it is)")

    sp = cmd("stop", cmd_stop, "shut down (ACPI, then hard after the timeout)")
    sp.add_argument("name")
    sp.add_argument("--timeout", type=seconds, help="seconds to wait for the guest (config: "
                    "shutdown_timeout)")
    sp.add_argument("--hard", action="store_true", help="pull the plug at once")
    sp = cmd("reboot", cmd_reboot, "reboot (soft, falling back to hard)")
    sp.add_argument("name")
    sp.add_argument("--hard", action="store_true")
    for verb, action, text in (("start", "os-start", "power on a stopped instance"),
                               ("pause", "pause", "stop the vCPUs, keep memory"),
                               ("unpause", "unpause", "run the vCPUs again"),
                               ("suspend", "suspend", "save memory to disk, end QEMU"),
                               ("resume", "resume", "restore a suspended instance"),
                               ("rebuild-config-drive", "vmops:rebuildConfigDrive",
                                "write a stopped instance's config drive again (without "
                                "the admin password)")):
        sp = cmd(verb, _simple(action), text)
        sp.add_argument("name")

    sp = cmd("snapshot", cmd_snapshot, "copy an instance's root disk into a new image (a "
             "running guest is paused for the copy)")
    sp.add_argument("name")
    sp.add_argument("image_name")
    sp = cmd("resize", cmd_resize, "move an instance to another flavor (memory, vCPUs, disks "
             "grown), then confirm it or revert to the old flavor and disks")
    sp.add_argument("name")
    phase = sp.add_mutually_exclusive_group(required=True)
    phase.add_argument("--flavor", help="the new flavor (the instance ends VERIFY_RESIZE)")
    phase.add_argument("--confirm", action="store_true", help="keep the new flavor; the old "
                       "disks are deleted")
    phase.add_argument("--revert", action="store_true", help="go back to the old flavor and "
                       "the old disks, as they were")
    sp = cmd("rescue", cmd_rescue, "boot an instance from a rescue disk, its own root disk "
             "attached second (vdb), untouched")
    sp.add_argument("name")
    sp.add_argument("--image", help="the rescue image (default: the instance's own image)")
    secret = sp.add_mutually_exclusive_group()
    secret.add_argument("--admin-password-file", metavar="FILE",
                        help="read the rescue admin password from FILE ('-': stdin; "
                             "default: a new one, printed)")
    secret.add_argument("--admin-password-prompt", action="store_true",
                        help="ask for the rescue admin password on the terminal")
    sp.set_defaults(admin_password=None)
    sp = cmd("unrescue", _simple("unrescue"), "boot a rescued instance from its own disk "
             "again (the rescue disk is deleted)")
    sp.add_argument("name")
    sp = cmd("crash-dump", cmd_crash_dump, "send the guest an NMI (its kernel dumps, panics "
             "or logs it, as it is configured)")
    sp.add_argument("name")
    sp = cmd("rebuild", cmd_rebuild, "give an instance a new root disk from an image, "
             "keeping its id, MAC, address, flavor and metadata (the ephemeral disk is wiped)")
    sp.add_argument("name")
    sp.add_argument("--image", required=True)

    image = sub.add_parser("image", help="manage images").add_subparsers(
        dest="image_command", required=True, metavar="ACTION")
    sp = cmd("import", cmd_image_import, "import a disk image (file or http(s) URL)",
             parent=image)
    sp.add_argument("name")
    sp.add_argument("source")
    sp.add_argument("--checksum", help="expected sha256 (or sha256:HEX)")
    sp.add_argument("--format", help="declared format: qcow2, raw, vhd, vhdx, vmdk")
    sp.add_argument("--login-user", metavar="USER",
                    help="the guest's user that `vmops ssh` logs in as (e.g. debian for "
                         "Debian's cloud images; default: root)")
    cmd("list", cmd_image_list, "list images", parent=image)
    sp = cmd("show", cmd_image_show, "show one image", parent=image)
    sp.add_argument("name")
    sp = cmd("delete", cmd_image_delete, "delete an unused image", json_flag=False, parent=image)
    sp.add_argument("name")
    sp = cmd("prune", cmd_image_prune, "remove unused images", parent=image)
    sp.add_argument("--older-than", type=seconds, metavar="SECONDS")

    flavor = sub.add_parser("flavor", help="manage flavors").add_subparsers(
        dest="flavor_command", required=True, metavar="ACTION")
    cmd("list", cmd_flavor_list, "list flavors", parent=flavor)
    sp = cmd("show", cmd_flavor_show, "show one flavor", parent=flavor)
    sp.add_argument("name")
    sp = cmd("create", cmd_flavor_create, "create a flavor", parent=flavor)
    sp.add_argument("name")
    sp.add_argument("--ram", type=count, required=True, metavar="MiB")
    sp.add_argument("--vcpus", type=count, required=True, metavar="N")
    sp.add_argument("--disk", type=count, required=True, metavar="GiB")
    sp.add_argument("--ephemeral", type=count, default=0, metavar="GiB")
    sp = cmd("delete", cmd_flavor_delete, "delete an unused flavor", json_flag=False,
             parent=flavor)
    sp.add_argument("name")

    keypair = sub.add_parser("keypair", help="manage SSH public keys").add_subparsers(
        dest="keypair_command", required=True, metavar="ACTION")
    sp = cmd("add", cmd_keypair_add, "add a public key", parent=keypair)
    sp.add_argument("name")
    sp.add_argument("--public-key", required=True, metavar="FILE")
    sp = cmd("create", cmd_keypair_create, "make an ed25519 keypair; vmops keeps the private "
             "key in <state dir>/keys/NAME and `vmops ssh` uses it", parent=keypair)
    sp.add_argument("name")
    cmd("list", cmd_keypair_list, "list keypairs", parent=keypair)
    sp = cmd("delete", cmd_keypair_delete, "delete a keypair (and the private key vmops made)",
             json_flag=False, parent=keypair)
    sp.add_argument("name")

    network_cli.add_commands(sub, cmd, _client)
    identity_cli.add_commands(sub, cmd, _client)
    volume_cli.add_commands(sub, cmd, _client)

    sp = cmd("serve", cmd_serve, "run the engine for one state directory", json_flag=False)
    sp.add_argument("--listen", metavar="HOST:PORT", help="also serve the API on TCP")
    cmd("doctor", cmd_doctor, "check whether this host can run VMs")
    cmd("config", cmd_config, "show every setting, its value and help")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """argparse, except that for ``ssh`` everything after the first ``--`` is
    the remote command, as it is (argparse would read its options as ours,
    or refuse ``--user`` given between the name and ``--``)."""
    parser = build_parser()
    cut = argv.index("--") if "--" in argv else len(argv)
    if "ssh" in argv[:cut]:
        args = parser.parse_args(argv[:cut])
        if args.command == "ssh":
            args.command_args = [*args.command_args, *argv[cut + 1:]]
            return args
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.state_dir is None:
            args.state_dir = config.load().state_dir
        args.state_dir = args.state_dir.expanduser().absolute()
        os.environ["VMOPS_STATE_DIR"] = str(args.state_dir)
        rc: int = args.func(args)
        return rc
    except VmopsError as exc:
        print_error(f"error: {exc.message}")
        return 1
    except KeyboardInterrupt:
        return 130


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
