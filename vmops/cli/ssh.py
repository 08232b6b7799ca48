"""``vmops ssh`` and the keypairs vmops makes: the client side of logging in.

A keypair made by ``vmops keypair create`` keeps its private key in
``<state dir>/keys/NAME`` (0600, the directory 0700); only its public key
goes to the service, through the same ``POST /os-keypairs`` as
``keypair add``. ``vmops ssh`` uses that file when the instance's key is one
of them, and otherwise leaves the choice of key to ssh (the user's own keys
and agent).

Everything but the final ``exec`` is a pure function of the server, image
and keypair views, so the command line it builds is tested without a guest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmops import file_modes
from vmops.compute.names import check_resource_name
from vmops.compute.states import Status
from vmops.errors import VmopsError
from vmops.network.manager import NETWORK_NAME

KEYS_DIR = "keys"
KNOWN_HOSTS = "known_hosts"
DEFAULT_USER = "root"
KEYGEN_TIMEOUT_S = 30


@dataclass(frozen=True)
class Login:
    """What ``ssh`` is run with: where, as whom, with which key (None: ssh's own)."""

    address: str
    user: str
    identity: Path | None
    host_key_alias: str  # the instance, not its address: addresses are reused


def guest_address(server: dict[str, Any]) -> str:
    """The server's address on the vmops network, or why it has none."""
    name = server["name"]
    status = server.get("status", "")
    if status == Status.BUILD:
        raise VmopsError(f"{name} is still building and has no address yet; try again when "
                         "`vmops show` says it is active")
    for entry in server.get("addresses", {}).get(NETWORK_NAME, []):
        if entry.get("addr"):
            return str(entry["addr"])
    for nic in server.get("vmops:nics", []):  # the same records, in vmops' own shape
        if nic.get("network") == NETWORK_NAME and nic.get("ip"):
            return str(nic["ip"])
    modes = {nic.get("mode") for nic in server.get("vmops:nics", [])}
    if modes == {"user"}:
        raise VmopsError(f"{name} has only a user-mode NIC (QEMU's own network): nothing on "
                         "the host can reach it. Spawn it on the vmops network (network_mode "
                         "bridge; the service must run as root)")
    raise VmopsError(f"{name} has no address on the {NETWORK_NAME} network")


def check_reachable_state(server: dict[str, Any]) -> None:
    status = server.get("status", "")
    if status not in (Status.ACTIVE, Status.BUILD, ""):
        raise VmopsError(f"{server['name']} is {status.lower()}: it must be running to log "
                         f"in (`vmops start {server['name']}` or `vmops resume`)")


def injected_key_name(server: dict[str, Any]) -> str:
    key_name = server.get("key_name")
    if not key_name:
        raise VmopsError(f"{server['name']} was spawned without a key (--key-name), so no "
                         "key was injected and ssh has nothing to log in with; spawn it "
                         "again with one (`vmops keypair create NAME` makes one)")
    return str(key_name)


def login_user(image: dict[str, Any] | None, wanted: str | None) -> str:
    """--user, else the image's recorded login user, else root."""
    if wanted:
        return wanted
    recorded = (image or {}).get("vmops:login_user")
    return str(recorded) if recorded else DEFAULT_USER


def key_path(state_dir: Path, name: str) -> Path:
    return state_dir / KEYS_DIR / check_resource_name(name, "keypair")


def known_identity(state_dir: Path, keypair: dict[str, Any] | None,
                   key_name: str) -> Path | None:
    """The private key vmops made for ``key_name``, if it has one and it
    still belongs to the registered public key (``keypair`` None: the
    keypair is gone, the instance kept its key: the file is still right)."""
    path = key_path(state_dir, key_name)
    if not path.is_file():
        return None
    if keypair is not None and _key_blob(public_key_of(path)) != _key_blob(
            keypair.get("public_key", "")):
        return None
    return path


def _key_blob(public_key: str) -> str:
    """An OpenSSH public key without its comment."""
    return " ".join(public_key.split()[:2])


def ssh_argv(login: Login, state_dir: Path, command: Sequence[str] = ()) -> list[str]:
    argv = ["ssh", "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={state_dir / KNOWN_HOSTS}",
            "-o", f"HostKeyAlias={login.host_key_alias}"]
    if login.identity is not None:
        # Only that key: agents with many keys would use up the server's tries.
        argv += ["-i", str(login.identity), "-o", "IdentitiesOnly=yes"]
    # "--" before the destination: nothing after it is read as an ssh option.
    return [*argv, "--", f"{login.user}@{login.address}", *command]


def exec_ssh(argv: list[str]) -> None:
    program = shutil.which(argv[0])
    if program is None:
        raise VmopsError("ssh is not installed (Debian: apt-get install openssh-client)")
    os.execv(program, argv)


# -- keypairs vmops makes ----------------------------------------------------
def keys_dir(state_dir: Path) -> Path:
    path = state_dir / KEYS_DIR
    with file_modes.private_umask():
        path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def generate_key(state_dir: Path, name: str) -> tuple[Path, str]:
    """Make an ed25519 key for ``name`` in ``<state dir>/keys/NAME`` (0600):
    (its path, its public key). Refused if the file exists."""
    target = key_path(state_dir, name)
    directory = keys_dir(state_dir)
    if target.exists():
        raise VmopsError(f"{target} exists already: delete the keypair {name} "
                         "(`vmops keypair delete`) or choose another name")
    if shutil.which("ssh-keygen") is None:
        raise VmopsError("ssh-keygen is not installed (Debian: apt-get install openssh-client)")
    # Made under a short temporary name (NAME plus ".pub" may be too long for
    # a file name), then linked into place: link never replaces a file.
    with tempfile.TemporaryDirectory(dir=directory, prefix=".new-") as tmp:
        made = Path(tmp) / "key"
        done = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "",
                               "-C", f"vmops:{name}", "-f", str(made)],
                              capture_output=True, text=True, timeout=KEYGEN_TIMEOUT_S)
        if done.returncode != 0:
            raise VmopsError(f"ssh-keygen failed: {done.stderr.strip()}")
        made.chmod(0o600)
        public_key = (Path(tmp) / "key.pub").read_text().strip()
        try:
            os.link(made, target)
        except FileExistsError:
            raise VmopsError(f"{target} exists already") from None
    return target, public_key


def public_key_of(private_key: Path) -> str:
    done = subprocess.run(["ssh-keygen", "-y", "-f", str(private_key)], capture_output=True,
                          text=True, timeout=KEYGEN_TIMEOUT_S)
    return done.stdout.strip() if done.returncode == 0 else ""


def forget_key(state_dir: Path, name: str) -> bool:
    """Remove vmops' private key of ``name``; False when it had none."""
    try:
        key_path(state_dir, name).unlink()
    except FileNotFoundError:
        return False
    return True
