"""Validation of the names and identifiers users type."""

from __future__ import annotations

import random
import re

from vmops.errors import Invalid, InvalidName

_MAC = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")
# Names of flavors, images and keypairs are not hostnames, but are typed in
# shells and stored in file names: printable, no path separators. Flavor ids
# chosen by a client follow the same rule. (fullmatch: ``$`` would let a
# trailing newline through.)
_RESOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
# Instance and image ids are UUIDs, and ``{id}`` in the API takes an id or a
# name: a name of that form could be another's id.
_UUID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_LOOKS_LIKE_ID = "it has the form of an id (a UUID): names and ids are looked up alike"


MAX_DISPLAY_NAME_CHARS = 255


def check_display_name(name: str) -> str:
    """A server's name, as Nova takes it: 1 to 255 printable characters,
    not starting or ending with whitespace; duplicates allowed (the guest's
    hostname is derived from it: :func:`hostname_of`)."""
    if not name:
        raise InvalidName(name=name, reason="it is empty")
    if len(name) > MAX_DISPLAY_NAME_CHARS:
        raise InvalidName(name=name[:80] + "...", reason=f"it has {len(name)} characters, at "
                          f"most {MAX_DISPLAY_NAME_CHARS} allowed")
    if not name.isprintable():
        raise InvalidName(name=name.encode("unicode_escape").decode()[:80],
                          reason="it contains a character that is not printable")
    if name != name.strip():
        raise InvalidName(name=name, reason="it starts or ends with whitespace")
    if _UUID.fullmatch(name):
        raise InvalidName(name=name, reason=_LOOKS_LIKE_ID)
    return name


def hostname_of(name: str, instance_id: str) -> str:
    """The guest's hostname for display name ``name``, the way Nova derives
    it: Latin-1 only, at most 63 characters, spaces, '_' and '.' made '-',
    anything else but ASCII letters, digits and '-' dropped (Nova keeps
    accented Latin-1 letters, which no DNS name may hold), lower case, no
    '-' at either end; ``server-<id>`` if nothing is left."""
    host = name.encode("latin-1", "ignore").decode("latin-1")[:63]
    host = re.sub(r"[ _.]", "-", host)
    host = re.sub(r"[^A-Za-z0-9-]+", "", host).lower().strip("-")
    return host or f"server-{instance_id}"[:63].rstrip("-")


def check_resource_name(name: str, kind: str) -> str:
    if not name:
        raise InvalidName(name=name, reason=f"a {kind} name cannot be empty")
    if not _RESOURCE.fullmatch(name):
        raise InvalidName(
            name=name[:80], reason=f"a {kind} name is up to 255 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit")
    if _UUID.fullmatch(name):
        raise InvalidName(name=name, reason=_LOOKS_LIKE_ID)
    return name


def check_resource_id(ident: str, kind: str) -> str:
    """An id a client chooses (flavors): the same characters as a name."""
    if not _RESOURCE.fullmatch(ident):
        raise Invalid(reason=f"invalid {kind} id {ident[:80]!r}: an id is 1 to 255 letters, "
                      "digits, '.', '_' or '-', starting with a letter or digit")
    return ident


def check_mac(mac: str) -> str:
    mac = mac.strip().lower()
    if not _MAC.fullmatch(mac):
        raise Invalid(reason=f"MAC address {mac!r} is not of the form 52:54:00:12:34:56")
    if int(mac[:2], 16) & 1:
        raise Invalid(reason=f"MAC address {mac!r} is a multicast address")
    return mac


def generate_mac() -> str:
    """A locally administered MAC in QEMU's 52:54:00 prefix."""
    tail = [random.randint(0, 255) for _ in range(3)]
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)
