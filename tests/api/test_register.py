"""Registration: tenant + admin in one transaction, then the tenant's onboarding workflow."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowExecutionStatus

from api.app import create_app
from core.db import SessionFactory
from core.settings import Settings
from models.audit import AuditEntry
from models.tenant import Tenant, TenantStatus
from models.user import Membership, Role, User

PASSWORD = "orbit-velvet-canyon-42"


def _body(**changes: Any) -> dict[str, Any]:
    return {
        "email": f"owner-{uuid.uuid4().hex[:8]}@example.com",
        "password": PASSWORD,
        "full_name": "Ada Owner",
        "company_name": "Northwind Digital",
    } | changes


async def _counts(sessions: SessionFactory) -> tuple[int, int]:
    async with sessions() as session:
        tenants = await session.scalar(select(func.count()).select_from(Tenant))
        users = await session.scalar(select(func.count()).select_from(User))
    return tenants or 0, users or 0


async def test_register_creates_tenant_admin_and_onboarding(
    api: httpx.AsyncClient, sessions: SessionFactory, temporal_client: Client
) -> None:
    body = _body(email=f"Owner.{uuid.uuid4().hex[:6]}@Example.com")
    response = await api.post("/api/v1/auth/register", json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    tenant_id = uuid.UUID(created["tenant_id"])
    assert created["onboarding_workflow_id"] == f"onboarding:{tenant_id}"

    async with sessions() as session:
        tenant = await session.get(Tenant, tenant_id)
        user = await session.get(User, uuid.UUID(created["user_id"]))
        membership = await session.scalar(
            select(Membership).where(Membership.tenant_id == tenant_id)
        )
        actions = list(
            await session.scalars(
                select(AuditEntry.action).where(AuditEntry.tenant_id == tenant_id)
            )
        )
    assert tenant is not None
    assert tenant.status == TenantStatus.ONBOARDING
    assert tenant.name == "Northwind Digital"
    assert tenant.slug.startswith("northwind-digital")
    assert user is not None
    assert user.email == body["email"].lower()
    assert user.password_hash is not None
    assert PASSWORD not in user.password_hash
    assert membership is not None
    assert membership.role == Role.TENANT_ADMIN
    assert actions == ["user.registered"]

    handle = temporal_client.get_workflow_handle(created["onboarding_workflow_id"])
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING

    login = await api.post(
        "/api/v1/auth/login", json={"email": body["email"], "password": PASSWORD}
    )
    assert login.status_code == 200


async def test_taken_email_is_409_and_writes_nothing(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    body = _body()
    assert (await api.post("/api/v1/auth/register", json=body)).status_code == 201
    before = await _counts(sessions)
    again = await api.post("/api/v1/auth/register", json=_body(email=body["email"].upper()))
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    assert await _counts(sessions) == before


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"password": "short"}, "password"),
        ({"password": "Password2024!"}, "password"),
        ({"password": "northwind-digital-rocks"}, "password"),
        ({"email": "not-an-email"}, "email"),
        ({"company_name": ""}, "company_name"),
        ({"plan": "free"}, "plan"),
    ],
)
async def test_bad_input_is_422_and_writes_nothing(
    api: httpx.AsyncClient, sessions: SessionFactory, changes: dict[str, str], field: str
) -> None:
    before = await _counts(sessions)
    response = await api.post("/api/v1/auth/register", json=_body(**changes))
    assert response.status_code == 422
    assert field in {error["loc"][-1] for error in response.json()["errors"]}
    assert await _counts(sessions) == before


async def test_slugs_stay_unique(api: httpx.AsyncClient, sessions: SessionFactory) -> None:
    name = f"Acme {uuid.uuid4().hex[:6]}"
    for _ in range(2):
        assert (
            await api.post("/api/v1/auth/register", json=_body(company_name=name))
        ).status_code == 201
    async with sessions() as session:
        slugs = set(await session.scalars(select(Tenant.slug).where(Tenant.name == name)))
    assert len(slugs) == 2


async def test_registration_survives_temporal_being_down(
    api: httpx.AsyncClient,
    settings: Settings,
    engine: AsyncEngine,
    sessions: SessionFactory,
    temporal_client: Client,
) -> None:
    """The account is kept; the wizard's first read starts the missing workflow."""
    unreachable = await Client.connect(
        "127.0.0.1:1", lazy=True, data_converter=temporal_client.data_converter
    )
    app = create_app(settings, unreachable, engine)
    transport = httpx.ASGITransport(app=app)
    body = _body()
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as offline:
        created = await offline.post("/api/v1/auth/register", json=body)
    assert created.status_code == 201, created.text
    workflow_id = created.json()["onboarding_workflow_id"]

    login = await api.post(
        "/api/v1/auth/login", json={"email": body["email"], "password": PASSWORD}
    )
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    state = await api.get("/api/v1/onboarding", headers=headers)
    assert state.status_code == 200, state.text
    assert state.json()["workflow_id"] == workflow_id
    described = await temporal_client.get_workflow_handle(workflow_id).describe()
    assert described.status == WorkflowExecutionStatus.RUNNING
