"""Rotation arithmetic, the rotating writer, and reading the two files back."""

from __future__ import annotations

import random
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmops.console import log as console_log
from vmops.console.layout import LogFiles
from vmops.console.log import follow, read_log, remove_logs, tail_of_lines
from vmops.console.rotation import RotatingLog, split_for_rotation


@pytest.mark.parametrize(
    ("current", "chunk", "limit", "expected"),
    [
        (0, 10, 100, (10, 0)),  # fits
        (90, 10, 100, (10, 0)),  # fills exactly: no rotation yet
        (95, 10, 100, (5, 5)),  # head fills the file, rest after rotating
        (100, 10, 100, (0, 10)),  # already full
        (150, 10, 100, (0, 10)),  # over a limit that was lowered since
        (0, 250, 100, (100, 150)),  # chunk bigger than a file
        (40, 0, 100, (0, 0)),  # nothing to write
        (0, 1, 1, (1, 0)),
    ],
)
def test_split_for_rotation(
    current: int, chunk: int, limit: int, expected: tuple[int, int]
) -> None:
    assert split_for_rotation(current, chunk, limit) == expected


@pytest.mark.parametrize(("current", "chunk", "limit"), [(0, 1, 0), (-1, 1, 10), (0, -1, 10)])
def test_split_for_rotation_rejects_nonsense(current: int, chunk: int, limit: int) -> None:
    with pytest.raises(ValueError):
        split_for_rotation(current, chunk, limit)


def _files(tmp_path: Path) -> LogFiles:
    return LogFiles(tmp_path / "console")


def _writer(files: LogFiles, max_bytes: int) -> RotatingLog:
    files.dir.mkdir(exist_ok=True)
    return RotatingLog(files.current, files.old, max_bytes)


def _contents(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def _stream(n: int) -> bytes:
    """Distinct, numbered lines: any loss or repeat changes the text."""
    return b"".join(b"line %07d\n" % i for i in range(n))


@pytest.mark.parametrize("limit", [1, 7, 100, 4096])
def test_writer_keeps_a_contiguous_suffix_of_bounded_files(tmp_path: Path, limit: int) -> None:
    files = _files(tmp_path)
    writer = _writer(files, limit)
    rng = random.Random(limit)
    stream = _stream(min(3000, 20 + 4 * limit))  # many rotations, bounded run time
    written = 0
    try:
        while written < len(stream):
            size = rng.choice([1, 2, 13, limit - 1, limit, limit + 1, 3 * limit + 5, 500])
            chunk = stream[written : written + max(1, size)]
            writer.write(chunk)
            written += len(chunk)
            old, current = _contents(files.old), _contents(files.current)
            assert len(old) <= limit and len(current) <= limit
            kept = old + current
            assert kept == stream[written - len(kept) : written]
            if files.old.exists():
                # A rotation always leaves a full old file and a non-empty new one.
                assert len(old) == limit and len(current) >= 1
    finally:
        writer.close()


def test_writer_appends_to_what_a_previous_process_left(tmp_path: Path) -> None:
    files = _files(tmp_path)
    first = _writer(files, 10)
    first.write(b"12345")
    first.close()  # as if the capture process were restarted
    second = _writer(files, 10)
    second.write(b"67890abc")
    second.close()
    assert files.old.read_bytes() == b"1234567890"
    assert files.current.read_bytes() == b"abc"


def test_lowered_limit_applies_from_the_next_write(tmp_path: Path) -> None:
    files = _files(tmp_path)
    big = _writer(files, 1000)
    big.write(b"x" * 300)
    big.close()
    small = _writer(files, 100)
    small.write(b"y" * 10)
    small.close()
    assert files.old.read_bytes() == b"x" * 300  # not rewritten, only rotated
    assert files.current.read_bytes() == b"y" * 10


def test_raised_limit_lets_the_current_file_grow(tmp_path: Path) -> None:
    files = _files(tmp_path)
    small = _writer(files, 10)
    small.write(b"a" * 10)
    small.close()
    big = _writer(files, 100)
    big.write(b"b" * 10)
    big.close()
    assert files.current.read_bytes() == b"a" * 10 + b"b" * 10
    assert not files.old.exists()


def _lay_out(files: LogFiles, old: bytes | None, current: bytes | None) -> None:
    files.dir.mkdir(parents=True, exist_ok=True)
    if old is not None:
        files.old.write_bytes(old)
    if current is not None:
        files.current.write_bytes(current)


def test_read_log_is_old_then_current(tmp_path: Path) -> None:
    files = _files(tmp_path)
    _lay_out(files, b"one\ntwo\n", b"three\n")
    assert read_log(files.dir) == b"one\ntwo\nthree\n"


@pytest.mark.parametrize(
    ("old", "current", "expected"),
    [
        (None, None, b""),
        (None, b"only current", b"only current"),
        (b"only old", None, b"only old"),  # killed between rename and new file
    ],
)
def test_read_log_with_missing_files(
    tmp_path: Path, old: bytes | None, current: bytes | None, expected: bytes
) -> None:
    files = _files(tmp_path)
    _lay_out(files, old, current)
    assert read_log(files.dir) == expected


def test_read_log_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert read_log(tmp_path / "nope") == b""


@pytest.mark.parametrize(
    ("tail_bytes", "expected"),
    [(0, b""), (3, b"ef\n"), (5, b"\ncef\n"), (7, b"ab\ncef\n"), (100, b"ab\ncef\n")],
)
def test_read_log_tail_bytes_spans_both_files(
    tmp_path: Path, tail_bytes: int, expected: bytes
) -> None:
    files = _files(tmp_path)
    _lay_out(files, b"ab\nc", b"ef\n")
    assert read_log(files.dir, tail_bytes=tail_bytes) == expected


@pytest.mark.parametrize(
    ("tail_lines", "expected"),
    [
        (0, b""),
        (1, b"line4\n"),
        (2, b"line3-end\nline4\n"),
        (9, b"line1\nline2\nline3-end\nline4\n"),
    ],
)
def test_read_log_tail_lines_spans_both_files(
    tmp_path: Path, tail_lines: int, expected: bytes
) -> None:
    files = _files(tmp_path)
    # The rotation cut line 3 in two: it is one line again when read back.
    _lay_out(files, b"line1\nline2\nline3", b"-end\nline4\n")
    assert read_log(files.dir, tail_lines=tail_lines) == expected


def test_read_log_with_both_limits_gives_the_shorter(tmp_path: Path) -> None:
    files = _files(tmp_path)
    _lay_out(files, b"a\nbb\n", b"ccc\ndddd\n")
    assert read_log(files.dir, tail_lines=2, tail_bytes=3) == b"dd\n"
    assert read_log(files.dir, tail_lines=1, tail_bytes=100) == b"dddd\n"


@pytest.mark.parametrize(
    ("data", "lines", "expected"),
    [
        (b"", 3, b""),
        (b"a\nb\nc\n", 1, b"c\n"),
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc", 1, b"c"),  # an unterminated last line counts
        (b"a\nb\nc", 2, b"b\nc"),
        (b"\n\n", 1, b"\n"),
        (b"abc", 5, b"abc"),
        (b"a\n", -1, b""),
    ],
)
def test_tail_of_lines(data: bytes, lines: int, expected: bytes) -> None:
    assert tail_of_lines(data, lines) == expected


def test_read_log_retries_when_a_rotation_falls_between_its_two_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files(tmp_path)
    writer = _writer(files, 10)
    writer.write(b"0123456789" + b"ABCDE")  # old: 0-9, current: A-E
    real_open = console_log._open_ro
    rotated = False

    def open_then_rotate(path: Path) -> int:
        # Rotate right after the reader opened the old file: without the
        # inode check it would pair the old 0-9 with the new current,
        # silently dropping A-J.
        nonlocal rotated
        fd = real_open(path)
        if path == files.old and not rotated:
            rotated = True
            writer.write(b"FGHIJ" + b"klm")  # old: A-J, current: k-m
        return fd

    monkeypatch.setattr(console_log, "_open_ro", open_then_rotate)
    try:
        assert read_log(files.dir) == b"ABCDEFGHIJklm"
    finally:
        writer.close()
    assert rotated


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def _take(chunks: Iterator[bytes], size: int) -> bytes:
    got = b""
    while len(got) < size:
        got += next(chunks)
    return got


def test_follow_sees_every_byte_once_across_rotations(
    tmp_path: Path, stop: threading.Event
) -> None:
    files = _files(tmp_path)
    writer = _writer(files, 64)
    writer.write(b"before\n")
    chunks = follow(files.dir, from_offset_end=False, poll=0.001, stop=stop)
    received = _take(chunks, 7)
    stream = _stream(500)
    rng = random.Random(1)
    pos = 0
    try:
        while pos < len(stream):
            # At most one file's worth at a time: the reader never falls
            # more than one rotation behind.
            chunk = stream[pos : pos + rng.randint(1, 64)]
            writer.write(chunk)
            pos += len(chunk)
            received += _take(chunks, len(chunk))
    finally:
        writer.close()
    assert received == b"before\n" + stream


def test_follow_from_the_end_skips_what_is_there(tmp_path: Path, stop: threading.Event) -> None:
    files = _files(tmp_path)
    writer = _writer(files, 64)
    writer.write(b"old news\n")
    chunks = follow(files.dir, poll=0.001, stop=stop)
    writer.write(b"fresh\n")
    try:
        assert _take(chunks, 6) == b"fresh\n"
    finally:
        writer.close()


def test_follow_before_any_file_exists_reads_the_first_from_its_start(
    tmp_path: Path, stop: threading.Event
) -> None:
    files = _files(tmp_path)
    files.dir.mkdir()
    chunks = follow(files.dir, poll=0.001, stop=stop)
    writer = _writer(files, 64)
    writer.write(b"first words\n")
    try:
        assert _take(chunks, 12) == b"first words\n"
    finally:
        writer.close()


def test_a_follower_left_behind_misses_data_but_never_repeats_it(
    tmp_path: Path, stop: threading.Event
) -> None:
    files = _files(tmp_path)
    writer = _writer(files, 10)
    chunks = follow(files.dir, poll=0.001, stop=stop)
    writer.write(b"abc")
    assert _take(chunks, 3) == b"abc"
    # Three rotations before the reader looks again: the middle is gone.
    writer.write(b"defghij" + b"KLMNOPQRST" + b"uvwxyz0123" + b"XY")
    writer.close()
    tail = files.old.read_bytes() + files.current.read_bytes()
    assert tail == b"uvwxyz0123XY"
    assert _take(chunks, 7 + len(tail)) == b"defghij" + tail


def test_follow_ends_when_stopped(tmp_path: Path) -> None:
    files = _files(tmp_path)
    _lay_out(files, None, b"x")
    event = threading.Event()
    chunks = follow(files.dir, poll=0.001, stop=event)
    event.set()
    assert list(chunks) == []


def test_follow_ends_when_the_log_directory_goes(tmp_path: Path, stop: threading.Event) -> None:
    files = _files(tmp_path)
    writer = _writer(files, 64)
    writer.write(b"hello\n")
    writer.close()
    chunks = follow(files.dir, from_offset_end=False, poll=0.001, stop=stop)
    assert next(chunks) == b"hello\n"
    shutil.rmtree(files.dir)
    assert list(chunks) == []


def test_remove_logs_is_idempotent_and_spares_foreign_files(tmp_path: Path) -> None:
    files = _files(tmp_path)
    _lay_out(files, b"old", b"new")
    files.state.write_text("{}")
    remove_logs(files.dir)
    assert not files.dir.exists()
    remove_logs(files.dir)  # destroy twice

    _lay_out(files, b"old", b"new")
    (files.dir / "notes.txt").write_text("not ours")
    remove_logs(files.dir)
    assert sorted(p.name for p in files.dir.iterdir()) == ["notes.txt"]
