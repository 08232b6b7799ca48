"""The vmops network's DHCP and DNS server: one dnsmasq, supervised.

dnsmasq serves only the vmops bridge. It hands out exactly the addresses
vmops reserved (``dhcp-range=...,static``: a MAC with no reservation gets
nothing), and answers DNS for guest names in the network's domain. Both
come from two files vmops writes (``hosts.dhcp``, ``hosts.dns``); dnsmasq
re-reads them on SIGHUP, so a new guest never restarts it.

dnsmasq runs as a daemon of its own with a pid file, like the console
capture processes: a service restart does not interrupt DHCP, and the
service finds it again by the pid file and its command line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vmops.errors import NetworkError
from vmops.network.host import run_tool
from vmops.network.model import NetworkPlan, PortPlan

log = logging.getLogger(__name__)

LEASE_TIME = "1h"
START_TIMEOUT_S = 10


@dataclass(frozen=True)
class DnsmasqFiles:
    """Where one network's dnsmasq keeps its files (a private directory)."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "dnsmasq.conf"

    @property
    def dhcp_hosts(self) -> Path:
        return self.root / "hosts.dhcp"

    @property
    def dns_hosts(self) -> Path:
        return self.root / "hosts.dns"

    @property
    def leases(self) -> Path:
        return self.root / "dnsmasq.leases"

    @property
    def pid(self) -> Path:
        return self.root / "dnsmasq.pid"

    @property
    def log(self) -> Path:
        return self.root / "dnsmasq.log"


def render_conf(net: NetworkPlan, files: DnsmasqFiles) -> str:
    """dnsmasq's whole configuration (it reads no other file)."""
    return "\n".join([
        f"interface={net.bridge}",
        "bind-interfaces",
        "except-interface=lo",
        f"listen-address={net.gateway}",
        f"dhcp-range={net.cidr.network_address},static,{net.cidr.netmask},{LEASE_TIME}",
        f"dhcp-hostsfile={files.dhcp_hosts}",
        f"addn-hosts={files.dns_hosts}",
        f"dhcp-leasefile={files.leases}",
        f"dhcp-option=option:router,{net.gateway}",
        f"dhcp-option=option:dns-server,{net.gateway}",
        f"domain={net.domain}",
        f"local=/{net.domain}/",
        "dhcp-authoritative",
        "no-hosts",
        "user=root",
        f"pid-file={files.pid}",
        f"log-facility={files.log}",
        "",
    ])


def render_dhcp_hosts(ports: Iterable[PortPlan]) -> str:
    """``MAC,IP,hostname`` per port: the only leases dnsmasq will give."""
    return "".join(f"{p.mac},{p.ip},{p.hostname}\n" for p in ports)


def render_dns_hosts(net: NetworkPlan, ports: Iterable[PortPlan]) -> str:
    return "".join(f"{p.ip} {p.hostname}.{net.domain} {p.hostname}\n" for p in ports)


class Dnsmasq:
    """Start, find, reload and stop the network's dnsmasq."""

    def __init__(self, net: NetworkPlan, root: Path) -> None:
        self.net = net
        self.files = DnsmasqFiles(root)

    def write(self, ports: Iterable[PortPlan]) -> None:
        ports = list(ports)
        self.files.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # dnsmasq creates its own files 0644/0640 whatever the umask; made
        # here first, they stay the user's alone (it keeps an existing file).
        for path in (self.files.log, self.files.leases, self.files.pid):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            os.fchmod(fd, 0o600)
            os.close(fd)
        _write_atomic(self.files.conf, render_conf(self.net, self.files))
        _write_atomic(self.files.dhcp_hosts, render_dhcp_hosts(ports))
        _write_atomic(self.files.dns_hosts, render_dns_hosts(self.net, ports))

    def pid(self) -> int | None:
        """The running dnsmasq of this network, or None."""
        try:
            pid = int(self.files.pid.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        if str(self.files.conf).encode() not in b" ".join(cmdline):
            return None  # the pid was reused by some other process
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def ensure(self, ports: Iterable[PortPlan]) -> None:
        """Write the files; reload a running dnsmasq, or start one."""
        self.write(ports)
        pid = self.pid()
        if pid is None:
            self.start()
            return
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            self.start()

    def start(self) -> None:
        cmd = ["dnsmasq", f"--conf-file={self.files.conf}"]
        # dnsmasq forks into the background once it has bound its sockets; a
        # non-zero exit means it could not.
        done = run_tool(cmd, "dnsmasq-base", START_TIMEOUT_S, new_session=True)
        if done.returncode != 0:
            raise NetworkError(reason=f"dnsmasq did not start: {done.stderr.strip()}")
        log.info("dnsmasq started for %s (pid %s)", self.net.bridge, self.pid())

    def release(self, ports: Iterable[PortPlan]) -> None:
        """Forget the leases of ``ports`` now, not when they expire: the next
        instance given one of these addresses has another MAC, and dnsmasq
        would refuse it the address while the old lease lasts."""
        for port in ports:
            try:
                done = run_tool(["dhcp_release", self.net.bridge, str(port.ip), port.mac],
                                "dnsmasq-utils", START_TIMEOUT_S)
            except NetworkError as exc:
                log.warning("the DHCP lease of %s stays until it expires: %s", port.ip,
                            exc.message)
                continue
            if done.returncode != 0:
                log.warning("could not release the DHCP lease of %s (%s)", port.ip,
                            done.stderr.strip())

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self.files.pid.unlink(missing_ok=True)


def other_server(bridge: str, ours: Path) -> Path | None:
    """The configuration of a vmops dnsmasq serving ``bridge`` for another
    state directory, if one runs: two services on one bridge would undo each
    other's rules and reservations."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if not args or not args[0].endswith(b"dnsmasq"):
            continue
        for arg in args[1:]:
            if not arg.startswith(b"--conf-file="):
                continue
            conf = Path(arg.split(b"=", 1)[1].decode(errors="replace"))
            if conf == ours:
                continue
            try:
                if f"interface={bridge}\n" in conf.read_text():
                    return conf
            except OSError:
                continue
    return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)
