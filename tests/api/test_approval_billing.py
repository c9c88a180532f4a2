"""Approving a tenant provisions its billing, once: Stripe customer, subscription, workflow."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from activities.billing import workflow_id as billing_workflow_id
from api.app import create_app
from core.db import SessionFactory
from core.settings import Settings
from models.billing import Subscription
from tests.api.flows import decide, fill_wizard, onboarding_until, pending_approval, register, staff
from tests.api.flows import submit as submit_application
from tests.peers_stripe import LocalStripe
from workers.main import build_worker

pytest_plugins = ["tests.peers_stripe"]


@pytest.fixture
async def billed_api(
    settings: Settings,
    localstripe: LocalStripe,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    sessions: SessionFactory,
) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    """API and worker with billing through localstripe (local document store, outbox e-mail)."""
    billed = localstripe.settings(settings)
    async with build_worker(temporal_env.client, sessions, billed):
        app = create_app(billed, temporal_env.client, engine)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client, billed


async def _subscription(sessions: SessionFactory, tenant_id: uuid.UUID) -> Subscription:
    for _ in range(300):
        async with sessions() as session:
            row = await session.scalar(
                select(Subscription).where(Subscription.tenant_id == tenant_id)
            )
        if row is not None and row.stripe_subscription_id:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError("no subscription was provisioned")


async def test_approval_starts_billing_with_the_chosen_plan(
    billed_api: tuple[httpx.AsyncClient, Settings],
    sessions: SessionFactory,
    temporal_client: Client,
) -> None:
    api, settings = billed_api
    company = f"Billed Agency {uuid.uuid4().hex[:6]}"
    admin = await register(api, company)
    approver = await staff(sessions, settings)
    await fill_wizard(api, admin, company)
    yearly = {"plan_id": "professional", "interval": "year"}  # billed by the year
    chosen = await api.put("/api/v1/onboarding/steps/plan", json=yearly, headers=admin.headers)
    assert chosen.status_code == 200, chosen.text
    await submit_application(api, admin)
    item = await pending_approval(api, approver, admin.tenant_id)
    assert (await decide(api, approver, item["approval_id"], "approve")).status_code == 200
    await onboarding_until(api, admin, "approved")

    row = await _subscription(sessions, admin.tenant_id)
    assert (row.plan, row.interval) == ("professional", "year")
    assert row.stripe_customer_id
    handle = temporal_client.get_workflow_handle(billing_workflow_id(admin.tenant_id))
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    subscription = (await api.get("/api/v1/billing/subscription", headers=admin.headers)).json()
    assert subscription["plan"] == "professional"
