"""The network's pure parts: the nftables ruleset and dnsmasq files as
golden files, address allocation, and the checks on what users ask for.

Regenerate the golden files after an intended change with
``VMOPS_REGEN_GOLDEN=1 pytest tests/unit/test_network.py`` and review the
diff under tests/unit/golden/network/. That the rules do what they say is
proven on the real kernel by tests/integration/test_network.py.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from tests import records
from vmops.api import parse
from vmops.errors import AddressInUse, InUse, Invalid, PortTaken, SubnetFull
from vmops.network import dnsmasq, ipam, nftables
from vmops.network.manager import Network, check_rule
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
from vmops.store import Instance, Store

GOLDEN = Path(__file__).parent / "golden" / "network"
NET = NetworkPlan("vmops", "vmops0", ipaddress.IPv4Network("10.213.0.0/24"))
A = PortPlan("p1", "i1", "web1", "52:54:00:00:00:0a", ipaddress.IPv4Address("10.213.0.2"),
             "vmt00000000001", ("g-default",))
B = PortPlan("p2", "i2", "db1", "52:54:00:00:00:0b", ipaddress.IPv4Address("10.213.0.3"),
             "vmt00000000002", ("g-default", "g-db"))
DEFAULT = GroupPlan("g-default", "default", (
    RulePlan("r1", Direction.INGRESS, remote_group="g-default"),
    RulePlan("r2", Direction.EGRESS)))
DB = GroupPlan("g-db", "db", (
    RulePlan("r3", Direction.INGRESS, Protocol.TCP, 5432, 5432,
             ipaddress.IPv4Network("198.51.100.0/24")),
    RulePlan("r4", Direction.INGRESS, Protocol.UDP, 6000, 6010),
    RulePlan("r5", Direction.INGRESS, Protocol.ICMP, 8, None),
    RulePlan("r6", Direction.EGRESS, Protocol.TCP, 443, 443,
             ipaddress.IPv4Network("0.0.0.0/0"))))
FORWARDS = (
    ForwardPlan("f1", Protocol.TCP, None, 8080, A.ip, 80),
    ForwardPlan("f2", Protocol.UDP, ipaddress.IPv4Address("198.51.100.1"), 5353, B.ip, 53))

CASES = {
    "empty": Plan(NET),
    "two_guests_forwards": Plan(NET, (A, B), (DEFAULT, DB), FORWARDS),
    "no_host_access": Plan(NET, (A,), (DEFAULT,), host_access=False),
}


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("VMOPS_REGEN_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"regenerate with VMOPS_REGEN_GOLDEN=1 and review {path}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_ruleset_matches_golden(case: str) -> None:
    _golden(f"{case}.nft", nftables.render(CASES[case]))


def test_dnsmasq_files_match_golden(tmp_path: Path) -> None:
    files = dnsmasq.DnsmasqFiles(Path("/var/lib/vmops/network"))
    _golden("dnsmasq.conf", dnsmasq.render_conf(NET, files))
    _golden("hosts.dhcp", dnsmasq.render_dhcp_hosts((A, B)))
    _golden("hosts.dns", dnsmasq.render_dns_hosts(NET, (A, B)))


def test_the_ruleset_replaces_only_its_own_tables() -> None:
    text = nftables.render(CASES["two_guests_forwards"])
    tables = {line.split("{")[0].strip() for line in text.splitlines()
              if line.startswith(("table ", "delete table "))}
    assert tables == {"table bridge vmops_vmops0", "delete table bridge vmops_vmops0",
                      "table inet vmops_vmops0", "delete table inet vmops_vmops0"}
    assert "flush ruleset" not in text


def test_a_port_without_groups_admits_nothing() -> None:
    lonely = PortPlan("p3", "i3", "x", "52:54:00:00:00:0c",
                      ipaddress.IPv4Address("10.213.0.9"), "vmt00000000003")
    text = nftables.render(Plan(NET, (lonely,)))
    chain = text.split("chain in_vmt00000000003 {")[1].split("}")[0]
    assert chain.split() == ["drop"]


def test_addresses_skip_network_gateway_and_broadcast() -> None:
    cidr = ipaddress.IPv4Network("10.0.0.0/29")
    assert ipam.pick(cidr, set(), "n") == "10.0.0.2"
    assert ipam.pick(cidr, {"10.0.0.2", "10.0.0.3"}, "n") == "10.0.0.4"
    with pytest.raises(SubnetFull):
        ipam.pick(cidr, {f"10.0.0.{n}" for n in range(2, 7)}, "n")


@pytest.mark.parametrize("text", ["10.213.0.0", "10.213.0.1", "10.213.0.255", "10.214.0.5",
                                  "10.213.0.300", "not-an-ip", ""])
def test_bad_fixed_ips_are_refused(text: str) -> None:
    with pytest.raises(Invalid):
        ipam.check_fixed_ip(NET.cidr, text)


@pytest.mark.parametrize("text", ["10.0.0.1/24", "10.0.0.0/33", "300.0.0.0/8", "x", ""])
def test_bad_cidrs_are_refused(text: str) -> None:
    with pytest.raises(Invalid):
        ipam.parse_cidr(text)


def test_tap_names_fit_an_interface_name() -> None:
    name = ipam.tap_name("0b5e6a3c-8f3e-4c4e-9d7a-1f2b3c4d5e6f")
    assert name == "vmt0b5e6a3c8f3" and len(name) <= 15


@pytest.mark.parametrize(("args", "message"), [
    (("sideways", "tcp", 80, 80, None, None), "direction"),
    (("ingress", "sctp", None, None, None, None), "protocol"),
    (("ingress", "tcp", 0, 10, None, None), "port"),
    (("ingress", "tcp", 90, 80, None, None), "ends before"),
    (("ingress", "tcp", 80, 70000, None, None), "port"),
    (("ingress", "tcp", None, 80, None, None), "first port"),
    (("ingress", "any", 80, 80, None, None), "tcp or udp"),
    (("ingress", "icmp", 300, None, None, None), "ICMP type"),
    (("ingress", "tcp", 80, 80, "10.0.0.1/8", None), "CIDR"),
    (("ingress", "tcp", 80, 80, "10.0.0.0/8", "g"), "not both"),
])
def test_bad_rules_are_refused(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(Invalid, match=message):
        check_rule("g", *args)  # type: ignore[arg-type]


def test_a_good_rule_is_normalised() -> None:
    rule = check_rule("g", "ingress", "TCP", 22, None, "0.0.0.0/0", None)
    assert (rule.protocol, rule.port_min, rule.port_max, rule.remote_cidr) == (
        "tcp", 22, 22, "0.0.0.0/0")


def _store(tmp_path: Path) -> tuple[Store, Network]:
    store = Store(tmp_path / "vmops.db")
    network = Network(store, tmp_path, "vmops0", "", host_access=True, enabled=False)
    network._plan = NET  # set up by hand: no bridge, no dnsmasq, no nft here
    network.enabled = True
    network.apply = lambda: None  # type: ignore[method-assign]
    return store, network


def _instance(store: Store, network: Network, name: str, mac: str,
              fixed_ip: str | None = None) -> Instance:
    inst = records.instance(name, id=f"id-{name}", vm_state="active",
                            power_state="running", macs=(mac,))
    return store.add_instance(inst, ports=network.new_ports(inst.id, NicMode.BRIDGE, [mac],
                                                            fixed_ip),
                              group_ids=[store.security_group("default").id],
                              choose_ip=network.choose_ip)


def test_the_default_group_has_openstacks_rules(tmp_path: Path) -> None:
    store, _ = _store(tmp_path)
    group = store.security_group("default")
    rules = {(r.direction, r.protocol, r.remote_group_id, r.remote_cidr)
             for r in store.security_group_rules(group.id)}
    assert rules == {("ingress", "any", group.id, None), ("egress", "any", None, None)}


def test_two_instances_never_share_a_mac_or_an_address(tmp_path: Path) -> None:
    store, network = _store(tmp_path)
    _instance(store, network, "a", "52:54:00:00:00:01", "10.213.0.50")
    with pytest.raises(AddressInUse, match="MAC"):
        _instance(store, network, "b", "52:54:00:00:00:01")
    with pytest.raises(AddressInUse, match="10.213.0.50"):
        _instance(store, network, "c", "52:54:00:00:00:03", "10.213.0.50")
    # Nothing of the refused ones was recorded.
    assert [i.name for i in store.instances()] == ["a"]
    assert len(store.ports()) == 1


def test_a_used_group_cannot_be_deleted(tmp_path: Path) -> None:
    store, network = _store(tmp_path)
    _instance(store, network, "a", "52:54:00:00:00:01")
    with pytest.raises(InUse, match="used by instances: a"):
        network.delete_group("default")


def test_a_rule_on_a_missing_group_changes_nothing(tmp_path: Path) -> None:
    from vmops.errors import SecurityGroupNotFound

    store, network = _store(tmp_path)
    before = store.security_group_rules()
    with pytest.raises(SecurityGroupNotFound):
        network.add_rule("nope", "ingress", "tcp", 22)
    assert store.security_group_rules() == before


def test_a_forward_needs_a_free_port_and_a_bridge_nic(tmp_path: Path) -> None:
    store, network = _store(tmp_path)
    inst = _instance(store, network, "a", "52:54:00:00:00:01")
    network.add_forward(inst, "tcp", 40123, 80)
    with pytest.raises(PortTaken):
        network.add_forward(inst, "tcp", 40123, 81, host_address="127.0.0.1")
    with pytest.raises(Invalid, match="port number"):
        network.add_forward(inst, "tcp", 0, 80)
    with pytest.raises(Invalid, match="tcp or udp"):
        network.add_forward(inst, "icmp", 40124, 80)
    store.release_network(inst.id)
    with pytest.raises(Invalid, match="no NIC on the vmops network"):
        network.add_forward(inst, "tcp", 40125, 80)


@pytest.mark.parametrize(("networks", "expected"), [
    (None, {}), ("auto", {}),
    ([{"uuid": "vmops", "fixed_ip": "10.213.0.9"}], {"network": "bridge",
                                                     "fixed_ip": "10.213.0.9"}),
    ([{"uuid": "user"}], {"network": "user", "fixed_ip": None}),
])
def test_server_networks_are_parsed(networks: object, expected: dict[str, object]) -> None:
    srv = {"name": "a", "imageRef": "i", "flavorRef": "f"}
    if networks is not None:
        srv["networks"] = networks  # type: ignore[assignment]
    # "auto" and "none" are Nova's from microversion 2.37.
    version = (2, 37) if isinstance(networks, str) else (2, 1)
    req = parse.spawn_request({"server": srv}, version).spawn
    assert {k: getattr(req, k) for k in expected} == expected


@pytest.mark.parametrize("networks", [
    [{"uuid": "elsewhere"}], [{"uuid": "vmops"}, {"uuid": "user"}], "lots",
    [{"uuid": "vmops", "port": "x"}]])
def test_bad_server_networks_are_refused(networks: object) -> None:
    with pytest.raises(Invalid):
        parse.spawn_request({"server": {"name": "a", "imageRef": "i", "flavorRef": "f",
                                        "networks": networks}})
