"""Tokens: random strings handed to the client, only their sha256 kept.

A token is 32 random bytes in urlsafe base64 (43 characters). The tokens
table holds its sha256 (``id_hash``), whose user and project it speaks for,
how it was obtained, its audit id and when it expires; roles are not kept
but read from the assignments each time it is used, so taking a role away
takes effect at once. Revoking deletes the row. Expired rows are purged
lazily, at most once a minute, when a token is issued.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vmops.store import Store

TOKEN_BYTES = 32
MAX_TOKEN_CHARS = 512  # longer is nothing vmops issued; not even hashed
PURGE_INTERVAL_S = 60.0


@dataclass(frozen=True)
class TokenRecord:
    id_hash: str
    user_id: str
    project_id: str | None
    methods: tuple[str, ...]
    audit_id: str
    issued_at: float
    expires_at: float


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _audit_id() -> str:
    """22 urlsafe characters, as Keystone's audit ids."""
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()


class Tokens:
    def __init__(self, store: Store, ttl: float = 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._last_purge = 0.0

    def issue(self, user_id: str, project_id: str | None, methods: Sequence[str],
              expires_at: float | None = None) -> tuple[str, TokenRecord]:
        """A new token (the secret, and what is kept of it). ``expires_at``
        defaults to now + ttl; a token made from another keeps that one's."""
        now = self.clock()
        token = secrets.token_urlsafe(TOKEN_BYTES)
        record = TokenRecord(token_hash(token), user_id, project_id, tuple(methods),
                             _audit_id(), now, expires_at or now + self.ttl)
        self._purge_now_and_then(now)
        with self.store.transaction() as db:
            db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (record.id_hash, user_id, project_id, json.dumps(record.methods),
                        record.audit_id, record.issued_at, record.expires_at))
        return token, record

    def lookup(self, token: str) -> TokenRecord | None:
        """The unexpired, unrevoked token, or None."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        rows = self.store.query("SELECT * FROM tokens WHERE id_hash = ? AND expires_at > ?",
                                token_hash(token), self.clock())
        if not rows:
            return None
        row = rows[0]
        return TokenRecord(row["id_hash"], row["user_id"], row["project_id"],
                           tuple(json.loads(row["methods"])), row["audit_id"],
                           row["issued_at"], row["expires_at"])

    def revoke(self, token: str) -> bool:
        """Whether there was such a token (expired ones count as gone)."""
        if self.lookup(token) is None:
            return False
        with self.store.transaction() as db:
            db.execute("DELETE FROM tokens WHERE id_hash = ?", (token_hash(token),))
        return True

    def purge_expired(self) -> int:
        with self.store.transaction() as db:
            return db.execute("DELETE FROM tokens WHERE expires_at <= ?",
                              (self.clock(),)).rowcount

    def _purge_now_and_then(self, now: float) -> None:
        with self._lock:
            if now - self._last_purge < PURGE_INTERVAL_S:
                return
            self._last_purge = now
        self.purge_expired()

    def count(self) -> int:
        return int(self.store.query("SELECT COUNT(*) FROM tokens")[0][0])
