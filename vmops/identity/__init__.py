"""The built-in identity service (Keystone v3's core, for one host).

    directory.py      projects, users, roles, role assignments (schema-6 tables)
    passwords.py      scrypt hashes, constant-time checks
    tokens.py         issued tokens: only their sha256 kept; expiry, revocation
    throttle.py       password guessing slowed per user
    service.py        Identity: authenticate, validate, revoke; who a token is
    authenticator.py  the API's Authenticator on top of it
    bootstrap.py      the admin's password at first start

The HTTP shapes (Keystone v3 routes, token bodies, the catalog) are in
``vmops/api/keystone``; the role each route needs in ``vmops/api/policy.py``.
"""

from vmops.identity.service import AuthRequest, Grant, Identity, Principal, Ref

__all__ = ["AuthRequest", "Grant", "Identity", "Principal", "Ref"]
