"""The engine process: one per state directory.

It holds the state directory's lock, owns the libvirt connection, reconciles
records with the hypervisor, serves the API and runs the periodic tasks.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from vmops import console, doctor, file_modes
from vmops.api.routes import Routes
from vmops.api.server import Limits, serve
from vmops.compute import crash_points, retention
from vmops.compute.catalog import Catalog
from vmops.compute.manager import Compute
from vmops.config import Settings
from vmops.console.api import ConsoleCapture
from vmops.errors import ConfigError, ServiceAlreadyRunning, VmopsError
from vmops.hypervisor import open_hypervisor
from vmops.hypervisor.base import Accel, Check, Hypervisor
from vmops.hypervisor.libvirt import embed_root
from vmops.identity import Identity
from vmops.identity.authenticator import IdentityAuthenticator
from vmops.identity.bootstrap import ensure_admin_password
from vmops.network.checks import network_checks
from vmops.network.manager import Network
from vmops.network.model import NicMode
from vmops.store import RECORDS_RESERVE_BYTES, Store
from vmops.volumes.manager import Volumes

log = logging.getLogger("vmops")

LOCK_FILE = "vmops.lock"
# How long a refused process waits for the holder's pid: the holder writes it
# just after it takes the lock, so one started at the same moment can look
# in between and find the file still empty.
HOLDER_PID_WAIT_S = 2.0
LOG_FILE = "vmops.log"
# How often the service looks for dead console capture processes. QEMU drops
# serial output while no capture is connected, so this bounds the gap in the
# log to about 2 s; each look reads one pid file and /proc entry per running
# instance, cheap enough to need no watcher thread per instance.
CAPTURE_CHECK_INTERVAL = 2.0
# How long Engine.stop waits for its threads, in all: each ends as soon as it
# is between two looks; one half-way through a look (an iSCSI portal's probe,
# an image prune) may take seconds.
STOP_TIMEOUT_S = 10.0


def take_lock(state_dir: Path) -> IO[str]:
    """Hold the state directory; a second service is refused with the holder's pid."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fh = (state_dir / LOCK_FILE).open("a+")
    except OSError as exc:  # another user's state directory, a file in the way, ...
        raise ConfigError(option="state_dir", value=str(state_dir),
                          allowed=f"a directory uid {os.geteuid()} can make and write in "
                                  f"({exc.strerror}: {exc.filename})") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        pid = _holder_pid(fh)
        fh.close()
        raise ServiceAlreadyRunning(pid=pid, state_dir=state_dir) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def _holder_pid(fh: IO[str]) -> str:
    deadline = time.monotonic() + HOLDER_PID_WAIT_S
    while True:
        fh.seek(0)
        pid = fh.read().strip()
        if pid or time.monotonic() >= deadline:
            return pid or "?"
        time.sleep(0.02)


def setup_logging(state_dir: Path, foreground: bool) -> None:
    handlers: list[logging.Handler] = [logging.FileHandler(state_dir / LOG_FILE)]
    # Started by the CLI, stderr already is the log file: do not write twice.
    if foreground and sys.stderr.isatty():
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def tighten_state_dir(state_dir: Path, libvirt_root: Path | None = None) -> None:
    """Take group/other access away from what an older vmops left open (once)."""
    changed, failed = file_modes.tighten(file_modes.loose_files(state_dir, libvirt_root))
    if changed:
        log.warning("%d path(s) in %s could be read by other users; made private (0700 "
                    "directories, 0600 files, 0400 images): %s", len(changed), state_dir,
                    ", ".join(str(c) for c in changed[:10])
                    + (f" and {len(changed) - 10} more" if len(changed) > 10 else ""))
    for problem in failed:
        log.error("could not make private: %s", problem)


def open_network(s: Settings, store: Store) -> Network:
    """The vmops network, set up (bridge, dnsmasq, rules) when bridge mode
    is on. If that fails the service still starts, with user-mode NICs only,
    and says why; ``vmops doctor`` tells what to fix."""
    wanted = s.effective_network_mode == NicMode.BRIDGE
    network = Network(store, s.state_dir, s.network_bridge, s.network_subnet,
                      s.network_host_access, enabled=wanted)
    if not wanted:
        return network
    try:
        network.setup()
    except VmopsError as exc:
        log.error("the vmops network could not be set up, so new instances get user-mode "
                  "NICs only: %s", exc.message)
        network.disable(exc.message)
    return network


def network_health(s: Settings, network: Network) -> list[Check]:
    """Doctor's network checks, after set-up (which turns forwarding on)."""
    cidr = str(network.plan.cidr) if network.enabled else s.network_subnet
    found = network_checks(s.effective_network_mode, s.network_bridge, cidr)
    if s.effective_network_mode == NicMode.BRIDGE and not network.enabled:
        found.insert(0, Check(name="vmops network", ok=False, required=False,
                              detail=f"not set up ({network.disabled_reason}): new instances "
                                     "get user-mode NICs only",
                              advice="fix what the checks below say, then restart the service"))
    return found


def report_unrecorded(hv: Hypervisor, orphans: list[str], database: Path,
                      started_empty: bool) -> Check:
    """Say loudly when the service starts with an empty database next to domains
    vmops made (their records are lost, e.g. a 0-byte vmops.db); doctor's check."""
    names = [_domain_label(hv, uuid) for uuid in orphans]
    if names and started_empty:
        log.warning(
            "%s was empty or missing, so vmops starts with no instance records, but %d "
            "domain(s) carry vmops' mark: %s. Their records are lost; vmops will not manage "
            "or remove them. If this is not a new install, stop the service and restore "
            "%s from a copy (e.g. a .bak made at an upgrade)",
            database, len(names), ", ".join(names), database.name)
    return doctor.unrecorded_domains(names, database, started_empty)


def _domain_label(hv: Hypervisor, uuid: str) -> str:
    try:
        return f"{hv.info(uuid).name} ({uuid})"
    except VmopsError:
        return uuid


# -- the composition root ---------------------------------------------------------
@dataclasses.dataclass
class Engine:
    """vmops' parts for one state directory, wired together by :func:`build`,
    and the work they do on their own once started (:meth:`start`, :meth:`stop`)."""

    settings: Settings
    store: Store
    hypervisor: Hypervisor
    compute: Compute
    catalog: Catalog
    network: Network | None
    volumes: Volumes
    identity: Identity
    # Set by stop(): every thread the engine started waits on it.
    _stopping: threading.Event = dataclasses.field(default_factory=threading.Event,
                                                   init=False, repr=False)
    _threads: list[threading.Thread] = dataclasses.field(default_factory=list, init=False,
                                                         repr=False)

    def routes(self, checks: Callable[[], list[dict[str, Any]]] = lambda: [],
               identity: Identity | None = None) -> Routes:
        """The HTTP API's routes over these parts (``checks``: doctor's, for
        /health; ``identity``: this engine's unless given)."""
        return Routes(self.compute, self.catalog, checks, identity=identity or self.identity,
                      volumes=self.volumes)

    def start(self) -> list[Check]:
        """What the service does before it serves, in this order: reconcile
        the records with the hypervisor (:meth:`recover`), watch the volumes
        (:meth:`watch_volumes`), settle unfinished imports, run slow actions
        in the background (the API answers 202), watch the vmops network,
        make sure the admin has a password, and start the periodic work
        (dead console captures, the image cache's prune, the retention of
        destroyed servers' records). :meth:`stop` ends every thread it
        started. Returns what doctor should also say (domains vmops made
        that have no record). If a step fails, what the steps before it
        started is stopped before the error is raised."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> list[Check]:
        s = self.settings
        orphans = self.recover()
        self.watch_volumes()
        found = [report_unrecorded(self.hypervisor, orphans, s.db_path,
                                   self.store.started_empty)]
        self.catalog.recover_imports()
        self.compute.background_actions = True
        if self.network is not None:
            self._keep(self.network.start_watcher())
        ensure_admin_password(self.identity.directory, s.admin_password_file,
                              s.identity_admin_password)
        self._keep(self._thread(self._capture_watch_loop, "capture-watch"))
        if s.image_cache_prune_interval:
            self._keep(self._thread(self._prune_loop, "prune"))
        if s.deleted_rows_max_age_days:
            self._keep(self._thread(self._retention_loop, "retention"))
        return found

    def recover(self) -> list[str]:
        """Reconcile the instances' records with the hypervisor, then the
        volumes' (after: destroys it finished release theirs). Returns the
        uuids of vmops' domains that have no record (left alone)."""
        orphans = self.compute.recover()
        self.volumes.reconcile()
        return orphans

    def watch_volumes(self) -> None:
        """A disk QEMU cannot read or write puts its volume in error, and so
        does an iSCSI portal gone silent (until :meth:`stop`)."""
        self.volumes.watch()
        self._keep(self.volumes.watch_targets(self._stopping))

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> list[str]:
        """End the threads :meth:`start` and :meth:`watch_volumes` started,
        waiting at most ``timeout`` seconds in all (one may be half-way
        through a look that takes seconds). Returns the names of those still
        running then, which are logged; they are daemon threads."""
        self._stopping.set()
        if self.network is not None:
            self.network.stop()  # dnsmasq and the rules stay: guests keep their network
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        running = [t.name for t in self._threads if t.is_alive()]
        if running:
            log.warning("still running %.0f s after the stop was asked: %s", timeout,
                        ", ".join(running))
        self._threads = [t for t in self._threads if t.is_alive()]
        return running

    def _keep(self, thread: threading.Thread | None) -> None:
        if thread is not None:
            self._threads.append(thread)

    @staticmethod
    def _thread(target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def _capture_watch_loop(self) -> None:
        """Restart killed console capture processes within seconds, not at
        the next service start: the guest's output is lost while none runs."""
        while not self._stopping.wait(CAPTURE_CHECK_INTERVAL):
            try:
                self.compute.restart_dead_captures()
            except Exception:  # noqa: BLE001 - the watch must not stop the service
                log.exception("console capture watch failed")

    def _retention_loop(self) -> None:
        """Prune the records of long-destroyed servers: now, then hourly."""
        while True:
            try:
                retention.prune_old(self.store, self.settings.deleted_rows_max_age_days)
            except Exception:  # noqa: BLE001 - a failed prune must not stop the service
                log.exception("pruning the records of destroyed servers failed")
            if self._stopping.wait(retention.PRUNE_INTERVAL_S):
                return

    def _prune_loop(self) -> None:
        while not self._stopping.wait(self.settings.image_cache_prune_interval):
            try:
                removed = self.catalog.prune_images(self.settings.image_cache_max_age)
                if removed:
                    log.info("pruned unused images: %s", ", ".join(removed))
            except Exception:  # noqa: BLE001 - a failed prune must not stop the service
                log.exception("image prune failed")


def build(settings: Settings, *, hypervisor: Hypervisor, accel: Accel = Accel.TCG,
          capture: ConsoleCapture = console, store: Store | None = None,
          network: Callable[[Settings, Store], Network] | None = None,
          host_problems: Callable[[], list[str]] = lambda: []) -> Engine:
    """The one place vmops' parts are wired: the service, Nova's driver, the
    tests and bench all call it. ``hypervisor`` is connected or not, as the
    caller chooses; ``store`` defaults to ``settings.db_path``; ``network``
    makes the vmops network (the service's :func:`open_network`), none
    otherwise (user-mode NICs only); ``capture`` is the console capture
    (the vmops.console module, or a fake where no QEMU runs). Nothing runs
    until :meth:`Engine.start` (or, for Nova's driver, :meth:`Engine.recover`
    and :meth:`Engine.watch_volumes`)."""
    s = settings
    store = store if store is not None else Store(s.db_path)
    made_network = network(s, store) if network is not None else None
    compute = Compute(s, store, hypervisor, accel, host_problems,
                      capture=capture, network=made_network)
    identity = Identity(store, s.identity_token_ttl, s.api_token, s.identity_lockout_failures,
                        admin_password_file=s.admin_password_file)
    return Engine(settings=s, store=store, hypervisor=hypervisor, compute=compute,
                  catalog=Catalog.from_settings(s, store), network=made_network,
                  volumes=Volumes(compute), identity=identity)


@dataclasses.dataclass(frozen=True)
class Host:
    """The hypervisor, connected, and what doctor found about the host."""

    hypervisor: Hypervisor
    accel: Accel
    checks: list[Check]

    def problems(self) -> list[str]:
        """The required checks that failed: spawns are refused with these."""
        return [f"{c.name}: {c.detail} ({c.advice})" for c in self.checks
                if c.required and not c.ok]


def open_host(settings: Settings) -> Host:
    """Make the state directory's folders, connect to the hypervisor of
    ``settings`` and run doctor's checks on it (the service and Nova's driver)."""
    s = settings
    for d in (s.images_dir, s.instances_dir, s.run_dir):
        d.mkdir(parents=True, exist_ok=True)
    accel = doctor.resolve_accel(s.accel)
    log.info("acceleration: %s (setting: %s)", accel.value, s.accel)
    hv = open_hypervisor(s.effective_libvirt_uri, accel)
    hv.connect()
    checks = doctor.run_checks(s.state_dir, s.effective_libvirt_uri, s.accel,
                               hypervisor=hv, database=s.db_path)
    return Host(hypervisor=hv, accel=accel, checks=checks)


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self._servers: list[Any] = []
        self.engine: Engine | None = None

    def run(self, foreground: bool = True) -> None:
        s = self.settings
        # Everything this process and its children (libvirt, QEMU, capture
        # processes) create is the user's alone: see vmops/file_modes.py.
        os.umask(file_modes.PRIVATE_UMASK)
        lock = take_lock(s.state_dir)
        setup_logging(s.state_dir, foreground)
        try:
            tighten_state_dir(s.state_dir, embed_root(s.effective_libvirt_uri))
            self._start()
            log.info("vmops serving %s on %s%s", s.state_dir, s.api_socket,
                     f" and {s.listen}" if s.listen else "")
            self._stop.wait()
        finally:
            self._shutdown()
            crash_points.pause_point("serve", "after-shutdown")
            lock.close()

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def _start(self) -> None:
        s = self.settings
        host = open_host(s)
        self.hv = host.hypervisor
        checks = host.checks
        problems = host.problems()
        for problem in problems:
            log.error("host check failed: %s", problem)
        store = Store(s.db_path, reserve_bytes=RECORDS_RESERVE_BYTES)
        try:
            engine = self.engine = build(
                s, hypervisor=self.hv, accel=host.accel, host_problems=lambda: problems,
                store=store, network=open_network)
        except BaseException:
            store.close()  # _shutdown closes the engine's: there is none
            raise
        if engine.network is not None:
            checks.extend(network_health(s, engine.network))
        checks.extend(engine.start())
        routes = engine.routes(lambda: [dataclasses.asdict(c) for c in checks])
        limits = Limits(request_timeout=s.api_request_timeout, body_timeout=s.api_body_timeout,
                        max_connections=s.api_max_connections,
                        max_connections_per_client=s.api_max_connections_per_client,
                        descriptor_reserve=s.api_descriptor_reserve)
        self._servers = serve(routes.router(), s.api_socket, s.listen, s.api_token, limits,
                              authenticator=IdentityAuthenticator(engine.identity))

    def _shutdown(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        self.settings.api_socket.unlink(missing_ok=True)
        # The console process stays for us while we run; gone once we are,
        # if it watches nothing (docs/console.md).
        console.release_holds()
        hv = getattr(self, "hv", None)
        if hv is not None:
            hv.close()
        if self.engine is not None:
            self.engine.store.close()


def main(settings: Settings) -> None:
    service = Service(settings)
    signal.signal(signal.SIGTERM, service.stop)
    signal.signal(signal.SIGINT, service.stop)
    service.run(foreground=True)
