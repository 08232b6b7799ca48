"""Hypervisors: the protocol (``base.py``), libvirt (``libvirt/``) and the
in-memory fake (``fake.py``)."""

from __future__ import annotations

from vmops.hypervisor.base import Accel, Hypervisor
from vmops.hypervisor.libvirt import embed_uri

__all__ = ["embed_uri", "open_hypervisor"]

FAKE_URI = "fake:///"


def open_hypervisor(uri: str, accel: Accel) -> Hypervisor:
    """The hypervisor for ``uri``, not yet connected: call ``connect()``.

    ``fake:///`` gives the in-memory fake; anything else is a libvirt URI.
    ``accel`` is KVM or TCG: resolving "auto" is doctor's job.
    """
    if uri == FAKE_URI:
        from vmops.hypervisor.fake import FakeHypervisor

        return FakeHypervisor()
    from vmops.hypervisor.libvirt.driver import LibvirtHypervisor

    return LibvirtHypervisor(uri, accel)
