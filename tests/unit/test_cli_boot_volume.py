"""vmops spawn's root disk options: what the CLI sends for an image, a new
boot volume and an existing one (OpenStackClient's block device mappings),
and the combinations it refuses before asking the service."""

from __future__ import annotations

from typing import Any

import pytest

from vmops.cli.main import _root_disk, build_parser
from vmops.errors import VmopsError

SPAWN = ["spawn", "web1", "--flavor", "m1.tiny"]


class Volumes:
    """A client that knows one volume, by name and id."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def get(self, path: str) -> dict[str, Any]:
        self.asked.append(path)
        return {"volume": {"id": "vol-1", "name": "data"}}


def _root(*extra: str) -> tuple[dict[str, Any], list[str]]:
    client = Volumes()
    body = _root_disk(client, build_parser().parse_args([*SPAWN, *extra]))  # type: ignore[arg-type]
    return body, client.asked


def test_an_image_a_new_volume_and_an_existing_one() -> None:
    assert _root("--image", "tiny") == ({"imageRef": "tiny"}, [])
    assert _root("--image", "tiny", "--boot-volume-size", "2", "--delete-on-termination") == (
        {"block_device_mapping_v2": [{
            "uuid": "tiny", "boot_index": 0, "source_type": "image",
            "destination_type": "volume", "volume_size": 2,
            "delete_on_termination": True}]}, [])
    assert _root("--boot-volume", "data") == (
        {"block_device_mapping_v2": [{
            "uuid": "vol-1", "boot_index": 0, "source_type": "volume",
            "destination_type": "volume", "delete_on_termination": False}]},
        ["/volume/v3/volumes/data"])


@pytest.mark.parametrize(("extra", "words"), [
    ((), "give --image"),
    (("--boot-volume", "data", "--image", "tiny"), "give no --image"),
    (("--boot-volume", "data", "--boot-volume-size", "1"), "give no --image"),
    (("--image", "tiny", "--delete-on-termination"), "a local root disk"),
])
def test_combinations_refused(extra: tuple[str, ...], words: str) -> None:
    with pytest.raises(VmopsError, match=words):
        _root(*extra)


def test_no_start_asks_for_a_server_defined_but_not_booted() -> None:
    from vmops.cli.main import _spawn_body

    def body(*extra: str) -> dict[str, Any]:
        args = build_parser().parse_args([*SPAWN, "--image", "tiny", *extra])
        return _spawn_body(Volumes(), args)  # type: ignore[arg-type]

    assert body("--no-start")["vmops:start"] is False
    assert "vmops:start" not in body()  # the service's default: boot it
