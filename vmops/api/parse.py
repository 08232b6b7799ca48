"""Reading request bodies: every check a body must pass before anything changes.

Each helper raises :class:`~vmops.errors.Invalid` (400, ``badRequest``) with a
message naming the field and what is allowed, as Nova's schema checks do.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import ipaddress
import math
import re
from typing import Any

from vmops.api import block_devices
from vmops.api.server import Microversion
from vmops.compute.boot_volume import BootVolume
from vmops.compute.manager import SpawnRequest
from vmops.errors import Invalid

# Nova's limits on server create (Compute API v2.1 schemas).
MAX_USER_DATA_CHARS = 65535
MAX_METADATA_ITEMS = 128
MAX_METADATA_CHARS = 255


def section(body: Any, key: str) -> dict[str, Any]:
    """``body[key]``, which must be a JSON object."""
    if not isinstance(body, dict) or not isinstance(body.get(key), dict):
        raise Invalid(reason=f"the request body must be a JSON object with a {key!r} object")
    value: dict[str, Any] = body[key]
    return value


def field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...],
          required: bool = False, default: Any = None) -> Any:
    """``obj[name]`` checked against ``kind`` (a bool is never an int here)."""
    if name not in obj or obj[name] is None:
        if required:
            raise Invalid(reason=f"{name!r} is required")
        return default
    value = obj[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise Invalid(reason=f"{name!r} must be {' or '.join(_kind_name(k) for k in kinds)}, "
                      f"got {_kind_name(type(value))}")
    return value


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            dict: "an object", list: "a list", type(None): "null"}.get(kind, kind.__name__)


def no_unknown(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise Invalid(reason=f"unknown field(s) in {where}: {', '.join(unknown)}; "
                      f"allowed: {', '.join(sorted(allowed))}")


def base64_bytes(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(reason=f"{what} must be base64") from None


def reference(srv: dict[str, Any], name: str) -> str:
    """imageRef/flavorRef: an id, a name, or a link ending in the id."""
    value = srv.get(name)
    if not isinstance(value, str | int) or isinstance(value, bool) or value == "":
        raise Invalid(reason=f"{name!r} is required: a non-empty string (an id or a name)")
    ref = str(value).rstrip("/").rsplit("/", 1)[-1]
    if not ref:
        raise Invalid(reason=f"{name!r} {value!r} names nothing")
    return ref


def non_negative_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Invalid(reason=f"{what} must be a non-negative integer")
    return value


def seconds(value: Any, what: str, maximum: float | None = None) -> float:
    """A finite, non-negative number of seconds (a JSON number: NaN, Infinity
    and numbers past a float's range are refused, not compared)."""
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or (isinstance(value, float) and not math.isfinite(value)) or value < 0 \
            or (maximum is not None and value > maximum) or value > MAX_SECONDS:
        allowed = f"a number from 0 to {maximum:g}" if maximum is not None \
            else "a finite, non-negative number"
        raise Invalid(reason=f"{what} must be {allowed} of seconds")
    return float(value)


def count_arg(text: str, what: str) -> int:
    """A query argument that is a count (limit, tail): ASCII digits only
    (``str.isdigit`` also takes superscripts, which ``int`` refuses)."""
    if not _COUNT.fullmatch(text):
        raise Invalid(reason=f"{what} must be a non-negative integer of at most 9 digits")
    return int(text)


_COUNT = re.compile(r"[0-9]{1,9}")
# A century: far past any wait or age anyone means, and well inside a float.
MAX_SECONDS = 100 * 365 * 86400


# -- server create -------------------------------------------------------------
SERVER_FIELDS = {"name", "imageRef", "flavorRef", "networks", "config_drive", "user_data",
                 "key_name", "metadata", "personality", "adminPass", "min_count",
                 "max_count", "return_reservation_id", "vmops:mac", "availability_zone",
                 "security_groups", "OS-DCF:diskConfig", "block_device_mapping_v2",
                 "accessIPv4", "accessIPv6", "vmops:start"}
# Fields added by microversions, from the version on which Nova takes them.
SERVER_FIELDS_SINCE = {"description": (2, 19), "tags": (2, 52)}
MAX_SERVERS_PER_REQUEST = 100
MAX_DESCRIPTION_CHARS = 255
MAX_TAGS = 50
MAX_TAG_CHARS = 60


@dataclasses.dataclass(frozen=True)
class ServerCreate:
    """A checked POST /servers: what to spawn, how many, what to answer."""

    spawn: SpawnRequest
    min_count: int = 1
    max_count: int = 1
    return_reservation_id: bool = False


def spawn_request(body: Any, version: Microversion = (2, 1)) -> ServerCreate:
    """The body of POST /servers, checked whole before anything is made."""
    if isinstance(body, dict):
        no_unknown(body, {"server", "os:scheduler_hints", "OS-SCH-HNT:scheduler_hints"},
                   "the request body")
    srv = section(body, "server")
    no_unknown(srv, SERVER_FIELDS | {k for k, v in SERVER_FIELDS_SINCE.items()
                                     if version >= v}, "server")
    min_count, max_count = _counts(srv)
    _check_placement(srv)
    user_data = field(srv, "user_data", str)
    if user_data is not None and len(user_data) > MAX_USER_DATA_CHARS:
        raise Invalid(reason=f"user_data is {len(user_data)} base64 characters, at most "
                      f"{MAX_USER_DATA_CHARS} allowed")
    image, boot_volume = _root_disk(srv, version)
    extra_volumes = block_devices.extras_of(srv.get("block_device_mapping_v2"),
                                            device_tags(version))
    spawn = SpawnRequest(
        name=field(srv, "name", str, required=True), image=image, boot_volume=boot_volume,
        extra_volumes=extra_volumes,
        flavor=reference(srv, "flavorRef"), mac=field(srv, "vmops:mac", str),
        config_drive=_config_drive(srv),
        user_data=base64_bytes(user_data, "user_data") if user_data is not None else None,
        key_name=field(srv, "key_name", str), files=_personality(srv),
        properties=metadata(field(srv, "metadata", dict, default={})),
        admin_password=field(srv, "adminPass", str), **_networks(srv, version),
        security_groups=_security_groups(srv), description=description(srv),
        access_ipv4=access_ip(srv, "accessIPv4", 4), access_ipv6=access_ip(srv, "accessIPv6", 6),
        disk_config=field(srv, "OS-DCF:diskConfig", str, default="MANUAL"),
        tags=tags(field(srv, "tags", list, default=[])),
        start=field(srv, "vmops:start", bool, default=True))
    if max_count > 1 and spawn.mac is not None:
        raise Invalid(reason="vmops:mac names one MAC address: create one server with it")
    if max_count > 1 and any(v.volume for v in extra_volumes):  # Nova's words
        raise Invalid(reason="Cannot attach one or more volumes to multiple instances")
    return ServerCreate(spawn, min_count, max_count,
                        field(srv, "return_reservation_id", bool, default=False))


def _counts(srv: dict[str, Any]) -> tuple[int, int]:
    """min_count and max_count: whole numbers from 1 (or such strings),
    min_count at most max_count; max_count defaults to min_count."""
    counts = []
    for name in ("min_count", "max_count"):
        value = field(srv, name, (int, str))
        if value is not None and (not str(value).isdigit() or not str(value).isascii()
                                  or int(value) < 1):
            raise Invalid(reason=f"{name} must be a whole number from 1, got {value!r}")
        counts.append(None if value is None else int(value))
    low = counts[0] or 1
    high = counts[1] if counts[1] is not None else low
    if low > high:
        raise Invalid(reason=f"min_count ({low}) is more than max_count ({high})")
    if high > MAX_SERVERS_PER_REQUEST:
        raise Invalid(reason=f"max_count is {high}; at most {MAX_SERVERS_PER_REQUEST} servers "
                      "per request")
    return low, high


def description(obj: dict[str, Any]) -> str | None:
    """A server's description (2.19): null or at most 255 printable characters."""
    text = field(obj, "description", str)
    if text is not None and (len(text) > MAX_DESCRIPTION_CHARS or not text.isprintable()):
        raise Invalid(reason=f"description is at most {MAX_DESCRIPTION_CHARS} printable "
                      "characters")
    value: str | None = text
    return value


def access_ip(obj: dict[str, Any], name: str, version: int) -> str:
    """accessIPv4 / accessIPv6: an address of that version, or "" for none."""
    text = field(obj, name, str, default="")
    if text == "":
        return ""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = None
    if address is None or address.version != version:
        raise Invalid(reason=f"{name} must be an IPv{version} address, not {text!r}")
    return str(address)


def tags(items: list[Any]) -> tuple[str, ...]:
    """Server tags: at most 50, each 1 to 60 characters without '/' or ','."""
    if len(items) > MAX_TAGS:
        raise Invalid(reason=f"{len(items)} tags; a server has at most {MAX_TAGS}")
    for tag in items:
        if not isinstance(tag, str) or not 1 <= len(tag) <= MAX_TAG_CHARS \
                or "/" in tag or "," in tag:
            raise Invalid(reason=f"invalid tag {tag!r}: 1 to {MAX_TAG_CHARS} characters, "
                          "no '/' or ','")
    return tuple(dict.fromkeys(items))


# The networks a server may name in "networks": [{"uuid": ...}].
NETWORK_MODES = {"vmops": "bridge", "user": "user"}


def _networks(srv: dict[str, Any], version: Microversion) -> dict[str, Any]:
    """Nova's "networks": absent or "auto" takes the network_mode setting,
    "none" (no network anyone reaches) a user-mode NIC; one entry names the
    vmops network or user-mode, with an optional fixed_ip. From 2.37 on it
    is required, as with Nova."""
    networks = srv.get("networks")
    if networks is None and version >= (2, 37):
        raise Invalid(reason="'networks' is required from microversion 2.37: \"auto\", "
                      "\"none\" or a list such as [{\"uuid\": \"vmops\"}]")
    if networks in ("auto", "none") and version < (2, 37):
        raise Invalid(reason=f"networks {networks!r} needs microversion 2.37 or later; "
                      "give a list, such as [{\"uuid\": \"vmops\"}]")
    if networks == "none":
        return {"network": NETWORK_MODES["user"]}
    if networks in (None, "auto", []):
        return {}
    if not isinstance(networks, list) or len(networks) != 1 \
            or not isinstance(networks[0], dict):
        raise Invalid(reason="'networks' is \"auto\" or one entry such as "
                      "[{\"uuid\": \"vmops\", \"fixed_ip\": \"10.213.0.5\"}]: "
                      "vmops gives a server one NIC")
    entry = networks[0]
    no_unknown(entry, {"uuid", "fixed_ip"} | ({"tag"} if device_tags(version) else set()),
               "networks[0]")
    name = field(entry, "uuid", str, default="vmops")
    if name not in NETWORK_MODES:
        raise Invalid(reason=f"network {name!r} does not exist: 'vmops' (the bridge) or "
                      "'user' (QEMU user-mode)")
    return {"network": NETWORK_MODES[name], "fixed_ip": field(entry, "fixed_ip", str)}


def _security_groups(srv: dict[str, Any]) -> tuple[str, ...]:
    groups = field(srv, "security_groups", list, default=[])
    names = []
    for group in groups:
        if not isinstance(group, dict) or set(group) != {"name"} \
                or not isinstance(group["name"], str):
            raise Invalid(reason='each security group is {"name": "..."}')
        names.append(group["name"])
    return tuple(names)


def device_tags(version: Microversion) -> bool:
    """Nova takes device tags (``tag`` in networks and block device
    mappings) at 2.32 to 2.36 and again from 2.42."""
    return (2, 32) <= version <= (2, 36) or version >= (2, 42)


def _root_disk(srv: dict[str, Any],
               version: Microversion) -> tuple[str, BootVolume | None]:
    """imageRef, or the block device mapping that says what the root disk
    is: an image onto a local disk, or a volume (vmops/api/block_devices.py)."""
    bdms = srv.get("block_device_mapping_v2")
    if bdms in (None, []):
        return reference(srv, "imageRef"), None
    return block_devices.root_of(bdms, srv.get("imageRef"), device_tags(version))


def _check_placement(srv: dict[str, Any]) -> None:
    """Zones and disk config: only what one host has, so nothing asked for
    is silently dropped."""
    zone = field(srv, "availability_zone", str)
    if zone not in (None, "", "nova"):
        raise Invalid(reason=f"availability zone {zone!r} does not exist; this host is 'nova'")
    disk_config = field(srv, "OS-DCF:diskConfig", str)
    if disk_config not in (None, "AUTO", "MANUAL"):
        raise Invalid(reason="OS-DCF:diskConfig must be AUTO or MANUAL")


def _config_drive(srv: dict[str, Any]) -> bool:
    value = field(srv, "config_drive", (bool, str), default=False)
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text not in ("", "true", "false", "1", "0", "yes", "no", "on", "off"):
        raise Invalid(reason=f"config_drive must be true or false, not {value!r}")
    return text in ("true", "1", "yes", "on")


def _personality(srv: dict[str, Any]) -> tuple[tuple[str, bytes], ...]:
    files = []
    for item in field(srv, "personality", list, default=[]):
        if not isinstance(item, dict) or set(item) != {"path", "contents"} \
                or not isinstance(item["path"], str) or not isinstance(item["contents"], str):
            raise Invalid(reason="each personality item is {\"path\": ..., \"contents\": "
                          "base64}, nothing else")
        files.append((item["path"], base64_bytes(item["contents"],
                                                 f"contents of {item['path']}")))
    return tuple(files)


def metadata(items: dict[str, Any]) -> dict[str, str]:
    if len(items) > MAX_METADATA_ITEMS:
        raise Invalid(reason=f"metadata has {len(items)} items, at most "
                      f"{MAX_METADATA_ITEMS} allowed")
    for key, value in items.items():
        if not isinstance(value, str):
            raise Invalid(reason=f"metadata value of {key!r} must be a string")
        if not 1 <= len(key) <= MAX_METADATA_CHARS or len(value) > MAX_METADATA_CHARS:
            raise Invalid(reason=f"metadata keys are 1 to {MAX_METADATA_CHARS} characters and "
                          f"values at most {MAX_METADATA_CHARS}")
    return dict(items)


# -- actions -------------------------------------------------------------------
def one_action(body: Any) -> tuple[str, Any]:
    if not isinstance(body, dict) or len(body) != 1:
        raise Invalid(reason="an action body is a JSON object with exactly one action")
    ((action, arg),) = body.items()
    return action, arg


def no_argument(action: str, arg: Any) -> None:
    """pause, unpause, suspend, resume, os-start: null or {} only."""
    if arg not in (None, {}):
        raise Invalid(reason=f"{action} takes null (or an empty object)")


def stop_options(arg: Any) -> tuple[float | None, bool]:
    """os-stop: null, or vmops' own {"vmops:timeout": s, "vmops:hard": bool}."""
    if arg is None:
        return None, False
    if not isinstance(arg, dict):
        raise Invalid(reason="os-stop takes null or an object")
    no_unknown(arg, {"vmops:timeout", "vmops:hard"}, "os-stop")
    timeout = arg.get("vmops:timeout")
    if timeout is not None:
        timeout = seconds(timeout, "vmops:timeout", 3600)
    return timeout, field(arg, "vmops:hard", bool, default=False)


def reboot_hard(arg: Any) -> bool:
    if not isinstance(arg, dict):
        raise Invalid(reason="reboot takes an object: {\"type\": \"SOFT\" or \"HARD\"}")
    no_unknown(arg, {"type"}, "reboot")
    kind: str = field(arg, "type", str, required=True).upper()
    if kind not in ("SOFT", "HARD"):
        raise Invalid(reason=f"reboot type must be SOFT or HARD, not {kind!r}")
    return kind == "HARD"


def create_image(arg: Any) -> tuple[str, dict[str, str]]:
    """createImage: {"name": "...", "metadata": {...}}: the image's name and
    properties (kept with the image, shown in its metadata)."""
    if not isinstance(arg, dict):
        raise Invalid(reason='createImage takes an object: {"name": "<image name>"}')
    no_unknown(arg, {"name", "metadata"}, "createImage")
    name: str = field(arg, "name", str, required=True)
    return name, metadata(field(arg, "metadata", dict, default={}))


@dataclasses.dataclass(frozen=True)
class Rebuild:
    """A checked rebuild: the image, and the record's fields to change."""

    image: str
    changes: dict[str, Any]
    admin_password: str | None = None


REBUILD_FIELDS = {"imageRef", "preserve_ephemeral", "name", "metadata", "adminPass",
                  "accessIPv4", "accessIPv6", "OS-DCF:diskConfig", "personality"}


def rebuild(arg: Any, version: Microversion = (2, 1)) -> Rebuild:
    """rebuild: {"imageRef": "...", and Nova's optional changes: name,
    metadata, adminPass, accessIPv4/6, description (2.19)}; the rest of the
    server is kept. Personality files cannot be replaced (the drive keeps the
    spawn's)."""
    if not isinstance(arg, dict):
        raise Invalid(reason='rebuild takes an object: {"imageRef": "<image>"}')
    no_unknown(arg, REBUILD_FIELDS | ({"description"} if version >= (2, 19) else set()),
               "rebuild")
    if arg.get("preserve_ephemeral") not in (None, False):
        raise Invalid(reason="preserve_ephemeral is not supported (as with Nova's libvirt "
                      "driver): rebuild gives the instance a blank ephemeral disk")
    disk_config = field(arg, "OS-DCF:diskConfig", str)
    if disk_config not in (None, "AUTO", "MANUAL"):
        raise Invalid(reason="OS-DCF:diskConfig must be AUTO or MANUAL")
    image: str = reference(arg, "imageRef")
    return Rebuild(image, server_changes(arg, version),
                   field(arg, "adminPass", str))


def server_update(body: Any, version: Microversion = (2, 1)) -> dict[str, Any]:
    """PUT /servers/{id}: {"server": {name, accessIPv4, accessIPv6,
    OS-DCF:diskConfig, description (2.19)}} -> the record's changes."""
    srv = section(body, "server")
    no_unknown(srv, {"name", "accessIPv4", "accessIPv6", "OS-DCF:diskConfig"} |
               ({"description"} if version >= (2, 19) else set()), "server")
    disk_config = field(srv, "OS-DCF:diskConfig", str)
    if disk_config not in (None, "AUTO", "MANUAL"):
        raise Invalid(reason="OS-DCF:diskConfig must be AUTO or MANUAL")
    return server_changes(srv, version)


def server_changes(obj: dict[str, Any], version: Microversion) -> dict[str, Any]:
    """The record fields update and rebuild may change (only those given)."""
    from vmops.compute.names import check_display_name

    changes: dict[str, Any] = {}
    if "name" in obj:
        changes["name"] = check_display_name(field(obj, "name", str, required=True))
    if "metadata" in obj:
        changes["properties"] = metadata(field(obj, "metadata", dict, default={}))
    for key, attr, ip_version in (("accessIPv4", "access_ipv4", 4),
                                  ("accessIPv6", "access_ipv6", 6)):
        if key in obj:
            changes[attr] = access_ip(obj, key, ip_version)
    if "description" in obj and version >= (2, 19):
        changes["description"] = description(obj)
    if obj.get("OS-DCF:diskConfig") is not None:
        changes["disk_config"] = obj["OS-DCF:diskConfig"]  # checked by the caller
    if "personality" in obj:  # rebuild: the files the new config drive carries
        changes["injected_files"] = tuple(
            (path, base64.b64encode(contents).decode()) for path, contents in _personality(obj))
    return changes


def console_length(arg: Any) -> int | None:
    """os-getConsoleOutput: {"length": N} (a number or numeric string) or null."""
    if arg is None:
        return None
    if not isinstance(arg, dict):
        raise Invalid(reason="os-getConsoleOutput takes an object: {\"length\": N}")
    no_unknown(arg, {"length"}, "os-getConsoleOutput")
    length = arg.get("length")
    if length is None or (length in ("-1", -1) and not isinstance(length, bool)):
        return None  # Nova: -1 means everything
    if isinstance(length, str):
        return count_arg(length, "length")
    if isinstance(length, float) and length.is_integer():
        length = int(length)  # Nova's schema takes 10.0 as 10
    return non_negative_int(length, "length")


# Nova's boolean parameters: these spellings, nothing else.
TRUE_WORDS = {"1", "true", "on", "yes"}
FALSE_WORDS = {"0", "false", "off", "no"}


def boolean(value: Any, what: str) -> bool:
    """true/false, or a string Nova takes for one ("True", "yes", "0", ...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE_WORDS | FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    raise Invalid(reason=f"{what} must be a boolean (true/false, or 'True', 'False', 'yes', "
                  f"'no', '1', '0', 'on', 'off'), not {value!r}")


def whole_number(value: Any, what: str, minimum: int = 0) -> int:
    """An integer, or a string of digits (Nova's flavor parameters), at
    least ``minimum``."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise Invalid(reason=f"{what} must be a whole number from {minimum}, not {value!r}")
    return value


def timestamp(text: str, what: str) -> float:
    """An ISO 8601 time (``2024-05-01T12:00:00Z``, an offset, or naive UTC)
    as seconds since the epoch."""
    try:
        # A "+" not escaped in a query string arrives as a space.
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise Invalid(reason=f"{what} must be an ISO 8601 time such as "
                      f"2024-05-01T12:00:00Z, not {text[:40]!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def wait_seconds(text: str | None) -> float:
    """The ``vmops:wait`` query argument: seconds to wait for an action to end."""
    try:
        value = float(text or "")
    except ValueError:
        raise Invalid(reason="vmops:wait must be a number of seconds") from None
    return seconds(value, "vmops:wait", 3600)
