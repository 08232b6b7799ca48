"""Store records for tests and bench, one factory each.

Each makes the record a test most often wants (an m1.tiny instance of the
"tiny" image, stopped, with a qcow2 root disk; an active qcow2 image) and a
test names only the fields it is about: ``instance("web1",
vm_state=states.ACTIVE)``. Nothing is written: pass the record to the
store (``store.add_instance(instance(...))``).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from vmops.compute import states
from vmops.hypervisor.base import PowerState
from vmops.store import DiskRecord, Image, Instance, InstanceFlavor

# The flavor m1.tiny as an instance records it at spawn.
TINY_FLAVOR = InstanceFlavor(id="1", name="m1.tiny", ram_mib=512, vcpus=1, root_gb=1)
MAC = "52:54:00:00:00:01"


def instance(name: str = "web1", *, instance_dir: Path | None = None,
             **fields: Any) -> Instance:
    """An instance record named ``name`` with a fresh UUID; its root disk is
    ``instance_dir/root.qcow2`` (default: a path that does not exist, for
    tests that read no disk). Any other field of :class:`Instance` may be given."""
    where = instance_dir if instance_dir is not None else Path("/nonexistent") / name
    made: dict[str, Any] = {
        "id": str(uuid.uuid4()), "name": name, "vm_state": states.STOPPED, "task_state": None,
        "power_state": PowerState.SHUTOFF.value, "flavor_id": "1", "image_id": "img",
        "flavor": TINY_FLAVOR, "image_name": "tiny", "macs": (MAC,),
        "disks": (DiskRecord("root", str(where / "root.qcow2"), "qcow2", "vda"),),
    }
    return Instance(**{**made, **fields})


def image(name: str = "tiny", **fields: Any) -> Image:
    """An active qcow2 image record of 1 GiB (virtual) named ``name``; its
    file does not exist unless ``path`` is given."""
    made: dict[str, Any] = {
        "id": str(uuid.uuid4()), "name": name, "status": "active", "format": "qcow2",
        "virtual_size": 1 << 30, "file_size": 1 << 20, "checksum": "ab" * 32,
        "path": f"/nonexistent/{name}",
    }
    return Image(**{**made, **fields})
