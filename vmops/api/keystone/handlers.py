"""Keystone v3 routes and handlers: request in, ``vmops.identity`` call,
Keystone body out. Who may call each route is in ``vmops/api/policy.py``;
a few routes are for the caller's own records (their tokens, their user,
their projects), which only the handler can tell."""

from __future__ import annotations

from vmops.api import discovery
from vmops.api.keystone import parse, views
from vmops.api.server import Request, Response, Router
from vmops.errors import DomainNotFound, Forbidden, Invalid, RoleNotFound, Unauthorized
from vmops.identity import Identity
from vmops.identity.directory import DOMAIN_ID, DOMAIN_NAME
from vmops.identity.passwords import verify_password

ID = discovery.IDENTITY_PREFIX
ASSIGNMENT = f"{ID}/projects/{{project_id}}/users/{{user_id}}/roles"


def add_routes(r: Router, identity: Identity) -> None:
    api = KeystoneApi(identity)
    r.fault_shape(discovery.IDENTITY_ROOT, views.error)
    r.add("GET", discovery.IDENTITY_ROOT, discovery.identity_versions, public=True)
    r.add("GET", ID, discovery.identity_current, public=True)
    r.add("POST", f"{ID}/auth/tokens", api.issue_token, public=True)
    r.add("GET", f"{ID}/auth/tokens", api.validate_token)
    r.add("HEAD", f"{ID}/auth/tokens", api.validate_token)
    r.add("DELETE", f"{ID}/auth/tokens", api.revoke_token)
    r.add("GET", f"{ID}/auth/projects", api.my_projects)
    r.add("GET", f"{ID}/auth/catalog", api.my_catalog)
    r.add("GET", f"{ID}/users", api.list_users)
    r.add("POST", f"{ID}/users", api.create_user)
    r.add("GET", f"{ID}/users/{{user_id}}", api.show_user)
    r.add("PATCH", f"{ID}/users/{{user_id}}", api.update_user)
    r.add("DELETE", f"{ID}/users/{{user_id}}", api.delete_user)
    r.add("POST", f"{ID}/users/{{user_id}}/password", api.change_password)
    r.add("GET", f"{ID}/users/{{user_id}}/projects", api.user_projects)
    r.add("GET", f"{ID}/projects", api.list_projects)
    r.add("POST", f"{ID}/projects", api.create_project)
    r.add("GET", f"{ID}/projects/{{project_id}}", api.show_project)
    r.add("PATCH", f"{ID}/projects/{{project_id}}", api.update_project)
    r.add("DELETE", f"{ID}/projects/{{project_id}}", api.delete_project)
    r.add("GET", ASSIGNMENT, api.list_assigned_roles)
    r.add("PUT", f"{ASSIGNMENT}/{{role_id}}", api.assign_role)
    r.add("HEAD", f"{ASSIGNMENT}/{{role_id}}", api.check_role)
    r.add("GET", f"{ASSIGNMENT}/{{role_id}}", api.check_role)
    r.add("DELETE", f"{ASSIGNMENT}/{{role_id}}", api.unassign_role)
    r.add("GET", f"{ID}/role_assignments", api.role_assignments)
    r.add("GET", f"{ID}/roles", api.list_roles)
    r.add("GET", f"{ID}/roles/{{role_id}}", api.show_role)
    r.add("GET", f"{ID}/domains", api.list_domains)
    r.add("GET", f"{ID}/domains/{{domain_id}}", api.show_domain)


def _own_or_admin(req: Request, user_id: str, what: str) -> None:
    if not req.context.is_admin and req.context.user_id != user_id:
        raise Forbidden(reason=f"only an admin may see or change another user's {what}")


class KeystoneApi:
    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.directory = identity.directory

    # -- tokens --------------------------------------------------------------------
    def issue_token(self, req: Request) -> Response:
        grant = self.identity.authenticate(parse.auth_request(req.json()))
        return Response(201, views.token(grant, req.base_url),
                        headers={"X-Subject-Token": grant.token})

    def _subject(self, req: Request) -> str:
        subject = req.headers.get("x-subject-token")
        if not subject:
            raise Invalid(reason="Give the token to check in the X-Subject-Token header.")
        return subject

    def validate_token(self, req: Request) -> Response:
        grant = self.identity.validate(self._subject(req))
        _own_or_admin(req, grant.user.id, "tokens")
        with_catalog = req.arg("nocatalog") is None  # ?nocatalog=1: none
        return Response(200, views.token(grant, req.base_url, with_catalog),
                        headers={"X-Subject-Token": grant.token})

    def revoke_token(self, req: Request) -> Response:
        subject = self._subject(req)
        _own_or_admin(req, self.identity.validate(subject).user.id, "tokens")
        self.identity.revoke(subject)
        return Response(204)

    def my_projects(self, req: Request) -> Response:
        projects = self.directory.user_projects(req.context.user_id)
        return Response(200, views.collection(
            "projects", [views.project(p, req.base_url) for p in projects if p.enabled],
            req.base_url, "auth/projects"))

    def my_catalog(self, req: Request) -> Response:
        return Response(200, {"catalog": views.catalog(req.base_url),
                              "links": {"self": f"{req.base_url}{ID}/auth/catalog",
                                        "previous": None, "next": None}})

    # -- users ---------------------------------------------------------------------
    def list_users(self, req: Request) -> Response:
        users = self.directory.users(req.arg("name"))
        if req.arg("domain_id") not in (None, DOMAIN_ID):
            users = []
        enabled = req.arg("enabled")
        if enabled is not None:
            users = [u for u in users if u.enabled == (enabled.lower() in ("true", "1"))]
        return Response(200, views.collection(
            "users", [views.user(u, req.base_url) for u in users], req.base_url, "users"))

    def create_user(self, req: Request) -> Response:
        fields = parse.user_fields(req.json(), creating=True)
        user = self.directory.create_user(
            fields["name"], fields.get("password"), fields.get("default_project_id"),
            fields.get("email", ""), fields.get("enabled", True), fields.get("domain_id"))
        return Response(201, {"user": views.user(user, req.base_url)})

    def show_user(self, req: Request) -> Response:
        user = self.directory.user(req.params["user_id"])
        _own_or_admin(req, user.id, "record")
        return Response(200, {"user": views.user(user, req.base_url)})

    def update_user(self, req: Request) -> Response:
        changes = parse.user_fields(req.json(), creating=False)
        user = self.identity.update_user(req.params["user_id"], **changes)
        return Response(200, {"user": views.user(user, req.base_url)})

    def delete_user(self, req: Request) -> Response:
        self.directory.delete_user(req.params["user_id"])
        return Response(204)

    def change_password(self, req: Request) -> Response:
        """A user's own: the original password is checked (and counted
        against guessing, as a sign-in is). Their tokens are revoked."""
        user = self.directory.user(req.params["user_id"])
        if req.context.user_id != user.id:
            raise Forbidden(reason="users change only their own password this way; an "
                            "admin sets others' with PATCH /users/{id}")
        original, new = parse.password_change(req.json())
        self.identity.throttle.check(user.id)
        if not verify_password(original, user.password_hash):
            self.identity.throttle.failed(user.id)
            raise Unauthorized(reason="The original password is wrong.")
        self.identity.throttle.succeeded(user.id)
        self.identity.update_user(user.id, password=new)
        return Response(204)

    def user_projects(self, req: Request) -> Response:
        user = self.directory.user(req.params["user_id"])
        _own_or_admin(req, user.id, "projects")
        projects = self.directory.user_projects(user.id)
        return Response(200, views.collection(
            "projects", [views.project(p, req.base_url) for p in projects], req.base_url,
            f"users/{user.id}/projects"))

    # -- projects ------------------------------------------------------------------
    def list_projects(self, req: Request) -> Response:
        projects = self.directory.projects(req.arg("name"))
        if req.arg("domain_id") not in (None, DOMAIN_ID):
            projects = []
        enabled = req.arg("enabled")
        if enabled is not None:
            projects = [p for p in projects if p.enabled == (enabled.lower() in ("true", "1"))]
        return Response(200, views.collection(
            "projects", [views.project(p, req.base_url) for p in projects], req.base_url,
            "projects"))

    def create_project(self, req: Request) -> Response:
        fields = parse.project_fields(req.json(), creating=True)
        project = self.directory.create_project(
            fields["name"], fields.get("description", ""), fields.get("enabled", True),
            fields.get("domain_id"))
        return Response(201, {"project": views.project(project, req.base_url)})

    def show_project(self, req: Request) -> Response:
        project = self.directory.project(req.params["project_id"])
        ctx = req.context
        if not (ctx.is_admin or ctx.project_id == project.id or
                self.directory.assigned_roles(ctx.user_id, project.id)):
            raise Forbidden(reason="only an admin may see a project you have no role on")
        return Response(200, {"project": views.project(project, req.base_url)})

    def update_project(self, req: Request) -> Response:
        changes = parse.project_fields(req.json(), creating=False)
        project = self.directory.update_project(req.params["project_id"], **changes)
        return Response(200, {"project": views.project(project, req.base_url)})

    def delete_project(self, req: Request) -> Response:
        self.directory.delete_project(req.params["project_id"])
        return Response(204)

    # -- roles and assignments -----------------------------------------------------
    def list_roles(self, req: Request) -> Response:
        roles = self.directory.roles(req.arg("name"))
        return Response(200, views.collection(
            "roles", [views.role(r, req.base_url) for r in roles], req.base_url, "roles"))

    def show_role(self, req: Request) -> Response:
        return Response(200, {"role": views.role(self.directory.role(req.params["role_id"]),
                                                 req.base_url)})

    def _assignment(self, req: Request) -> tuple[str, str, str]:
        user = self.directory.user(req.params["user_id"])
        project = self.directory.project(req.params["project_id"])
        return user.id, project.id, req.params.get("role_id", "")

    def list_assigned_roles(self, req: Request) -> Response:
        user_id, project_id, _ = self._assignment(req)
        roles = self.directory.assigned_roles(user_id, project_id)
        return Response(200, views.collection(
            "roles", [views.role(r, req.base_url) for r in roles], req.base_url,
            f"projects/{project_id}/users/{user_id}/roles"))

    def assign_role(self, req: Request) -> Response:
        self.directory.assign(*self._assignment(req))
        return Response(204)

    def check_role(self, req: Request) -> Response:
        user_id, project_id, role_ref = self._assignment(req)
        role = self.directory.role(role_ref)
        if not self.directory.has_assignment(user_id, project_id, role.id):
            raise RoleNotFound(role=f"{role_ref} for user {user_id} on project {project_id}")
        return Response(204)

    def unassign_role(self, req: Request) -> Response:
        self.directory.unassign(*self._assignment(req))
        return Response(204)

    def role_assignments(self, req: Request) -> Response:
        """Keystone's filters user.id, scope.project.id, role.id; include_names."""
        found = self.directory.assignments(req.arg("user.id"), req.arg("scope.project.id"))
        role_id = req.arg("role.id")
        found = [a for a in found if role_id is None or a[2].id == role_id]
        names = None
        if (req.arg("include_names") or "0").lower() not in ("0", "false"):
            names = {u.id: u.name for u in self.directory.users()}
            names.update({p.id: p.name for p in self.directory.projects()})
        return Response(200, views.collection(
            "role_assignments", [views.assignment(u, p, r, req.base_url, names)
                                 for u, p, r in found], req.base_url, "role_assignments"))

    # -- the one domain ------------------------------------------------------------
    def list_domains(self, req: Request) -> Response:
        name = req.arg("name")
        wanted = name is None or name.lower() == DOMAIN_NAME.lower()
        return Response(200, views.collection(
            "domains", [views.domain(req.base_url)] if wanted else [], req.base_url,
            "domains"))

    def show_domain(self, req: Request) -> Response:
        if req.params["domain_id"] != DOMAIN_ID:
            raise DomainNotFound(domain=req.params["domain_id"])
        return Response(200, {"domain": views.domain(req.base_url)})
