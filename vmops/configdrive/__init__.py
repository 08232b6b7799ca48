"""The config drive: the metadata tree a guest reads at boot, as an ISO image.

    md = InstanceMetadata(uuid=..., name=..., hostname=..., project_id=...)
    build_config_drive(md, instance_dir / "disk.config", Limits(), include_admin_password=False)

The ISO (label ``config-2``) can be attached as a CD-ROM or as a raw disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmops.configdrive.iso import read_iso, write_iso
from vmops.configdrive.metadata import InstanceMetadata, Limits, Nic, build_tree, validate

__all__ = [
    "InstanceMetadata",
    "Limits",
    "Nic",
    "build_config_drive",
    "build_tree",
    "new_random_seed",
    "read_iso",
    "validate",
    "write_iso",
]

RANDOM_SEED_BYTES = 512


def new_random_seed() -> bytes:
    """Fresh entropy for ``InstanceMetadata.random_seed`` (512 bytes, as Nova gives)."""
    return os.urandom(RANDOM_SEED_BYTES)


def build_config_drive(
    md: InstanceMetadata,
    dest: Path,
    limits: Limits,
    include_admin_password: bool,
) -> None:
    """Validate ``md``, build its tree and write it atomically as an ISO at ``dest``."""
    validate(md, limits)
    write_iso(build_tree(md, include_admin_password), dest)
