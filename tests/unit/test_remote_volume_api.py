"""vmops:remote through the volume service (fake hypervisor), against a real
qemu-nbd on loopback: the answer's shape is the OpenAPI document's, the
CHAP password never comes back, and bad combinations are refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.targets import NbdExport, nbd_export
from tests.unit.test_api import EXTRA, Api

V = "/volume/v3"


@pytest.fixture
def nbd(tmp_path: Path) -> Iterator[NbdExport]:
    with nbd_export(tmp_path, size_mib=16) as export:
        yield export


def test_a_remote_volume_is_registered_and_forgotten(api: Api, nbd: NbdExport) -> None:
    answer = api.post(f"{V}/volumes", {"volume": {"name": "exp",
                                                  "vmops:remote": {"url": nbd.url}}})
    assert answer.status == 202, answer.body
    assert answer.body["volume"]["status"] == "available"
    shown = api.get(f"{V}/volumes/exp", headers=EXTRA).body["volume"]
    assert shown["size"] == 1 and shown["vmops:remote"] == {
        "protocol": "nbd", "url": nbd.url, "chap_user": None, "secret_uuid": None}
    assert "vmops:remote" not in api.get(f"{V}/volumes/exp").body["volume"]
    assert api.call("DELETE", f"{V}/volumes/exp").status == 202
    assert api.get(f"{V}/volumes").body["volumes"] == []
    assert nbd.image.stat().st_size == 16 << 20


@pytest.mark.parametrize(("remote", "extra", "reason"), [
    ({"url": "nbd://127.0.0.1:1/x"}, {"size": 1}, "size does not go with vmops:remote"),
    ({"url": "nbd://127.0.0.1/x", "chap_user": "u", "chap_secret": "s"}, {},
     "for iSCSI volumes only"),
    ({"url": "nbd://127.0.0.1/x", "port": 1}, {}, "port"),
    ({}, {}, "url"),
])
def test_bad_remote_requests_are_refused(api: Api, remote: dict[str, object],
                                         extra: dict[str, object], reason: str) -> None:
    answer = api.post(f"{V}/volumes", {"volume": {"name": "x", "vmops:remote": remote,
                                                  **extra}})
    assert answer.status == 400 and reason in str(answer.body), answer.body
    assert api.get(f"{V}/volumes").body["volumes"] == []


def test_only_an_admin_registers_a_remote_volume(tmp_path: Path) -> None:
    """Registering makes qemu-img on the host connect wherever the URL says
    (any address, any UNIX socket): a member is refused before it runs."""
    from tests.unit.test_api import start_api
    from tests.unit.test_api_nova_extras import P1, _Tokens
    from vmops.volumes.records import VolumeRecords

    service, servers = start_api(tmp_path, authenticator=_Tokens())
    try:
        for url in ("nbd://127.0.0.1:1/x", "nbd+unix:///x?socket=/run/libvirt/libvirt-sock"):
            answer = service.call("POST", f"{V}/volumes",
                                  {"volume": {"name": "x", "vmops:remote": {"url": url}}},
                                  token=P1)
            assert answer.status == 403 and "admins only" in str(answer.body), answer.body
            assert "qemu-img" not in str(answer.body)
        assert VolumeRecords(service.store).all() == []
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()
        service.store.close()
