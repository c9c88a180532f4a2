"""The billing reconciliation on the time-skipping server: subscriptions changed in localstripe
without a webhook (drift), reconciled through the tenants' billing workflows.

Reconciliation reads every subscription of the database, so each test has a database of its
own (on the session's backend): other tests' tenants are not there.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from temporalio.client import Client, ScheduleActionStartWorkflow, ScheduleIntervalSpec
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.billing_reconciliation import SCHEDULE_ID, ensure_reconciliation_schedule
from connectors.billing.stripe_gateway import gateway_from_settings
from core import migrate
from core.db import SessionFactory, create_engine, session_factory
from core.plans import plan_of
from core.settings import Settings
from models.audit import AuditEntry
from models.billing import BillingStatus, BillingView
from models.billing_reconciliation import (
    DriftKind,
    ReconciliationInput,
    ReconciliationPolicy,
    ReconciliationReport,
)
from models.onboarding import PlanId
from models.tenant import Tenant, TenantStatus
from tests.conftest import _create_postgres_database, _drop_postgres_database
from tests.factories import member
from tests.peers.stripe_front import Fault, StripeFront
from tests.peers_stripe import LocalStripe, card_holder
from tests.workflows.test_billing import (
    Billing,
    _projection,
    _provision,
    _status,
    billing_worker,
)
from workflows.billing import BillingWorkflow
from workflows.billing_reconciliation import BillingReconciliationWorkflow

pytest_plugins = ["tests.peers_stripe", "tests.peers.stripe_front"]

# PostgreSQL by default (SQLite when it does not answer), both with --slow.
pytestmark = pytest.mark.one_database


@asynccontextmanager
async def own_database(backend_url: str, folder: Path) -> AsyncIterator[tuple[str, SessionFactory]]:
    """A fresh migrated database on the backend of ``backend_url``: (its URL, sessions)."""
    sqlite = backend_url.startswith("sqlite")
    url = (
        f"sqlite+aiosqlite:///{folder / 'reconciliation.db'}"
        if sqlite
        else await _create_postgres_database()
    )
    await migrate.upgrade(url)
    engine = create_engine(url)
    try:
        yield url, session_factory(engine)
    finally:
        await engine.dispose()
        if not sqlite:
            await _drop_postgres_database(url)


async def reconcile(
    client: Client, settings: Settings, run: str, **policy: Any
) -> ReconciliationReport:
    """One reconciliation run, as the Schedule starts it (repairs settle for 5 s by default)."""
    return await client.execute_workflow(
        BillingReconciliationWorkflow.run,
        ReconciliationInput(
            policy=ReconciliationPolicy.model_validate({"settle": timedelta(seconds=5)} | policy)
        ),
        id=f"billing-reconciliation-{run}",
        task_queue=settings.temporal_task_queue,
    )


@pytest.fixture
async def own_db(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, SessionFactory]]:
    async with own_database(database_url, tmp_path) as found:
        yield found


@pytest.fixture
def own_sessions(own_db: tuple[str, SessionFactory]) -> SessionFactory:
    return own_db[1]


@pytest.fixture
def reconciliation_settings(
    settings: Settings, stripe_front: StripeFront, own_db: tuple[str, SessionFactory]
) -> Settings:
    """Stripe through the front (localstripe behind it; faults in front); the test's database."""
    return stripe_front.settings(settings).model_copy(
        update={"billing_trial_days": 0, "database_url": own_db[0]}
    )


@pytest.fixture
async def ts_worker(
    time_skipping_env: WorkflowEnvironment,
    own_sessions: SessionFactory,
    reconciliation_settings: Settings,
) -> AsyncIterator[Worker]:
    client = time_skipping_env.client
    async with billing_worker(client, own_sessions, reconciliation_settings) as worker:
        yield worker


@dataclass(frozen=True)
class Subscriber:
    """A provisioned tenant: its id, Stripe customer and subscription, billing workflow."""

    tenant_id: uuid.UUID
    customer: str
    subscription: str
    handle: Billing

    async def view(self) -> BillingView:
        return await self.handle.query(BillingWorkflow.view)


async def _active_tenant(
    client: Client, sessions: SessionFactory, settings: Settings, localstripe: LocalStripe
) -> Subscriber:
    """A tenant with a card, subscribed to the starter plan and active."""
    admin = await member(sessions, settings)
    async with localstripe.sdk() as sdk:
        customer = await card_holder(sdk, admin.tenant_id, admin.email)
    handle = await _provision(client, settings, admin.tenant_id)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    row = await _projection(sessions, admin.tenant_id)
    assert row is not None
    assert row.stripe_subscription_id is not None
    return Subscriber(admin.tenant_id, customer, row.stripe_subscription_id, handle)


async def _audit(sessions: SessionFactory, tenant_id: uuid.UUID) -> list[str]:
    async with sessions() as session:
        rows = await session.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.tenant_id == tenant_id)
            .order_by(AuditEntry.seq)
        )
        return list(rows)


async def _tenant(sessions: SessionFactory, tenant_id: uuid.UUID) -> Tenant:
    async with sessions() as session:
        found = await session.get(Tenant, tenant_id)
    assert found is not None
    return found


async def _history_length(handle: Billing) -> int:
    return len((await handle.fetch_history()).events)


@pytest.mark.usefixtures("ts_worker")
async def test_drift_made_in_stripe_is_repaired_through_the_billing_workflows(
    time_skipping_env: WorkflowEnvironment,
    own_sessions: SessionFactory,
    reconciliation_settings: Settings,
    localstripe: LocalStripe,
) -> None:
    client, settings, sessions = time_skipping_env.client, reconciliation_settings, own_sessions
    cancelled, changed, renewal, untouched = [
        await _active_tenant(client, sessions, settings, localstripe) for _ in range(4)
    ]
    quiet_actions = await _audit(sessions, untouched.tenant_id)
    professional = plan_of(settings.billing_plans, PlanId.PROFESSIONAL)
    opener = gateway_from_settings(settings)
    assert opener is not None
    async with opener() as gateway:
        await gateway.ensure_plan(professional)
    # Changed in Stripe directly (the dashboard, say); no webhook tells billing.
    async with localstripe.sdk() as sdk:
        await sdk.v1.subscriptions.cancel_async(cancelled.subscription)
        item = (await sdk.v1.subscriptions.retrieve_async(changed.subscription))["items"].data[0]
        await sdk.v1.subscriptions.update_async(
            changed.subscription,
            params={"items": [{"id": item.id, "plan": professional.stripe_plan_id}]},
        )
        await sdk.v1.subscriptions.update_async(
            renewal.subscription, params={"cancel_at_period_end": True}
        )

    report = await reconcile(client, settings, "drift")

    assert report == ReconciliationReport(
        checked=4,
        drifted=3,
        drift={DriftKind.STATUS: 1, DriftKind.PLAN: 1, DriftKind.CANCEL_AT_PERIOD_END: 1},
        repaired=3,
    )
    # The billing workflows decided, and wrote the projection and the tenants.
    view = await cancelled.view()
    assert (view.status, view.stripe_status) == (BillingStatus.CANCELLED, "canceled")
    row = await _projection(sessions, cancelled.tenant_id)
    assert row is not None
    assert (row.status, row.stripe_status) == (BillingStatus.CANCELLED, "canceled")
    assert (await _tenant(sessions, cancelled.tenant_id)).status is TenantStatus.CANCELLED
    assert "billing.cancelled" in await _audit(sessions, cancelled.tenant_id)

    assert (await changed.view()).plan is PlanId.PROFESSIONAL
    row = await _projection(sessions, changed.tenant_id)
    assert row is not None
    assert (row.plan, row.status) == (PlanId.PROFESSIONAL, BillingStatus.ACTIVE)
    assert (await _tenant(sessions, changed.tenant_id)).plan == PlanId.PROFESSIONAL.value

    assert (await renewal.view()).cancel_at_period_end is True
    row = await _projection(sessions, renewal.tenant_id)
    assert row is not None
    assert row.cancel_at_period_end is True

    assert await _audit(sessions, untouched.tenant_id) == quiet_actions

    # Everything follows Stripe now: the next run finds nothing to repair.
    again = await reconcile(client, settings, "after-repair")
    assert again == ReconciliationReport(checked=4)


@pytest.mark.usefixtures("ts_worker")
async def test_a_stale_projection_behind_a_rebuilt_run_is_written_again(
    time_skipping_env: WorkflowEnvironment,
    own_sessions: SessionFactory,
    reconciliation_settings: Settings,
    localstripe: LocalStripe,
) -> None:
    client, settings, sessions = time_skipping_env.client, reconciliation_settings, own_sessions
    changed = await _active_tenant(client, sessions, settings, localstripe)
    professional = plan_of(settings.billing_plans, PlanId.PROFESSIONAL)
    opener = gateway_from_settings(settings)
    assert opener is not None
    async with opener() as gateway:
        await gateway.ensure_plan(professional)
    async with localstripe.sdk() as sdk:
        item = (await sdk.v1.subscriptions.retrieve_async(changed.subscription))["items"].data[0]
        await sdk.v1.subscriptions.update_async(
            changed.subscription,
            params={"items": [{"id": item.id, "plan": professional.stripe_plan_id}]},
        )
    # The billing run ended meanwhile: the next one rebuilds its state from Stripe, so it
    # knows the plan, and only the projection is behind.
    await changed.handle.terminate("ended for the test")

    report = await reconcile(client, settings, "rebuilt")

    assert (report.drifted, report.repaired, report.unrepaired) == (1, 1, 0)
    row = await _projection(sessions, changed.tenant_id)
    assert row is not None
    assert row.plan is PlanId.PROFESSIONAL
    assert (await _tenant(sessions, changed.tenant_id)).plan == PlanId.PROFESSIONAL.value


@pytest.mark.usefixtures("ts_worker")
async def test_a_run_without_drift_changes_nothing(
    time_skipping_env: WorkflowEnvironment,
    own_sessions: SessionFactory,
    reconciliation_settings: Settings,
    localstripe: LocalStripe,
) -> None:
    client, settings, sessions = time_skipping_env.client, reconciliation_settings, own_sessions
    tenants = [await _active_tenant(client, sessions, settings, localstripe) for _ in range(3)]
    before = [
        (await _audit(sessions, t.tenant_id), await _history_length(t.handle)) for t in tenants
    ]

    # Two tenants a page: the run goes on across pages (and runs) with its counts.
    report = await reconcile(client, settings, "quiet", page_size=2, pages_per_run=1)

    assert report == ReconciliationReport(checked=3)
    after = [
        (await _audit(sessions, t.tenant_id), await _history_length(t.handle)) for t in tenants
    ]
    assert after == before  # not even a signal


@pytest.mark.usefixtures("ts_worker")
async def test_a_stripe_failure_for_one_tenant_is_counted_and_the_others_are_reconciled(
    time_skipping_env: WorkflowEnvironment,
    own_sessions: SessionFactory,
    reconciliation_settings: Settings,
    localstripe: LocalStripe,
    stripe_front: StripeFront,
) -> None:
    client, settings, sessions = time_skipping_env.client, reconciliation_settings, own_sessions
    unreachable = await _active_tenant(client, sessions, settings, localstripe)
    refused = await _active_tenant(client, sessions, settings, localstripe)
    cancelled = await _active_tenant(client, sessions, settings, localstripe)
    async with localstripe.sdk() as sdk:
        for tenant in (unreachable, refused, cancelled):
            await sdk.v1.subscriptions.cancel_async(tenant.subscription)
    # Stripe fails every try for one tenant and refuses the read of another.
    stripe_front.fail(f"/v1/subscriptions/{unreachable.subscription}", Fault(500), Fault(500))
    stripe_front.fail(
        f"/v1/subscriptions/{refused.subscription}", Fault(400, "invalid_request_error")
    )

    report = await reconcile(client, settings, "stripe-failure", attempts=2)

    assert report == ReconciliationReport(
        checked=1, drifted=1, drift={DriftKind.STATUS: 1}, repaired=1, failed=2
    )
    await _status(cancelled.handle, sessions, cancelled.tenant_id, BillingStatus.CANCELLED)
    for tenant in (unreachable, refused):
        assert (await tenant.view()).status is BillingStatus.ACTIVE
    # The next run reaches them.
    again = await reconcile(client, settings, "stripe-back")
    assert (again.checked, again.repaired, again.failed) == (3, 2, 0)


@pytest.mark.usefixtures("ts_worker")
async def test_a_subscription_gone_and_one_the_projection_does_not_know(
    time_skipping_env: WorkflowEnvironment,
    own_sessions: SessionFactory,
    reconciliation_settings: Settings,
    localstripe: LocalStripe,
    stripe_front: StripeFront,
) -> None:
    client, settings, sessions = time_skipping_env.client, reconciliation_settings, own_sessions
    gone = await _active_tenant(client, sessions, settings, localstripe)
    replaced = await _active_tenant(client, sessions, settings, localstripe)
    # Stripe no longer knows one subscription (404); the other was replaced in Stripe by a new
    # one of the same customer.
    stripe_front.fail(
        f"/v1/subscriptions/{gone.subscription}",
        Fault(404, "invalid_request_error", "resource_missing", "No such subscription"),
    )
    starter = plan_of(settings.billing_plans, PlanId.STARTER)
    async with localstripe.sdk() as sdk:
        await sdk.v1.subscriptions.cancel_async(replaced.subscription)
        new = await sdk.v1.subscriptions.create_async(
            params={
                "customer": replaced.customer,
                "items": [{"plan": starter.stripe_plan_id}],
                "metadata": {"tenant_id": str(replaced.tenant_id)},
            }
        )

    report = await reconcile(client, settings, "gone-and-unknown")

    assert report == ReconciliationReport(
        checked=2,
        drifted=2,
        drift={DriftKind.GONE: 1, DriftKind.STATUS: 1, DriftKind.UNKNOWN_SUBSCRIPTION: 1},
        repaired=2,
    )
    view = await _status(gone.handle, sessions, gone.tenant_id, BillingStatus.CANCELLED)
    assert view.stripe_status == "canceled"
    view = await _status(replaced.handle, sessions, replaced.tenant_id, BillingStatus.ACTIVE)
    row = await _projection(sessions, replaced.tenant_id)
    assert row is not None
    assert (row.stripe_subscription_id, row.stripe_status) == (str(new.id), "active")
    assert view.retention_ends_at is None


async def test_the_schedule_is_created_once_and_follows_the_setting(
    temporal_env: WorkflowEnvironment, settings: Settings
) -> None:
    client = temporal_env.client
    billing = settings.model_copy(
        update={
            "stripe_secret_key": SecretStr("sk_test_x"),
            "billing_reconciliation_every": timedelta(hours=6),
        }
    )
    handle = client.get_schedule_handle(SCHEDULE_ID)
    # Without a payment provider there is nothing to reconcile: no Schedule.
    await ensure_reconciliation_schedule(client, settings)
    with pytest.raises(RPCError) as missing:
        await handle.describe()
    assert missing.value.status == RPCStatusCode.NOT_FOUND

    await ensure_reconciliation_schedule(client, billing)
    await ensure_reconciliation_schedule(client, billing)
    try:
        described = await handle.describe()
        assert described.schedule.spec.intervals == [ScheduleIntervalSpec(every=timedelta(hours=6))]
        action = described.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert action.workflow == "BillingReconciliationWorkflow"
        daily = billing.model_copy(update={"billing_reconciliation_every": timedelta(days=1)})
        await ensure_reconciliation_schedule(client, daily)
        described = await handle.describe()
        assert described.schedule.spec.intervals == [ScheduleIntervalSpec(every=timedelta(days=1))]
    finally:
        await handle.delete()
