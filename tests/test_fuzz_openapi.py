"""Schema fuzzing: schemathesis generates requests from the real server's ``/openapi.json``
(valid ones and, in its negative phase, invalid ones) and checks every answer: never a 5xx,
a status the document lists, the documented content type and body schema.

Bounded for CI: ``INNERLOOP_FUZZ_CASES`` examples per operation (default 60, a few hundred
requests in all). The long run (README, "Reliability and limits") uses the schemathesis CLI
against a running server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from server_harness import ServerProcess, make_checkpoints

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CASES_PER_OPERATION = int(os.environ.get("INNERLOOP_FUZZ_CASES", "60"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SEEN: dict[str, int] = {"requests": 0, "5xx": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = make_checkpoints(tmp_path_factory.mktemp("checkpoints"))
    process = ServerProcess(folder, tmp_path_factory.mktemp("logs") / "server.log")
    try:
        yield process.wait_healthy()
    finally:
        process.stop()


@pytest.fixture(scope="module")
def operations(server: ServerProcess) -> list[Any]:
    loaded = schemathesis.openapi.from_url(server.url + "/openapi.json")
    return [result.ok() for result in loaded.get_all_operations()]


def _fuzz(operation: Any, mode: Any) -> None:
    @hypothesis.settings(
        max_examples=CASES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(timeout=60)
        SEEN["requests"] += 1
        SEEN["5xx"] += response.status_code >= 500
        case.validate_response(response, checks=CHECKS)

    run()


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzzed_requests_get_documented_non_5xx_answers(operations: list[Any], mode: str) -> None:
    from schemathesis.generation.modes import GenerationMode

    paths = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {"POST /v1/predict", "GET /v1/models", "GET /health", "GET /metrics"} <= paths
    for operation in operations:
        if mode == "negative" and operation.method.upper() == "GET":
            continue  # no parameters: nothing invalid to generate
        _fuzz(operation, GenerationMode(mode))


def test_fuzzing_reached_the_server_and_left_no_traceback(server: ServerProcess) -> None:
    """Runs last: the fuzzer really sent requests, none got a 5xx, the log has no traceback."""
    assert SEEN["requests"] >= CASES_PER_OPERATION, SEEN
    assert SEEN["5xx"] == 0, SEEN
    assert "Traceback" not in server.log_text()
