"""Serial console tokens: what a console URL carries (docs/console.md).

A token is random (32 bytes, URL-safe), names one server, is good for one
connection and only until it expires. Only its sha256 is kept, in memory:
a service restart forgets every token (ask for a new URL).

Outstanding tokens are bounded, so asking for URLs in a loop cannot fill
memory: at most ``PER_SERVER`` per server (a new one drops that server's
oldest, so the newest URL always works) and ``TOTAL`` in all (past that,
no new one is issued until some are used or expire). Expired ones are
forgotten whenever a token is issued or redeemed.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from vmops.errors import Conflict

DEFAULT_TTL = 600.0  # seconds; Nova's [consoleauth] token_ttl
PER_SERVER = 32
TOTAL = 4096


@dataclass(frozen=True)
class Grant:
    instance_id: str
    expires: float  # on the table's clock


class ConsoleTokens:
    def __init__(self, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.monotonic,
                 per_server: int = PER_SERVER, total: int = TOTAL) -> None:
        self.ttl = ttl
        self.per_server = per_server
        self.total = total
        self._clock = clock
        self._grants: dict[str, Grant] = {}  # oldest first (insertion order)
        self._lock = threading.Lock()

    def issue(self, instance_id: str) -> str:
        """A new token for the server; its oldest outstanding one is dropped
        if it already has ``per_server``. Conflict when ``total`` are
        outstanding."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._forget_expired()
            mine = [d for d, g in self._grants.items() if g.instance_id == instance_id]
            for digest in mine[:max(0, len(mine) - self.per_server + 1)]:
                del self._grants[digest]
            if len(self._grants) >= self.total:
                raise Conflict(reason=f"{len(self._grants)} console URLs are outstanding, "
                               "the most this service keeps: try again when some have "
                               f"been used or expired (they last {self.ttl:g} s)")
            self._grants[_digest(token)] = Grant(instance_id, self._clock() + self.ttl)
        return token

    def redeem(self, token: str) -> str | None:
        """The server the token was issued for, once: the token is used up
        whether or not the console then opens. None if unknown, used or
        expired."""
        with self._lock:
            grant = self._grants.pop(_digest(token), None)
            self._forget_expired()
        if grant is None or grant.expires <= self._clock():
            return None
        return grant.instance_id

    def __len__(self) -> int:
        with self._lock:
            return len(self._grants)

    def _forget_expired(self) -> None:
        now = self._clock()
        for digest in [d for d, g in self._grants.items() if g.expires <= now]:
            del self._grants[digest]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", errors="surrogatepass")).hexdigest()
