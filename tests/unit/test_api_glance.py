"""Glance v2's image calls over a real socket: create, upload (Content-Length
and chunked, refused and broken ones), download, update by JSON patch, tags,
delete, and who sees and changes which image. Raw images only (no qemu-img
here); qcow2 uploads are in tests/integration/test_glance_upload.py.
Every answer is checked against the OpenAPI document (``Api.raw``).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_api import TOKEN, Answer, Api
from vmops import config
from vmops.api import server
from vmops.api.server import Context
from vmops.compute.catalog import UPLOAD_INTERRUPTED, Catalog
from vmops.disks.cache import ImageCache
from vmops.errors import Forbidden
from vmops.hypervisor.fake import FakeHypervisor
from vmops.service import build
from vmops.store import Image

IMAGES = "/image/v2/images"
PATCH = "application/openstack-images-v2.1-json-patch"
RAW = b"\xeb\x63\x90" + bytes(range(256)) * 8 + bytes(509)  # 2560 bytes, not text
MAX_BYTES = 512 * 1024  # room for a small qcow2 (integration tests)
# Tokens of users in two projects, a reader, and the fixed admin token.
USERS = {"alice": Context("u-alice", "p-one", frozenset({"member", "reader"})),
         "bob": Context("u-bob", "p-two", frozenset({"member", "reader"})),
         "rita": Context("u-rita", "p-one", frozenset({"reader"}))}
KEYS = {"id", "name", "status", "visibility", "protected", "os_hidden", "owner", "checksum",
        "os_hash_algo", "os_hash_value", "size", "virtual_size", "disk_format",
        "container_format", "min_ram", "min_disk", "tags", "created_at", "updated_at", "self",
        "file", "schema"}


class Tokens(server.Authenticator):
    def context(self, token: str) -> Context | None:
        return USERS.get(token) or super().context(token)


@pytest.fixture
def glance(tmp_path: Path) -> Iterator[Api]:
    settings = config.load(tmp_path, env={}, image_import_max_bytes=MAX_BYTES,
                           image_import_reserve_bytes=0)
    engine = build(settings, hypervisor=FakeHypervisor())
    compute, store = engine.compute, engine.store
    routes = engine.routes()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    servers = server.serve(routes.router(), settings.api_socket, f"127.0.0.1:{port}",
                           authenticator=Tokens(TOKEN),
                           limits=server.Limits(body_timeout=5.0))
    yield Api(port, compute, compute.hv, store)  # type: ignore[arg-type]
    for srv in servers:
        srv.shutdown()
        srv.server_close()
    store.close()


def create(api: Api, token: str = "alice", **attrs: Any) -> Answer:
    body = {"name": "img", "disk_format": "raw", "container_format": "bare", **attrs}
    return api.post(IMAGES, body, token=token)


def upload(api: Api, image_id: str, data: bytes, token: str = "alice",
           content_type: str = "application/octet-stream") -> Answer:
    return api.raw("PUT", f"{IMAGES}/{image_id}/file", data,
                   {"Content-Type": content_type, "X-Auth-Token": token})


def patch(api: Api, image_id: str, ops: Any, token: str = "alice",
          content_type: str = PATCH) -> Answer:
    return api.raw("PATCH", f"{IMAGES}/{image_id}", json.dumps(ops).encode(),
                   {"Content-Type": content_type, "X-Auth-Token": token})


def cache_files(api: Api) -> list[str]:
    root = api.compute.settings.images_dir
    return sorted(p.name for p in root.iterdir() if p.name != ".locks")


# -- create -----------------------------------------------------------------------------
def test_create_answers_glances_image_queued_without_data(glance: Api) -> None:
    made = create(glance, min_ram=128, tags=["a", "b", "a"], hw_vendor="x")
    assert made.status == 201
    img = made.body
    assert set(img) == KEYS | {"hw_vendor"}
    assert (img["status"], img["visibility"], img["owner"]) == ("queued", "shared", "p-one")
    assert (img["size"], img["virtual_size"], img["checksum"], img["os_hash_value"]) == \
        (None, None, None, None)
    assert (img["min_ram"], img["min_disk"], img["tags"]) == (128, 0, ["a", "b"])
    assert (img["protected"], img["os_hidden"]) == (False, False)
    assert img["self"] == f"/v2/images/{img['id']}" and img["file"].endswith("/file")
    assert made.headers["location"].endswith(f"{IMAGES}/{img['id']}")
    assert glance.get(f"{IMAGES}/{img['id']}", token="alice").body == img
    assert cache_files(glance) == []


def test_create_takes_the_clients_id_once(glance: Api) -> None:
    ident = str(uuidlib.uuid4())
    assert create(glance, id=ident).body["id"] == ident
    assert create(glance, id=ident).status == 409
    assert create(glance, id="not-a-uuid").status == 400


@pytest.mark.parametrize(("attrs", "status"), [
    ({"visibility": "secret"}, 400), ({"min_ram": -1}, 400), ({"min_disk": "1"}, 400),
    ({"min_disk": True}, 400), ({"protected": "yes"}, 400), ({"name": "n" * 256}, 400),
    ({"disk_format": "floppy"}, 400), ({"tags": "a"}, 400), ({"tags": ["t" * 256]}, 400),
    ({"hw_vendor": 3}, 400), ({"status": "active"}, 403), ({"size": 1}, 403),
    ({"self": "/x"}, 403), ({"os_glance_import": "x"}, 403), ({"deleted": True}, 403),
    ({"visibility": "public"}, 403), ({"owner": "p-two"}, 403),
    ({"os_admin_user": "Not A User"}, 400)])
def test_create_refuses_what_glance_refuses(glance: Api, attrs: dict[str, Any],
                                            status: int) -> None:
    assert create(glance, **attrs).status == status
    assert glance.store.images() == []


def test_create_refuses_bodies_that_are_not_objects(glance: Api) -> None:
    assert glance.post(IMAGES, ["name"], token="alice").status == 400
    assert glance.post(IMAGES, {"name": "x"}, token="rita").status == 403  # a reader


# -- upload and download ------------------------------------------------------------------
def test_upload_with_a_content_length_makes_the_image_active(glance: Api) -> None:
    image_id = create(glance).body["id"]
    assert upload(glance, image_id, RAW).status == 204
    img = glance.get(f"{IMAGES}/{image_id}", token="alice").body
    assert (img["status"], img["size"], img["virtual_size"]) == ("active", len(RAW), len(RAW))
    assert img["checksum"] == hashlib.md5(RAW).hexdigest()  # noqa: S324 - Glance's checksum
    assert (img["os_hash_algo"], img["os_hash_value"]) == \
        ("sha256", hashlib.sha256(RAW).hexdigest())
    assert cache_files(glance) == [f"{hashlib.sha256(RAW).hexdigest()}.raw"]
    got = glance.raw("GET", f"{IMAGES}/{image_id}/file", None, {"X-Auth-Token": "bob"})
    assert got.status == 404  # bob's project does not see alice's shared image
    got = glance.raw("GET", f"{IMAGES}/{image_id}/file", None, {"X-Auth-Token": "alice"})
    assert (got.status, got.body) == (200, RAW)
    assert got.headers["content-md5"] == img["checksum"]
    assert upload(glance, image_id, RAW).status == 409  # active: no second upload


def test_text_declared_raw_is_taken_as_tempest_uploads_it(glance: Api) -> None:
    image_id = create(glance).body["id"]
    assert upload(glance, image_id, b"*" * 1024).status == 204
    assert glance.get(f"{IMAGES}/{image_id}", token="alice").body["status"] == "active"


def chunked(image_id: str, pieces: list[bytes], port: int, ending: bytes = b"0\r\n\r\n",
            token: str = "alice") -> tuple[int, bytes]:
    """PUT the pieces as chunks on a raw socket; the status and body answered."""
    head = (f"PUT {IMAGES}/{image_id}/file HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {token}\r\n"
            "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + ending
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        sock.shutdown(socket.SHUT_WR)  # all sent: a short body ends here, not in a wait
        reply = b""
        while b"\r\n\r\n" not in reply or not _complete(reply):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    status = int(reply.split(b" ", 2)[1])
    return status, reply.partition(b"\r\n\r\n")[2]


def _complete(reply: bytes) -> bool:
    head, _, body = reply.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


def test_a_chunked_upload_is_read_as_a_stream(glance: Api) -> None:
    image_id = create(glance).body["id"]
    pieces = [RAW[:1000], RAW[1000:1001], RAW[1001:]]
    status, _ = chunked(image_id, pieces, glance.port, ending=b"0\r\nX-Trailer: 1\r\n\r\n")
    assert status == 204
    img = glance.get(f"{IMAGES}/{image_id}", token="alice").body
    assert (img["status"], img["os_hash_value"]) == ("active", hashlib.sha256(RAW).hexdigest())


@pytest.mark.parametrize("ending", [b"zz\r\n\r\n", b"1" * 2000 + b"\r\n", b"5\r\nab"])
def test_a_badly_chunked_upload_is_refused_and_nothing_kept(glance: Api, ending: bytes) -> None:
    image_id = create(glance).body["id"]
    status, body = chunked(image_id, [RAW[:512]], glance.port, ending=ending)
    assert status == 400 and b"request body is incomplete" in body
    img = glance.store.image(image_id)
    assert img.status == "queued" and "incomplete" in img.fault
    assert cache_files(glance) == []


def test_a_refused_upload_leaves_the_image_queued_and_no_file(glance: Api) -> None:
    image_id = create(glance, disk_format="qcow2").body["id"]
    refused = upload(glance, image_id, RAW)
    assert refused.status == 400 and "declared format 'qcow2'" in refused.fault()[1]
    img = glance.get(f"{IMAGES}/{image_id}", token="alice").body
    assert (img["status"], img["size"], img["checksum"]) == ("queued", None, None)
    assert "declared format" in glance.store.image(image_id).fault
    assert cache_files(glance) == []
    assert patch(glance, image_id, [{"op": "replace", "path": "/disk_format",
                                     "value": "raw"}]).status == 200
    assert upload(glance, image_id, RAW).status == 204  # queued again: try again


@pytest.mark.parametrize(("data", "why"), [
    (b"abc", "not a multiple of 512"), (b"QFI\xfb" + bytes(508), "content is 'qcow2'"),
    (b"", "is empty")])
def test_data_that_is_not_a_raw_disk_is_refused(glance: Api, data: bytes, why: str) -> None:
    image_id = create(glance).body["id"]
    refused = upload(glance, image_id, data)
    assert refused.status == 400 and why in refused.fault()[1]
    assert glance.store.image(image_id).status == "queued" and cache_files(glance) == []


def test_only_raw_and_qcow2_bare_images_take_data(glance: Api) -> None:
    for attrs in ({"disk_format": "vmdk"}, {"container_format": "ovf"},
                  {"disk_format": None}):
        image_id = create(glance, **attrs).body["id"]
        assert upload(glance, image_id, RAW).status == 400, attrs
        assert glance.store.image(image_id).status == "queued"


def test_upload_needs_octet_stream(glance: Api) -> None:
    image_id = create(glance).body["id"]
    assert upload(glance, image_id, RAW, content_type="application/json").status == 415
    assert upload(glance, image_id, RAW, content_type="").status == 415
    assert glance.store.image(image_id).status == "queued"


def test_a_body_over_the_limit_is_413_with_a_length_or_chunked(glance: Api) -> None:
    image_id = create(glance).body["id"]
    big = RAW * (MAX_BYTES // len(RAW) + 1)
    answer = upload(glance, image_id, big)
    assert answer.status == 413 and "image_import_max_bytes" in answer.fault()[1]
    status, _ = chunked(image_id, [big[i:i + 4096] for i in range(0, len(big), 4096)],
                        glance.port)
    assert status == 413
    assert glance.store.image(image_id).status == "queued" and cache_files(glance) == []


def test_a_client_that_goes_away_mid_upload_leaves_nothing(glance: Api) -> None:
    image_id = create(glance).body["id"]
    with socket.create_connection(("127.0.0.1", glance.port), timeout=10) as sock:
        sock.sendall((f"PUT {IMAGES}/{image_id}/file HTTP/1.1\r\nHost: x\r\n"
                      "X-Auth-Token: alice\r\nContent-Type: application/octet-stream\r\n"
                      f"Content-Length: {10 * len(RAW)}\r\n\r\n").encode() + RAW)
        _wait(lambda: glance.store.image(image_id).status == "saving")
    _wait(lambda: glance.store.image(image_id).fault != "")
    img = glance.store.image(image_id)
    assert img.status == "queued" and "sent 2560 of the 25600 bytes" in img.fault
    assert cache_files(glance) == []


def test_a_client_that_stalls_mid_upload_is_timed_out(glance: Api) -> None:
    """Each read has the body timeout (5 s here); the upload is refused 408."""
    image_id = create(glance).body["id"]
    with socket.create_connection(("127.0.0.1", glance.port), timeout=30) as sock:
        sock.sendall((f"PUT {IMAGES}/{image_id}/file HTTP/1.1\r\nHost: x\r\n"
                      "X-Auth-Token: alice\r\nContent-Type: application/octet-stream\r\n"
                      f"Content-Length: {2 * len(RAW)}\r\n\r\n").encode() + RAW)
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408")
    assert glance.store.image(image_id).status == "queued" and cache_files(glance) == []


def _wait(ready: Any) -> None:
    deadline = time.monotonic() + 20
    while not ready():
        assert time.monotonic() < deadline, "the service did not get there"
        time.sleep(0.02)


def test_an_image_deleted_during_its_upload_keeps_no_file(glance: Api) -> None:
    image_id = create(glance).body["id"]
    conn = http.client.HTTPConnection("127.0.0.1", glance.port, timeout=10)
    conn.putrequest("PUT", f"{IMAGES}/{image_id}/file")
    for name, value in (("X-Auth-Token", "alice"), ("Content-Type", "application/octet-stream"),
                        ("Content-Length", str(len(RAW)))):
        conn.putheader(name, value)
    conn.endheaders()
    conn.send(RAW[:100])
    _wait(lambda: glance.store.image(image_id).status == "saving")
    assert glance.call("DELETE", f"{IMAGES}/{image_id}", token="alice").status == 204
    conn.send(RAW[100:])
    assert conn.getresponse().status == 410
    conn.close()
    assert glance.store.images() == [] and cache_files(glance) == []


def test_an_interrupted_upload_is_queued_again_at_restart(glance: Api) -> None:
    waiting = glance.store.add_image(Image(id="w", name="w", status="queued"))
    broken = glance.store.add_image(Image(id="b", name="b", status="saving", source="upload"))
    catalog = Catalog(glance.store, ImageCache(glance.compute.settings.images_dir))
    catalog.recover_imports()
    assert glance.store.image("w") == waiting  # still waiting for its data
    again = glance.store.image(broken.id)
    assert (again.status, again.fault) == ("queued", UPLOAD_INTERRUPTED)


# -- update, tags, delete ------------------------------------------------------------------
def test_json_patch_replaces_adds_and_removes(glance: Api) -> None:
    image_id = create(glance, hw_vendor="x").body["id"]
    done = patch(glance, image_id, [
        {"op": "replace", "path": "/name", "value": "renamed"},
        {"op": "add", "path": "/os_distro", "value": "debian"},
        {"op": "remove", "path": "/hw_vendor"},
        {"op": "replace", "path": "/tags", "value": ["x"]},
        {"op": "replace", "path": "/min_disk", "value": 2},
        {"op": "add", "path": "/os_admin_user", "value": "debian"}])
    assert done.status == 200
    img = done.body
    assert (img["name"], img["os_distro"], img["tags"], img["min_disk"]) == \
        ("renamed", "debian", ["x"], 2)
    assert "hw_vendor" not in img and img["os_admin_user"] == "debian"
    assert glance.store.image(image_id).login_user == "debian"
    draft4 = patch(glance, image_id, [{"replace": "/name", "value": "v20"}],
                   content_type="application/openstack-images-v2.0-json-patch")
    assert draft4.body["name"] == "v20"


@pytest.mark.parametrize(("ops", "status"), [
    ({"op": "replace"}, 400), ([{"op": "move", "path": "/name"}], 400),
    ([{"op": "replace", "path": "name", "value": "x"}], 400),
    ([{"op": "replace", "path": "/a/b", "value": "x"}], 400),
    ([{"op": "replace", "path": "/name"}], 400),
    ([{"op": "remove", "path": "/name"}], 403),
    ([{"op": "replace", "path": "/status", "value": "active"}], 403),
    ([{"op": "replace", "path": "/nope", "value": "x"}], 409),
    ([{"op": "remove", "path": "/nope"}], 409),
    ([{"op": "replace", "path": "/visibility", "value": "public"}], 403),
    ([{"op": "replace", "path": "/owner", "value": "p-two"}], 403),
    ([{"op": "replace", "path": "/min_ram", "value": -5}], 400),
    ([{"op": "replace", "path": "/name", "value": "ok"},
      {"op": "replace", "path": "/min_ram", "value": "x"}], 400)])
def test_json_patch_refusals_change_nothing(glance: Api, ops: Any, status: int) -> None:
    before = create(glance).body
    assert patch(glance, before["id"], ops).status == status
    assert glance.get(f"{IMAGES}/{before['id']}", token="alice").body == before


def test_patch_needs_glances_media_type(glance: Api) -> None:
    image_id = create(glance).body["id"]
    answer = patch(glance, image_id, [], content_type="application/json")
    assert answer.status == 415 and PATCH in answer.headers["accept-patch"]


def test_formats_change_only_while_queued(glance: Api) -> None:
    image_id = create(glance).body["id"]
    upload(glance, image_id, RAW)
    change = [{"op": "replace", "path": "/disk_format", "value": "qcow2"}]
    assert patch(glance, image_id, change).status == 403


def test_tags(glance: Api) -> None:
    image_id = create(glance).body["id"]
    tag = f"{IMAGES}/{image_id}/tags"
    assert glance.call("PUT", f"{tag}/web", token="alice").status == 204
    assert glance.call("PUT", f"{tag}/web", token="alice").status == 204
    assert glance.get(f"{IMAGES}/{image_id}", token="alice").body["tags"] == ["web"]
    listed = glance.get(f"{IMAGES}?tag=web", token="alice").body["images"]
    assert [i["id"] for i in listed] == [image_id]
    assert glance.call("DELETE", f"{tag}/web", token="alice").status == 204
    assert glance.call("DELETE", f"{tag}/web", token="alice").status == 404
    assert glance.call("PUT", f"{tag}/web", token="bob").status == 404


def test_delete_is_refused_while_protected(glance: Api) -> None:
    image_id = create(glance, protected=True).body["id"]
    upload(glance, image_id, RAW)
    refused = glance.call("DELETE", f"{IMAGES}/{image_id}", token="alice")
    assert refused.status == 403 and "protected" in refused.fault()[1]
    patch(glance, image_id, [{"op": "replace", "path": "/protected", "value": False}])
    assert glance.call("DELETE", f"{IMAGES}/{image_id}", token="alice").status == 204
    assert glance.store.images() == [] and cache_files(glance) == []


def test_delete_is_refused_while_an_instance_uses_it(glance: Api) -> None:
    image_id = create(glance).body["id"]
    upload(glance, image_id, RAW)
    inst = glance.add_instance("web1")  # another project's instance, on alice's image
    glance.store.update_instance(inst, image_id=image_id, project_id="p-two")
    refused = glance.call("DELETE", f"{IMAGES}/{image_id}", token="alice")
    assert refused.status == 409
    assert "web1" not in refused.fault()[1] and "1 of other projects" in refused.fault()[1]
    assert glance.call("DELETE", f"{IMAGES}/{image_id}", token=TOKEN).fault()[1].endswith(
        "web1")  # an admin is told which
    assert cache_files(glance) != []


# -- who sees what --------------------------------------------------------------------------
def test_a_project_sees_public_and_its_own_images_only(glance: Api) -> None:
    mine = create(glance, name="mine", visibility="private").body["id"]
    shared = create(glance, name="shared").body["id"]
    community = create(glance, name="comm", visibility="community").body["id"]
    public = create(glance, token=TOKEN, name="pub", visibility="public").body["id"]

    def names(token: str, query: str = "") -> set[str]:
        return {i["name"] for i in glance.get(f"{IMAGES}{query}", token=token).body["images"]}
    assert names("alice") == {"mine", "shared", "comm", "pub"}
    assert names("bob") == {"pub"}
    assert names("bob", "?visibility=community") == {"comm"}
    assert names(TOKEN) == {"mine", "shared", "pub"}  # others' community: when asked
    assert names(TOKEN, "?visibility=all") == {"mine", "shared", "comm", "pub"}
    for hidden in (mine, shared):
        for call in (lambda i: glance.get(f"{IMAGES}/{i}", token="bob"),
                     lambda i: patch(glance, i, [], token="bob"),
                     lambda i: upload(glance, i, RAW, token="bob"),
                     lambda i: glance.call("DELETE", f"{IMAGES}/{i}", token="bob")):
            assert call(hidden).status == 404
    assert glance.get(f"{IMAGES}/{community}", token="bob").status == 200
    for seen in (community, public):
        assert patch(glance, seen, [], token="bob").status == 403
        assert upload(glance, seen, RAW, token="bob").status == 403
        assert glance.call("DELETE", f"{IMAGES}/{seen}", token="bob").status == 403
    assert glance.call("DELETE", f"{IMAGES}/{mine}", token="rita").status == 403  # reader
    assert glance.call("DELETE", f"{IMAGES}/{public}", token=TOKEN).status == 204


def test_an_admin_may_give_an_image_to_another_project(glance: Api) -> None:
    image_id = create(glance, token=TOKEN, owner="p-two", visibility="private").body["id"]
    assert glance.get(f"{IMAGES}/{image_id}", token="bob").body["owner"] == "p-two"
    assert glance.get(f"{IMAGES}/{image_id}", token="alice").status == 404


def test_hidden_images_are_listed_only_when_asked(glance: Api) -> None:
    create(glance, name="h", os_hidden=True)
    create(glance, name="v")
    listed = glance.get(IMAGES, token="alice").body["images"]
    assert [i["name"] for i in listed] == ["v"]
    listed = glance.get(f"{IMAGES}?os_hidden=true", token="alice").body["images"]
    assert [i["name"] for i in listed] == ["h"]


def test_list_sorts_as_asked(glance: Api) -> None:
    for name in ("b", "a", "c"):
        create(glance, name=name)
    by_name = glance.get(f"{IMAGES}?sort_key=name&sort_dir=asc", token="alice").body
    assert [i["name"] for i in by_name["images"]] == ["a", "b", "c"]
    by_sort = glance.get(f"{IMAGES}?sort=name:desc", token="alice").body
    assert [i["name"] for i in by_sort["images"]] == ["c", "b", "a"]
    assert glance.get(f"{IMAGES}?sort_key=owner", token="alice").status == 400


def test_schemas(glance: Api) -> None:
    image = glance.get("/image/v2/schemas/image").body
    assert image["name"] == "image" and "visibility" in image["properties"]
    assert glance.get("/image/v2/schemas/images").body["name"] == "images"


# -- host files ------------------------------------------------------------------------------
def test_only_an_admin_imports_a_host_file(glance: Api, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(RAW)
    body = {"image": {"name": "host", "source": str(disk)}}
    refused = glance.post("/v2.1/images", body, token="alice")
    assert refused.status == 403
    assert glance.store.images() == []
    catalog = Catalog(glance.store, ImageCache(glance.compute.settings.images_dir))
    with pytest.raises(Forbidden, match="only an admin may import a host file"):
        catalog.import_image("host", str(disk), host_paths=False)
    # An admin over TCP: only inside image_import_dirs (none are set here).
    assert glance.post("/v2.1/images", body).status == 403
    assert glance.store.images() == [] and cache_files(glance) == []


def test_the_compute_image_proxy_deletes_only_the_projects_own(glance: Api) -> None:
    mine = create(glance, visibility="private").body["id"]
    public = create(glance, token=TOKEN, visibility="public").body["id"]
    assert glance.call("DELETE", f"/v2.1/images/{mine}", token="bob").status == 404
    assert glance.call("DELETE", f"/v2.1/images/{public}", token="bob").status == 403
    assert glance.call("DELETE", f"/v2.1/images/{mine}", token="alice").status == 204
    assert [i.id for i in glance.store.images()] == [public]


@pytest.mark.parametrize(("headers", "status"), [
    ("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", 400),  # a smuggling sign
    ("Transfer-Encoding: gzip\r\n", 501), ("Content-Length: -1\r\n", 400)])
def test_upload_framing_that_is_refused_before_a_byte_is_read(glance: Api, headers: str,
                                                              status: int) -> None:
    image_id = create(glance).body["id"]
    with socket.create_connection(("127.0.0.1", glance.port), timeout=10) as sock:
        sock.sendall((f"PUT {IMAGES}/{image_id}/file HTTP/1.1\r\nHost: x\r\n"
                      "X-Auth-Token: alice\r\nContent-Type: application/octet-stream\r\n"
                      f"{headers}\r\n").encode())
        reply = sock.recv(65536)
    assert reply.startswith(f"HTTP/1.1 {status}".encode())
    assert glance.store.image(image_id).status == "queued" and cache_files(glance) == []


def test_a_keep_alive_connection_carries_on_after_an_upload(glance: Api) -> None:
    image_id = create(glance).body["id"]
    conn = http.client.HTTPConnection("127.0.0.1", glance.port, timeout=10)
    conn.request("PUT", f"{IMAGES}/{image_id}/file", body=iter([RAW[:100], RAW[100:]]),
                 headers={"X-Auth-Token": "alice", "Content-Type": "application/octet-stream"},
                 encode_chunked=True)
    assert conn.getresponse().read() == b""
    conn.request("GET", f"{IMAGES}/{image_id}", headers={"X-Auth-Token": "alice"})
    assert json.loads(conn.getresponse().read())["status"] == "active"
    conn.close()


def test_no_server_is_made_from_another_projects_private_image(glance: Api) -> None:
    image_id = create(glance, visibility="private").body["id"]
    upload(glance, image_id, RAW)
    body = {"server": {"name": "s", "imageRef": image_id, "flavorRef": "1"}}
    refused = glance.post("/v2.1/servers", body, token="bob")
    assert refused.status == 400 and image_id in refused.fault()[1]
    assert glance.store.instances() == []


@pytest.mark.parametrize(("attrs", "words"), [
    ({"min_ram": 4096}, "Flavor's memory is too small for requested image."),
    ({"min_disk": 2}, "Flavor's disk is smaller than the minimum size specified")])
def test_an_image_that_needs_a_bigger_flavor_is_refused(glance: Api, attrs: dict[str, Any],
                                                        words: str) -> None:
    image_id = create(glance, **attrs).body["id"]
    upload(glance, image_id, RAW)
    body = {"server": {"name": "s", "imageRef": image_id, "flavorRef": "1"}}  # 512 MiB, 1 GB
    refused = glance.post("/v2.1/servers", body, token="alice")
    assert refused.status == 400 and words in refused.fault()[1]
    assert glance.store.instances() == []


def test_prune_keeps_uploaded_and_protected_images(glance: Api) -> None:
    uploaded = create(glance).body["id"]
    upload(glance, uploaded, RAW)
    store = glance.store
    store.add_image(Image(id="imp", name="imported", status="error", source="/srv/x.raw"))
    store.add_image(Image(id="prot", name="protected", status="error", source="/srv/y.raw",
                          extra={"protected": True}))
    catalog = Catalog(store, ImageCache(glance.compute.settings.images_dir))
    assert catalog.prune_images(-1) == ["imported"]
    assert sorted(i.id for i in store.images()) == sorted([uploaded, "prot"])
    assert cache_files(glance) != []
