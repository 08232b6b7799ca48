"""ImageCache logic with raw images, which never reach qemu-img.

A fixture makes any qemu-img call fail, so these stay pure Python; the
formats that need qemu-img are covered in tests/integration/test_disks.py.
"""

from __future__ import annotations

import hashlib
import http.server
import multiprocessing
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmops.disks import qemu_img, sources
from vmops.disks.cache import CachedImage, ImageCache, parse_checksum
from vmops.errors import Invalid, InvalidImage

MiB = 1 << 20


@pytest.fixture(autouse=True)
def no_qemu_img(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("unit tests must not run qemu-img")

    monkeypatch.setattr(qemu_img, "_run", refuse)


def raw_image(path: Path, size: int = 2 * MiB, fill: bytes = b"\x5a") -> Path:
    """A raw disk: some data in the first MiB, the rest a hole."""
    with path.open("wb") as f:
        f.write(b"\xeb\x63\x90" + fill * (MiB - 3))
        f.truncate(size)
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(root: Path) -> list[str]:
    """Everything in the cache root except the lock directory."""
    return sorted(p.name for p in root.iterdir() if p.name != ".locks")


class CountingServer:
    """A loopback HTTP server for a few blobs that counts the GETs per path."""

    def __init__(self, blobs: dict[str, bytes], delay_s: float = 0.0) -> None:
        self.blobs = blobs
        self.delay_s = delay_s
        self.gets: dict[str, int] = {}
        self.short_by = 0  # send this many fewer bytes than Content-Length says
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                server.gets[self.path] = server.gets.get(self.path, 0) + 1
                time.sleep(server.delay_s)
                body = server.blobs.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) - server.short_by])

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> CountingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def cache(tmp_path: Path) -> ImageCache:
    return ImageCache(tmp_path / "cache")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return raw_image(tmp_path / "disk.raw")


@pytest.fixture
def count_fetches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record each real fetch; slow it a little so concurrent callers overlap."""
    calls: list[str] = []
    real = ImageCache._fetch

    def counting(self: ImageCache, src: str, *args: Any) -> str:
        calls.append(src)
        time.sleep(0.2)
        return real(self, src, *args)

    monkeypatch.setattr(ImageCache, "_fetch", counting)
    yield calls


# -- checksums -----------------------------------------------------------------


def test_parse_checksum_forms() -> None:
    digest = "ab" * 32
    assert parse_checksum(f"sha256:{digest}") == parse_checksum(digest.upper())
    assert parse_checksum("cd" * 16).algorithm == "md5"
    with pytest.raises(Invalid):
        parse_checksum("sha256:1234")
    with pytest.raises(Invalid):
        parse_checksum("crc32:deadbeef")


# -- import ----------------------------------------------------------------------


def test_import_local_raw(cache: ImageCache, source: Path) -> None:
    image = cache.import_image(str(source))
    digest = sha256_of(source)
    assert image == CachedImage(digest, cache.root / f"{digest}.raw", "raw", 2 * MiB, 2 * MiB)
    assert stat.S_IMODE(image.path.stat().st_mode) == 0o400  # read-only, vmops' user only
    assert image.path.read_bytes() == source.read_bytes()
    # The hole in the source stays a hole in the cache.
    assert image.path.stat().st_blocks * 512 <= MiB + 64 * 1024
    assert leftovers(cache.root) == [image.path.name]


@pytest.mark.parametrize("form", ["sha256:{sha}", "{sha}", "md5:{md5}", "{md5}"])
def test_expected_checksum_forms_accepted(cache: ImageCache, source: Path, form: str) -> None:
    data = source.read_bytes()
    expected = form.format(sha=hashlib.sha256(data).hexdigest(), md5=hashlib.md5(data).hexdigest())
    assert cache.import_image(str(source), expected_checksum=expected).format == "raw"


def test_checksum_mismatch_leaves_nothing(cache: ImageCache, source: Path) -> None:
    with pytest.raises(InvalidImage, match="checksum mismatch"):
        cache.import_image(str(source), expected_checksum="sha256:" + "0" * 64)
    assert leftovers(cache.root) == []


def test_refused_image_leaves_nothing(cache: ImageCache, source: Path) -> None:
    with pytest.raises(InvalidImage, match="declared format 'qcow2'"):
        cache.import_image(str(source), declared_format="qcow2")
    (source.parent / "notes.txt").write_text("just some text\n" * 100)
    with pytest.raises(InvalidImage, match="not a multiple of 512"):
        cache.import_image(str(source.parent / "notes.txt"))
    assert leftovers(cache.root) == []


def test_missing_source_and_bad_scheme(cache: ImageCache, tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="cannot read"):
        cache.import_image(str(tmp_path / "nope.raw"))
    with pytest.raises(InvalidImage, match="only local paths and http"):
        cache.import_image("ftp://127.0.0.1/x.raw")
    assert leftovers(cache.root) == []


def test_known_sha256_is_reused_without_fetching(
    cache: ImageCache, source: Path, count_fetches: list[str]
) -> None:
    first = cache.import_image(str(source))
    again = cache.import_image(str(source), expected_checksum=first.checksum)
    assert again == first and len(count_fetches) == 1


def test_same_content_from_two_sources_is_stored_once(cache: ImageCache, source: Path) -> None:
    copy = source.parent / "copy.raw"
    copy.write_bytes(source.read_bytes())
    assert cache.import_image(str(source)) == cache.import_image(str(copy))
    assert len(cache.list_files()) == 1


def test_concurrent_imports_of_one_source_fetch_once(
    cache: ImageCache, source: Path, count_fetches: list[str]
) -> None:
    results: list[CachedImage] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.import_image(str(source))))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and len(set(results)) == 1
    assert count_fetches == [str(source)]


def test_a_later_import_of_a_url_fetches_again(cache: ImageCache, source: Path) -> None:
    # Reuse is only for imports that waited on one in progress: a URL's
    # content may change between imports.
    with CountingServer({"/d.raw": source.read_bytes()}) as server:
        cache.import_image(server.url + "/d.raw")
        cache.import_image(server.url + "/d.raw")
    assert server.gets["/d.raw"] == 2


# -- http ------------------------------------------------------------------------


def test_http_import_reports_progress(cache: ImageCache, source: Path) -> None:
    data = source.read_bytes()
    seen: list[tuple[int, int | None]] = []
    with CountingServer({"/img/disk.raw": data}) as server:
        image = cache.import_image(
            server.url + "/img/disk.raw",
            expected_checksum=hashlib.sha256(data).hexdigest(),
            progress=lambda done, total: seen.append((done, total)),
        )
    assert image.path.read_bytes() == data
    assert seen[0] == (0, len(data)) and seen[-1] == (len(data), len(data))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_http_errors_leave_nothing(cache: ImageCache, source: Path) -> None:
    with CountingServer({"/d.raw": source.read_bytes()}) as server:
        with pytest.raises(InvalidImage, match="cannot download"):
            cache.import_image(server.url + "/missing.raw")
        server.short_by = 4096
        with pytest.raises(InvalidImage, match="cut short|IncompleteRead"):
            cache.import_image(server.url + "/d.raw")
    assert leftovers(cache.root) == []


def _import_in_child(root: str, url: str, ready: Any) -> str:
    cache = ImageCache(Path(root))
    ready.wait()  # all three start together, however slowly each process came up
    return cache.import_image(url).checksum


def test_concurrent_imports_from_separate_processes_fetch_once(
    cache: ImageCache, source: Path
) -> None:
    # The fetch is slow (2 s) and the children start at once, so the others
    # ask while the first fetches: they must wait for it, not fetch again.
    # (A child that came after the first import ended would fetch again, by
    # design: hence the barrier, as interpreters start slowly on a busy host.)
    with CountingServer({"/d.raw": source.read_bytes()}, delay_s=2.0) as server:
        ctx = multiprocessing.get_context("spawn")  # no fork with server threads running
        with ctx.Manager() as manager, ctx.Pool(3) as pool:
            ready = manager.Barrier(3)
            sums = pool.starmap(_import_in_child,
                                [(str(cache.root), server.url + "/d.raw", ready)] * 3)
    assert set(sums) == {sha256_of(source)}
    assert server.gets["/d.raw"] == 1


# -- housekeeping ------------------------------------------------------------------


def test_remove_by_checksum_or_path(cache: ImageCache, tmp_path: Path) -> None:
    a = cache.import_image(str(raw_image(tmp_path / "a.raw", fill=b"a")))
    b = cache.import_image(str(raw_image(tmp_path / "b.raw", fill=b"b")))
    assert cache.list_files() == sorted([a.path, b.path])
    assert cache.remove("sha256:" + a.checksum) == [a.path]
    assert cache.remove(b.path) == [b.path]
    assert cache.remove(b.path) == []  # already gone: not an error
    with pytest.raises(ValueError):
        cache.remove(tmp_path / "a.raw")


def test_chunk_size_is_what_progress_counts(cache: ImageCache, tmp_path: Path) -> None:
    big = raw_image(tmp_path / "big.raw", size=3 * sources.CHUNK + 512)
    calls: list[int] = []
    cache.import_image(str(big), progress=lambda done, _total: calls.append(done))
    assert calls == [
        0,
        sources.CHUNK,
        2 * sources.CHUNK,
        3 * sources.CHUNK,
        big.stat().st_size,
    ]
