"""Tables, key/value lists, sizes and progress bars for people; JSON for scripts.

Every value shown to people goes through :func:`escape_controls`: a field
may hold what a client or an image server sent (an ESC sequence in a URL
must not drive the terminal, a CR/LF must not fake a line). JSON escapes
control characters itself.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from vmops.text import escape_controls


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[escape_controls(str(c)) if c is not None else "-" for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def print_kv(items: Sequence[tuple[str, str]]) -> None:
    width = max((len(k) for k, _ in items), default=0)
    for key, value in items:
        print(f"{key.ljust(width)}  {escape_controls(str(value))}")


def print_error(message: str) -> None:
    print(f"vmops: {escape_controls(message)}", file=sys.stderr)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def progress_bar(label: str, done: int, total: int | None, width: int = 30) -> None:
    if total:
        filled = width * done // total
        bar = "#" * filled + "-" * (width - filled)
        text = f"\r{escape_controls(label)} [{bar}] {done * 100 // total:3d}% {human_bytes(done)}"
    else:
        text = f"\r{escape_controls(label)} {human_bytes(done)}"
    print(text, end="", file=sys.stderr, flush=True)
