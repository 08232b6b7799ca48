"""The vmops network as the rest of vmops sees it.

:class:`Network` owns the bridge, the dnsmasq and the nftables tables of
one state directory. Every change (a port, a group, a rule, a forward)
is a record in the store first; then :meth:`Network.apply` renders the
whole ruleset and DHCP reservations from the records and loads them (one
atomic ``nft -f``, one SIGHUP). A watcher puts back what disappears: a
dead dnsmasq is restarted, a deleted table is loaded again.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
import uuid as uuidlib
from collections.abc import Sequence
from pathlib import Path

from vmops.errors import ConfigError, Invalid, NetworkError, PortTaken
from vmops.network import dnsmasq, host, ipam, nftables
from vmops.network.dnsmasq import Dnsmasq
from vmops.network.model import (
    Direction,
    ForwardPlan,
    GroupPlan,
    NetworkPlan,
    NicMode,
    Plan,
    PortPlan,
    Protocol,
    RulePlan,
)
from vmops.store import (
    Instance,
    NetworkRecord,
    Port,
    PortForward,
    SecurityGroup,
    SecurityGroupRule,
    Store,
)

log = logging.getLogger(__name__)

NETWORK_NAME = "vmops"
USER_NETWORK = "user"
WATCH_INTERVAL_S = 2.0
# An interface name (IFNAMSIZ) that is also an nftables identifier.
BRIDGE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,14}$")


class Network:
    def __init__(self, store: Store, state_dir: Path, bridge: str, subnet: str,
                 host_access: bool, enabled: bool) -> None:
        if not BRIDGE_NAME.match(bridge):
            raise ConfigError(option="network_bridge", value=bridge,
                              allowed="1 to 15 letters, digits or '_', starting with a letter")
        self.store = store
        self.root = state_dir / "network"
        self.bridge = bridge
        self._subnet_setting = subnet
        self.host_access = host_access
        self.enabled = enabled  # False: user-mode NICs only (no root, or turned off)
        self.disabled_reason = "" if enabled else "network_mode is user (or not running as root)"
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._plan: NetworkPlan | None = None
        self._dnsmasq: Dnsmasq | None = None

    # -- set-up --------------------------------------------------------------
    @property
    def plan(self) -> NetworkPlan:
        if self._plan is None:
            raise NetworkError(reason=f"the vmops network is not set up: "
                               f"{self.disabled_reason}")
        return self._plan

    @property
    def dhcp(self) -> Dnsmasq:
        """The network's dnsmasq (once set up)."""
        if self._dnsmasq is None:
            raise NetworkError(reason=f"the vmops network is not set up: {self.disabled_reason}")
        return self._dnsmasq

    def setup(self) -> None:
        """Make (or find) the bridge, its subnet, dnsmasq and the rules. Run
        at every service start; running guests keep their taps and leases."""
        if not self.enabled:
            return
        record = self.store.network(NETWORK_NAME)
        if record is None:
            cidr = (ipam.parse_cidr(self._subnet_setting, "network_subnet")
                    if self._subnet_setting else host.choose_subnet(self.bridge))
            clash = host.overlapping_route(cidr, self.bridge)
            if clash:
                raise NetworkError(reason=f"subnet {cidr} overlaps the host route {clash}; "
                                   "set network_subnet to a free one")
            record = self.store.add_network(NetworkRecord(NETWORK_NAME, self.bridge, str(cidr)))
            log.info("vmops network: bridge %s, subnet %s", record.bridge, record.cidr)
        elif self._subnet_setting and self._subnet_setting != record.cidr:
            log.warning("network_subnet is %s but the vmops network was made with %s; "
                        "keeping %s (guests hold addresses in it)", self._subnet_setting,
                        record.cidr, record.cidr)
        self._plan = NetworkPlan(record.name, record.bridge, ipaddress.IPv4Network(record.cidr))
        self._dnsmasq = Dnsmasq(self._plan, self.root)
        other = dnsmasq.other_server(record.bridge, self._dnsmasq.files.conf)
        if other is not None:
            raise NetworkError(reason=f"bridge {record.bridge} is served by another vmops "
                               f"state directory ({other.parent.parent}); give this one "
                               "another network_bridge")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)
        host.ensure_bridge(self._plan)
        host.enable_forwarding()
        self.apply()

    @classmethod
    def off(cls, store: Store) -> Network:
        """A network that keeps records but sets nothing up (user-mode only)."""
        return cls(store, Path("/nonexistent"), "vmops0", "", host_access=True, enabled=False)

    def disable(self, reason: str) -> None:
        self.enabled = False
        self.disabled_reason = reason

    def start_watcher(self) -> threading.Thread | None:
        """Put back what goes missing (:meth:`check`) until :meth:`stop`, in
        a thread; None when the network is off."""
        if not self.enabled:
            return None
        thread = threading.Thread(target=self._watch, name="network-watch", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def teardown(self) -> None:
        """Remove the bridge, dnsmasq and the rules (``vmops network down``;
        tests). Guests on the bridge lose their network."""
        self.stop()
        with self._lock:
            if self._dnsmasq is not None:
                self._dnsmasq.stop()
            nftables.apply(nftables.render_delete(self.bridge))
            host.delete_bridge(self.bridge)

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the watcher must keep watching
                log.exception("network check failed")

    def check(self) -> list[str]:
        """Put back what went missing; what was repaired, for the log and tests."""
        repaired = []
        with self._lock:
            plan = self.plan
            if not host.bridge_exists(plan.bridge):
                host.ensure_bridge(plan)
                repaired.append(f"bridge {plan.bridge}")
            if not nftables.table_present(plan.bridge):
                self._apply_rules()
                repaired.append("nftables table")
            if not self.dhcp.running():
                self.dhcp.ensure(self._port_plans())
                repaired.append("dnsmasq")
        for what in repaired:
            log.warning("vmops network: %s was gone; put back", what)
        return repaired

    # -- the rules -----------------------------------------------------------
    def apply(self) -> None:
        """Load the ruleset and the DHCP reservations from the records."""
        if not self.enabled:
            return
        with self._lock:
            plan = self._apply_rules()
            self.dhcp.ensure(plan.ports)

    def _apply_rules(self) -> Plan:
        """Load the ruleset; the plan it was rendered from (read once)."""
        plan = self.full_plan()
        nftables.apply(nftables.render(plan))
        return plan

    def full_plan(self) -> Plan:
        ports = self._port_plans()
        # A forward goes to the first bridge address of its instance.
        ip_of: dict[str, ipaddress.IPv4Address] = {}
        for port in ports:
            ip_of.setdefault(port.instance_id, port.ip)
        rules: dict[str, list[RulePlan]] = {}
        for rule in self.store.security_group_rules():
            rules.setdefault(rule.group_id, []).append(_rule_plan(rule))
        groups = tuple(GroupPlan(g.id, g.name, tuple(rules.get(g.id, ())))
                       for g in self.store.security_groups())
        forwards = []
        for fwd in self.store.port_forwards():
            guest = ip_of.get(fwd.instance_id)
            if guest is None:
                continue
            forwards.append(ForwardPlan(
                fwd.id, Protocol(fwd.protocol),
                None if fwd.host_address == "0.0.0.0" else ipaddress.IPv4Address(
                    fwd.host_address),
                fwd.host_port, guest, fwd.guest_port))
        return Plan(self.plan, ports, groups, tuple(forwards), host_access=self.host_access)

    def _port_plans(self) -> tuple[PortPlan, ...]:
        # The guest's hostname for DHCP and DNS (older records: the name).
        names = {i.id: i.hostname or i.name for i in self.store.instances()}
        groups = self.store.instance_group_ids()
        return tuple(
            PortPlan(p.id, p.instance_id, names.get(p.instance_id, p.instance_id[:8]), p.mac,
                     ipaddress.IPv4Address(p.ip), p.tap, tuple(groups.get(p.instance_id, ())))
            for p in self.store.ports()
            if p.mode == NicMode.BRIDGE and p.ip and p.tap)

    # -- ports ---------------------------------------------------------------
    def new_ports(self, instance_id: str, mode: NicMode, macs: Sequence[str],
                  fixed_ip: str | None = None) -> list[Port]:
        """Port records for a new instance (addresses are chosen when stored)."""
        if mode is NicMode.BRIDGE and not self.enabled:
            raise Invalid(reason=f"the vmops network is off here ({self.disabled_reason}): "
                          "use user-mode networking")
        ports = []
        for position, mac in enumerate(macs):
            port_id = str(uuidlib.uuid4())
            if mode is NicMode.BRIDGE:
                ip = str(ipam.check_fixed_ip(self.plan.cidr, fixed_ip)) \
                    if fixed_ip and position == 0 else None
                ports.append(Port(port_id, instance_id, position, mode.value, NETWORK_NAME,
                                  mac, ip, ipam.tap_name(port_id)))
            else:
                ports.append(Port(port_id, instance_id, position, mode.value, USER_NETWORK,
                                  mac))
        return ports

    def choose_ip(self, used: set[str]) -> str:
        return ipam.pick(self.plan.cidr, used, NETWORK_NAME)

    def release(self, inst: Instance) -> None:
        """Forget the instance's ports, forwards and memberships, then reload
        (the tap itself goes with the domain)."""
        leased = [p for p in self._port_plans() if p.instance_id == inst.id]
        ports = self.store.ports(inst.id)
        self.store.release_network(inst.id)
        if self.enabled and any(p.mode == NicMode.BRIDGE for p in ports):
            self.apply()
            if self._dnsmasq is not None:
                self._dnsmasq.release(leased)

    # -- port forwards -------------------------------------------------------
    def add_forward(self, inst: Instance, protocol: str, host_port: int, guest_port: int,
                    host_address: str | None = None) -> PortForward:
        if protocol not in (Protocol.TCP, Protocol.UDP):
            raise Invalid(reason=f"protocol {protocol!r}: a port forward is tcp or udp")
        ipam.check_port_number(host_port, "host port")
        ipam.check_port_number(guest_port, "guest port")
        address = str(ipam.parse_address(host_address, "host address")) if host_address \
            else "0.0.0.0"
        ports = [p for p in self.store.ports(inst.id) if p.mode == NicMode.BRIDGE and p.ip]
        if not ports:
            raise Invalid(reason=f"instance {inst.name!r} has no NIC on the vmops network "
                          "to forward to")
        _check_host_port_free(protocol, address, host_port)
        fwd = self.store.add_port_forward(PortForward(
            str(uuidlib.uuid4()), inst.id, protocol, address, host_port, guest_port))
        try:
            self.apply()
        except Exception:
            self.store.delete_port_forward(fwd.id)
            raise
        return fwd

    def remove_forward(self, forward_id: str) -> None:
        self.store.delete_port_forward(forward_id)
        self.apply()

    # -- security groups -----------------------------------------------------
    def create_group(self, name: str, description: str = "") -> SecurityGroup:
        return self.store.add_security_group(
            SecurityGroup(str(uuidlib.uuid4()), name, description))

    def delete_group(self, ref: str) -> None:
        group = self.store.security_group(ref)
        self.store.delete_security_group(group.id)
        self.apply()

    def add_rule(self, group_ref: str, direction: str, protocol: str = "any",
                 port_min: int | None = None, port_max: int | None = None,
                 remote_cidr: str | None = None,
                 remote_group: str | None = None) -> SecurityGroupRule:
        group = self.store.security_group(group_ref)
        rule = check_rule(group.id, direction, protocol, port_min, port_max, remote_cidr,
                          self.store.security_group(remote_group).id if remote_group else None)
        rule = self.store.add_security_group_rule(rule)
        self.apply()
        return rule

    def delete_rule(self, rule_id: str) -> None:
        self.store.delete_security_group_rule(rule_id)
        self.apply()

    def set_membership(self, inst: Instance, group_ref: str, member: bool) -> None:
        group = self.store.security_group(group_ref)
        current = self.store.instance_group_ids(inst.id).get(inst.id, [])
        if member and group.id in current:
            return
        if not member and group.id not in current:
            raise Invalid(reason=f"instance {inst.name!r} is not in security group "
                          f"{group.name!r}")
        self.store.set_instance_group(inst.id, group.id, member)
        self.store.update_instance(inst.id)  # its view (security_groups) changed
        self.apply()


def check_rule(group_id: str, direction: str, protocol: str, port_min: int | None,
               port_max: int | None, remote_cidr: str | None,
               remote_group_id: str | None) -> SecurityGroupRule:
    """A rule as OpenStack takes it, refused before anything changes when
    it cannot be one."""
    try:
        Direction(direction)
    except ValueError:
        raise Invalid(reason=f"direction {direction!r}: ingress or egress") from None
    protocol = (protocol or "any").lower()
    try:
        proto = Protocol(protocol)
    except ValueError:
        raise Invalid(reason=f"protocol {protocol!r}: tcp, udp, icmp or any") from None
    if remote_cidr and remote_group_id:
        raise Invalid(reason="a rule has a remote CIDR or a remote group, not both")
    cidr = str(ipam.parse_cidr(remote_cidr, "remote CIDR")) if remote_cidr else None
    if proto in (Protocol.TCP, Protocol.UDP):
        if port_min is not None:
            ipam.check_port_number(port_min, "port")
            port_max = ipam.check_port_number(port_max if port_max is not None else port_min,
                                              "port")
            if port_max < port_min:
                raise Invalid(reason=f"port range {port_min}-{port_max} ends before it starts")
        elif port_max is not None:
            raise Invalid(reason="a port range needs its first port")
    elif proto is Protocol.ICMP:
        for value, what in ((port_min, "ICMP type"), (port_max, "ICMP code")):
            if value is not None and (isinstance(value, bool) or not 0 <= value <= 255):
                raise Invalid(reason=f"{what} {value!r} is not from 0 to 255")
    elif port_min is not None or port_max is not None:
        raise Invalid(reason="ports need protocol tcp or udp")
    return SecurityGroupRule(str(uuidlib.uuid4()), group_id, direction, proto.value,
                             port_min, port_max, cidr, remote_group_id)


def _rule_plan(rule: SecurityGroupRule) -> RulePlan:
    return RulePlan(rule.id, Direction(rule.direction), Protocol(rule.protocol),
                    rule.port_min, rule.port_max,
                    ipaddress.IPv4Network(rule.remote_cidr) if rule.remote_cidr else None,
                    rule.remote_group_id)


def _check_host_port_free(protocol: str, address: str, port: int) -> None:
    """A port something on the host listens on would be shadowed: refuse it."""
    kind = socket.SOCK_STREAM if protocol == Protocol.TCP else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind((address, port))
        except OSError as exc:
            raise PortTaken(proto=protocol, port=port, address=address,
                            by=f"in use on the host ({exc.strerror})") from None
