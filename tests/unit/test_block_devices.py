"""Boot from volume through the compute API, on the fake hypervisor: Nova's
block_device_mapping_v2 as OpenStackClient sends it, the 400s for bad
mappings (nothing made), and a volume-backed server's view (image "",
os-extended-volumes:volumes_attached with delete_on_termination from 2.3).
The spawn itself: tests/integration/test_boot_volume.py; a real guest:
tests/functional/test_boot_volume.py."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_api import IMAGE_ID, Api
from vmops.api import block_devices
from vmops.compute.boot_volume import BootVolume, claim
from vmops.compute.server_volumes import ExtraVolume
from vmops.errors import Invalid
from vmops.volumes.manager import Volumes
from vmops.volumes.records import VolumeRecords

VOLUME_ID = "0f3a7e0e-1c2b-4d5e-8f90-123456789abc"


# -- the mappings OpenStackClient sends (openstackclient/compute/v2/server.py) -------
def test_the_clients_mappings() -> None:
    image_local = [{"uuid": IMAGE_ID, "boot_index": 0, "source_type": "image",
                    "destination_type": "local", "delete_on_termination": True}]
    assert block_devices.root_of(image_local, "", False) == (IMAGE_ID, None)
    boot_from_volume = [{"uuid": IMAGE_ID, "boot_index": 0, "source_type": "image",
                         "destination_type": "volume", "volume_size": 2,
                         "delete_on_termination": False}]
    assert block_devices.root_of(boot_from_volume, "", False) == \
        (IMAGE_ID, BootVolume(size_gb=2))
    volume = [{"uuid": VOLUME_ID, "boot_index": 0, "source_type": "volume",
               "destination_type": "volume"}]
    assert block_devices.root_of(volume, "", False) == ("", BootVolume(volume=VOLUME_ID))
    # Nova's loose forms: digits as strings, string booleans, destination defaults.
    loose = [{"uuid": IMAGE_ID, "boot_index": "0", "source_type": "image",
              "destination_type": "volume", "volume_size": "3",
              "delete_on_termination": "true"}]
    assert block_devices.root_of(loose, IMAGE_ID, False) == \
        (IMAGE_ID, BootVolume(size_gb=3, delete_on_termination=True))
    assert block_devices.root_of([{"uuid": VOLUME_ID, "boot_index": 0,
                                   "source_type": "volume"}], None, True)[1] == \
        BootVolume(volume=VOLUME_ID)


BAD_MAPPINGS: list[tuple[Any, str]] = [
    ("not a list", "non-empty list"),
    (["x"], "must be an object"),
    ([{"uuid": VOLUME_ID, "boot_index": 0, "source_type": "volume", "size": 1}],
     "unknown field"),
    ([{"uuid": VOLUME_ID, "boot_index": 0, "source_type": "disk"}], "source_type"),
    ([{"uuid": VOLUME_ID, "boot_index": 0, "source_type": "volume",
       "destination_type": "nfs"}], "destination_type"),
    ([{"uuid": VOLUME_ID, "boot_index": 0, "source_type": "volume",
       "destination_type": "local"}], "destination_type is volume"),
    ([{"uuid": "a/b", "boot_index": 0, "source_type": "volume"}], "uuid"),
    ([{"boot_index": 0, "source_type": "volume"}], "uuid"),
    ([{"uuid": VOLUME_ID, "boot_index": "first", "source_type": "volume"}], "boot_index"),
    ([{"uuid": VOLUME_ID, "boot_index": 1, "source_type": "volume"}], "Boot sequence"),
    ([{"uuid": VOLUME_ID, "source_type": "volume"}], "Boot sequence"),
    ([{"uuid": IMAGE_ID, "boot_index": 0, "source_type": "image",
       "destination_type": "volume"}], "non-zero size"),
    ([{"uuid": IMAGE_ID, "boot_index": 0, "source_type": "image",
       "destination_type": "volume", "volume_size": 0}], "non-zero size"),
    ([{"uuid": IMAGE_ID, "boot_index": 0, "source_type": "image",
       "destination_type": "volume", "volume_size": -1}], "volume_size"),
    ([{"uuid": IMAGE_ID, "boot_index": 0, "source_type": "image",
       "destination_type": "volume", "volume_size": 1.5}], "volume_size"),
    ([{"uuid": IMAGE_ID, "boot_index": 0, "source_type": "image",
       "destination_type": "volume", "volume_size": 1, "delete_on_termination": "maybe"}],
     "boolean"),
    ([{"uuid": IMAGE_ID, "boot_index": 0, "source_type": "image",
       "destination_type": "local", "delete_on_termination": False}], "always deleted"),
    ([{"uuid": VOLUME_ID, "boot_index": 0, "source_type": "snapshot",
       "destination_type": "volume"}], "no volume snapshots"),
    ([{"boot_index": 0, "source_type": "blank", "destination_type": "local"}], "blank"),
    ([{"uuid": VOLUME_ID, "boot_index": 0, "source_type": "volume"},
      {"boot_index": -1, "source_type": "blank", "destination_type": "local",
       "guest_format": "swap", "volume_size": 1}], "unknown field"),
    ([{"uuid": VOLUME_ID, "boot_index": 0, "source_type": "volume"},
      {"boot_index": -1, "source_type": "blank", "destination_type": "local",
       "volume_size": 1}], "destination_type local besides the root"),
    ([{"uuid": VOLUME_ID, "boot_index": 0, "source_type": "volume", "device_type": "cdrom"}],
     "disks only"),
    ([{"uuid": VOLUME_ID, "boot_index": 0, "source_type": "volume", "tag": "root"}],
     "unknown field"),  # a tag needs 2.32
]


@pytest.mark.parametrize(("bdms", "words"), BAD_MAPPINGS)
def test_bad_mappings_are_named(bdms: Any, words: str) -> None:
    with pytest.raises(Invalid, match=words):
        block_devices.root_of(bdms, "", False)


def _create(api: Api, bdms: Any, **changes: Any) -> Any:
    server = {"name": "bfv", "flavorRef": "1", "block_device_mapping_v2": bdms, **changes}
    return api.post("/v2.1/servers", {"server": server})


@pytest.mark.parametrize(("bdms", "words"), BAD_MAPPINGS[2:])
def test_bad_mappings_are_400_and_make_nothing(api: Api, bdms: Any, words: str) -> None:
    answer = _create(api, bdms)
    assert answer.status == 400, answer.body
    assert words in answer.fault()[1]
    assert api.store.instances() == [] and VolumeRecords(api.store).all() == []


def test_volumes_that_cannot_boot_are_400(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.compute, "background_actions", False)  # volumes made at once
    volume = Volumes(api.compute).create("boot", 1)
    missing = [{"uuid": VOLUME_ID, "boot_index": 0, "source_type": "volume",
                "destination_type": "volume"}]
    assert _create(api, missing).status == 400
    owner = api.add_instance("owner")
    claim(api.store, volume, owner.id, owner.name)
    taken = [{**missing[0], "uuid": volume.id}]
    answer = _create(api, taken)
    assert answer.status == 400 and "Invalid volume" in answer.fault()[1]
    assert [i.name for i in api.store.instances()] == ["owner"]
    different = [{"uuid": IMAGE_ID, "boot_index": 0, "source_type": "image",
                  "destination_type": "volume", "volume_size": 1}]
    answer = _create(api, different, imageRef="another-image")
    assert answer.status == 400 and "different images" in answer.fault()[1]
    assert _create(api, [], imageRef="").status == 400  # neither an image nor a volume
    # The flavor's memory is still held to the image's min_ram, as Nova's.
    image = api.store.image(IMAGE_ID)
    api.store.update_image(image, extra={**image.extra, "min_ram": "100000"})
    answer = _create(api, different)
    assert answer.status == 400 and "memory is too small" in answer.fault()[1]
    assert [i.name for i in api.store.instances()] == ["owner"]


def test_a_volume_backed_servers_view(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.compute, "background_actions", False)  # volumes made at once
    records = VolumeRecords(api.store)
    vols = Volumes(api.compute)
    root, data = vols.create("root", 1), vols.create("data", 1)
    inst = api.add_instance("bfv")
    claim(api.store, root, inst.id, inst.name)
    records.attached(root.id)
    api.store.update_instance(inst, boot_volume_id=root.id, delete_on_termination=True,
                              image_id="", image_name="", disks=())
    v23 = {"OpenStack-API-Version": "compute 2.3"}
    shown = api.get("/v2.1/servers/bfv", headers=v23).body["server"]
    assert shown["image"] == ""
    assert shown["os-extended-volumes:volumes_attached"] == \
        [{"id": root.id, "delete_on_termination": True}]
    listed = api.get("/v2.1/servers/detail", headers=v23).body["servers"][0]
    assert listed["os-extended-volumes:volumes_attached"] == \
        [{"id": root.id, "delete_on_termination": True}]
    # A volume attached later is in the next list (the record did not change).
    vols.attach("data", inst.id)
    listed = api.get("/v2.1/servers/detail", headers=v23).body["servers"][0]
    assert listed["os-extended-volumes:volumes_attached"] == \
        [{"id": root.id, "delete_on_termination": True},
         {"id": data.id, "delete_on_termination": False}]
    old = api.get("/v2.1/servers/bfv").body["server"]  # 2.1: ids only
    assert old["os-extended-volumes:volumes_attached"] == [{"id": root.id}, {"id": data.id}]
    attachments = f"/v2.1/servers/{inst.id}/os-volume_attachments"
    answer = api.call("DELETE", f"{attachments}/{root.id}")
    assert answer.status == 400
    assert "Cannot detach a root device volume" in answer.fault()[1]
    assert records.attachment_of(root.id) is not None


# -- volumes besides the root (OpenStackClient's --block-device-mapping, --block-device) --
def test_the_clients_extra_volume_mappings() -> None:
    root = {"uuid": IMAGE_ID, "boot_index": 0, "source_type": "image",
            "destination_type": "local", "delete_on_termination": True}
    legacy = {"device_name": "vdb", "uuid": VOLUME_ID, "source_type": "volume",
              "destination_type": "volume", "volume_size": "1",
              "delete_on_termination": "true"}  # --block-device-mapping vdb=VOL:volume:1:true
    blank = {"source_type": "blank", "destination_type": "volume", "volume_size": "2",
             "boot_index": -1}  # --block-device source_type=blank,destination_type=volume,...
    from_image = {"uuid": IMAGE_ID, "source_type": "image", "destination_type": "volume",
                  "volume_size": 3, "boot_index": None, "delete_on_termination": False}
    bdms = [root, legacy, blank, from_image]
    assert block_devices.root_of(bdms, IMAGE_ID, False) == (IMAGE_ID, None)
    assert block_devices.extras_of(bdms, False) == (
        ExtraVolume(volume=VOLUME_ID, delete_on_termination=True),
        ExtraVolume(size_gb=2), ExtraVolume(size_gb=3, image=IMAGE_ID))
    assert block_devices.extras_of([root], False) == ()
    assert block_devices.extras_of(None, False) == ()


@pytest.mark.parametrize(("extra", "words"), [
    ({"source_type": "blank", "destination_type": "volume", "boot_index": -1},
     "non-zero volume_size"),
    ({"uuid": IMAGE_ID, "source_type": "image", "destination_type": "volume",
      "boot_index": -1}, "non-zero volume_size"),
    ({"uuid": VOLUME_ID, "source_type": "snapshot", "destination_type": "volume",
      "boot_index": -1}, "no volume snapshots"),
    ({"uuid": IMAGE_ID, "source_type": "image", "destination_type": "local",
      "boot_index": -1}, "destination_type local"),
    ({"uuid": VOLUME_ID, "source_type": "volume", "boot_index": 2}, "Boot sequence"),
])
def test_bad_extra_mappings_are_named(extra: dict[str, Any], words: str) -> None:
    root = {"uuid": VOLUME_ID, "boot_index": 0, "source_type": "volume"}
    with pytest.raises(Invalid, match=words):
        block_devices.root_of([root, extra], "", False)


def test_extra_volumes_are_attached_and_one_volume_is_not_given_to_several(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.compute, "background_actions", False)  # volumes made at once
    data = Volumes(api.compute).create("data", 1)
    root = {"uuid": IMAGE_ID, "boot_index": 0, "source_type": "image",
            "destination_type": "local"}
    extra = {"uuid": data.id, "source_type": "volume", "destination_type": "volume"}
    answer = _create(api, [root, extra], imageRef=IMAGE_ID, max_count=2)
    assert answer.status == 400
    assert "Cannot attach one or more volumes to multiple instances" in answer.fault()[1]
    assert api.store.instances() == [] and VolumeRecords(api.store).attachments() == []
