"""Health: 200 with every check ok, 503 naming the failing dependency."""

from __future__ import annotations

import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client

from api.app import create_app
from core.db import create_engine
from core.settings import Settings


async def test_healthy(api: httpx.AsyncClient) -> None:
    response = await api.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "temporal": "ok"}}


async def _health(settings: Settings, client: Client, database_url: str) -> httpx.Response:
    engine = create_engine(database_url)
    app = create_app(settings, client, engine)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await http.get("/healthz")
    finally:
        await engine.dispose()


async def test_database_down_is_named(settings: Settings, temporal_client: Client) -> None:
    response = await _health(
        settings, temporal_client, "postgresql+asyncpg://nobody@127.0.0.1:1/none"
    )
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "failing", "temporal": "ok"}


async def test_temporal_down_is_named(settings: Settings) -> None:
    unreachable = await Client.connect("127.0.0.1:1", lazy=True)
    response = await _health(settings, unreachable, settings.database_url)
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "temporal": "failing"}


async def test_http_metrics_name_the_route_template_and_the_status_class(
    api: httpx.AsyncClient,
) -> None:
    before = _http_samples((await api.get("/metrics")).text)
    await api.get("/healthz")
    unknown = uuid.uuid4()
    await api.get(f"/api/v1/tasks/{unknown}")  # no token: 401, counted by its template
    await api.get(f"/no/such/{unknown}")
    after = _http_samples((await api.get("/metrics")).text)
    counted = {key: after[key] - before.get(key, 0) for key in after}
    assert counted[("http_requests_total", "GET", "/healthz", "2xx")] == 1
    assert counted[("http_requests_total", "GET", "/api/v1/tasks/{task_id}", "4xx")] == 1
    assert counted[("http_requests_total", "GET", "none", "4xx")] == 1
    assert counted[("http_request_duration_seconds_count", "GET", "/healthz", "")] == 1
    assert not any(str(unknown) in key[2] for key in after), "raw paths are never labels"


def _http_samples(text: str) -> dict[tuple[str, str, str, str], float]:
    return {
        (s.name, s.labels["method"], s.labels["handler"], s.labels.get("status", "")): s.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("http_")
        for s in family.samples
        if s.name in ("http_requests_total", "http_request_duration_seconds_count")
    }


async def test_openapi_docs_are_served(api: httpx.AsyncClient) -> None:
    assert (await api.get("/docs")).status_code == 200
    assert "/healthz" in (await api.get("/openapi.json")).json()["paths"]
