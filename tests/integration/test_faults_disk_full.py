"""Fault injection: the state directory's filesystem full (issue #15).

The state directory is a small tmpfs mounted for the test (root only: the
tests skip, saying so, where it cannot be mounted), served by a real
``vmops serve`` on ``libvirt_uri = "fake:///"``: the image cache, the
instances' disks and config drives, the console logs and ``vmops.db`` are
real files on it even though no guest runs. A ballast file fills it to a
chosen number of free bytes; then an image import, a spawn (over a range of
free space, so that it runs out in the record, the disks or the config
drive) or a snapshot is tried. Each time the same three things are checked
as in the other fault tests: the service keeps answering; the instance ends
ACTIVE, SHUTOFF or ERROR with a reason, never in a task; nothing is left of
what failed (no instance directory, disk or config drive, no image file or
import temp file in the cache). Then the ballast goes and the next
operations must work, with nothing corrupted: ``PRAGMA integrity_check`` on
vmops.db and ``qemu-img check`` on every disk and cached image.

What needs a real guest: a guest writing its console while the disk is full
(tests/functional/test_console.py); here no guest writes anything.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_faults_service_killed import (
    SETTINGS,
    START_TIMEOUT_S,
    Harness,
    _alive,
)
from tools.soak.run import ConsoleSocket
from vmops import config, console
from vmops.cli.client import ApiError

pytestmark = [pytest.mark.integration, pytest.mark.faults]

TMPFS_SIZE = 48 * 1024 * 1024
BALLAST = "ballast"
# No reserve: the tests fill the disk behind vmops' back, as another program
# would, so the real ENOSPC paths run (the reserve has its own tests).
FULL_SETTINGS = SETTINGS + "image_import_reserve_bytes = 0\n"
# The image spawns use: random bytes, so the cache holds them all and a
# snapshot (a flattened copy) needs this much room again.
IMAGE_DATA = 4 * 1024 * 1024


class FullHarness(Harness):
    """A Harness whose state directory is a tmpfs that ``fill`` fills."""

    def log_tail(self) -> str:
        return (self.state / "vmops.log").read_text(errors="replace")[-6000:]

    def free_bytes(self) -> int:
        st = os.statvfs(self.state)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int) -> None:
        """Leave about ``leave`` bytes free (tmpfs counts in 4 KiB pages)."""
        ballast = self.state / BALLAST
        ballast.unlink(missing_ok=True)
        with ballast.open("wb") as f:
            for _ in range(100):  # something else may be writing (a console log)
                size = self.free_bytes() - leave
                if size <= 0:
                    return
                try:
                    os.posix_fallocate(f.fileno(), 0, size)
                    return
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
            raise AssertionError("could not fill the file system")

    def empty(self) -> None:
        (self.state / BALLAST).unlink(missing_ok=True)

    def answers(self) -> None:
        """The service is alive and answers."""
        assert self.proc is not None and self.proc.poll() is None, self.log_tail()
        self.client.get("/flavors")

    def settled(self, instance_id: str) -> dict[str, Any]:
        """Wait until ``instance_id`` is out of its task; it must say the truth."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            server = self.server(instance_id)
            if server["OS-EXT-STS:task_state"] is None and server["status"] != "BUILD":
                break
            assert time.monotonic() < deadline, f"stuck: {server}; {self.log_tail()}"
            time.sleep(0.05)
        assert server["status"] in ("ACTIVE", "SHUTOFF", "ERROR"), server
        if server["status"] == "ERROR":
            assert server["fault"]["message"], server
        return server

    def image(self, image_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"/images/{image_id}")["image"])

    def image_settled(self, image_id: str) -> dict[str, Any] | None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                image = self.image(image_id)
            except ApiError as exc:
                assert exc.status == 404
                return None
            if image["status"] not in ("SAVING", "QUEUED"):
                return image
            assert time.monotonic() < deadline, f"stuck: {image}; {self.log_tail()}"
            time.sleep(0.05)


def _mount_tmpfs(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the state directory needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700",
                           "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def _random_image(path: Path, data: int, fmt: str = "qcow2") -> None:
    raw = path.with_suffix(".raw")
    raw.write_bytes(os.urandom(data))
    if fmt == "raw":
        raw.rename(path)
        return
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", fmt, str(raw), str(path)],
                   check=True)
    raw.unlink()


@pytest.fixture
def sources() -> Iterator[Path]:
    """Image files to import, off the tmpfs."""
    d = Path(tempfile.mkdtemp(prefix="vmops-full-src-"))
    _random_image(d / "base.qcow2", IMAGE_DATA)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def full(sources: Path) -> Iterator[FullHarness]:
    state = Path(tempfile.mkdtemp(prefix="vmf-", dir="/tmp"))  # short: socket paths
    _mount_tmpfs(state)
    h = FullHarness(state)
    try:
        (state / "vmops.toml").write_text(FULL_SETTINGS)
        h.serve()
        image = h.client.post("/images", {"image": {
            "name": "base", "source": str(sources / "base.qcow2")}})["image"]
        base = h.image_settled(image["id"]) or {}
        assert base.get("status") == "ACTIVE", base.get("vmops:fault")
        yield h
    finally:
        try:
            h.stop()
        except subprocess.TimeoutExpired:  # stuck: gone before the umount, or it fails
            assert h.proc is not None
            h.proc.kill()
            h.proc.wait()
        for c in h.consoles:
            c.close()
        for pid_file in state.glob("instances/*/capture.pid"):
            console.stop_capture(pid_file.parent)
        subprocess.run(["umount", str(state)], check=False)
        shutil.rmtree(state, ignore_errors=True)


# -- what must hold after each fault -------------------------------------------------------
def _cache_files(h: FullHarness) -> set[str]:
    """The image cache's files, temp files included."""
    return {p.name for p in (h.state / "images").iterdir() if p.is_file()}


def _not_corrupted(h: FullHarness) -> None:
    """vmops.db passes SQLite's integrity check; every disk and cached image
    passes qemu-img check (raw ones have nothing to check but must open)."""
    db = sqlite3.connect(f"file:{h.state / 'vmops.db'}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()
    images = [p for p in (h.state / "images").iterdir() if p.is_file()]
    disks = [p for p in (h.state / "instances").glob("*/*") if p.suffix == ".qcow2"]
    for path in images + disks:
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(path)],
            check=True, capture_output=True, text=True).stdout)
        if info["format"] == "qcow2":
            subprocess.run(["qemu-img", "check", "-U", "-q", str(path)], check=True)


def _spawn(h: FullHarness, name: str) -> str | None:
    """Spawn with a config drive and user data; None if the API refused it."""
    try:
        server = h.client.post("/servers", {"server": {
            "name": name, "imageRef": "base", "flavorRef": "m1.tiny", "config_drive": True,
            "user_data": base64.b64encode(os.urandom(32 * 1024)).decode()}})["server"]
    except ApiError as exc:
        assert exc.status >= 400 and str(exc), exc
        return None
    with contextlib.suppress(OSError):  # the socket needs no data blocks, only an inode
        h.consoles.append(ConsoleSocket(h.state / "run" / f"{server['id']}.sock"))
    return str(server["id"])


def _gone(h: FullHarness, instance_id: str) -> None:
    with pytest.raises(ApiError) as gone:
        h.server(instance_id)
    assert gone.value.status == 404
    assert not (h.state / "instances" / instance_id).exists()
    assert not (h.state / "run" / f"{instance_id}.sock").exists()


# -- import ---------------------------------------------------------------------------------
MiB = 1024 * 1024
IMPORTS = {
    # Over the free space from the start: refused before a byte is copied.
    "larger-than-free": ("qcow2", 16 * MiB, 4 * MiB, "over the limit of"),
    # Fits as downloaded, but the conversion to qcow2 (a second copy) does not.
    "conversion-runs-out": ("vmdk", 12 * MiB, 16 * MiB, "No space left on device"),
}


@pytest.mark.parametrize("case", sorted(IMPORTS))
def test_an_import_into_a_full_cache(full: FullHarness, sources: Path, case: str) -> None:
    h = full
    fmt, size, leave, reason = IMPORTS[case]
    big = sources / f"big.{fmt}"
    _random_image(big, size, fmt)
    before = _cache_files(h)
    h.fill(leave)
    image = h.client.post("/images", {"image": {"name": "big", "source": str(big)}})["image"]
    failed = h.image_settled(image["id"])
    assert failed is not None and failed["status"] == "ERROR", failed
    assert reason in failed["vmops:fault"], failed
    h.answers()
    assert _cache_files(h) == before, "a half-imported image was left in the cache"
    assert not list((h.state / "images" / ".locks").glob("*.tmp"))
    h.client.delete(f"/images/{image['id']}")
    h.empty()
    again = h.client.post("/images", {"image": {"name": "big", "source": str(big)}})["image"]
    assert (h.image_settled(again["id"]) or {}).get("status") == "ACTIVE", h.log_tail()
    _not_corrupted(h)


# -- snapshot -------------------------------------------------------------------------------
def _snapshot(h: FullHarness, instance_id: str, name: str) -> dict[str, Any] | str:
    """createImage, then wait for the instance's task to end: the image, or
    "refused" (507: no room for its record) or "gone" (a failed snapshot
    deletes its image)."""
    try:
        h.client.post(f"/servers/{instance_id}/action", {"createImage": {"name": name}})
    except ApiError as exc:
        assert exc.status == 507 and "no space left" in str(exc), exc
        return "refused"
    server = h.settled(instance_id)
    images = [i for i in h.client.get("/images")["images"] if i["name"] == name]
    image = h.image_settled(images[0]["id"]) if images else None
    if image is None:
        assert "no space left" in server["vmops:fault"].lower(), server["vmops:fault"]
        return "gone"
    return image


def test_a_snapshot_on_a_full_disk(full: FullHarness) -> None:
    """A snapshot copies the root disk whole into the cache: with too little
    room it fails, the guest runs on (unpaused) and the cache keeps no part
    of the copy."""
    h = full
    instance_id = _spawn(h, "web1")
    assert instance_id is not None and h.settled(instance_id)["status"] == "ACTIVE"
    before = _cache_files(h)
    outcomes: dict[int, str] = {}
    for step in range(6):
        leave = IMAGE_DATA * step // 4
        h.fill(leave)
        image = _snapshot(h, instance_id, f"snap{step}")
        h.answers()
        server = h.settled(instance_id)
        assert server["status"] == "ACTIVE", server  # unpaused, whatever happened
        outcomes[leave] = image if isinstance(image, str) else image["status"]
        h.empty()
        if isinstance(image, str) or image["status"] != "ACTIVE":
            assert _cache_files(h) == before, "a failed snapshot left a file in the cache"
        if not isinstance(image, str):
            assert image["status"] == "ACTIVE", image  # a failed one is deleted
            h.client.delete(f"/images/{image['id']}")
    assert "ACTIVE" in outcomes.values(), outcomes
    assert "gone" in outcomes.values(), f"the copy never ran out of room: {outcomes}"
    image = _snapshot(h, instance_id, "after")
    assert not isinstance(image, str) and image["status"] == "ACTIVE", image
    _not_corrupted(h)
    h.client.delete(f"/servers/{instance_id}")
    _gone(h, instance_id)


# -- the console log ------------------------------------------------------------------------


def _size(log: Path) -> int:
    """The log's size; 0 while a rotation has moved it and not made it again."""
    try:
        return log.stat().st_size
    except FileNotFoundError:
        return 0


def _written(logs: tuple[Path, ...]) -> tuple[tuple[int, int] | None, ...]:
    """What the logs look like now: (mtime, size) each, None for one missing."""
    looks: list[tuple[int, int] | None] = []
    for log in logs:
        try:
            st = log.stat()
        except FileNotFoundError:
            looks.append(None)
        else:
            looks.append((st.st_mtime_ns, st.st_size))
    return tuple(looks)
class FloodingConsole:
    """Serves an instance's console socket as a guest printing without end
    would: every connection is sent lines until the test stops."""

    LINE = b"flood " + b"x" * 120 + b"\n"

    def __init__(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.listener.settimeout(0.1)
        self.stopped = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn = self.listener.accept()[0]
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._flood, args=(conn,), daemon=True).start()

    def _flood(self, conn: socket.socket) -> None:
        chunk = self.LINE * 512
        with conn:
            conn.settimeout(0.5)
            while not self.stopped.is_set():
                try:
                    conn.sendall(chunk)
                    self.sent += len(chunk)
                except TimeoutError:
                    continue
                except OSError:
                    return

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.listener.close()


def _wait_until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_console_flood_on_a_full_disk(full: FullHarness) -> None:
    """The capture process keeps reading (a stalled serial port can hang a
    guest's kernel) and drops what it cannot write; the logs stay within
    their cap; the service answers; once there is room the log goes on."""
    h = full
    instance_id = _spawn(h, "web1")
    assert instance_id is not None and h.settled(instance_id)["status"] == "ACTIVE"
    capture = h.capture_pid(instance_id)
    assert capture is not None
    h.consoles.pop().close()
    flood = FloodingConsole(h.state / "run" / f"{instance_id}.sock")
    try:
        folder = h.state / "instances" / instance_id
        cap = config.load(h.state, env={}).console_log_max_bytes
        logs = (folder / "console.log", folder / "console.log.0")
        _wait_until("the flood never reached the log", lambda: logs[1].exists())
        h.fill(0)
        full_at = flood.sent
        _wait_until("the capture stopped reading on a full disk",
                    lambda: flood.sent > full_at + 4 * cap)
        assert _alive(capture), "the capture process died of the full disk"
        h.answers()
        assert h.settled(instance_id)["status"] == "ACTIVE"
        # Rotation renames the current log before it opens a new one: a
        # look in between finds none (on a full disk, until there is room).
        for log in logs:
            assert _size(log) <= cap
        h.client.post(f"/servers/{instance_id}/action", {"os-getConsoleOutput": {"length": 5}})
        h.empty()
        written = _written(logs)
        _wait_until("the log did not go on once there was room",
                    lambda: _written(logs) != written)
        for log in logs:
            assert _size(log) <= cap
    finally:
        flood.close()
    assert h.capture_pid(instance_id) == capture
    _not_corrupted(h)
    h.client.delete(f"/servers/{instance_id}")
    _gone(h, instance_id)
