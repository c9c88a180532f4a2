"""Health: 200 with every check ok, 503 naming the failing dependency."""

from __future__ import annotations

import httpx
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


async def test_metrics_are_exposed(api: httpx.AsyncClient) -> None:
    await api.get("/healthz")
    response = await api.get("/metrics")
    assert response.status_code == 200
    assert "http_requests_total" in response.text


async def test_openapi_docs_are_served(api: httpx.AsyncClient) -> None:
    assert (await api.get("/docs")).status_code == 200
    assert "/healthz" in (await api.get("/openapi.json")).json()["paths"]
