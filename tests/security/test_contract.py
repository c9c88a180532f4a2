"""The served OpenAPI document declares the problem schema once and every error a route answers."""

from __future__ import annotations

from typing import Any

import httpx

from api.problems import MEDIA_TYPE
from tests.security.conftest import Figures, Served

PROBLEM_REF = "#/components/schemas/Problem"


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


async def test_every_error_is_a_declared_problem(served: Served, figures: Figures) -> None:
    response = await served.client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert schemas["Problem"]["required"] == ["type", "title", "status", "detail"]
    assert "errors" in schemas["Problem"]["properties"]
    operations = _operations(document)
    for (method, path), operation in operations.items():
        figures.count(200)
        for code, declared in operation["responses"].items():
            if int(code) < 400:
                continue
            content = declared.get("content", {})
            if path == "/healthz":
                continue  # its 503 carries the health report
            if content.get(MEDIA_TYPE, {}).get("schema", {}).get("$ref") != PROBLEM_REF:
                figures.failures.append(f"{method} {path} {code}: {content}")
        secured = any("HTTPBearer" in s for s in operation.get("security", []))
        if secured and "401" not in operation["responses"]:
            figures.failures.append(f"{method} {path}: bearer token but no 401")
    assert figures.failures == []

    def statuses(method: str, path: str) -> set[str]:
        return set(operations[(method, path)]["responses"])

    assert {"401", "403", "404", "409", "413", "422", "503", "504"} <= statuses(
        "POST", "/api/v1/approvals/{approval_id}/decision"
    )
    assert {"409", "422", "429", "413"} <= statuses("POST", "/api/v1/auth/register")
    assert {"401", "423", "429"} <= statuses("POST", "/api/v1/auth/login")
    assert {"401", "403", "422", "423", "429"} <= statuses("POST", "/api/v1/auth/mfa/step-up")
    assert {"404", "429"} <= statuses("GET", "/api/v1/auth/sso/{provider}/login")
    assert {"401", "403", "422"} <= statuses("GET", "/api/v1/audit")
    assert {"400"} <= statuses("POST", "/api/v1/billing/webhooks/stripe")
    retry = operations[("POST", "/api/v1/auth/login")]["responses"]["429"]["headers"]
    assert "Retry-After" in retry


async def test_wrong_method_names_the_allowed_ones(served: Served, figures: Figures) -> None:
    answers: list[httpx.Response] = [
        await served.client.delete("/api/v1/auth/login"),
        await served.client.put("/api/v1/audit"),
    ]
    for answer in answers:
        figures.count(answer.status_code)
        assert answer.status_code == 405
        assert answer.headers["content-type"] == MEDIA_TYPE
        assert answer.headers["allow"]
