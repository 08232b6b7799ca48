"""The openstack command line, unchanged, drives resize (confirm, revert),
rescue (unrescue) and crash dump on a real guest, through a service of its
own set up as in test_openstack_clients.py (the clouds.yaml of
docs/openstack-clients.md). What the guest saw is read on its console."""

from __future__ import annotations

import re

import pytest

from tests.functional.conftest import Vmops
from tests.functional.test_openstack_clients import (  # noqa: F401 - fixtures, shared
    OpenStackCLI,
    cli,
    clouds,
    port,
    sdk,
    tcp_vmops,
    wait_idle,
)

pytestmark = [pytest.mark.extended, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")]

GIB = 1024**3


def _last(vm: Vmops, name: str, pattern: str) -> str:
    """The last match of ``pattern``'s group in the guest's console."""
    found = re.findall(pattern.encode(), vm.console(name))
    assert found, f"{pattern!r} not in {name}'s console"
    return str(found[-1].decode())


def test_resize_rescue_and_dump_with_the_openstack_cli(
        cli: OpenStackCLI, sdk: object, tcp_vmops: Vmops) -> None:  # noqa: F811
    cli.run("flavor", "create", "--ram", "384", "--vcpus", "2", "--disk", "2", "osc.big")
    cli.json("server", "create", "--image", "tiny", "--flavor", "m1.tiny", "chg1", "--wait")
    try:
        tcp_vmops.wait_console("chg1", r"VMOPS-HEARTBEAT 1\r?\n")
        assert _last(tcp_vmops, "chg1", r"VMOPS-CPUS (\d+)") == "1"

        # resize, then revert: the old flavor, one vCPU again
        cli.run("server", "resize", "--flavor", "osc.big", "--wait", "chg1")
        shown = cli.json("server", "show", "chg1")
        assert (shown["status"], shown["OS-EXT-STS:vm_state"]) == ("VERIFY_RESIZE", "resized")
        assert "osc.big" in str(shown["flavor"])
        tcp_vmops.wait_console("chg1", r"VMOPS-HEARTBEAT 1\r?\n", count=2)
        assert _last(tcp_vmops, "chg1", r"VMOPS-CPUS (\d+)") == "2"
        assert _last(tcp_vmops, "chg1", r"VMOPS-DISK vda (\d+)") == str(2 * GIB)
        cli.run("server", "resize", "revert", "chg1")
        wait_idle(sdk, "chg1", "ACTIVE")  # type: ignore[arg-type]
        assert "m1.tiny" in str(cli.json("server", "show", "chg1")["flavor"])
        tcp_vmops.wait_console("chg1", r"VMOPS-HEARTBEAT 1\r?\n", count=3)
        assert _last(tcp_vmops, "chg1", r"VMOPS-CPUS (\d+)") == "1"

        # resize, then confirm: the new flavor stays
        cli.run("server", "resize", "--flavor", "osc.big", "--wait", "chg1")
        cli.run("server", "resize", "confirm", "chg1")
        wait_idle(sdk, "chg1", "ACTIVE")  # type: ignore[arg-type]
        assert "osc.big" in str(cli.json("server", "show", "chg1")["flavor"])
        tcp_vmops.wait_console("chg1", r"VMOPS-HEARTBEAT 1\r?\n", count=4)

        # rescue from the image named, the root disk second; unrescue
        cli.run("server", "rescue", "--image", "tiny", "chg1")
        assert wait_idle(sdk, "chg1", "RESCUE").vm_state == "rescued"  # type: ignore[arg-type]
        tcp_vmops.wait_console("chg1", r"VMOPS-HEARTBEAT 1\r?\n", count=5)
        assert _last(tcp_vmops, "chg1", r"VMOPS-DISK vdb (\d+)") == str(2 * GIB)
        cli.run("server", "unrescue", "chg1")
        wait_idle(sdk, "chg1", "ACTIVE")  # type: ignore[arg-type]
        tcp_vmops.wait_console("chg1", r"VMOPS-HEARTBEAT 1\r?\n", count=6)

        # crash dump (microversion 2.17, negotiated by the client): an NMI
        cli.run("server", "dump", "create", "chg1")
        tcp_vmops.wait_console("chg1", r"NMI received for unknown reason")
        refused = cli.run("server", "resize", "confirm", "chg1", check=False)
        assert refused.returncode != 0 and "409" in refused.stderr
    finally:
        cli.run("server", "delete", "chg1", "--wait", check=False)
        cli.run("flavor", "delete", "osc.big", check=False)
