"""Property-based API tests: requests generated from the served OpenAPI document
(schemathesis) against a live server in development mode; no request may get a 5xx, and
every response must match the status codes, media types and schemas the document
declares.

The operations are looped over inside one test per generation mode, each with its own
Hypothesis run, because schemathesis' lazy pytest loader does not work with pytest 9.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from servers import Service, crs_history

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 30


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp("properties")
    server = Service(store=str(workdir / "facts.sqlite3"), workdir=workdir, insecure_dev=True)
    server.start()
    with server.client() as client:  # stored facts, so a generated id "p1" finds a patient
        assert client.post("/patients/p1/facts", json=crs_history("p1", days=3)).status_code == 200
    yield server
    server.stop()


def _check_operation(operation: Any, mode: GenerationMode, base_url: str) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def check(case: Any) -> None:
        case.call_and_validate(base_url=base_url, checks=CHECKS)

    check()


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_server_error_or_an_undeclared_answer(
    live: Service, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_url(f"{live.base_url}/openapi.json")
    failures: list[str] = []
    checked = 0
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the OpenAPI document is invalid: {result.err()}"
        operation = result.ok()
        checked += 1
        try:
            _check_operation(operation, mode, live.base_url)
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to negate (no parameter, no body)
        except Exception as exc:  # report every operation, not only the first that fails
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert checked >= 10
    assert not failures, "\n\n".join(failures)
