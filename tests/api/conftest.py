"""Fixtures for the onboarding and approval flows: a real S3 (moto) and SMTP peer behind the API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from core.db import SessionFactory
from core.settings import Settings
from workers.main import build_worker


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on loopback (it does not check signatures, expiry or sizes)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_settings(smtp_settings: Settings, s3_endpoint: str) -> Settings:
    """The test settings with a fresh S3 bucket and e-mail delivered to the SMTP sink."""
    bucket = f"docs-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket=bucket)
    return smtp_settings.model_copy(
        update={
            "s3_bucket": bucket,
            "s3_endpoint_url": s3_endpoint,
            "s3_access_key_id": "test",
            "s3_secret_access_key": SecretStr("test"),
        }
    )


@pytest.fixture
async def flow_api(
    s3_settings: Settings,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    sessions: SessionFactory,
) -> AsyncIterator[httpx.AsyncClient]:
    """The API and a worker on the dev server, both with S3 and SMTP configured."""
    async with build_worker(temporal_env.client, sessions, s3_settings):
        app = create_app(s3_settings, temporal_env.client, engine)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
