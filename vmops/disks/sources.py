"""Where imported images come from: a host file opened safely, or an http(s)
download kept within bounds.

A host file is opened once, without following a final symlink and without
blocking (a FIFO swapped in for the file cannot hang the import), checked
on the opened descriptor (a regular file; for a restricted caller, really
inside an allowed directory) and read from that descriptor only: there is
no window between a check and a use.

A download follows redirects itself, so every hop must be http or https;
any failure before the body starts (refused, timed out, 401, 404, a
redirect elsewhere) is the same :class:`ImageSourceUnreachable` to the
client, with the details in the service log. Its bounds
(:class:`ImportLimits`): the bytes (a setting, and never more than the free
space less a reserve), the total time (a watchdog shuts the socket down at
the deadline, whatever phase the transfer is in) and a minimum rate over a
window (reads return what has arrived, so a trickle is measured, not
waited out). ``user:password@`` in a URL is sent as Basic authentication to
that URL's origin only, and never shown: :func:`redact_url`.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import http.client
import logging
import os
import re
import socket
import ssl
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import SplitResult, unquote, urljoin, urlsplit, urlunsplit

from vmops.config import Settings
from vmops.errors import ImageSourceUnreachable, ImportLimitExceeded, ImportTooLarge, InvalidImage
from vmops.text import escape_controls

log = logging.getLogger(__name__)

CHUNK = 1 << 20
HTTP_TIMEOUT_S = 60.0  # the longest wait for any one read when no minimum rate is set
MAX_REDIRECTS = 5
URL_SCHEMES = ("http", "https")
_REDIRECTS = (301, 302, 303, 307, 308)
_FREE_SPACE_EVERY = 64 * CHUNK  # bytes between re-checks of the free space
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True)
class ImportLimits:
    """The bounds on one import (the image_import_* settings)."""

    max_bytes: int
    reserve_bytes: int
    timeout_s: float
    min_rate: int  # bytes per second over rate_window_s; 0: no minimum
    rate_window_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ImportLimits:
        return cls(max_bytes=settings.image_import_max_bytes,
                   reserve_bytes=settings.image_import_reserve_bytes,
                   timeout_s=settings.image_import_timeout,
                   min_rate=settings.image_import_min_rate,
                   rate_window_s=settings.image_import_rate_window)

    @property
    def read_timeout_s(self) -> float:
        """Nothing for a whole rate window is below any minimum rate."""
        wait = min(HTTP_TIMEOUT_S, self.rate_window_s) if self.min_rate else HTTP_TIMEOUT_S
        return min(wait, self.timeout_s)


class Source(Protocol):
    """An open image source: ``read`` gives what has arrived, b"" at the end."""

    shown: str  # how the source appears in faults and logs
    length: int | None

    def read(self) -> bytes: ...

    def close(self) -> None: ...


def is_url(source: str) -> bool:
    """A URL of any scheme (refused later unless http/https), else a host path."""
    return _URL.match(source) is not None


def redact_url(url: str) -> str:
    """``url`` without ``user:password@``, so a secret is never stored or shown."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an invalid URL)"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def open_source(source: str, limits: ImportLimits,
                allowed_dirs: tuple[Path, ...] | None = None) -> Source:
    """Open a host path or an http(s) URL. ``allowed_dirs`` None: any path."""
    if not is_url(source):
        return HostFile(source, allowed_dirs)
    if urlsplit(source).scheme not in URL_SCHEMES:
        raise InvalidImage(reason=f"{redact_url(source)}: only local paths and http(s) URLs "
                           "can be imported")
    return open_url(source, limits)


# -- host files -------------------------------------------------------------------


class HostFile:
    """A regular file, opened once; every check is on the opened descriptor."""

    def __init__(self, path: str, allowed_dirs: tuple[Path, ...] | None) -> None:
        self.shown = path
        self.fd = _open_regular_file(path, allowed_dirs)
        self.length: int | None = os.fstat(self.fd).st_size

    def read(self) -> bytes:
        return os.read(self.fd, CHUNK)

    def close(self) -> None:
        os.close(self.fd)


def _open_regular_file(path: str, allowed_dirs: tuple[Path, ...] | None) -> int:
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        why = "it is a symbolic link; give the file's own path" if exc.errno == errno.ELOOP \
            else exc.strerror or "cannot open it"
        raise _unreadable(path, why, allowed_dirs) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _unreadable(path, "not a regular file", allowed_dirs)
        if allowed_dirs is not None and not _inside(_opened_path(fd), allowed_dirs):
            raise _unreadable(path, "outside the allowed directories", allowed_dirs)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unreadable(path: str, why: str, allowed_dirs: tuple[Path, ...] | None) -> InvalidImage:
    # A restricted caller learns nothing from a refusal: not whether the path
    # exists, nor what it is, nor where it leads.
    if allowed_dirs is not None:
        why = "not a readable regular file inside the allowed directories"
    return InvalidImage(reason=f"cannot read {path}: {why}")


def _opened_path(fd: int) -> Path:
    """Where the descriptor really is, whatever symlinked directories led there."""
    return Path(os.readlink(f"/proc/self/fd/{fd}"))


def _inside(path: Path, dirs: tuple[Path, ...]) -> bool:
    return any(path.is_relative_to(os.path.realpath(d)) for d in dirs)


# -- downloads --------------------------------------------------------------------


class Deadline:
    """The import's total time: at the end, shut down whatever socket it is on."""

    def __init__(self, limits: ImportLimits, shown: str) -> None:
        self.limits = limits
        self.shown = shown
        self.expired = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(limits.timeout_s, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            self.expired.set()
            if self._sock is not None:
                _shutdown(self._sock)

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.expired.is_set():
                _shutdown(sock)

    def check(self) -> None:
        if self.expired.is_set():
            raise ImportLimitExceeded(
                source=self.shown, reason=f"it took longer than image_import_timeout "
                f"({self.limits.timeout_s:g} s)")

    def cancel(self) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class Download:
    """The body of a 200 answer; reads give what has arrived (``read1``)."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse,
                 deadline: Deadline) -> None:
        self.conn = conn
        self.response = response
        self.deadline = deadline
        self.shown = deadline.shown
        self.length: int | None = response.length

    def read(self) -> bytes:
        try:
            data = self.response.read1(CHUNK)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.deadline.check()
            if isinstance(exc, TimeoutError):
                raise ImportLimitExceeded(
                    source=self.shown, reason=f"nothing arrived for "
                    f"{self.deadline.limits.read_timeout_s:g} s") from None
            raise InvalidImage(reason=f"reading {self.shown} failed: {exc!r}") from None
        self.deadline.check()
        return data

    def close(self) -> None:
        self.deadline.cancel()
        self.response.close()
        self.conn.close()


def open_url(url: str, limits: ImportLimits) -> Download:
    """GET ``url``, following up to MAX_REDIRECTS http(s) redirects."""
    shown = redact_url(url)
    deadline = Deadline(limits, shown)
    try:
        return _get(url, limits, deadline)
    except BaseException:
        deadline.cancel()
        raise


def _get(url: str, limits: ImportLimits, deadline: Deadline) -> Download:
    first = urlsplit(url)
    auth = _basic_auth(first)
    for _hop in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in URL_SCHEMES or not parts.hostname:
            raise _unreachable(deadline.shown, f"redirected to {redact_url(url)}, "
                               "which is not an http(s) URL")
        same_origin = _origin(parts) == _origin(first)
        conn, response = _request(parts, limits, deadline, auth if same_origin else None)
        location = response.getheader("Location")
        if response.status in _REDIRECTS and location:
            response.close()
            conn.close()
            url = urljoin(url, location.strip())
            continue
        if response.status != 200:
            response.close()
            conn.close()
            raise _unreachable(deadline.shown, f"{redact_url(url)} answered HTTP "
                               f"{response.status}")
        return Download(conn, response, deadline)
    raise _unreachable(deadline.shown, f"more than {MAX_REDIRECTS} redirects")


def _request(parts: SplitResult, limits: ImportLimits, deadline: Deadline,
             auth: str | None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn: http.client.HTTPConnection
    try:
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname or "", parts.port,
                                               timeout=limits.read_timeout_s,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port,
                                              timeout=limits.read_timeout_s)
    except ValueError as exc:  # a bad port in a redirect
        raise _unreachable(deadline.shown, f"bad address: {exc}") from None
    headers = {"User-Agent": "vmops", "Accept-Encoding": "identity"}
    if auth:
        headers["Authorization"] = auth
    try:
        deadline.check()
        conn.connect()
        assert conn.sock is not None
        deadline.watch(conn.sock)
        conn.request("GET", urlunsplit(("", "", parts.path or "/", parts.query, "")),
                     headers=headers)
        return conn, conn.getresponse()
    except (OSError, http.client.HTTPException, ValueError) as exc:
        conn.close()
        deadline.check()
        raise _unreachable(deadline.shown, f"{redact_url(parts.geturl())}: {exc!r}") from None


def _origin(parts: SplitResult) -> tuple[str, str, int | None]:
    try:
        port = parts.port
    except ValueError:
        port = -1
    return parts.scheme, (parts.hostname or ""), port or (443 if parts.scheme == "https" else 80)


def _basic_auth(parts: SplitResult) -> str | None:
    if parts.username is None:
        return None
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def _unreachable(shown: str, detail: str) -> ImageSourceUnreachable:
    log.warning("image source %s gave no image: %s", escape_controls(shown),
                escape_controls(detail))
    return ImageSourceUnreachable(source=shown)


# -- bounds on the bytes and the rate -----------------------------------------------


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


class Budget:
    """How many bytes one import may bring in: the setting, and the free space
    less the reserve, measured at the start and re-checked as it grows."""

    def __init__(self, limits: ImportLimits, directory: Path, shown: str) -> None:
        self.limits = limits
        self.directory = directory
        self.shown = shown
        free = free_bytes(directory)
        room = free - limits.reserve_bytes
        if room <= 0:
            raise self._over(f"the images directory has {free} bytes free, no more than "
                             f"the {limits.reserve_bytes} bytes image_import_reserve_bytes "
                             "keeps free")
        self.allowed = min(limits.max_bytes, room)
        self.why = "image_import_max_bytes" if self.allowed == limits.max_bytes \
            else "the free space less image_import_reserve_bytes"
        self._next_free_check = _FREE_SPACE_EVERY

    def check_length(self, length: int | None) -> None:
        if length is not None and length > self.allowed:
            raise self._over(f"it is {length} bytes, over the limit of {self.allowed} bytes "
                             f"({self.why})")

    def check(self, done: int) -> None:
        if done > self.allowed:
            raise self._over(f"it sent more than {self.allowed} bytes, the limit ({self.why})")
        if done >= self._next_free_check:
            self._next_free_check = done + _FREE_SPACE_EVERY
            if free_bytes(self.directory) < self.limits.reserve_bytes:
                raise self._over("the images directory's free space fell below "
                                 f"image_import_reserve_bytes ({self.limits.reserve_bytes})")

    def _over(self, reason: str) -> ImportTooLarge:
        return ImportTooLarge(source=self.shown, reason=reason)


class Pace:
    """The minimum rate, averaged over each window of ``rate_window_s``."""

    def __init__(self, limits: ImportLimits, shown: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.shown = shown
        self.clock = clock
        self._since = clock()
        self._since_bytes = 0

    def check(self, done: int) -> None:
        if not self.limits.min_rate:
            return
        now = self.clock()
        elapsed = now - self._since
        if elapsed < self.limits.rate_window_s:
            return
        rate = (done - self._since_bytes) / elapsed
        if rate < self.limits.min_rate:
            raise ImportLimitExceeded(
                source=self.shown, reason=f"it ran at {rate:.0f} bytes/s for {elapsed:.0f} s, "
                f"below image_import_min_rate ({self.limits.min_rate} bytes/s)")
        self._since, self._since_bytes = now, done
