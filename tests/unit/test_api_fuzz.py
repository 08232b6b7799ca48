"""Fuzzing the API from its OpenAPI document (schemathesis), on the fake
hypervisor: generated requests, valid and not, to every operation.

Every answer must be documented and fit its schema, and none may be a 5xx.
Create-server is included: on the fake hypervisor no VM can start (a spawn
that gets past the checks fails on the missing image file and is recorded
as ERROR), so the fuzzer cannot make real guests. The number of examples is
bounded (VMOPS_FUZZ_EXAMPLES, default 25 per operation) to keep the suite fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.unit.test_api import TOKEN, Api, start_api
from vmops.api import openapi

EXAMPLES = int(os.environ.get("VMOPS_FUZZ_EXAMPLES", "25"))
# Glance's image update takes JSON patches under media types of its own.
for _media in ("application/openstack-images-v2.1-json-patch",
               "application/openstack-images-v2.0-json-patch"):
    schemathesis.serializer.alias(_media, "application/json")
schema = schemathesis.openapi.from_dict(openapi.document())


@pytest.fixture(scope="module")
def fuzz_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    service, servers = start_api(Path(tmp_path_factory.mktemp("fuzz")))
    service.add_instance("web1")
    yield service
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def not_a_server_error(ctx: Any, response: Any, case: Any) -> bool:
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code}"
    return True


@schema.parametrize()
@hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_fuzz(case: Any, fuzz_api: Api) -> None:
    if case.path == "/v2.1/servers/{id}/console-log" and case.query \
            and case.query.get("follow") == "1":
        case.query["follow"] = "0"  # a followed log never ends
    case.call_and_validate(
        base_url=f"http://127.0.0.1:{fuzz_api.port}", headers={"X-Auth-Token": TOKEN},
        checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                response_schema_conformance])
