"""The state an admin gives Nova's services of this host (``os-services``:
disable, enable, force down), kept in ``services`` (schema 8).

The vmops service plays every Nova service of the host (conductor,
scheduler, compute). Disabling a service or forcing it down is recorded
and shown; for ``nova-compute`` it also does what it does in Nova: the
scheduler has no host for new servers, so they go to ERROR with Nova's
"No valid host" fault (servers there are keep running). A service with no
row is enabled and not forced down.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from vmops.compute import host_facts
from vmops.compute.server_groups import NO_VALID_HOST
from vmops.store import Store

COMPUTE_BINARY = "nova-compute"


@dataclass(frozen=True)
class ServiceState:
    disabled: bool = False
    disabled_reason: str | None = None
    forced_down: bool = False
    updated_at: float | None = None


def state(store: Store, binary: str, host: str) -> ServiceState:
    rows = store.query("SELECT * FROM services WHERE binary = ? AND host = ?", binary, host)
    if not rows:
        return ServiceState()
    row = rows[0]
    return ServiceState(bool(row["disabled"]), row["disabled_reason"], bool(row["forced_down"]),
                        row["updated_at"])


def update(store: Store, binary: str, host: str, *, disabled: bool | None = None,
           reason: str | None = None, forced_down: bool | None = None) -> ServiceState:
    """Change what is given; enabling clears the reason."""
    with store.transaction() as db:
        row = db.execute("SELECT * FROM services WHERE binary = ? AND host = ?",
                         (binary, host)).fetchone()
        now_disabled = bool(row["disabled"]) if row else False
        now_reason = row["disabled_reason"] if row else None
        now_forced = bool(row["forced_down"]) if row else False
        if disabled is not None:
            now_disabled, now_reason = disabled, (reason if disabled else None)
        if forced_down is not None:
            now_forced = forced_down
        db.execute("INSERT OR REPLACE INTO services VALUES (?, ?, ?, ?, ?, ?)",
                   (binary, host, int(now_disabled), now_reason, int(now_forced), time.time()))
    return state(store, binary, host)


def no_host(store: Store) -> str | None:
    """Why the scheduler has no host for a new server (nova-compute
    disabled or forced down), or None."""
    compute = state(store, COMPUTE_BINARY, host_facts.hostname())
    return NO_VALID_HOST if compute.disabled or compute.forced_down else None
