"""bench.boot_options' command-line surgery, without VMs: nothing boots."""

from __future__ import annotations

import json

import pytest

from bench.boot_options import QMP, SERIAL, USB, _runnable, options, variant

LINES = {
    "bare": options(["-accel", "tcg", "-nodefaults", "-serial", f"file:{SERIAL}"]),
    "libvirt": options(["-accel", "tcg", "-no-shutdown", "-sandbox", "on,spawn=deny",
                        "-msg", "timestamp=on"]),
}


def test_options_pair_each_flag_with_its_value() -> None:
    assert options(["-S", "-m", "512", "-nodefaults", "-cpu", "max"]) == [
        ("-S",), ("-m", "512"), ("-nodefaults",), ("-cpu", "max")]


def test_a_variant_removes_flags_with_hyphens_and_adds_libvirts() -> None:
    argv = variant("libvirt~no-shutdown~msg", LINES).argv
    assert argv == ["qemu-system-x86_64", "-accel", "tcg", "-sandbox", "on,spawn=deny"]
    assert variant("bare+sandbox+usb", LINES).argv[-4:] == ["-sandbox", "on,spawn=deny", *USB]


@pytest.mark.parametrize("name", ["bare~sandbox", "bare+vga", "qemu", "libvirt~usb"])
def test_a_variant_naming_what_is_not_there_is_refused(name: str) -> None:
    with pytest.raises(SystemExit):
        variant(name, LINES)


def test_libvirts_options_run_outside_libvirt() -> None:
    assert _runnable(("-S",)) is None
    assert _runnable(("-object", '{"qom-type":"secret","id":"masterKey0"}')) is None
    netdev = _runnable(("-netdev", '{"type":"tap","fd":"6","id":"hostnet0"}'))
    assert netdev is not None and json.loads(netdev[1]) == {"type": "user", "id": "hostnet0"}
    assert _runnable(("-chardev", f"socket,id=charserial0,path={SERIAL},server=on,wait=off")) \
        == ("-chardev", f"file,id=charserial0,path={SERIAL}")
    assert _runnable(("-chardev", "socket,id=charmonitor,path=/x/monitor.sock,server=on")) \
        == ("-chardev", f"socket,id=charmonitor,path={QMP},server=on,wait=off")
    assert _runnable(("-rtc", "base=utc")) == ("-rtc", "base=utc")
