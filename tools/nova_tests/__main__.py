"""Run Nova's generic driver tests against vmops' Nova driver and classify each.

Usage (through scripts/nova-tests, which makes Nova's virtualenv first):
    python -m tools.nova_tests [--hypervisor fake|libvirt] [--threading eventlet|native]
                               [-k NAME] [--update-expected]

Nova's ``_VirtDriverTestCase`` (nova/tests/unit/virt/test_virt_drivers.py,
from the installed wheel) runs with ``driver_module`` set to vmops' driver
on vmops' fake hypervisor (tools/nova_tests/fake_host.py), or on the real
libvirt with the test image (tools/nova_tests/libvirt_host.py; guests boot).
Each test is one
of: passed (for real), swallowed (passed only because the suite swallowed
a NotImplementedError), failed (a failure or an error), skipped.
The gate is tests/nova/expected-pass.txt: exit status 1 when a test listed
there did not pass for real (a regression), 0 otherwise; a test that passes
for real and is not listed is reported, for the list. Results also go to
.cache/nova-tests/results-<threading>[-libvirt].json. docs/nova-driver.md says more.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import unittest
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
EXPECTED = REPO / "tests" / "nova" / "expected-pass.txt"
RESULTS = REPO / ".cache" / "nova-tests"
OUTCOMES = ("passed", "swallowed", "failed", "skipped")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/nova-tests",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--threading", choices=("eventlet", "native"), default="eventlet",
                        help="Nova's threading mode: eventlet monkey patching (Nova's "
                             "default, and the default here) or native threads "
                             "(OS_NOVA_DISABLE_EVENTLET_PATCHING)")
    parser.add_argument("--hypervisor", choices=("fake", "libvirt"), default="fake",
                        help="under the driver: vmops' fake hypervisor (the gate), or the "
                             "real libvirt with the test image (guests boot under TCG: run "
                             "it under flock /tmp/vmops-guest.lock), with vmops' own "
                             "checks of what the guest saw")
    parser.add_argument("--suite", choices=("driver", "servers"), default="driver",
                        help="Nova's generic driver tests (the gate), or Nova's functional "
                             "ServersTest (its API, conductor, scheduler and Placement in "
                             "process) with vmops' driver on the fake hypervisor")
    parser.add_argument("-k", dest="names", action="append", default=[],
                        help="run only tests (Nova's and vmops' own) whose name contains "
                             "this (repeatable)")
    parser.add_argument("--update-expected", action="store_true",
                        help="add this run's real passes to the expected-pass list "
                             "(never removes)")
    args = parser.parse_args(argv)
    if args.suite == "servers" and (args.hypervisor == "libvirt" or args.update_expected):
        parser.error("--suite servers runs on the fake hypervisor, with no expected-pass list")
    if args.hypervisor == "libvirt" and args.update_expected:
        parser.error("the expected-pass list is the fake hypervisor's gate: "
                     "--update-expected goes with --hypervisor fake")
    return args


class Outcomes(unittest.TestResult):
    """Each test's outcome and, for a failure, its reason (the last line)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_test: dict[str, tuple[str, str]] = {}

    def addSuccess(self, test: Any) -> None:  # noqa: N802 - unittest's API
        self.by_test[_name(test)] = ("ok", "")

    def addFailure(self, test: Any, err: Any) -> None:  # noqa: N802
        self.by_test[_name(test)] = ("failed", _reason(err))

    def addError(self, test: Any, err: Any) -> None:  # noqa: N802
        self.by_test[_name(test)] = ("failed", _reason(err))

    def addSkip(self, test: Any, reason: str) -> None:  # noqa: N802
        self.by_test[_name(test)] = ("skipped", reason)

    def addExpectedFailure(self, test: Any, err: Any) -> None:  # noqa: N802
        self.by_test[_name(test)] = ("failed", "expected failure")

    def addUnexpectedSuccess(self, test: Any) -> None:  # noqa: N802
        self.by_test[_name(test)] = ("failed", "unexpected success")


def _name(test: Any) -> str:
    return str(test.id()).rsplit(".", 1)[-1]


def _reason(err: Any) -> str:
    """The exception's own line ("Type: message") of a test's exc_info, the
    last line of the traceback unittest would print (not buffering output)."""
    return _last_line("".join(traceback.format_exception_only(err[0], err[1])))


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""


def classify(outcomes: dict[str, tuple[str, str]],
             swallowed: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """passed / swallowed / failed / skipped, with the reason or the methods."""
    result = {}
    for name, (outcome, reason) in sorted(outcomes.items()):
        if outcome == "ok" and name in swallowed:
            result[name] = {"outcome": "swallowed",
                            "detail": "NotImplementedError from " + ", ".join(swallowed[name])}
        elif outcome == "ok":
            result[name] = {"outcome": "passed", "detail": ""}
        else:
            result[name] = {"outcome": outcome, "detail": reason}
    return result


def read_expected() -> set[str]:
    if not EXPECTED.exists():
        return set()
    return {line.strip() for line in EXPECTED.read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def run(args: argparse.Namespace) -> tuple[dict[str, dict[str, str]], dict[str, tuple[str, str]]]:
    if args.threading == "native":
        os.environ["OS_NOVA_DISABLE_EVENTLET_PATCHING"] = "1"
    else:
        os.environ.pop("OS_NOVA_DISABLE_EVENTLET_PATCHING", None)
    os.environ["VMOPS_NOVA_TESTS_HYPERVISOR"] = args.hypervisor
    from nova import monkey_patch

    from tools.nova_tests import suite  # after the threading mode is set

    print(f"threading: {args.threading} (eventlet monkey patching applied: "
          f"{monkey_patch.is_patched()}), hypervisor: {args.hypervisor}", flush=True)

    if args.suite == "servers":
        from tools.nova_tests import servers

        nova_case, own_case = servers.VmopsServersTest, servers.VmopsServersOwnTest
    else:
        nova_case = suite.VmopsDriverTestCase
        own_case = suite.VmopsAdapterTestCase if args.hypervisor == "fake" \
            else suite.VmopsLibvirtTestCase
    tests = unittest.TestLoader().loadTestsFromTestCase(nova_case)
    selected = unittest.TestSuite(
        t for t in tests if not args.names or any(n in _name(t) for n in args.names))
    outcomes = Outcomes()
    selected.run(outcomes)
    own = Outcomes()  # vmops' own checks of the driver: every one must pass
    own_tests = unittest.TestLoader().loadTestsFromTestCase(own_case)
    unittest.TestSuite(t for t in own_tests if not args.names
                       or any(n in _name(t) for n in args.names)).run(own)
    return classify(outcomes.by_test, {k.rsplit(".", 1)[-1]: v
                                       for k, v in suite.SWALLOWED.items()}), own.by_test


def report(results: dict[str, dict[str, str]], expected: set[str],
           selected_all: bool) -> int:
    for name, r in results.items():
        print(f"{r['outcome']:<10} {name}" + (f"  ({r['detail']})" if r["detail"] else ""))
    counts = {o: sum(1 for r in results.values() if r["outcome"] == o) for o in OUTCOMES}
    print(f"\n{len(results)} tests: " + ", ".join(f"{n} {o}" for o, n in counts.items()))
    passed = {n for n, r in results.items() if r["outcome"] == "passed"}
    ran = set(results)
    # In a full run, an expected test that did not run at all is a regression too.
    regressions = sorted((expected if selected_all else expected & ran) - passed)
    new = sorted(passed - expected) if expected else []  # no list: nothing to add to
    if not selected_all:
        print("(a selection: expected tests not run are not checked)")
    for name in regressions:
        got = results.get(name, {"outcome": "not run", "detail": ""})
        print(f"REGRESSION: {name} is in {EXPECTED.relative_to(REPO)} but did not pass "
              f"for real: {got['outcome']} {got['detail']}")
    for name in new:
        print(f"NEW PASS: {name} passed for real and is not in "
              f"{EXPECTED.relative_to(REPO)} (--update-expected adds it)")
    return 1 if regressions else 0


def test_image() -> Path:
    """The test image (built once into .cache/test-image, as the functional
    tests build it)."""
    out = Path(os.environ.get("VMOPS_TEST_IMAGE_DIR", REPO / ".cache" / "test-image"))
    subprocess.run([sys.executable, str(REPO / "tools" / "testimage" / "build.py"),
                    "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    return out / "tiny.qcow2"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Short: UNIX sockets under the embedded libvirt's root are limited to 107 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="vmops-nt-", dir="/tmp"))
    os.environ["VMOPS_NOVA_TESTS_TMP"] = str(tmp)
    if args.hypervisor == "libvirt":
        os.environ["VMOPS_NOVA_TESTS_IMAGE"] = str(test_image())
        os.environ["VMOPS_NOVA_TESTS_STATE"] = str(tmp / "state")
    try:
        results, own = run(args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-servers" if args.suite == "servers" else \
        "" if args.hypervisor == "fake" else f"-{args.hypervisor}"
    out = RESULTS / f"results-{args.threading}{suffix}.json"
    out.write_text(json.dumps({"suite": args.suite, "threading": args.threading,
                               "hypervisor": args.hypervisor,
                               "tests": results,
                               "vmops_tests": {n: o for n, (o, _) in own.items()}}, indent=1))
    # The expected-pass list is the driver suite's gate.
    expected = read_expected() if args.suite == "driver" else set()
    status = report(results, expected, selected_all=not args.names)
    print(f"results: {out.relative_to(REPO)}")
    for name, (outcome, reason) in sorted(own.items()):
        print(f"vmops' own: {'passed' if outcome == 'ok' else outcome:<8} {name}"
              + (f"  ({reason})" if reason else ""))
    if any(outcome != "ok" for outcome, _ in own.values()):
        status = 1
    if args.update_expected:
        passed = {n for n, r in results.items() if r["outcome"] == "passed"}
        EXPECTED.parent.mkdir(parents=True, exist_ok=True)
        header = "# Nova's _VirtDriverTestCase tests that pass for real (scripts/nova-tests)\n"
        EXPECTED.write_text(header + "".join(f"{n}\n" for n in sorted(expected | passed)))
        print(f"{EXPECTED.relative_to(REPO)}: {len(expected | passed)} tests")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
