"""The remote codec endpoint the Temporal UI uses to show decrypted payloads."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from core.db import SessionFactory
from core.settings import Settings
from models.user import Role
from tests.factories import member

PLAIN = {"metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
         "data": base64.b64encode(b'"jane@example.com"').decode()}  # fmt: skip


async def _round_trip(api: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    encoded = await api.post("/codec/encode", json={"payloads": [PLAIN]}, headers=headers)
    assert encoded.status_code == 200, encoded.text
    [sealed] = encoded.json()["payloads"]
    assert base64.b64decode(sealed["metadata"]["encoding"]) == b"binary/encrypted"
    return await api.post("/codec/decode", json={"payloads": [sealed]}, headers=headers)


async def test_super_admin_decodes(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    staff = await member(sessions, settings, Role.SUPER_ADMIN)
    decoded = await _round_trip(api, staff.headers)
    assert decoded.json() == {"payloads": [PLAIN]}


async def test_other_callers_are_refused(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings, Role.TENANT_ADMIN)
    body = {"payloads": [PLAIN]}
    assert (await api.post("/codec/decode", json=body, headers=admin.headers)).status_code == 403
    assert (await api.post("/codec/decode", json=body)).status_code == 401


@pytest.fixture
async def open_codec_api(
    settings: Settings, temporal_env: WorkflowEnvironment, engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    local = settings.model_copy(
        update={"codec_server_open": True, "codec_server_origins": ["http://127.0.0.1:8233"]}
    )
    app = create_app(local, temporal_env.client, engine)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        yield client


async def test_dev_mode_is_open_to_the_local_ui(open_codec_api: httpx.AsyncClient) -> None:
    decoded = await _round_trip(open_codec_api, {"Origin": "http://127.0.0.1:8233"})
    assert decoded.json() == {"payloads": [PLAIN]}
    assert decoded.headers["access-control-allow-origin"] == "http://127.0.0.1:8233"
    bad = await open_codec_api.post("/codec/decode", content=b"{not json")
    assert bad.status_code == 422
