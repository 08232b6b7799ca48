"""Nova's ``os-instance_usage_audit_log`` (admin): the usage audit of the
last completed period (Nova's default audit period, a calendar month, UTC)
before now or before a given time.

Nova's compute hosts run the audit in the background and record a task
log per host; vmops counts from its records when asked
(``vmops/compute/usage.py``: the servers there are and the destroyed ones
active in the period), so its one host is always done, with no errors.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from vmops.api import views
from vmops.api.server import Request, Response, Router
from vmops.compute import host_facts, usage
from vmops.errors import Invalid
from vmops.store import Store

P = views.API_PREFIX
_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f")


def add_routes(r: Router, store: Store) -> None:
    api = UsageAuditApi(store)
    r.add("GET", f"{P}/os-instance_usage_audit_log", api.list)
    r.add("GET", f"{P}/os-instance_usage_audit_log/{{before}}", api.show)


def audit_period(before: datetime) -> tuple[datetime, datetime]:
    """The last whole calendar month ending at or before ``before`` (Nova's
    last_completed_audit_period for its default unit, "month")."""
    end = before.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if end >= before:
        end = _month_before(end)
    return _month_before(end), end


def _month_before(day: datetime) -> datetime:
    return day.replace(year=day.year - 1, month=12) if day.month == 1 \
        else day.replace(month=day.month - 1)


class UsageAuditApi:
    def __init__(self, store: Store) -> None:
        self.store = store

    def list(self, req: Request) -> Response:
        return Response(200, {"instance_usage_audit_logs": self._audit(_utcnow())})

    def show(self, req: Request) -> Response:
        text = req.params["before"]
        for fmt in _FORMATS:
            try:
                before = datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
        else:
            raise Invalid(reason=f"Invalid timestamp for date {text[:40]}")
        return Response(200, {"instance_usage_audit_log": self._audit(before)})

    def _audit(self, before: datetime) -> dict[str, Any]:
        begin, end = audit_period(before)
        host = host_facts.hostname()
        count = len(usage.in_period(self.store, _ts(begin), _ts(end)))
        return {
            "period_beginning": str(begin), "period_ending": str(end),
            "num_hosts": 1, "num_hosts_done": 1, "num_hosts_running": 0,
            "num_hosts_not_run": 0, "hosts_not_run": [], "total_instances": count,
            "total_errors": 0, "overall_status": "ALL hosts done. 0 errors.",
            "log": {host: {"state": "DONE", "instances": count, "errors": 0, "message": (
                f"vmops counted the {count} instances of host {host} active in the "
                "period from its records")}}}


def _utcnow() -> datetime:
    """Now in UTC, naive (as Nova's times are)."""
    return datetime.now(UTC).replace(tzinfo=None)


def _ts(naive_utc: datetime) -> float:
    return naive_utc.replace(tzinfo=UTC).timestamp()
