"""Password hashes: scrypt, salted, parameters kept in the hash string.

A hash reads ``scrypt$<log2 n>$<r>$<p>$<salt>$<key>`` (salt and key in
unpadded urlsafe base64), so the cost can be raised later without breaking
the hashes already stored: each is checked with its own parameters.
Comparison is constant-time; a user with no password (the empty hash)
never matches, and checking a password for a user that does not exist
costs the same as for one that does (:data:`DUMMY_HASH`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SCHEME = "scrypt"
# 2**14 x 8 x 128 bytes = 16 MiB and about 50 ms a hash: OWASP's scrypt
# minimum. OpenSSL caps scrypt's memory at 32 MiB unless told otherwise.
LOG2_N, R, P = 14, 8, 1
KEY_BYTES, SALT_BYTES = 32, 16
MAX_PASSWORD_CHARS = 4096  # Keystone's own limit
_MAX_MEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=1 << log2_n, r=r, p=p,
                          maxmem=_MAX_MEM, dklen=length)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    key = _derive(password, salt, LOG2_N, R, P, KEY_BYTES)
    return f"{SCHEME}${LOG2_N}${R}${P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from. The empty
    hash (a user with no password yet) and malformed hashes never match."""
    parsed = _parse(stored)
    if parsed is None:
        _derive(password, DUMMY_SALT, LOG2_N, R, P, KEY_BYTES)  # the same time either way
        return False
    log2_n, r, p, salt, key = parsed
    return hmac.compare_digest(_derive(password, salt, log2_n, r, p, len(key)), key)


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        return None
    try:
        log2_n, r, p = (int(x) for x in parts[1:4])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        return None
    if not (1 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16 and key):
        return None
    return log2_n, r, p, salt, key


def generate_password() -> str:
    """A random password to hand to a person: 24 urlsafe characters (144 bits)."""
    return secrets.token_urlsafe(18)


DUMMY_SALT = b"\0" * SALT_BYTES
# Checked against when the user does not exist: same work, never a match.
DUMMY_HASH = ""
