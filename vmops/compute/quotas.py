"""Each project's quotas, with Nova's resource names, and their enforcement.

A limit is the project's own (``quotas`` table, set by an admin through
``os-quota-sets``) or else the default from the settings; -1 is unlimited.
What vmops enforces, and where:

- ``instances``, ``cores``, ``ram``: server create (usage counts every
  server of the project, in any state, as Nova does);
- ``metadata_items``: server create and the server metadata calls;
- ``injected_files``, ``injected_file_content_bytes``,
  ``injected_file_path_bytes``: server create (defaults: the
  ``max_injected_*`` settings, which also stay the host's own cap);
- ``key_pairs``: keypair create (per user, as Nova);
- ``server_groups``, ``server_group_members``: server group create and
  server create into a group.

``floating_ips``, ``fixed_ips``, ``security_groups`` and
``security_group_rules`` are kept and shown, as Nova keeps them when the
network service is Neutron, but not enforced.

Creates check and record under one lock (:attr:`Quotas.lock`), so two at
once cannot both take the last unit.

Nova's quota classes live in the same ``quotas`` table, under the key
``class:<name>`` (never a project's id: those are hex uuids); the ``default``
class's rows override the settings as every project's defaults.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from vmops.config import Settings
from vmops.errors import Invalid, QuotaExceeded
from vmops.store import Flavor, Store

RESOURCES = ("instances", "cores", "ram", "floating_ips", "fixed_ips", "metadata_items",
             "injected_files", "injected_file_content_bytes", "injected_file_path_bytes",
             "key_pairs", "security_groups", "security_group_rules", "server_groups",
             "server_group_members")
UNLIMITED = -1
CLASS_PREFIX = "class:"
DEFAULT_CLASS = "default"
MAX_LIMIT = 0x7FFFFFFF  # Nova's: a database integer
# Nova's defaults for what vmops keeps but does not enforce.
UNENFORCED_DEFAULTS = {"floating_ips": 10, "fixed_ips": -1, "security_groups": 10,
                       "security_group_rules": 20}


def defaults(settings: Settings) -> dict[str, int]:
    s = settings
    values = {
        "instances": s.quota_instances, "cores": s.quota_cores, "ram": s.quota_ram,
        "metadata_items": s.quota_metadata_items,
        "injected_files": s.max_injected_files,
        "injected_file_content_bytes": s.max_injected_file_bytes,
        "injected_file_path_bytes": s.max_injected_path_length,
        "key_pairs": s.quota_key_pairs, "server_groups": s.quota_server_groups,
        "server_group_members": s.quota_server_group_members, **UNENFORCED_DEFAULTS}
    return {name: values[name] for name in RESOURCES}


def over(limit: int, used: int, requested: int) -> bool:
    return limit != UNLIMITED and used + requested > limit


class Quotas:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.lock = threading.RLock()

    # -- limits --------------------------------------------------------------
    def defaults(self) -> dict[str, int]:
        """Every project's defaults: the settings, as the default class changed them."""
        return self.class_limits(DEFAULT_CLASS)

    def class_limits(self, name: str) -> dict[str, int]:
        return self._overlaid(defaults(self.settings), CLASS_PREFIX + name)

    def update_class(self, name: str, values: Mapping[str, int]) -> dict[str, int]:
        self._store_limits(CLASS_PREFIX + name, values)
        return self.class_limits(name)

    def limits(self, project_id: str) -> dict[str, int]:
        return self._overlaid(self.defaults(), project_id)

    def _overlaid(self, limits: dict[str, int], key: str) -> dict[str, int]:
        for row in self.store.query("SELECT resource, hard_limit FROM quotas "
                                    "WHERE project_id = ?", key):
            if row["resource"] in limits:
                limits[row["resource"]] = int(row["hard_limit"])
        return limits

    def _store_limits(self, key: str, values: Mapping[str, int]) -> None:
        with self.store.transaction() as db:
            for name, limit in values.items():
                db.execute("INSERT OR REPLACE INTO quotas VALUES (?, ?, ?)", (key, name, limit))

    def update(self, project_id: str, values: Mapping[str, int], force: bool) -> dict[str, int]:
        """Set some of a project's limits. Without ``force`` a limit below
        what the project already uses is refused (Nova's check)."""
        with self.lock:
            used = self.usage(project_id)
            for name, limit in values.items():
                if not force and limit != UNLIMITED and limit < used.get(name, 0):
                    raise Invalid(f"Quota limit {limit} for {name} must be greater than or "
                                  f"equal to already used and reserved {used[name]}.")
            self._store_limits(project_id, values)
        return self.limits(project_id)

    def reset(self, project_id: str) -> None:
        """Back to the defaults (Nova's DELETE /os-quota-sets/{project})."""
        with self.store.transaction() as db:
            db.execute("DELETE FROM quotas WHERE project_id = ?", (project_id,))

    # -- usage ---------------------------------------------------------------
    def usage(self, project_id: str, user_id: str | None = None) -> dict[str, int]:
        """What the project uses now, for each resource that is counted
        (the per-server and per-file ones are 0, as in Nova's detail)."""
        used = dict.fromkeys(RESOURCES, 0)
        for inst in self.store.query("SELECT body FROM instances WHERE project_id = ?",
                                     project_id):
            flavor = _flavor_of(inst["body"])
            used["instances"] += 1
            used["cores"] += int(flavor.get("vcpus", 0))
            used["ram"] += int(flavor.get("ram_mib", 0))
        if user_id is not None:
            used["key_pairs"] = _count(self.store, "SELECT COUNT(*) FROM keypairs "
                                       "WHERE user_id = ?", user_id)
        used["server_groups"] = _count(self.store, "SELECT COUNT(*) FROM server_groups "
                                       "WHERE project_id = ?", project_id)
        used["security_groups"] = _count(self.store, "SELECT COUNT(*) FROM security_groups "
                                         "WHERE project_id = ?", project_id)
        used["security_group_rules"] = _count(
            self.store, "SELECT COUNT(*) FROM security_group_rules r JOIN security_groups g "
            "ON g.id = r.group_id WHERE g.project_id = ?", project_id)
        return used

    # -- checks --------------------------------------------------------------
    def check_servers(self, project_id: str, flavor: Flavor, count: int = 1) -> None:
        """Room for ``count`` more servers of ``flavor``; call holding :attr:`lock`
        until the server is recorded."""
        limits, used = self.limits(project_id), self.usage(project_id)
        wanted = {"instances": count, "cores": count * flavor.vcpus,
                  "ram": count * flavor.ram_mib}
        for name, requested in wanted.items():
            if over(limits[name], used[name], requested):
                raise QuotaExceeded(
                    f"Quota exceeded for {name}: Requested {requested}, but already used "
                    f"{used[name]} of {limits[name]} {name}")

    def check_metadata(self, project_id: str, items: int) -> None:
        limit = self.limits(project_id)["metadata_items"]
        if over(limit, 0, items):
            raise QuotaExceeded(f"Maximum number of metadata items exceeds {limit}")

    def check_injected_files(self, project_id: str,
                             files: Iterable[tuple[str, bytes]]) -> None:
        limits = self.limits(project_id)
        files = list(files)
        if over(limits["injected_files"], 0, len(files)):
            raise QuotaExceeded("Personality file limit exceeded")
        for path, content in files:
            if over(limits["injected_file_path_bytes"], 0, len(path.encode())):
                raise QuotaExceeded("Personality file path exceeds maximum "
                                    f"{limits['injected_file_path_bytes']}")
            if over(limits["injected_file_content_bytes"], 0, len(content)):
                raise QuotaExceeded("Personality file content exceeds maximum "
                                    f"{limits['injected_file_content_bytes']}")

    def check_key_pairs(self, project_id: str, user_id: str) -> None:
        limit = self.limits(project_id)["key_pairs"]
        if over(limit, self.usage(project_id, user_id)["key_pairs"], 1):
            raise QuotaExceeded("Quota exceeded, too many key pairs.")

    def check_server_groups(self, project_id: str) -> None:
        limit = self.limits(project_id)["server_groups"]
        if over(limit, self.usage(project_id)["server_groups"], 1):
            raise QuotaExceeded("Quota exceeded, too many server groups.")

    def check_group_members(self, project_id: str, members: int) -> None:
        limit = self.limits(project_id)["server_group_members"]
        if over(limit, members, 1):
            raise QuotaExceeded("Quota exceeded, too many servers in group")


def _count(store: Store, sql: str, *args: Any) -> int:
    return int(store.query(sql, *args)[0][0])


def _flavor_of(body: str) -> dict[str, Any]:
    flavor: dict[str, Any] = json.loads(body).get("flavor") or {}
    return flavor
