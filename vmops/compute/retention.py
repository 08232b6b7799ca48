"""How long the records of destroyed servers are kept.

A destroyed server leaves two kinds of rows, as a deleted instance does in
Nova: its instance actions (``GET /servers/{id}/os-instance-actions`` shows
them from 2.21 on) and its usage (``instance_usage``: os-simple-tenant-usage
and the usage audit count a server over its whole life). Nova keeps them
(soft-deleted) until an operator archives and purges them (``nova-manage db
archive_deleted_rows --before`` then ``nova-manage db purge --before``,
usually from cron, a few months back). vmops has no operator cron: the
service prunes them itself, at start and every ``PRUNE_INTERVAL_S``, once
the server has been destroyed ``deleted_rows_max_age_days`` days ago
(0: never). A usage period reaching back further than that then no longer
counts those servers, as in Nova after a purge.

The rows of servers that still exist are never touched, however old.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from vmops.store import Store

log = logging.getLogger(__name__)

DAY_S = 86400.0
PRUNE_INTERVAL_S = 3600.0


@dataclass(frozen=True)
class Pruned:
    actions: int
    usage: int


def prune_destroyed(store: Store, before: float) -> Pruned:
    """Delete the actions and usage rows of servers destroyed before
    ``before`` (a Unix time), in one transaction. A server's actions go
    with its usage row; those of a server with neither a record nor a usage
    row (a database older than the usage table) once all of them started
    before ``before``."""
    with store.transaction() as db:
        actions = db.execute(
            "DELETE FROM instance_actions WHERE instance_id NOT IN (SELECT id FROM instances) "
            "AND instance_id NOT IN (SELECT instance_id FROM instance_usage "
            "WHERE deleted_at >= :before) "
            "AND instance_id NOT IN (SELECT instance_id FROM instance_actions "
            "WHERE start_time >= :before)",
            {"before": before}).rowcount
        usage = db.execute("DELETE FROM instance_usage WHERE deleted_at < ?",
                           (before,)).rowcount
    return Pruned(actions=actions, usage=usage)


def prune_old(store: Store, max_age_days: int, now: float | None = None) -> Pruned:
    """``prune_destroyed`` for servers destroyed more than ``max_age_days``
    days ago; nothing with 0."""
    if max_age_days <= 0:
        return Pruned(0, 0)
    before = (time.time() if now is None else now) - max_age_days * DAY_S
    pruned = prune_destroyed(store, before)
    if pruned.actions or pruned.usage:
        log.info("pruned the records of servers destroyed more than %d days ago: %d "
                 "instance actions, %d usage rows", max_age_days, pruned.actions,
                 pruned.usage)
    return pruned
