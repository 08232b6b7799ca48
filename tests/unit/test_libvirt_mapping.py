"""The libvirt driver's pure parts: error codes, lifecycle events, URIs, pid files."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from vmops.errors import HypervisorError, InstanceNotFound, InvalidState
from vmops.hypervisor import embed_uri
from vmops.hypervisor.base import PowerState
from vmops.hypervisor.libvirt import embed_root, pid_file_dir
from vmops.hypervisor.libvirt.driver import _translated, error_for, lifecycle_event

UUID = "0b5e6a3c-8f3e-4c4e-9d7a-1f2b3c4d5e6f"


def test_no_domain_is_instance_not_found() -> None:
    error = error_for(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found", "pause", UUID)
    assert isinstance(error, InstanceNotFound)
    assert UUID in error.message


def test_operation_invalid_is_invalid_state() -> None:
    error = error_for(libvirt.VIR_ERR_OPERATION_INVALID, "domain is not running", "pause", UUID)
    assert isinstance(error, InvalidState)
    assert "pause" in error.message and "domain is not running" in error.message


@pytest.mark.parametrize("code", [
    libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_ERR_OPERATION_FAILED,
    libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_ERR_NO_SUPPORT])
def test_other_codes_are_hypervisor_errors_with_libvirts_message(code: int) -> None:
    error = error_for(code, "qemu unexpectedly closed the monitor", "start", UUID)
    assert type(error) is HypervisorError
    assert "qemu unexpectedly closed the monitor" in error.message


def test_message_text_never_decides_the_class() -> None:
    error = error_for(libvirt.VIR_ERR_INTERNAL_ERROR, "Domain not found", "start", UUID)
    assert type(error) is HypervisorError


class _Raiser:
    @_translated("pause")
    def pause(self, uuid: str, code: int) -> None:
        error = libvirt.libvirtError("failed")
        error.err = (code, libvirt.VIR_FROM_QEMU, "the message", 2, None, None, None, 0, 0)
        raise error


def test_decorator_converts_and_names_the_uuid() -> None:
    with pytest.raises(InstanceNotFound, match=UUID):
        _Raiser().pause(UUID, libvirt.VIR_ERR_NO_DOMAIN)
    with pytest.raises(HypervisorError, match="the message") as caught:
        _Raiser().pause(UUID, libvirt.VIR_ERR_INTERNAL_ERROR)
    assert isinstance(caught.value.__cause__, libvirt.libvirtError)


E = libvirt


@pytest.mark.parametrize(("event", "detail", "state", "word"), [
    (E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_BOOTED, PowerState.RUNNING, "started"),
    (E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_RESTORED, PowerState.RUNNING,
     "restored"),
    (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED, PowerState.PAUSED,
     "paused"),
    (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR, PowerState.PAUSED,
     "io-error"),
    (E.VIR_DOMAIN_EVENT_RESUMED, E.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED, PowerState.RUNNING,
     "unpaused"),
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN, PowerState.SHUTOFF,
     "shutdown"),
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_DESTROYED, PowerState.SHUTOFF,
     "destroyed"),
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_CRASHED, PowerState.CRASHED,
     "crashed"),
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_SAVED, PowerState.SUSPENDED,
     "suspended"),
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_FAILED, PowerState.CRASHED, "failed"),
    (E.VIR_DOMAIN_EVENT_CRASHED, E.VIR_DOMAIN_EVENT_CRASHED_PANICKED, PowerState.CRASHED,
     "crashed"),
    (E.VIR_DOMAIN_EVENT_PMSUSPENDED, E.VIR_DOMAIN_EVENT_PMSUSPENDED_MEMORY,
     PowerState.PMSUSPENDED, "pmsuspended"),
])
def test_lifecycle_events(event: int, detail: int, state: PowerState, word: str) -> None:
    mapped = lifecycle_event(UUID, event, detail)
    assert mapped is not None
    assert (mapped.uuid, mapped.state, mapped.detail) == (UUID, state, word)


@pytest.mark.parametrize(("detail", "shutdown_detail", "says"), [
    (E.VIR_DOMAIN_EVENT_STOPPED_FAILED, None, "QEMU died"),
    (E.VIR_DOMAIN_EVENT_STOPPED_CRASHED, None, "guest crashed"),
    (E.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN, E.VIR_DOMAIN_EVENT_SHUTDOWN_HOST, "signal"),
])
def test_stops_nobody_asked_for_carry_a_fault(detail: int, shutdown_detail: int | None,
                                               says: str) -> None:
    mapped = lifecycle_event(UUID, E.VIR_DOMAIN_EVENT_STOPPED, detail, shutdown_detail)
    assert mapped is not None and says in mapped.fault


@pytest.mark.parametrize(("detail", "shutdown_detail"), [
    (E.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN, E.VIR_DOMAIN_EVENT_SHUTDOWN_GUEST),
    (E.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN, E.VIR_DOMAIN_EVENT_SHUTDOWN_FINISHED),
    (E.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN, None),
    # vmops' own power off: libvirt signals QEMU, so SHUTDOWN_HOST comes first.
    (E.VIR_DOMAIN_EVENT_STOPPED_DESTROYED, E.VIR_DOMAIN_EVENT_SHUTDOWN_HOST),
    (E.VIR_DOMAIN_EVENT_STOPPED_SAVED, None),
])
def test_asked_for_stops_carry_no_fault(detail: int, shutdown_detail: int | None) -> None:
    mapped = lifecycle_event(UUID, E.VIR_DOMAIN_EVENT_STOPPED, detail, shutdown_detail)
    assert mapped is not None and mapped.fault == ""


@pytest.mark.parametrize("event", [
    E.VIR_DOMAIN_EVENT_DEFINED, E.VIR_DOMAIN_EVENT_UNDEFINED, E.VIR_DOMAIN_EVENT_SHUTDOWN])
def test_events_without_a_power_change_are_dropped(event: int) -> None:
    assert lifecycle_event(UUID, event, 0) is None


def test_embed_uri_round_trip() -> None:
    uri = embed_uri(Path("/var/lib/vmops"))
    assert uri == "qemu:///embed?root=/var/lib/vmops/libvirt"
    assert embed_root(uri) == Path("/var/lib/vmops/libvirt")


@pytest.mark.parametrize("uri", ["qemu:///system", "test:///default", "qemu:///embed"])
def test_not_embedded(uri: str) -> None:
    assert embed_root(uri) is None


def test_pid_file_dirs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert pid_file_dir("qemu:///embed?root=/s/libvirt") == Path("/s/libvirt/run/qemu")
    assert pid_file_dir("qemu:///system") == Path("/run/libvirt/qemu")
    assert pid_file_dir("qemu:///session") == Path("/run/user/1000/libvirt/qemu/run")
    assert pid_file_dir("qemu+ssh://host/system") is None
    assert pid_file_dir("test:///default") is None
