"""A killed console capture process: the next one marks the gap in the log
(see also test_console_capture's SIGKILL test), and compute restarts it for
instances whose QEMU runs (the service calls ``restart_dead_captures`` every
few seconds)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.test_compute import env as env  # noqa: F401 - the fixture, shared
from tests.integration.test_console_capture import BOUND, Console
from tests.integration.test_console_capture import consoles as consoles  # noqa: F401
from vmops.console import read_log, stop_capture
from vmops.console.fake import FakeConsole
from vmops.console.layout import LogFiles
from vmops.service import build

pytestmark = pytest.mark.integration
MARKER = b"[vmops: the console capture was restarted at "


def test_a_clean_stop_leaves_no_marker(consoles: Callable[[], Console]) -> None:
    console = consoles()
    console.start()
    stop_capture(console.log_dir, timeout=BOUND)
    console.start()
    stop_capture(console.log_dir, timeout=BOUND)
    assert not LogFiles(console.log_dir).pid.exists()
    assert MARKER not in read_log(console.log_dir)


def test_compute_restarts_dead_captures_of_running_instances(env: dict[str, Any]) -> None:
    capture = FakeConsole()
    c = build(env["settings"], hypervisor=env["hv"], store=env["store"], capture=capture).compute
    running = c.create(_request("web1"), background=False)
    stopped = c.create(_request("web2"), background=False)
    c.stop("web2", hard=True)
    assert c.restart_dead_captures() == []  # nothing died

    capture.running.clear()  # both captures killed
    starts = capture.starts
    assert c.restart_dead_captures() == ["web1"]  # web2's QEMU is off: nothing to read
    assert capture.starts == starts + 1
    assert c.instance_dir(running) in capture.running
    assert c.instance_dir(stopped) not in capture.running
    assert c.tasks.current(running.id) is None


def test_busy_instances_are_left_to_their_operation(env: dict[str, Any]) -> None:
    capture = FakeConsole()
    c = build(env["settings"], hypervisor=env["hv"], store=env["store"], capture=capture).compute
    inst = c.create(_request("web1"), background=False)
    capture.running.clear()
    with c.tasks.hold(inst.id, inst.name, "deleting"):
        assert c.restart_dead_captures() == []
    assert c.restart_dead_captures() == ["web1"]


def _request(name: str) -> Any:
    from vmops.compute.manager import SpawnRequest

    return SpawnRequest(name=name, image="base", flavor="m1.tiny")


