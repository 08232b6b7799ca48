"""How long the console process lets a busy stream's output gather
(vmops/console/daemon.py: GATHER_S, GATHER_SAFE_BYTES)."""

from __future__ import annotations

import socket

import pytest

from vmops.console.daemon import GATHER_S, GATHER_SAFE_BYTES, gather_wait


def test_a_slow_stream_gathers_for_the_whole_bound() -> None:
    # 40 KiB/s (a UART under TCG): 200 bytes in 4.9 ms, so the bound holds.
    assert gather_wait(100, GATHER_S) == GATHER_S
    assert gather_wait(1, 1.0) == GATHER_S
    assert gather_wait(0, 0.0) == GATHER_S


def test_a_fast_stream_is_read_before_its_writes_could_fill_the_queue() -> None:
    # 400 bytes came in 5 ms: wait only as long as 200 more take.
    assert gather_wait(2 * GATHER_SAFE_BYTES, GATHER_S) == pytest.approx(GATHER_S / 2)
    # Never longer than the bound, never negative.
    assert 0.0 <= gather_wait(GATHER_SAFE_BYTES + 1, GATHER_S) <= GATHER_S
    assert gather_wait(10, -1.0) == 0.0


def test_a_stream_too_fast_to_gather_is_not_held_at_all() -> None:
    # 64 KiB in 5 ms: the wait would be a sixtieth of the bound: none.
    assert gather_wait(65536, GATHER_S) == 0.0


def test_the_safe_amount_is_well_under_what_one_byte_writes_fill() -> None:
    """The kernel here, as QEMU would meet it: one-byte writes into a UNIX
    stream socket that nobody reads, until it refuses (EAGAIN)."""
    writer, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with writer, reader:
        writer.setblocking(False)
        queued = 0
        with pytest.raises(BlockingIOError):
            while queued < 1_000_000:
                writer.send(b"x")
                queued += 1
    assert 0.8 * queued >= GATHER_SAFE_BYTES, queued
