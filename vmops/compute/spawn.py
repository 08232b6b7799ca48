"""The disk and config-drive steps of spawn, and the checks made before it.

Each step writes only inside the instance's own directory (``inst_dir``,
given by the caller), so rolling a spawn back is removing that directory
(``Compute._teardown``). Each takes what it uses: the settings, the store,
the directory, the config drive's NICs; never the whole ``Compute``.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from vmops import configdrive
from vmops.config import Settings
from vmops.disks import instance_disks
from vmops.errors import FlavorTooSmall
from vmops.store import DiskRecord, Flavor, Image, Instance, Port, Store

if TYPE_CHECKING:
    from vmops.compute.manager import SpawnRequest
    from vmops.network.manager import Network

GIB = 1024**3
MIB = 1024**2
REBUILD_STAGING = "rebuild"  # a directory inside the instance's own
EPHEMERAL_FILE = "ephemeral.qcow2"  # the disks' names in the instance's directory
SWAP_FILE = "swap.raw"


def disk_target(index: int) -> str:
    """The virtio target of an instance's ``index``-th disk: vda, vdb, ..."""
    return "vd" + "abcdefghijklmnopqrstuvwxyz"[index]


def own_disk_count(settings: Settings, flavor: Flavor, config_drive: bool) -> int:
    """How many virtio disks :func:`create_disks` gives an instance (its root,
    local or a volume, included): the volumes it is created with follow them."""
    drive_on_disk = config_drive and settings.config_drive_format != "cdrom"
    return 1 + bool(flavor.ephemeral_gb) + bool(flavor.swap_mb) + drive_on_disk


def check_root_fits(flavor: Flavor, image: Image) -> None:
    """Refuse before anything is made if the flavor's root disk is too small."""
    wanted = flavor.root_gb * GIB
    if wanted and wanted < image.virtual_size:
        raise FlavorTooSmall(flavor=flavor.name, flavor_bytes=wanted, image=image.name,
                             image_bytes=image.virtual_size)


def recorded_flavor(inst: Instance) -> Flavor:
    """The flavor as the instance recorded it at spawn (the flavor may have
    been deleted since)."""
    f = inst.flavor
    return Flavor(id=f.id, name=f.name, ram_mib=f.ram_mib, vcpus=f.vcpus, root_gb=f.root_gb,
                  ephemeral_gb=f.ephemeral_gb, swap_mb=f.swap_mb)


def _limits(s: Settings) -> configdrive.Limits:
    return configdrive.Limits(max_injected_files=s.max_injected_files,
                              max_injected_file_bytes=s.max_injected_file_bytes,
                              max_injected_file_path_bytes=s.max_injected_path_length)


def _metadata(inst_id: str, name: str, nics: list[configdrive.Nic], public_keys: dict[str, str],
              properties: dict[str, str], files: tuple[tuple[str, bytes], ...],
              user_data: bytes | None, admin_password: str | None,
              hostname: str = "", project_id: str = "") -> configdrive.InstanceMetadata:
    """``hostname``: Nova's, derived from the display name at spawn."""
    return configdrive.InstanceMetadata(
        uuid=inst_id, name=name, hostname=hostname or name, properties=dict(properties),
        public_keys=public_keys, injected_files=tuple(files), user_data=user_data,
        admin_password=admin_password, nics=nics,
        random_seed=configdrive.new_random_seed(), project_id=project_id or "vmops")


def public_key(store: Store, req: SpawnRequest) -> str | None:
    """The key pair's public key: the one the request carries (Nova's), else
    vmops' key pair ``key_name`` of the request's user; None without a name."""
    if not req.key_name:
        return None
    if req.key_data is not None:
        return req.key_data
    return store.keypair(req.key_name, req.user_id or None).public_key


def validate_config_drive(settings: Settings, store: Store, req: SpawnRequest, inst_id: str,
                          mac: str) -> None:
    key = public_key(store, req)
    keys = {req.key_name: key} if req.key_name and key is not None else {}
    md = _metadata(inst_id, req.name, [configdrive.Nic(mac=mac)], keys, req.properties,
                   req.files, req.user_data, req.admin_password)
    configdrive.validate(md, _limits(settings))


def create_disks(settings: Settings, inst: Instance, image: Image | None,
                 admin_password: str | None, inst_dir: Path,
                 nics: list[configdrive.Nic]) -> list[DiskRecord]:
    """The instance's disks, in ``inst_dir`` (its directory, or rebuild's
    staging); ``nics``: the config drive's (:func:`drive_nics`). Without
    ``image`` there is no local root disk: the root (vda) is a volume
    (vmops/compute/boot_volume.py) and the others follow it."""
    inst_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(inst_dir, 0o700)
    # The config drive is written on a thread of its own while the disks are
    # made: pycdlib's mastering and the ISO's fsyncs overlap the disks' own
    # (#17; a new qcow2 is written by vmops itself, vmops/disks/qcow2.py,
    # where a qemu-img child used to run). Both write only their own files in
    # ``inst_dir``, and the drive's thread is always waited for, so a failure
    # leaves nothing being written after this returns (rollback removes the
    # directory).
    drive = _DriveWriter(settings, inst, nics, admin_password, inst_dir) \
        if inst.config_drive else None
    try:
        disks = _local_disks(inst, image, settings, inst_dir)
    except BaseException:
        if drive is not None:
            drive.join()  # the disks' error is the one raised
        raise
    path = drive.wait() if drive is not None else None
    if path is not None:
        skip = 1 if image is None else 0  # vda is the root volume's
        if settings.config_drive_format == "cdrom":
            disks.append(DiskRecord("config", str(path), "raw", "hda", device="cdrom"))
        else:
            disks.append(DiskRecord("config", str(path), "raw", disk_target(len(disks) + skip),
                                    device="disk"))
    return disks


def _local_disks(inst: Instance, image: Image | None, settings: Settings,
                 inst_dir: Path) -> list[DiskRecord]:
    """The root (if ``image``), ephemeral and swap disks, in that order."""
    disks = [] if image is None else [_root_disk(settings, inst, image, inst_dir)]
    skip = 1 if image is None else 0  # vda is the root volume's

    def next_target() -> str:
        return disk_target(len(disks) + skip)

    ephemeral_gb = inst.flavor.ephemeral_gb
    if ephemeral_gb:
        facts = instance_disks.create_ephemeral_disk(inst_dir / EPHEMERAL_FILE,
                                                     ephemeral_gb * GIB)
        disks.append(DiskRecord("ephemeral", str(facts.path), facts.format, next_target()))
    swap_mb = inst.flavor.swap_mb
    if swap_mb:  # after the ephemeral disk, as Nova's disk.swap
        facts = instance_disks.create_swap_disk(inst_dir / SWAP_FILE, swap_mb * MIB)
        disks.append(DiskRecord("swap", str(facts.path), facts.format, next_target()))
    return disks


class _DriveWriter:
    """:func:`write_config_drive` on a thread; :meth:`wait` for its path."""

    def __init__(self, settings: Settings, inst: Instance, nics: list[configdrive.Nic],
                 admin_password: str | None, inst_dir: Path) -> None:
        self._path: Path | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._write, args=(settings, inst, nics, admin_password, inst_dir),
            name=f"config-drive-{inst.id[:8]}", daemon=True)
        self._thread.start()

    def _write(self, settings: Settings, inst: Instance, nics: list[configdrive.Nic],
               admin_password: str | None, inst_dir: Path) -> None:
        try:
            self._path = write_config_drive(settings, inst, nics, admin_password, inst_dir)
        except BaseException as exc:  # noqa: BLE001 - raised again by wait()
            self._error = exc

    def join(self) -> None:
        """Wait until the thread has ended, whatever came of it."""
        self._thread.join()

    def wait(self) -> Path:
        """The drive's path once written; its error if writing it failed."""
        self.join()
        if self._error is not None:
            raise self._error
        assert self._path is not None
        return self._path


def _root_disk(settings: Settings, inst: Instance, image: Image, inst_dir: Path) -> DiskRecord:
    size = inst.flavor.root_gb * GIB or None
    facts = instance_disks.create_root_disk(
        base=instance_disks.BaseImage(path=Path(image.path), format=image.format,
                                      virtual_size=image.virtual_size),
        dest=inst_dir / "root.qcow2", size_bytes=size,
        use_cow=settings.use_cow_images,
        flavor_name=inst.flavor.name, image_name=image.name)
    return DiskRecord("root", str(facts.path), facts.format, "vda")


def write_config_drive(settings: Settings, inst: Instance, nics: list[configdrive.Nic],
                       admin_password: str | None, inst_dir: Path) -> Path:
    """(Re)write the instance's config drive from its record, in ``inst_dir``.
    The admin password is not recorded, so only the first drive can carry it."""
    files = tuple((p, base64.b64decode(c)) for p, c in inst.injected_files)
    user_data = base64.b64decode(inst.user_data) if inst.user_data else None
    keys = {inst.key_name: inst.key_data} if inst.key_name and inst.key_data else {}
    md = _metadata(inst.id, inst.name, nics, keys, inst.properties,
                   files, user_data, admin_password, inst.hostname, inst.project_id)
    path = inst_dir / "config.iso"
    configdrive.build_config_drive(
        md, path, _limits(settings),
        include_admin_password=settings.config_drive_inject_password)
    return path


def drive_nics(ports: list[Port], network: Network | None) -> list[configdrive.Nic]:
    """The config drive's NICs for an instance's ``ports``: those on the
    vmops network are configured statically (cloud-init needs no DHCP, and
    the address is the one vmops recorded); user-mode ones use DHCP."""
    nics = []
    for port in ports:
        if port.ip and network is not None and network.enabled:
            plan = network.plan
            nics.append(configdrive.Nic(mac=port.mac, address=port.ip, prefix=plan.prefix,
                                        gateway=str(plan.gateway), dns=(str(plan.gateway),)))
        else:
            nics.append(configdrive.Nic(mac=port.mac))
    return nics


# -- rebuild ---------------------------------------------------------------------
def stage_disks(settings: Settings, inst: Instance, image: Image | None, inst_dir: Path,
                nics: list[configdrive.Nic]) -> list[DiskRecord]:
    """Rebuild's new disks, made beside the ones in use (which stay untouched
    until :func:`install_disks`): a root disk from ``image``, a blank
    ephemeral disk (Nova's libvirt driver wipes it: rebuild destroys every
    local disk and spawns again, and refuses ``preserve_ephemeral``), and the
    config drive written again from the record (no admin password: it is not
    recorded). No ``image``: a volume-backed instance, whose root volume is
    kept as it is."""
    staging = inst_dir / REBUILD_STAGING
    discard_staged(inst_dir)  # what an interrupted rebuild left
    try:
        return create_disks(settings, inst, image, None, staging, nics)
    except BaseException:
        discard_staged(inst_dir)
        raise


def discard_staged(inst_dir: Path) -> None:
    shutil.rmtree(inst_dir / REBUILD_STAGING, ignore_errors=True)


def install_disks(inst: Instance, staged: list[DiskRecord],
                  inst_dir: Path) -> tuple[DiskRecord, ...]:
    """Move the staged disks over the old ones in ``inst_dir`` (the guest is
    off) and remove any old disk the new set has no file for."""
    installed = []
    for disk in staged:
        dest = inst_dir / Path(disk.path).name
        os.replace(disk.path, dest)
        installed.append(dataclasses.replace(disk, path=str(dest)))
    kept = {d.path for d in installed}
    for old in inst.disks:
        if old.path not in kept:
            Path(old.path).unlink(missing_ok=True)
    discard_staged(inst_dir)
    return tuple(installed)
