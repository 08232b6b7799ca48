"""The libvirt driver's live unplug asks the guest again while it waits (a
guest still booting ignores the first request, as Nova's libvirt driver
knows), on a stand-in for a libvirt domain: no daemon, no guest. The real
guest: tests/functional/test_volumes.py."""

from __future__ import annotations

from typing import Any

import pytest

from vmops.errors import DetachTimeout
from vmops.hypervisor.base import Accel
from vmops.hypervisor.libvirt import driver

DISK = ("<disk type='file' device='disk'><source file='/v/volume.qcow2'/>"
        "<target dev='vdb' bus='virtio'/><alias name='virtio-disk1'/></disk>")


class Domain:
    """Releases vdb at the ``released_at``-th unplug request (0: never)."""

    def __init__(self, released_at: int) -> None:
        self.released_at = released_at
        self.requests = 0

    def XMLDesc(self, _flags: int) -> str:  # noqa: N802 - libvirt's name
        gone = self.released_at and self.requests >= self.released_at
        return f"<domain><devices>{'' if gone else DISK}</devices></domain>"

    def detachDeviceFlags(self, element: str, _flags: int) -> None:  # noqa: N802
        assert "vdb" in element
        self.requests += 1

    def UUIDString(self) -> str:  # noqa: N802
        return "4b2e3c1a-0000-4000-8000-000000000001"

    def name(self) -> str:
        return "vmops-web1"


@pytest.fixture
def hv(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(driver, "UNPLUG_REPEAT_S", 0.05)
    return driver.LibvirtHypervisor("test:///default", Accel.TCG)


def test_a_guest_that_ignored_the_first_request_is_asked_again(hv: Any) -> None:
    dom = Domain(released_at=3)
    hv._unplug(dom, "vdb", timeout=30.0)
    assert dom.requests == 3


def test_a_guest_that_never_lets_go_still_times_out(hv: Any) -> None:
    dom = Domain(released_at=0)
    with pytest.raises(DetachTimeout):
        hv._unplug(dom, "vdb", timeout=2.5)
    assert dom.requests >= 2
