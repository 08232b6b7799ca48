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

import os
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

# First: importing Nova's test package applies its threading mode.
from nova.tests.unit.virt import test_virt_drivers

# isort: split
import fixtures
from nova import test

DRIVER = "tools.nova_tests.fake_host.FakeHostVmopsDriver"
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
    """A small qcow2 image: the data of every image in Nova's Glance fixture
    (which serves b'' for them; vmops' import refuses an empty image)."""
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
