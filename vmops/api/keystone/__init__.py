"""The identity API: Keystone v3's core at ``/identity/v3``.

Tokens (issue, validate, revoke), the caller's projects and catalog, and
the admin calls OpenStack's tools make to set up accounts (Tempest's
dynamic credentials, ``openstack project/user/role``): projects, users,
roles and role assignments on projects, the one domain. Errors in
Keystone's shape. The logic is in ``vmops/identity``.
"""

from vmops.api.keystone.handlers import add_routes

__all__ = ["add_routes"]
