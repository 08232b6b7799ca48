"""The image cache: imported images, content-addressed and read-only.

An import streams the source (local path or http(s) URL, opened by
:mod:`vmops.disks.sources` within the bounds of :class:`ImportLimits`) into
a temp file inside the cache root while hashing it, checks the expected checksum,
inspects the headers with :mod:`vmops.disks.inspector` before qemu-img
ever opens the file, and then stores it as ``<root>/<sha256>.<fmt>``:
qcow2 and raw as they came, vpc/vhdx/vmdk converted to qcow2, so every
base is qcow2 or raw. The name is the sha256 of the bytes the user gave,
so the same content is stored once.

Concurrency: imports of the same source serialise on a per-source lock
(a threading lock for this process, ``flock`` on a lock file for other
processes). A waiter that gets the lock after another import of the same
source finished reuses its result instead of fetching again; that is
detected with a generation counter in a memo file, so a *later* import of
a URL still re-fetches (the URL's content may have changed).

Nothing partial is ever visible: work happens in ``.import-*`` temp files
that are removed on any failure, and the finished file is fsynced and
hard-linked into place (a link never replaces a base a VM may be using).
A process killed mid-import leaves its temp file: the service removes them
at start (:meth:`ImageCache.remove_temp_files`), when none can be in use.

Pruning works on the image records, not on these files
(``Catalog.prune_images``: images no instance uses, by their records' last
use), and removes a base with :meth:`ImageCache.remove`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vmops.config import Settings
from vmops.disks import qemu_img
from vmops.disks.inspector import inspect_image, normalize_format
from vmops.disks.sources import (
    CHUNK,
    Budget,
    ImportLimits,
    Pace,
    Source,
    is_url,
    open_source,
    redact_url,
)
from vmops.durable import fsync_directory
from vmops.errors import DiskError, Invalid, InvalidImage

Progress = Callable[[int, int | None], None]

_ZEROS = bytes(CHUNK)
STORED_FORMATS = ("qcow2", "raw")
_CACHED_NAME = re.compile(r"^([0-9a-f]{64})\.(qcow2|raw)$")
_TEMP_PREFIX = ".import-"
_HEX_LENGTHS = {"md5": 32, "sha256": 64, "sha512": 128}


@dataclass(frozen=True)
class CachedImage:
    """A base image in the cache. ``checksum`` is the sha256 of the source bytes."""

    checksum: str
    path: Path
    format: str
    virtual_size: int
    file_size: int


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    hexdigest: str


def parse_checksum(text: str) -> Checksum:
    """Accept "sha256:HEX", "md5:HEX", "sha512:HEX" or bare hex (length decides)."""
    value = text.strip().lower()
    if ":" in value:
        algorithm, _, digest = value.partition(":")
    else:
        by_length = {n: algo for algo, n in _HEX_LENGTHS.items()}
        algorithm, digest = by_length.get(len(value), "?"), value
    if _HEX_LENGTHS.get(algorithm) != len(digest) or not _is_hex(digest):
        raise Invalid(
            reason=f"checksum {text!r} must be sha256:HEX, md5:HEX, sha512:HEX or bare hex"
        )
    return Checksum(algorithm, digest)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class _Memo:
    """The last finished import of one source, for waiters on its lock."""

    generation: int
    checksum: str
    path: str
    source_format: str


class ImageCache:
    def __init__(self, root: Path, limits: ImportLimits | None = None) -> None:
        self.root = root.absolute()  # paths handed out end up in records and overlays
        self.limits = limits or ImportLimits.from_settings(Settings())
        self._lock_dir = root / ".locks"
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        self._guard = threading.Lock()
        self._thread_locks: dict[str, threading.Lock] = {}

    # -- import ----------------------------------------------------------------

    def import_image(
        self,
        source: str,
        *,
        expected_checksum: str | None = None,
        declared_format: str | None = None,
        progress: Progress | None = None,
        allowed_dirs: tuple[Path, ...] | None = None,
    ) -> CachedImage:
        """Bring ``source`` into the cache (or find it there) and describe it.

        ``allowed_dirs``: a host path must really be inside one of these
        (None: any path), and a refusal says nothing about the file.
        """
        expected = parse_checksum(expected_checksum) if expected_checksum else None
        declared = normalize_format(declared_format) if declared_format else None
        hit = self._lookup_expected(expected, declared)
        if hit is not None:
            return hit
        key = hashlib.sha256(source.encode()).hexdigest()[:32]
        seen = self._read_memo(key)
        with self._source_lock(key):
            # Re-check under the lock: someone may have finished this meanwhile.
            reuse = self._lookup_expected(expected, declared) or self._lookup_memo(
                key, seen, expected, declared
            )
            if reuse is not None:
                return reuse
            image, source_format = self._import_locked(source, expected, declared, progress,
                                                       allowed_dirs)
            generation = seen.generation + 1 if seen else 1
            self._write_memo(key, _Memo(generation, image.checksum, str(image.path), source_format))
            return image

    def _import_locked(
        self,
        source: str,
        expected: Checksum | None,
        declared: str | None,
        progress: Progress | None,
        allowed_dirs: tuple[Path, ...] | None,
    ) -> tuple[CachedImage, str]:
        with self._temp(".download") as download:
            sha256 = self._fetch(source, download, expected, progress, allowed_dirs)
            facts = inspect_image(download, declared)
            stored = facts.format if facts.format in STORED_FORMATS else "qcow2"
            final = self.root / f"{sha256}.{stored}"
            if not final.exists():
                self._store(download, facts.format, final)
            return self._describe(final), facts.format

    def import_upload(self, src: Source, declared_format: str,
                      progress: Progress | None = None) -> tuple[CachedImage, str]:
        """Store the bytes a client uploads (Glance's ``PUT .../file``):
        raw or qcow2 as declared, checked as any import is. Returns the image
        and the MD5 of the bytes (Glance's ``checksum``). A declared raw
        image may be text: the client said what it is."""
        if declared_format not in STORED_FORMATS:
            raise InvalidImage(reason=f"disk_format {declared_format!r} cannot be uploaded: "
                               f"vmops stores {' and '.join(STORED_FORMATS)} images only")
        budget = Budget(self.limits, self.root, src.shown)
        text_is_raw = declared_format == "raw"
        with self._temp(".upload") as upload:
            sha256, md5 = self._copy(src, upload, budget, Pace(self.limits, src.shown),
                                     progress, ("sha256", "md5"))
            try:
                facts = inspect_image(upload, declared_format, text_is_raw=text_is_raw)
            except InvalidImage as exc:  # name the upload, not our temp file
                raise InvalidImage(exc.message.replace(upload.name, src.shown)) from None
            final = self.root / f"{sha256}.{facts.format}"
            if not final.exists():
                self._store(upload, facts.format, final)
            return self._describe(final, text_is_raw), md5

    def _store(self, download: Path, fmt: str, final: Path) -> None:
        if fmt in STORED_FORMATS:
            self._validate_with_qemu(download, fmt)
            self._publish(download, final)
            return
        with self._temp(".qcow2") as converted:
            qemu_img.convert(download, fmt, converted, "qcow2")
            # Our own output, but check it is what we meant to make.
            inspect_image(converted, "qcow2")
            self._publish(converted, final)

    def add_snapshot(self, write: Callable[[Path], None]) -> CachedImage:
        """Store the qcow2 that ``write(path)`` makes (an instance's disk,
        flattened) as a base, checked as any import is: the same inspector,
        then ``qemu-img check``. Named by the sha256 of its bytes."""
        with self._temp(".snapshot") as made:
            write(made)
            inspect_image(made, "qcow2")
            self._validate_with_qemu(made, "qcow2")
            digest = hashlib.sha256()
            with made.open("rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
            final = self.root / f"{digest.hexdigest()}.qcow2"
            if not final.exists():
                self._publish(made, final)
            return self._describe(final)

    @staticmethod
    def _validate_with_qemu(path: Path, fmt: str) -> None:
        """Let qemu-img check qcow2 metadata (L2 tables etc.) the headers do not show."""
        if fmt != "qcow2":
            return
        try:
            qemu_img.check(path, fmt)
        except DiskError as exc:
            raise InvalidImage(reason=f"qcow2 image is damaged: {exc.message}") from exc

    def _publish(self, tmp: Path, final: Path) -> None:
        """Make ``tmp`` durable and read-only, then link it in as ``final``."""
        # Read-only, and only for vmops' user (QEMU runs as that user): an
        # imported file may have been readable by root alone.
        os.chmod(tmp, 0o400)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # same content stored by another source
            os.link(tmp, final)
        fsync_directory(self.root)

    # -- fetching --------------------------------------------------------------

    def _fetch(
        self,
        source: str,
        dest: Path,
        expected: Checksum | None,
        progress: Progress | None,
        allowed_dirs: tuple[Path, ...] | None = None,
    ) -> str:
        """Copy ``source`` to ``dest`` within the limits; return its sha256,
        checking ``expected``."""
        shown = redact_url(source) if is_url(source) else source
        budget = Budget(self.limits, self.root, shown)  # before any traffic
        algorithms = ("sha256", expected.algorithm) if expected else ("sha256",)
        src = open_source(source, self.limits, allowed_dirs)
        try:
            pace = Pace(self.limits, shown) if is_url(source) else None
            digests = self._copy(src, dest, budget, pace, progress, algorithms)
        finally:
            src.close()
        if expected and digests[-1] != expected.hexdigest:
            raise InvalidImage(
                reason=f"{shown}: checksum mismatch: expected {expected.algorithm}:"
                f"{expected.hexdigest}, got {expected.algorithm}:{digests[-1]}"
            )
        return digests[0]

    @staticmethod
    def _copy(src: Source, dest: Path, budget: Budget, pace: Pace | None,
              progress: Progress | None, algorithms: tuple[str, ...]) -> list[str]:
        """Copy ``src`` to ``dest`` within ``budget`` (and ``pace``); return
        the hex digests of the bytes by each of ``algorithms``."""
        budget.check_length(src.length)
        hashes = [hashlib.new(a, usedforsecurity=a != "md5") for a in algorithms]
        with dest.open("wb") as out:
            done = 0
            if progress:
                progress(0, src.length)
            while chunk := src.read():
                done += len(chunk)
                budget.check(done)
                _write_sparse(out, chunk)
                for h in hashes:
                    h.update(chunk)
                if pace:
                    pace.check(done)
                if progress:
                    progress(done, src.length)
            out.truncate(done)  # a trailing hole was only seeked over
        if src.length is not None and done != src.length:
            raise InvalidImage(reason=f"{src.shown}: got {done} of {src.length} bytes; "
                               "transfer cut short")
        return [h.hexdigest() for h in hashes]

    # -- reuse -----------------------------------------------------------------

    def _lookup_expected(
        self, expected: Checksum | None, declared: str | None
    ) -> CachedImage | None:
        """A cached file named by the expected sha256, if the declared format allows it."""
        if expected is None or expected.algorithm != "sha256":
            return None
        for fmt in STORED_FORMATS:
            path = self.root / f"{expected.hexdigest}.{fmt}"
            # A converted base (qcow2 from vmdk) does not show its source format,
            # so with another declared format we fetch and inspect instead.
            if declared in (None, fmt):
                found = self._reuse(path)
                if found is not None:
                    return found
        return None

    def _lookup_memo(
        self, key: str, seen: _Memo | None, expected: Checksum | None, declared: str | None
    ) -> CachedImage | None:
        memo = self._read_memo(key)
        if memo is None or memo == seen:
            return None  # nobody finished this source while we waited
        if declared not in (None, memo.source_format):
            return None
        if expected and (expected.algorithm, expected.hexdigest) != ("sha256", memo.checksum):
            return None
        return self._reuse(Path(memo.path))

    def _reuse(self, path: Path) -> CachedImage | None:
        """Describe a cached file, or None if it is not (or no longer) there."""
        try:
            path.stat()
        except FileNotFoundError:  # never imported, or pruned a moment ago
            return None
        return self._describe(path)

    def _describe(self, path: Path, text_is_raw: bool = False) -> CachedImage:
        match = _CACHED_NAME.match(path.name)
        if match is None:
            raise DiskError(reason=f"{path} is not a cached image")
        facts = inspect_image(path, match.group(2), text_is_raw)
        return CachedImage(
            checksum=match.group(1),
            path=path,
            format=facts.format,
            virtual_size=facts.virtual_size,
            file_size=facts.file_size,
        )

    # -- housekeeping ----------------------------------------------------------

    def list_files(self) -> list[Path]:
        """The cached bases, sorted by name."""
        return sorted(p for p in self.root.iterdir() if _CACHED_NAME.match(p.name))

    def remove(self, checksum_or_path: str | Path) -> list[Path]:
        """Delete one cached base, by sha256 or path; missing is not an error."""
        if isinstance(checksum_or_path, Path):
            path = checksum_or_path
            if path.parent.resolve() != self.root.resolve() or not _CACHED_NAME.match(path.name):
                raise ValueError(f"{path} is not a file of the image cache {self.root}")
            targets = [path]
        else:
            digest = checksum_or_path.lower().removeprefix("sha256:")
            targets = [self.root / f"{digest}.{fmt}" for fmt in STORED_FORMATS]
        removed = []
        for path in targets:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
        return removed

    def remove_temp_files(self) -> list[Path]:
        """Remove every import's temp file: only when no import can be running
        (the service, at start)."""
        removed = []
        for tmp in [*self.root.glob(_TEMP_PREFIX + "*"), *self._lock_dir.glob("*.tmp")]:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
        return removed

    def finished_import(self, source: str, since: float) -> CachedImage | None:
        """The image an import of ``source`` stored at or after ``since`` (a
        time.time()), if one did and the file is still there."""
        key = hashlib.sha256(source.encode()).hexdigest()[:32]
        memo_file = self._lock_dir / f"{key}.json"
        try:
            finished_at = memo_file.stat().st_mtime
        except FileNotFoundError:
            return None
        memo = self._read_memo(key)
        if memo is None or finished_at < since:
            return None
        return self._reuse(Path(memo.path))

    # -- locks, memos, temps ---------------------------------------------------

    @contextlib.contextmanager
    def _source_lock(self, key: str) -> Iterator[None]:
        with self._guard:
            thread_lock = self._thread_locks.setdefault(key, threading.Lock())
        # flock alone would do for threads too (each open() is its own lock
        # owner), but the thread lock keeps waiting threads off the fd table.
        with thread_lock, (self._lock_dir / f"{key}.lock").open("a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            yield  # closing the file releases the flock

    def _read_memo(self, key: str) -> _Memo | None:
        try:
            data = json.loads((self._lock_dir / f"{key}.json").read_text())
            return _Memo(**data)
        except (OSError, ValueError, TypeError):
            return None

    def _write_memo(self, key: str, memo: _Memo) -> None:
        path = self._lock_dir / f"{key}.json"
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(memo.__dict__))
        os.replace(tmp, path)

    @contextlib.contextmanager
    def _temp(self, suffix: str) -> Iterator[Path]:
        """A temp file in the cache root (same filesystem: link works), always removed."""
        fd, name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=suffix, dir=self.root)
        os.close(fd)
        try:
            yield Path(name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


def _write_sparse(out: BinaryIO, chunk: bytes) -> None:
    """Seek over all-zero chunks so raw images stay sparse in the cache."""
    if chunk == _ZEROS[: len(chunk)]:
        out.seek(len(chunk), os.SEEK_CUR)
    else:
        out.write(chunk)
