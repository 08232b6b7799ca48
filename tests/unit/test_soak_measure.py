"""The soak's measurements (tools/soak/measure.py) see a leak."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from tools.soak import measure
from tools.soak.measure import Sample


def test_a_sample_counts_descriptors_threads_and_files(tmp_path: Path) -> None:
    before = measure.sample(os.getpid(), tmp_path)
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    with open(tmp_path / "leak", "w"):
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "file").write_text("x")
        (tmp_path / "service.log").write_text("ignored: the soak's own log")
        after = measure.sample(os.getpid(), tmp_path)
    stop.set()
    worker.join()
    assert after.fds == before.fds + 1
    assert after.threads == before.threads + 1
    assert (before.files, after.files) == (0, 2)
    assert after.processes == 0


def test_growth_names_what_grew_beyond_its_bound() -> None:
    warm = Sample(fds=9, threads=4, rss_kib=60_000, files=11, processes=0)
    assert measure.growth(warm, warm) == []
    leaky = Sample(fds=10, threads=5, rss_kib=60_000 + measure.MAX_RSS_GROWTH_KIB + 1,
                   files=12, processes=1)
    grew = measure.growth(warm, leaky)
    assert [g.split()[0] for g in grew] == ["fds", "threads", "files", "rss_kib", "1"]
    within = Sample(fds=9, threads=4, rss_kib=60_000 + measure.MAX_RSS_GROWTH_KIB,
                    files=11, processes=0)
    assert measure.growth(warm, within) == []
