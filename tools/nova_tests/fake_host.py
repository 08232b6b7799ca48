"""vmops' Nova driver on the fake hypervisor, for Nova's driver tests.

Everything is vmops' own driver (:class:`vmops.nova_driver.VmopsDriver`)
and compute layer; only the host is stood in for: the in-memory
:class:`~vmops.hypervisor.fake.FakeHypervisor` instead of libvirt, and a
console capture that connects at once (:class:`~vmops.console.fake.FakeConsole`:
no QEMU serves a console socket).
Each driver gets a state directory of its own under ``$VMOPS_NOVA_TESTS_TMP``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from vmops import config
from vmops.console.fake import FakeConsole
from vmops.hypervisor.fake import FakeHypervisor
from vmops.nova_driver import VmopsDriver
from vmops.service import Engine, build


class FakeHostVmopsDriver(VmopsDriver):
    def _open(self) -> Engine:
        parent = os.environ.get("VMOPS_NOVA_TESTS_TMP") or None
        state_dir = Path(tempfile.mkdtemp(prefix="vmops-nova-", dir=parent))
        settings = config.load(state_dir, env={}, libvirt_uri="fake:///", network_mode="user",
                               accel="tcg", shutdown_retry_interval=1)
        for d in (settings.images_dir, settings.instances_dir, settings.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.fake_hypervisor = FakeHypervisor()
        return build(settings, hypervisor=self.fake_hypervisor, capture=FakeConsole())
