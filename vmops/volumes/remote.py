"""Remote volumes: an NBD export or an iSCSI LUN that QEMU opens itself.

vmops neither makes nor removes the target: registering one checks that it
answers (the export or LUN exists, its size) with ``qemu-img info``, and
deleting the volume only forgets it. The URLs taken are QEMU's own:

- ``nbd://HOST[:PORT]/EXPORT`` (port 10809) or
  ``nbd+unix:///EXPORT?socket=/PATH``;
- ``iscsi://HOST[:PORT]/IQN/LUN`` (port 3260). A CHAP user and password are
  never part of the URL: they are given apart, and the password is kept in
  a libvirt secret (the domain XML and vmops' store name it by uuid only).
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from pathlib import Path
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from vmops.disks import qemu_img
from vmops.errors import DiskError, Invalid
from vmops.hypervisor.base import NetworkSource

NBD_PORT = 10809
ISCSI_PORT = 3260
# What goes into QEMU's option strings unescaped: no comma, no space.
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$|^\[[0-9A-Fa-f:.]{2,45}\]$")
_EXPORT = re.compile(r"^[A-Za-z0-9._:@+/-]{0,255}$")
_IQN = re.compile(r"^(iqn\.\d{4}-\d{2}\.[A-Za-z0-9.-]+(:[A-Za-z0-9.:_-]+)?|eui\.[0-9A-Fa-f]{16})$")
_CHAP_USER = re.compile(r"^[A-Za-z0-9._@:-]{1,64}$")
_SOCKET = re.compile(r"^/[A-Za-z0-9._/@+-]{1,106}$")
MAX_SECRET_BYTES = 255
MAX_IQN_BYTES = 223  # RFC 3720 3.2.6.1


def parse_nbd(url: str) -> NetworkSource:
    """``nbd://HOST[:PORT]/EXPORT`` or ``nbd+unix:///EXPORT?socket=PATH``."""
    parts = _split(url, "NBD URL", "nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=/PATH")
    export = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not _EXPORT.fullmatch(export):
        raise Invalid(reason=f"NBD export name {export[:60]!r}: letters, digits and ._:@+/- "
                      "only, at most 255")
    if parts.scheme == "nbd+unix":
        sockets = parse_qs(parts.query).get("socket", [])
        if parts.netloc or len(sockets) != 1 or not _SOCKET.fullmatch(sockets[0]):
            raise Invalid(reason=f"NBD URL {url[:120]!r}: nbd+unix:///EXPORT?socket=/PATH "
                          "(an absolute path of at most 107 bytes)")
        return NetworkSource(protocol="nbd", name=export, socket=sockets[0])
    if parts.scheme != "nbd" or parts.query or parts.fragment:
        raise Invalid(reason=f"NBD URL {url[:120]!r}: nbd://HOST[:PORT]/EXPORT or "
                      "nbd+unix:///EXPORT?socket=/PATH")
    host, port = _host_port(parts.netloc, url, NBD_PORT)
    return NetworkSource(protocol="nbd", name=export, host=host, port=port)


def parse_iscsi(url: str) -> NetworkSource:
    """``iscsi://HOST[:PORT]/IQN/LUN``."""
    usage = "iscsi://HOST[:PORT]/IQN/LUN"
    parts = _split(url, "iSCSI URL", usage)
    if parts.scheme != "iscsi" or parts.query or parts.fragment:
        raise Invalid(reason=f"iSCSI URL {url[:120]!r}: {usage}")
    if "@" in parts.netloc:
        raise Invalid(reason="an iSCSI URL carries no user or password: give "
                      "--chap-user and --chap-secret-file")
    host, port = _host_port(parts.netloc, url, ISCSI_PORT)
    pieces = parts.path[1:].split("/")
    if len(pieces) != 2 or not _IQN.fullmatch(pieces[0]):
        raise Invalid(reason=f"iSCSI URL {url[:120]!r}: {usage}, the target's name an "
                      "iqn.YYYY-MM.domain[:name] or eui. name")
    if len(pieces[0]) > MAX_IQN_BYTES:
        raise Invalid(reason=f"iSCSI target name {pieces[0][:60]!r}...: at most "
                      f"{MAX_IQN_BYTES} bytes")
    if not re.fullmatch(r"[0-9]{1,5}", pieces[1]) or int(pieces[1]) > 16383:
        raise Invalid(reason=f"iSCSI LUN {pieces[1][:20]!r}: a number, 0 to 16383")
    return NetworkSource(protocol="iscsi", name=f"{pieces[0]}/{int(pieces[1])}",
                         host=host, port=port)


def _split(url: str, what: str, usage: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:  # an unclosed [ of an IPv6 address, ...
        raise Invalid(reason=f"{what} {url[:120]!r}: {exc}; {usage}") from None


def _host_port(netloc: str, url: str, default_port: int) -> tuple[str, int]:
    host, _, port = netloc.rpartition(":") if not netloc.endswith("]") else (netloc, "", "")
    if not host:  # no port given
        host, port = netloc, ""
    if not _HOST.fullmatch(host):
        raise Invalid(reason=f"host {host[:60]!r} in {url[:120]!r}: a host name or address")
    if port and (not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536):
        raise Invalid(reason=f"port {port[:10]!r} in {url[:120]!r}: 1 to 65535")
    return host.strip("[]"), int(port) if port else default_port


def check_chap(source: NetworkSource, user: str, secret: bytes | None) -> None:
    """CHAP is iSCSI's, both halves together, and names nothing odd."""
    if not user and secret is None:
        return
    if source.protocol != "iscsi":
        raise Invalid(reason="CHAP (--chap-user, --chap-secret-file) is for iSCSI volumes only")
    if not user or secret is None:
        raise Invalid(reason="CHAP needs both a user (--chap-user) and a secret "
                      "(--chap-secret-file)")
    if not _CHAP_USER.fullmatch(user):
        raise Invalid(reason=f"CHAP user {user[:40]!r}: 1 to 64 letters, digits or ._@:-")
    if not secret or len(secret) > MAX_SECRET_BYTES or b"\0" in secret:
        raise Invalid(reason=f"CHAP secret: 1 to {MAX_SECRET_BYTES} bytes, no NUL")


def image_opts(source: NetworkSource, with_secret: bool) -> str:
    """QEMU's ``--image-opts`` for the source (values checked by the parsers)."""
    if source.protocol == "nbd":
        server = (f"server.type=unix,server.path={source.socket}" if source.socket else
                  f"server.type=inet,server.host={source.host},server.port={source.port}")
        return f"driver=nbd,{server},export={source.name}"
    iqn, lun = source.name.rsplit("/", 1)
    host = f"[{source.host}]" if ":" in source.host else source.host
    opts = f"driver=iscsi,transport=tcp,portal={host}:{source.port},target={iqn},lun={lun}"
    if with_secret:
        opts += f",user={source.auth_user},password-secret=sec0"
    return opts


def probe(source: NetworkSource, secret: bytes | None) -> int:
    """The size in bytes of the export or LUN, asking the target itself;
    Invalid naming what the target answered if it cannot be opened."""
    try:
        if secret is None:
            found = qemu_img.remote_info(image_opts(source, with_secret=False))
        else:
            with tempfile.TemporaryDirectory(prefix="vmops-chap-") as tmp:
                path = Path(tmp) / "secret"  # 0700 directory, 0600 file, removed at once
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(secret)
                found = qemu_img.remote_info(image_opts(source, with_secret=True), path)
    except DiskError as exc:
        raise Invalid(reason=f"cannot open {source.url}: {_why(exc.message)}") from exc
    return int(found["virtual-size"])


def _why(message: str) -> str:
    """qemu-img's own reason, without its echo of the options."""
    return re.sub(r"Could not open '[^']*': ", "", message).replace("\n", " ").strip()


def portal_silence(host: str, port: int, timeout: float) -> str:
    """Why the portal ``host:port`` does not accept a TCP connection within
    ``timeout`` seconds ('' if it does). A portal that accepts one has a
    target daemon listening: QEMU's initiator can log in again."""
    try:
        with socket.create_connection((host, port), timeout):
            return ""
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)
