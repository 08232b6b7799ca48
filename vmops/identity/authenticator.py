"""The API's Authenticator backed by the identity service: the fixed
``api_token`` and every token the service issued."""

from __future__ import annotations

from vmops.api.server import Authenticator, Context
from vmops.identity.service import Identity, Principal


def _context(p: Principal) -> Context:
    return Context(p.user_id, p.project_id, p.roles, p.user_name, p.project_name)


class IdentityAuthenticator(Authenticator):
    def __init__(self, identity: Identity) -> None:
        super().__init__(identity.api_token)
        self.identity = identity

    def admin(self) -> Context:
        return _context(self.identity.admin())

    def context(self, token: str) -> Context | None:
        principal = self.identity.principal(token)
        return None if principal is None else _context(principal)
