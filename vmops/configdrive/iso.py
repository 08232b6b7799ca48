"""Write (and read back) a config drive tree as an ISO9660 image.

The image carries three name spaces over the same files: plain ISO9660 at
interchange level 1 (8.3 upper-case names, for the most conservative
readers), Rock Ridge 1.09 and Joliet (both with the real names). Its volume
label is ``config-2``, which is what cloud-init looks for.

The image is written to a temporary file beside ``dest`` and renamed over
it, so ``dest`` is either absent or complete; on failure nothing is left.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Final, Literal

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from vmops.durable import fsync_directory
from vmops.errors import ConfigDriveInvalid

VOLUME_LABEL: Final = "config-2"
_FILE_MODE: Final = 0o100444
_DIR_MODE: Final = 0o040555
_NOT_D_CHARACTERS: Final = re.compile(r"[^A-Z0-9_]")

NameSpace = Literal["rock_ridge", "joliet"]


def write_iso(tree: dict[str, bytes], dest: Path) -> None:
    """Master ``tree`` (path -> content, no leading '/') into an ISO at ``dest``."""
    _check_tree(tree)
    iso = _master(tree)
    try:
        _write_atomically(iso, Path(dest))
    except PyCdlibException as exc:
        raise ConfigDriveInvalid(reason=f"cannot write the ISO: {exc}") from exc
    finally:
        iso.close()


def read_iso(path: Path, names: NameSpace = "rock_ridge") -> dict[str, bytes]:
    """Every file of the ISO at ``path``, keyed by its Rock Ridge (or Joliet) path."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        return dict(_read_files(iso, names))
    finally:
        iso.close()


# --------------------------------------------------------------------------- mastering


def _check_tree(tree: dict[str, bytes]) -> None:
    for path in tree:
        parts = path.split("/")
        if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise ConfigDriveInvalid(
                reason=f"config drive path {path!r} is not a clean relative path"
            )


def _master(tree: dict[str, bytes]) -> pycdlib.PyCdlib:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident=VOLUME_LABEL, joliet=3, rock_ridge="1.09")
    try:
        names = _Iso9660Names()
        for directory in _directories(tree):
            iso.add_directory(
                iso_path=names.directory(directory),
                rr_name=directory.name,
                joliet_path=f"/{directory}",
                file_mode=_DIR_MODE,
            )
        for path in sorted(tree):
            _add_file(iso, names, PurePosixPath(path), tree[path])
    except PyCdlibException as exc:
        iso.close()
        raise ConfigDriveInvalid(reason=f"cannot lay out the ISO: {exc}") from exc
    return iso


def _add_file(iso: pycdlib.PyCdlib, names: _Iso9660Names, path: PurePosixPath, data: bytes) -> None:
    iso.add_fp(
        io.BytesIO(data),
        len(data),
        iso_path=names.file(path),
        rr_name=path.name,
        joliet_path=f"/{path}",
        file_mode=_FILE_MODE,
    )


def _directories(tree: Iterable[str]) -> list[PurePosixPath]:
    """Every directory that holds a file, parents before children."""
    found: set[PurePosixPath] = set()
    for path in tree:
        found.update(p for p in PurePosixPath(path).parents if p != PurePosixPath("."))
    return sorted(found, key=lambda p: (len(p.parts), str(p)))


class _Iso9660Names:
    """Level-1 names (8.3, A-Z 0-9 _) for real paths, unique within each directory."""

    def __init__(self) -> None:
        self._assigned: dict[PurePosixPath, str] = {PurePosixPath("."): ""}
        self._taken: dict[str, set[str]] = {}

    def directory(self, path: PurePosixPath) -> str:
        name = self._unique(path.parent, _d_characters(path.name), 8, "")
        self._assigned[path] = f"{self._assigned[path.parent]}/{name}"
        return self._assigned[path]

    def file(self, path: PurePosixPath) -> str:
        stem, dot, extension = path.name.rpartition(".")
        if not dot:
            stem, extension = extension, ""
        ext = _d_characters(extension)[:3]
        name = self._unique(path.parent, _d_characters(stem), 8, ext)
        return f"{self._assigned[path.parent]}/{name}.{ext};1"

    def _unique(self, parent: PurePosixPath, base: str, width: int, ext: str) -> str:
        taken = self._taken.setdefault(str(parent), set())
        for candidate in _candidates(base or "_", width):
            if f"{candidate}.{ext}" not in taken:
                taken.add(f"{candidate}.{ext}")
                return candidate
        raise ConfigDriveInvalid(reason=f"too many similar names in {parent}")


def _candidates(base: str, width: int) -> Iterator[str]:
    yield base[:width]
    for number in range(1, 10 ** (width - 1)):
        suffix = str(number)
        yield base[: width - len(suffix)] + suffix


def _d_characters(text: str) -> str:
    return _NOT_D_CHARACTERS.sub("_", text.upper())


# --------------------------------------------------------------------------- writing


def _write_atomically(iso: pycdlib.PyCdlib, dest: Path) -> None:
    fd, temp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            iso.write_fp(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    fsync_directory(dest.parent)


# --------------------------------------------------------------------------- reading


def _read_files(iso: pycdlib.PyCdlib, names: NameSpace) -> Iterator[tuple[str, bytes]]:
    key = "rr_path" if names == "rock_ridge" else "joliet_path"
    for directory, _, files in iso.walk(**{key: "/"}):
        for name in files:
            path = f"{directory.rstrip('/')}/{name}"
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, **{key: path})
            yield path.lstrip("/"), out.getvalue()
