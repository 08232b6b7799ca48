"""Addresses, taps and the checks on what users ask for."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

from vmops.errors import Invalid, SubnetFull

TAP_PREFIX = "vmt"  # + 11 hex digits of the port id: 14 characters, under IFNAMSIZ


def tap_name(port_id: str) -> str:
    return TAP_PREFIX + port_id.replace("-", "")[:11]


def parse_cidr(text: str, what: str = "subnet") -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text.strip(), strict=True)
    except ValueError as exc:
        raise Invalid(reason=f"{what} {text!r} is not an IPv4 network in CIDR form "
                      f"such as 10.213.0.0/24 ({exc})") from None


def parse_address(text: str, what: str = "address") -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text.strip())
    except ValueError:
        raise Invalid(reason=f"{what} {text!r} is not an IPv4 address") from None


def usable(cidr: ipaddress.IPv4Network, address: ipaddress.IPv4Address) -> bool:
    """Inside the subnet and not its network, gateway (first) or broadcast address."""
    return (address in cidr and address not in (cidr.network_address, cidr.broadcast_address,
                                                cidr.network_address + 1))


def check_fixed_ip(cidr: ipaddress.IPv4Network, text: str) -> ipaddress.IPv4Address:
    address = parse_address(text, "fixed IP")
    if address not in cidr:
        raise Invalid(reason=f"fixed IP {address} is not in the vmops network {cidr}")
    if not usable(cidr, address):
        raise Invalid(reason=f"fixed IP {address} is the network's own address, its "
                      "gateway or its broadcast address")
    return address


def pick(cidr: ipaddress.IPv4Network, used: Collection[str], network: str) -> str:
    """The lowest free address of ``cidr`` (``used``: addresses taken)."""
    for address in cidr.hosts():
        if usable(cidr, address) and str(address) not in used:
            return str(address)
    raise SubnetFull(network=network, cidr=str(cidr))


def check_port_number(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise Invalid(reason=f"{what} {value!r} is not a port number from 1 to 65535")
    return value
