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

Cinder's ``volumes`` and ``gigabytes`` (:meth:`Quotas.check_volumes`) are
the volume service's: every volume of the project counts, in any status,
remote ones and those made at server create (boot volumes, block device
mappings) too (Nova's driver's Cinder volumes are counted, but not checked:
Cinder's quota checked them); enforced at volume create and extend (an
extend's GiB held from its check until its new size is recorded) and at
server create (there before the server's volumes are made, so two server creates at
once may both pass). Defaults: the ``quota_volumes`` and
``quota_gigabytes`` settings, or the default class's rows; a project's own
rows in ``quotas`` (no API sets them yet).

``floating_ips``, ``fixed_ips``, ``security_groups`` and
``security_group_rules`` are kept and shown, as Nova keeps them when the
network service is Neutron, but not enforced.

Creates check and record under one lock (:attr:`Quotas.lock`), so two at
once cannot both take the last unit.

A user of a project may have their own limits too (``quotas`` rows with
their ``user_id``; the project's own have ``user_id`` ''), set by an admin
with ``os-quota-sets/{project}?user_id=``: each is at most the project's,
and server create checks the user's servers against them as well as the
project's against the project's (Nova's per-user quotas).

Nova's quota classes are in ``quota_classes``; the ``default`` class's
rows override the settings as every project's defaults.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from vmops.config import Settings
from vmops.errors import Invalid, QuotaExceeded, VolumeQuotaExceeded
from vmops.store import Flavor, InstanceFlavor, Store

RESOURCES = ("instances", "cores", "ram", "floating_ips", "fixed_ips", "metadata_items",
             "injected_files", "injected_file_content_bytes", "injected_file_path_bytes",
             "key_pairs", "security_groups", "security_group_rules", "server_groups",
             "server_group_members")
# The volume service's (Cinder's names); not in Nova's quota sets.
VOLUME_RESOURCES = ("volumes", "gigabytes")
UNLIMITED = -1
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
        # Extends under way: a hold -> (project, the GiB it adds). A volume
        # records its new size when its extend ends; until then its growth
        # is held here, so a create or another extend cannot take it too.
        # Keyed by hold, not volume: a second extend of the volume, refused
        # once held, must not release the first one's.
        self._growing: dict[object, tuple[str, int]] = {}

    # -- limits --------------------------------------------------------------
    def defaults(self) -> dict[str, int]:
        """Every project's defaults: the settings, as the default class changed them."""
        return self.class_limits(DEFAULT_CLASS)

    def class_limits(self, name: str) -> dict[str, int]:
        limits = defaults(self.settings)
        for row in self.store.query("SELECT resource, hard_limit FROM quota_classes "
                                    "WHERE class_name = ?", name):
            if row["resource"] in limits:
                limits[row["resource"]] = int(row["hard_limit"])
        return limits

    def update_class(self, name: str, values: Mapping[str, int]) -> dict[str, int]:
        with self.store.transaction() as db:
            for resource, limit in values.items():
                db.execute("INSERT OR REPLACE INTO quota_classes VALUES (?, ?, ?)",
                           (name, resource, limit))
        return self.class_limits(name)

    def limits(self, project_id: str, user_id: str = "") -> dict[str, int]:
        """The project's limits; with ``user_id``, that user's (the
        project's, where the user has none of their own)."""
        limits = self._overlaid(self.defaults(), project_id, "")
        return self._overlaid(limits, project_id, user_id) if user_id else limits

    def _overlaid(self, limits: dict[str, int], project_id: str,
                  user_id: str) -> dict[str, int]:
        for row in self.store.query("SELECT resource, hard_limit FROM quotas "
                                    "WHERE project_id = ? AND user_id = ?", project_id, user_id):
            if row["resource"] in limits:
                limits[row["resource"]] = int(row["hard_limit"])
        return limits

    def update(self, project_id: str, values: Mapping[str, int], force: bool,
               user_id: str = "") -> dict[str, int]:
        """Set some of a project's (or one of its users') limits. Without
        ``force`` a limit below what is already used is refused (Nova's
        check); a user's limit is never above the project's."""
        with self.lock:
            used = self.usage(project_id, user_id or None, per_user=bool(user_id))
            project = self.limits(project_id)
            for name, limit in values.items():
                if not force and limit != UNLIMITED and limit < used.get(name, 0):
                    raise Invalid(f"Quota limit {limit} for {name} must be greater than or "
                                  f"equal to already used and reserved {used[name]}.")
                if user_id and project[name] != UNLIMITED and \
                        (limit == UNLIMITED or limit > project[name]):
                    raise Invalid(f"Quota limit {limit} for {name} must be less than or "
                                  f"equal to {project[name]}.")
            with self.store.transaction() as db:
                for name, limit in values.items():
                    db.execute("INSERT OR REPLACE INTO quotas VALUES (?, ?, ?, ?)",
                               (project_id, user_id, name, limit))
        return self.limits(project_id, user_id)

    def reset(self, project_id: str, user_id: str | None = None) -> None:
        """Back to the defaults (Nova's DELETE /os-quota-sets/{project}: the
        project's limits and its users'); with ``user_id``, only that user's."""
        with self.store.transaction() as db:
            if user_id is None:
                db.execute("DELETE FROM quotas WHERE project_id = ?", (project_id,))
            else:
                db.execute("DELETE FROM quotas WHERE project_id = ? AND user_id = ?",
                           (project_id, user_id))

    def has_own(self, project_id: str, user_id: str) -> bool:
        return bool(self.store.query("SELECT 1 FROM quotas WHERE project_id = ? AND "
                                     "user_id = ? LIMIT 1", project_id, user_id))

    # -- usage ---------------------------------------------------------------
    def usage(self, project_id: str, user_id: str | None = None,
              per_user: bool = False) -> dict[str, int]:
        """What the project uses now, for each resource that is counted
        (the per-server and per-file ones are 0, as in Nova's detail). Key
        pairs are ``user_id``'s; with ``per_user``, servers too."""
        used = dict.fromkeys(RESOURCES, 0)
        # Summed by SQLite, not decoded here: a spawn checks this holding
        # ``lock``, which every spawn at once waits for (issue #17).
        sql, args = (f"SELECT COUNT(*), {_SUMMED_FLAVOR.format(key='vcpus')}, "
                     f"{_SUMMED_FLAVOR.format(key='ram_mib')} FROM instances "
                     "WHERE project_id = ?"), [project_id]
        if per_user:
            sql, args = sql + " AND user_id = ?", [project_id, user_id or ""]
        row = self.store.query(sql, *args)[0]
        used["instances"], used["cores"], used["ram"] = int(row[0]), int(row[1]), int(row[2])
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
    def check_servers(self, project_id: str, flavor: Flavor, count: int = 1,
                      user_id: str = "") -> None:
        """Room for ``count`` more servers of ``flavor`` in the project (and,
        if ``user_id`` has limits of their own, for that user); call holding
        :attr:`lock` until the server is recorded."""
        self._check_room(project_id, user_id, {
            "instances": count, "cores": count * flavor.vcpus, "ram": count * flavor.ram_mib})

    def check_resize(self, project_id: str, old: InstanceFlavor, new: Flavor,
                     user_id: str = "") -> None:
        """Room for a server of flavor ``old`` (its record's) to grow to
        ``new``: Nova checks the cores and RAM an upsize adds."""
        grows = {"cores": new.vcpus - old.vcpus, "ram": new.ram_mib - old.ram_mib}
        self._check_room(project_id, user_id, {k: v for k, v in grows.items() if v > 0})

    def _check_room(self, project_id: str, user_id: str, wanted: Mapping[str, int]) -> None:
        checks = [(self.limits(project_id), self.usage(project_id))]
        if user_id and self.has_own(project_id, user_id):
            checks.append((self.limits(project_id, user_id),
                           self.usage(project_id, user_id, per_user=True)))
        for (limits, used), (name, requested) in (
                (check, item) for check in checks for item in wanted.items()):
            if over(limits[name], used[name], requested):
                raise QuotaExceeded(
                    f"Quota exceeded for {name}: Requested {requested}, but already used "
                    f"{used[name]} of {limits[name]} {name}")

    def volume_defaults(self) -> dict[str, int]:
        """Every project's ``volumes`` and ``gigabytes`` limits: the
        settings, as the default class's rows change them."""
        limits = {"volumes": self.settings.quota_volumes,
                  "gigabytes": self.settings.quota_gigabytes}
        return _with_rows(limits, self.store.query(
            "SELECT resource, hard_limit FROM quota_classes WHERE class_name = ?",
            DEFAULT_CLASS))

    def volume_limits(self, project_id: str) -> dict[str, int]:
        """The project's ``volumes`` and ``gigabytes`` limits."""
        return _with_rows(self.volume_defaults(), self.store.query(
            "SELECT resource, hard_limit FROM quotas WHERE project_id = ? AND user_id = ''",
            project_id))

    def update_volume_limits(self, project_id: str, values: Mapping[str, int]) -> dict[str, int]:
        """Set a project's ``volumes`` or ``gigabytes`` limit (Cinder's
        os-quota-sets update): one below what the project uses is refused."""
        with self.lock:
            used = self.volume_usage(project_id)
            for name, limit in values.items():
                if name not in VOLUME_RESOURCES:
                    raise Invalid(reason=f"{name!r} is not a volume quota: "
                                  f"{', '.join(VOLUME_RESOURCES)}")
                if limit != UNLIMITED and limit < used[name]:
                    raise Invalid(reason=f"Quota value {limit} for {name} is smaller than "
                                  f"already used and reserved {used[name]}")
            with self.store.transaction() as db:
                for name, limit in values.items():
                    db.execute("INSERT OR REPLACE INTO quotas VALUES (?, '', ?, ?)",
                               (project_id, name, limit))
        return self.volume_limits(project_id)

    def reset_volume_limits(self, project_id: str) -> None:
        """Back to the defaults (Cinder's os-quota-sets delete)."""
        with self.store.transaction() as db:
            db.execute("DELETE FROM quotas WHERE project_id = ? AND user_id = '' AND resource "
                       f"IN ({', '.join('?' for _ in VOLUME_RESOURCES)})",
                       (project_id, *VOLUME_RESOURCES))

    def volume_usage(self, project_id: str) -> dict[str, int]:
        """The project's volumes (any status) and their GiB."""
        row = self.store.query("SELECT COUNT(*), COALESCE(SUM(size_gb), 0) FROM volumes "
                               "WHERE project_id = ?", project_id)[0]
        return {"volumes": int(row[0]), "gigabytes": int(row[1])}

    def check_volumes(self, project_id: str, count: int, gigabytes: int) -> None:
        """Room for ``count`` more volumes of ``gigabytes`` GiB in all
        (Cinder's words), the extends under way counted; call holding
        :attr:`lock` until they are recorded."""
        limits, used = self.volume_limits(project_id), self.volume_usage(project_id)
        used["gigabytes"] += sum(gb for project, gb in self._growing.values()
                                 if project == project_id)
        if over(limits["volumes"], used["volumes"], count):
            raise VolumeQuotaExceeded(reason=(
                f"Maximum number of volumes allowed ({limits['volumes']}) exceeded for quota "
                f"'volumes': the project has {used['volumes']}, {count} more asked for."))
        if over(limits["gigabytes"], used["gigabytes"], gigabytes):
            raise VolumeQuotaExceeded(reason=(
                "Requested volume or snapshot exceeds allowed gigabytes quota. Requested "
                f"{gigabytes}G, quota is {limits['gigabytes']}G and {used['gigabytes']}G has "
                "been consumed."))

    def hold_growth(self, project_id: str, gigabytes: int) -> object:
        """Check and hold the ``gigabytes`` an extend adds until
        :meth:`release_growth` of the hold returned (when its new size is
        recorded, or it failed)."""
        hold = object()
        with self.lock:
            self.check_volumes(project_id, 0, gigabytes)
            self._growing[hold] = (project_id, gigabytes)
        return hold

    def release_growth(self, hold: object) -> None:
        with self.lock:
            self._growing.pop(hold, None)

    def check_metadata(self, project_id: str, items: int) -> None:
        limit = self.limits(project_id)["metadata_items"]
        if over(limit, 0, items):
            raise QuotaExceeded(f"Maximum number of metadata items exceeds {limit}")

    def check_injected_files(self, project_id: str,
                             files: Iterable[tuple[str, bytes]]) -> None:
        limits = self.limits(project_id)
        files = list(files)
        # Nova's words first (clients match them), then what was wrong.
        if over(limits["injected_files"], 0, len(files)):
            raise QuotaExceeded(f"Personality file limit exceeded: {len(files)} injected "
                                f"files, at most {limits['injected_files']}")
        for path, content in files:
            if over(limits["injected_file_path_bytes"], 0, len(path.encode())):
                raise QuotaExceeded("Personality file path exceeds maximum "
                                    f"{limits['injected_file_path_bytes']}: {path[:64]!r} "
                                    f"has {len(path.encode())} bytes")
            if over(limits["injected_file_content_bytes"], 0, len(content)):
                raise QuotaExceeded("Personality file content exceeds maximum "
                                    f"{limits['injected_file_content_bytes']}: {path[:64]!r} "
                                    f"has {len(content)} bytes")

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


def _with_rows(limits: dict[str, int], rows: Iterable[Any]) -> dict[str, int]:
    """``limits`` with the (resource, hard_limit) rows that name one of them."""
    for row in rows:
        if row["resource"] in limits:
            limits[row["resource"]] = int(row["hard_limit"])
    return limits


def _count(store: Store, sql: str, *args: Any) -> int:
    return int(store.query(sql, *args)[0][0])


# A flavor field of the instances' JSON bodies, summed as InstanceFlavor.from_json
# reads it (missing, null or 0: 0). TOTAL, not SUM: SUM raises 'integer
# overflow' past 64 bits (records whose sizes were set by hand), which would
# fail every spawn of the project; TOTAL adds as floats (exact to 2**53) and
# is 0.0 for no rows.
_SUMMED_FLAVOR = "TOTAL(CAST(COALESCE(json_extract(body, '$.flavor.{key}'), 0) AS INTEGER))"
