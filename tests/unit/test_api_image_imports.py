"""Image imports through the API: what a client over TCP may import and learn."""

from __future__ import annotations

import os

from tests.unit.test_api import Api
from vmops.compute.catalog import INTERRUPTED
from vmops.store import Image


def test_tcp_clients_may_not_import_host_files_by_default(api: Api) -> None:
    answers = {src: api.post("/v2.1/images", {"image": {"name": "x", "source": src}})
               for src in ("/etc/passwd", "/nonexistent/disk.raw")}
    for answer in answers.values():
        assert answer.status == 403 and answer.fault()[0] == "forbidden"
    # Worded alike whether the file exists, without its size; nothing recorded.
    shown = [a.fault()[1].replace(src, "P") for src, a in answers.items()]
    assert shown[0] == shown[1]
    assert str(os.path.getsize("/etc/passwd")) not in shown[0]
    assert [i["name"] for i in api.get("/v2.1/images").body["images"]] == ["tiny"]


def test_tcp_imports_store_urls_without_credentials(api: Api) -> None:
    answer = api.post("/v2.1/images", {"image": {
        "name": "remote", "source": "http://bob:hunter2@127.0.0.1:9/disk.raw"}},
        headers={"X-Vmops-Extra": "1"})
    assert answer.status == 202
    assert answer.body["image"]["vmops:source"] == "http://127.0.0.1:9/disk.raw"
    assert "hunter2" not in repr(api.store.images())


def test_sources_with_control_characters_are_refused(api: Api) -> None:
    answer = api.post("/v2.1/images", {"image": {
        "name": "x", "source": "http://127.0.0.1:9/a\r\nb\u001b[2J.raw"}})
    assert answer.status == 400


def test_spawning_from_a_failed_import_says_why(api: Api) -> None:
    api.store.add_image(Image(id="broken-id", name="broken", status="error",
                              fault=INTERRUPTED))
    answer = api.post("/v2.1/servers", {"server": {
        "name": "vm1", "imageRef": "broken", "flavorRef": "1"}})
    assert answer.status == 409
    assert f"import failed: {INTERRUPTED}" in answer.fault()[1]
