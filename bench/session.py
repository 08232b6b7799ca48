"""One vmops service and one libvirt baseline, shared by the scenarios of a run.

Both are slow to warm (service start, the first define probing QEMU), so
they are made once, on first use, and closed by ``close()`` (the runner
calls it; it is also registered with the clean-up stack, so a scenario
module run alone, an exception or Ctrl-C still removes every VM).

``template()`` spawns one instance through vmops, once, and keeps its
domain XML (libvirt's saved definition) and recipes for fresh copies of
its disks: the baselines run that same domain on their own files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from bench.bridged import BridgedService
from bench.common import CLEANUP, remove_tree, short_tmpdir, test_image
from bench.virt import DiskTemplate, LibvirtBaseline, disk_templates
from bench.vmopsd import VmopsService

log = logging.getLogger("bench")


@dataclass(frozen=True)
class Template:
    """A vmops instance's domain and how to copy its disks."""

    domain_xml: str
    disks: dict[str, DiskTemplate]
    config_drive: bool


class Session:
    def __init__(self) -> None:
        self._vmops: VmopsService | None = None
        self._baseline: LibvirtBaseline | None = None
        self._bridged: BridgedService | None = None
        self._templates: dict[bool, Template] = {}
        self.work = short_tmpdir("work")
        self.service_start_s: float | None = None

    @property
    def vmops(self) -> VmopsService:
        if self._vmops is None:
            svc = VmopsService()
            self._vmops = svc
            log.info("starting vmops serve in %s", svc.state_dir)
            self.service_start_s = svc.start()
            svc.ensure_image(test_image())
            # Warm-up: the first spawn defines the first domain (libvirt probes
            # QEMU) and loads every code path once.
            server_id = svc.spawn("bench-warmup")
            svc.destroy(server_id)
        return self._vmops

    @property
    def baseline(self) -> LibvirtBaseline:
        if self._baseline is None:
            lv = LibvirtBaseline()
            self._baseline = lv
            log.info("opening the baseline libvirt root %s", lv.root)
            lv.open()
        return self._baseline

    @property
    def bridged(self) -> BridgedService:
        """A second service, on a bridge of its own (the network scenarios)."""
        if self._bridged is None:
            bridged = BridgedService()
            try:
                bridged.start()
            except BaseException:
                bridged.close()
                raise
            self._bridged = bridged
        return self._bridged

    def template(self, config_drive: bool) -> Template:
        """vmops' domain XML and disk recipes, from one real spawn."""
        if config_drive not in self._templates:
            svc = self.vmops
            name = "bench-template-cd" if config_drive else "bench-template"
            server_id = svc.spawn(name, config_drive=config_drive)
            try:
                xml = svc.domain_xml(name)
                disks = disk_templates(xml, self.work / "bases")
            finally:
                svc.destroy(server_id)
            self._templates[config_drive] = Template(xml, disks, config_drive)
        return self._templates[config_drive]

    def workdir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        try:
            if self._baseline is not None:
                self._baseline.close()
        finally:
            self._baseline = None
            try:
                if self._bridged is not None:
                    self._bridged.close()
            finally:
                self._bridged = None
                self._close_vmops()

    def _close_vmops(self) -> None:
        try:
            if self._vmops is not None:
                self._vmops.close()
        finally:
            self._vmops = None
            remove_tree(self.work)


_session: Session | None = None


def get() -> Session:
    global _session
    if _session is None:
        _session = Session()
        CLEANUP.push("the bench session", close)
    return _session


def close() -> None:
    global _session
    if _session is not None:
        s, _session = _session, None
        s.close()
