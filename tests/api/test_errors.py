"""Every error is problem+json; request ids travel; bodies are capped; no stack trace leaks."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from api import problems
from api.middleware import BodyLimitMiddleware, RequestIdMiddleware, UnhandledErrorMiddleware
from core.errors import Conflict

PROBLEM = "application/problem+json"


def _app() -> FastAPI:
    app = FastAPI()
    problems.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=64)
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    @app.post("/echo")
    async def echo(body: dict[str, int]) -> dict[str, int]:
        return body

    @app.get("/conflict")
    async def conflict() -> None:
        raise Conflict("already decided", current_status="approved")

    return app


async def _client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://t")


async def test_unknown_route_is_a_problem() -> None:
    async with await _client() as client:
        response = await client.get("/nowhere")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"].endswith("not-found")


async def test_validation_errors_list_the_fields() -> None:
    async with await _client() as client:
        response = await client.post("/echo", json={"a": "not a number"})
    body = response.json()
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert body["errors"][0]["loc"] == ["body", "a"]


async def test_domain_problem_carries_its_extras() -> None:
    async with await _client() as client:
        response = await client.get("/conflict")
    assert response.status_code == 409
    assert response.json() == {
        "type": "urn:bizosaas:problem:conflict",
        "title": "Conflict",
        "status": 409,
        "detail": "already decided",
        "current_status": "approved",
    }


async def test_unhandled_error_hides_internals_and_quotes_the_request_id(caplog) -> None:
    async with await _client() as client:
        response = await client.get("/boom", headers={"X-Request-ID": "req-123"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-123"
    assert "secret internals" not in response.text
    assert "req-123" in response.json()["detail"]
    assert any(record.exc_info for record in caplog.records)


async def test_request_id_is_generated_when_absent_or_unsafe() -> None:
    async with await _client() as client:
        response = await client.get("/nowhere", headers={"X-Request-ID": "bad id\twith tab"})
    assert response.headers["x-request-id"] != "bad id\twith tab"
    assert len(response.headers["x-request-id"]) == 32


async def test_oversized_body_is_refused_by_header() -> None:
    async with await _client() as client:
        response = await client.post("/echo", content=b"{" + b" " * 100 + b"}")
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM


async def test_oversized_streamed_body_is_refused() -> None:
    async def chunks():
        for _ in range(10):
            yield b" " * 20

    async with await _client() as client:
        response = await client.post("/echo", content=chunks())
    assert response.status_code == 413
    assert response.json()["status"] == 413
