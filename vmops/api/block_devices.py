"""Nova's ``block_device_mapping_v2`` on server create: what the root disk
is, and the other volumes the server is created with.

The root disk (``boot_index`` 0), as OpenStackClient and Tempest send it:

- image -> local: the image onto a local disk (``--image``);
- image -> volume: a new volume of ``volume_size`` GiB made from the image
  (``--boot-from-volume N``);
- volume -> volume: an existing volume (``--volume``).

The others (``boot_index`` null, negative or above 0), attached after the
server's own disks (``--block-device-mapping``, ``--block-device``):

- volume -> volume: an existing volume;
- blank -> volume: a new blank volume of ``volume_size`` GiB;
- image -> volume: a new volume of ``volume_size`` GiB made from the image.

Each entry is checked as Nova's schema and its block device checks do
(types, source and destination, boot indexes, sizes, ids), with a 400 that
names what is wrong; what vmops does not do (volume snapshots, swap or
ephemeral disks through mappings, a blank root) is refused by name.
"""

from __future__ import annotations

import re
from typing import Any

from vmops.compute.boot_volume import BootVolume
from vmops.compute.server_volumes import ExtraVolume
from vmops.errors import Invalid

SOURCE_TYPES = ("volume", "image", "snapshot", "blank")
DESTINATION_TYPES = ("local", "volume")
FIELDS = {"uuid", "boot_index", "source_type", "destination_type", "delete_on_termination",
          "device_type", "disk_bus", "volume_size", "device_name"}
TAG_FIELD = "tag"
# Nova's schema for a mapping's uuid (any id Cinder or Glance may use).
UUID = re.compile(r"^[a-zA-Z0-9._-]{1,255}$")
# Nova's booleans in a request body: these strings count as true or false.
TRUE = frozenset({"true", "1", "on", "yes"})
FALSE = frozenset({"false", "0", "off", "no"})
MAX_VOLUME_GB = 65536


def root_of(bdms: Any, image_ref: Any, tags: bool) -> tuple[str, BootVolume | None]:
    """The image to spawn from ('' for an existing volume) and the boot
    volume (None: a local root disk), from the mappings and imageRef.
    ``tags``: the microversion takes a ``tag`` in a mapping."""
    if not isinstance(bdms, list) or not bdms:
        raise Invalid(reason="block_device_mapping_v2 must be a non-empty list")
    entries = [_entry(bdm, n, tags) for n, bdm in enumerate(bdms)]
    roots = [e for e in entries if e["boot_index"] == 0]
    indexes = sorted(e["boot_index"] for e in entries if e["boot_index"] is not None
                     and e["boot_index"] >= 0)
    if indexes != list(range(len(indexes))) or len(roots) != 1:
        raise Invalid(reason="Block Device Mapping is Invalid: Boot sequence for the instance "
                      "and image/block device mapping combination is not valid (exactly one "
                      "mapping has boot_index 0, the others count up from 1)")
    for entry in entries:
        if entry is not roots[0]:
            _extra(entry)  # refused here as in extras_of, whichever is asked first
    root = roots[0]
    image = image_ref if isinstance(image_ref, str) else ""
    source, destination = root["source_type"], root["destination_type"]
    if source == "image":
        if image not in ("", root["uuid"]):
            raise Invalid(reason="imageRef and the block device mapping name different images")
        if destination == "local":
            if root["delete_on_termination"] is False:
                raise Invalid(reason="a local root disk is always deleted with its server: "
                              "delete_on_termination false needs destination_type volume")
            return root["uuid"], None
        size = root["volume_size"]
        if not size:
            raise Invalid(reason="Images with destination_type 'volume' need to have a "
                          "non-zero size specified")
        return root["uuid"], BootVolume(size_gb=size,
                                        delete_on_termination=bool(root["delete_on_termination"]))
    if source == "volume":
        if destination != "volume":
            raise Invalid(reason="Block Device Mapping is Invalid: a volume's destination_type "
                          "is volume, not local")
        return "", BootVolume(volume=root["uuid"],
                              delete_on_termination=bool(root["delete_on_termination"]))
    if source == "snapshot":
        raise Invalid(reason="vmops has no volume snapshots: boot from a volume "
                      "(source_type volume) or an image (source_type image)")
    raise Invalid(reason="Block Device Mapping is Invalid: a blank disk cannot be the root "
                  "disk (boot_index 0)")


def extras_of(bdms: Any, tags: bool) -> tuple[ExtraVolume, ...]:
    """The volumes besides the root (in the order given); the mappings are
    checked as :func:`root_of` checks them."""
    if not isinstance(bdms, list):
        return ()
    entries = [_entry(bdm, n, tags) for n, bdm in enumerate(bdms)]
    return tuple(_extra(e) for e in entries if e["boot_index"] != 0)


def _extra(entry: dict[str, Any]) -> ExtraVolume:
    source, destination = entry["source_type"], entry["destination_type"]
    if destination == "local":
        raise Invalid(reason="vmops makes a server's swap and ephemeral disks from its flavor: "
                      "block device mappings with destination_type local besides the root "
                      "disk are not supported")
    if source == "snapshot":
        raise Invalid(reason="vmops has no volume snapshots: a block device's source_type is "
                      "volume, blank or image")
    dot = bool(entry["delete_on_termination"])
    if source == "volume":
        return ExtraVolume(volume=entry["uuid"], delete_on_termination=dot)
    if not entry["volume_size"]:
        raise Invalid(reason=f"a new {source} volume needs a non-zero volume_size (GiB)")
    return ExtraVolume(size_gb=entry["volume_size"], delete_on_termination=dot,
                       image=entry["uuid"] if source == "image" else "")


def _entry(bdm: Any, n: int, tags: bool) -> dict[str, Any]:
    """One mapping, checked and normalised (boot_index an int or None,
    volume_size an int or None, delete_on_termination a bool or None)."""
    where = f"block_device_mapping_v2[{n}]"
    if not isinstance(bdm, dict):
        raise Invalid(reason=f"{where} must be an object")
    allowed = FIELDS | ({TAG_FIELD} if tags else set())
    unknown = sorted(set(bdm) - allowed)
    if unknown:
        raise Invalid(reason=f"{where}: unknown field(s) {', '.join(unknown)}; allowed: "
                      f"{', '.join(sorted(allowed))}")
    source = bdm.get("source_type")
    if source not in SOURCE_TYPES:
        raise Invalid(reason=f"{where}.source_type must be one of {', '.join(SOURCE_TYPES)}, "
                      f"not {source!r}")
    destination = bdm.get("destination_type", "local" if source in ("image", "blank")
                          else "volume")
    if destination not in DESTINATION_TYPES:
        raise Invalid(reason=f"{where}.destination_type must be one of "
                      f"{', '.join(DESTINATION_TYPES)}, not {destination!r}")
    uuid = bdm.get("uuid")
    if source != "blank" and (not isinstance(uuid, str) or not UUID.match(uuid)):
        raise Invalid(reason=f"{where}.uuid must name the {source} (an id of letters, digits, "
                      f"'.', '_' or '-'), not {uuid!r}")
    if bdm.get("device_type") not in (None, "disk"):
        raise Invalid(reason=f"{where}.device_type: vmops attaches disks only, not "
                      f"{bdm.get('device_type')!r}")
    return {"source_type": source, "destination_type": destination, "uuid": uuid,
            "boot_index": _boot_index(bdm.get("boot_index"), where),
            "volume_size": _volume_size(bdm.get("volume_size"), where),
            "delete_on_termination": _boolean(bdm.get("delete_on_termination"),
                                              f"{where}.delete_on_termination")}


def _boot_index(value: Any, where: str) -> int | None:
    """An integer (or its digits as a string), or null: not bootable."""
    if value is None or value == "None":
        return None
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,9}", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(reason=f"{where}.boot_index must be an integer, not {value!r}")
    return value


def _volume_size(value: Any, where: str) -> int | None:
    """GiB: a whole number from 0 (or its digits as a string), or null."""
    if value is None:
        return None
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,9}", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Invalid(reason=f"{where}.volume_size must be a whole number of GiB, not "
                      f"{value!r}")
    if value > MAX_VOLUME_GB:
        raise Invalid(reason=f"{where}.volume_size {value} GiB is over the limit of "
                      f"{MAX_VOLUME_GB}")
    return value


def _boolean(value: Any, what: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE | FALSE:
        return value.lower() in TRUE
    raise Invalid(reason=f"{what} must be a boolean, not {value!r}")
