"""Glance uploads of qcow2 images, checked by the real qemu-img: a clean
qcow2 becomes active; one with a backing file (qemu would open another
host file) or an external data file is refused and leaves nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.unit.test_api import Api
from tests.unit.test_api_glance import IMAGES, cache_files, create, glance, upload

__all__ = ["glance"]  # the fixture


def qcow2(path: Path, *options: str) -> bytes:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *options, str(path), "1M"],
                   check=True)
    return path.read_bytes()


def test_a_qcow2_upload_becomes_an_active_image(glance: Api, tmp_path: Path) -> None:
    data = qcow2(tmp_path / "ok.qcow2")
    image_id = create(glance, disk_format="qcow2").body["id"]
    assert upload(glance, image_id, data).status == 204
    img = glance.get(f"{IMAGES}/{image_id}", token="alice").body
    assert (img["status"], img["virtual_size"], img["disk_format"]) == \
        ("active", 1 << 20, "qcow2")
    assert glance.store.image(image_id).format == "qcow2"


def test_a_qcow2_with_a_backing_file_is_refused(glance: Api, tmp_path: Path) -> None:
    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(1 << 20))
    data = qcow2(tmp_path / "evil.qcow2", "-b", str(secret), "-F", "raw")
    image_id = create(glance, disk_format="qcow2").body["id"]
    refused = upload(glance, image_id, data)
    assert refused.status == 400 and "backing file" in refused.fault()[1]
    assert glance.store.image(image_id).status == "queued" and cache_files(glance) == []


def test_a_qcow2_with_an_external_data_file_is_refused(glance: Api, tmp_path: Path) -> None:
    data = qcow2(tmp_path / "ext.qcow2", "-o", f"data_file={tmp_path / 'ext.data'}")
    image_id = create(glance, disk_format="qcow2").body["id"]
    refused = upload(glance, image_id, data)
    assert refused.status == 400 and "data file" in refused.fault()[1]
    assert glance.store.image(image_id).status == "queued" and cache_files(glance) == []
