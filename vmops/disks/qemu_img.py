"""The only place that runs qemu-img.

Except where vmops writes the image itself: a new qcow2, empty or an overlay
on a raw or qcow2 base (:func:`create`, :func:`create_overlay`), is written by
vmops/disks/qcow2.py, the same bytes ``qemu-img create`` writes, without its
child process (~12 ms of start-up per spawn, #17); what that writer does not
cover (an odd size, a backing name longer than qemu allows, another format)
still runs qemu-img here.

Every call names the image format with ``-f`` (and ``-F`` for a backing
file): letting qemu-img probe is how a raw image that starts with a qcow2
header gets read as qcow2. Every call runs under ``prlimit`` so that a
hostile image cannot make qemu-img eat the host: we use the prlimit
binary rather than ``preexec_fn`` because preexec_fn is unsafe in threaded
programs and the service is threaded. Paths are always made absolute, so
a file name can never be read as a qemu protocol prefix ("nbd:...").
Failures of any kind become :class:`~vmops.errors.DiskError` carrying
qemu-img's stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmops.disks import qcow2
from vmops.errors import DiskError

QEMU_IMG = "qemu-img"
PRLIMIT = "prlimit"
GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """Resource limits applied to one qemu-img child process."""

    cpu_seconds: int
    address_space_bytes: int
    wall_seconds: float | None = None


# Reading headers and metadata of an untrusted image: small budgets (the same
# idea as Nova's limits on "qemu-img info"), plus a wall clock for hung I/O.
PARSE_LIMITS = Limits(cpu_seconds=30, address_space_bytes=2 * GiB, wall_seconds=120)
# Convert touches every byte (zlib for streamOptimized VMDK), so its CPU time
# grows with the image; 30 s would refuse honest multi-GiB images. The
# address-space cap is what stops memory bombs and is kept at 2 GiB.
COPY_LIMITS = Limits(cpu_seconds=600, address_space_bytes=2 * GiB)


def info(path: Path, fmt: str) -> dict[str, Any]:
    """``qemu-img info`` as a dict; --force-share so a running VM's disk works."""
    out = _run(["info", "-f", fmt, "--output=json", "--force-share", _abs(path)])
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def check(path: Path, fmt: str) -> dict[str, Any]:
    """``qemu-img check``; leaks are fine, corruption raises DiskError.

    Returns {} for formats qemu-img cannot check (raw).
    """
    out = _run(
        ["check", "-f", fmt, "--output=json", "--force-share", _abs(path)],
        ok_codes=(0, 3, 63),  # 3: leaked clusters only; 63: no check for fmt
    )
    if out.returncode == 63:
        return {}
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def convert(src: Path, src_fmt: str, dest: Path, dest_fmt: str,
            force_share: bool = False) -> None:
    """Copy ``src`` into a new standalone image ``dest`` (holes stay sparse;
    a backing chain is read through, so ``dest`` has no backing file).

    ``force_share``: read a disk a QEMU holds open (``-U``); only safe while
    that QEMU does not write it (paused, or its vCPUs stopped)."""
    share = ["-U"] if force_share else []
    _run(
        ["convert", "-q", *share, "-f", src_fmt, "-O", dest_fmt, _abs(src), _abs(dest)],
        limits=COPY_LIMITS,
    )


def create(dest: Path, fmt: str, size_bytes: int) -> None:
    """A new empty sparse image of exactly ``size_bytes``; a qcow2 one is
    written by vmops (vmops/disks/qcow2.py) where it can."""
    if fmt == "qcow2":
        try:
            img = qcow2.image(size_bytes)
        except qcow2.Unsupported:
            pass  # qemu-img's own way
        else:
            qcow2.write(Path(_abs(dest)), img)
            return
    _run(["create", "-q", "-f", fmt, _abs(dest), str(size_bytes)])


def create_overlay(base: Path, base_fmt: str, dest: Path, size_bytes: int) -> None:
    """A qcow2 ``dest`` whose unwritten clusters are read from ``base``
    (named by absolute path, its format ``base_fmt`` recorded: never
    probed). Written by vmops (vmops/disks/qcow2.py) where it can, the base
    checked as qemu-img checks it; else by ``qemu-img create``."""
    backing = _abs(base)
    try:
        img = qcow2.image(size_bytes, backing, base_fmt)
    except qcow2.Unsupported:
        _run(["create", "-q", "-f", "qcow2", "-b", backing, "-F", base_fmt]
             + [_abs(dest), str(size_bytes)])
        return
    qcow2.check_backing(backing, base_fmt)
    qcow2.write(Path(_abs(dest)), img)


def resize(path: Path, fmt: str, size_bytes: int) -> None:
    """Grow ``path`` to ``size_bytes``; shrinking would destroy guest data."""
    current = int(info(path, fmt)["virtual-size"])
    if size_bytes < current:
        raise DiskError(reason=f"refusing to shrink {path} from {current} to {size_bytes} bytes")
    if size_bytes > current:
        _run(["resize", "-q", "-f", fmt, _abs(path), str(size_bytes)])


# Probing a remote volume: a portal that does not answer must not hold a
# registration for long.
REMOTE_LIMITS = Limits(cpu_seconds=30, address_space_bytes=2 * GiB, wall_seconds=30)


def remote_info(image_opts: str, secret_file: Path | None = None) -> dict[str, Any]:
    """``qemu-img info`` of a network disk given as ``--image-opts``
    (``driver=nbd,...``, ``driver=iscsi,...``). A CHAP password is read by
    qemu-img from ``secret_file`` (``password-secret=sec0`` in the options),
    never from its command line, which every local user can read."""
    args = ["info", "--output=json"]
    if secret_file is not None:
        args += ["--object", f"secret,id=sec0,file={_abs(secret_file)}"]
    out = _run([*args, "--image-opts", image_opts], limits=REMOTE_LIMITS)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _abs(path: Path) -> str:
    return os.path.abspath(path)


def _run(
    args: list[str], *, limits: Limits = PARSE_LIMITS, ok_codes: tuple[int, ...] = (0,)
) -> subprocess.CompletedProcess[str]:
    cmd = [
        PRLIMIT,
        # soft < hard: the soft limit sends SIGXCPU, which names the cause;
        # at equal limits the kernel goes straight to SIGKILL.
        f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 1}",
        f"--as={limits.address_space_bytes}",
        "--",
        QEMU_IMG,
        *args,
    ]
    try:
        out = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=limits.wall_seconds,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DiskError(
            reason=f"qemu-img {args[0]} ran past {limits.wall_seconds} s and was killed"
        ) from exc
    except OSError as exc:
        raise DiskError(reason=f"cannot run qemu-img: {exc}") from exc
    if out.returncode not in ok_codes:
        raise DiskError(reason=_failure_reason(args[0], out, limits))
    return out


def _failure_reason(verb: str, out: subprocess.CompletedProcess[str], limits: Limits) -> str:
    detail = (out.stderr or out.stdout).strip() or "no output"
    if out.returncode >= 0:
        return f"qemu-img {verb} exited with {out.returncode}: {detail}"
    sig = signal.Signals(-out.returncode)
    why = {
        signal.SIGXCPU: f"it used its {limits.cpu_seconds} s CPU limit",
        signal.SIGKILL: "it was killed (CPU hard limit or the OOM killer)",
        signal.SIGABRT: "it aborted, often an allocation refused by the "
        f"{limits.address_space_bytes // GiB} GiB address-space limit",
        signal.SIGSEGV: "it crashed, possibly on an allocation refused by the address-space limit",
    }.get(sig, "it was killed")
    return f"qemu-img {verb} died of {sig.name}: {why}: {detail}"
