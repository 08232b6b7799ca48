"""The service's C heap (vmops/heap.py): at most heap.ARENAS malloc arenas
however many threads allocate, big buffers mapped on their own even after
a bigger one was freed, freed pages handed back, and the trimming thread.
The glibc checks run in a fresh interpreter each: the arena limit only
holds if set before the process's first thread, and pytest's process has
had threads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from vmops import heap

glibc_only = pytest.mark.skipif(heap._glibc() is None, reason="not glibc")

ARENAS_OF_THREADS = """
    import ctypes, os, re, tempfile, threading
    from vmops import heap
    if {limit}:
        assert heap.limit_arenas()
    held, ready, done = [], threading.Barrier(7), threading.Event()

    def allocate() -> None:
        held.append(bytearray(100_000))  # > 512 bytes: malloc, in this thread's arena
        ready.wait()
        done.wait()

    threads = [threading.Thread(target=allocate) for _ in range(6)]
    for t in threads:
        t.start()
    ready.wait()  # all six alive at once, each has allocated
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    path = tempfile.mktemp()
    fh = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(fh))
    libc.fclose(ctypes.c_void_p(fh))
    with open(path) as f:
        print(len(re.findall("<heap nr=", f.read())))
    os.unlink(path)
    done.set()
    for t in threads:
        t.join()
"""


def _arenas(limit: bool) -> int:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(ARENAS_OF_THREADS).format(
        limit=limit)], capture_output=True, text=True, check=True, timeout=60)
    return int(out.stdout)


@glibc_only
def test_six_threads_share_at_most_ARENAS_arenas() -> None:
    assert _arenas(limit=False) > heap.ARENAS  # glibc's default: an arena per thread
    assert _arenas(limit=True) <= heap.ARENAS


FREED_PAGES = """
    from vmops import heap

    def rss_kib() -> int:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

    chunks = [bytes(4000) for _ in range(10_000)]  # ~40 MB on the main heap
    pinned = chunks[-1]  # the top stays in use: glibc cannot give the rest back itself
    del chunks
    before = rss_kib()
    heap.give_back()
    print(before - rss_kib())
"""


@glibc_only
def test_give_back_hands_freed_pages_back() -> None:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(FREED_PAGES)],
                         capture_output=True, text=True, check=True, timeout=60)
    assert int(out.stdout) > 20 * 1024  # KiB: at least half of the ~39 MiB freed


MAPPED_AFTER_A_BIG_FREE = """
    import ctypes
    from vmops import heap

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    if {fix}:
        assert heap.fix_mmap_threshold()
    big = bytes(8 << 20)  # mapped (over 128 KiB); freeing it raises glibc's own threshold
    del big
    before = libc.mallinfo2().hblks
    held = bytes(1 << 20)  # a 1 MiB buffer, as a list's JSON
    print(libc.mallinfo2().hblks - before)  # 1: a mapping of its own; 0: from an arena
"""


def _mapped_after_a_big_free(fix: bool) -> int:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(MAPPED_AFTER_A_BIG_FREE).format(
        fix=fix)], capture_output=True, text=True, check=True, timeout=60)
    return int(out.stdout)


@glibc_only
def test_a_big_buffer_stays_a_mapping_of_its_own_after_a_bigger_one_was_freed() -> None:
    assert _mapped_after_a_big_free(fix=False) == 0  # glibc's rising threshold
    assert _mapped_after_a_big_free(fix=True) == 1


def test_the_trimmer_trims_until_stopped() -> None:
    trimmed = threading.Semaphore(0)

    def trim() -> bool:
        trimmed.release()
        return True

    trimmer = heap.Trimmer(interval=0.001, trim=trim).start()
    assert trimmed.acquire(timeout=10) and trimmed.acquire(timeout=10)  # again and again
    trimmer.stop()
    assert not any(t.name == "heap-trim" for t in threading.enumerate())


def test_a_failing_trim_stops_the_trimmer_and_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    def trim() -> bool:
        raise OSError("no")

    trimmer = heap.Trimmer(interval=0.001, trim=trim).start()
    trimmer._thread.join(10)
    assert not trimmer._thread.is_alive()
    assert "giving freed memory back failed" in caplog.text
    trimmer.stop()
