"""Nova's ``_VirtDriverTestCase`` with ``driver_module`` set to vmops' driver
on the fake hypervisor (:mod:`tools.nova_tests.fake_host`).

Nova's suite counts a ``NotImplementedError`` as a pass: its
``catch_notimplementederror`` decorator logs "<driver> does not implement
<method> required for test <test>" through the module's ``LOG`` and
swallows the error. :class:`SwallowRecorder` stands in for that ``LOG``
during each test and records those messages, so the runner can tell a
test that passed for real from one that only hit that path.

Imported first, Nova's test package applies its threading mode (eventlet
monkey patching unless ``OS_NOVA_DISABLE_EVENTLET_PATCHING`` is set).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from functools import cache
from pathlib import Path
from typing import Any

# First: importing Nova's test package applies its threading mode.
from nova.tests.unit.virt import test_virt_drivers

# isort: split
import fixtures
from nova import test

# The hypervisor under the driver: vmops' fake (the default, and the gate)
# or the real libvirt with the test image (scripts/nova-tests --hypervisor).
HYPERVISOR = os.environ.get("VMOPS_NOVA_TESTS_HYPERVISOR", "fake")
DRIVER = {"fake": "tools.nova_tests.fake_host.FakeHostVmopsDriver",
          "libvirt": "tools.nova_tests.libvirt_host.LibvirtHostVmopsDriver"}[HYPERVISOR]
# Seconds a test waits for a (delayed) lifecycle event before it fails: a
# bound for a loaded host, not a measure.
EVENT_WAIT = 60.0
# Seconds a libvirt test waits for what a booting guest prints (TCG, a
# loaded host): a bound, not a measure.
GUEST_WAIT = 300.0
# test id -> the driver methods that raised NotImplementedError in it.
SWALLOWED: dict[str, list[str]] = {}


class SwallowRecorder:
    """The test module's logger, recording catch_notimplementederror's messages."""

    def __init__(self, log: Any, test_id: str) -> None:
        self._log = log
        self._test_id = test_id

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        if "does not implement" in str(msg):
            fields = args[0] if args and isinstance(args[0], dict) else {}
            SWALLOWED.setdefault(self._test_id, []).append(str(fields.get("method", "?")))
        self._log.error(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


@cache
def image_data() -> bytes:
    """The data of every image in Nova's Glance fixture (which serves b''
    for them; vmops' import refuses an empty image): the test image on
    libvirt (its guest boots), else a small empty qcow2."""
    if HYPERVISOR == "libvirt":
        return Path(os.environ["VMOPS_NOVA_TESTS_IMAGE"]).read_bytes()
    with tempfile.TemporaryDirectory(dir=os.environ.get("VMOPS_NOVA_TESTS_TMP")) as tmp:
        path = Path(tmp) / "image.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"],
                       check=True)
        return path.read_bytes()


class VmopsDriverTestCase(test_virt_drivers._VirtDriverTestCase, test.TestCase):
    def setUp(self) -> None:
        self.driver_module = DRIVER
        super().setUp()
        self.useFixture(fixtures.MonkeyPatch(
            "nova.tests.unit.virt.test_virt_drivers.LOG",
            SwallowRecorder(test_virt_drivers.LOG, self.id())))
        for image_id in self.image_service.images:
            self.image_service._imagedata[image_id] = image_data()
        if HYPERVISOR == "libvirt":  # its guests, its lock: for the next test's driver
            self.addCleanup(self.connection.release)


class VmopsAdapterTestCase(test.TestCase):
    """vmops' own checks of its driver, on Nova's objects and fixtures:
    what Nova's suite does not look at (the id vmops records, refusals that
    leave nothing, the states the adapter settles). Run by
    scripts/nova-tests after Nova's suite; every one must pass."""

    def setUp(self) -> None:
        super().setUp()
        from nova.tests import fixtures as nova_fixtures
        from nova.tests.unit import utils as test_utils
        from nova.virt import fake

        from tools.nova_tests.fake_host import FakeHostVmopsDriver

        self.utils = test_utils
        self.glance = self.useFixture(nova_fixtures.GlanceFixture(self))
        for image_id in self.glance.images:
            self.glance._imagedata[image_id] = image_data()
        self.driver = FakeHostVmopsDriver(fake.FakeVirtAPI())
        self.ctxt = test_utils.get_test_admin_context()
        self.instance = test_utils.get_test_instance(obj=True)
        self.image_meta = test_utils.get_test_image_object(None, self.instance)

    def _spawn(self, vifs: int = 1, **kwargs: Any) -> None:
        self.driver.spawn(self.ctxt, self.instance, self.image_meta, [], "pw", {},
                          network_info=self.utils.get_test_network_info(vifs), **kwargs)

    def _leaves_nothing(self) -> None:
        compute = self.driver.compute
        self.assertEqual([], compute.store.instances())
        self.assertEqual([], compute.hv.list_uuids())
        self.assertEqual([], list(compute.settings.instances_dir.iterdir()))

    def test_nova_uuid_is_vmops_id_and_vif_mac_its_mac(self) -> None:
        self._spawn()
        inst = self.driver.compute.instance(self.instance.uuid)
        self.assertEqual((self.instance.uuid, self.instance.name), (inst.id, inst.name))
        mac = self.utils.get_test_network_info(1)[0]["address"]
        self.assertEqual((mac,), inst.macs)
        self.assertEqual([self.instance.uuid], self.driver.compute.hv.list_uuids())

    def test_two_vifs_are_refused_and_leave_nothing(self) -> None:
        from nova import exception

        error = self.assertRaises(exception.InstanceDeployFailure, self._spawn, vifs=2)
        self.assertIn("one NIC; Nova asked for 2", str(error))
        self._leaves_nothing()

    def test_cinder_volumes_vmops_cannot_attach_refuse_the_spawn_and_leave_nothing(
            self) -> None:
        """A spawn whose block device mapping has a volume type other than
        iscsi, or an iSCSI LUN whose target refuses the login (after one
        that was registered): refused, naming why, with nothing left (no
        instance, no vmops volume record, no secret)."""
        from nova import exception

        target = self._iscsi_target()
        good = self._cinder_iscsi(target, "vol-good")
        for bad, why in (({"driver_volume_type": "rbd", "serial": "vol-rbd", "data": {}},
                          "iscsi volumes only"),
                         (self._cinder_iscsi(self._iscsi_target(), "vol-wrong",
                                             auth_password="not-the-password"), "vol-wrong")):
            error = self.assertRaises(
                exception.InstanceDeployFailure, self._spawn,
                block_device_info=_block_device_info((good, 1), (bad, 2)))
            self.assertIn(why, str(error))
            self._leaves_nothing()
            self.assertEqual([], self.driver.volumes.volumes())
            self.assertEqual({}, self.driver.compute.hv.secrets())

    def test_a_spawn_boots_from_a_cinder_volume_with_another_attached(self) -> None:
        """Boot index 0 is the root disk (vda: the LUN, a network disk), the
        other volume is attached after vmops' own disks; destroy forgets
        both in vmops (records, secrets) and leaves the targets' data."""
        root_target, data_target = self._iscsi_target(), self._iscsi_target()
        root = self._cinder_iscsi(root_target, "vol-root")
        data = self._cinder_iscsi(data_target, "vol-data")
        self._spawn(block_device_info=_block_device_info((root, 0), (data, 1)))
        volumes = self.driver.volumes
        root_volume = volumes.volume("cinder-vol-root")
        data_volume = volumes.volume("cinder-vol-data")
        inst = self.driver.compute.instance(self.instance.uuid)
        self.assertEqual(root_volume.id, inst.boot_volume_id)
        disks = self.driver.compute.hv.disk_targets(inst.id)
        self.assertEqual(root_volume.path, disks["vda"])
        data_attachment = volumes.attachment_of(data_volume.id)
        assert data_attachment is not None
        self.assertEqual(data_volume.path, disks[data_attachment.device])
        self.assertEqual(2, len(self.driver.compute.hv.secrets()))
        self.driver.destroy(self.ctxt, self.instance, None)
        self._leaves_nothing()
        self.assertEqual([], volumes.volumes())
        self.assertEqual({}, self.driver.compute.hv.secrets())

    def test_an_image_vmops_refuses_is_unacceptable_and_leaves_nothing(self) -> None:
        from nova import exception

        self.glance._imagedata[self.image_meta.id] = b""
        self.assertRaises(exception.ImageUnacceptable, self._spawn)
        self._leaves_nothing()
        self.assertEqual([], self.driver.compute.store.images())

    def test_power_on_a_running_guest_reboots_it_hard(self) -> None:
        self._spawn()
        domain = self.driver.fake_hypervisor.domains[self.instance.uuid]
        self.driver.power_on(self.ctxt, self.instance, None)
        self.assertEqual(1, domain.resets)

    def test_unpause_and_resume_of_a_running_guest_change_nothing(self) -> None:
        self._spawn()
        hv = self.driver.fake_hypervisor
        calls = len(hv.calls)
        self.driver.unpause(self.instance)
        self.driver.resume(self.ctxt, self.instance, None)
        self.assertNotIn("unpause", hv.calls[calls:])
        self.assertNotIn("start", hv.calls[calls:])
        self.assertEqual("active", self.driver.compute.instance(self.instance.uuid).vm_state)

    def test_the_driver_on_libvirt_hears_libvirts_events_in_this_threading_mode(
            self) -> None:
        """The driver as shipped, on libvirt's test:///default (its events
        go through libvirt's event loop as QEMU's do), in this run's
        threading mode: it opens and reconciles, and a vmops domain's
        start, pause, resume and power off reach vmops' callbacks, in
        order, on this OS thread (under eventlet: on a green thread, the
        event loop on a native one; before vmops' thread model, opening
        libvirt under eventlet hung every green thread)."""
        import uuid as uuidlib

        from nova import monkey_patch
        from nova.virt import fake

        from vmops.hypervisor.base import DiskSpec, DomainSpec, NicSpec
        from vmops.nova_driver import GreenThreads, VmopsDriver

        native_ident = _native_thread_ident()
        state_dir = Path(tempfile.mkdtemp(dir=os.environ.get("VMOPS_NOVA_TESTS_TMP")))
        (state_dir / "vmops.toml").write_text(
            'libvirt_uri = "test:///default"\nnetwork_mode = "user"\naccel = "tcg"\n')
        self.flags(state_dir=str(state_dir), group="vmops")
        driver = VmopsDriver(fake.FakeVirtAPI())
        self.addCleanup(driver.cleanup_host, "myhostname")
        driver.init_host("myhostname")
        self.assertEqual([], driver.list_instances())
        from vmops.hypervisor import threads
        self.assertEqual(monkey_patch.is_patched(),
                         isinstance(threads.current(), GreenThreads))

        seen: list[tuple[str, str, int]] = []
        arrived = threading.Event()  # green under eventlet

        def on_event(event: Any) -> None:
            seen.append((event.state.value, event.detail, _native_thread_ident()))
            arrived.set()

        hv = driver.compute.hv
        hv.on_lifecycle_event(on_event)
        uuid = str(uuidlib.uuid4())
        hv.define(DomainSpec(
            uuid=uuid, name=f"vmops-nova-{uuid[:8]}", memory_mib=64, vcpus=1,
            disks=(DiskSpec(path=state_dir / "none.qcow2", format="qcow2", target="vda"),),
            nics=(NicSpec(mac="52:54:00:12:34:56"),),
            console_socket=state_dir / "none.sock", metadata={"name": "nova"}))
        self.addCleanup(hv.undefine, uuid)
        self.addCleanup(hv.power_off, uuid)
        hv.start(uuid)
        hv.pause(uuid)
        hv.unpause(uuid)
        hv.power_off(uuid)
        deadline = time.monotonic() + EVENT_WAIT
        while len(seen) < 4 and time.monotonic() < deadline:
            arrived.wait(1)
            arrived.clear()
        self.assertEqual([("running", "started"), ("paused", "paused"),
                          ("running", "unpaused"), ("shutoff", "destroyed")],
                         [(state, detail) for state, detail, _ in seen])
        idents = {ident for _, _, ident in seen}
        if monkey_patch.is_patched():  # green threads of this OS thread
            self.assertEqual({native_ident}, idents)
        else:  # vmops' dispatcher thread
            self.assertNotIn(native_ident, idents)

    def _iscsi_target(self) -> Any:
        """A real tgtd on loopback (tests/targets.py, as vmops' remote volume
        tests): LUN 1 of 48 MiB behind CHAP; stopped at the test's end."""
        from tests.targets import iscsi_target

        tmp = Path(tempfile.mkdtemp(dir=os.environ.get("VMOPS_NOVA_TESTS_TMP")))
        started = iscsi_target(tmp)
        target = started.__enter__()
        self.addCleanup(started.__exit__, None, None, None)
        return target

    def _cinder_iscsi(self, target: Any, volume_id: str, **data: Any) -> dict[str, Any]:
        """Cinder's connection_info for the target's LUN 1, as its LVM/tgt
        driver gives it (os-brick's iSCSI properties)."""
        return {"driver_volume_type": "iscsi", "serial": volume_id,
                "data": {"target_discovered": False,
                         "target_portal": f"127.0.0.1:{target.port}",
                         "target_iqn": target.iqn, "target_lun": 1,
                         "volume_id": volume_id, "auth_method": "CHAP",
                         "auth_username": target.chap_user,
                         "auth_password": target.chap_secret, **data}}

    def test_a_cinder_iscsi_volume_is_attached_and_detached(self) -> None:
        """Cinder's iSCSI connection_info becomes a vmops remote volume (its
        target probed for real, the CHAP password in a secret) plugged in as
        the device Nova named; detach unplugs it and forgets vmops' record and
        secret, leaving the target's data as it was."""
        from vmops.hypervisor.fake import FakeHypervisor

        target = self._iscsi_target()
        connector = self.driver.get_volume_connector(self.instance)
        self.assertEqual({"ip", "host", "initiator", "multipath", "platform", "os_type"},
                         set(connector))
        self._spawn()
        volume_id = "6f2f8d4e-0d3c-4d8a-9d1e-2b7f4e0c9a11"
        info = self._cinder_iscsi(target, volume_id)
        lun_before = target.lun_image.read_bytes()
        hv = self.driver.compute.hv
        assert isinstance(hv, FakeHypervisor)
        disks_before = hv.disk_targets(self.instance.uuid)
        self.assertIn("vdb", disks_before)  # the flavor's ephemeral disk
        free = self.driver.get_device_name_for_instance(self.instance, [], None)
        self.assertEqual(f"/dev/{min(set('vd' + c for c in 'bcdefgh') - set(disks_before))}",
                         free)
        self.driver.attach_volume(self.ctxt, info, self.instance, "/dev/vdb")
        volumes = self.driver.volumes
        volume = volumes.volume("cinder-" + volume_id)
        self.assertEqual(("in-use", "iscsi", target.iqn, 1, target.chap_user),
                         (volume.status, volume.protocol, volume.remote_export,
                          volume.remote_lun, volume.chap_user))
        attachment = volumes.attachment_of(volume.id)
        assert attachment is not None
        self.assertEqual(self.instance.uuid, attachment.instance_id)
        # Nova's /dev/vdb was taken: a hint, vmops took the first free disk,
        # the one get_device_name_for_instance gives
        self.assertEqual(free, "/dev/" + attachment.device)
        self.assertEqual({**disks_before, attachment.device: volume.path},
                         hv.disk_targets(self.instance.uuid))
        self.assertEqual(f"iscsi://127.0.0.1:{target.port}/{target.iqn}/1", volume.path)
        self.assertEqual([(volume.secret_uuid, target.chap_secret.encode())],
                         [(u, value) for u, (_, value) in hv.secret_values.items()])

        self.driver.detach_volume(self.ctxt, info, self.instance, "/dev/vdb")
        self.assertEqual([], volumes.volumes())
        self.assertEqual({}, hv.secrets())
        self.assertEqual(disks_before, hv.disk_targets(self.instance.uuid))
        self.assertEqual(lun_before, target.lun_image.read_bytes())
        # Detaching again: nothing attached, nothing to do (Nova's libvirt driver).
        self.driver.detach_volume(self.ctxt, info, self.instance, "/dev/vdb")

    def test_cinder_volumes_are_cinders_to_count_not_vmops_volume_quota(self) -> None:
        """Cinder counts its volumes against its own quota before Nova asks
        for a connection: vmops' volume quota (its own volume API's, default
        10 volumes, 1000 GiB a project) must not refuse the attach of one
        more (a spawn's Cinder volumes go through the same registration)."""
        target = self._iscsi_target()
        self._spawn()
        quotas = self.driver.compute.quotas
        quotas.update_class("default", {"volumes": 0, "gigabytes": 0})
        self.addCleanup(quotas.update_class, "default", {"volumes": 10, "gigabytes": 1000})
        info = self._cinder_iscsi(target, "vol-over-vmops-quota")
        self.driver.attach_volume(self.ctxt, info, self.instance, "/dev/vdc")
        volume = self.driver.volumes.volume("cinder-vol-over-vmops-quota")
        self.assertEqual("in-use", volume.status)
        self.driver.detach_volume(self.ctxt, info, self.instance, "/dev/vdc")
        self.assertEqual([], self.driver.volumes.volumes())

    def test_a_registration_left_by_a_crash_does_not_block_the_volume(self) -> None:
        """nova-compute killed between vmops' registration of a Cinder volume
        and its attach (or between a detach and the forgetting) leaves an
        unattached 'cinder-<id>' volume in vmops: the next attach of that
        Cinder volume takes its place instead of failing, for ever, with
        'is volume cinder-<id> already'."""
        target = self._iscsi_target()
        self._spawn()
        volume_id = "vol-left-by-a-crash"
        info = self._cinder_iscsi(target, volume_id)
        left = self.driver.volumes.register_remote(
            "cinder-" + volume_id, f"iscsi://127.0.0.1:{target.port}/{target.iqn}/1",
            chap_user=target.chap_user, chap_secret=target.chap_secret.encode(),
            counted=False)
        self.driver.attach_volume(self.ctxt, info, self.instance, "/dev/vdc")
        volumes = self.driver.volumes.volumes()
        self.assertEqual([("cinder-" + volume_id, "in-use")],
                         [(v.name, v.status) for v in volumes])
        self.assertNotEqual(left.id, volumes[0].id)
        self.assertEqual([volumes[0].secret_uuid], list(self.driver.compute.hv.secrets()))
        self.driver.detach_volume(self.ctxt, info, self.instance, "/dev/vdc")
        self.assertEqual([], self.driver.volumes.volumes())

    def test_init_host_settles_the_cinder_volumes_a_crash_left_half_done(self) -> None:
        """nova-compute killed while forgetting a Cinder volume (vmops'
        record 'deleting') or while registering one (its CHAP password
        already in a libvirt secret, no record yet): init_host settles them
        as vmops serve does at its start (Volumes.reconcile), so neither the
        record nor the password stays."""
        from vmops.volumes.manager import SECRET_USAGE_PREFIX

        target = self._iscsi_target()
        volumes = self.driver.volumes
        half_forgotten = volumes.register_remote(
            "cinder-vol-half-forgotten", f"iscsi://127.0.0.1:{target.port}/{target.iqn}/1",
            chap_user=target.chap_user, chap_secret=target.chap_secret.encode(),
            counted=False)
        volumes.records.begin_delete(half_forgotten.id)
        hv = self.driver.compute.hv
        hv.define_secret(SECRET_USAGE_PREFIX + "half-registered", b"a-chap-password")
        self.assertEqual(2, len(hv.secrets()))
        self.driver.init_host("vmops-host")
        self.assertEqual([], volumes.volumes())
        self.assertEqual({}, hv.secrets())

    def test_init_host_watches_the_volumes_as_vmops_serve(self) -> None:
        """After init_host (vmops' Engine.watch_volumes, as vmops serve at
        its start), QEMU's I/O error on an attached volume's disk puts the
        volume in error, and the iSCSI target watch runs; cleanup_host ends
        that watch's thread."""
        import uuid as uuidlib

        from vmops.volumes.records import Volume, VolumeStatus

        self._spawn()
        volumes = self.driver.volumes
        volume = volumes.records.add(Volume(
            id=str(uuidlib.uuid4()), name="cinder-vol-watched", size_gb=1,
            status=VolumeStatus.AVAILABLE, format="raw", path="nbd://127.0.0.1:10809/data",
            protocol="nbd", remote_host="127.0.0.1", remote_port=10809, remote_export="data"))
        volumes.attach(volume.id, self.instance.uuid)
        attachment = volumes.attachment_of(volume.id)
        assert attachment is not None
        hv = self.driver.fake_hypervisor
        before = set(threading.enumerate())
        self.driver.init_host("vmops-host")
        started = set(threading.enumerate()) - before
        try:
            self.assertIn("volume-target-watch", {t.name for t in started})
            hv.disk_error(self.instance.uuid, attachment.device)
            failed = volumes.volume(volume.id)
            self.assertEqual(VolumeStatus.ERROR, failed.status)
            self.assertIn(f"could not read or write disk {attachment.device}", failed.fault)
        finally:
            self.driver.cleanup_host("vmops-host")
        self.assertEqual([], [t.name for t in started if t.is_alive()])

    def test_a_volume_vmops_cannot_attach_is_refused_and_leaves_nothing(self) -> None:
        """A wrong CHAP password (the target refuses the login), a volume type
        other than iscsi (the suite's "fake", Ceph's rbd), an encrypted
        volume: refused, naming why, with no vmops record, secret or disk left."""
        from nova import exception

        target = self._iscsi_target()
        self._spawn()
        hv = self.driver.compute.hv
        disks = hv.disk_targets(self.instance.uuid)
        wrong = self._cinder_iscsi(target, "vol-wrong", auth_password="not-the-password")
        error = self.assertRaises(exception.VolumeAttachFailed, self.driver.attach_volume,
                                  self.ctxt, wrong, self.instance, "/dev/vdb")
        self.assertIn("vol-wrong", str(error))
        for kind in ("fake", "rbd"):
            error = self.assertRaises(
                exception.VolumeDriverNotFound, self.driver.attach_volume, self.ctxt,
                {"driver_volume_type": kind, "serial": "vol-" + kind, "data": {}},
                self.instance, "/dev/vdb")
            self.assertIn("iscsi volumes only", str(error))
        self.assertRaises(exception.VolumeEncryptionNotSupported, self.driver.attach_volume,
                          self.ctxt, self._cinder_iscsi(target, "vol-encrypted"),
                          self.instance, "/dev/vdb", encryption={"provider": "luks"})
        self.assertEqual([], self.driver.volumes.volumes())
        self.assertEqual({}, hv.secrets())
        self.assertEqual(disks, hv.disk_targets(self.instance.uuid))

    def test_nova_resize_on_this_host_reverts_and_confirms(self) -> None:
        """Nova's resize verbs on vmops' resize: finish_migration takes the
        instance to Nova's new flavor (vmops' record resized, the domain's
        memory and the root disk's size the new flavor's), Nova's revert
        (destroy while reverting, then finish_revert_migration) gives back
        the old flavor with the instance kept, and a second resize is
        confirmed. Another host is refused with nothing changed."""
        from nova import exception
        from nova.compute import task_states

        self._spawn()
        compute = self.driver.compute
        old = compute.instance(self.instance.uuid)
        new_flavor = self.instance.flavor.obj_clone()
        new_flavor.memory_mb, new_flavor.root_gb = new_flavor.memory_mb * 2, \
            new_flavor.root_gb + 1
        self.assertRaises(exception.InstanceFaultRollback,
                          self.driver.migrate_disk_and_power_off, self.ctxt, self.instance,
                          "other-host", new_flavor, None)
        self.assertEqual((old.vm_state, old.flavor_id),
                         (compute.instance(old.id).vm_state,
                          compute.instance(old.id).flavor_id))

        def resize() -> None:
            self.driver.migrate_disk_and_power_off(self.ctxt, self.instance,
                                                   "10.0.0.1", new_flavor, None)
            self.instance.flavor = new_flavor
            self.driver.finish_migration(self.ctxt, None, self.instance, "", None,
                                         self.image_meta, True, {})
            resized = compute.instance(old.id)
            self.assertEqual(("resized", new_flavor.memory_mb * 1024),
                             (resized.vm_state, compute.hv.info(old.id).max_memory_kib))

        self.flags(my_ip="10.0.0.1")  # Nova's dest_host: this host's my_ip
        old_flavor = self.instance.flavor
        resize()
        self.instance.task_state = task_states.RESIZE_REVERTING
        self.driver.destroy(self.ctxt, self.instance, None)  # Nova's revert, on the dest
        self.instance.flavor = old_flavor
        self.driver.finish_revert_migration(self.ctxt, self.instance, None, None)
        reverted = compute.instance(old.id)
        self.assertEqual(("active", old.flavor_id), (reverted.vm_state, reverted.flavor_id))
        self.instance.task_state = None
        resize()
        self.driver.confirm_migration(self.ctxt, None, self.instance, None)
        self.assertEqual("active", compute.instance(old.id).vm_state)
        self.assertNotEqual(old.flavor_id, compute.instance(old.id).flavor_id)

    def test_the_key_pair_reaches_the_config_drive(self) -> None:
        """Nova's instance.key_name and key_data (the key as Nova has it: not
        a vmops key pair) are the config drive's public_keys, in the
        meta_data.json of each version and in the EC2 tree, as Nova's
        metadata gives them."""
        from vmops.configdrive import read_iso

        key = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ2bm9YbGl2ZXJ0LWtleS1mb3ItdGVzdHM "
               "nova@vmops")
        self.instance.key_name, self.instance.key_data = "nova-key", key
        self.instance.config_drive = "True"
        self._spawn()
        inst = self.driver.compute.instance(self.instance.uuid)
        drive = read_iso(Path(next(d.path for d in inst.disks if d.role == "config")))
        meta = json.loads(drive["openstack/latest/meta_data.json"])
        self.assertEqual({"nova-key": key}, meta["public_keys"])
        self.assertEqual([{"name": "nova-key", "type": "ssh", "data": key}], meta["keys"])
        self.assertEqual([], self.driver.compute.store.keypairs())  # no vmops key pair made

    def _listen(self) -> tuple[list[tuple[str, str]], Any]:
        """Nova's listener on the driver: (uuid, transition name) of each
        event, and a threading.Event set at each (green under eventlet)."""
        from nova.virt import event as virtevent

        seen: list[tuple[str, str]] = []
        arrived = threading.Event()

        def listener(event: Any) -> None:
            self.assertIsInstance(event, virtevent.LifecycleEvent)
            seen.append((event.get_instance_uuid(), event.get_name()))
            arrived.set()

        self.driver.register_event_listener(listener)
        return seen, arrived

    def _wait_for(self, seen: list[tuple[str, str]], arrived: Any, count: int) -> None:
        """Until ``count`` events came (a STOPPED one comes after the delay)."""
        deadline = time.monotonic() + EVENT_WAIT
        while len(seen) < count and time.monotonic() < deadline:
            arrived.wait(1)
            arrived.clear()
        self.assertEqual(count, len(seen), seen)

    def test_power_changes_reach_nova_as_lifecycle_events(self) -> None:
        """Each power change vmops sees reaches Nova's listener as the
        LifecycleEvent Nova's libvirt driver would send: the driver's own
        verbs and the guest powering itself off (no call from Nova at all);
        a STOPPED event waits stopped_event_delay, and one followed by
        another event of the instance within it is never sent."""
        uuid = self.instance.uuid
        seen, arrived = self._listen()
        self.driver.stopped_event_delay = 0.2
        self._spawn()  # booted with its vCPUs paused, then resumed
        self.assertEqual([(uuid, "Started"), (uuid, "Paused"), (uuid, "Resumed")], seen)
        del seen[:]
        self.driver.pause(self.instance)
        self.driver.unpause(self.instance)
        self.assertEqual([(uuid, "Paused"), (uuid, "Resumed")], seen)
        del seen[:]
        self.driver.fake_hypervisor.guest_shutdown(uuid)  # poweroff inside the guest
        self._wait_for(seen, arrived, 1)
        self.assertEqual([(uuid, "Stopped")], seen)
        del seen[:]
        self.driver.stopped_event_delay = EVENT_WAIT * 10  # never reached here
        self.driver.power_on(self.ctxt, self.instance, None)
        self.driver.suspend(self.ctxt, self.instance)  # paused, then memory saved
        # Restored with its vCPUs paused, then resumed: the stop is never sent.
        self.driver.resume(self.ctxt, self.instance, None)
        self.assertEqual([(uuid, "Started"), (uuid, "Paused"), (uuid, "Resumed"),
                          (uuid, "Paused"),
                          (uuid, "Started"), (uuid, "Paused"), (uuid, "Resumed")], seen)
        self.assertEqual({}, self.driver._delayed_stops)
        self.driver.power_off(self.instance)
        self.assertEqual([uuid], list(self.driver._delayed_stops))
        self.driver.cleanup_host("myhostname")  # pending events are dropped
        self.assertEqual({}, self.driver._delayed_stops)

    def test_nova_syncs_a_guest_that_powered_itself_off_from_the_event(self) -> None:
        """Nova's own ComputeManager, listening to the driver as nova-compute
        does: the guest powering itself off reaches handle_lifecycle_event,
        whose get_info agrees with the event, so Nova records the power
        state and calls its stop API, without its periodic poll."""
        from unittest import mock

        from nova.compute import manager, power_state

        self.flags(compute_driver="fake.SmallFakeDriver")
        compute_manager = manager.ComputeManager()
        compute_manager.driver = self.driver
        compute_manager.init_virt_events()
        self.instance.host = compute_manager.host
        self.instance.vm_state = "active"
        self.instance.power_state = power_state.RUNNING
        self.instance.save()
        self._spawn()
        self.driver.stopped_event_delay = 0.2
        stopped = threading.Event()
        with mock.patch.object(compute_manager.compute_api, "stop",
                               side_effect=lambda *a, **k: stopped.set()) as stop:
            self.driver.fake_hypervisor.guest_shutdown(self.instance.uuid)
            deadline = time.monotonic() + EVENT_WAIT
            while not stopped.is_set() and time.monotonic() < deadline:
                stopped.wait(1)
        stop.assert_called_once()
        self.instance.refresh()
        self.assertEqual(power_state.SHUTDOWN, self.instance.power_state)

    def test_the_driver_holds_its_state_directory_as_vmops_serve(self) -> None:
        """The driver as shipped (not the fake host's ``_open``), on a state
        directory whose vmops.toml names the fake hypervisor: a vmops
        service on the same directory is refused, naming this process."""
        from nova.virt import fake

        from vmops.errors import ServiceAlreadyRunning
        from vmops.nova_driver import VmopsDriver
        from vmops.service import take_lock

        state_dir = Path(tempfile.mkdtemp(dir=os.environ.get("VMOPS_NOVA_TESTS_TMP")))
        (state_dir / "vmops.toml").write_text(
            'libvirt_uri = "fake:///"\nnetwork_mode = "user"\naccel = "tcg"\n')
        self.flags(state_dir=str(state_dir), group="vmops")
        driver = VmopsDriver(fake.FakeVirtAPI())
        self.addCleanup(driver.cleanup_host, "myhostname")
        error = self.assertRaises(ServiceAlreadyRunning, take_lock, state_dir)
        self.assertIn(str(os.getpid()), str(error))
        driver.init_host("myhostname")
        self.assertEqual([], driver.list_instances())


class VmopsLibvirtTestCase(test.TestCase):
    """vmops' own checks on the real libvirt hypervisor with the test image
    (scripts/nova-tests --hypervisor libvirt): what the guest saw and the
    events libvirt sent, through the driver as shipped."""

    def setUp(self) -> None:
        super().setUp()
        from nova.tests import fixtures as nova_fixtures
        from nova.tests.unit import utils as test_utils
        from nova.virt import fake

        from tools.nova_tests.libvirt_host import LibvirtHostVmopsDriver

        self.utils = test_utils
        self.glance = self.useFixture(nova_fixtures.GlanceFixture(self))
        for image_id in self.glance.images:
            self.glance._imagedata[image_id] = image_data()
        self.driver = LibvirtHostVmopsDriver(fake.FakeVirtAPI())
        self.addCleanup(self.driver.release)
        self.ctxt = test_utils.get_test_admin_context()
        self.instance = test_utils.get_test_instance(obj=True)
        self.image_meta = test_utils.get_test_image_object(None, self.instance)
        self.events: list[str] = []
        self.driver.register_event_listener(
            lambda event: self.events.append(event.get_name()))
        self.driver.stopped_event_delay = 0.2

    def _spawn(self) -> None:
        self.driver.spawn(self.ctxt, self.instance, self.image_meta, [], "pw", {},
                          network_info=self.utils.get_test_network_info(1))

    def _wait(self, what: str, done: Any) -> None:
        deadline = time.monotonic() + GUEST_WAIT
        while not done():
            if time.monotonic() > deadline:
                self.fail(f"{what} not seen after {GUEST_WAIT:g}s; events: {self.events}; "
                          "console: " + self.driver.get_console_output(
                              self.ctxt, self.instance)[-1500:])
            time.sleep(0.5)

    def test_the_guest_sees_the_key_pair_and_its_poweroff_reaches_nova(self) -> None:
        """Nova's key pair in the guest's config drive (the test image prints
        meta_data.json on its console), and the guest powering itself off
        (its user-data script) reaching Nova as STOPPED, from libvirt's event."""
        key = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ2bm9YbGl2ZXJ0LWtleS1mb3ItdGVzdHM "
               "nova@vmops")
        self.instance.key_name, self.instance.key_data = "nova-key", key
        self.instance.config_drive = "True"
        self.instance.user_data = base64.b64encode(
            b"#!/bin/sh\nsleep 2\npoweroff -f\n").decode()
        self._spawn()
        begin, end = ("VMOPS-FILE-BEGIN openstack/latest/meta_data.json",
                      "VMOPS-FILE-END openstack/latest/meta_data.json")
        self._wait("meta_data.json on the console", lambda: end in self.driver.get_console_output(
            self.ctxt, self.instance))
        console = self.driver.get_console_output(self.ctxt, self.instance)
        meta = json.loads(console.split(begin, 1)[1].split(end, 1)[0])
        self.assertEqual({"nova-key": key}, meta["public_keys"])
        self._wait("the STOPPED event", lambda: "Stopped" in self.events)
        self.assertEqual(power_state_of(self.driver, self.instance), "shutdown")

    def test_pause_unpause_and_power_off_reach_nova_from_libvirt(self) -> None:
        self._spawn()
        self._wait("the guest's boot", lambda: "VMOPS-BOOT-COMPLETE" in
                   self.driver.get_console_output(self.ctxt, self.instance))
        del self.events[:]
        self.driver.pause(self.instance)
        self._wait("the PAUSED event", lambda: self.events[-1:] == ["Paused"])
        self.driver.unpause(self.instance)
        self._wait("the RESUMED event", lambda: self.events[-1:] == ["Resumed"])
        self.driver.power_off(self.instance)
        self._wait("the STOPPED event", lambda: self.events[-1:] == ["Stopped"])
        self.assertEqual(["Paused", "Resumed", "Stopped"], self.events)

    def test_cleanup_host_lets_the_console_process_go(self) -> None:
        """The console process stays for the driver's process while it
        lives, watching nothing once the guest is gone; cleanup_host lets
        go of it, and it exits (as at vmops serve's stop)."""
        from vmops.console import shared

        self._spawn()
        self.driver.destroy(self.ctxt, self.instance, None)
        run_dir = self.driver.compute.settings.run_dir
        pid = shared.held_idle_pid(run_dir, os.getpid())
        assert pid is not None, "no idle console process held by this process"
        self.driver.release()  # destroys what is left, then cleanup_host
        deadline = time.monotonic() + 10
        while _runs(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertFalse(_runs(pid), f"console process {pid} still runs after cleanup_host")

    def test_nova_serial_console_reaches_the_guest(self) -> None:
        """get_serial_console's TCP port, as Nova's serial proxy uses it: what
        is typed reaches the guest's shell on its serial console and its
        answer comes back; a second connection works too; destroy closes the
        port."""
        import socket

        self.flags(enabled=True, group="serial_console")
        self._spawn()
        self._wait("the guest's console shell", lambda: "VMOPS-HEARTBEAT 1" in
                   self.driver.get_console_output(self.ctxt, self.instance))
        console = self.driver.get_serial_console(self.ctxt, self.instance)
        self.assertEqual("127.0.0.1", console.host)
        for _ in range(2):
            with socket.create_connection((console.host, console.port), timeout=30) as sock:
                sock.sendall(b"echo VMOPS-ANSWER-$((6*7))\n")
                seen = b""
                deadline = time.monotonic() + GUEST_WAIT
                while b"VMOPS-ANSWER-42" not in seen and time.monotonic() < deadline:
                    seen += sock.recv(4096) or self.fail(f"the console ended: {seen!r}")
                self.assertIn(b"VMOPS-ANSWER-42", seen)
        self.driver.destroy(self.ctxt, self.instance, None)
        self.assertRaises(OSError, socket.create_connection, (console.host, console.port),
                          timeout=5)

    def test_a_cinder_iscsi_volume_reaches_the_guest_and_leaves_it(self) -> None:
        """Cinder's iSCSI connection_info for a real tgtd LUN (CHAP) hot-plugged
        into the running guest through the driver: the guest sees a disk of
        the LUN's size (the test image prints each disk), and after
        detach_volume sees it gone."""
        from tests.targets import iscsi_target

        tmp = Path(tempfile.mkdtemp(dir=os.environ.get("VMOPS_NOVA_TESTS_TMP")))
        started = iscsi_target(tmp, size_mib=48)
        target = started.__enter__()
        self.addCleanup(started.__exit__, None, None, None)
        self._spawn()
        self._wait("the guest's boot", lambda: "VMOPS-BOOT-COMPLETE" in
                   self.driver.get_console_output(self.ctxt, self.instance))
        volume_id = "0b8f4c2e-6a51-4f0e-8d7e-3c1d2e4f5a60"
        info = {"driver_volume_type": "iscsi", "serial": volume_id,
                "data": {"target_portal": f"127.0.0.1:{target.port}",
                         "target_iqn": target.iqn, "target_lun": 1, "volume_id": volume_id,
                         "auth_method": "CHAP", "auth_username": target.chap_user,
                         "auth_password": target.chap_secret}}
        self.driver.attach_volume(self.ctxt, info, self.instance, "/dev/vdb")
        # The guest names its disks itself (in probe order): found by size.
        seen = re.compile(rf"VMOPS-DISK (vd[a-z]+) {48 << 20}\b")
        self._wait("the LUN's disk in the guest", lambda: seen.search(
            self.driver.get_console_output(self.ctxt, self.instance)) is not None)
        found = seen.search(self.driver.get_console_output(self.ctxt, self.instance))
        assert found is not None
        self.driver.detach_volume(self.ctxt, info, self.instance, "/dev/vdb")
        volumes = self.driver.volumes
        gone = f"VMOPS-DISK-GONE {found.group(1)}"
        self._wait(gone, lambda: gone in self.driver.get_console_output(
            self.ctxt, self.instance))
        self.assertEqual([], volumes.volumes())


def _block_device_info(*volumes: tuple[dict[str, Any], int]) -> dict[str, Any]:
    """Nova's block_device_info for (connection_info, boot index) pairs, as
    its DriverVolumeBlockDevice gives them to a driver."""
    return {"root_device_name": "/dev/vda", "swap": None, "ephemerals": [],
            "block_device_mapping": [
                {"connection_info": info, "boot_index": index,
                 "mount_device": f"/dev/vd{'abcdefgh'[index]}",
                 "delete_on_termination": False, "disk_bus": "virtio"}
                for info, index in volumes]}


def _native_thread_ident() -> int:
    """The OS thread's id, also under eventlet (where threading's is the
    green thread's)."""
    if "eventlet" in sys.modules:
        from eventlet import patcher

        return int(patcher.original("threading").get_ident())
    return threading.get_ident()


def power_state_of(driver: Any, instance: Any) -> str:
    from nova.compute import power_state

    return str(power_state.STATE_MAP[driver.get_info(instance).state])


def _runs(pid: int) -> bool:
    """``pid`` is a live process (not gone, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
