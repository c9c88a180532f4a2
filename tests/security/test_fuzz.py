"""Fuzzing with schemathesis over every operation of the served OpenAPI document.

Cases are drawn (seeded) from the document itself, positive and negative, and sent to the API in
process, backed by the dev server, a worker and the database, as an anonymous caller, a tenant
admin and a super admin. Every answer must be no 5xx, a documented status, the declared content
type, headers and schema. ``--slow`` draws ten times as many cases.
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core.db import SessionFactory
from core.settings import Settings
from models.user import Role
from tests.factories import Member, member
from tests.security.conftest import Figures, Served

SEED = 20261201
CASES_PER_OPERATION = 3  # per generation mode; x10 with --slow
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Operations that end the caller's own session: the suite signs in again after them.
_ENDS_SESSION = {("POST", "/api/v1/auth/logout")}


def _draw(strategy: Any, count: int, salt: int) -> list[Any]:
    """``count`` cases from ``strategy``, the same ones on every run."""
    drawn: list[Any] = []

    @seed(SEED + salt)
    @hypothesis_settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(case: Any) -> None:
        drawn.append(case)

    # Unsatisfiable: nothing to make invalid (an operation without parameters or body).
    with contextlib.suppress(Unsatisfiable):
        collect()
    return drawn


async def _send(client: httpx.AsyncClient, case: Any, headers: dict[str, str]) -> httpx.Response:
    kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
    body: dict[str, Any] = {}
    if "json" in kwargs:
        body["json"] = kwargs["json"]
    elif isinstance(kwargs.get("data"), bytes | str):
        body["content"] = kwargs["data"]
    elif kwargs.get("data") is not None:
        body["data"] = kwargs["data"]
    if kwargs.get("files"):
        body["files"] = kwargs["files"]
    sent = {k: str(v) for k, v in (kwargs.get("headers") or {}).items()}
    if kwargs.get("cookies"):
        sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in kwargs["cookies"].items())
    return await client.request(
        kwargs["method"], kwargs["url"], headers=sent, params=kwargs.get("params"), **body
    )


async def _caller(role: str, sessions: SessionFactory, settings: Settings) -> Member | None:
    if role == "anonymous":
        return None
    if role == "super_admin":
        return await member(sessions, settings, Role.SUPER_ADMIN, mfa_enabled=True)
    return await member(sessions, settings, Role.TENANT_ADMIN, mfa_enabled=True)


@pytest.mark.parametrize("role", ["anonymous", "tenant_admin", "super_admin"])
async def test_every_operation_keeps_its_contract(
    role: str,
    served: Served,
    sessions: SessionFactory,
    settings: Settings,
    figures: Figures,
    request: pytest.FixtureRequest,
) -> None:
    slow = bool(request.config.getoption("--slow"))
    if settings.uses_sqlite and not slow:
        # PostgreSQL is the stricter peer (NUL bytes, integer ranges); SQLite joins with --slow.
        pytest.skip("fuzzing runs on SQLite with --slow")
    schema = schemathesis.openapi.from_dict(served.app.openapi())
    scale = 10 if slow else 1
    caller = await _caller(role, sessions, settings)
    operations = 0
    for index, result in enumerate(schema.get_all_operations()):
        # An operation the loader cannot read is itself a contract failure.
        assert isinstance(result, Ok), result.err()
        operation = result.ok()
        operations += 1
        cases = [
            *_draw(
                operation.as_strategy(GenerationMode.POSITIVE), CASES_PER_OPERATION * scale, index
            ),
            *_draw(
                operation.as_strategy(GenerationMode.NEGATIVE), CASES_PER_OPERATION * scale, index
            ),
        ]
        for case in cases:
            headers = caller.headers if caller is not None else {}
            response = await _send(served.client, case, headers)
            figures.count(response.status_code)
            try:
                case.validate_response(response, checks=CHECKS)
            except FailureGroup as group:
                names = ", ".join(sorted({type(f).__name__ for f in group.exceptions}))
                figures.failures.append(
                    f"{operation.method.upper()} {operation.path} -> {response.status_code}: "
                    f"{names}: {response.text[:200]}"
                )
            if (operation.method.upper(), operation.path) in _ENDS_SESSION and caller is not None:
                caller = await _caller(role, sessions, settings)
    assert operations >= 40, f"only {operations} operations in the document"
    distinct = sorted({failure.split(" {")[0] for failure in figures.failures})
    assert figures.failures == [], "\n".join(distinct + figures.failures[:5])
    assert figures.server_errors == 0
