"""vmops doctor's network checks, on fake /proc/sys trees and nft JSON."""

from __future__ import annotations

import ipaddress
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from vmops.errors import NetworkError
from vmops.hypervisor.base import Check
from vmops.network import checks
from vmops.store import Store, recorded_network_cidr


def proc(tmp_path: Path, ip_forward: str = "1", bridge_nf: str | None = "1") -> Path:
    root = tmp_path / "proc-sys"
    (root / "net/ipv4").mkdir(parents=True)
    (root / "net/ipv4/ip_forward").write_text(ip_forward + "\n")
    if bridge_nf is not None:
        (root / "net/bridge").mkdir(parents=True)
        (root / "net/bridge/bridge-nf-call-iptables").write_text(bridge_nf + "\n")
    return root


def chain(family: str, table: str, name: str, hook: str = "forward",
          policy: str = "drop") -> dict[str, Any]:
    return {"chain": {"family": family, "table": table, "name": name, "handle": 1,
                      "type": "filter", "hook": hook, "prio": 0, "policy": policy}}


def ruleset(*items: dict[str, Any]) -> str:
    return json.dumps({"nftables": [{"metainfo": {"version": "1.0.6"}}, *items]})


# Docker on iptables-nft: table ip filter, chain FORWARD, policy drop.
DOCKER = chain("ip", "filter", "FORWARD")
OURS = [chain("inet", "vmops_vmops0", "forward", policy="accept"),
        chain("bridge", "vmops_vmops0", "prerouting", hook="prerouting", policy="accept"),
        chain("inet", "vmops_other1", "forward")]  # another vmops bridge's table


def run(tmp_path: Path, subnet: str = "10.213.0.0/24", rules: str = ruleset(*OURS),
        overlap: str | None = None, **proc_values: Any) -> dict[str, Check]:
    found = checks.network_checks("bridge", "vmops0", subnet,
                                  proc_sys=proc(tmp_path, **proc_values),
                                  ruleset=lambda: rules, overlap=lambda cidr, dev: overlap)
    return {c.name: c for c in found}


def test_a_ready_host_passes_and_nothing_is_required(tmp_path: Path) -> None:
    found = run(tmp_path)
    assert set(found) == {"dnsmasq", "nft", "IPv4 forwarding", "bridge netfilter",
                          "vmops subnet", "other firewalls"}
    assert all(not c.required for c in found.values())
    for name in ("IPv4 forwarding", "bridge netfilter", "vmops subnet", "other firewalls"):
        assert found[name].ok, found[name]


def test_user_mode_checks_nothing_of_the_bridge(tmp_path: Path) -> None:
    (only,) = checks.network_checks("user", "vmops0", "", proc_sys=tmp_path / "none",
                                    ruleset=lambda: pytest.fail("nft was read"))
    assert only.ok and "user-mode" in only.detail


def test_forwarding_off_and_bridge_netfilter_missing_or_off(tmp_path: Path) -> None:
    found = run(tmp_path / "a", ip_forward="0", bridge_nf=None)
    assert not found["IPv4 forwarding"].ok
    assert "ip_forward is 0" in found["IPv4 forwarding"].detail
    assert "vmops serve" in found["IPv4 forwarding"].advice
    assert not found["bridge netfilter"].ok
    assert "br_netfilter is not loaded" in found["bridge netfilter"].detail
    off = run(tmp_path / "b", bridge_nf="0")["bridge netfilter"]
    assert not off.ok and "bridge-nf-call-iptables is 0" in off.detail


def test_missing_programs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    found = run(tmp_path)
    assert not found["dnsmasq"].ok and found["dnsmasq"].advice == "apt-get install dnsmasq-base"
    assert not found["nft"].ok and found["nft"].advice == "apt-get install nftables"


def test_subnet_overlapping_a_host_route(tmp_path: Path) -> None:
    bad = run(tmp_path / "a", overlap="10.213.0.0/16 via eth1")["vmops subnet"]
    assert not bad.ok and "overlaps the host route 10.213.0.0/16 via eth1" in bad.detail
    assert "network_subnet" in bad.advice
    unset = run(tmp_path / "b", subnet="")["vmops subnet"]
    assert unset.ok and "none chosen yet" in unset.detail
    junk = run(tmp_path / "c", subnet="10.213.0.0/33")["vmops subnet"]
    assert not junk.ok and "not an IPv4 subnet" in junk.detail


def test_subnet_without_ip_is_a_warning(tmp_path: Path) -> None:
    def no_ip(cidr: ipaddress.IPv4Network, dev: str) -> str | None:
        raise NetworkError(reason="ip is not installed (Debian: iproute2)")

    (subnet,) = [c for c in checks.network_checks(
        "bridge", "vmops0", "10.213.0.0/24", proc_sys=proc(tmp_path),
        ruleset=lambda: ruleset(), overlap=no_ip) if c.name == "vmops subnet"]
    assert not subnet.ok and "iproute2" in subnet.detail


def test_overlap_ignores_the_bridge_own_route(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmops.network import host

    monkeypatch.setattr(host, "host_routes", lambda: [
        ("vmops0", ipaddress.IPv4Network("10.213.0.0/24")),
        ("eth0", ipaddress.IPv4Network("192.0.2.0/24"))])
    assert host.overlapping_route(ipaddress.IPv4Network("10.213.0.0/24"), "vmops0") is None
    assert host.overlapping_route(ipaddress.IPv4Network("192.0.2.128/25"), "vmops0") == (
        "192.0.2.0/24 via eth0")


@pytest.mark.parametrize("other", [
    DOCKER,
    chain("inet", "firewalld", "filter_FORWARD"),
    chain("bridge", "filter", "forward"),  # drops bridged guest-to-guest traffic
])
def test_another_firewall_dropping_forwarded_traffic_is_a_warning(
        tmp_path: Path, other: dict[str, Any]) -> None:
    found = run(tmp_path, rules=ruleset(*OURS, other))["other firewalls"]
    c = other["chain"]
    assert not found.ok and not found.required
    assert f"{c['family']} {c['table']} {c['name']}" in found.detail
    assert "vmops_" not in found.detail
    assert "DOCKER-USER -i vmops0" in found.advice


@pytest.mark.parametrize("harmless", [
    chain("ip", "filter", "FORWARD", policy="accept"),
    chain("ip", "filter", "INPUT", hook="input"),
    chain("ip6", "filter", "FORWARD"),  # guests have IPv4 only
    {"chain": {"family": "ip", "table": "filter", "name": "DOCKER-USER", "handle": 9}},
    {"table": {"family": "ip", "name": "filter", "handle": 1}},
])
def test_what_does_not_drop_guest_traffic(tmp_path: Path, harmless: dict[str, Any]) -> None:
    assert run(tmp_path, rules=ruleset(*OURS, harmless))["other firewalls"].ok


def test_an_unreadable_ruleset_is_a_warning(tmp_path: Path) -> None:
    def denied() -> str:
        raise OSError("Operation not permitted (you must be root)")

    (found,) = [c for c in checks.network_checks(
        "bridge", "vmops0", "", proc_sys=proc(tmp_path), ruleset=denied)
        if c.name == "other firewalls"]
    assert not found.ok and not found.required and "Operation not permitted" in found.detail
    assert run(tmp_path / "x", rules="not json")["other firewalls"].ok is False


def test_recorded_subnet_is_read_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "vmops.db"
    assert recorded_network_cidr(path, "vmops") is None
    from vmops.store import NetworkRecord

    store = Store(path)
    assert recorded_network_cidr(path, "vmops") is None
    store.add_network(NetworkRecord("vmops", "vmops0", "10.214.0.0/24"))
    store.close()
    before = path.read_bytes()
    assert recorded_network_cidr(path, "vmops") == "10.214.0.0/24"
    assert path.read_bytes() == before
    old = tmp_path / "old.db"
    sqlite3.connect(old).execute("CREATE TABLE instances (id TEXT)").connection.commit()
    assert recorded_network_cidr(old, "vmops") is None  # a schema before networks


def test_service_reports_a_network_it_could_not_set_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vmops import config
    from vmops.network.manager import Network
    from vmops.service import network_health

    monkeypatch.setattr(checks, "read_ruleset", lambda: ruleset())
    s = config.load(tmp_path, network_mode="bridge")
    network = Network(Store(s.db_path), tmp_path, "vmops0", "", True, enabled=True)
    network.disable("dnsmasq is not installed")
    found = network_health(s, network)
    assert (found[0].name, found[0].ok, found[0].required) == ("vmops network", False, False)
    assert "dnsmasq is not installed" in found[0].detail
    assert [c.name for c in network_health(config.load(tmp_path, network_mode="user"),
                                           network)] == ["vmops network"]
