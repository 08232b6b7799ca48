"""A subunit v2 stream (what stestr records) as JSON: one entry per test id.

Usage: <tempest venv>/bin/python -m tools.tempest.subunit_results STREAM OUT.json

Run with the Tempest virtualenv's Python, which has python-subunit and
testtools; it imports nothing else, so the project's .venv needs neither.
Each entry: {"id", "status" (subunit's: success, fail, skip, xfail,
uxsuccess, ...), "reason" (a skip's reason, or a failure's traceback),
"seconds"}. Ids such as "setUpClass (tempest....SomeTest)" are a class's
set-up or tear-down failing; tools/tempest/report.py gives them meaning.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import subunit
import testtools

# The attachments that carry why a test did not pass, in the order looked at.
REASON_DETAILS = ("reason", "traceback")


def _text(content: Any) -> str:
    return b"".join(bytes(part) for part in content.iter_bytes()).decode("utf-8", "replace")


def _entry(test: dict[str, Any]) -> dict[str, Any]:
    details = test["details"]
    reason = next((_text(details[name]) for name in REASON_DETAILS if name in details), "")
    start, end = test["timestamps"]
    seconds = round((end - start).total_seconds(), 1) if start and end else None
    return {"id": test["id"], "status": test["status"], "reason": reason.strip(),
            "seconds": seconds}


def read(stream: Any) -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = []
    result = testtools.StreamToDict(lambda test: tests.append(_entry(test)))
    result.startTestRun()
    try:
        subunit.ByteStreamToStreamResult(stream, non_subunit_name="stdout").run(result)
    finally:
        result.stopTestRun()
    return tests


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    with open(argv[0], "rb") as stream:
        tests = read(stream)
    with open(argv[1], "w") as out:
        json.dump(tests, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
