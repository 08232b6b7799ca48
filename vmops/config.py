"""One typed settings object, every option with its help text.

Sources, later ones winning: built-in defaults, ``<state_dir>/vmops.toml``,
``VMOPS_<OPTION>`` environment variables. A bad value raises
:class:`~vmops.errors.ConfigError` naming the option and what is allowed,
so the service refuses to start instead of failing later.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmops import socket_paths
from vmops.errors import ConfigError
from vmops.hypervisor.libvirt import embed_uri

CONFIG_FILE = "vmops.toml"
# Shown as "(set)" by `vmops config`, never logged.
SECRET_OPTIONS = ("api_token", "identity_admin_password")


def _opt(default: Any, help: str, choices: tuple[str, ...] = (), minimum: float | None = None,
         maximum: float | None = None) -> Any:
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum}
    return field(default=default, metadata=meta)


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/vmops")
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "vmops"


@dataclass(frozen=True)
class Settings:
    state_dir: Path = _opt(
        Path("/var/lib/vmops"),
        "Directory holding records, images, instances and the API socket "
        "(default /var/lib/vmops as root, $XDG_STATE_HOME/vmops otherwise). Any length: when "
        f"its path is longer than {socket_paths.MAX_DIRECT_STATE_DIR} bytes, the UNIX sockets "
        "QEMU and libvirt bind below it are reached through a short alias, /run/vmops/<hash> "
        "(a user's: $XDG_RUNTIME_DIR/vmops/<hash>), a symbolic link the service makes at "
        "start.")
    libvirt_uri: str = _opt(
        "", "libvirt connection URI. Empty: embedded qemu:///embed?root=<state_dir>/libvirt, "
        "no daemon needed: the mode vmops is tested in. A local daemon (qemu:///system) is "
        "not tested: its QEMU user must be able to read the state directory. Remote URIs "
        "(qemu+ssh://...) do not work: disks, config drives and sockets are made in the "
        "local state directory.")
    accel: str = _opt(
        "auto", "CPU acceleration: kvm, tcg (software emulation), or auto (kvm when a probe "
        "shows it really works, else tcg).", choices=("auto", "kvm", "tcg"))
    listen: str = _opt(
        "", "Also serve the API on TCP HOST:PORT. TCP clients authenticate with a password "
        "(POST /identity/v3/auth/tokens) or send api_token. Empty: unix socket only.")
    api_token: str = _opt(
        "", "A fixed token TCP clients may send as X-Auth-Token; it acts as the admin user "
        "in the admin project. Empty: none (clients get tokens with a password). Never "
        "logged.")
    identity_admin_password: str = _opt(
        "", "Password of the admin user (domain Default, project admin), set at every "
        "start. Empty: one is generated at the first start into <state_dir>/admin-password "
        "(mode 0600) and kept. Never logged.")
    identity_token_ttl: int = _opt(
        3600, "Seconds a token issued by the identity service (/identity/v3) is valid.",
        minimum=60, maximum=30 * 86400)
    identity_lockout_failures: int = _opt(
        5, "Wrong passwords in a row for one user before each further attempt for that "
        "user must wait (1 s, doubling after each failure, at most 300 s; answered 401). "
        "0: no wait.", minimum=0, maximum=1000)
    api_request_timeout: float = _opt(
        30.0, "Seconds an API client has to send a request's line and headers, counted from "
        "when it connected or got its last answer; then the connection is closed (this also "
        "ends idle keep-alive connections).", minimum=1.0, maximum=3600.0)
    api_body_timeout: float = _opt(
        60.0, "Seconds an API client has to send a request's body once its headers are in "
        "(answered 408 after that), and to take each part of an answer.",
        minimum=1.0, maximum=3600.0)
    api_max_connections: int = _opt(
        128, "Most TCP connections to the API at once, from all clients; more are answered "
        "503 and closed. The unix socket is not counted.", minimum=1, maximum=65536)
    api_max_connections_per_client: int = _opt(
        16, "Most TCP connections to the API at once from one client address.",
        minimum=1, maximum=65536)
    api_descriptor_reserve: int = _opt(
        64, "File descriptors TCP clients can never take: a TCP connection is refused when "
        "fewer are free, so the unix socket, disks and libvirt always have some.",
        minimum=8, maximum=65536)
    use_cow_images: bool = _opt(
        True, "Root disks are qcow2 overlays on the cached base image; off: full copies.")
    dynamic_memory_ratio: float = _opt(
        1.0, "Above 1, guests start with flavor RAM / ratio and a balloon lets them grow to "
        "the flavor RAM.", minimum=1.0, maximum=64.0)
    limit_cpu_features: bool = _opt(
        False, "Give guests a baseline CPU model so they can move between hosts.")
    force_config_drive: bool = _opt(False, "Give every instance a config drive.")
    config_drive_format: str = _opt(
        "cdrom", "How the config drive is attached: cdrom, or disk (a raw virtio disk).",
        choices=("cdrom", "disk"))
    config_drive_inject_password: bool = _opt(
        False, "Write the admin password onto the config drive.")
    enable_instance_password: bool = _opt(
        True, "Server create and rebuild answer an admin password (adminPass), the one given "
        "or a new random one, as Nova's [api] enable_instance_password. The guest gets it only "
        "on its config drive with config_drive_inject_password; off: no adminPass is answered.")
    max_injected_files: int = _opt(5, "Most files one spawn may inject.", minimum=0, maximum=1000)
    max_injected_file_bytes: int = _opt(
        10240, "Largest injected file, in bytes.", minimum=0, maximum=64 * 1024 * 1024)
    max_injected_path_length: int = _opt(
        255, "Longest injected file path.", minimum=1, maximum=4096)
    console_log_max_bytes: int = _opt(
        512 * 1024, "Size of each of the two console log files, in bytes.",
        minimum=4096, maximum=1 << 34)
    console_token_ttl: int = _opt(
        600, "Seconds a serial console URL (its single-use token) stays valid.",
        minimum=10, maximum=86400)
    wait_soft_reboot_seconds: int = _opt(
        60, "How long a soft reboot waits for the guest to shut down before a hard reboot.",
        minimum=1, maximum=3600)
    shutdown_timeout: int = _opt(
        60, "Default time a graceful stop waits before pulling the plug, in seconds.",
        minimum=0, maximum=3600)
    shutdown_retry_interval: int = _opt(
        5, "Seconds between ACPI power-button presses during a graceful stop.",
        minimum=1, maximum=600)
    volume_detach_timeout: int = _opt(
        30, "Seconds a volume detach waits for the running guest to release the disk "
        "(libvirt's device-removed event); then the volume stays attached (in-use) and the "
        "detach is reported failed, so no write is lost.", minimum=1, maximum=600)
    volume_target_check_interval: int = _opt(
        10, "Seconds between two looks at the portal of each attached iSCSI volume (does it "
        "accept a TCP connection?); 0: never look. QEMU's iSCSI initiator waits for a lost "
        "target without reporting an error, so this is how vmops finds out.",
        minimum=0, maximum=3600)
    volume_target_timeout: int = _opt(
        30, "Seconds an attached iSCSI volume's portal may go unanswered before the volume is "
        "put in error (the guest's I/O on it is waiting); it is in-use again once the portal "
        "answers.", minimum=1, maximum=86400)
    resume_guests_state_on_host_boot: bool = _opt(
        False, "Start again, when the service starts, the VMs that were running before the "
        "host rebooted.")
    image_cache_max_age: int = _opt(
        86400, "Unused cached images older than this many seconds are pruned.", minimum=0)
    image_cache_prune_interval: int = _opt(
        3600, "Seconds between automatic prunes of the image cache (0: never).", minimum=0)
    deleted_rows_max_age_days: int = _opt(
        90, "Days the records of a destroyed server (its instance actions and its usage, "
        "shown by os-instance-actions and os-simple-tenant-usage) are kept; older ones are "
        "pruned at service start and hourly, as Nova's nova-manage db archive_deleted_rows "
        "and purge --before would. 0: kept for ever.", minimum=0, maximum=36500)
    image_import_max_bytes: int = _opt(
        64 << 30, "Largest image an import or a Glance upload may bring in, in bytes "
        "(counted as received, before any conversion; an upload over it is answered 413). "
        "An import never takes more than the images directory's free space less "
        "image_import_reserve_bytes either.", minimum=1)
    image_import_reserve_bytes: int = _opt(
        1 << 30, "Free space, in bytes, an import always leaves on the file system of the "
        "images directory; one that would eat into it stops with an error.", minimum=0)
    image_import_timeout: int = _opt(
        7200, "Longest time a URL import may take from connecting to the last byte, in "
        "seconds.", minimum=1, maximum=7 * 86400)
    image_import_min_rate: int = _opt(
        16384, "Slowest a URL import or a Glance upload may go, in bytes per second "
        "averaged over image_import_rate_window; a slower one stops with an error (0: no "
        "minimum).",
        minimum=0)
    image_import_rate_window: int = _opt(
        60, "Seconds over which a URL import's rate is measured against "
        "image_import_min_rate; also the longest wait for any single read.",
        minimum=1, maximum=3600)
    image_import_dirs: str = _opt(
        "", "Directories (absolute, separated by ':') whose files an admin over TCP may "
        "import as images. Empty: TCP clients may import from URLs only. Only an admin may "
        "import a host file at all; clients on the unix socket (its owner, root already) "
        "act as admin and may import any host path.")

    network_mode: str = _opt(
        "auto", "How new instances' NICs are connected by default: bridge (the vmops "
        "network: an address the host and other guests reach, DHCP, NAT, port forwards, "
        "security groups; needs root), user (QEMU user-mode: no root needed, nothing "
        "reaches the guest), or auto (bridge when the service runs as root, else user). "
        "A spawn may ask for either.", choices=("auto", "bridge", "user"))
    network_bridge: str = _opt(
        "vmops0", "Name of the bridge vmops owns (at most 15 characters); its nftables "
        "tables are named vmops_<bridge>.")
    network_subnet: str = _opt(
        "", "IPv4 subnet of the vmops network in CIDR form. Empty: the first of "
        "10.213.0.0/24, 10.213.1.0/24, 10.214.0.0/24, 10.215.0.0/24, 10.97.0.0/24 that no "
        "host route overlaps. Fixed once the network exists (guests hold addresses in it).")
    network_host_access: bool = _opt(
        True, "The host (the bridge's address: the operator, `vmops ssh`) reaches every "
        "guest whatever its security groups say. Off: the host is subject to the groups' "
        "ingress rules like anyone else.")

    # -- quotas: each project's default limits (Nova's os-quota-sets; -1: unlimited) --
    quota_instances: int = _opt(
        10, "Default most servers a project may have (in any state).", minimum=-1)
    quota_cores: int = _opt(
        20, "Default most vCPUs a project's servers may have in all.", minimum=-1)
    quota_ram: int = _opt(
        51200, "Default most RAM, in MiB, a project's servers may have in all.", minimum=-1)
    quota_metadata_items: int = _opt(
        128, "Default most metadata items one server may carry.", minimum=-1)
    quota_key_pairs: int = _opt(
        100, "Default most keypairs one user may keep.", minimum=-1)
    quota_server_groups: int = _opt(
        10, "Default most server groups a project may have.", minimum=-1)
    quota_server_group_members: int = _opt(
        10, "Default most servers in one server group.", minimum=-1)
    quota_volumes: int = _opt(
        10, "Default most volumes a project may have (Cinder's quota_volumes; in any status, "
        "those made at server create and boot volumes too).", minimum=-1)
    quota_gigabytes: int = _opt(
        1000, "Default most GiB a project's volumes may have in all (Cinder's "
        "quota_gigabytes).", minimum=-1)

    # -- derived paths -------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.state_dir / "vmops.db"

    @property
    def api_socket(self) -> Path:
        return self.state_dir / "vmops.sock"

    @property
    def admin_password_file(self) -> Path:
        """Where the generated admin password is (see identity_admin_password)."""
        return self.state_dir / "admin-password"

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def instances_dir(self) -> Path:
        return self.state_dir / "instances"

    @property
    def volumes_dir(self) -> Path:
        """The local volume pool: one file per volume."""
        return self.state_dir / "volumes"

    @property
    def socket_root(self) -> Path:
        """The state directory, or its short alias under the runtime directory
        when its path is too long for the UNIX sockets QEMU and libvirt bind
        below it and the service has made the alias (vmops/socket_paths.py)."""
        return socket_paths.socket_root(self.state_dir)

    @property
    def run_dir(self) -> Path:
        """Short paths for UNIX sockets (their paths are limited to 107 bytes)."""
        return self.socket_root / "run"

    @property
    def image_import_dir_paths(self) -> tuple[Path, ...]:
        return tuple(Path(d) for d in self.image_import_dirs.split(":") if d)

    @property
    def effective_network_mode(self) -> str:
        if self.network_mode == "auto":
            return "bridge" if os.geteuid() == 0 else "user"
        return self.network_mode

    @property
    def effective_libvirt_uri(self) -> str:
        return self.libvirt_uri or embed_uri(self.socket_root)


def options() -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(Settings))


def _coerce(f: dataclasses.Field[Any], raw: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    allowed = describe_allowed(f)
    try:
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if kind == "float":
            if isinstance(raw, bool) or not math.isfinite(value := float(raw)):
                raise ValueError(raw)
            return value
        if kind == "Path":
            return Path(str(raw)).expanduser()
        if not isinstance(raw, str):
            raise ValueError(raw)
        return raw
    except (TypeError, ValueError):
        raise ConfigError(option=f.name, value=raw, allowed=allowed) from None


def describe_allowed(f: dataclasses.Field[Any]) -> str:
    meta = f.metadata
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if meta["choices"]:
        return "one of " + ", ".join(meta["choices"])
    words = {"bool": "true or false", "int": "an integer", "float": "a number",
             "Path": "a directory path", "str": "a string"}[kind]
    low, high = (_number(meta["minimum"], kind), _number(meta["maximum"], kind))
    if low is not None and high is not None:
        words += f" from {low} to {high}"
    elif low is not None:
        words += f" of at least {low}"
    return words


def _number(value: float | None, kind: str) -> str | None:
    """A bound as a user types it: integers whole (67108864, not 6.71089e+07)."""
    if value is None:
        return None
    return str(int(value)) if kind == "int" or float(value).is_integer() else f"{value:g}"


def _check(f: dataclasses.Field[Any], value: Any) -> None:
    meta = f.metadata
    bad = (
        (meta["choices"] and value not in meta["choices"])
        or (meta["minimum"] is not None and value < meta["minimum"])
        or (meta["maximum"] is not None and value > meta["maximum"])
    )
    if bad:
        raise ConfigError(option=f.name, value=value, allowed=describe_allowed(f))


def load(state_dir: Path | None = None, env: Mapping[str, str] | None = None,
         **overrides: Any) -> Settings:
    """Settings for one state directory: defaults < vmops.toml < VMOPS_* < overrides."""
    env = os.environ if env is None else env
    if state_dir is None:
        state_dir = Path(env["VMOPS_STATE_DIR"]) if env.get("VMOPS_STATE_DIR") \
            else default_state_dir()
    state_dir = state_dir.expanduser().absolute()
    raw: dict[str, Any] = dict(_read_toml(state_dir / CONFIG_FILE))
    fields = {f.name: f for f in options()}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(option=unknown[0], value=raw[unknown[0]],
                          allowed="not a vmops option (see `vmops config`)")
    for name in fields:
        value = env.get(f"VMOPS_{name.upper()}")
        if value is not None and name != "state_dir":
            raw[name] = value
    raw.update(overrides)
    raw["state_dir"] = state_dir
    values = {}
    for name, value in raw.items():
        f = fields[name]
        values[name] = _coerce(f, value)
        _check(f, values[name])
    settings = Settings(**values)
    if not all(d.is_absolute() for d in settings.image_import_dir_paths):
        raise ConfigError(option="image_import_dirs", value=settings.image_import_dirs,
                          allowed="absolute directory paths separated by ':'")
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(option=str(path), value="...", allowed=f"valid TOML ({exc})") from None
    except OSError as exc:  # another user's state directory (EACCES), a directory, ...
        raise ConfigError(option="state_dir", value=str(path.parent),
                          allowed=f"a directory whose {path.name} uid {os.geteuid()} can read "
                                  f"({exc.strerror}: {exc.filename})") from None
