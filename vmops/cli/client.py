"""The CLI's client of the vmops API, over the state directory's unix socket.

When no service answers, it starts one in the background (``vmops serve``
detached, logging to the state directory) and waits for its socket.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmops import file_modes
from vmops.errors import ServiceUnavailable, VmopsError
from vmops.socket_paths import socket_address

PREFIX = "/v2.1"
START_TIMEOUT_S = 60.0
CONNECT_RETRY_DELAYS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
# A connection is used again for the thread's next request (HTTP/1.1
# keep-alive: no connect, and no new thread in the service) while it has
# been idle less than this and the service has not closed it; the service
# closes idle ones after api_request_timeout (30 s by default).
REUSE_IDLE_S = 20.0
# What a close by the service of a kept connection looks like when it comes
# as the request is sent (after the check that it is still open). Only a
# request that changes nothing is then sent again: another might have been
# done by a service that stopped before it answered.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
_SAFE_AGAIN = ("GET", "HEAD")


class ApiError(VmopsError):
    """An error answer from the service, carrying its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("vmops", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        for delay in CONNECT_RETRY_DELAYS:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                with socket_address(self._path) as address:
                    sock.connect(address)
            except BlockingIOError:  # the service's accept queue is full: a burst
                sock.close()
                time.sleep(delay)
                continue
            except BaseException:
                sock.close()
                raise
            self.sock = sock
            return
        raise ServiceUnavailable(reason=f"{self._path} stays busy: too many clients at once")


class Client:
    def __init__(self, state_dir: Path, autostart: bool = True, timeout: float = 300.0) -> None:
        self.state_dir = state_dir
        self.socket = state_dir / "vmops.sock"
        self.autostart = autostart
        self.timeout = timeout
        # The compute microversion asked for (None: 2.1, Nova's default).
        self.microversion: str | None = None
        self._kept = threading.local()  # each thread's open connection, if any

    # -- transport -----------------------------------------------------------
    def close(self) -> None:
        """Close this thread's kept connection, if any (the others close
        with their threads, or with the process)."""
        conn = getattr(self._kept, "conn", None)
        self._kept.conn = None
        if conn is not None:
            conn.close()

    def _connection(self, keep: bool) -> tuple[_UnixConnection, bool]:
        """A connection for one request, and whether it served one before.
        ``keep``: the caller reads the whole answer, so the connection may be
        kept for the thread's next request."""
        conn: _UnixConnection | None = getattr(self._kept, "conn", None) if keep else None
        if conn is not None:
            self._kept.conn = None
            fresh = time.monotonic() - self._kept.used < REUSE_IDLE_S
            if fresh and conn.sock is not None and not _closed_by_peer(conn.sock):
                return conn, True
            conn.close()
        return _UnixConnection(self.socket, self.timeout), False

    def _keep(self, conn: _UnixConnection) -> None:
        """``conn``'s answer has been read whole: the thread's next request
        may use it (if the service did not close it)."""
        self.close()
        if conn.sock is not None:
            self._kept.conn, self._kept.used = conn, time.monotonic()

    def _open(self, method: str, path: str, body: Any = None,
              keep: bool = False) -> tuple[http.client.HTTPResponse, _UnixConnection]:
        payload = json.dumps(body).encode() if body is not None else None
        # vmops' own keys (vmops:*) come only to clients that ask for them.
        headers = {"X-Vmops-Extra": "1"}
        if self.microversion:
            headers["OpenStack-API-Version"] = f"compute {self.microversion}"
        if payload is not None:
            headers["Content-Type"] = "application/json"
        # Paths are the compute API's, or absolute ("/network/...").
        absolute = path.startswith(("/network/", "/image/", "/identity/", "/volume/"))
        full = path if absolute else PREFIX + path
        started = False
        while True:
            conn, reused = self._connection(keep)
            try:
                conn.request(method, full, body=payload, headers=headers)
                return conn.getresponse(), conn
            except _STALE as exc:
                conn.close()
                if not reused or method not in _SAFE_AGAIN:
                    raise ServiceUnavailable(
                        reason=f"it closed the connection before answering {method} {full}, "
                        "which may or may not have been done: look, then try again"
                    ) from exc
                # The service closed the kept connection as it was used: again.
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                conn.close()
                if started or not self.autostart:
                    raise ServiceUnavailable(
                        reason=f"nothing listens on {self.socket} ({exc.strerror}); "
                        "start it with `vmops serve`") from None
                self.start_service()
                started = True
            except BaseException:
                conn.close()
                raise

    def request(self, method: str, path: str, body: Any = None) -> Any:
        resp, conn = self._open(method, path, body, keep=True)
        data = resp.read()
        self._keep(conn)
        if resp.status >= 400:
            raise ApiError(resp.status, _fault_message(data, resp.status))
        if resp.getheader("Content-Type", "").startswith("application/json") and data:
            return json.loads(data)
        return data

    def stream(self, path: str) -> Iterator[bytes]:
        resp, conn = self._open("GET", path)  # a connection of its own, not kept
        try:
            if resp.status >= 400:
                raise ApiError(resp.status, _fault_message(resp.read(), resp.status))
            while chunk := resp.read1(65536):
                yield chunk
        finally:
            conn.close()

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    # -- the service ---------------------------------------------------------
    def start_service(self) -> None:
        """Start `vmops serve` for this state directory, detached, and wait for it."""
        log_path = self.state_dir / "vmops.log"
        print(f"vmops: starting the service for {self.state_dir} (log: {log_path})",
              file=sys.stderr)
        env = {**os.environ, "VMOPS_STATE_DIR": str(self.state_dir)}
        # The state directory, the log and all the service makes are the
        # user's alone from the start (the service inherits the umask).
        with file_modes.private_umask():
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log, open(os.devnull, "rb") as null:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "vmops", "--state-dir", str(self.state_dir),
                     "serve"],
                    stdin=null, stdout=log, stderr=log, start_new_session=True, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.answers():
                return
            if proc.poll() is not None:
                raise ServiceUnavailable(
                    reason=f"the service exited at start (status {proc.returncode}): "
                    f"{_last_lines(log_path)}")
            time.sleep(0.1)
        raise ServiceUnavailable(reason=f"the service did not answer within {START_TIMEOUT_S:g}s;"
                                 f" see {log_path}")

    def answers(self) -> bool:
        """Whether a service answers on the state directory's socket now."""
        try:
            conn = _UnixConnection(self.socket, 2.0)
            conn.request("GET", PREFIX)
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the service has closed (or written unasked on) a kept
    connection: then it is readable before any request."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _fault_message(data: bytes, status: int) -> str:
    try:
        body = json.loads(data)
        (_, inner), = body.items()
        return str(inner["message"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"HTTP {status}: {data[:200].decode(errors='replace')}"


def _last_lines(path: Path, n: int = 5) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:])
