"""What a Tempest run means: each selected test passed, failed or skipped,
counted per test class, and compared with the list of tests expected to pass.

Pure functions over the tests a run selected (``tempest run --list-tests``)
and what subunit recorded (tools/tempest/subunit_results.py). A test
subunit never reported counts as failed: when its class's ``setUpClass``
failed, Tempest reports that once and none of the class's tests, so the
set-up's failure is given as each one's reason.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
STATUSES = (PASSED, FAILED, SKIPPED)
# subunit's status of a finished test -> ours.
SUBUNIT_STATUS = {"success": PASSED, "xfail": PASSED, "skip": SKIPPED,
                  "fail": FAILED, "uxsuccess": FAILED}
# "setUpClass (tempest.api.compute.servers.test_servers.ServersTestJSON)"
FIXTURE_ID = re.compile(r"^(?P<fixture>\w+) \((?P<cls>[\w.]+)\)$")
COMPUTE_PREFIX = "tempest.api.compute."


def test_class(test_id: str) -> str:
    """The class of a test id: attributes in brackets dropped, then the
    method name: ``a.b.C.test_x[id-1,smoke]`` -> ``a.b.C``."""
    return test_id.split("[", 1)[0].rsplit(".", 1)[0]


def short_class(cls: str) -> str:
    return cls.removeprefix(COMPUTE_PREFIX)


def first_line(reason: str, width: int = 200) -> str:
    """The line of a traceback that says what went wrong: its last non-blank
    line (the exception), or a skip's reason; cut to ``width``."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    # testtools ends tracebacks with the exception; tempest's own exceptions
    # put the useful part ("Details: ...") on a line of their own before it.
    for line in reversed(lines):
        if line.startswith("Details:"):
            text = f"{text} | {line}" if line != text else text
            break
    return text if len(text) <= width else text[: width - 3] + "..."


@dataclass
class Outcome:
    status: str
    reason: str = ""
    seconds: float | None = None


@dataclass
class Run:
    """The outcome of every selected test, and the class fixtures that failed."""

    tests: dict[str, Outcome]
    fixture_failures: dict[str, str] = field(default_factory=dict)  # "setUpClass (cls)" -> why

    def totals(self) -> Counter[str]:
        return Counter(outcome.status for outcome in self.tests.values())

    def per_class(self) -> dict[str, Counter[str]]:
        classes: dict[str, Counter[str]] = {}
        for test_id, outcome in self.tests.items():
            classes.setdefault(test_class(test_id), Counter())[outcome.status] += 1
        return dict(sorted(classes.items()))

    def ids(self, status: str) -> set[str]:
        return {test_id for test_id, outcome in self.tests.items() if outcome.status == status}


def combine(selected: list[str], recorded: list[dict[str, Any]],
            excluded: dict[str, str] | None = None) -> Run:
    """The run's outcome from the selected ids and subunit's records; the
    ``excluded`` ones (id -> why) were not run and count as skipped."""
    fixtures: dict[str, str] = {}  # failed class fixtures
    class_skips: dict[str, str] = {}  # class -> why its setUpClass skipped it all
    by_id: dict[str, Outcome] = {}
    for record in recorded:
        status = SUBUNIT_STATUS.get(record["status"])
        fixture = FIXTURE_ID.match(record["id"])
        if fixture:
            if status == FAILED:
                fixtures[record["id"]] = record.get("reason", "")
            elif status == SKIPPED and fixture["fixture"] == "setUpClass":
                class_skips[fixture["cls"]] = record.get("reason", "")
        elif status is not None:
            by_id[record["id"]] = Outcome(status, record.get("reason", ""),
                                          record.get("seconds"))
    tests: dict[str, Outcome] = {}
    for test_id in selected:
        if excluded and test_id in excluded:
            tests[test_id] = Outcome(SKIPPED, f"excluded: {excluded[test_id]}")
            continue
        outcome = by_id.pop(test_id, None)
        tests[test_id] = (outcome if outcome is not None
                          else _unreported(test_id, fixtures, class_skips))
    tests.update(by_id)  # reported but not listed: should not happen; kept, not hidden
    return Run(tests, fixtures)


def _unreported(test_id: str, fixtures: dict[str, str], class_skips: dict[str, str]) -> Outcome:
    cls = test_class(test_id)
    if cls in class_skips:
        return Outcome(SKIPPED, class_skips[cls])
    setup = fixtures.get(f"setUpClass ({cls})")
    if setup is not None:
        return Outcome(FAILED, "setUpClass failed: " + setup)
    return Outcome(FAILED, "not reported by Tempest (a worker died, or the run was cut short)")


# The expected-pass list: one test id a line; '#' starts a comment.
# The exclusion list: a regular expression a line, '#' and the reason after it.

def read_exclusions(path: Path) -> list[tuple[re.Pattern[str], str]]:
    """(pattern, reason) of each line, as stestr reads its exclude list."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        pattern, _, reason = line.partition("#")
        if pattern.strip():
            found.append((re.compile(pattern.strip()), reason.strip()))
    return found


def excluded_ids(selected: list[str], exclusions: list[tuple[re.Pattern[str], str]],
                 ) -> dict[str, str]:
    return {test_id: reason for test_id in selected
            for pattern, reason in exclusions[::-1] if pattern.search(test_id)}


def read_list(path: Path) -> list[str]:
    if not path.exists():
        return []
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def header(path: Path) -> str:
    """The comment lines at the top of a list file, kept when it is rewritten."""
    if not path.exists():
        return ""
    kept = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        kept.append(line)
    return "\n".join(kept) + "\n" if kept else ""


def write_list(path: Path, ids: set[str]) -> None:
    path.write_text(header(path) + "".join(f"{test_id}\n" for test_id in sorted(ids)))


@dataclass
class Verdict:
    regressions: dict[str, Outcome]  # expected to pass, selected, did not pass
    new_passes: list[str]  # passed, not on the list


def judge(run: Run, expected: list[str]) -> Verdict:
    regressions = {test_id: run.tests[test_id] for test_id in sorted(expected)
                   if test_id in run.tests and run.tests[test_id].status != PASSED}
    new_passes = sorted(run.ids(PASSED) - set(expected))
    return Verdict(regressions, new_passes)


# Rendering.

def class_table(run: Run) -> str:
    rows = [(short_class(cls), counts[PASSED], counts[FAILED], counts[SKIPPED])
            for cls, counts in run.per_class().items()]
    width = max((len(row[0]) for row in rows), default=10)
    lines = [f"{'test class':<{width}}  passed  failed  skipped"]
    lines += [f"{name:<{width}}  {p:>6}  {f:>6}  {s:>7}" for name, p, f, s in rows]
    return "\n".join(lines)


def totals_line(run: Run) -> str:
    totals = run.totals()
    return (f"{len(run.tests)} tests: {totals[PASSED]} passed, {totals[FAILED]} failed, "
            f"{totals[SKIPPED]} skipped")


def failure_lines(run: Run) -> list[str]:
    """One line a failed test: its id and why; tests of a class whose
    set-up failed are grouped into one line."""
    lines = []
    grouped: dict[str, int] = Counter()
    for test_id, outcome in sorted(run.tests.items()):
        if outcome.status != FAILED:
            continue
        if outcome.reason.startswith("setUpClass failed"):
            grouped[test_class(test_id)] += 1
            continue
        lines.append(f"{test_id.removeprefix(COMPUTE_PREFIX)}: {first_line(outcome.reason)}")
    for cls, count in sorted(grouped.items()):
        why = first_line(run.fixture_failures.get(f"setUpClass ({cls})", ""))
        lines.append(f"{short_class(cls)} (setUpClass, {count} tests): {why}")
    return lines


# What varies between two failures of one cause: ids, names Tempest made up, numbers.
_VARYING = [(re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}"),
             "<id>"),
            (re.compile(r"tempest-[\w-]+"), "<name>"),
            (re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+Z?"), "<time>"),
            (re.compile(r"\d+\.\d+\.\d+\.\d+(:\d+)?"), "<address>"),
            (re.compile(r"\b\d{5,}\b"), "<n>")]


def cause(reason: str) -> str:
    text = first_line(reason.removeprefix("setUpClass failed: "), width=240)
    for pattern, placeholder in _VARYING:
        text = pattern.sub(placeholder, text)
    return text


def causes(run: Run) -> list[tuple[str, int]]:
    """The failed tests' reasons with what varies taken out, most tests first."""
    counts = Counter(cause(o.reason) for o in run.tests.values() if o.status == FAILED)
    return counts.most_common()


def as_json(run: Run, verdict: Verdict, facts: dict[str, Any]) -> dict[str, Any]:
    totals = run.totals()
    return {
        **facts,
        "totals": {status: totals[status] for status in STATUSES} | {"tests": len(run.tests)},
        "classes": {cls: {status: counts[status] for status in STATUSES}
                    for cls, counts in run.per_class().items()},
        "tests": {test_id: {"status": o.status, "reason": o.reason, "seconds": o.seconds}
                  for test_id, o in sorted(run.tests.items())},
        "class_fixture_failures": run.fixture_failures,
        "causes": [{"tests": count, "cause": text} for text, count in causes(run)],
        "regressions": sorted(verdict.regressions),
        "new_passes": verdict.new_passes,
    }
