"""Fault injection: the service killed at each named step, then started again.

The service runs for real (``vmops serve``, its API, its console capture
processes) on the in-memory fake hypervisor (``libvirt_uri = "fake:///"``)
with user-mode NICs. ``VMOPS_FAULT_AT`` (vmops/compute/crash_points.py)
makes it die as if SIGKILLed at one step; it is started again without it,
and the instance must end in a state that says the truth, never in a task,
with nothing left behind once it is destroyed: no instance directory,
console socket, capture process, port or forward row.

What the fake cannot show: its domains live in the service's memory, so a
restart forgets them (as no real host does). An instance that was running
is therefore ERROR ("the domain is missing") after the restart rather than
ACTIVE; the functional tier is where a real QEMU outlives the service.
QEMU's serial socket is served by the test (``ConsoleSocket``), so spawn
gets as far as a running guest.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tools.soak.run import ConsoleSocket  # QEMU's serial socket, on the fake
from vmops import config, console
from vmops.cli.client import ApiError, Client
from vmops.compute import crash_points
from vmops.compute.catalog import Catalog
from vmops.console import shared
from vmops.errors import ServiceUnavailable
from vmops.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.faults]

START_TIMEOUT_S = 30.0
SETTINGS = 'libvirt_uri = "fake:///"\nnetwork_mode = "user"\naccel = "tcg"\n'


@dataclass
class Harness:
    state: Path
    proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None = None
    consoles: list[ConsoleSocket] = field(default_factory=list)

    @property
    def client(self) -> Client:
        return Client(self.state, autostart=False, timeout=60.0)

    def serve(self, fault_at: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("VMOPS_") or k == "VMOPS_ACCEL"}
        if fault_at:
            env[crash_points.ENV] = fault_at
        with open(self.state / "service.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vmops", "--state-dir", str(self.state), "serve"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the service exited: {self.log_tail()}"
            try:
                self.client.get("/flavors")
                return
            except ServiceUnavailable:
                time.sleep(0.05)
        raise AssertionError(f"the service did not answer: {self.log_tail()}")

    def killed_at(self, step: str) -> None:
        """Wait for the service to die at ``step``, as the hook makes it."""
        assert self.proc is not None
        assert self.proc.wait(timeout=60) == crash_points.EXIT_STATUS, self.log_tail()
        assert f"dying at {step}" in self.log_tail()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def log_tail(self) -> str:
        return (self.state / "service.log").read_text(errors="replace")[-3000:]

    def spawn(self, name: str = "web1", config_drive: bool = False) -> str:
        server = self.client.post("/servers", {"server": {
            "name": name, "imageRef": "base", "flavorRef": "m1.tiny",
            **({"config_drive": True} if config_drive else {})}})["server"]
        self.consoles.append(ConsoleSocket(self.state / "run" / f"{server['id']}.sock"))
        return str(server["id"])

    def recorded_id(self, name: str) -> str:
        """The id of ``name`` as the store has it (the service may have died
        before it could answer with it)."""
        store = Store(self.state / "vmops.db")
        try:
            return store.instance(name).id
        finally:
            store.close()

    def server(self, instance_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"/servers/{instance_id}")["server"])

    def wait_for(self, instance_id: str, status: str) -> dict[str, Any]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            server = self.server(instance_id)
            if server["status"] == status and server["OS-EXT-STS:task_state"] is None:
                return server
            time.sleep(0.05)
        raise AssertionError(f"not {status}: {server}; {self.log_tail()}")

    def capture_pid(self, instance_id: str) -> int | None:
        return console.capture_pid(self.state / "instances" / instance_id)


@pytest.fixture
def harness() -> Iterator[Harness]:
    # Short: the console socket path under it must fit a UNIX socket address.
    state = Path(tempfile.mkdtemp(prefix="vmf-", dir="/tmp"))
    (state / "vmops.toml").write_text(SETTINGS)
    base = state / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    store = Store(config.load(state, env={}).db_path)
    Catalog.from_settings(config.load(state, env={}), store).import_image(
        "base", str(base), background=False)
    store.close()
    h = Harness(state)
    yield h
    h.stop()
    for c in h.consoles:
        c.close()
    for pid_file in state.glob("instances/*/capture.pid"):  # a leak the test reported
        console.stop_capture(pid_file.parent)
    shutil.rmtree(state, ignore_errors=True)


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (an orphan nobody reaped, a zombie, is not running)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _nothing_left(h: Harness, instance_id: str, capture_pid: int | None) -> None:
    with pytest.raises(ApiError) as gone:
        h.server(instance_id)
    assert gone.value.status == 404
    assert not (h.state / "instances" / instance_id).exists()
    assert not (h.state / "run" / f"{instance_id}.sock").exists()
    if capture_pid is not None and _alive(capture_pid):  # it may stay for the service...
        assert shared.request(h.state / "run", {"op": "status"})["watching"] == []
    h.stop()
    # ... but not after it (a clean stop lets go of it, and waits for it).
    assert capture_pid is None or not _alive(capture_pid), "the console capture still runs"
    store = Store(h.state / "vmops.db")
    try:
        assert store.ports(instance_id) == [] and store.port_forwards(instance_id) == []
    finally:
        store.close()


def _truthful_after_restart(h: Harness, instance_id: str) -> dict[str, Any]:
    server = h.server(instance_id)
    assert server["OS-EXT-STS:task_state"] is None, server
    assert server["status"] in ("ACTIVE", "SHUTOFF", "ERROR"), server
    if server["status"] == "ERROR":
        assert server["fault"]["message"], server
    return server


@pytest.mark.parametrize("config_drive", [False, True])
@pytest.mark.parametrize("step", crash_points.SPAWN_STEPS)
def test_service_killed_during_spawn(harness: Harness, step: str, config_drive: bool) -> None:
    """With a config drive too: it is written on a thread of its own while
    the disks are made (95db823); what that thread wrote goes at restart."""
    h = harness
    h.serve(f"spawn:{step}")
    try:
        h.spawn(config_drive=config_drive)
    except (ServiceUnavailable, ConnectionError):
        assert step == "after-record", f"died before the spawn was answered: {h.log_tail()}"
    h.killed_at(f"spawn:{step}")
    instance_id = h.recorded_id("web1")
    capture = h.capture_pid(instance_id)
    if step != "after-record":
        assert capture is not None, "the capture process should outlive the service"
    if config_drive and step not in ("after-record", "after-capture"):
        assert (h.state / "instances" / instance_id / "config.iso").exists()
    h.serve()
    server = _truthful_after_restart(h, instance_id)
    assert server["status"] == "ERROR" and "interrupted" in server["fault"]["message"]
    # Rolled back at restart: the files and the capture go then, not at destroy.
    assert not (h.state / "instances" / instance_id).exists()
    assert capture is None or not _alive(capture)
    h.client.delete(f"/servers/{instance_id}")
    _nothing_left(h, instance_id, capture)


@pytest.mark.parametrize("step", crash_points.DESTROY_STEPS)
def test_service_killed_during_destroy(harness: Harness, step: str) -> None:
    h = harness
    h.serve(f"destroy:{step}")
    instance_id = h.spawn()
    h.wait_for(instance_id, "ACTIVE")
    capture = h.capture_pid(instance_id)
    assert capture is not None
    with pytest.raises((ConnectionError, ServiceUnavailable)):
        h.client.delete(f"/servers/{instance_id}")
    h.killed_at(f"destroy:{step}")
    h.serve()  # recovery finishes the destroy
    _nothing_left(h, instance_id, capture)


ACTIONS: dict[str, Callable[[Harness, str], object]] = {
    "stop": lambda h, i: h.client.post(f"/servers/{i}/action", {"os-stop": None}),
    "suspend": lambda h, i: h.client.post(f"/servers/{i}/action", {"suspend": None}),
}


@pytest.mark.parametrize("step", crash_points.ACTION_STEPS)
@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_service_killed_during_an_action(harness: Harness, action: str, step: str) -> None:
    h = harness
    h.serve(f"{action}:{step}")
    instance_id = h.spawn()
    h.wait_for(instance_id, "ACTIVE")
    capture = h.capture_pid(instance_id)
    # Answered at once (the work goes on in the service), unless it dies first.
    with contextlib.suppress(ConnectionError, ServiceUnavailable):
        ACTIONS[action](h, instance_id)
    h.killed_at(f"{action}:{step}")
    h.serve()
    _truthful_after_restart(h, instance_id)  # ERROR here: the fake forgot the domain
    h.client.delete(f"/servers/{instance_id}")
    _nothing_left(h, instance_id, capture)


# -- resize, rescue: an interrupted change is rolled back or finished ---------------------
def _act(h: Harness, instance_id: str, body: dict[str, Any]) -> None:
    h.client.post(f"/servers/{instance_id}/action", body)


RESIZE = {"resize": {"flavorRef": "m1.small"}}
# verb -> (what brings the instance to where the verb starts, the verb's body)
CHANGES: dict[str, tuple[tuple[tuple[dict[str, Any], str], ...], dict[str, Any]]] = {
    "resize": ((), RESIZE),
    "revert-resize": (((RESIZE, "VERIFY_RESIZE"),), {"revertResize": None}),
    "confirm-resize": (((RESIZE, "VERIFY_RESIZE"),), {"confirmResize": None}),
    "rescue": ((), {"rescue": None}),
    "unrescue": ((({"rescue": None}, "RESCUE"),), {"unrescue": None}),
}


@pytest.mark.parametrize(("verb", "step"), [(verb, step) for verb in CHANGES
                                            for step in crash_points.steps_of(verb)])
def test_service_killed_during_a_resize_or_rescue(harness: Harness, verb: str,
                                                  step: str) -> None:
    """Rolled back (resize, revert: to the old flavor and disks; rescue: to
    the instance's own disks) or finished (confirm, unrescue) at restart."""
    h = harness
    h.serve(f"{verb}:{step}")
    instance_id = h.spawn()
    h.wait_for(instance_id, "ACTIVE")
    root = h.state / "instances" / instance_id / "root.qcow2"
    before = _virtual_size(root)
    capture = h.capture_pid(instance_id)
    prepare, body = CHANGES[verb]
    for first, status in prepare:
        _act(h, instance_id, first)
        h.wait_for(instance_id, status)
    with contextlib.suppress(ConnectionError, ServiceUnavailable):
        _act(h, instance_id, body)
    h.killed_at(f"{verb}:{step}")
    h.serve()
    server = _truthful_after_restart(h, instance_id)
    folder = h.state / "instances" / instance_id
    assert not (folder / "resize-old").exists() and not (folder / "rescue").exists()
    if verb == "confirm-resize":  # finished: the new disk stays (the fake forgot the domain)
        assert _virtual_size(root) > before
    else:  # rolled back (resize, revert) or the instance's own disks again (rescue)
        # A rollback defines the domain again (and boots it), so the fake has
        # it; one with nothing to undo leaves the fake's forgetting to show.
        assert server["status"] == "ACTIVE" or "missing" in server["fault"]["message"], server
        assert _virtual_size(root) == before
        assert server["flavor"]["id"] == "1"  # m1.tiny, as spawned
    h.client.delete(f"/servers/{instance_id}")
    _nothing_left(h, instance_id, capture)


def _virtual_size(path: Path) -> int:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return int(json.loads(out)["virtual-size"])
