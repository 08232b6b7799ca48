"""vmops' own step timings (``vmops:timings`` in the server view) as the
bench's phases.

vmops times each verb it runs (``vmops/compute/timings.py``) and keeps the
last one's steps with the instance: ``{"verb", "result", "total_ms",
"steps": [{"step", "ms"}, ...]}``. The bench reads them right after a
sample (outside the timed interval), checks they are of the verb it ran,
and adds one phase of its own, ``outside vmops``: the bench's measured time
minus vmops' ``total_ms`` (the HTTP round trips and the polling until the
bench saw the verb end).
"""

from __future__ import annotations

from typing import Any

from bench.common import median

OUTSIDE = "outside vmops"


def steps_of(server: dict[str, Any], verb: str) -> dict[str, Any] | None:
    """The server's ``vmops:timings`` if they are of a successful ``verb``."""
    timings = server.get("vmops:timings")
    if not isinstance(timings, dict) or timings.get("verb") != verb:
        return None
    if timings.get("result") != "ok":
        return None
    return timings


def phases(timings: dict[str, Any], measured_ms: float) -> dict[str, float]:
    """vmops' steps (ms, in order; a step named twice is summed) and what the
    bench measured beyond them."""
    out: dict[str, float] = {}
    for step in timings["steps"]:
        out[step["step"]] = out.get(step["step"], 0.0) + float(step["ms"])
    out[OUTSIDE] = max(0.0, measured_ms - float(timings["total_ms"]))
    return out


def median_phases(samples: list[dict[str, float]]) -> dict[str, float]:
    """The median of each phase over the samples (in the order first seen;
    a phase missing from a sample counts as 0 there)."""
    names: list[str] = []
    for sample in samples:
        names += [n for n in sample if n not in names]
    return {n: round(median([s.get(n, 0.0) for s in samples]) or 0.0, 2) for n in names}
