"""Add stopped instances to a vmops state directory whose service is down.

    python -m bench.seed STATE_DIR TEMPLATE COUNT PREFIX FIRST

vmops cannot make an instance without booting it, and booting and stopping
200 guests under TCG on two cores would take most of the bench's ten
minutes. So the management-plane scenario clones a real stopped instance
(``TEMPLATE``, spawned then ``stop --hard`` through the API): for each clone
this writes the record with vmops' own store and defines the domain with
vmops' own driver and ``Compute.domain_spec``, which is what a spawn then
``stop --hard`` leaves behind, minus the disk files (a stopped domain's
files are not read by list, show or destroy). Runs in its own process:
the embed root can be held by one process at a time, and the bench process
holds the baseline's.
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from pathlib import Path

from vmops import config
from vmops.compute import states
from vmops.compute.manager import Compute
from vmops.compute.names import generate_mac
from vmops.hypervisor import open_hypervisor
from vmops.hypervisor.base import Accel, PowerState
from vmops.store import Store


def seed(state_dir: Path, template: str, count: int, prefix: str, first: int) -> None:
    settings = config.load(state_dir)
    store = Store(settings.db_path)
    hv = open_hypervisor(settings.effective_libvirt_uri, Accel.TCG)
    hv.connect()
    try:
        compute = Compute(settings, store, hv, Accel.TCG, lambda: [])
        tpl = store.instance(template)
        for i in range(first, first + count):
            instance_id = str(uuid.uuid4())
            inst_dir = settings.instances_dir / instance_id
            inst_dir.mkdir(parents=True)
            disks = tuple(dataclasses.replace(d, path=str(inst_dir / Path(d.path).name))
                          for d in tpl.disks)
            inst = store.add_instance(dataclasses.replace(
                tpl, id=instance_id, name=f"{prefix}{i}", hostname=f"{prefix}{i}",
                domain_name=f"vmops-{prefix}{i}", disks=disks, macs=(generate_mac(),),
                vm_state=states.STOPPED, task_state=None,
                power_state=PowerState.SHUTOFF.value, desired_running=False, fault=""))
            hv.define(compute.domain_spec(inst))
    finally:
        hv.close()
        store.close()


def main(argv: list[str]) -> int:
    state_dir, template, count, prefix, first = argv
    seed(Path(state_dir), template, int(count), prefix, int(first))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
