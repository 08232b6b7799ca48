"""The environment the volume tests share: a compute on the fake hypervisor
(real files: the image cache, instance disks, the volume pool) with a 1 MiB
raw image "base" whose first bytes name the test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vmops import config
from vmops.console.fake import FakeConsole
from vmops.hypervisor.fake import FakeHypervisor
from vmops.service import build


def make_env(tmp_path: Path, marker: bytes) -> dict[str, Any]:
    """settings, store, hv, compute, volumes and tmp; "base" starts with ``marker``."""
    settings = config.load(tmp_path / "state", env={}, shutdown_retry_interval=1)
    hv = FakeHypervisor()
    engine = build(settings, hypervisor=hv, capture=FakeConsole())
    store, compute = engine.store, engine.compute
    base = tmp_path / "base.raw"
    base.write_bytes(marker + bytes(1024 * 1024 - len(marker)))
    engine.catalog.import_image(
        "base", str(base), disk_format="raw", background=False)
    return {"settings": settings, "store": store, "hv": hv, "compute": compute,
            "volumes": engine.volumes, "tmp": tmp_path}


def pool_files(env: dict[str, Any]) -> list[str]:
    """The names of the files in the volume pool."""
    pool: Path = env["settings"].volumes_dir
    return sorted(p.name for p in pool.iterdir()) if pool.exists() else []
