"""What goes on a config drive: typed inputs, their limits, and the file tree.

The tree follows the layout that OpenStack Nova writes and cloud-init (and
cloudbase-init, glean, ...) read:

    openstack/<version>/meta_data.json     every version
    openstack/<version>/user_data          every version, when given
    openstack/<version>/vendor_data.json   2013-10-17 and later
    openstack/<version>/network_data.json  2015-10-15 and later
    openstack/<version>/vendor_data2.json  2016-10-06 and later
    openstack/content/NNNN                 injected files, named from meta_data.json
    ec2/<version>/meta-data.json           2009-04-04 and latest
    ec2/<version>/user-data                when given

``<version>`` is each dated version below plus ``latest``. cloud-init picks
the newest dated version it knows, falling back to ``latest``. Which file
and which meta_data.json field appear in which version is declared in the
tables ``OPENSTACK_FILES``, ``EC2_FILES`` and ``META_DATA_FIELDS``.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from vmops.errors import ConfigDriveInvalid

# The dated OpenStack metadata versions, oldest first, and what each added.
FOLSOM: Final = "2012-08-10"  # meta_data.json, user_data, content/
GRIZZLY: Final = "2013-04-04"  # random_seed
HAVANA: Final = "2013-10-17"  # vendor_data.json
LIBERTY: Final = "2015-10-15"  # network_data.json, project_id
NEWTON_ONE: Final = "2016-06-30"  # devices
NEWTON_TWO: Final = "2016-10-06"  # vendor_data2.json
OCATA: Final = "2017-02-22"  # (vif tags on devices; we have none)
ROCKY: Final = "2018-08-27"  # (vf_trusted on devices; we have none)
LATEST: Final = "latest"

OPENSTACK_VERSIONS: Final = (FOLSOM, GRIZZLY, HAVANA, LIBERTY, NEWTON_ONE, NEWTON_TWO, OCATA, ROCKY)
# Nova skips the older EC2 versions on config drives by default.
EC2_VERSIONS: Final = ("2009-04-04",)

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", re.IGNORECASE)
_SHOWN_CHARS: Final = 40
# What no file path or metadata text may hold: C0 and C1 control characters
# (DEL included), and the bidirectional embeddings, overrides and isolates
# (U+202A-U+202E, U+2066-U+2069) that make text display in another order
# than a program reads it.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# A lone surrogate (U+D800-U+DFFF) is not a character: it has no UTF-8 form.
_SURROGATE = re.compile("[\ud800-\udfff]")
# An OpenSSH public key line is at most about 3 KB (RSA 16384 is 2.8 KB of
# base64; certificates a little more): 16 KiB leaves room for any real key
# and its comment, and keeps a pasted file (or garbage) off the config drive.
MAX_PUBLIC_KEY_BYTES: Final = 16 * 1024
# The longest name of one path component on Linux filesystems (NAME_MAX).
_MAX_COMPONENT_BYTES: Final = 255


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class Nic:
    """One guest network interface, in the order the guest sees them.

    With ``address`` the interface is configured statically (``prefix`` is
    then required); without, the guest uses DHCP for IPv4.
    """

    mac: str
    address: str | None = None
    prefix: int | None = None
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    mtu: int | None = None


@dataclass(frozen=True, slots=True)
class InstanceMetadata:
    """Everything the guest learns from its config drive.

    ``admin_password`` is kept out of ``repr`` (and so out of logs and
    tracebacks); it is written only when the caller asks for it.
    """

    uuid: str
    name: str
    hostname: str
    project_id: str
    launch_index: int = 0
    availability_zone: str = "nova"
    properties: Mapping[str, str] = field(default_factory=dict)
    public_keys: Mapping[str, str] = field(default_factory=dict)
    injected_files: Sequence[tuple[str, bytes]] = ()
    user_data: bytes | None = field(default=None, repr=False)
    admin_password: str | None = field(default=None, repr=False)
    nics: Sequence[Nic] = ()
    vendor_data: Mapping[str, Any] = field(default_factory=dict)
    random_seed: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, slots=True)
class Limits:
    """Nova's default quotas for what a user may put on a config drive."""

    max_injected_files: int = 5
    max_injected_file_bytes: int = 10 * 1024
    max_injected_file_path_bytes: int = 255
    max_user_data_bytes: int = 65535
    max_metadata_items: int = 128
    max_metadata_key_chars: int = 255
    max_metadata_value_chars: int = 255


# --------------------------------------------------------------------------- validation


def validate(md: InstanceMetadata, limits: Limits) -> None:
    """Raise ConfigDriveInvalid naming the first thing over a limit or malformed."""
    _check_injected_files(md.injected_files, limits)
    _check_user_data(md.user_data, limits)
    _check_properties(md.properties, limits)
    _check_public_keys(md.public_keys)
    _check_admin_password(md.admin_password)
    for index, nic in enumerate(md.nics):
        _check_nic(index, nic)
    _check_vendor_data(md.vendor_data)


def _refuse(reason: str) -> ConfigDriveInvalid:
    return ConfigDriveInvalid(reason=reason)


def _shown(text: str) -> str:
    """A user string for an error message: quoted, escaped, and cut short."""
    if len(text) > _SHOWN_CHARS:
        return repr(text[:_SHOWN_CHARS]) + "..."
    return repr(text)


def _check_injected_files(files: Sequence[tuple[str, bytes]], limits: Limits) -> None:
    if len(files) > limits.max_injected_files:
        raise _refuse(
            f"{len(files)} injected files; at most {limits.max_injected_files} are allowed"
        )
    seen: set[str] = set()
    for path, content in files:
        _check_injected_path(path, limits)
        if path in seen:
            raise _refuse(f"injected file path {_shown(path)} is given twice")
        seen.add(path)
        if len(content) > limits.max_injected_file_bytes:
            raise _refuse(
                f"injected file {_shown(path)} is {len(content)} bytes; "
                f"at most {limits.max_injected_file_bytes} bytes are allowed"
            )


def _unprintable(text: str) -> str | None:
    """Why ``text`` cannot be shown or stored as it reads, or None."""
    if _SURROGATE.search(text):
        return "a lone surrogate (not a character; it has no UTF-8 form)"
    if _UNPRINTABLE.search(text):
        return "a NUL, control character or bidirectional override"
    return None


def _check_injected_path(path: str, limits: Limits) -> None:
    problem = _unprintable(path)
    if problem is not None:
        raise _refuse(f"injected file path {_shown(path)} contains {problem}")
    if not path.startswith("/"):
        raise _refuse(f"injected file path {_shown(path)} is relative; it must start with '/'")
    components = path[1:].split("/")
    if ".." in components:
        raise _refuse(f"injected file path {_shown(path)} contains a '..' component")
    if path.endswith("/") or components[-1] == ".":
        raise _refuse(f"injected file path {_shown(path)} names a directory, not a file")
    if "." in components or "" in components:
        raise _refuse(f"injected file path {_shown(path)} has an empty or '.' component; "
                      "give it in its one plain form (/etc/motd)")
    for component in components:
        if len(component.encode()) > _MAX_COMPONENT_BYTES:
            raise _refuse(f"injected file path {_shown(path)} has a name longer than "
                          f"{_MAX_COMPONENT_BYTES} bytes")
    size = len(path.encode())
    if size > limits.max_injected_file_path_bytes:
        raise _refuse(
            f"injected file path {_shown(path)} is {size} bytes long; "
            f"at most {limits.max_injected_file_path_bytes} bytes are allowed"
        )


def _check_user_data(user_data: bytes | None, limits: Limits) -> None:
    if user_data is not None and len(user_data) > limits.max_user_data_bytes:
        raise _refuse(
            f"user data is {len(user_data)} bytes; "
            f"at most {limits.max_user_data_bytes} bytes are allowed"
        )


def _check_properties(properties: Mapping[str, str], limits: Limits) -> None:
    if len(properties) > limits.max_metadata_items:
        raise _refuse(
            f"{len(properties)} metadata properties; "
            f"at most {limits.max_metadata_items} are allowed"
        )
    for key, value in properties.items():
        if not key:
            raise _refuse("a metadata property has an empty key")
        problem = _unprintable(key)
        if problem is not None:
            raise _refuse(f"metadata key {_shown(key)} contains {problem}")
        problem = _unprintable(value)
        if problem is not None:
            raise _refuse(f"the value of metadata key {_shown(key)} contains {problem}")
        if len(key) > limits.max_metadata_key_chars:
            raise _refuse(
                f"metadata key {_shown(key)} is {len(key)} characters; "
                f"at most {limits.max_metadata_key_chars} are allowed"
            )
        if len(value) > limits.max_metadata_value_chars:
            raise _refuse(
                f"the value of metadata key {_shown(key)} is {len(value)} characters; "
                f"at most {limits.max_metadata_value_chars} are allowed"
            )


def _check_public_keys(keys: Mapping[str, str]) -> None:
    for name, key in keys.items():
        size = len(key.encode("utf-8", "surrogatepass"))
        if size > MAX_PUBLIC_KEY_BYTES:
            raise _refuse(f"public key {_shown(name)} is {size} bytes; an SSH public key "
                          f"is at most {MAX_PUBLIC_KEY_BYTES} bytes")
        problem = _unprintable(key.removesuffix("\n"))  # a key file's line end is fine
        if problem is not None:
            raise _refuse(f"public key {_shown(name)} contains {problem}; "
                          "it must be one line of text")


def _check_admin_password(password: str | None) -> None:
    # Never shown: the message names the problem only.
    if password is not None and _unprintable(password) is not None:
        raise _refuse("the admin password contains a lone surrogate, a control character "
                      "or a bidirectional override")


def _check_nic(index: int, nic: Nic) -> None:
    where = f"NIC {index} ({_shown(nic.mac)})"
    if not _MAC.match(nic.mac):
        raise _refuse(f"{where}: MAC address must look like 52:54:00:12:34:56")
    if nic.address is None:
        if nic.prefix is not None or nic.gateway is not None:
            raise _refuse(f"{where}: a prefix or gateway needs a static address")
    else:
        _check_static_ipv4(where, nic)
    for server in nic.dns:
        if not _is_ip(server):
            raise _refuse(f"{where}: DNS server {_shown(server)} is not an IP address")
    if nic.mtu is not None and not 68 <= nic.mtu <= 65535:
        raise _refuse(f"{where}: MTU {nic.mtu} is outside 68..65535")


def _check_static_ipv4(where: str, nic: Nic) -> None:
    if not _is_ip(nic.address or "", version=4):
        raise _refuse(f"{where}: address {_shown(nic.address or '')} is not an IPv4 address")
    if nic.prefix is None or not 0 <= nic.prefix <= 32:
        raise _refuse(f"{where}: a static address needs a prefix length 0..32")
    if nic.gateway is not None and not _is_ip(nic.gateway, version=4):
        raise _refuse(f"{where}: gateway {_shown(nic.gateway)} is not an IPv4 address")


def _is_ip(text: str, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version


def _check_vendor_data(vendor_data: Mapping[str, Any]) -> None:
    try:
        json.dumps(vendor_data, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise _refuse(f"vendor data cannot be written as JSON: {exc}") from None


# --------------------------------------------------------------------------- the tree


@dataclass(frozen=True, slots=True)
class _Render:
    """The inputs every file builder sees."""

    md: InstanceMetadata
    include_admin_password: bool


_OMIT: Final = object()
"""A field builder's answer for "this field is absent"."""


@dataclass(frozen=True, slots=True)
class MetaField:
    """One meta_data.json key, the version that introduced it, and its value."""

    key: str
    since: str
    value: Callable[[_Render], object]


@dataclass(frozen=True, slots=True)
class TreeFile:
    """One file in every version directory from ``since`` on.

    ``build`` answers None when the file is absent for this instance.
    """

    name: str
    since: str
    build: Callable[[_Render, str], bytes | None]


def _in_version(version: str, since: str) -> bool:
    # Dated versions are ISO dates, so string order is time order.
    return version == LATEST or version >= since


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True).encode("ascii")


def _content_name(index: int) -> str:
    return f"{index:04d}"


def _files_field(r: _Render) -> object:
    if not r.md.injected_files:
        return _OMIT
    return [
        {"path": path, "content_path": f"/content/{_content_name(index)}"}
        for index, (path, _) in enumerate(r.md.injected_files)
    ]


def _keys_field(r: _Render) -> object:
    if not r.md.public_keys:
        return _OMIT
    return [
        {"name": name, "type": "ssh", "data": key} for name, key in sorted(r.md.public_keys.items())
    ]


def _admin_pass_field(r: _Render) -> object:
    if r.include_admin_password and r.md.admin_password is not None:
        return r.md.admin_password
    return _OMIT


def _random_seed_field(r: _Render) -> object:
    if not r.md.random_seed:
        return _OMIT
    return base64.b64encode(r.md.random_seed).decode("ascii")


META_DATA_FIELDS: Final[tuple[MetaField, ...]] = (
    MetaField("uuid", FOLSOM, lambda r: r.md.uuid),
    MetaField("name", FOLSOM, lambda r: r.md.name),
    MetaField("hostname", FOLSOM, lambda r: r.md.hostname),
    MetaField("launch_index", FOLSOM, lambda r: r.md.launch_index),
    MetaField("availability_zone", FOLSOM, lambda r: r.md.availability_zone),
    MetaField("meta", FOLSOM, lambda r: dict(r.md.properties) if r.md.properties else _OMIT),
    MetaField("public_keys", FOLSOM, lambda r: dict(r.md.public_keys) or _OMIT),
    MetaField("keys", FOLSOM, _keys_field),
    MetaField("files", FOLSOM, _files_field),
    MetaField("admin_pass", FOLSOM, _admin_pass_field),
    MetaField("random_seed", GRIZZLY, _random_seed_field),
    MetaField("project_id", LIBERTY, lambda r: r.md.project_id),
    MetaField("devices", NEWTON_ONE, lambda r: []),
)


def _meta_data_json(r: _Render, version: str) -> bytes:
    document: dict[str, object] = {}
    for meta in META_DATA_FIELDS:
        if _in_version(version, meta.since):
            value = meta.value(r)
            if value is not _OMIT:
                document[meta.key] = value
    return _json(document)


def _user_data(r: _Render, version: str) -> bytes | None:
    return r.md.user_data


def _vendor_data_json(r: _Render, version: str) -> bytes:
    return _json(dict(r.md.vendor_data))


def _vendor_data2_json(r: _Render, version: str) -> bytes:
    # vendor_data2.json holds one entry per vendordata provider; ours is static.
    return _json({"static": dict(r.md.vendor_data)})


def _network_data_json(r: _Render, version: str) -> bytes:
    return _json(network_data(r.md.nics))


OPENSTACK_FILES: Final[tuple[TreeFile, ...]] = (
    TreeFile("meta_data.json", FOLSOM, _meta_data_json),
    TreeFile("user_data", FOLSOM, _user_data),
    TreeFile("vendor_data.json", HAVANA, _vendor_data_json),
    TreeFile("network_data.json", LIBERTY, _network_data_json),
    TreeFile("vendor_data2.json", NEWTON_TWO, _vendor_data2_json),
)


def network_data(nics: Sequence[Nic]) -> dict[str, list[dict[str, object]]]:
    """network_data.json: links (NICs), networks (IPv4 on a link), services (DNS)."""
    links = [_link(index, nic) for index, nic in enumerate(nics)]
    networks = [_network(index, nic) for index, nic in enumerate(nics)]
    servers: list[str] = []
    for nic in nics:
        servers += [server for server in nic.dns if server not in servers]
    return {"links": links, "networks": networks, "services": _dns_services(servers)}


def _link(index: int, nic: Nic) -> dict[str, object]:
    return {
        "id": f"interface{index}",
        "type": "phy",
        "ethernet_mac_address": nic.mac.lower(),
        "mtu": nic.mtu,
    }


def _network(index: int, nic: Nic) -> dict[str, object]:
    network: dict[str, object] = {"id": f"network{index}", "link": f"interface{index}"}
    if nic.address is None:
        network["type"] = "ipv4_dhcp"
        return network
    interface = ipaddress.IPv4Interface(f"{nic.address}/{nic.prefix}")
    network.update(
        type="ipv4",
        ip_address=nic.address,
        netmask=str(interface.netmask),
        routes=_default_route(nic.gateway),
        services=_dns_services(nic.dns),
    )
    return network


def _default_route(gateway: str | None) -> list[dict[str, object]]:
    if gateway is None:
        return []
    return [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": gateway}]


def _dns_services(servers: Sequence[str]) -> list[dict[str, object]]:
    return [{"type": "dns", "address": server} for server in servers]


def _ec2_meta_data_json(r: _Render, version: str) -> bytes:
    md = r.md
    document: dict[str, object] = {
        "ami-launch-index": md.launch_index,
        "hostname": md.hostname,
        "instance-action": "none",
        "instance-id": md.uuid,
        "local-hostname": md.hostname,
        "placement": {"availability-zone": md.availability_zone},
        "public-hostname": md.hostname,
    }
    static = [nic.address for nic in md.nics if nic.address is not None]
    if static:
        document["local-ipv4"] = static[0]
    if md.public_keys:
        keys = sorted(md.public_keys.items())
        document["public-keys"] = {str(i): {"openssh-key": key} for i, (_, key) in enumerate(keys)}
    return _json(document)


EC2_FILES: Final[tuple[TreeFile, ...]] = (
    TreeFile("meta-data.json", EC2_VERSIONS[0], _ec2_meta_data_json),
    TreeFile("user-data", EC2_VERSIONS[0], _user_data),
)


def build_tree(md: InstanceMetadata, include_admin_password: bool) -> dict[str, bytes]:
    """Every file of the config drive, keyed by its path (no leading '/')."""
    r = _Render(md, include_admin_password)
    tree: dict[str, bytes] = {}
    _add_versions(tree, r, "openstack", (*OPENSTACK_VERSIONS, LATEST), OPENSTACK_FILES)
    for index, (_, content) in enumerate(md.injected_files):
        tree[f"openstack/content/{_content_name(index)}"] = bytes(content)
    _add_versions(tree, r, "ec2", (*EC2_VERSIONS, LATEST), EC2_FILES)
    return tree


def _add_versions(
    tree: dict[str, bytes],
    r: _Render,
    top: str,
    versions: Sequence[str],
    files: Sequence[TreeFile],
) -> None:
    for version in versions:
        for entry in files:
            if not _in_version(version, entry.since):
                continue
            content = entry.build(r, version)
            if content is not None:
                tree[f"{top}/{version}/{entry.name}"] = content
