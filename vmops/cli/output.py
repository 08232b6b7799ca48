"""Tables, key/value lists, sizes and progress bars for people; JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) if c is not None else "-" for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def print_kv(items: Sequence[tuple[str, str]]) -> None:
    width = max((len(k) for k, _ in items), default=0)
    for key, value in items:
        print(f"{key.ljust(width)}  {value}")


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
        text = f"\r{label} [{bar}] {done * 100 // total:3d}% {human_bytes(done)}"
    else:
        text = f"\r{label} {human_bytes(done)}"
    print(text, end="", file=sys.stderr, flush=True)
