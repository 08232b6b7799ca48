"""Keypairs: what an SSH public key must be, and the pairs vmops makes
itself (POST /os-keypairs without a public key): SSH keys, and from 2.2
x509 certificates, as Nova makes them."""

from __future__ import annotations

import base64
import binascii
import subprocess
import tempfile
from pathlib import Path

from vmops.errors import Invalid, VmopsError

KEY_BITS = 2048  # Nova makes 2048-bit RSA keys
MAX_RSA_BITS = 16384  # OpenSSH's limit
CERT_DAYS = 3650
# The fields after the key type in each SSH public key blob (RFC 4253, 5656, 8709).
_FIELDS = {"ssh-rsa": ("mpint", "mpint"), "ssh-dss": ("mpint",) * 4,
           "ssh-ed25519": ("string",), "ecdsa-sha2-nistp256": ("string", "string"),
           "ecdsa-sha2-nistp384": ("string", "string"),
           "ecdsa-sha2-nistp521": ("string", "string")}


def check_ssh_public_key(text: str) -> None:
    """Refuse what is not an SSH public key of a known type, as Nova does
    by loading it: the blob's own type must be the one named, its fields
    whole, nothing after them; RSA moduli at most 16384 bits."""
    parts = text.strip().split()
    if len(parts) < 2:
        raise Invalid(reason="public key must look like 'ssh-ed25519 AAAA... comment'")
    kind = parts[0]
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(reason="public key's second field is not base64") from None
    fields = _read_fields(blob)
    if fields is None or fields[0] != kind.encode():
        raise Invalid(reason=f"public key is not a {kind} key (its data does not say so)")
    if kind.startswith("sk-"):
        return  # security keys: their fields vary; the type matches
    shape = _FIELDS.get(kind)
    if shape is None:
        raise Invalid(reason=f"unknown public key type {kind!r}; known: "
                      f"{', '.join(sorted(_FIELDS))}")
    if len(fields) != 1 + len(shape):
        raise Invalid(reason=f"public key is not a whole {kind} key")
    if kind == "ssh-rsa" and int.from_bytes(fields[2], "big").bit_length() > MAX_RSA_BITS:
        raise Invalid(reason=f"an RSA public key has at most {MAX_RSA_BITS} bits")


def _read_fields(blob: bytes) -> list[bytes] | None:
    """The length-prefixed fields of a key blob, or None if they do not
    end exactly at its end."""
    fields, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            return None
        size = int.from_bytes(blob[at:at + 4], "big")
        if size == 0 or at + 4 + size > len(blob):
            return None
        fields.append(blob[at + 4:at + 4 + size])
        at += 4 + size
    return fields or None


def generate() -> tuple[str, str]:
    """A new RSA key pair: (private key in PEM, public key in OpenSSH form).
    Made by ssh-keygen in a private temporary directory that is removed
    after; the private key is answered once and never stored."""
    with tempfile.TemporaryDirectory(prefix="vmops-key-") as tmp:
        path = Path(tmp) / "key"
        _run(["ssh-keygen", "-q", "-t", "rsa", "-b", str(KEY_BITS), "-m", "PEM", "-N", "",
              "-C", "Generated-by-vmops", "-f", str(path)], "ssh-keygen")
        return path.read_text(), path.with_suffix(".pub").read_text().strip()


def generate_x509(name: str) -> tuple[str, str]:
    """A new self-signed certificate and its key, as Nova's x509 keypairs:
    (private key in PEM, certificate in PEM)."""
    with tempfile.TemporaryDirectory(prefix="vmops-cert-") as tmp:
        key, cert = Path(tmp) / "key.pem", Path(tmp) / "cert.pem"
        subject = "/CN=" + "".join(c for c in name if c.isalnum() or c in "._-")[:64]
        _run(["openssl", "req", "-x509", "-newkey", f"rsa:{KEY_BITS}", "-nodes", "-sha256",
              "-days", str(CERT_DAYS), "-subj", subject or "/CN=vmops", "-keyout", str(key),
              "-out", str(cert)], "openssl")
        return key.read_text(), cert.read_text()


def x509_fingerprint(cert: str) -> str:
    """The SHA-1 fingerprint Nova shows for a certificate (aa:bb:...);
    refuses text that is not one PEM certificate."""
    if not cert.strip().startswith("-----BEGIN CERTIFICATE-----"):
        raise Invalid(reason="an x509 keypair's public_key is a PEM certificate")
    try:
        done = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha1"],
                              input=cert.encode(), capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise VmopsError(f"could not read the certificate with openssl: {exc}") from None
    if done.returncode != 0:
        raise Invalid(reason="public_key is not a PEM certificate openssl can read")
    return done.stdout.decode().strip().rpartition("=")[2].lower()


def _run(args: list[str], tool: str) -> None:
    try:
        subprocess.run(args, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise VmopsError(f"could not make a key pair with {tool}: {exc}") from None
