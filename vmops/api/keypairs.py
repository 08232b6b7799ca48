"""Keypairs vmops makes itself (POST /os-keypairs without a public key)."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from vmops.errors import VmopsError

KEY_BITS = 2048  # Nova makes 2048-bit RSA keys


def generate() -> tuple[str, str]:
    """A new RSA key pair: (private key in PEM, public key in OpenSSH form).
    Made by ssh-keygen in a private temporary directory that is removed
    after; the private key is answered once and never stored."""
    with tempfile.TemporaryDirectory(prefix="vmops-key-") as tmp:
        path = Path(tmp) / "key"
        try:
            subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", str(KEY_BITS), "-m", "PEM",
                            "-N", "", "-C", "Generated-by-vmops", "-f", str(path)],
                           check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            raise VmopsError(f"could not make a key pair with ssh-keygen: {exc}") from None
        return path.read_text(), path.with_suffix(".pub").read_text().strip()
