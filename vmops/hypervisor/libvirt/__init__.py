"""libvirt support: the driver (``driver.py``, the only module importing the
libvirt binding) and the domain XML builder.

This package file holds what doctor needs without the binding: URI
parsing, the embed root's layout and the system user libvirt requires.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

# Written to <root>/etc/qemu.conf of an embed root before it is opened.
EMBED_QEMU_CONF = """\
# Written by vmops each time it opens this libvirt root; edits are overwritten.
#
# QEMU's stdout/stderr go to log/qemu/<name>.log directly: the default hands
# them to virtlogd, a daemon this daemon-less root does not have.
stdio_handler = "file"
# QEMU runs as root, like the vmops service itself. As the compiled-in
# libvirt-qemu user it could not bind the console sockets in vmops' private
# run directory, and when that user may not open /dev/kvm libvirt finds its
# cached QEMU capabilities stale on every lookup and probes QEMU again (about
# 4 s each, several per define). libvirt still requires that user to exist.
user = "root"
group = "root"
# Root needs no chown of disk images, nor xattrs recording their old owner.
dynamic_ownership = 0
remember_owner = 0
"""

# The compiled-in user libvirt's QEMU driver looks up when run as root,
# before it reads qemu.conf (Debian: libvirt-qemu; Fedora and others: qemu).
QEMU_DRIVER_USERS = ("libvirt-qemu", "qemu")

def embed_uri(state_dir: Path) -> str:
    return f"qemu:///embed?root={state_dir / 'libvirt'}"


def embed_root(uri: str) -> Path | None:
    """The root directory of an embedded QEMU URI, else None."""
    parts = urlsplit(uri)
    if parts.scheme != "qemu" or parts.path != "/embed":
        return None
    roots = parse_qs(parts.query).get("root")
    return Path(roots[0]) if roots else None


def pid_file_dir(uri: str) -> Path | None:
    """Where libvirt's QEMU driver keeps ``<domain name>.pid`` for ``uri``."""
    root = embed_root(uri)
    if root is not None:
        return root / "run" / "qemu"
    parts = urlsplit(uri)
    if parts.scheme != "qemu" or parts.netloc:
        return None  # not QEMU, or remote: its pid files are on another host
    if parts.path == "/system":
        return Path("/run/libvirt/qemu")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if parts.path == "/session" and runtime:
        return Path(runtime) / "libvirt" / "qemu" / "run"
    return None


# QEMU's monitor socket is <root>/lib/qemu/domain-<id>-<name, cut to 20>/monitor.sock
# and a UNIX socket path has at most 107 bytes: 49 are left for the root,
# with 7 digits for the domain id.
MAX_EMBED_ROOT_CHARS = 107 - len("/lib/qemu/domain-") - 7 - len("-") - 20 - len("/monitor.sock")


def embed_root_too_long(root: Path) -> str | None:
    """Why ``root`` cannot host QEMU monitor sockets, or None if it can."""
    length = len(os.fsencode(root))
    if length <= MAX_EMBED_ROOT_CHARS:
        return None
    return (f"the libvirt root {root} is {length} bytes long; QEMU's monitor socket "
            f"below it needs it at most {MAX_EMBED_ROOT_CHARS} (UNIX socket paths are "
            "limited to 107 bytes): name a shorter root in libvirt_uri (the default, "
            "empty, gives any state directory a short alias: only a runtime directory "
            "($XDG_RUNTIME_DIR) this long can make it too long)")


def prepare_embed_root(root: Path) -> None:
    """Create the root and write the qemu.conf it needs to run without daemons."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    conf = root / "etc" / "qemu.conf"
    if not conf.exists() or conf.read_text() != EMBED_QEMU_CONF:
        conf.write_text(EMBED_QEMU_CONF)


def missing_qemu_driver_user() -> str | None:
    """The user to create when libvirt's QEMU driver, run as root, would
    refuse to start for want of its compiled-in user; None if not needed."""
    if os.geteuid() != 0:
        return None
    for name in QEMU_DRIVER_USERS:
        try:
            pwd.getpwnam(name)
            return None
        except KeyError:
            continue
    return QEMU_DRIVER_USERS[0]
