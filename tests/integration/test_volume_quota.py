"""Cinder's volume quota (volumes, gigabytes) on the fake hypervisor with
real files: enforced at volume create and extend, and at server create for
the volumes it would make (a new boot volume, blank or image block device
mappings), each refusal in Cinder's words and leaving nothing made or
claimed. Through the volume API (413): tests/unit/test_volume_api.py."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tests.integration.volume_env import make_env, pool_files
from vmops.compute.boot_volume import BootVolume
from vmops.compute.manager import SpawnRequest
from vmops.compute.server_volumes import ExtraVolume
from vmops.errors import InvalidState, VolumeQuotaExceeded
from vmops.volumes import pool
from vmops.volumes.manager import Volumes
from vmops.volumes.records import VolumeStatus

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    """Every project's defaults: 3 volumes, 4 GiB (Nova's default quota class)."""
    made = make_env(tmp_path, b"VMOPS-QUOTA-IMAGE")
    made["compute"].quotas.update_class("default", {"volumes": 3, "gigabytes": 4})
    return made


def _spawn(env: dict[str, Any], *extras: ExtraVolume, boot: BootVolume | None = None) -> Any:
    return env["compute"].create(SpawnRequest(
        name="web1", image="base", flavor="m1.tiny", extra_volumes=extras, boot_volume=boot,
        project_id="p1"), background=False)


def test_volume_create_and_extend_stay_within_the_quota(env: dict[str, Any]) -> None:
    vols: Volumes = env["volumes"]
    vols.create("a", 1, project_id="p1")
    vols.create("b", 2, project_id="p1")
    with pytest.raises(VolumeQuotaExceeded, match=r"^Requested volume or snapshot exceeds "
                       r"allowed gigabytes quota. Requested 2G, quota is 4G and 3G has been "
                       r"consumed.$"):
        vols.create("c", 2, project_id="p1")
    with pytest.raises(VolumeQuotaExceeded, match="Requested 2G, quota is 4G and 3G"):
        vols.extend("b", 4)
    vols.create("c", 1, project_id="p1")
    with pytest.raises(VolumeQuotaExceeded, match=r"^Maximum number of volumes allowed \(3\) "
                       r"exceeded for quota 'volumes'"):
        vols.create("d", 1, project_id="p1")
    assert sorted(v.name for v in vols.volumes()) == ["a", "b", "c"]
    assert len(pool_files(env)) == 3
    vols.create("other", 4, project_id="p2")  # another project's own quota
    assert VolumeQuotaExceeded.http_status == 413


@pytest.mark.parametrize(("extras", "boot", "words"), [
    ((ExtraVolume(size_gb=3), ExtraVolume(size_gb=1)), None, "Requested 4G, quota is 4G "
     "and 1G has been consumed"),
    ((ExtraVolume(size_gb=1),) * 3, None, r"allowed \(3\) exceeded"),
    ((ExtraVolume(volume="kept"), ExtraVolume(size_gb=1)), BootVolume(size_gb=3),
     "Requested 4G, quota is 4G and 1G"),
])
def test_a_server_create_over_the_volume_quota_makes_nothing(
        env: dict[str, Any], extras: tuple[ExtraVolume, ...], boot: BootVolume | None,
        words: str) -> None:
    """One 1 GiB volume exists; the create asks for more than the rest. An
    existing volume it names counts for nothing (it is there already)."""
    vols: Volumes = env["volumes"]
    kept = vols.create("kept", 1, project_id="p1")
    with pytest.raises(VolumeQuotaExceeded, match=words):
        _spawn(env, *extras, boot=boot)
    assert env["store"].instances() == []
    assert [(v.name, v.status) for v in vols.volumes()] == [("kept", VolumeStatus.AVAILABLE)]
    assert vols.attachment_of(kept.id) is None and len(pool_files(env)) == 1
    # Within the quota: made.
    inst = _spawn(env, ExtraVolume(volume="kept"), ExtraVolume(size_gb=2))
    assert [vols.volume(a.volume_id).size_gb for a in vols.attached_to(inst.id)] == [1, 2]


def test_an_extend_under_way_holds_its_growth_in_the_quota(
        env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The GiB an extend adds count from its check, not from its end: while
    one extend grows its file, a create or another extend that would take
    the project past its quota is refused (both passed, and the project
    ended over its 4 GiB). A refused or finished extend holds nothing."""
    vols: Volumes = env["volumes"]
    vols.create("a", 1, project_id="p1")
    vols.create("b", 1, project_id="p1")
    growing, release = threading.Event(), threading.Event()
    real_extend = pool.extend

    def slow_extend(path: Path, fmt: str, size: int) -> None:
        growing.set()
        assert release.wait(30)
        real_extend(path, fmt, size)

    monkeypatch.setattr(pool, "extend", slow_extend)
    extend = threading.Thread(target=vols.extend, args=("a", 3))  # 1 -> 3 GiB: 4 of 4
    extend.start()
    try:
        assert growing.wait(30)
        with pytest.raises(VolumeQuotaExceeded, match="Requested 1G, quota is 4G and 4G"):
            vols.create("c", 1, project_id="p1")
        with pytest.raises(VolumeQuotaExceeded, match="Requested 1G, quota is 4G and 4G"):
            vols.extend("b", 2)
        # A second extend of the growing volume is refused (it is extending)
        # and does not take the first one's hold away with it.
        env["compute"].quotas.update_class("default", {"gigabytes": 7})
        with pytest.raises(InvalidState):
            vols.extend("a", 4)  # within the quota (4 + 3): refused as extending
        with pytest.raises(VolumeQuotaExceeded, match="Requested 4G, quota is 7G and 4G"):
            vols.create("c", 4, project_id="p1")
        env["compute"].quotas.update_class("default", {"gigabytes": 4})
    finally:
        release.set()
        extend.join(30)
    assert sorted((v.name, v.size_gb) for v in vols.volumes()) == [("a", 3), ("b", 1)]
    monkeypatch.setattr(pool, "extend", real_extend)
    with pytest.raises(VolumeQuotaExceeded, match="Requested 1G, quota is 4G and 4G"):
        vols.extend("b", 2)  # the finished extend's GiB are the volume's now, held once
    vols.delete("b")
    vols.extend("a", 4)  # nothing left held by the refusals
    assert vols.volume("a").size_gb == 4
