"""Nova's functional ``ServersTest`` with vmops' driver
(``scripts/nova-tests --suite servers``).

Nova's own services run in process (its API through ``OSAPIFixture`` with
the wheel's ``etc/nova/api-paste.ini``, conductor, scheduler, Placement
from the openstack-placement package, Nova's Neutron, Cinder and Glance
fixtures); the compute service loads ``compute_driver = vmops.VmopsDriver``
through ``nova.virt.vmops`` as nova-compute does, with its ``_open`` giving
vmops' fake hypervisor (:mod:`tools.nova_tests.fake_host`). Two things
are changed for vmops: every Glance image's data is a small qcow2 (the
fixture serves b''), and the Glance fixture keeps the data an ``update``
uploads (it drops it; vmops' snapshot uploads the shelved server's disk
that unshelve then boots from).

:class:`VmopsServersOwnTest` is vmops' own check through the same
services: a server made and deleted through Nova's API is made and
destroyed by vmops, and a guest powering itself off reaches Nova as a
lifecycle event that Nova acts on.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

# First: importing Nova's test package applies its threading mode.
from nova.tests.functional import integrated_helpers, test_servers

# isort: split
import fixtures
from nova.tests.fixtures import glance

from tools.nova_tests import fake_host, suite

API_PASTE = os.path.join(sys.prefix, "etc", "nova", "api-paste.ini")


def _update_keeping_data(self: Any, context: Any, image_id: str, metadata: Any,
                         data: Any = None, purge_props: bool = False) -> Any:
    image = _FIXTURE_UPDATE(self, context, image_id, metadata, data=None,
                            purge_props=purge_props)
    if data is not None:
        self._imagedata[image_id] = data.read()
    return image


_FIXTURE_UPDATE = glance.GlanceFixture.update


class _VmopsCompute:
    """The compute service on vmops' driver, as nova-compute loads it."""

    glance: Any
    useFixture: Any  # noqa: N815 - testtools' API
    flags: Any

    def _setup_compute_service(self) -> Any:
        self.flags(compute_driver="vmops.VmopsDriver")
        self.flags(api_paste_config=API_PASTE, group="wsgi")
        self.useFixture(fixtures.MonkeyPatch("vmops.nova_driver.VmopsDriver._open",
                                             fake_host.FakeHostVmopsDriver._open))
        self.useFixture(fixtures.MonkeyPatch(
            "nova.tests.fixtures.glance.GlanceFixture.update", _update_keeping_data))
        for image_id in self.glance.images:
            self.glance._imagedata[image_id] = suite.image_data()
        return super()._setup_compute_service()  # type: ignore[misc]


class VmopsServersTest(_VmopsCompute, test_servers.ServersTest):
    pass


class VmopsServersOwnTest(_VmopsCompute, integrated_helpers._IntegratedTestBase):
    api_major_version = "v2.1"
    ADMIN_API = True

    def _driver(self) -> Any:
        return self.compute.manager.driver

    def test_a_server_through_novas_api_is_vmops_own(self) -> None:
        """Made by vmops with Nova's uuid, running on its hypervisor; Nova's
        delete destroys it in vmops."""
        from vmops.nova_driver import VmopsDriver

        driver = self._driver()
        self.assertIsInstance(driver, VmopsDriver)
        server = self._create_server()
        inst = driver.compute.instance(server["id"])
        self.assertEqual(("active", server["OS-EXT-SRV-ATTR:instance_name"]),
                         (inst.vm_state, inst.name))
        self.assertEqual(1, server["OS-EXT-STS:power_state"])  # RUNNING, from get_info
        self.assertIn(server["id"], driver.fake_hypervisor.domains)
        self._delete_server(server)
        self.assertEqual([], driver.compute.store.instances())
        self.assertEqual({}, driver.fake_hypervisor.domains)

    def test_a_guest_powering_itself_off_is_shutoff_in_nova_without_a_poll(self) -> None:
        """The fake guest powers itself off; vmops' lifecycle event reaches
        Nova's compute manager, which records it and stops the server: the
        API says SHUTOFF. Nova's periodic power-state poll does not run
        in these tests, so only the event can have done it."""
        driver = self._driver()
        driver.stopped_event_delay = 0.1
        server = self._create_server()
        driver.fake_hypervisor.guest_shutdown(server["id"])
        deadline = time.monotonic() + suite.EVENT_WAIT
        while self.api.get_server(server["id"])["status"] != "SHUTOFF":
            if time.monotonic() > deadline:
                self.fail(f"not SHUTOFF after {suite.EVENT_WAIT:g}s: "
                          f"{self.api.get_server(server['id'])['status']}")
            time.sleep(0.2)
        self.assertEqual(4, self.api.get_server(server["id"])["OS-EXT-STS:power_state"])

    def test_resize_revert_and_confirm_through_novas_api(self) -> None:
        """Nova's resize on one host (allow_resize_to_same_host), driven by
        Nova's API and compute manager: VERIFY_RESIZE is vmops' resized
        instance with the new flavor's sizes; Nova's revert (its destroy on
        the resize's destination, then finish_revert_migration) gives back
        vmops' instance with its old flavor, kept and running; a second
        resize is confirmed and keeps the new flavor."""
        self.flags(allow_resize_to_same_host=True)
        driver = self._driver()
        server = self._create_server(flavor_id="1")
        before = driver.compute.instance(server["id"])
        for action in ("revertResize", "confirmResize"):
            self.api.post_server_action(server["id"], {"resize": {"flavorRef": "2"}})
            server = self._wait_for_state_change(server, "VERIFY_RESIZE")
            resized = driver.compute.instance(server["id"])
            self.assertEqual("resized", resized.vm_state)
            self.assertNotEqual(before.flavor_id, resized.flavor_id)
            self.api.post_server_action(server["id"], {action: None})
            server = self._wait_for_state_change(server, "ACTIVE")
            after = driver.compute.instance(server["id"])
            self.assertEqual("active", after.vm_state)
            self.assertEqual(before.flavor_id if action == "revertResize"
                             else resized.flavor_id, after.flavor_id)
            self.assertIn(server["id"], driver.fake_hypervisor.domains)

