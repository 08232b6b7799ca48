"""doctor: which checks run for which settings, accel resolution, the embed
root lock test, and the probe kernel itself (run under TCG, which works on
every host, so a broken blob cannot hide behind a host without KVM)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmops import doctor
from vmops.errors import ConfigError
from vmops.hypervisor.base import Accel
from vmops.hypervisor.fake import FakeHypervisor


@pytest.fixture
def kvm(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Set kvm_works' answer: kvm[0] = True/False."""
    answer = [False]
    monkeypatch.setattr(doctor, "kvm_works", lambda: (answer[0], "probe says so"))
    yield answer


def _by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


@pytest.mark.parametrize(("works", "expected"), [(True, Accel.KVM), (False, Accel.TCG)])
def test_auto_follows_the_probe(kvm: list[bool], works: bool, expected: Accel) -> None:
    kvm[0] = works
    assert doctor.resolve_accel("auto") is expected


def test_explicit_settings_are_taken_as_they_are(kvm: list[bool]) -> None:
    assert doctor.resolve_accel("kvm") is Accel.KVM
    assert doctor.resolve_accel("tcg") is Accel.TCG


def test_unknown_accel_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="accel"):
        doctor.resolve_accel("hvf")


def test_kvm_is_required_only_when_asked_for(kvm: list[bool], tmp_path: Path) -> None:
    fake = FakeHypervisor()
    strict = _by_name(doctor.run_checks(tmp_path, "fake:///", "kvm", hypervisor=fake))
    relaxed = _by_name(doctor.run_checks(tmp_path, "fake:///", "auto", hypervisor=fake))
    off = _by_name(doctor.run_checks(tmp_path, "fake:///", "tcg", hypervisor=fake))
    name = "hardware acceleration (KVM)"
    assert not strict[name].ok and strict[name].required
    assert not relaxed[name].ok and not relaxed[name].required
    assert "uses TCG" in relaxed[name].detail
    assert name not in off


def test_given_hypervisor_reports_its_own_checks(kvm: list[bool], tmp_path: Path) -> None:
    checks = _by_name(doctor.run_checks(tmp_path, "fake:///", "tcg", hypervisor=FakeHypervisor()))
    assert checks["fake hypervisor"].ok
    assert checks["state directory"].ok
    assert "libvirt QEMU driver" not in checks  # not a qemu:// URI


def test_unwritable_state_dir_fails(kvm: list[bool], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    checks = _by_name(doctor.run_checks(blocker / "state", "fake:///", "tcg",
                                        hypervisor=FakeHypervisor()))
    assert not checks["state directory"].ok and checks["state directory"].required


def test_embed_uri_checks_the_qemu_user(kvm: list[bool], tmp_path: Path) -> None:
    uri = f"qemu:///embed?root={tmp_path / 'libvirt'}"
    checks = _by_name(doctor.run_checks(tmp_path, uri, "tcg", hypervisor=FakeHypervisor()))
    assert "libvirt QEMU user" in checks
    assert "libvirt QEMU driver" in checks


def test_embed_root_free_or_missing(tmp_path: Path) -> None:
    assert doctor.embed_root_holder(tmp_path) is None
    pid_file = tmp_path / "run" / "qemu" / "driver.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text("999999\n")  # left by a process that has exited
    assert doctor.embed_root_holder(tmp_path) is None


def test_embed_root_held_by_another_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "run" / "qemu" / "driver.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text("")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         "f = open(sys.argv[1], 'r+')\n"
         "fcntl.lockf(f, fcntl.LOCK_EX)\n"
         "f.write(str(os.getpid())); f.flush()\n"
         "print('locked', flush=True); time.sleep(30)\n", str(pid_file)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert doctor.embed_root_holder(tmp_path) == holder.pid
    finally:
        holder.kill()
        holder.wait()
    assert doctor.embed_root_holder(tmp_path) is None


def test_probe_kernel_runs_to_the_end_under_tcg(tmp_path: Path) -> None:
    qemu = shutil.which(doctor.QEMU)
    assert qemu is not None, "scripts/setup installs qemu-system-x86"
    finished, detail = doctor.run_probe_guest(qemu, tmp_path, "tcg")
    assert finished, detail
