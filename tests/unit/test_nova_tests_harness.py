"""scripts/nova-tests' classification and gate (tools/nova_tests), without
Nova: a test that passed only because Nova's suite swallowed a
NotImplementedError is never a real pass, and the gate fails when an
expected test did not pass for real or did not run."""

from __future__ import annotations

import pytest

from tools.nova_tests import __main__ as harness


def test_a_swallowed_not_implemented_error_is_not_a_pass() -> None:
    outcomes = {"test_spawn": ("ok", ""), "test_block_stats": ("ok", ""),
                "test_live_migration": ("failed", "NotImplementedError"),
                "test_x": ("skipped", "no qemu-img")}
    results = harness.classify(outcomes, {"test_block_stats": ["block_stats"]})
    assert {n: r["outcome"] for n, r in results.items()} == {
        "test_spawn": "passed", "test_block_stats": "swallowed",
        "test_live_migration": "failed", "test_x": "skipped"}
    assert results["test_block_stats"]["detail"] == "NotImplementedError from block_stats"


def test_the_gate_fails_on_a_regression_and_reports_new_passes(
        capsys: pytest.CaptureFixture[str]) -> None:
    results = harness.classify({"test_spawn": ("ok", ""), "test_pause": ("ok", "")},
                               {"test_pause": ["pause"]})
    assert harness.report(results, {"test_spawn"}, selected_all=True) == 0
    assert harness.report(results, {"test_spawn", "test_pause"}, selected_all=True) == 1
    assert "REGRESSION: test_pause" in capsys.readouterr().out
    new = harness.classify({"test_spawn": ("ok", ""), "test_reboot": ("ok", "")}, {})
    assert harness.report(new, {"test_spawn"}, selected_all=True) == 0
    assert "NEW PASS: test_reboot" in capsys.readouterr().out


def test_an_expected_test_that_did_not_run_fails_a_full_run_only() -> None:
    results = harness.classify({"test_spawn": ("ok", "")}, {})
    assert harness.report(results, {"test_spawn", "test_reboot"}, selected_all=True) == 1
    assert harness.report(results, {"test_spawn", "test_reboot"}, selected_all=False) == 0


def test_the_committed_list_holds_test_names_only() -> None:
    expected = harness.read_expected()
    assert expected and all(name.startswith("test_") for name in expected)
