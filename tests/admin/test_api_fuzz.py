"""The OpenAPI spec fuzzed with schemathesis against the running daemon: whatever it sends,
the answer is never a server error. Bounded: a few examples per operation, as admin (so
every route is reached past authentication) and once without a token."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from tests.fixtures.daemon import auth

# schemathesis' own strategies use `random` internally; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")


@pytest.fixture(scope="module")
def api_schema(plant: Any) -> Any:
    # a record so that id-1 paths reach the handlers' deeper branches
    plant.http.post(
        "/registers/hidden_danger",
        headers=auth(plant.tokens["operator"]),
        json={"title": "fuzz", "grade": "general", "found_on": "2026-01-01", "found_by": "x"},
    )
    return schemathesis.openapi.from_url(plant.url + "/openapi.json")


def _operations(schema: Any) -> list[Any]:
    ops = []
    for result in schema.get_all_operations():
        ops.append(result.ok())
    return ops


def _fuzz(schema: Any, url: str, headers: dict[str, str], examples: int) -> tuple[int, list[str]]:
    """Every operation, ``examples`` generated cases each; returns (cases sent, failures)."""
    failures: list[str] = []
    sent = [0]
    for op in _operations(schema):
        if op.method.upper() == "DELETE" and op.path == "/users/{name}":
            continue  # would revoke the fixture's own tokens; covered by the RBAC tests

        @settings(
            max_examples=examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
        )
        @given(case=op.as_strategy())
        def run(case: Any) -> None:
            sent[0] += 1
            response = case.call(base_url=url, headers=headers, timeout=10)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} {case.query} -> {response.status_code}: "
                    f"{response.text[:200]}"
                )

        run()
    return sent[0], failures


def test_no_server_errors_as_admin(api_schema: Any, plant: Any) -> None:
    sent, failures = _fuzz(api_schema, plant.url, auth(plant.tokens["admin"]), examples=8)
    assert sent >= 8 * 20
    assert not failures, "\n".join(failures)


def test_no_server_errors_without_a_token(api_schema: Any, plant: Any) -> None:
    sent, failures = _fuzz(api_schema, plant.url, {}, examples=2)
    assert sent > 20
    assert not failures, "\n".join(failures)
