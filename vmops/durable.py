"""Making a write survive a power cut: a file's rename, link or removal is
durable only once its directory is synced too."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """fsync ``directory`` itself (its entries: names made, renamed or removed)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
