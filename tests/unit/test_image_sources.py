"""Host-file imports (open once, check the descriptor), what a restricted
caller may import and learn, the rate and byte bounds, and the settling of
imports a killed service left behind."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from vmops import config
from vmops.compute.catalog import INTERRUPTED, Catalog, check_image_source
from vmops.disks import qemu_img
from vmops.disks.cache import ImageCache
from vmops.disks.sources import ImportLimits, Pace, redact_url
from vmops.errors import (
    ConfigError,
    ImageSourceForbidden,
    ImportLimitExceeded,
    Invalid,
    InvalidImage,
)
from vmops.store import Image, Store
from vmops.text import escape_controls

MiB = 1 << 20
HANG_S = 30  # an import still running after this long is hung (the defect), not slow


@pytest.fixture(autouse=True)
def no_qemu_img(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("unit tests must not run qemu-img")

    monkeypatch.setattr(qemu_img, "_run", refuse)


def raw_image(path: Path, fill: bytes = b"\x5a") -> Path:
    with path.open("wb") as f:
        f.write(b"\xeb\x63\x90" + fill * (MiB - 3))
        f.truncate(2 * MiB)
    return path


def import_in_thread(cache: ImageCache, source: str, **kw: Any) -> BaseException | None:
    """Run one import; fail the test if it hangs (the FIFO defect) instead of hanging."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            cache.import_image(source, **kw)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_S)
    if thread.is_alive():  # left blocked (a daemon thread): the test has failed anyway
        pytest.fail(f"importing {source} hung")
    return outcome[0]


# -- host files: open once, check the descriptor ---------------------------------


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "disk.raw"
    os.mkfifo(fifo)
    failure = import_in_thread(ImageCache(tmp_path / "cache"), str(fifo))
    assert isinstance(failure, InvalidImage) and "not a regular file" in failure.message


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    link = tmp_path / "link.raw"
    link.symlink_to(raw_image(tmp_path / "disk.raw"))
    failure = import_in_thread(ImageCache(tmp_path / "cache"), str(link))
    assert isinstance(failure, InvalidImage) and "symbolic link" in failure.message


def test_swapping_a_file_and_a_fifo_never_blocks_an_import(tmp_path: Path) -> None:
    """The path flips between a regular file and a FIFO while imports run:
    each import reads the file or is refused, none waits on the FIFO."""
    path = tmp_path / "disk.raw"
    good, fifo = raw_image(tmp_path / "good.raw"), tmp_path / "fifo"
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.link(good, tmp_path / "next")
            os.replace(tmp_path / "next", path)
            os.mkfifo(fifo)
            os.replace(fifo, path)

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    try:
        cache = ImageCache(tmp_path / "cache")
        outcomes = [import_in_thread(cache, str(path)) for _ in range(20)]
    finally:
        stop.set()
        swapper.join()
    for failure in outcomes:
        assert failure is None or "not a regular file" in str(failure), failure


# -- what a restricted caller may import and learn ----------------------------------


def test_tcp_clients_import_host_files_only_from_the_allowed_dirs(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    with pytest.raises(ImageSourceForbidden) as missing:
        check_image_source("/nonexistent/disk.raw", (allowed,))
    with pytest.raises(ImageSourceForbidden) as present:
        check_image_source("/etc/passwd", (allowed,))
    with pytest.raises(ImageSourceForbidden):
        check_image_source(str(allowed / "disk.raw"), ())  # none set: none allowed
    with pytest.raises(Invalid, match=r"without '\.\.'"):
        check_image_source(f"{allowed}/../secret.raw", (allowed,))
    check_image_source(str(allowed / "disk.raw"), (allowed,))
    check_image_source("/etc/passwd", None)  # the unix socket: any path
    # The same words whether the file exists or not, and never its size.
    assert missing.value.message.replace("/nonexistent/disk.raw", "P") \
        == present.value.message.replace("/etc/passwd", "P")
    assert str(os.path.getsize("/etc/passwd")) not in present.value.message


def test_a_symlinked_dir_cannot_lead_outside_the_allowed_dirs(tmp_path: Path) -> None:
    allowed, secret = tmp_path / "allowed", tmp_path / "secret"
    allowed.mkdir()
    secret.mkdir()
    raw_image(secret / "root-only.raw")
    (allowed / "sub").symlink_to(secret)
    cache = ImageCache(tmp_path / "cache")
    outside = str(allowed / "sub" / "root-only.raw")
    check_image_source(outside, (allowed,))  # the text is inside: only the open can tell
    with pytest.raises(InvalidImage) as refused:
        cache.import_image(outside, allowed_dirs=(allowed,))
    with pytest.raises(InvalidImage) as missing:
        cache.import_image(str(allowed / "nope.raw"), allowed_dirs=(allowed,))
    assert refused.value.message.replace(outside, "P") \
        == missing.value.message.replace(str(allowed / "nope.raw"), "P")
    # Inside, for real: imported.
    assert cache.import_image(str(raw_image(allowed / "ok.raw")),
                              allowed_dirs=(allowed,)).format == "raw"


def test_sources_with_control_characters_or_other_schemes_are_refused() -> None:
    for source in ("http://example.test/a\r\nb.raw", "/srv/a\x1b[2J.raw",
                   "ftp://example.test/a.raw", "file:///etc/passwd", "http://:80/x",
                   "http://example.test:99999/x"):
        with pytest.raises(Invalid):
            check_image_source(source, None)


def test_credentials_are_stripped_from_shown_urls() -> None:
    assert redact_url("http://u:p%40ss@example.test:8080/a.raw?x=1") \
        == "http://example.test:8080/a.raw?x=1"
    assert redact_url("https://example.test/a.raw") == "https://example.test/a.raw"


def test_escape_controls() -> None:
    assert escape_controls("a\r\nb\x1b[2J\x7f\x85\u202ec") \
        == "a\\x0d\\x0ab\\x1b[2J\\x7f\\x85\\u202ec"
    assert escape_controls("plain/path-1.raw") == "plain/path-1.raw"


# -- bounds ---------------------------------------------------------------------------


def limits(**kw: Any) -> ImportLimits:
    base: dict[str, Any] = {"max_bytes": 8 * MiB, "reserve_bytes": 0, "timeout_s": 60.0,
                            "min_rate": 1000, "rate_window_s": 10.0}
    return ImportLimits(**{**base, **kw})


def test_pace_measures_each_window() -> None:
    now = [0.0]
    pace = Pace(limits(), "src", clock=lambda: now[0])
    now[0] = 9.0
    pace.check(10)  # within the first window: not judged yet
    now[0] = 10.0
    pace.check(20_000)  # 2000 B/s over the window: fine, a new window starts
    now[0] = 20.0
    with pytest.raises(ImportLimitExceeded, match="below image_import_min_rate"):
        pace.check(25_000)  # 500 B/s


def test_no_minimum_rate_means_no_judgement() -> None:
    now = [0.0]
    pace = Pace(limits(min_rate=0), "src", clock=lambda: now[0])
    now[0] = 1e6
    pace.check(0)


def test_a_local_file_over_the_byte_bound_is_refused(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache", limits(max_bytes=MiB))
    with pytest.raises(ImportLimitExceeded, match="over the limit of"):
        cache.import_image(str(raw_image(tmp_path / "disk.raw")))
    assert [p.name for p in cache.root.iterdir()] == [".locks"]


def test_limits_come_from_the_settings(tmp_path: Path) -> None:
    s = config.load(tmp_path, env={"VMOPS_IMAGE_IMPORT_MAX_BYTES": "1234",
                                   "VMOPS_IMAGE_IMPORT_MIN_RATE": "0",
                                   "VMOPS_IMAGE_IMPORT_DIRS": "/srv/a:/srv/b"})
    assert ImportLimits.from_settings(s).max_bytes == 1234
    assert s.image_import_dir_paths == (Path("/srv/a"), Path("/srv/b"))
    with pytest.raises(ConfigError, match="image_import_dirs"):
        config.load(tmp_path, env={"VMOPS_IMAGE_IMPORT_DIRS": "relative/dir"})


# -- imports a killed service left behind ------------------------------------------------


def test_interrupted_imports_are_settled_at_start(tmp_path: Path) -> None:
    store = Store(tmp_path / "vmops.db")
    cache = ImageCache(tmp_path / "cache")
    catalog = Catalog(store, cache)
    # An import that had stored its file when the service died...
    source = str(raw_image(tmp_path / "done.raw"))
    done = store.add_image(Image(id="1", name="done", status="saving", source=source))
    cache.import_image(source)
    # ...and one killed mid-download, its temp file left behind.
    cut = store.add_image(Image(id="2", name="cut", status="saving",
                                source="http://127.0.0.1:9/x.raw"))
    queued = store.add_image(Image(id="3", name="queued", status="queued",
                                   source=str(tmp_path / "never.raw")))
    (cache.root / ".import-abc.download").write_bytes(b"partial")

    catalog.recover_imports()

    assert store.image(done.id).status == "active"
    assert store.image(done.id).path.startswith(str(cache.root))
    for image in (cut, queued):
        assert store.image(image.id).status == "error"
        assert store.image(image.id).fault == INTERRUPTED
    assert sorted(p.name for p in cache.root.iterdir()) == [".locks", Path(
        store.image(done.id).path).name]
    store.close()


def test_the_cli_shows_image_fields_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    from vmops.cli import main as cli
    from vmops.cli.output import print_error, print_table

    evil = "http://example.test/a\x1b]0;owned\x07\r\nFAKE: line.raw"
    cli._print_image({"name": "x", "id": "1", "status": "ERROR", "vmops:format": "",
                      "vmops:virtual_size": 0, "OS-EXT-IMG-SIZE:size": 0,
                      "vmops:checksum": "", "vmops:source": evil, "vmops:used_by": []},
                     as_json=False)
    print_table(["SOURCE"], [[evil]])
    print_error(f"image x refused: cannot download {evil}")
    out, err = capsys.readouterr()
    for text in (out, err):
        assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert not any(line.startswith("FAKE") for line in (out + err).splitlines())
