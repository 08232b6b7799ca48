"""The Tempest harness's own logic (tools/tempest): no Tempest, no service.

What a run means (a class whose set-up failed fails all its tests), what
counts as a regression, and that the expected-pass list only grows.
"""

from __future__ import annotations

import configparser
from pathlib import Path

from tools.tempest import conf, report

CLS = "tempest.api.compute.servers.test_servers.ServersTestJSON"
A = f"{CLS}.test_a[id-1,smoke]"
B = f"{CLS}.test_b[id-2]"
OTHER = "tempest.api.compute.flavors.test_flavors.FlavorsV2TestJSON.test_list[id-3]"


def test_class_of_an_id_ignores_the_bracketed_attributes() -> None:
    assert report.test_class(A) == CLS
    assert report.test_class("a.b.C.test_x[id-1.2]") == "a.b.C"


def test_a_failed_class_setup_fails_each_of_its_unreported_tests() -> None:
    recorded = [{"id": f"setUpClass ({CLS})", "status": "fail",
                 "reason": "Traceback ...\nKeyError: 'adminPass'"},
                {"id": OTHER, "status": "success", "reason": ""}]
    run = report.combine([A, B, OTHER], recorded)
    assert run.tests[A].status == run.tests[B].status == report.FAILED
    assert "adminPass" in run.tests[A].reason
    assert run.totals() == {report.PASSED: 1, report.FAILED: 2}
    (grouped,) = report.failure_lines(run)
    assert grouped == ("servers.test_servers.ServersTestJSON (setUpClass, 2 tests): "
                       "KeyError: 'adminPass'")


def test_a_skipped_class_setup_skips_its_tests_with_the_reason() -> None:
    recorded = [{"id": f"setUpClass ({CLS})", "status": "skip", "reason": "microversion"}]
    run = report.combine([A], recorded)
    assert (run.tests[A].status, run.tests[A].reason) == (report.SKIPPED, "microversion")


def test_excluded_tests_count_as_skipped_with_the_lists_reason(tmp_path: Path) -> None:
    path = tmp_path / "excluded.txt"
    path.write_text("# header\n\\.test_b\\b  # needs Neutron networks\n")
    excluded = report.excluded_ids([A, B], report.read_exclusions(path))
    assert excluded == {B: "needs Neutron networks"}
    run = report.combine([A, B], [{"id": A, "status": "success"}], excluded)
    assert (run.tests[B].status, run.tests[B].reason) == (
        report.SKIPPED, "excluded: needs Neutron networks")


def test_a_test_nobody_reported_is_a_failure_too() -> None:
    run = report.combine([A], [])
    assert run.tests[A].status == report.FAILED
    assert "not reported" in run.tests[A].reason


def test_a_failed_class_teardown_does_not_change_its_tests() -> None:
    recorded = [{"id": A, "status": "success"},
                {"id": f"tearDownClass ({CLS})", "status": "fail", "reason": "boom"}]
    run = report.combine([A], recorded)
    assert run.tests[A].status == report.PASSED
    assert run.fixture_failures == {f"tearDownClass ({CLS})": "boom"}


def test_per_class_counts_and_table() -> None:
    recorded = [{"id": A, "status": "success"}, {"id": B, "status": "skip", "reason": "no"},
                {"id": OTHER, "status": "fail", "reason": "x"}]
    run = report.combine([A, B, OTHER], recorded)
    assert run.per_class()[CLS] == {report.PASSED: 1, report.SKIPPED: 1}
    table = report.class_table(run).splitlines()
    assert table[1].split() == ["flavors.test_flavors.FlavorsV2TestJSON", "0", "1", "0"]
    assert table[2].split() == ["servers.test_servers.ServersTestJSON", "1", "0", "1"]


def test_an_expected_test_that_did_not_pass_is_a_regression_unless_unselected() -> None:
    run = report.combine([A, B], [{"id": A, "status": "skip"}, {"id": B, "status": "success"}])
    verdict = report.judge(run, [A, OTHER])
    assert list(verdict.regressions) == [A]  # OTHER was not selected: not judged
    assert verdict.new_passes == [B]


def test_the_expected_list_keeps_its_header_and_only_grows(tmp_path: Path) -> None:
    path = tmp_path / "expected-pass.txt"
    path.write_text(f"# header\n# more\n{B}\n")
    assert report.read_list(path) == [B]
    report.write_list(path, {A, B})
    assert path.read_text() == f"# header\n# more\n{A}\n{B}\n"


def test_first_line_prefers_tempests_details() -> None:
    reason = ("Traceback (most recent call last):\n  File x\n"
              "Details: {'code': 404, 'message': 'nope'}\n"
              "tempest.lib.exceptions.NotFound: Object not found")
    assert report.first_line(reason) == ("tempest.lib.exceptions.NotFound: Object not found | "
                                         "Details: {'code': 404, 'message': 'nope'}")


def test_causes_group_failures_that_differ_only_in_ids_and_names() -> None:
    why = "Details: {'code': 404, 'message': 'no server %s (tempest-Server-%d) at 127.0.0.1:80'}"
    recorded = [{"id": A, "status": "fail",
                 "reason": why % ("0ff011b7-b6d1-44f8-8196-a07186ae26a2", 123456)},
                {"id": B, "status": "fail",
                 "reason": why % ("ab5de4a1-b02c-4d3b-bb47-9d78bce774cb", 22)}]
    ((text, count),) = report.causes(report.combine([A, B], recorded))
    assert count == 2
    assert text == "Details: {'code': 404, 'message': 'no server <id> (<name>) at <address>'}"


def test_tempest_conf_states_the_cloud(tmp_path: Path) -> None:
    cloud = conf.Cloud(
        base_url="http://127.0.0.1:9", admin_username="admin", admin_password="pw",
        admin_project="admin", admin_domain="Default", dynamic_credentials=True,
        accounts_file=None, image_ref="i1", image_ref_alt="i2", flavor_ref="f1",
        flavor_ref_alt="f2", min_microversion="2.1", max_microversion="2.60",
        image_upload=False, volume_catalog_type="", log_dir=tmp_path)
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read_string(conf.render(cloud))
    assert parsed["identity"]["uri_v3"] == "http://127.0.0.1:9/identity/v3"
    assert parsed["compute"]["max_microversion"] == "2.60"
    assert parsed["compute"]["fixed_network_name"] == ""
    assert parsed["auth"]["use_dynamic_credentials"] == "true"
    assert parsed["service_available"]["glance"] == "false"
    assert parsed["service_available"]["cinder"] == "false"
    assert parsed["service_available"]["neutron"] == "true"
    assert parsed["compute-feature-enabled"]["pause"] == "true"
    assert parsed["compute-feature-enabled"]["shelve"] == "false"
    assert parsed["validation"]["run_validation"] == "false"
