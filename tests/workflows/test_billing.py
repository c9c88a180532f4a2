"""The billing workflow on the time-skipping server, with Stripe played by localstripe and the
events it lacks posted, signed as Stripe signs them, to the real webhook route."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.billing import count_seats_again, signal_billing, workflow_id
from api.app import create_app
from api.billing_guard import TenantSuspended, writable_tenant
from connectors.billing import parse_event
from core.db import SessionFactory
from core.plans import PlanSpec, default_plans, plan_of
from core.search import BIZ_STATUS
from core.security import Principal
from core.settings import Settings
from models.audit import AuditEntry
from models.billing import (
    BillingInput,
    BillingPolicy,
    BillingStatus,
    BillingView,
    ProvisionRequest,
    RenewalChange,
    Subscription,
)
from models.email import OutboundEmail
from models.onboarding import PlanId
from models.tenant import Tenant, TenantStatus
from models.user import Role
from tests.factories import Member, member
from tests.peers.stripe_front import Fault, StripeFront
from tests.peers_stripe import (
    LocalStripe,
    card_holder,
    confirm_card_setup,
    credit_note,
    dispute,
    paid_charge,
    pay,
    refund,
    signed,
    stripe_event,
    unpaid_invoice,
)
from tests.polling import eventually
from workers import registry
from workflows.billing import BillingWorkflow

pytest_plugins = ["tests.peers_stripe", "tests.peers.stripe_front"]

DAY = 86_400
Billing = WorkflowHandle[BillingWorkflow, BillingStatus]
# The time-skipping server has no Schedules: these two activities are stood in for.
_SCHEDULE_ACTIVITIES = {"ensure_usage_schedule", "remove_usage_schedule"}


class ScheduleLog:
    """Stands in for the usage Schedule activities; keeps what was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, uuid.UUID]] = []

    @activity.defn(name="ensure_usage_schedule")
    async def ensure(self, tenant_id: uuid.UUID) -> None:
        self.calls.append(("ensure", tenant_id))

    @activity.defn(name="remove_usage_schedule")
    async def remove(self, tenant_id: uuid.UUID) -> None:
        self.calls.append(("remove", tenant_id))


@pytest.fixture
def billing_overrides() -> dict[str, Any]:
    """Settings a test changes (parametrize it)."""
    return {}


@pytest.fixture
def billing_settings(
    settings: Settings, stripe_front: StripeFront, billing_overrides: dict[str, Any]
) -> Settings:
    """Stripe through the front (localstripe behind it; faults and meters in front)."""
    return stripe_front.settings(settings).model_copy(
        update={"billing_trial_days": 0} | billing_overrides
    )


# Long on both backends: PostgreSQL by default (SQLite when it does not answer), both with
# --slow.
pytestmark = pytest.mark.one_database


@pytest.fixture
def schedules() -> ScheduleLog:
    return ScheduleLog()


def billing_worker(
    client: Client,
    sessions: SessionFactory,
    settings: Settings,
    schedules: ScheduleLog | None = None,
) -> Worker:
    """The production worker, save that the time-skipping server has no Schedules: the two
    Schedule activities are stood in for (same activity names, calls kept in ``schedules``)."""
    log = schedules or ScheduleLog()
    activities = [
        fn
        for fn in registry.activities(sessions, settings)
        if fn.__name__ not in _SCHEDULE_ACTIVITIES
    ]
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=registry.WORKFLOWS,
        activities=[*activities, log.ensure, log.remove],
    )


@pytest.fixture
async def ts_worker(
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    billing_settings: Settings,
    schedules: ScheduleLog,
) -> AsyncIterator[Worker]:
    client = time_skipping_env.client
    async with billing_worker(client, sessions, billing_settings, schedules) as worker:
        yield worker


@pytest.fixture
async def ts_api(
    billing_settings: Settings,
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    ts_worker: Worker,
) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP API in process, on the time-skipping server."""
    app = create_app(billing_settings, time_skipping_env.client, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def _status(
    handle: Billing, sessions: SessionFactory, tenant_id: uuid.UUID, status: BillingStatus
) -> BillingView:
    """The workflow's view once it and the projection both show ``status``."""
    await eventually(
        lambda: _projection(sessions, tenant_id),
        lambda row: row is not None and row.status is status,
    )
    return await eventually(
        lambda: handle.query(BillingWorkflow.view), lambda view: view.status is status
    )


async def _post(
    api: httpx.AsyncClient, event_type: str, obj: dict[str, Any], *, later: int = 0
) -> None:
    """Post the event as Stripe would, created now (or ``later`` seconds from now)."""
    body, headers = signed(stripe_event(event_type, obj, created=int(time.time()) + later))
    response = await api.post("/api/v1/billing/webhooks/stripe", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "delivered"


async def _provision(
    client: Client, settings: Settings, tenant_id: uuid.UUID, plan: PlanId = PlanId.STARTER
) -> Billing:
    request = ProvisionRequest(tenant_id=tenant_id, plan=plan, idempotency_key="approval-1")
    await signal_billing(client, settings, tenant_id, "provision", request)
    return client.get_workflow_handle_for(BillingWorkflow.run, workflow_id(tenant_id))


async def _projection(sessions: SessionFactory, tenant_id: uuid.UUID) -> Subscription | None:
    async with sessions() as session:
        return await session.scalar(select(Subscription).where(Subscription.tenant_id == tenant_id))


async def _tenant_status(sessions: SessionFactory, tenant_id: uuid.UUID) -> TenantStatus:
    async with sessions() as session:
        tenant = await session.get(Tenant, tenant_id)
    assert tenant is not None
    return tenant.status


async def _subjects(sessions: SessionFactory, someone: Member) -> list[str]:
    async with sessions() as session:
        rows = await session.scalars(
            select(OutboundEmail.subject)
            .where(OutboundEmail.recipient == someone.email)
            .order_by(OutboundEmail.created_at)
        )
        return list(rows)


async def _actions(sessions: SessionFactory, tenant_id: uuid.UUID) -> list[str]:
    async with sessions() as session:
        rows = await session.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.tenant_id == tenant_id, AuditEntry.action.startswith("billing."))
            .order_by(AuditEntry.seq)
        )
        return list(rows)


async def _is_suspended_for_writes(sessions: SessionFactory, someone: Member) -> bool:
    return await _suspension_cause(sessions, someone) is not None


async def _suspension_cause(sessions: SessionFactory, someone: Member) -> str | None:
    """Why the tenant may not write (``payment`` or ``operator``), None when it may."""
    principal = Principal(someone.user_id, someone.tenant_id, someone.role, uuid.uuid4())
    async with sessions() as session:
        try:
            await writable_tenant(principal, session)
        except TenantSuspended as refused:
            return str(refused.extra["cause"])
    return None


async def _reminders(sessions: SessionFactory, someone: Member, count: int) -> list[str]:
    return await eventually(
        lambda: _subjects(sessions, someone),
        lambda subjects: sum("overdue" in s for s in subjects) == count,
    )


@pytest.mark.usefixtures("ts_worker")
async def test_dunning_suspends_and_payment_reactivates(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    schedules: ScheduleLog,
) -> None:
    admin = await member(sessions, billing_settings)
    async with localstripe.sdk() as sdk:
        customer = await card_holder(sdk, admin.tenant_id, admin.email)
    handle = await _provision(time_skipping_env.client, billing_settings, admin.tenant_id)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    row = await _projection(sessions, admin.tenant_id)
    assert row is not None
    assert (row.stripe_customer_id, row.plan, row.status) == (
        customer,  # the customer the tenant already had: found, not created again
        PlanId.STARTER,
        BillingStatus.ACTIVE,
    )
    assert row.stripe_subscription_id is not None
    assert schedules.calls == [("ensure", admin.tenant_id)]

    async with localstripe.sdk() as sdk:
        invoice_id = await unpaid_invoice(sdk, customer, row.stripe_subscription_id)
        invoice = (await sdk.v1.invoices.retrieve_async(invoice_id)).to_dict()
    await _post(ts_api, "invoice.payment_failed", invoice)
    view = await _status(handle, sessions, admin.tenant_id, BillingStatus.PAST_DUE)
    assert view.unpaid_invoices == [invoice_id]
    assert view.grace_ends_at is not None
    # Within the grace period the tenant keeps full access.
    assert await _tenant_status(sessions, admin.tenant_id) is TenantStatus.ACTIVE
    assert not await _is_suspended_for_writes(sessions, admin)

    # Reminders on days 1, 3 and 6 of the grace period, suspension when it ends on day 7.
    for skip, reminders in (
        (timedelta(days=1, hours=1), 1),
        (timedelta(days=2), 2),
        (timedelta(days=3), 3),
    ):
        await time_skipping_env.sleep(skip)
        await _reminders(sessions, admin, reminders)
    assert (await handle.query(BillingWorkflow.view)).status is BillingStatus.PAST_DUE
    await time_skipping_env.sleep(timedelta(days=1))
    await _status(handle, sessions, admin.tenant_id, BillingStatus.SUSPENDED)
    assert await _tenant_status(sessions, admin.tenant_id) is TenantStatus.SUSPENDED
    assert await _suspension_cause(sessions, admin) == "payment"
    description = await handle.describe()
    assert description.typed_search_attributes.get(BIZ_STATUS) == "suspended"

    async with localstripe.sdk() as sdk:
        paid = await pay(sdk, customer, invoice_id)
    await _post(ts_api, "invoice.payment_succeeded", paid)
    view = await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    assert view.unpaid_invoices == []
    assert view.grace_ends_at is None
    assert await _tenant_status(sessions, admin.tenant_id) is TenantStatus.ACTIVE
    assert not await _is_suspended_for_writes(sessions, admin)

    subjects = await eventually(
        lambda: _subjects(sessions, admin), lambda found: any("fully active" in s for s in found)
    )
    assert sum("overdue" in s for s in subjects) == 3
    assert sum("read-only" in s for s in subjects) == 1
    assert sum("fully active" in s for s in subjects) == 1
    assert await _actions(sessions, admin.tenant_id) == [
        "billing.provisioned",
        "billing.payment_failed",
        "billing.suspended",
        "billing.reactivated",
    ]


@pytest.mark.usefixtures("ts_worker")
async def test_trial_then_cancellation_keeps_data_until_retention_ends(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    schedules: ScheduleLog,
) -> None:
    admin = await member(sessions, billing_settings)
    with_trial = billing_settings.model_copy(update={"billing_trial_days": 14})
    handle = await _provision(time_skipping_env.client, with_trial, admin.tenant_id)
    view = await _status(handle, sessions, admin.tenant_id, BillingStatus.TRIALING)
    assert view.trial_end is not None
    row = await _projection(sessions, admin.tenant_id)
    assert row is not None
    assert row.stripe_subscription_id is not None
    assert row.trial_end == view.trial_end
    assert await _tenant_status(sessions, admin.tenant_id) is TenantStatus.ACTIVE

    # localstripe sends no trial_will_end: posted as Stripe would, about the real subscription.
    async with localstripe.sdk() as sdk:
        subscription = await sdk.v1.subscriptions.retrieve_async(row.stripe_subscription_id)
        await _post(ts_api, "customer.subscription.trial_will_end", subscription.to_dict())
        await eventually(
            lambda: _subjects(sessions, admin), lambda found: any("trial ends" in s for s in found)
        )
        ended = await sdk.v1.subscriptions.cancel_async(row.stripe_subscription_id)
    await _post(ts_api, "customer.subscription.deleted", ended.to_dict())
    view = await _status(handle, sessions, admin.tenant_id, BillingStatus.CANCELLED)
    assert view.retention_ends_at is not None
    assert await _tenant_status(sessions, admin.tenant_id) is TenantStatus.CANCELLED
    await eventually(lambda: asyncio.sleep(0, schedules.calls), lambda calls: len(calls) == 2)
    assert schedules.calls[-1] == ("remove", admin.tenant_id)
    # The update's validator refuses a card for a cancelled subscription: nothing is written.
    refused = await ts_api.post("/api/v1/billing/payment-method", headers=admin.headers)
    assert refused.status_code == 409, refused.text
    assert "cancelled" in refused.json()["detail"]

    started = (await handle.describe()).start_time
    await time_skipping_env.sleep(timedelta(days=30, hours=1))
    assert await handle.result() is BillingStatus.CANCELLED
    closed = (await handle.describe()).close_time
    assert closed is not None
    assert closed - started >= timedelta(days=30)
    assert await _actions(sessions, admin.tenant_id) == [
        "billing.provisioned",
        "billing.cancelled",
        "billing.retention_expired",
    ]
    subjects = await _subjects(sessions, admin)
    assert sum("trial ends" in s for s in subjects) == 1
    assert sum("has ended" in s for s in subjects) == 1


@pytest.mark.usefixtures("ts_worker")
async def test_continues_as_new_with_its_state(
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
) -> None:
    admin = await member(sessions, billing_settings)
    async with localstripe.sdk() as sdk:
        await card_holder(sdk, admin.tenant_id, admin.email)
    client = time_skipping_env.client
    request = ProvisionRequest(tenant_id=admin.tenant_id, plan=PlanId.STARTER, idempotency_key="a")
    handle = await client.start_workflow(
        BillingWorkflow.run,
        BillingInput(
            tenant_id=admin.tenant_id, policy=BillingPolicy(trial_days=0, history_limit=60)
        ),
        id=workflow_id(admin.tenant_id),
        task_queue=billing_settings.temporal_task_queue,
        start_signal="provision",
        start_signal_args=[request],
    )
    first_run = handle.result_run_id
    view = await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    row = await _projection(sessions, admin.tenant_id)
    assert row is not None
    async with localstripe.sdk() as sdk:
        subscription = (
            await sdk.v1.subscriptions.retrieve_async(str(row.stripe_subscription_id))
        ).to_dict()
    # Renewals and renewal toggles, one second apart: each is newer than the last.
    base, period_end = int(time.time()) + 10, int(subscription["current_period_end"])
    events = [
        parse_event(
            stripe_event(
                "customer.subscription.updated",
                subscription
                | {"cancel_at_period_end": n % 2 == 0, "current_period_end": period_end + n * DAY},
                created=base + n,
            )
        )
        for n in range(15)
    ]
    for event in events:
        await handle.signal(BillingWorkflow.stripe_event, event)
    final_end = datetime.fromtimestamp(period_end + 14 * DAY, UTC)
    row = await eventually(
        lambda: _projection(sessions, admin.tenant_id),
        lambda row: row is not None and row.current_period_end == final_end,
    )
    assert row is not None
    assert row.cancel_at_period_end is True
    latest = await eventually(
        lambda: client.get_workflow_handle(handle.id).describe(),
        lambda found: found.run_id != first_run and found.status == WorkflowExecutionStatus.RUNNING,
    )
    current = client.get_workflow_handle_for(BillingWorkflow.run, handle.id, run_id=latest.run_id)
    view = await current.query(BillingWorkflow.view)
    assert (view.status, view.plan, view.current_period_end) == (
        BillingStatus.ACTIVE,
        PlanId.STARTER,
        final_end,
    )
    # Repeats of events applied in an earlier run change nothing.
    for event in events[:3]:
        await current.signal(BillingWorkflow.stripe_event, event)
    view = await current.query(BillingWorkflow.view)
    assert (view.cancel_at_period_end, view.current_period_end) == (True, final_end)
    assert await _actions(sessions, admin.tenant_id) == ["billing.provisioned"]


@pytest.mark.usefixtures("ts_worker")
async def test_a_suspended_tenant_adds_a_card_and_is_active_again(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> None:
    admin = await member(sessions, billing_settings)
    async with localstripe.sdk() as sdk:
        customer = await card_holder(sdk, admin.tenant_id, admin.email)
    handle = await _provision(time_skipping_env.client, billing_settings, admin.tenant_id)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    row = await _projection(sessions, admin.tenant_id)
    assert row is not None
    assert row.stripe_subscription_id is not None
    async with localstripe.sdk() as sdk:
        invoice_id = await unpaid_invoice(sdk, customer, row.stripe_subscription_id)
        invoice = (await sdk.v1.invoices.retrieve_async(invoice_id)).to_dict()
    await _post(ts_api, "invoice.payment_failed", invoice)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.PAST_DUE)
    await time_skipping_env.sleep(timedelta(days=8))
    await _status(handle, sessions, admin.tenant_id, BillingStatus.SUSPENDED)

    # Billing stays open to a suspended tenant: its admin adds a card in the browser.
    response = await ts_api.post("/api/v1/billing/payment-method", headers=admin.headers)
    assert response.status_code == 200, response.text
    collection = response.json()
    async with localstripe.sdk() as sdk:
        confirmed = await confirm_card_setup(
            sdk, collection["setup_intent_id"], collection["client_secret"]
        )
    await _post(ts_api, "setup_intent.succeeded", confirmed)

    view = await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    assert view.unpaid_invoices == []
    assert await _tenant_status(sessions, admin.tenant_id) is TenantStatus.ACTIVE
    async with localstripe.sdk() as sdk:
        assert (await sdk.v1.invoices.retrieve_async(invoice_id)).status == "paid"
    await eventually(
        lambda: _subjects(sessions, admin), lambda found: any("fully active" in s for s in found)
    )
    assert (await _actions(sessions, admin.tenant_id))[-4:] == [
        "billing.suspended",
        "billing.payment_method_requested",
        "billing.payment_method_added",
        "billing.reactivated",
    ]


# --- The entity workflow never dies, spins, stalls or restarts empty ----------------------


async def _audit_rows(sessions: SessionFactory, tenant_id: uuid.UUID) -> list[AuditEntry]:
    async with sessions() as session:
        rows = await session.scalars(
            select(AuditEntry)
            .where(AuditEntry.tenant_id == tenant_id, AuditEntry.action.startswith("billing."))
            .order_by(AuditEntry.seq)
        )
        return list(rows)


@pytest.fixture
async def left_running(time_skipping_env: WorkflowEnvironment) -> AsyncIterator[list[str]]:
    """Workflow ids terminated after the test: a billing workflow left with timers (dunning,
    parked retries) and no worker would stop the shared server from skipping time."""
    ids: list[str] = []
    yield ids
    for workflow in ids:
        handle = time_skipping_env.client.get_workflow_handle(workflow)
        # An activity still running when the worker stops stays "started" on the test server
        # and holds its clock: let the workflow settle first.
        with contextlib.suppress(AssertionError, RPCError):
            await eventually(
                handle.describe, lambda found: not found.raw_description.pending_activities
            )
        with contextlib.suppress(RPCError):
            await handle.terminate("test over")


async def _active_tenant(
    client: Client,
    sessions: SessionFactory,
    settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> tuple[Member, str, str, Billing]:
    """A tenant with a card, provisioned: (admin, customer id, subscription id, handle)."""
    admin = await member(sessions, settings)
    left_running.append(workflow_id(admin.tenant_id))
    async with localstripe.sdk() as sdk:
        customer = await card_holder(sdk, admin.tenant_id, admin.email)
    handle = await _provision(client, settings, admin.tenant_id)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    row = await _projection(sessions, admin.tenant_id)
    assert row is not None
    assert row.stripe_subscription_id is not None
    return admin, customer, row.stripe_subscription_id, handle


async def _failed_invoice(localstripe: LocalStripe, customer: str, subscription: str) -> Any:
    async with localstripe.sdk() as sdk:
        invoice_id = await unpaid_invoice(sdk, customer, subscription)
        return (await sdk.v1.invoices.retrieve_async(invoice_id)).to_dict()


@pytest.mark.usefixtures("ts_worker")
async def test_an_event_that_fails_is_recorded_parked_and_retried_and_the_workflow_lives(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
    stripe_front: StripeFront,
) -> None:
    client = time_skipping_env.client
    admin, customer, subscription, handle = await _active_tenant(
        client, sessions, billing_settings, localstripe, left_running
    )
    invoice = await _failed_invoice(localstripe, customer, subscription)
    # Stripe refuses the re-read of the invoice (a request error: not retried).
    first_run = (await handle.describe()).run_id
    stripe_front.fail(f"/v1/invoices/{invoice['id']}", Fault(400, "invalid_request_error"))
    await _post(ts_api, "invoice.payment_failed", invoice)
    view = await eventually(
        lambda: handle.query(BillingWorkflow.view), lambda view: bool(view.parked_events)
    )
    assert view.status is BillingStatus.ACTIVE
    failed = [row for row in await _audit_rows(sessions, admin.tenant_id) if "failed" in row.action]
    assert [row.action for row in failed] == ["billing.event_failed"]
    assert "StripeRejected" in failed[0].data["error"]
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING

    # The parked event is tried again an hour later, and this time Stripe answers.
    await time_skipping_env.sleep(timedelta(hours=1, minutes=5))
    view = await _status(handle, sessions, admin.tenant_id, BillingStatus.PAST_DUE)
    assert view.parked_events == []
    assert view.unpaid_invoices == [invoice["id"]]
    assert (await handle.describe()).run_id == first_run


@pytest.mark.usefixtures("ts_worker")
async def test_a_run_started_after_the_last_died_rebuilds_from_the_projection(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> None:
    client = time_skipping_env.client
    admin, customer, subscription, handle = await _active_tenant(
        client, sessions, billing_settings, localstripe, left_running
    )
    await handle.terminate("an operator ended the run")
    invoice = await _failed_invoice(localstripe, customer, subscription)
    # The next event starts a new run: it knows the customer and its subscription.
    await _post(ts_api, "invoice.payment_failed", invoice)
    fresh = client.get_workflow_handle_for(BillingWorkflow.run, workflow_id(admin.tenant_id))
    view = await _status(fresh, sessions, admin.tenant_id, BillingStatus.PAST_DUE)
    assert (view.plan, view.unpaid_invoices) == (PlanId.STARTER, [invoice["id"]])
    row = await _projection(sessions, admin.tenant_id)
    assert row is not None
    assert (row.stripe_customer_id, row.stripe_subscription_id) == (customer, subscription)


@pytest.mark.usefixtures("ts_worker")
async def test_resubscribing_clears_retention_and_the_old_date_passes_quietly(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
    schedules: ScheduleLog,
) -> None:
    client = time_skipping_env.client
    admin, customer, subscription, handle = await _active_tenant(
        client, sessions, billing_settings, localstripe, left_running
    )
    async with localstripe.sdk() as sdk:
        ended = await sdk.v1.subscriptions.cancel_async(subscription)
    await _post(ts_api, "customer.subscription.deleted", ended.to_dict())
    view = await _status(handle, sessions, admin.tenant_id, BillingStatus.CANCELLED)
    assert view.retention_ends_at is not None

    # The customer subscribes again in Stripe (Checkout, say): billing follows.
    plan = plan_of(billing_settings.billing_plans, PlanId.STARTER)
    async with localstripe.sdk() as sdk:
        again = await sdk.v1.subscriptions.create_async(
            params={
                "customer": customer,
                "items": [{"plan": plan.stripe_plan_id}],
                "metadata": {"tenant_id": str(admin.tenant_id)},
            }
        )
    await _post(ts_api, "customer.subscription.created", again.to_dict())
    view = await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    assert view.retention_ends_at is None
    # Its usage is reported again: the schedule removed at cancellation is back.
    assert schedules.calls == [
        ("ensure", admin.tenant_id),
        ("remove", admin.tenant_id),
        ("ensure", admin.tenant_id),
    ]

    # The old retention date passes: the workflow neither ends nor spins.
    await time_skipping_env.sleep(timedelta(days=31))
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    renewing = again.to_dict() | {"cancel_at_period_end": True}
    await _post(ts_api, "customer.subscription.updated", renewing, later=5)
    await eventually(
        lambda: _projection(sessions, admin.tenant_id),
        lambda row: row is not None and row.cancel_at_period_end,
    )
    view = await handle.query(BillingWorkflow.view)
    assert (view.status, view.retention_ends_at) == (BillingStatus.ACTIVE, None)
    assert await _tenant_status(sessions, admin.tenant_id) is TenantStatus.ACTIVE


@pytest.mark.usefixtures("ts_worker")
async def test_a_late_event_after_the_end_gets_a_run_that_ends_at_once(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> None:
    client = time_skipping_env.client
    admin, _, subscription, handle = await _active_tenant(
        client, sessions, billing_settings, localstripe, left_running
    )
    async with localstripe.sdk() as sdk:
        ended = (await sdk.v1.subscriptions.cancel_async(subscription)).to_dict()
    await _post(ts_api, "customer.subscription.deleted", ended)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.CANCELLED)
    await time_skipping_env.sleep(timedelta(days=31))
    assert await handle.result() is BillingStatus.CANCELLED
    actions = await _actions(sessions, admin.tenant_id)

    # Stripe retries for days: a late delivery starts a run, which knows it is over.
    await _post(ts_api, "customer.subscription.deleted", ended)
    late = client.get_workflow_handle_for(BillingWorkflow.run, workflow_id(admin.tenant_id))
    assert await late.result() is BillingStatus.CANCELLED
    described = await late.describe()
    assert described.run_id != handle.result_run_id
    assert described.close_time is not None
    assert described.close_time - described.start_time < timedelta(hours=1)
    assert await _actions(sessions, admin.tenant_id) == actions
    assert await _tenant_status(sessions, admin.tenant_id) is TenantStatus.CANCELLED


# Nothing listens on port 9 of the loopback: every delivery is refused.
@pytest.mark.parametrize("billing_overrides", [{"smtp_host": "127.0.0.1", "smtp_port": 9}])
@pytest.mark.usefixtures("ts_worker")
async def test_a_mail_server_down_does_not_hold_up_dunning(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> None:
    client = time_skipping_env.client
    admin, customer, subscription, handle = await _active_tenant(
        client, sessions, billing_settings, localstripe, left_running
    )
    invoice = await _failed_invoice(localstripe, customer, subscription)
    await _post(ts_api, "invoice.payment_failed", invoice)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.PAST_DUE)
    # Every reminder fails to send (the worker's mail server is down)...
    await time_skipping_env.sleep(timedelta(days=8))
    # ... and the grace period still ends on time; each failed notice is on record.
    await _status(handle, sessions, admin.tenant_id, BillingStatus.SUSPENDED)
    rows = await eventually(
        lambda: _audit_rows(sessions, admin.tenant_id),
        lambda rows: sum(row.action == "billing.notice_failed" for row in rows) >= 5,
    )
    kinds = sorted(row.data["subject"].split()[0] for row in rows if "notice" in row.action)
    assert kinds == [
        "payment_failed",
        "payment_reminder",
        "payment_reminder",
        "payment_reminder",
        "suspended",
    ]


@pytest.mark.usefixtures("ts_worker")
async def test_a_cancelled_workflow_removes_its_usage_schedule(
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
    schedules: ScheduleLog,
) -> None:
    client = time_skipping_env.client
    admin, _, _, handle = await _active_tenant(
        client, sessions, billing_settings, localstripe, left_running
    )
    assert schedules.calls == [("ensure", admin.tenant_id)]
    await handle.cancel()
    await eventually(
        lambda: handle.describe(),
        lambda found: found.status == WorkflowExecutionStatus.CANCELED,
    )
    assert schedules.calls == [("ensure", admin.tenant_id), ("remove", admin.tenant_id)]


@pytest.mark.usefixtures("ts_worker")
async def test_updates_alone_continue_as_new_and_their_ids_outlive_the_run(
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
) -> None:
    admin = await member(sessions, billing_settings)
    async with localstripe.sdk() as sdk:
        await card_holder(sdk, admin.tenant_id, admin.email)
    client = time_skipping_env.client
    request = ProvisionRequest(tenant_id=admin.tenant_id, plan=PlanId.STARTER, idempotency_key="a")
    handle = await client.start_workflow(
        BillingWorkflow.run,
        BillingInput(
            tenant_id=admin.tenant_id, policy=BillingPolicy(trial_days=0, history_limit=60)
        ),
        id=workflow_id(admin.tenant_id),
        task_queue=billing_settings.temporal_task_queue,
        start_signal="provision",
        start_signal_args=[request],
    )
    first_run = handle.result_run_id
    await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    latest = client.get_workflow_handle_for(BillingWorkflow.run, handle.id)
    for n in range(8):
        change = RenewalChange(cancel=n % 2 == 0)
        await latest.execute_update(BillingWorkflow.set_renewal, change, id=f"renewal-{n}")
    described = await eventually(
        lambda: latest.describe(),
        lambda found: found.run_id != first_run and found.status == WorkflowExecutionStatus.RUNNING,
    )
    assert described.run_id != first_run
    before = await _actions(sessions, admin.tenant_id)
    # A client retrying the first request (same update id) after the run changed: no effect.
    view = await latest.execute_update(
        BillingWorkflow.set_renewal, RenewalChange(cancel=True), id="renewal-0"
    )
    assert view.cancel_at_period_end is False
    assert await _actions(sessions, admin.tenant_id) == before


# --- Dunning follows what Stripe says ----------------------------------------------------


@pytest.mark.usefixtures("ts_worker")
async def test_a_late_past_due_after_payment_does_not_reopen_dunning_and_mails_go_out(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> None:
    client = time_skipping_env.client
    admin, customer, subscription, handle = await _active_tenant(
        client, sessions, billing_settings, localstripe, left_running
    )
    async with localstripe.sdk() as sdk:
        past_due = (await sdk.v1.subscriptions.retrieve_async(subscription)).to_dict() | {
            "status": "past_due"
        }
    invoice = await _failed_invoice(localstripe, customer, subscription)
    await _post(ts_api, "invoice.payment_failed", invoice)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.PAST_DUE)
    # The customer hears of the failure the day it happens.
    await eventually(
        lambda: _subjects(sessions, admin), lambda found: any("Payment failed" in s for s in found)
    )
    async with localstripe.sdk() as sdk:
        paid = await pay(sdk, customer, invoice["id"])
    await _post(ts_api, "invoice.payment_succeeded", paid)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    await _post(ts_api, "invoice.paid", paid)  # the same payment's other event: one receipt
    subjects = await eventually(
        lambda: _subjects(sessions, admin), lambda found: any("Receipt" in s for s in found)
    )

    # Stripe's subscription.updated(past_due) of before the payment arrives late: Stripe is
    # asked, says active, and nothing reopens.
    await _post(ts_api, "customer.subscription.updated", past_due, later=3)
    await eventually(
        lambda: _audit_rows(sessions, admin.tenant_id),
        lambda rows: len(rows) >= 3,
    )
    await asyncio.sleep(0.5)
    view = await handle.query(BillingWorkflow.view)
    assert (view.status, view.stripe_status, view.grace_ends_at) == (
        BillingStatus.ACTIVE,
        "active",
        None,
    )
    assert await _actions(sessions, admin.tenant_id) == [
        "billing.provisioned",
        "billing.payment_failed",
        "billing.reactivated",
    ]
    subjects = await _subjects(sessions, admin)
    assert sum("Receipt" in s for s in subjects) == 1
    assert sum("Payment failed" in s for s in subjects) == 1


@pytest.mark.usefixtures("ts_worker")
async def test_a_first_subscription_that_fails_goes_through_once_a_card_is_saved(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> None:
    admin = await member(sessions, billing_settings)
    left_running.append(workflow_id(admin.tenant_id))
    # No card, no trial: Stripe cannot charge the first invoice.
    handle = await _provision(time_skipping_env.client, billing_settings, admin.tenant_id)
    view = await eventually(
        lambda: handle.query(BillingWorkflow.view),
        lambda view: view.provision_failure is not None,
    )
    assert view.status is BillingStatus.PROVISIONING
    # Visible to the operator (audit) and to the tenant (the projection says provisioning).
    await eventually(
        lambda: _actions(sessions, admin.tenant_id),
        lambda actions: "billing.provisioning_failed" in actions,
    )

    response = await ts_api.post("/api/v1/billing/payment-method", headers=admin.headers)
    assert response.status_code == 200, response.text
    collection = response.json()
    async with localstripe.sdk() as sdk:
        confirmed = await confirm_card_setup(
            sdk, collection["setup_intent_id"], collection["client_secret"]
        )
    await _post(ts_api, "setup_intent.succeeded", confirmed)
    view = await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    assert (view.plan, view.provision_failure) == (PlanId.STARTER, None)
    row = await _projection(sessions, admin.tenant_id)
    assert row is not None
    assert row.stripe_subscription_id is not None


@pytest.mark.usefixtures("ts_worker")
async def test_an_operator_retries_a_provisioning_stripe_refused(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    stripe_front: StripeFront,
    left_running: list[str],
) -> None:
    admin = await member(sessions, billing_settings)
    left_running.append(workflow_id(admin.tenant_id))
    with_trial = billing_settings.model_copy(update={"billing_trial_days": 14})
    # A request error Stripe will not take back on its own (say, a price not set up yet).
    stripe_front.fail("/v1/subscriptions", Fault(400, "invalid_request_error"))
    handle = await _provision(time_skipping_env.client, with_trial, admin.tenant_id)
    await eventually(
        lambda: handle.query(BillingWorkflow.view),
        lambda view: view.provision_failure is not None,
    )
    operator = await member(sessions, billing_settings, Role.SUPER_ADMIN)
    url = f"/api/v1/billing/tenants/{admin.tenant_id}/provisioning/retry"
    assert (await ts_api.post(url, headers=admin.headers)).status_code == 403

    retried = await ts_api.post(url, headers=operator.headers)
    assert retried.status_code == 200, retried.text
    assert (retried.json()["status"], retried.json()["provision_failure"]) == ("trialing", None)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.TRIALING)
    assert await _actions(sessions, admin.tenant_id) == [
        "billing.provisioning_failed",
        "billing.provisioning_retried",
        "billing.provisioned",
    ]
    # Provisioned: nothing to retry; a tenant without billing neither.
    again = await ts_api.post(url, headers=operator.headers)
    assert again.status_code == 409, again.text
    stranger = f"/api/v1/billing/tenants/{uuid.uuid4()}/provisioning/retry"
    unknown = await ts_api.post(stranger, headers=operator.headers)
    assert unknown.status_code == 409
    assert "ended or never started" in unknown.json()["detail"]


def test_grace_and_reminders_accept_durations() -> None:
    parsed = Settings(_env_file=None, billing_grace="PT10M", billing_reminders=["PT2M", 300])
    assert (parsed.billing_grace, parsed.billing_reminders) == (
        timedelta(minutes=10),
        [timedelta(minutes=2), timedelta(minutes=5)],
    )
    with pytest.raises(ValueError, match="within the grace period"):
        Settings(_env_file=None, billing_grace="PT10M", billing_reminders=["PT11M"])


@pytest.mark.parametrize(
    "billing_overrides",
    [{"billing_grace": timedelta(minutes=10), "billing_reminders": [timedelta(minutes=2)]}],
)
@pytest.mark.usefixtures("ts_worker")
async def test_an_operator_applies_new_dunning_policy_to_a_running_tenant(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> None:
    # The tenant's workflow started under the policy of before: 7 days of grace.
    started_under = billing_settings.model_copy(
        update={"billing_grace": None, "billing_reminders": None}
    )
    admin, customer, subscription, handle = await _active_tenant(
        time_skipping_env.client, sessions, started_under, localstripe, left_running
    )
    operator = await member(sessions, billing_settings, Role.SUPER_ADMIN)
    url = f"/api/v1/billing/tenants/{admin.tenant_id}/policy"
    refused = await ts_api.post(url, headers=admin.headers)
    assert refused.status_code == 403, refused.text
    applied = await ts_api.post(url, headers=operator.headers)
    assert applied.status_code == 200, applied.text

    invoice = await _failed_invoice(localstripe, customer, subscription)
    await _post(ts_api, "invoice.payment_failed", invoice)
    view = await _status(handle, sessions, admin.tenant_id, BillingStatus.PAST_DUE)
    assert view.grace_ends_at is not None
    assert view.grace_ends_at - await time_skipping_env.get_current_time() < timedelta(hours=1)
    await time_skipping_env.sleep(timedelta(minutes=3))
    await _reminders(sessions, admin, 1)
    await time_skipping_env.sleep(timedelta(minutes=8))
    await _status(handle, sessions, admin.tenant_id, BillingStatus.SUSPENDED)


@pytest.mark.parametrize(
    "billing_overrides",
    [{"billing_grace": timedelta(minutes=10), "billing_reminders": [timedelta(minutes=2)]}],
)
@pytest.mark.usefixtures("ts_worker")
async def test_new_policy_applied_during_dunning_moves_the_timer_it_waits_for(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> None:
    started_under = billing_settings.model_copy(
        update={"billing_grace": None, "billing_reminders": None}
    )
    admin, customer, subscription, handle = await _active_tenant(
        time_skipping_env.client, sessions, started_under, localstripe, left_running
    )
    invoice = await _failed_invoice(localstripe, customer, subscription)
    await _post(ts_api, "invoice.payment_failed", invoice)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.PAST_DUE)
    # The workflow waits for the day-1 reminder of the 7-day grace; the new grace ends sooner.
    operator = await member(sessions, billing_settings, Role.SUPER_ADMIN)
    applied = await ts_api.post(
        f"/api/v1/billing/tenants/{admin.tenant_id}/policy", headers=operator.headers
    )
    assert applied.status_code == 200, applied.text
    await time_skipping_env.sleep(timedelta(minutes=11))
    await _status(handle, sessions, admin.tenant_id, BillingStatus.SUSPENDED)


# --- Self-service -------------------------------------------------------------------------


@pytest.mark.usefixtures("ts_worker")
async def test_a_cancelled_tenant_subscribes_again(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> None:
    admin, _, subscription, handle = await _active_tenant(
        time_skipping_env.client, sessions, billing_settings, localstripe, left_running
    )
    url = "/api/v1/billing/subscription"
    body = {"plan_id": "professional"}
    headers = admin.headers | {"Idempotency-Key": "again-1"}
    refused = await ts_api.post(url, json=body, headers=headers)
    assert refused.status_code == 409, refused.text
    async with localstripe.sdk() as sdk:
        ended = await sdk.v1.subscriptions.cancel_async(subscription)
    await _post(ts_api, "customer.subscription.deleted", ended.to_dict())
    await _status(handle, sessions, admin.tenant_id, BillingStatus.CANCELLED)
    assert await _tenant_status(sessions, admin.tenant_id) is TenantStatus.CANCELLED

    accepted = await ts_api.post(url, json=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    view = await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    assert (view.plan, view.retention_ends_at) == (PlanId.PROFESSIONAL, None)
    row = await _projection(sessions, admin.tenant_id)
    assert row is not None
    assert row.stripe_subscription_id not in (None, subscription)
    assert await _tenant_status(sessions, admin.tenant_id) is TenantStatus.ACTIVE
    again = await ts_api.post(url, json=body, headers=headers)
    assert again.status_code == 409, again.text


@pytest.mark.usefixtures("ts_worker")
async def test_an_operator_replays_parked_events_at_once(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    stripe_front: StripeFront,
    left_running: list[str],
) -> None:
    admin, customer, subscription, handle = await _active_tenant(
        time_skipping_env.client, sessions, billing_settings, localstripe, left_running
    )
    invoice = await _failed_invoice(localstripe, customer, subscription)
    # Stripe refuses the re-read once (a request error: parked, not retried at once).
    stripe_front.fail(f"/v1/invoices/{invoice['id']}", Fault(400, "invalid_request_error"))
    await _post(ts_api, "invoice.payment_failed", invoice)
    await eventually(
        lambda: handle.query(BillingWorkflow.view), lambda view: bool(view.parked_events)
    )
    # An operator does not wait for the hourly retry.
    operator = await member(sessions, billing_settings, Role.SUPER_ADMIN)
    url = f"/api/v1/billing/tenants/{admin.tenant_id}/parked-events/replay"
    assert (await ts_api.post(url, headers=admin.headers)).status_code == 403
    replayed = await ts_api.post(url, headers=operator.headers)
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["parked_events"] == []
    await _status(handle, sessions, admin.tenant_id, BillingStatus.PAST_DUE)


# --- Operations (super_admin) ---------------------------------------------------------------


@pytest.mark.usefixtures("ts_worker")
async def test_an_operator_extends_a_trial_in_stripe_and_the_workflow(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> None:
    admin = await member(sessions, billing_settings)
    left_running.append(workflow_id(admin.tenant_id))
    with_trial = billing_settings.model_copy(update={"billing_trial_days": 14})
    handle = await _provision(time_skipping_env.client, with_trial, admin.tenant_id)
    view = await _status(handle, sessions, admin.tenant_id, BillingStatus.TRIALING)
    assert view.trial_end is not None
    operator = await member(sessions, billing_settings, Role.SUPER_ADMIN)
    url = f"/api/v1/billing/tenants/{admin.tenant_id}/trial"
    later = (view.trial_end + timedelta(days=10)).replace(microsecond=0)

    assert (
        await ts_api.post(url, json={"trial_end": later.isoformat()}, headers=admin.headers)
    ).status_code == 403
    for bad in ("2020-01-01T00:00:00Z", "2099-01-01T00:00:00Z", "tomorrow", later.isoformat()[:19]):
        refused = await ts_api.post(url, json={"trial_end": bad}, headers=operator.headers)
        assert refused.status_code == 422, (bad, refused.text)
    extended = await ts_api.post(
        url, json={"trial_end": later.isoformat()}, headers=operator.headers
    )
    assert extended.status_code == 200, extended.text
    assert datetime.fromisoformat(extended.json()["trial_end"]) == later
    assert extended.json()["status"] == "trialing"
    # Not earlier than the trial ends now.
    shorter = (view.trial_end + timedelta(days=1)).isoformat()
    earlier = await ts_api.post(url, json={"trial_end": shorter}, headers=operator.headers)
    assert earlier.status_code == 409, earlier.text

    row = await _projection(sessions, admin.tenant_id)
    assert row is not None
    assert row.trial_end == later
    assert row.stripe_subscription_id is not None
    async with localstripe.sdk() as sdk:
        in_stripe = await sdk.v1.subscriptions.retrieve_async(row.stripe_subscription_id)
    assert in_stripe.trial_end == int(later.timestamp())
    async with sessions() as session:
        audited = await session.scalar(
            select(AuditEntry).where(
                AuditEntry.tenant_id == admin.tenant_id,
                AuditEntry.action == "billing.trial_extended",
            )
        )
    assert audited is not None
    assert audited.actor_id == operator.user_id
    assert audited.data["trial_end"] == later.isoformat()

    # Once the tenant pays (active), there is no trial to extend.
    async with localstripe.sdk() as sdk:
        active = (await sdk.v1.subscriptions.retrieve_async(row.stripe_subscription_id)).to_dict()
    await _post(ts_api, "customer.subscription.updated", active | {"status": "active"}, later=5)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    further = (later + timedelta(days=5)).isoformat()
    gone = await ts_api.post(url, json={"trial_end": further}, headers=operator.headers)
    assert gone.status_code == 409, gone.text


@pytest.mark.usefixtures("ts_worker")
async def test_an_operator_suspension_holds_whatever_stripe_says_until_lifted(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> None:
    client = time_skipping_env.client
    admin, customer, subscription, handle = await _active_tenant(
        client, sessions, billing_settings, localstripe, left_running
    )
    operator = await member(sessions, billing_settings, Role.SUPER_ADMIN)
    base = f"/api/v1/billing/tenants/{admin.tenant_id}"
    reason = {"reason": "chargeback investigation #4411"}

    assert (
        await ts_api.post(f"{base}/suspend", json=reason, headers=admin.headers)
    ).status_code == 403
    for bad in ({}, {"reason": ""}, {"reason": "   "}, {"reason": "x" * 501}):
        refused = await ts_api.post(f"{base}/suspend", json=bad, headers=operator.headers)
        assert refused.status_code == 422, (bad, refused.text)
    not_held = await ts_api.post(f"{base}/unsuspend", json=reason, headers=operator.headers)
    assert not_held.status_code == 409, not_held.text

    suspended = await ts_api.post(f"{base}/suspend", json=reason, headers=operator.headers)
    assert suspended.status_code == 200, suspended.text
    assert suspended.json()["suspended_by_operator"] == reason["reason"]
    assert suspended.json()["status"] == "active"  # billing itself is fine
    assert await _tenant_status(sessions, admin.tenant_id) is TenantStatus.SUSPENDED
    # The tenant is told who suspended it (not an overdue invoice).
    assert await _suspension_cause(sessions, admin) == "operator"
    again = await ts_api.post(f"{base}/suspend", json=reason, headers=operator.headers)
    assert again.status_code == 409, again.text

    # A lapse and its payment move billing, not the operator's suspension.
    invoice = await _failed_invoice(localstripe, customer, subscription)
    await _post(ts_api, "invoice.payment_failed", invoice)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.PAST_DUE)
    async with localstripe.sdk() as sdk:
        paid = await pay(sdk, customer, invoice["id"])
    await _post(ts_api, "invoice.paid", paid, later=1)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    assert await _tenant_status(sessions, admin.tenant_id) is TenantStatus.SUSPENDED

    # A run started after this one died keeps the suspension (rebuilt from the audit trail).
    await handle.terminate("an operator ended the run")
    async with localstripe.sdk() as sdk:
        current = (await sdk.v1.subscriptions.retrieve_async(subscription)).to_dict()
    await _post(ts_api, "customer.subscription.updated", current, later=2)
    fresh = client.get_workflow_handle_for(BillingWorkflow.run, workflow_id(admin.tenant_id))
    view = await eventually(
        lambda: fresh.query(BillingWorkflow.view),
        lambda found: found.status is BillingStatus.ACTIVE,
    )
    assert view.suspended_by_operator == reason["reason"]

    lifted = await ts_api.post(
        f"{base}/unsuspend", json={"reason": "cleared"}, headers=operator.headers
    )
    assert lifted.status_code == 200, lifted.text
    assert lifted.json()["suspended_by_operator"] is None
    assert await _tenant_status(sessions, admin.tenant_id) is TenantStatus.ACTIVE
    assert not await _is_suspended_for_writes(sessions, admin)
    async with sessions() as session:
        rows = (
            await session.scalars(
                select(AuditEntry)
                .where(
                    AuditEntry.tenant_id == admin.tenant_id,
                    AuditEntry.action.like("billing.operator_%"),
                )
                .order_by(AuditEntry.id)
            )
        ).all()
    assert [(r.action, r.actor_id, r.data["reason"]) for r in rows] == [
        ("billing.operator_suspended", operator.user_id, reason["reason"]),
        ("billing.operator_unsuspended", operator.user_id, "cleared"),
    ]
    assert rows[1].data["suspended_for"] == reason["reason"]


# --- Refunds, disputes and credit notes on the invoices ------------------------------------


async def _deliver(api: httpx.AsyncClient, payload: dict[str, Any]) -> Any:
    """Post this very event (a redelivery repeats its id) signed as Stripe signs it."""
    body, headers = signed(payload)
    response = await api.post("/api/v1/billing/webhooks/stripe", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "delivered", response.text
    return response.json()


async def _invoice_view(api: httpx.AsyncClient, someone: Member, invoice_id: str) -> Any:
    listed = await api.get("/api/v1/billing/invoices", headers=someone.headers)
    assert listed.status_code == 200, listed.text
    return next((item for item in listed.json()["items"] if item["invoice_id"] == invoice_id), None)


@pytest.mark.usefixtures("ts_worker")
async def test_refunds_disputes_and_credit_notes_are_recorded_on_the_invoice_once(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> None:
    admin, customer, subscription, handle = await _active_tenant(
        time_skipping_env.client, sessions, billing_settings, localstripe, left_running
    )
    operator = await member(sessions, billing_settings, Role.SUPER_ADMIN)
    async with localstripe.sdk() as sdk:
        invoice_id, charge = await paid_charge(sdk, subscription)
        invoice = (await sdk.v1.invoices.retrieve_async(invoice_id)).to_dict()
        partly = await refund(sdk, charge["id"], 1000)
        fully = await refund(sdk, charge["id"], charge["amount"] - 1000)
    assert (partly["amount_refunded"], fully["refunded"]) == (1000, True)
    await _deliver(ts_api, stripe_event("invoice.paid", invoice, int(time.time())))
    view = partial(_invoice_view, ts_api, admin, invoice_id)
    t = int(time.time())

    # A partial refund, delivered twice by Stripe and signalled again: recorded once.
    first_refund = stripe_event("charge.refunded", partly, t + 1)
    await _deliver(ts_api, first_refund)
    assert (await _deliver(ts_api, first_refund))["duplicate"] is True
    await handle.signal(BillingWorkflow.stripe_event, parse_event(first_refund))
    await eventually(view, lambda item: item is not None and item["amount_refunded"] == 1000)
    # The rest refunded: Stripe's total for the charge, never the two events added up; an
    # older state arriving late changes nothing.
    await _deliver(ts_api, stripe_event("charge.refunded", fully, t + 2))
    await eventually(view, lambda item: item["amount_refunded"] == charge["amount"])
    await _deliver(ts_api, stripe_event("charge.refunded", partly, t + 1))

    # A dispute names only its charge: the webhook reads the charge's customer from Stripe.
    opened = stripe_event("charge.dispute.created", dispute(charge), t + 3)
    await _deliver(ts_api, opened)
    await _deliver(ts_api, opened)
    await _deliver(
        ts_api,
        stripe_event("charge.dispute.updated", dispute(charge, status="under_review"), t + 4),
    )
    await _deliver(
        ts_api, stripe_event("credit_note.created", credit_note(invoice_id, customer, 500), t + 5)
    )
    item = await eventually(
        view,
        lambda item: (
            bool(item["credit_notes"]) and (item["dispute"] or {}).get("status") == "under_review"
        ),
    )
    assert item["amount_refunded"] == charge["amount"]
    assert item["dispute"] == {
        "dispute_id": f"dp_{charge['id'][3:]}",
        "charge_id": charge["id"],
        "amount": charge["amount"],
        "currency": "usd",
        "reason": "fraudulent",
        "status": "under_review",
    }
    assert [(n["amount"], n["reason"], n["status"]) for n in item["credit_notes"]] == [
        (500, "order_change", "issued")
    ]

    # The tenant's admins and the platform's operators hear of the dispute, once.
    admin_mail = await eventually(
        lambda: _subjects(sessions, admin), lambda found: any("disputed" in s for s in found)
    )
    operator_mail = await eventually(
        lambda: _subjects(sessions, operator), lambda found: any("Dispute" in s for s in found)
    )
    assert sum("disputed" in s for s in admin_mail) == 1
    assert sum("Dispute opened" in s for s in operator_mail) == 1
    actions = await _actions(sessions, admin.tenant_id)
    assert [a for a in actions if "refund" in a or "dispute" in a or "credit" in a] == [
        "billing.refund_recorded",
        "billing.refund_recorded",
        "billing.dispute_opened",
        "billing.dispute_updated",
        "billing.credit_note_issued",
    ]
    # Nothing of it changes the tenant's access.
    assert (await handle.query(BillingWorkflow.view)).status is BillingStatus.ACTIVE


# --- Plan changes at the period's end -----------------------------------------------------


async def _professional_tenant(
    client: Client,
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> tuple[Member, str, str, Billing]:
    """An active tenant moved up to the professional plan (a change made at once)."""
    admin, customer, subscription, handle = await _active_tenant(
        client, sessions, settings, localstripe, left_running
    )
    upgraded = await api.put(
        "/api/v1/billing/subscription/plan",
        json={"plan_id": "professional"},
        headers=admin.headers,
    )
    assert upgraded.status_code == 200, upgraded.text
    assert (upgraded.json()["plan"], upgraded.json()["scheduled_plan"]) == ("professional", None)
    return admin, customer, subscription, handle


async def _stripe_plan(localstripe: LocalStripe, subscription: str) -> str:
    async with localstripe.sdk() as sdk:
        found = await sdk.v1.subscriptions.retrieve_async(subscription)
    return str(found.to_dict()["plan"]["metadata"]["plan_id"])


async def _pending_items(localstripe: LocalStripe, customer: str) -> list[str]:
    """The customer's invoice items waiting for the next invoice (prorations, say)."""
    async with localstripe.sdk() as sdk:
        found = await sdk.v1.invoice_items.list_async(params={"customer": customer})
    return sorted(str(item.id) for item in found.data)


async def _reserved(sessions: SessionFactory, tenant_id: uuid.UUID) -> str | None:
    async with sessions() as session:
        tenant = await session.get(Tenant, tenant_id)
    assert tenant is not None
    return tenant.plan_reserved


@pytest.mark.usefixtures("ts_worker")
async def test_a_downgrade_waits_for_the_period_end_and_the_renewal_bills_it(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> None:
    client = time_skipping_env.client
    admin, customer, subscription, handle = await _professional_tenant(
        client, ts_api, sessions, billing_settings, localstripe, left_running
    )
    plan = "/api/v1/billing/subscription/plan"

    # The previews: a cheaper plan is billed at its price at the period's end, unprorated; a
    # dearer one now, with the unused time credited.
    down = await ts_api.post(f"{plan}/preview", json={"plan_id": "starter"}, headers=admin.headers)
    assert down.status_code == 200, down.text
    assert down.json()["amount_due"] == 2900
    assert [(line["amount"], line["proration"]) for line in down.json()["lines"]] == [(2900, False)]
    up = await ts_api.post(f"{plan}/preview", json={"plan_id": "business"}, headers=admin.headers)
    assert up.status_code == 200, up.text
    lines = up.json()["lines"]
    assert (19900, False) in [(line["amount"], line["proration"]) for line in lines]
    assert any(line["proration"] and line["amount"] < 0 for line in lines)
    assert up.json()["amount_due"] == sum(line["amount"] for line in lines)
    same = await ts_api.post(
        f"{plan}/preview", json={"plan_id": "professional"}, headers=admin.headers
    )
    assert same.status_code == 409

    # The downgrade is kept for the period's end: Stripe still bills professional, the tenant
    # is held to the starter plan's limits meanwhile.
    scheduled = await ts_api.put(plan, json={"plan_id": "starter"}, headers=admin.headers)
    assert scheduled.status_code == 200, scheduled.text
    view = scheduled.json()
    assert (view["plan"], view["scheduled_plan"]) == ("professional", "starter")
    period_end = datetime.fromisoformat(view["current_period_end"])
    assert datetime.fromisoformat(view["scheduled_plan_at"]) == period_end - timedelta(hours=1)
    again = await ts_api.put(
        plan, json={"plan_id": "starter", "effective": "period_end"}, headers=admin.headers
    )
    assert again.status_code == 409
    shown = (await ts_api.get("/api/v1/billing/subscription", headers=admin.headers)).json()
    assert (shown["plan"], shown["scheduled_plan"]) == ("professional", "starter")
    assert await _stripe_plan(localstripe, subscription) == "professional"
    assert await _reserved(sessions, admin.tenant_id) == "starter"

    # The period ends: Stripe moves to starter without crediting the unused time.
    pending = await _pending_items(localstripe, customer)
    await time_skipping_env.sleep(period_end - datetime.now(UTC))
    await eventually(
        lambda: _projection(sessions, admin.tenant_id),
        lambda row: row is not None and row.plan is PlanId.STARTER and row.scheduled_plan is None,
    )
    assert await _stripe_plan(localstripe, subscription) == "starter"
    assert await _pending_items(localstripe, customer) == pending  # nothing prorated
    view = (await handle.query(BillingWorkflow.view)).model_dump()
    assert (view["plan"], view["scheduled_plan"], view["status"]) == (
        PlanId.STARTER,
        None,
        BillingStatus.ACTIVE,
    )
    assert await _reserved(sessions, admin.tenant_id) is None
    assert await _actions(sessions, admin.tenant_id) == [
        "billing.provisioned",
        "billing.plan_changed",
        "billing.plan_change_scheduled",
        "billing.plan_changed",
    ]


@pytest.mark.usefixtures("ts_worker")
async def test_a_scheduled_downgrade_is_withdrawn_or_dropped_when_the_tenant_outgrows_it(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> None:
    client = time_skipping_env.client
    admin, _, subscription, _ = await _professional_tenant(
        client, ts_api, sessions, billing_settings, localstripe, left_running
    )
    plan = "/api/v1/billing/subscription/plan"
    scheduled = await ts_api.put(plan, json={"plan_id": "starter"}, headers=admin.headers)
    assert scheduled.json()["scheduled_plan"] == "starter", scheduled.text

    # Back to the current plan: the scheduled change and its hold are gone.
    withdrawn = await ts_api.put(plan, json={"plan_id": "professional"}, headers=admin.headers)
    assert withdrawn.status_code == 200, withdrawn.text
    assert (withdrawn.json()["plan"], withdrawn.json()["scheduled_plan"]) == ("professional", None)
    assert await _reserved(sessions, admin.tenant_id) is None
    row = await _projection(sessions, admin.tenant_id)
    assert row is not None
    assert row.scheduled_plan is None
    nothing = await ts_api.put(plan, json={"plan_id": "professional"}, headers=admin.headers)
    assert nothing.status_code == 409

    # Scheduled again; members added past the hold (an operator's import, say) outgrow it.
    scheduled = await ts_api.put(plan, json={"plan_id": "starter"}, headers=admin.headers)
    assert scheduled.status_code == 200, scheduled.text
    period_end = datetime.fromisoformat(scheduled.json()["current_period_end"])
    for _ in range(3):  # four members: more than the starter plan's three users
        await member(sessions, billing_settings, Role.USER, tenant_id=admin.tenant_id)
    await time_skipping_env.sleep(period_end - datetime.now(UTC))
    await eventually(
        lambda: _actions(sessions, admin.tenant_id),
        lambda actions: actions[-1] == "billing.plan_change_dropped",
    )
    assert await _stripe_plan(localstripe, subscription) == "professional"
    row = await _projection(sessions, admin.tenant_id)
    assert row is not None
    assert (row.plan, row.scheduled_plan) == (PlanId.PROFESSIONAL, None)
    assert await _reserved(sessions, admin.tenant_id) is None
    async with sessions() as session:
        dropped = await session.scalar(
            select(AuditEntry)
            .where(AuditEntry.tenant_id == admin.tenant_id)
            .order_by(AuditEntry.seq.desc())
            .limit(1)
        )
    assert dropped is not None
    assert dropped.data["reason"] == "uses more than it allows: users 4 (limit 3)"


# --- Seats --------------------------------------------------------------------------------


def _starter_per_seat() -> list[PlanSpec]:
    """The default catalogue with the starter plan priced per user ($12 a member)."""
    return [
        plan.model_copy(update={"amount": 1200, "per_seat": True})
        if plan.id is PlanId.STARTER
        else plan
        for plan in default_plans()
    ]


async def _seats_counted(env: WorkflowEnvironment, handle: Billing) -> int:
    """How often the workflow has counted the seats (its finished ``update_seats``
    activities), once the clock moved on past the settling time."""
    await env.sleep(timedelta(seconds=6))
    events = (await handle.fetch_history()).events
    counting = {
        event.event_id
        for event in events
        if event.activity_task_scheduled_event_attributes.activity_type.name == "update_seats"
    }
    return sum(
        event.activity_task_completed_event_attributes.scheduled_event_id in counting
        for event in events
    )


async def _stripe_quantity(localstripe: LocalStripe, subscription: str) -> int:
    async with localstripe.sdk() as sdk:
        found = await sdk.v1.subscriptions.retrieve_async(subscription)
    return int(found.to_dict()["items"]["data"][0]["quantity"])


@pytest.mark.parametrize("billing_overrides", [{"billing_plans": _starter_per_seat()}])
@pytest.mark.usefixtures("ts_worker")
async def test_a_plan_priced_per_user_bills_the_members_as_seats(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> None:
    client = time_skipping_env.client
    admin, _, subscription, handle = await _active_tenant(
        client, sessions, billing_settings, localstripe, left_running
    )
    assert await _stripe_quantity(localstripe, subscription) == 1
    assert (await handle.query(BillingWorkflow.view)).seats == 1

    counts = 0

    async def counted() -> None:
        """Move the clock on until the workflow has counted the members once more."""
        nonlocal counts
        counts = await eventually(
            lambda: _seats_counted(time_skipping_env, handle), lambda n: n > counts
        )

    # Invited and removed through the API: the seats follow, a moment later.
    invited = await ts_api.post(
        "/api/v1/users",
        json={"email": f"seat-{uuid.uuid4().hex[:8]}@example.com", "full_name": "Seat Holder"},
        headers=admin.headers,
    )
    assert invited.status_code == 201, invited.text
    await counted()
    assert await _stripe_quantity(localstripe, subscription) == 2
    removed = await ts_api.delete(
        f"/api/v1/users/{invited.json()['user_id']}", headers=admin.headers
    )
    assert removed.status_code == 204, removed.text
    await counted()
    assert await _stripe_quantity(localstripe, subscription) == 1

    # Two members join at once: one count for both.
    for _ in range(2):
        await member(sessions, billing_settings, Role.USER, tenant_id=admin.tenant_id)
    await count_seats_again(client, admin.tenant_id)
    await count_seats_again(client, admin.tenant_id)
    await counted()
    view = await handle.query(BillingWorkflow.view)
    assert (view.plan, view.seats) == (PlanId.STARTER, 3)
    assert await _stripe_quantity(localstripe, subscription) == 3
    shown = await ts_api.get("/api/v1/billing/subscription", headers=admin.headers)
    assert shown.json()["seats"] == 3
    # The preview of a flat plan bills one; a change to it makes the quantity one.
    preview = await ts_api.post(
        "/api/v1/billing/subscription/plan/preview",
        json={"plan_id": "professional"},
        headers=admin.headers,
    )
    assert preview.status_code == 200, preview.text
    assert (7900, False) in [
        (line["amount"], line["proration"]) for line in preview.json()["lines"]
    ]
    upgraded = await ts_api.put(
        "/api/v1/billing/subscription/plan",
        json={"plan_id": "professional"},
        headers=admin.headers,
    )
    assert upgraded.status_code == 200, upgraded.text
    assert upgraded.json()["seats"] == 1
    assert await _stripe_quantity(localstripe, subscription) == 1
    # Members counted again on a flat plan change nothing at Stripe.
    await count_seats_again(client, admin.tenant_id)
    await counted()
    assert await _stripe_quantity(localstripe, subscription) == 1
    assert await _actions(sessions, admin.tenant_id) == [
        "billing.provisioned",
        "billing.seats_changed",
        "billing.seats_changed",
        "billing.seats_changed",
        "billing.plan_changed",
    ]


async def test_news_of_members_for_a_tenant_without_billing_is_nothing(
    time_skipping_env: WorkflowEnvironment,
) -> None:
    await count_seats_again(time_skipping_env.client, uuid.uuid4())


# --- Annual prices ------------------------------------------------------------------------


async def _stripe_price(localstripe: LocalStripe, subscription: str) -> tuple[str, int, str]:
    """The subscription's plan, amount and interval, as Stripe has them."""
    async with localstripe.sdk() as sdk:
        found = (await sdk.v1.subscriptions.retrieve_async(subscription)).to_dict()
    plan = found["items"]["data"][0]["plan"]
    return str(plan["metadata"]["plan_id"]), int(plan["amount"]), str(plan["interval"])


@pytest.mark.usefixtures("ts_worker")
async def test_a_tenant_moves_to_the_annual_price_and_back_at_the_period_end(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
    left_running: list[str],
) -> None:
    admin, _, subscription, _ = await _active_tenant(
        time_skipping_env.client, sessions, billing_settings, localstripe, left_running
    )
    plan = "/api/v1/billing/subscription/plan"
    yearly = {"plan_id": "starter", "interval": "year"}

    preview = await ts_api.post(f"{plan}/preview", json=yearly, headers=admin.headers)
    assert preview.status_code == 200, preview.text
    assert (29000, False) in [
        (line["amount"], line["proration"]) for line in preview.json()["lines"]
    ]
    # The annual price is bought at once; the view and the projection say so.
    annual = await ts_api.put(plan, json=yearly, headers=admin.headers)
    assert annual.status_code == 200, annual.text
    assert (annual.json()["plan"], annual.json()["interval"]) == ("starter", "year")
    assert await _stripe_price(localstripe, subscription) == ("starter", 29000, "year")
    shown = (await ts_api.get("/api/v1/billing/subscription", headers=admin.headers)).json()
    assert shown["interval"] == "year"
    same = await ts_api.put(plan, json=yearly, headers=admin.headers)
    assert same.status_code == 409

    # Back to monthly waits for the paid year's end; a plan change keeps the interval.
    monthly = await ts_api.put(
        plan, json={"plan_id": "starter", "interval": "month"}, headers=admin.headers
    )
    assert monthly.status_code == 200, monthly.text
    view = monthly.json()
    assert (view["interval"], view["scheduled_plan"], view["scheduled_interval"]) == (
        "year",
        "starter",
        "month",
    )
    up = await ts_api.put(plan, json={"plan_id": "professional"}, headers=admin.headers)
    assert up.status_code == 200, up.text
    assert (up.json()["interval"], up.json()["scheduled_plan"]) == ("year", None)
    assert await _stripe_price(localstripe, subscription) == ("professional", 79000, "year")

    # A plan not sold by the year is refused before anything is asked of Stripe.
    unsold = await ts_api.put(
        plan, json={"plan_id": "starter", "interval": "week"}, headers=admin.headers
    )
    assert unsold.status_code == 422
