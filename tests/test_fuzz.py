"""Schemathesis against roost's own /openapi.json, with and without the API key: no request it
generates gets a 5xx, every status is one the document declares, and every error body is an
OpenAI error object (the document says so, and conformance checks the body against it).

tests/fuzz_hooks.py makes most generated bodies name the served model, so the fuzzer reaches
generation rather than stopping at a 404. The default run tries a few cases per operation;
docs/benchmarks.md has the command of the long run (hundreds per operation)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests import fuzz_hooks  # noqa: F401  (registers the hooks)
from tests.conftest import Server, start_server

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[Server]:
    yield from start_server("--parallel", "2", "--ctx-size", "2048", api_key=KEY)


@pytest.fixture(scope="module")
def api_schema(fuzz_server: Server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_server.base_url}/openapi.json")


FEW = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases every run: a failure reproduces
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a case is printed as is
)


def _fuzz(api_schema: schemathesis.BaseSchema, headers: dict[str, str]) -> dict[str, Counter]:
    """Each operation's generated cases, sent and checked; the statuses each operation got."""
    statuses: dict[str, Counter[int]] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()
        statuses[operation.label] = Counter()

        @FEW
        @given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=120)
            statuses[case.operation.label][response.status_code] += 1
            if not headers and case.path != "/health":
                assert response.status_code == 401
                assert response.json()["error"]["code"] == "invalid_api_key"

        run()
    return statuses


def test_with_the_key_nothing_is_a_server_error(api_schema: schemathesis.BaseSchema) -> None:
    statuses = _fuzz(api_schema, AUTH)
    assert len(statuses) >= 11  # every operation, none skipped
    for label in ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings"):
        assert statuses[label][200] > 0, (label, statuses[label])  # it reached generation


def test_without_the_key_every_v1_operation_is_401(api_schema: schemathesis.BaseSchema) -> None:
    assert len(_fuzz(api_schema, {})) >= 11
