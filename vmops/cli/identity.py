"""The identity service's verbs: users, projects and role assignments.

Run over the unix socket, as admin. A password is read from a file (``-``:
standard input) or the terminal, never from the command line (where every
local user sees it in ``ps``); with neither, one is generated and printed
once.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from vmops.cli.client import Client
from vmops.cli.output import print_json, print_table
from vmops.errors import VmopsError
from vmops.identity.passwords import generate_password

ID = "/identity/v3"

Command = Callable[..., argparse.ArgumentParser]
ClientOf = Callable[[argparse.Namespace], Client]


def add_commands(sub: Any, cmd: Command, client_of: ClientOf) -> None:
    """Register ``user``, ``project`` and ``role`` under ``sub``."""
    verbs = _Verbs(client_of)
    user = sub.add_parser("user", help="users of the identity service (OpenStack "
                          "clients sign in as them)").add_subparsers(
        dest="user_command", required=True, metavar="ACTION")
    sp = cmd("create", verbs.user_create, "create a user (the password is generated and "
             "printed unless given)", parent=user)
    sp.add_argument("name")
    sp.add_argument("--project", help="their default project; with --role, their role on it")
    sp.add_argument("--role", default="member", choices=("admin", "member", "reader"),
                    help="their role on --project (default: member)")
    sp.add_argument("--email", default="")
    _password_options(sp)
    cmd("list", verbs.user_list, "list users and their roles", parent=user)
    sp = cmd("delete", verbs.user_delete, "delete users (their tokens go with them)",
             json_flag=False, parent=user)
    sp.add_argument("names", nargs="+", metavar="name")
    sp = cmd("set-password", verbs.user_set_password, "set a user's password (generated and "
             "printed unless given); their tokens are revoked", parent=user)
    sp.add_argument("name")
    _password_options(sp)

    project = sub.add_parser("project", help="projects: what each user's servers, images, "
                             "keypairs belong to").add_subparsers(
        dest="project_command", required=True, metavar="ACTION")
    sp = cmd("create", verbs.project_create, "create a project", parent=project)
    sp.add_argument("name")
    sp.add_argument("--description", default="")
    cmd("list", verbs.project_list, "list projects", parent=project)
    sp = cmd("delete", verbs.project_delete, "delete projects (what they own stays, "
             "visible to admin)", json_flag=False, parent=project)
    sp.add_argument("names", nargs="+", metavar="name")

    role = sub.add_parser("role", help="who has which role (admin, member, reader) on which "
                          "project").add_subparsers(
        dest="role_command", required=True, metavar="ACTION")
    for verb, func, text in (("add", verbs.role_add, "give a user a role on a project"),
                             ("remove", verbs.role_remove, "take a role away (revokes the "
                              "user's tokens on that project)")):
        sp = cmd(verb, func, text, parent=role)
        sp.add_argument("role", choices=("admin", "member", "reader"))
        sp.add_argument("--user", required=True)
        sp.add_argument("--project", required=True)


def _password_options(sp: argparse.ArgumentParser) -> None:
    secret = sp.add_mutually_exclusive_group()
    secret.add_argument("--password-file", metavar="FILE",
                        help="read the password from FILE ('-': stdin; one trailing newline "
                             "is dropped)")
    secret.add_argument("--password-prompt", action="store_true",
                        help="ask for the password on the terminal")


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    """(the password, whether it was generated)."""
    if args.password_file is not None:
        try:
            text = sys.stdin.read() if args.password_file == "-" else \
                Path(args.password_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise VmopsError(f"cannot read the password file {args.password_file}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        password = text.removesuffix("\n").removesuffix("\r")
        if not password:
            raise VmopsError(f"the password file {args.password_file} is empty")
        return password, False
    if args.password_prompt:
        if not sys.stdin.isatty():
            raise VmopsError("--password-prompt needs a terminal; use --password-file - to "
                             "read it from stdin")
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Again: "):
            raise VmopsError("the two passwords differ")
        if not password:
            raise VmopsError("the password is empty")
        return password, False
    return generate_password(), True


class _Verbs:
    def __init__(self, client_of: ClientOf) -> None:
        self.client_of = client_of

    def _find(self, client: Client, kind: str, ref: str) -> dict[str, Any]:
        """A user or project by name (in the one domain) or id."""
        found: list[dict[str, Any]] = client.get(f"{ID}/{kind}s?name={_quote(ref)}")[f"{kind}s"]
        if found:
            return found[0]
        try:
            record: dict[str, Any] = client.get(f"{ID}/{kind}s/{_quote(ref)}")[kind]
        except VmopsError as exc:
            if getattr(exc, "status", None) != 404:
                raise
            raise VmopsError(f"no {kind} named or with id {ref!r}") from None
        return record

    def _role_path(self, client: Client, args: argparse.Namespace) -> str:
        user = self._find(client, "user", args.user)
        project = self._find(client, "project", args.project)
        role = client.get(f"{ID}/roles?name={args.role}")["roles"][0]
        return f"{ID}/projects/{project['id']}/users/{user['id']}/roles/{role['id']}"

    # -- users ---------------------------------------------------------------------
    def user_create(self, args: argparse.Namespace) -> int:
        client = self.client_of(args)
        password, generated = _password(args)
        body: dict[str, Any] = {"name": args.name, "password": password}
        project = self._find(client, "project", args.project) if args.project else None
        if project is not None:
            body["default_project_id"] = project["id"]
        if args.email:
            body["email"] = args.email
        user = client.post(f"{ID}/users", {"user": body})["user"]
        if project is not None:
            role = client.get(f"{ID}/roles?name={args.role}")["roles"][0]
            client.request("PUT", f"{ID}/projects/{project['id']}/users/{user['id']}/roles/"
                           f"{role['id']}")
        return _show_user(user, project, args, password if generated else None)

    def user_list(self, args: argparse.Namespace) -> int:
        client = self.client_of(args)
        users = client.get(f"{ID}/users")["users"]
        assignments = client.get(f"{ID}/role_assignments?include_names=1")["role_assignments"]
        roles: dict[str, list[str]] = {}
        for a in assignments:
            roles.setdefault(a["user"]["id"], []).append(
                f"{a['scope']['project']['name']}:{a['role']['name']}")
        if args.json:
            print_json([{**u, "roles": roles.get(u["id"], [])} for u in users])
            return 0
        print_table(["NAME", "ID", "ENABLED", "ROLES (PROJECT:ROLE)"],
                    [[u["name"], u["id"], "yes" if u["enabled"] else "no",
                      ", ".join(roles.get(u["id"], [])) or "-"] for u in users])
        return 0

    def user_delete(self, args: argparse.Namespace) -> int:
        return self._delete(args, "user")

    def _delete(self, args: argparse.Namespace, kind: str) -> int:
        """Delete each named user or project (found by name or id)."""
        client = self.client_of(args)
        for name in args.names:
            record = self._find(client, kind, name)
            client.delete(f"{ID}/{kind}s/{record['id']}")
            print(f"deleted {kind} {record['name']}")
        return 0

    def user_set_password(self, args: argparse.Namespace) -> int:
        client = self.client_of(args)
        user = self._find(client, "user", args.name)
        password, generated = _password(args)
        user = client.request("PATCH", f"{ID}/users/{user['id']}",
                              {"user": {"password": password}})["user"]
        if args.json:
            print_json({**user, **({"password": password} if generated else {})})
        elif generated:
            print(f"password of {user['name']}: {password}")
        else:
            print(f"set the password of {user['name']}")
        return 0

    # -- projects ------------------------------------------------------------------
    def project_create(self, args: argparse.Namespace) -> int:
        project = self.client_of(args).post(f"{ID}/projects", {"project": {
            "name": args.name, "description": args.description}})["project"]
        if args.json:
            print_json(project)
        else:
            print(f"created project {project['name']} ({project['id']})")
        return 0

    def project_list(self, args: argparse.Namespace) -> int:
        projects = self.client_of(args).get(f"{ID}/projects")["projects"]
        if args.json:
            print_json(projects)
        else:
            print_table(["NAME", "ID", "ENABLED", "DESCRIPTION"],
                        [[p["name"], p["id"], "yes" if p["enabled"] else "no",
                          p["description"] or "-"] for p in projects])
        return 0

    def project_delete(self, args: argparse.Namespace) -> int:
        return self._delete(args, "project")

    # -- roles ---------------------------------------------------------------------
    def role_add(self, args: argparse.Namespace) -> int:
        client = self.client_of(args)
        client.request("PUT", self._role_path(client, args))
        return _said(args, f"{args.user} has the {args.role} role on {args.project}")

    def role_remove(self, args: argparse.Namespace) -> int:
        client = self.client_of(args)
        client.delete(self._role_path(client, args))
        return _said(args, f"{args.user} no longer has the {args.role} role on "
                     f"{args.project}")


def _quote(text: str) -> str:
    return quote(text, safe="")


def _said(args: argparse.Namespace, text: str) -> int:
    if args.json:
        print_json({"user": args.user, "project": args.project, "role": args.role})
    else:
        print(text)
    return 0


def _show_user(user: dict[str, Any], project: dict[str, Any] | None,
               args: argparse.Namespace, generated: str | None) -> int:
    if args.json:
        print_json({**user, **({"password": generated} if generated else {}),
                    **({"project": project["name"], "role": args.role} if project else {})})
        return 0
    where = f", {args.role} of project {project['name']}" if project else ""
    print(f"created user {user['name']} ({user['id']}){where}")
    if generated:
        print(f"password: {generated}")
    return 0
