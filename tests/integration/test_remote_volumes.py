"""Remote volumes against real targets on loopback (qemu-nbd, a private
tgtd; tests/targets.py), on the fake hypervisor: registration reads the
size from the target, and every bad input or unreachable target is refused
with the target's reason, leaving no record and no secret. What a guest
sees of them: tests/functional/test_volumes.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_volumes import _spawn
from tests.integration.test_volumes import env as env  # noqa: F401 - the fixture
from tests.targets import IscsiTarget, NbdExport, free_port, iscsi_target, nbd_export
from vmops.errors import Conflict, Invalid, VolumeNotFound
from vmops.hypervisor.base import NetworkSource
from vmops.hypervisor.fake import FakeHypervisor
from vmops.volumes import remote
from vmops.volumes.manager import SECRET_USAGE_PREFIX, Volumes
from vmops.volumes.records import VolumeStatus

pytestmark = pytest.mark.integration
MIB = 1 << 20


@pytest.fixture(scope="module")
def nbd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NbdExport]:
    with nbd_export(tmp_path_factory.mktemp("nbd"), size_mib=64) as export:
        yield export


@pytest.fixture(scope="module")
def iscsi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IscsiTarget]:
    with iscsi_target(tmp_path_factory.mktemp("iscsi"), size_mib=48) as target:
        yield target


def _nothing_left(env: dict[str, Any]) -> None:
    hv: FakeHypervisor = env["hv"]
    assert env["volumes"].volumes() == [] and hv.secrets() == {}


def test_an_nbd_export_is_registered_with_the_targets_size(env: dict[str, Any],
                                                            nbd: NbdExport) -> None:
    vols: Volumes = env["volumes"]
    volume = vols.register_remote("shared", nbd.url)
    assert (volume.status, volume.protocol, volume.format) == ("available", "nbd", "raw")
    assert (volume.remote_host, volume.remote_port, volume.remote_export) == (
        "127.0.0.1", nbd.port, nbd.export)
    assert volume.path == nbd.url and volume.size_gb == 1  # 64 MiB, rounded up to 1 GiB
    assert env["hv"].secrets() == {}
    vols.delete("shared")  # forgets it; the export and its file stay
    assert nbd.image.stat().st_size == 64 * MIB and nbd.proc.poll() is None
    _nothing_left(env)


def test_an_iscsi_lun_with_chap_keeps_the_password_in_a_secret_only(
        env: dict[str, Any], iscsi: IscsiTarget) -> None:
    vols: Volumes = env["volumes"]
    hv: FakeHypervisor = env["hv"]
    volume = vols.register_remote("lun1", iscsi.url(1), chap_user=iscsi.chap_user,
                                  chap_secret=iscsi.chap_secret.encode())
    assert (volume.protocol, volume.remote_export, volume.remote_lun) == ("iscsi", iscsi.iqn, 1)
    assert volume.chap_user == iscsi.chap_user and volume.path == iscsi.url(1)
    assert hv.secret_values[volume.secret_uuid] == (SECRET_USAGE_PREFIX + volume.id,
                                                    iscsi.chap_secret.encode())
    db = Path(env["settings"].db_path).read_bytes()
    assert iscsi.chap_secret.encode() not in db  # (the WAL too: read through the store)
    rows = env["store"].query("SELECT * FROM volumes")
    assert all(iscsi.chap_secret not in str(v) for r in rows for v in tuple(r))
    # Attached, the disk names the secret by uuid; the password is nowhere in the spec.
    inst = _spawn(env)
    vols.attach("lun1", inst.name)
    disk = next(d for d in hv.spec_of(inst.id).disks if d.target == "vdb")
    assert disk.network is not None and disk.network.secret_uuid == volume.secret_uuid
    assert iscsi.chap_secret not in repr(hv.spec_of(inst.id))
    assert hv.disk_targets(inst.id)["vdb"] == volume.path
    vols.detach("lun1", inst.name)
    vols.delete("lun1")
    assert hv.secrets() == {}


@pytest.mark.parametrize(("case", "reason"), [
    ("no CHAP", "Authentication failure"),
    ("wrong secret", "Authentication failure"),
    ("wrong LUN", "LOGICAL_UNIT_NOT_SUPPORTED"),
    ("wrong IQN", "Target not found"),
    ("unreachable portal", "cannot open iscsi://127.0.0.1:"),
])
def test_a_bad_iscsi_registration_is_refused_leaving_nothing(
        env: dict[str, Any], iscsi: IscsiTarget, case: str, reason: str) -> None:
    secret: bytes | None
    url, user, secret = iscsi.url(1), iscsi.chap_user, iscsi.chap_secret.encode()
    if case == "no CHAP":
        user, secret = "", None
    elif case == "wrong secret":
        secret = b"not-the-secret"
    elif case == "wrong LUN":
        url = iscsi.url(7)
    elif case == "wrong IQN":
        url = url.replace(iscsi.iqn, iscsi.iqn + "-other")
    else:
        url = url.replace(f":{iscsi.port}/", f":{free_port()}/")
    with pytest.raises(Invalid, match=reason):
        env["volumes"].register_remote("bad", url, chap_user=user, chap_secret=secret)
    _nothing_left(env)


@pytest.mark.parametrize(("url", "reason"), [
    ("nbd://127.0.0.1:{port}/nope", "export 'nope' not present"),
    ("nbd://127.0.0.1:{free}/data", "cannot open nbd://127.0.0.1:"),
    ("nbd+unix:///data?socket=/nonexistent/nbd.sock", "cannot open nbd\\+unix"),
    ("nbd://127.0.0.1:99999/data", "port '99999'"),
    ("nbd://bad host/data", "host 'bad host'"),
    ("nbd://127.0.0.1/a,b", "export name 'a,b'"),
    ("iscsi://127.0.0.1/iqn.2026-12.dev.vmops:x/lun", "LUN 'lun'"),
    ("iscsi://127.0.0.1/not-an-iqn/1", "iqn.YYYY-MM"),
    ("iscsi://u%40:pw@127.0.0.1/iqn.2026-12.dev.vmops:x/1", "carries no user or password"),
    ("http://127.0.0.1/x", "iSCSI URL"),
])
def test_a_bad_url_or_export_is_refused_leaving_nothing(
        env: dict[str, Any], nbd: NbdExport, url: str, reason: str) -> None:
    with pytest.raises(Invalid, match=reason):
        env["volumes"].register_remote("bad", url.format(port=nbd.port, free=free_port()))
    _nothing_left(env)


def test_chap_goes_with_iscsi_only_and_needs_both_halves(env: dict[str, Any],
                                                         nbd: NbdExport,
                                                         iscsi: IscsiTarget) -> None:
    vols: Volumes = env["volumes"]
    with pytest.raises(Invalid, match="for iSCSI volumes only"):
        vols.register_remote("x", nbd.url, chap_user="u", chap_secret=b"s")
    with pytest.raises(Invalid, match="needs both a user"):
        vols.register_remote("x", iscsi.url(1), chap_secret=b"s")
    _nothing_left(env)


def test_a_remote_volume_is_not_extended(env: dict[str, Any], nbd: NbdExport) -> None:
    vols: Volumes = env["volumes"]
    vols.register_remote("shared", nbd.url)
    with pytest.raises(Invalid, match="is remote"):
        vols.extend("shared", 5)
    assert vols.volume("shared").size_gb == 1
    vols.delete("shared")


def test_a_restart_forgets_a_secret_no_volume_names(env: dict[str, Any]) -> None:
    """A registration killed after its secret was defined, before the record."""
    hv: FakeHypervisor = env["hv"]
    orphan = hv.define_secret(SECRET_USAGE_PREFIX + "gone", b"pw")
    other = hv.define_secret("not-vmops", b"pw")
    env["volumes"].reconcile()
    assert orphan not in hv.secrets() and other in hv.secrets()


def test_a_remote_volume_in_deleting_is_forgotten_at_start(env: dict[str, Any],
                                                           iscsi: IscsiTarget) -> None:
    vols: Volumes = env["volumes"]
    volume = vols.register_remote("lun1", iscsi.url(1), chap_user=iscsi.chap_user,
                                  chap_secret=iscsi.chap_secret.encode())
    vols.records.update(volume.id, status=VolumeStatus.DELETING)
    vols.reconcile()
    _nothing_left(env)
    assert iscsi.lun_image.stat().st_size == 48 * MIB


def test_a_libvirt_driver_without_secrets_has_none_to_forget() -> None:
    """test:///default has no secret driver: a start's look for secrets no
    volume names finds none instead of failing."""
    from vmops.hypervisor.base import Accel
    from vmops.hypervisor.libvirt.driver import LibvirtHypervisor

    hv = LibvirtHypervisor("test:///default", Accel.TCG)
    hv.connect()
    try:
        assert hv.secrets() == {}
    finally:
        hv.close()


def test_a_target_is_one_volume_only(env: dict[str, Any], nbd: NbdExport) -> None:
    vols: Volumes = env["volumes"]
    vols.register_remote("shared", nbd.url)
    with pytest.raises(Conflict, match="is volume 'shared' already"):
        vols.register_remote("again", nbd.url)
    assert [v.name for v in vols.volumes()] == ["shared"]


def test_an_attach_killed_after_libvirts_call_ends_in_use_at_start(
        env: dict[str, Any], nbd: NbdExport, iscsi: IscsiTarget) -> None:
    """The disk is in the domain, the record still says attaching: the
    start finds the remote disk by its URL and records it in-use; one
    whose disk never got in is released."""
    from vmops.volumes.records import Attachment, disk_of

    vols: Volumes = env["volumes"]
    inst = _spawn(env)
    volume = vols.register_remote("shared", nbd.url)
    other = vols.register_remote("other", iscsi.url(1), chap_user=iscsi.chap_user,
                                 chap_secret=iscsi.chap_secret.encode())
    for vol, device in ((volume, "vdb"), (other, "vdc")):
        vols.records.claim(Attachment(f"a-{device}", vol.id, inst.id, device), inst.name)
    env["hv"].attach_disk(inst.id, disk_of(volume, "vdb"))  # then the service died
    vols.reconcile()
    assert vols.volume("shared").status == VolumeStatus.IN_USE
    assert vols.volume("other").status == VolumeStatus.AVAILABLE
    assert env["hv"].disk_targets(inst.id)["vdb"] == nbd.url


def test_an_iscsi_target_that_dies_puts_its_attached_volume_in_error_until_it_answers(
        env: dict[str, Any], nbd: NbdExport, tmp_path: Path) -> None:
    """The target watch (Volumes.check_targets) against a real tgtd killed
    and started again: silent for volume_target_timeout, the attached LUN's
    volume goes to error naming the target and why; answering again, it is
    in-use. An NBD volume (QEMU reports its errors itself) is not looked at."""
    vols: Volumes = env["volumes"]
    timeout = env["settings"].volume_target_timeout
    with iscsi_target(tmp_path, size_mib=8, chap_user="") as target:
        vols.register_remote("lun", target.url(1))
        vols.register_remote("exp", nbd.url)
        inst = _spawn(env)
        vols.attach("lun", inst.name)
        vols.attach("exp", inst.name)
        vols.check_targets(now=1000.0)  # it answers
        assert vols.volume("lun").status == VolumeStatus.IN_USE

        target.kill()
        nbd.stop()
        vols.check_targets(now=2000.0)  # silent since now: not yet
        assert vols.volume("lun").status == VolumeStatus.IN_USE
        vols.check_targets(now=2000.0 + timeout)
        lost = vols.volume("lun")
        assert lost.status == VolumeStatus.ERROR, lost
        assert lost.fault.startswith(f"iSCSI target not answering: {target.url(1)} has not "
                                     f"accepted a connection for {timeout} s (Connection "
                                     "refused); the guest's reads and writes on disk vdb "
                                     "wait for it"), lost.fault
        assert vols.volume("exp").status == VolumeStatus.IN_USE  # not the watch's
        assert vols.attachment_of(lost.id) is not None  # still attached

        target.restart()
        nbd.restart()
        vols.check_targets(now=2000.0 + 2 * timeout)
        back = vols.volume("lun")
        assert (back.status, back.fault) == (VolumeStatus.IN_USE, "")

        # A stopped instance's volume is not looked at: its QEMU is gone,
        # and its next start opens the disk afresh.
        target.kill()
        env["compute"].stop(inst.name)
        vols.check_targets(now=2500.0)
        vols.check_targets(now=2500.0 + timeout)
        assert vols.volume("lun").status == VolumeStatus.IN_USE
        target.restart()
        env["compute"].start(inst.name)

        # Silent again, then detached before the timeout: nothing to put in
        # error, and a volume in error for an I/O error QEMU reported is not
        # cleared by its portal answering.
        target.kill()
        vols.check_targets(now=3000.0)
        vols.detach("lun", inst.name)
        vols.check_targets(now=3000.0 + timeout)
        assert vols.volume("lun").status == VolumeStatus.AVAILABLE
        target.restart()
        vols.attach("lun", inst.name)
        vols.records.update(vols.volume("lun").id, status=VolumeStatus.ERROR,
                            fault="QEMU could not read or write disk vdc: an I/O error")
        vols.check_targets(now=4000.0)
        assert vols.volume("lun").status == VolumeStatus.ERROR
        vols.detach("lun", inst.name)
        vols.detach("exp", inst.name)
        vols.delete("lun")
        vols.delete("exp")
    _nothing_left(env)


def test_a_volume_detached_and_deleted_during_a_watch_round_does_not_stop_it(
        env: dict[str, Any], nbd: NbdExport, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A volume deleted between the watch's list of attachments and its
    read of the volume (a detach and delete at that moment) is skipped:
    the round goes on to the other volumes (it raised VolumeNotFound, the
    round was lost with a traceback in the log, and the lost target after
    it was not looked at)."""
    vols: Volumes = env["volumes"]
    timeout = env["settings"].volume_target_timeout
    with iscsi_target(tmp_path, size_mib=8, chap_user="") as target:
        gone = vols.register_remote("gone", nbd.url)
        vols.register_remote("lun", target.url(1))
        inst = _spawn(env)
        vols.attach("gone", inst.name)
        vols.attach("lun", inst.name)
        read = vols.records.get

        def deleted_meanwhile(ref: str, project_id: str | None = None) -> Any:
            if ref == gone.id:
                raise VolumeNotFound(volume=ref)
            return read(ref, project_id)

        monkeypatch.setattr(vols.records, "get", deleted_meanwhile)
        target.kill()
        vols.check_targets(now=1000.0)
        vols.check_targets(now=1000.0 + timeout)
        monkeypatch.undo()
        assert vols.volume("lun").status == VolumeStatus.ERROR
        target.restart()
        vols.check_targets(now=2000.0)
        assert vols.volume("lun").status == VolumeStatus.IN_USE
        for name in ("gone", "lun"):
            vols.detach(name, inst.name)
            vols.delete(name)
    _nothing_left(env)


def test_one_target_registered_twice_at_once_is_one_volume(
        env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two registrations of one LUN at the same moment (two admins, a
    retried request): the target's probe takes a while, and both passed the
    check that no volume has it yet, made two volumes of one disk, and two
    guests could write it at once. Checked again under the lock that
    records it, the second is refused with nothing left (no record, no
    secret); the project's volume quota is checked under the same lock."""
    vols: Volumes = env["volumes"]
    url = "iscsi://127.0.0.1:3260/iqn.2026-12.dev.vmops.test:once/1"
    probing, release = threading.Event(), threading.Event()
    first = [True]

    def slow_probe(source: NetworkSource, secret: bytes | None) -> int:
        if first.pop() if first else False:
            probing.set()
            assert release.wait(30)
        return 8 << 20

    monkeypatch.setattr(remote, "probe", slow_probe)
    outcome: list[BaseException | str] = []

    def register_first() -> None:
        try:
            outcome.append(vols.register_remote("first", url, chap_user="u",
                                                chap_secret=b"first-password").name)
        except BaseException as exc:  # noqa: BLE001 - looked at below
            outcome.append(exc)

    thread = threading.Thread(target=register_first)
    thread.start()
    try:
        assert probing.wait(30)
        second = vols.register_remote("second", url, chap_user="u",
                                      chap_secret=b"second-password")
    finally:
        release.set()
        thread.join(30)
    assert [v.name for v in vols.volumes()] == ["second"]
    assert isinstance(outcome[0], Conflict) and "is volume 'second' already" in str(outcome[0])
    hv: FakeHypervisor = env["hv"]
    assert list(hv.secrets()) == [second.secret_uuid]


def test_the_portal_probe_says_why(tmp_path: Path) -> None:
    assert remote.portal_silence("127.0.0.1", free_port(), 2.0) == "Connection refused"
    with iscsi_target(tmp_path, size_mib=8, chap_user="") as target:
        assert remote.portal_silence("127.0.0.1", target.port, 2.0) == ""
