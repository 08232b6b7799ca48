"""URL imports against a hostile HTTP server of the test's own, on 127.0.0.1.

The server runs in threads of the test; each path is one behaviour a
hostile or broken image server can have. The limits are set small so each
test ends in about a second; no test asserts how long anything took.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmops.compute.catalog import Catalog
from vmops.disks.cache import ImageCache
from vmops.disks.sources import ImportLimits
from vmops.errors import ImageSourceUnreachable, ImportLimitExceeded
from vmops.store import Store

MiB = 1 << 20
IMAGE = b"\xeb\x63\x90" + b"\x5a" * (MiB - 3) + bytes(MiB)  # a 2 MiB raw disk
USER, PASSWORD = "alice", "s3cret pass"
FAST = ImportLimits(max_bytes=8 * MiB, reserve_bytes=0, timeout_s=60.0, min_rate=0,
                    rate_window_s=60.0)


class HostileServer:
    """Each path is a behaviour; ``stop`` ends the endless ones."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.auth_seen: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # a body without a length ends at close

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                behaviour = getattr(server, "_" + self.path.strip("/").replace("-", "_"), None)
                if behaviour is None:
                    self.send_error(404)
                    return
                # The importer hanging up is what the bounds are for.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    behaviour(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- behaviours, by path -----------------------------------------------------
    def _image(self, h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(IMAGE)))
        h.end_headers()
        h.wfile.write(IMAGE)

    def _endless(self, h: http.server.BaseHTTPRequestHandler) -> None:
        """200 with no Content-Length and a body that never ends."""
        h.send_response(200)
        h.end_headers()
        chunk = b"\x5a" * 65536
        while not self.stop.is_set():
            h.wfile.write(chunk)

    def _huge(self, h: http.server.BaseHTTPRequestHandler) -> None:
        """Says it is 1 TiB; a bounded import refuses before reading."""
        h.send_response(200)
        h.send_header("Content-Length", str(1 << 40))
        h.end_headers()
        while not self.stop.is_set():
            h.wfile.write(b"\x5a" * 65536)

    def _trickle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        """A byte at a time, never enough to reach any per-read timeout."""
        h.send_response(200)
        h.send_header("Content-Length", str(len(IMAGE)))
        h.end_headers()
        for byte in IMAGE:
            if self.stop.wait(0.02):
                return
            h.wfile.write(bytes([byte]))
            h.wfile.flush()

    def _slow_headers(self, h: http.server.BaseHTTPRequestHandler) -> None:
        """The status line, then a header trickled forever: no body ever starts."""
        h.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
        while not self.stop.wait(0.05):
            h.wfile.write(b"a")
            h.wfile.flush()

    def _to_ftp(self, h: http.server.BaseHTTPRequestHandler) -> None:
        self._redirect(h, "ftp://127.0.0.1/disk.raw")

    def _to_file(self, h: http.server.BaseHTTPRequestHandler) -> None:
        self._redirect(h, "file:///etc/passwd")

    def _hop_to_ftp(self, h: http.server.BaseHTTPRequestHandler) -> None:
        self._redirect(h, "/to-ftp")  # an allowed hop first, then a refused one

    def _moved(self, h: http.server.BaseHTTPRequestHandler) -> None:
        self._redirect(h, "/image")

    def _loop(self, h: http.server.BaseHTTPRequestHandler) -> None:
        self._redirect(h, "/loop")

    def _private(self, h: http.server.BaseHTTPRequestHandler) -> None:
        sent = h.headers.get("Authorization")
        self.auth_seen.append(sent)
        wanted = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if sent != wanted:
            h.send_error(401)
            return
        self._image(h)

    def _broken(self, h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_error(500)

    @staticmethod
    def _redirect(h: http.server.BaseHTTPRequestHandler, location: str) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def __enter__(self) -> HostileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer() as s:
        yield s


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name != ".locks")


def cache_with(tmp_path: Path, limits: ImportLimits) -> ImageCache:
    return ImageCache(tmp_path / "cache", limits)


def refused_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- bytes -------------------------------------------------------------------------


def test_a_body_without_length_stops_at_the_byte_bound(
        tmp_path: Path, server: HostileServer) -> None:
    cache = cache_with(tmp_path, FAST)
    with pytest.raises(ImportLimitExceeded, match=f"more than {8 * MiB} bytes"):
        cache.import_image(server.url + "/endless")
    assert leftovers(cache.root) == []


def test_a_content_length_over_the_bound_is_refused_before_reading(
        tmp_path: Path, server: HostileServer) -> None:
    cache = cache_with(tmp_path, FAST)
    with pytest.raises(ImportLimitExceeded, match=f"it is {1 << 40} bytes, over the limit"):
        cache.import_image(server.url + "/huge")
    assert leftovers(cache.root) == []


def test_the_bound_is_never_more_than_the_free_space_less_the_reserve(
        tmp_path: Path, server: HostileServer) -> None:
    limits = ImportLimits(max_bytes=1 << 50, reserve_bytes=1 << 60, timeout_s=60.0,
                          min_rate=0, rate_window_s=60.0)
    cache = cache_with(tmp_path, limits)
    with pytest.raises(ImportLimitExceeded, match="image_import_reserve_bytes"):
        cache.import_image(server.url + "/image")
    assert leftovers(cache.root) == []


# -- time and rate -------------------------------------------------------------------


def test_a_trickle_stops_at_the_minimum_rate(tmp_path: Path, server: HostileServer) -> None:
    limits = ImportLimits(max_bytes=8 * MiB, reserve_bytes=0, timeout_s=60.0,
                          min_rate=100_000, rate_window_s=0.3)
    cache = cache_with(tmp_path, limits)
    with pytest.raises(ImportLimitExceeded, match="below image_import_min_rate"):
        cache.import_image(server.url + "/trickle")
    assert leftovers(cache.root) == []


def test_trickled_headers_stop_at_the_total_time(tmp_path: Path, server: HostileServer) -> None:
    # No minimum rate, and each header byte comes well within the read timeout:
    # only the deadline can end this one.
    limits = ImportLimits(max_bytes=8 * MiB, reserve_bytes=0, timeout_s=0.5, min_rate=0,
                          rate_window_s=60.0)
    cache = cache_with(tmp_path, limits)
    with pytest.raises(ImportLimitExceeded, match="longer than image_import_timeout"):
        cache.import_image(server.url + "/slow-headers")
    assert leftovers(cache.root) == []


def test_a_slow_body_stops_at_the_total_time(tmp_path: Path, server: HostileServer) -> None:
    limits = ImportLimits(max_bytes=8 * MiB, reserve_bytes=0, timeout_s=0.5, min_rate=0,
                          rate_window_s=60.0)
    cache = cache_with(tmp_path, limits)
    with pytest.raises(ImportLimitExceeded, match="longer than image_import_timeout"):
        cache.import_image(server.url + "/trickle")
    assert leftovers(cache.root) == []


def test_a_bounded_failure_leaves_the_image_in_error_with_the_reason(
        tmp_path: Path, server: HostileServer) -> None:
    store = Store(tmp_path / "vmops.db")
    catalog = Catalog(store, cache_with(tmp_path, FAST))
    image = catalog.import_image("endless", server.url + "/endless", background=False)
    assert image.status == "error"
    assert f"more than {8 * MiB} bytes" in image.fault
    assert leftovers(catalog.cache.root) == []
    store.close()


# -- redirects and errors ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/to-ftp", "/to-file", "/hop-to-ftp"])
def test_redirects_to_other_schemes_are_not_followed(
        tmp_path: Path, server: HostileServer, path: str,
        caplog: pytest.LogCaptureFixture) -> None:
    cache = cache_with(tmp_path, FAST)
    with caplog.at_level(logging.WARNING), pytest.raises(ImageSourceUnreachable):
        cache.import_image(server.url + path)
    assert "not an http(s) URL" in caplog.text  # the operator's log says why
    assert leftovers(cache.root) == []


def test_http_redirects_are_followed(tmp_path: Path, server: HostileServer) -> None:
    image = cache_with(tmp_path, FAST).import_image(server.url + "/moved")
    assert image.path.read_bytes() == IMAGE


def test_a_redirect_loop_ends(tmp_path: Path, server: HostileServer) -> None:
    with pytest.raises(ImageSourceUnreachable):
        cache_with(tmp_path, FAST).import_image(server.url + "/loop")


def test_every_unreachable_source_gets_the_same_answer(
        tmp_path: Path, server: HostileServer) -> None:
    """A port scanner learns nothing: refused, 401, 404 and 500 read alike."""
    cache = cache_with(tmp_path, FAST)
    port = refused_port()
    messages = set()
    for url in (f"http://127.0.0.1:{port}/x", server.url + "/private",
                server.url + "/nothing-here", server.url + "/broken"):
        with pytest.raises(ImageSourceUnreachable) as caught:
            cache.import_image(url)
        messages.add(caught.value.message.replace(url, "URL"))
    assert len(messages) == 1, messages


# -- credentials -----------------------------------------------------------------------


def test_credentials_are_used_but_never_stored_shown_or_logged(
        tmp_path: Path, server: HostileServer, caplog: pytest.LogCaptureFixture) -> None:
    store = Store(tmp_path / "vmops.db")
    catalog = Catalog(store, cache_with(tmp_path, FAST))
    netloc = server.url.removeprefix("http://")
    secret_url = f"http://{USER}:{PASSWORD.replace(' ', '%20')}@{netloc}/private"
    with caplog.at_level(logging.INFO):
        good = catalog.import_image("private", secret_url, background=False)
        bad = catalog.import_image("private-wrong",
                                   f"http://{USER}:hunter2@{netloc}/nothing-here",
                                   background=False)
    assert good.status == "active", good.fault
    assert good.source == server.url + "/private"
    assert bad.status == "error" and bad.source == server.url + "/nothing-here"
    assert server.auth_seen[0] is not None  # sent to the URL's own server
    for text in (caplog.text, bad.fault, *(repr(i) for i in store.images())):
        assert "s3cret" not in text and "hunter2" not in text
    raw_db = (tmp_path / "vmops.db").read_bytes()
    assert b"s3cret" not in raw_db
    store.close()


def test_control_characters_never_reach_a_log_line(
        tmp_path: Path, server: HostileServer, caplog: pytest.LogCaptureFixture) -> None:
    cache = cache_with(tmp_path, FAST)
    with caplog.at_level(logging.WARNING), pytest.raises(ImageSourceUnreachable):
        cache.import_image(server.url + "/nothing-here\r\nFAKE LINE\x1b[2J")
    assert "\r" not in caplog.text and "\x1b" not in caplog.text
    assert caplog.text.count("\n") == len(caplog.records)
