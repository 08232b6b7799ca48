"""Inside a ``vmops serve`` run by ``bench.service_memory``: where the
process's memory is, on request (issue #17's "where the rest goes").

    python -m bench.memory_probe DIR MODE      (in place of ``python -m vmops serve``)

Runs ``vmops serve`` with a thread that, when the file ``DIR/<n>.want``
appears (n = 0, 1, ...), runs ``gc.collect()`` and writes:

- MODE ``breakdown``: ``<n>.json``, :func:`breakdown`: glibc's malloc
  (``mallinfo2``: bytes in use and free in its arenas; ``malloc_info``:
  each arena's size and free bytes), Python's small-object allocator
  (``sys._debugmallocstats``: arenas, bytes in blocks), SQLite's own
  allocations (``sqlite3_status64``: all of them, the page caches of
  every connection included) and the process's anonymous memory
  (``/proc/self/smaps_rollup``);
- MODE ``trace``: ``<n>.snap``, a ``tracemalloc`` snapshot (the service
  must run with ``PYTHONTRACEMALLOC``).

Standard library only, so the service imports nothing more than it would.
The parsers are apart from the calls, for bench/tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import re
import runpy
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

_MALLINFO2 = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
              "uordblks", "fordblks", "keepcost")
_SQLITE_MEMORY_USED = 0  # sqlite3_status64's op numbers (sqlite3.h)
_SQLITE_PAGECACHE_OVERFLOW = 2


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2]


def _libc() -> Any | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "mallinfo2") or not hasattr(libc, "malloc_info"):
        return None  # not glibc, or older than 2.33
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    return libc


# -- parsers ---------------------------------------------------------------------
def parse_malloc_info(xml: str) -> list[dict[str, int]]:
    """Each arena's ``size`` (bytes glibc has from the system for it) and
    ``free`` (bytes in its free chunks: fast bins and the rest), from
    ``malloc_info()``'s XML; the summary after the last arena is left out."""
    arenas = []
    for match in re.finditer(r'<heap nr="(\d+)">(.*?)</heap>', xml, re.S):
        body = match.group(2)
        free = sum(int(size) for kind, size in re.findall(
            r'<total type="(\w+)" count="\d+" size="(\d+)"/>', body) if kind in ("fast", "rest"))
        size = re.search(r'<system type="current" size="(\d+)"/>', body)
        arenas.append({"arena": int(match.group(1)), "size": int(size.group(1)) if size else 0,
                       "free": free})
    return arenas


_PYMALLOC_KEYS = {
    "# arenas allocated current": "arenas",
    "# bytes in allocated blocks": "allocated",
    "# bytes in available blocks": "available",
    "# bytes lost to pool headers": "pool_headers",
    "# bytes lost to quantization": "quantization",
    "# bytes lost to arena alignment": "alignment",
}


def parse_pymalloc(text: str) -> dict[str, int]:
    """From ``sys._debugmallocstats()``'s report: the arenas in use and
    their bytes, bytes in allocated and in available blocks, bytes in
    unused pools, and the bytes lost to headers, quantization and
    alignment."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        name = _PYMALLOC_KEYS.get(key.strip())
        number = value.strip().replace(",", "")
        if name and number.isdigit():
            out[name] = int(number)
        unused = re.match(r"\s*\d+ unused pools \* \d+ bytes\s*=\s*([\d,]+)", line)
        if unused:
            out["unused_pools"] = int(unused.group(1).replace(",", ""))
        arenas = re.match(r"\s*\d+ arenas \* \d+ bytes/arena\s*=\s*([\d,]+)", line)
        if arenas:
            out["arena_bytes"] = int(arenas.group(1).replace(",", ""))
    return out


def parse_rollup(text: str) -> dict[str, int]:
    """``/proc/PID/smaps_rollup``'s fields, in KiB."""
    out = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            out[key] = int(fields[0])
    return out


# -- in the service ------------------------------------------------------------------
def _malloc_info(libc: Any) -> str:
    fd, path = tempfile.mkstemp(prefix="vmops-bench-malloc-info-")
    os.close(fd)
    try:
        fh = libc.fopen(path.encode(), b"w")
        if not fh:
            return ""
        libc.malloc_info(0, fh)
        libc.fclose(fh)
        return Path(path).read_text()
    finally:
        os.unlink(path)


def _debugmallocstats() -> str:
    """``sys._debugmallocstats()`` writes to the C stderr: caught in a file."""
    with tempfile.TemporaryFile(mode="w+") as out:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        return out.read()


def _sqlite_status() -> dict[str, int]:
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
    except OSError:
        return {}
    lib.sqlite3_status64.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int64),
                                     ctypes.POINTER(ctypes.c_int64), ctypes.c_int]
    out = {}
    for op, name in ((_SQLITE_MEMORY_USED, "memory_used"),
                     (_SQLITE_PAGECACHE_OVERFLOW, "pagecache_overflow")):
        current, high = ctypes.c_int64(), ctypes.c_int64()
        if lib.sqlite3_status64(op, ctypes.byref(current), ctypes.byref(high), 0) == 0:
            out[name] = current.value
    return out


def breakdown() -> dict[str, Any]:
    """Where this process's memory is now (bytes; ``rollup`` in KiB)."""
    gc.collect()
    libc = _libc()
    out: dict[str, Any] = {"pymalloc": parse_pymalloc(_debugmallocstats()),
                           "sqlite": _sqlite_status(),
                           "rollup": parse_rollup(Path("/proc/self/smaps_rollup").read_text()),
                           "threads": threading.active_count()}
    if libc is not None:
        info = libc.mallinfo2()
        out["mallinfo2"] = {name: int(getattr(info, name)) for name in _MALLINFO2}
        out["arenas"] = parse_malloc_info(_malloc_info(libc))
    return out


def answer(where: Path, mode: str, poll: float = 0.2) -> None:
    """Answer ``<n>.want`` with ``<n>.json`` or ``<n>.snap`` (see the module)."""
    n = 0
    while True:
        if (where / f"{n}.want").exists():
            suffix = ".json" if mode == "breakdown" else ".snap"
            path = where / f"{n}{suffix}"
            tmp = path.with_name(path.name + ".tmp")
            if mode == "breakdown":
                tmp.write_text(json.dumps(breakdown()))
            else:
                gc.collect()
                tracemalloc.take_snapshot().dump(str(tmp))
            tmp.rename(path)
            n += 1
        time.sleep(poll)


def main(argv: list[str]) -> None:
    where, mode = Path(argv[0]), argv[1]
    # Run as a file: its folder (bench/, whose modules could hide others)
    # becomes the vmops checkout the service runs from (its working folder).
    sys.path[0] = os.getcwd()
    # vmops serve limits malloc's arenas before its first thread; this
    # thread comes first, so it does the same (harmless twice).
    with contextlib.suppress(ImportError):
        from vmops import heap

        heap.limit_arenas()
    threading.Thread(target=answer, args=(where, mode), name="bench-memory",
                     daemon=True).start()
    sys.argv = ["vmops", "serve"]
    runpy.run_module("vmops", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
