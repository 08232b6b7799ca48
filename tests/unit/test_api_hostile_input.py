"""What a hostile API client can send: non-finite numbers, deep JSON, regular
expressions that backtrack, unchecked flavor ids, and requests on a full
disk. Each test here failed before the fix it is named after (issue 16)."""

from __future__ import annotations

import errno
import json
import sqlite3
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import records
from tests.unit.test_api import TOKEN, Api
from vmops import config
from vmops.api import server
from vmops.api.server import MAX_JSON_DEPTH, decode_json, json_depth
from vmops.cli.main import build_parser
from vmops.errors import ConfigError, Invalid, StorageFull, storage_full
from vmops.store import Flavor, Image, Keypair


def _post_raw(api: Api, path: str, body: bytes) -> Any:
    return api.raw("POST", path, body, {"Content-Type": "application/json",
                                        "X-Auth-Token": TOKEN})


# -- non-finite numbers (defect 4) ------------------------------------------------
@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_prune_refuses_non_finite_ages_and_removes_nothing(api: Api, number: bytes) -> None:
    api.store.add_image(Image(id=str(uuidlib.uuid4()), name="old", status="active"))
    answer = _post_raw(api, "/v2.1/images/prune", b'{"older_than": ' + number + b"}")
    assert answer.status == 400, answer.body
    assert "old" in [i.name for i in api.store.images()]


def test_stop_timeout_and_wait_refuse_non_finite_numbers(api: Api) -> None:
    inst = api.add_instance("web1")
    answer = _post_raw(api, f"/v2.1/servers/{inst.id}/action",
                       b'{"os-stop": {"vmops:timeout": NaN}}')
    assert answer.status == 400
    answer = api.post(f"/v2.1/servers/{inst.id}/action?vmops:wait=nan", {"pause": None})
    assert answer.status == 400


@pytest.mark.parametrize("argv", [
    ["image", "prune", "--older-than", "nan"],
    ["image", "prune", "--older-than", "inf"],
    ["image", "prune", "--older-than", "-1"],
    ["stop", "web1", "--timeout", "nan"],
])
def test_cli_refuses_non_finite_seconds(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)


def test_settings_refuse_non_finite_numbers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dynamic_memory_ratio"):
        config.load(tmp_path, env={"VMOPS_DYNAMIC_MEMORY_RATIO": "nan"})


# -- deep JSON (defect 5) and other unbounded input ---------------------------------
def test_deeply_nested_json_is_400_not_500(api: Api) -> None:
    for body in (b"[" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        answer = _post_raw(api, "/v2.1/servers", body)
        assert answer.status == 400
        assert "nests deeper" in answer.fault()[1]


def test_json_depth_skips_strings_and_escapes() -> None:
    tricky = {"name": "[" * 500 + '\\"[{' * 100, "list": [[[1]]]}
    body = json.dumps(tricky).encode()
    assert json_depth(body) == 4  # the object, then three lists
    assert decode_json(body) == tricky
    with pytest.raises(Invalid):
        decode_json(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))


@pytest.mark.parametrize("query", ["limit=%C2%B2", "limit=1" + "0" * 5000, "marker=x&limit=-1"])
def test_counts_in_the_query_are_ascii_digits(api: Api, query: str) -> None:
    assert api.get(f"/v2.1/servers?{query}").status == 400


def test_image_service_limit_in_other_digits_is_400(api: Api) -> None:
    assert api.get("/image/v2/images?limit=%C2%B2").status == 400


def test_content_length_in_other_digits_is_400(api: Api) -> None:
    answer = api.raw("POST", "/v2.1/images/prune", b"{}",
                     {"X-Auth-Token": TOKEN, "Content-Length": "²"})
    assert answer.status == 400


def test_console_length_as_odd_strings_is_400(api: Api) -> None:
    inst = api.add_instance("web1")
    for length in ("²", "--1", "1" * 20):
        answer = api.post(f"/v2.1/servers/{inst.id}/action",
                          {"os-getConsoleOutput": {"length": length}})
        assert answer.status == 400, length


# -- the name filter (defect 6) -----------------------------------------------------
def test_name_filter_is_re2_linear_and_keeps_regex_semantics(api: Api) -> None:
    api.add_instance("a" * 28 + "-z")
    api.add_instance("web1")
    # Exponential for a backtracking engine: seconds on 30 characters.
    assert api.get("/v2.1/servers?name=%5Ea%7B3%7D(a%2B)%2B%24").body["servers"] == []
    names = [s["name"] for s in api.get("/v2.1/servers?name=%5Ewe.%5B0-9%5D").body["servers"]]
    assert names == ["web1"]


@pytest.mark.parametrize("pattern", ["(a)%5C1", "(%3F%3Da)", "a%7B2000%7D", "(", "x" * 256])
def test_name_filters_re2_cannot_run_are_400(api: Api, pattern: str) -> None:
    answer = api.get(f"/v2.1/servers?name={pattern}")
    assert answer.status == 400
    assert "name filter" in answer.fault()[1]


# -- flavor ids (defect 9) ---------------------------------------------------------
FLAVOR = {"name": "c1", "ram": 256, "vcpus": 1, "disk": 1}


@pytest.mark.parametrize("flavor_id", ["../../x", "a/b", "a\x00b", "a\nb", "x\n", "x" * 5000,
                                       "<x>", "a&b", "", " x"])
def test_bad_flavor_ids_are_400_and_create_nothing(api: Api, flavor_id: str) -> None:
    before = len(api.store.flavors())
    answer = api.post("/v2.1/flavors", {"flavor": {**FLAVOR, "id": flavor_id}})
    assert answer.status == 400, answer.body
    assert len(api.store.flavors()) == before


@pytest.mark.parametrize("changes", [{"id": "m1.tiny"}, {"name": "1"}, {"id": "2"},
                                     {"name": "m1.small"}])
def test_flavor_ids_and_names_never_shadow_each_other(api: Api, changes: dict[str, str]) -> None:
    answer = api.post("/v2.1/flavors", {"flavor": {**FLAVOR, **changes}})
    assert answer.status == 409, answer.body
    shown = api.get("/v2.1/flavors/m1.tiny", headers={"X-Vmops-Extra": "1"}).body["flavor"]
    assert (shown["id"], shown["vmops:builtin"]) == ("1", True)


def test_names_of_the_form_of_an_id_are_refused(api: Api) -> None:
    answer = api.post("/v2.1/flavors", {"flavor": {**FLAVOR, "name": str(uuidlib.uuid4())}})
    assert answer.status == 400
    answer = api.post("/v2.1/os-keypairs", {"keypair": {
        "name": "k1\n", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmS x"}})
    assert answer.status == 400


# -- a full disk (defect 10) -------------------------------------------------------
def _fill_database(api: Api) -> None:
    """Make the store's database full as SQLite sees it: no page may be
    added (its own limit: the same error, SQLITE_FULL, a full file system
    gives), and the pages of the flavors, keypairs and instances are full."""
    db = api.store._db  # noqa: SLF001 - the test needs the real connection
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    adders: list[Callable[[int], Any]] = [
        lambda i: api.store.add_flavor(Flavor(f"f{i}", f"fill{i}", 16, 1, 1)),
        lambda i: api.store.add_keypair(Keypair(f"fill{i}", "ssh-ed25519 AAAA", "00")),
        lambda i: api.store.add_instance(records.instance(
            f"fill{i}", id=f"fill{i}", vm_state="error", power_state="nostate")),
    ]
    for add in adders:
        with pytest.raises(sqlite3.OperationalError) as raised:
            for i in range(100_000):
                add(i)
        assert raised.value.sqlite_errorcode == sqlite3.SQLITE_FULL


def test_full_disk_answers_507_naming_what_is_full(api: Api) -> None:
    _fill_database(api)
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/v2.1/flavors", {"flavor": FLAVOR}),
        ("/v2.1/os-keypairs", {"keypair": {"name": "k1", "public_key": "ssh-ed25519 "
                                           "AAAAC3NzaC1lZDI1NTE5AAAAILhE/Js2CulLK1ww4aieoN8RmA8"
                                           "eQUrJs/5Q17XzDxXB x"}}),
        ("/v2.1/servers", {"server": {"name": "web9", "imageRef": "tiny",
                                      "flavorRef": "m1.tiny"}}),
    ]
    for path, body in requests:
        answer = api.post(path, body)
        assert answer.status == 507, (path, answer.body)
        name, message = answer.fault()
        assert name == "insufficientStorage"
        assert "vmops database" in message


def test_destroy_works_on_a_full_disk(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    inst = api.add_instance("web1")
    full = _sqlite_full_error()
    real_update = api.store.update_instance

    def update_on_full_disk(*args: Any, **changes: Any) -> Any:
        if changes.get("task_state") == "deleting":
            raise full
        return real_update(*args, **changes)

    monkeypatch.setattr(api.store, "update_instance", update_on_full_disk)
    assert api.call("DELETE", f"/v2.1/servers/{inst.id}").status == 204
    assert api.get(f"/v2.1/servers/{inst.id}").status == 404
    assert not api.hv.exists(inst.id)


def _sqlite_full_error() -> sqlite3.OperationalError:
    db = sqlite3.connect(":memory:")
    db.execute("PRAGMA max_page_count = 2")
    db.execute("CREATE TABLE t (x)")
    try:
        db.execute("INSERT INTO t VALUES (zeroblob(100000))")
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        db.close()
    raise AssertionError("SQLite did not refuse")


def test_storage_full_from_error_codes_not_text() -> None:
    full = storage_full(OSError(errno.ENOSPC, "No space left on device", "/var/lib/vmops/x"))
    assert isinstance(full, StorageFull) and full.http_status == 507
    assert "/var/lib/vmops/x" in full.message
    assert storage_full(OSError(errno.EACCES, "database or disk is full")) is None
    assert isinstance(storage_full(_sqlite_full_error()), StorageFull)
    assert storage_full(sqlite3.OperationalError("database or disk is full")) is None


# -- accept errors (defect 7; the limits themselves: integration/test_api_connections) --
def test_accept_out_of_descriptors_pauses_longer_each_time(tmp_path: Path) -> None:
    servers = server.serve(server.Router(), tmp_path / "s.sock")
    unix = servers[0]
    pauses: list[float] = []

    def no_descriptors() -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    unix.accept = no_descriptors  # type: ignore[method-assign]
    unix.pause_accepting = pauses.append  # type: ignore[method-assign,assignment]
    try:
        for _ in range(3):
            with pytest.raises(OSError):
                unix.get_request()
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()
    assert len(pauses) == 3 and 0 < pauses[0] < pauses[1] < pauses[2]
