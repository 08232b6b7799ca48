"""bench/memory_probe.py's parsers and the split bench.service_memory
prints from them (--breakdown); one real breakdown of this process."""

from __future__ import annotations

from typing import Any

import pytest

from bench import memory_probe, service_memory

MALLOC_INFO = """<malloc version="1">
<heap nr="0">
<sizes>
  <size from="33" to="33" total="132" count="4"/>
</sizes>
<total type="fast" count="2" size="96"/>
<total type="rest" count="64" size="107535"/>
<system type="current" size="1208320"/>
<system type="max" size="1208320"/>
<aspace type="total" size="1208320"/>
</heap>
<heap nr="1">
<sizes>
</sizes>
<total type="fast" count="0" size="0"/>
<total type="rest" count="3" size="4096"/>
<system type="current" size="135168"/>
<system type="max" size="135168"/>
</heap>
<total type="fast" count="2" size="96"/>
<total type="rest" count="67" size="111631"/>
<total type="mmap" count="2" size="401408"/>
<system type="current" size="1343488"/>
</malloc>
"""

DEBUGMALLOCSTATS = """Small block threshold = 512, in 32 size classes.

class   size   num pools   blocks in use  avail blocks
-----   ----   ---------   -------------  ------------
    0     16           2             845           171

# arenas allocated total           =                    3
# arenas reclaimed                 =                    0
# arenas highwater mark            =                    3
# arenas allocated current         =                    3
3 arenas * 1048576 bytes/arena     =            3,145,728

# bytes in allocated blocks        =            2,190,192
# bytes in available blocks        =              314,928
35 unused pools * 16384 bytes      =              573,440
# bytes lost to pool headers       =                7,392
# bytes lost to quantization       =               10,624
# bytes lost to arena alignment    =               49,152
Total                              =            3,145,728

arena map counts
# arena map mid nodes              =                    1
# bytes lost to arena map root     =              262,144
Total                              =              655,360

           11 free PyDictObjects * 48 bytes each =                  528
"""

ROLLUP = """55d0c6a3e000-7ffd2b5fe000 ---p 00000000 00:00 0                          [rollup]
Rss:               69504 kB
Pss:               45935 kB
Anonymous:         40960 kB
"""


def test_malloc_info_gives_each_arenas_size_and_free_bytes() -> None:
    assert memory_probe.parse_malloc_info(MALLOC_INFO) == [
        {"arena": 0, "size": 1208320, "free": 96 + 107535},
        {"arena": 1, "size": 135168, "free": 4096},
    ]


def test_debugmallocstats_gives_arenas_and_blocks() -> None:
    assert memory_probe.parse_pymalloc(DEBUGMALLOCSTATS) == {
        "arenas": 3, "arena_bytes": 3145728, "allocated": 2190192, "available": 314928,
        "unused_pools": 573440, "pool_headers": 7392, "quantization": 10624,
        "alignment": 49152}


def test_rollup_fields_in_kib() -> None:
    assert memory_probe.parse_rollup(ROLLUP) == {"Rss": 69504, "Pss": 45935,
                                                 "Anonymous": 40960}


def _step(anon_mib: float, inuse: float, free: float, arenas: int, blocks: float,
          sqlite: float) -> dict[str, Any]:
    mib = 1 << 20
    return {"rollup": {"Anonymous": int(anon_mib * 1024)},
            "mallinfo2": {"uordblks": int(inuse * mib), "fordblks": int(free * mib)},
            "pymalloc": {"arenas": arenas, "arena_bytes": arenas * mib,
                         "allocated": int(blocks * mib)},
            "sqlite": {"memory_used": int(sqlite * mib)}}


def test_growth_is_split_into_malloc_pymalloc_and_the_rest() -> None:
    old = _step(50, 10, 1, 17, 15, 1)
    new = _step(70, 24, 2, 22, 18, 2.5)
    line = service_memory.growth_line(new, old, per=1024)
    assert line.startswith("anon +20.0 (+20.0 KiB/rec) = malloc in use +14.0 (+14.0 KiB/rec)")
    assert "[sqlite +1.5 (+1.5 KiB/rec)]" in line
    assert "malloc free +1.0 (+1.0 KiB/rec)" in line
    assert "pymalloc arenas +5.0 (+5.0 KiB/rec) [in blocks +3.0 (+3.0 KiB/rec)]" in line
    assert "rest +0.0 (+0.0 KiB/rec)" in line  # 20 - 14 - 1 - 5


@pytest.mark.skipif(memory_probe._libc() is None, reason="not glibc 2.33+")
def test_a_breakdown_of_this_process() -> None:
    b = memory_probe.breakdown()
    assert b["mallinfo2"]["uordblks"] > 0
    assert b["arenas"] and b["arenas"][0]["arena"] == 0
    assert b["pymalloc"]["arenas"] >= 1 and b["pymalloc"]["allocated"] > 0
    assert b["rollup"]["Anonymous"] > 0
    assert "anon" in service_memory.breakdown_line(b)
