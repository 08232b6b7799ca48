"""Run Tempest's compute API tests against a vmops service of its own.

Usage (through scripts/tempest, which makes Tempest's virtualenv first):
    python -m tools.tempest [--regex R | --load-list FILE | --slice | --expected]
                            [--concurrency N] [--update-expected] [--keep]
    python -m tools.tempest --report RUN_DIR

Each run gets a directory under .cache/tempest/runs/ (.cache/tempest/latest
points at the newest): tempest.conf, tempest.log (every request and
answer), vmops' log, the subunit stream, results.json and failures.txt.
Exit status: 0 when every test of tests/tempest/expected-pass.txt that was
selected passed, 1 when one did not (a regression), 2 when Tempest could not
run. docs/tempest.md says more.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tools.tempest import conf, report
from tools.tempest.service import Network, Service, ServiceError, vmops_python

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "tempest"
LISTS = REPO / "tests" / "tempest"
EXPECTED = LISTS / "expected-pass.txt"
SLICE = LISTS / "ci-slice.txt"
EXCLUDED = LISTS / "excluded.txt"
ALL_COMPUTE = r"^tempest\.api\.compute\."
TEMPEST_VERSION = "47.0.0"
# Seconds one test may take before Tempest's fixture stops it.
TEST_TIMEOUT_S = 1200
CAUSES_SHOWN = 25


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/tempest", description=__doc__.split("\n")[0])
    select = parser.add_mutually_exclusive_group()
    select.add_argument("--regex", default=ALL_COMPUTE,
                        help=f"tests to run (default {ALL_COMPUTE})")
    select.add_argument("--load-list", type=Path, help="file of test ids to run")
    select.add_argument("--slice", action="store_true",
                        help=f"the CI slice: {SLICE.relative_to(REPO)}")
    select.add_argument("--expected", action="store_true",
                        help=f"only the tests of {EXPECTED.relative_to(REPO)}")
    parser.add_argument("--concurrency", type=int, default=2, choices=(1, 2, 3, 4),
                        help="Tempest workers (default 2: guests boot under TCG)")
    parser.add_argument("--update-expected", action="store_true",
                        help="add this run's passes to the expected-pass list (never removes)")
    parser.add_argument("--network", choices=("user", "bridge"), default="user",
                        help="guests on user-mode NICs (default), or on a vmops network of "
                             "the run's own (as root; a new project has no 'default' "
                             "security group there yet, which fails more tests)")
    parser.add_argument("--at", metavar="REV",
                        help="test vmops as committed at REV (exported to a temporary "
                             "directory) instead of the working tree")
    parser.add_argument("--keep", action="store_true",
                        help="leave the service's state directory behind (for debugging)")
    parser.add_argument("--report", type=Path, metavar="RUN_DIR",
                        help="print the report of an earlier run and exit")
    return parser.parse_args(argv)


class Tempest:
    """The Tempest virtualenv's commands, run in one run directory."""

    def __init__(self, venv: Path, run_dir: Path) -> None:
        self.venv = venv
        self.run_dir = run_dir
        self.conf = run_dir / "etc" / "tempest.conf"

    def _cmd(self, name: str, *args: str) -> list[str]:
        return [str(self.venv / "bin" / name), *args]

    def _env(self) -> dict[str, str]:
        return {**os.environ, "OS_TEST_TIMEOUT": str(TEST_TIMEOUT_S),
                "TEMPEST_CONFIG_DIR": str(self.conf.parent)}

    def selection_args(self, args: argparse.Namespace) -> list[str]:
        if args.slice:
            return ["--load-list", str(SLICE)]
        if args.expected:
            return ["--load-list", str(EXPECTED)]
        if args.load_list:
            return ["--load-list", str(args.load_list.resolve())]
        return ["--regex", args.regex]

    def list_tests(self, selection: list[str]) -> list[str]:
        """The ids a run of ``selection`` will run. ``tempest run --list-tests``
        ignores --load-list: such a list is its own answer (an id Tempest no
        longer has is then reported as not run)."""
        if selection[0] == "--load-list":
            return report.read_list(Path(selection[1]))
        # tempest run makes .stestr.conf; listing needs stestr's repository too.
        if not (self.run_dir / ".stestr").exists():
            subprocess.run(self._cmd("stestr", "init"), cwd=self.run_dir, env=self._env(),
                           check=True, stdout=subprocess.DEVNULL)
        out = subprocess.run(self._cmd("tempest", "run", "--config-file", str(self.conf),
                                       "--list-tests", *selection),
                             cwd=self.run_dir, env=self._env(), capture_output=True, text=True)
        if out.returncode != 0:
            raise ServiceError(f"tempest run --list-tests failed:\n{out.stdout}{out.stderr}")
        return [line.strip() for line in out.stdout.splitlines()
                if line.startswith("tempest.")]

    def run(self, selection: list[str], concurrency: int) -> int:
        """tempest run (without the tests of EXCLUDED), its output shown and
        kept in tempest-run.txt."""
        if report.read_exclusions(EXCLUDED):
            selection = [*selection, "--exclude-list", str(EXCLUDED)]
        with (self.run_dir / "tempest-run.txt").open("w") as copy:
            proc = subprocess.Popen(
                self._cmd("tempest", "run", "--config-file", str(self.conf),
                          "--concurrency", str(concurrency), *selection),
                cwd=self.run_dir, env=self._env(), stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                copy.write(line)
            return proc.wait()

    def results(self) -> list[dict[str, Any]]:
        """What subunit recorded of the last run."""
        stream = self.run_dir / "results.subunit"
        with stream.open("wb") as out:
            subprocess.run(self._cmd("stestr", "last", "--subunit"), cwd=self.run_dir,
                           env=self._env(), stdout=out, check=False)
        parsed = self.run_dir / "subunit.json"
        subprocess.run([str(self.venv / "bin" / "python"), "-m",
                        "tools.tempest.subunit_results", str(stream), str(parsed)],
                       cwd=REPO, check=True)
        recorded: list[dict[str, Any]] = json.loads(parsed.read_text())
        return recorded


def new_run_dir() -> Path:
    runs = CACHE / "runs"
    run_dir = runs / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (run_dir / "etc").mkdir(parents=True)
    latest = CACHE / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_dir.relative_to(CACHE))
    return run_dir


def test_image() -> Path:
    image_dir = Path(os.environ.get("VMOPS_TEST_IMAGE_DIR", REPO / ".cache" / "test-image"))
    return image_dir / "tiny.qcow2"


def git_commit(rev: str | None) -> str:
    args = ["rev-parse", "--short", rev] if rev else ["describe", "--always", "--dirty"]
    out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return out.stdout.strip()


def export(rev: str, run_dir: Path) -> Path:
    """The tree of commit ``rev``, in the run directory (the vmops that runs
    is imported from there: ``python -m vmops`` with it as working directory)."""
    source = run_dir / "source"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    return source


def describe_cloud(service: Service, run_dir: Path) -> conf.Cloud:
    """Set the service up for Tempest and say what it offers."""
    login = service.password_token()
    if login is None:
        raise ServiceError(
            "vmops' identity service gave no token for the admin's password "
            "(POST /identity/v3/auth/tokens): Tempest cannot log in. See "
            f"{service.log_to}.")
    token, services = login
    images = service.add_images(test_image())
    flavors = service.add_flavors()
    low, high = service.microversions()
    return conf.Cloud(
        base_url=service.base_url, admin_username="admin",
        admin_password=service.admin_password, admin_project="admin",
        admin_domain="Default", dynamic_credentials=service.identity_admin_calls(token),
        accounts_file=None, image_ref=images[0], image_ref_alt=images[1],
        flavor_ref=flavors[0], flavor_ref_alt=flavors[1], min_microversion=low,
        max_microversion=high, image_upload=service.image_upload(token),
        volume_catalog_type=min(services & conf.VOLUME_SERVICE_TYPES, default=""),
        log_dir=run_dir)


def print_report(run: report.Run, verdict: report.Verdict, run_dir: Path) -> None:
    print()
    print(report.class_table(run))
    print()
    failures = report.failure_lines(run)
    if failures:
        print(f"Failed ({len(failures)} lines; full tracebacks in {run_dir}/failures.txt):")
        for line in failures:
            print(f"  {line}")
        print()
    causes = report.causes(run)
    if causes:
        print("Failures by cause (tests: cause):")
        for text, count in causes[:CAUSES_SHOWN]:
            print(f"  {count:>4}: {text}")
        print()
    print(report.totals_line(run))
    if verdict.new_passes:
        print(f"{len(verdict.new_passes)} passed but are not in {EXPECTED.relative_to(REPO)} "
              "(add them with --update-expected):")
        for test_id in verdict.new_passes:
            print(f"  {test_id}")
    if verdict.regressions:
        print(f"REGRESSIONS: {len(verdict.regressions)} tests of "
              f"{EXPECTED.relative_to(REPO)} did not pass:")
        for test_id, outcome in verdict.regressions.items():
            print(f"  {test_id} ({outcome.status}): {report.first_line(outcome.reason)}")
    print(f"results: {run_dir}/results.json")


def write_failures(run: report.Run, run_dir: Path) -> None:
    with (run_dir / "failures.txt").open("w") as out:
        for test_id, outcome in sorted(run.tests.items()):
            if outcome.status == report.FAILED:
                out.write(f"=== {test_id}\n{outcome.reason}\n\n")


def conclude(run_dir: Path, selected: list[str], recorded: list[dict[str, Any]],
             facts: dict[str, Any], update_expected: bool) -> int:
    excluded = report.excluded_ids(selected, report.read_exclusions(EXCLUDED))
    run = report.combine(selected, recorded, excluded)
    expected = report.read_list(EXPECTED)
    verdict = report.judge(run, expected)
    (run_dir / "results.json").write_text(
        json.dumps(report.as_json(run, verdict, facts), indent=1) + "\n")
    write_failures(run, run_dir)
    print_report(run, verdict, run_dir)
    if update_expected and verdict.new_passes:
        report.write_list(EXPECTED, set(expected) | set(verdict.new_passes))
        print(f"added {len(verdict.new_passes)} tests to {EXPECTED.relative_to(REPO)}")
    return 1 if verdict.regressions else 0


def reprint(run_dir: Path, update_expected: bool) -> int:
    """The report of an earlier run, from what it kept (so a newer report
    or expected-pass list applies to it too)."""
    selected = (run_dir / "selected.txt").read_text().split()
    recorded = json.loads((run_dir / "subunit.json").read_text())
    facts = json.loads((run_dir / "facts.json").read_text())
    return conclude(run_dir, selected, recorded, facts, update_expected)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.report:
        return reprint(args.report.resolve(), args.update_expected)
    venv = Path(os.environ.get("TEMPEST_VENV", CACHE / f"venv-{TEMPEST_VERSION}"))
    run_dir = new_run_dir()
    print(f"== run directory {run_dir}", file=sys.stderr)
    source = export(args.at, run_dir) if args.at else REPO
    network = Network.own_bridge() if args.network == "bridge" else Network("user")
    service = Service(source, vmops_python(REPO), run_dir / "vmops-serve.log", network)
    tempest = Tempest(venv, run_dir)
    try:
        service.start()
        print(f"== vmops on {service.base_url}, state {service.state_dir}", file=sys.stderr)
        cloud = describe_cloud(service, run_dir)
        tempest.conf.write_text(conf.render(cloud))
        selection = tempest.selection_args(args)
        selected = tempest.list_tests(selection)
        (run_dir / "selected.txt").write_text("".join(f"{t}\n" for t in selected))
        print(f"== tempest run: {len(selected)} tests, concurrency {args.concurrency}",
              file=sys.stderr)
        tempest.run(selection, args.concurrency)
        recorded = tempest.results()
    except ServiceError as error:
        print(f"scripts/tempest: {error}", file=sys.stderr)
        return 2
    finally:
        left = service.stop()
        if left:
            print(f"scripts/tempest: left behind (killed): {left}", file=sys.stderr)
        if not args.keep:
            service.remove()
    facts = {"tempest": TEMPEST_VERSION, "vmops": git_commit(args.at), "selection": selection,
             "concurrency": args.concurrency, "network": args.network,
             "microversions": [cloud.min_microversion, cloud.max_microversion],
             "dynamic_credentials": cloud.dynamic_credentials,
             "glance_upload": cloud.image_upload, "volumes": cloud.volume_catalog_type}
    (run_dir / "facts.json").write_text(json.dumps(facts, indent=1) + "\n")
    return conclude(run_dir, selected, recorded, facts, args.update_expected)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
