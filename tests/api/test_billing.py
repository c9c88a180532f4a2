"""Billing through the HTTP API on the dev server: Stripe's webhooks (delivered by localstripe,
or signed here as Stripe signs them), the subscription, its changes, invoices and usage."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import APIRouter, FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
)
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.billing import (
    BillingActivities,
    signal_billing,
    usage_schedule_id,
    workflow_id,
)
from api import problems
from api.app import create_app
from api.billing_guard import WritableTenant, read_only_guard
from connectors.billing.stripe_gateway import stripe_gateway
from connectors.mail import mailer_from_settings
from connectors.storage import LocalStorage, storage_from_settings
from core.db import SessionFactory, transaction
from core.settings import Settings
from models.audit import AuditEntry
from models.billing import (
    BillingStatus,
    Invoice,
    PaymentMethodSetup,
    ProvisionRequest,
    StripeEvent,
    StripeEventStatus,
    Subscription,
    UsageEvent,
    UsageMetric,
    UsageRecord,
    UsageReport,
)
from models.onboarding import PlanId
from models.tenant import Tenant, TenantStatus
from models.user import Role
from tests.conftest import free_port
from tests.factories import Member, member
from tests.history import decoded_history
from tests.peers_stripe import (
    WEBHOOK_SECRET,
    LocalStripe,
    MeterRecorder,
    card_holder,
    confirm_card_setup,
    pay,
    signed,
    stripe_event,
    unpaid_invoice,
)
from tests.polling import eventually
from workers.main import build_worker
from workflows.billing import BillingWorkflow, UsageReportWorkflow

pytest_plugins = ["tests.peers_stripe"]

WEBHOOK = "/api/v1/billing/webhooks/stripe"


@pytest.fixture
def settings(settings: Settings, localstripe: LocalStripe) -> Settings:
    """The test settings, billing through localstripe, without a trial."""
    return localstripe.settings(settings).model_copy(update={"billing_trial_days": 0})


async def _projection(sessions: SessionFactory, tenant_id: uuid.UUID) -> Subscription | None:
    async with sessions() as session:
        return await session.scalar(select(Subscription).where(Subscription.tenant_id == tenant_id))


async def _billed(
    sessions: SessionFactory, tenant_id: uuid.UUID, status: BillingStatus
) -> Subscription:
    row = await eventually(
        lambda: _projection(sessions, tenant_id),
        lambda row: row is not None and row.status is status,
    )
    assert row is not None
    return row


# Long on both backends: PostgreSQL by default (SQLite when it does not answer), both with
# --slow.
pytestmark = pytest.mark.one_database


async def _subscribed(
    client: Client, settings: Settings, sessions: SessionFactory, localstripe: LocalStripe
) -> tuple[Member, str, Subscription]:
    """An admin of a tenant provisioned on the starter plan, paying by card."""
    admin = await member(sessions, settings)
    async with localstripe.sdk() as sdk:
        customer = await card_holder(sdk, admin.tenant_id, admin.email)
    request = ProvisionRequest(
        tenant_id=admin.tenant_id, plan=PlanId.STARTER, idempotency_key="approval"
    )
    await signal_billing(client, settings, admin.tenant_id, "provision", request)
    return admin, customer, await _billed(sessions, admin.tenant_id, BillingStatus.ACTIVE)


async def _post(api: httpx.AsyncClient, payload: dict[str, Any]) -> httpx.Response:
    body, headers = signed(payload)
    return await api.post(WEBHOOK, content=body, headers=headers)


async def _inbox(sessions: SessionFactory, event_ids: list[str]) -> list[StripeEvent]:
    async with sessions() as session:
        rows = await session.scalars(select(StripeEvent).where(StripeEvent.id.in_(event_ids)))
        return list(rows)


async def _invoices(sessions: SessionFactory, tenant_id: uuid.UUID) -> list[Invoice]:
    async with sessions() as session:
        rows = await session.scalars(select(Invoice).where(Invoice.tenant_id == tenant_id))
        return list(rows)


async def _actions(sessions: SessionFactory, tenant_id: uuid.UUID) -> list[str]:
    async with sessions() as session:
        rows = await session.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.tenant_id == tenant_id, AuditEntry.action.startswith("billing."))
            .order_by(AuditEntry.seq)
        )
        return list(rows)


# --- Webhooks -----------------------------------------------------------------------------


async def test_bad_signatures_are_refused_and_nothing_is_stored(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    payload = stripe_event("invoice.paid", {"id": "in_x", "customer": "cus_x"}, int(time.time()))
    body, headers = signed(payload)
    stale_body, stale = signed(payload, at=int(time.time()) - 301)
    _, foreign = signed(payload, secret="whsec_someone_else")
    attempts = [
        (body.replace(b"in_x", b"in_y"), headers),  # tampered body
        (body, foreign),  # signed with another secret
        (stale_body, stale),  # older than the 300 s tolerance
        (body, {"Content-Type": "application/json"}),  # unsigned
        (b"not json", signed({"id": "x"})[1]),
    ]
    for content, sent_headers in attempts:
        response = await api.post(WEBHOOK, content=content, headers=sent_headers)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("webhook-rejected")
    assert await _inbox(sessions, [payload["id"]]) == []


def _raw_signed(body: bytes) -> tuple[bytes, dict[str, str]]:
    """Any body, signed correctly (what a compromised or buggy sender could post)."""
    timestamp = int(time.time())
    digest = hmac.new(WEBHOOK_SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return body, {
        "Content-Type": "application/json",
        "Stripe-Signature": f"t={timestamp},v1={digest.hexdigest()}",
    }


async def test_malformed_but_signed_bodies_are_refused_not_errors(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    now = int(time.time())
    customer = {"id": "in_m", "customer": "cus_m", "status": "open"}
    events = [
        stripe_event("invoice.paid", customer, now) | {"data": ["not", "an", "object"]},
        stripe_event("invoice.paid", customer, now) | {"data": {"object": "in_m"}},
        stripe_event("invoice.paid", customer, now * 1000),  # milliseconds
        stripe_event("invoice.paid", customer, 10**30),  # beyond any date
        stripe_event("invoice.paid", customer, now + 3600),  # from the future
        stripe_event("invoice.paid", customer, now) | {"created": "yesterday"},
        stripe_event("invoice.paid", customer, now) | {"type": ["invoice.paid"]},
        stripe_event("invoice.paid", {"id": "in_m", "customer": ["cus_m"]}, now),
        stripe_event("invoice.paid", customer | {"amount_due": "lots"}, now),
        stripe_event("setup_intent.succeeded", {"id": "seti_1", "customer": "cus_m"}, now),
    ]
    bodies = [json.dumps(event).encode() for event in events] + [
        b'["an", "array"]',
        b'"a string"',
        b"[" * 100_000 + b"]" * 100_000,  # nested deeper than any parser allows
        b'{"id": 1, "type": "invoice.paid", "created": 1, "data": {"object": {}}}',
    ]
    for body in bodies:
        content, headers = _raw_signed(body)
        response = await api.post(WEBHOOK, content=content, headers=headers)
        assert response.status_code == 400, (body[:80], response.status_code, response.text)
        assert response.json()["type"].endswith("webhook-rejected")
    assert await _inbox(sessions, [event["id"] for event in events]) == []


async def test_unknown_types_and_strangers_are_recorded_and_ignored(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    now = int(time.time())
    unknown = stripe_event("charge.captured", {"id": "ch_1"}, now)
    stranger = stripe_event(
        "invoice.payment_failed",
        {"id": "in_1", "customer": f"cus_{uuid.uuid4().hex[:12]}", "status": "open"},
        now,
    )
    assert (await _post(api, unknown)).json() == {
        "received": True,
        "duplicate": False,
        "status": "ignored",
    }
    assert (await _post(api, stranger)).json()["status"] == "unmatched"
    assert (await _post(api, unknown)).json()["duplicate"] is True
    rows = await _inbox(sessions, [unknown["id"], stranger["id"]])
    assert {(row.type, row.status, row.tenant_id) for row in rows} == {
        ("charge.captured", StripeEventStatus.IGNORED, None),
        ("invoice.payment_failed", StripeEventStatus.UNMATCHED, None),
    }


def _trialing(tenant_id: uuid.UUID, now: int) -> dict[str, Any]:
    """A new trialing subscription on the business plan, as Stripe shows it."""
    return {
        "id": f"sub_{uuid.uuid4().hex[:14]}",
        "object": "subscription",
        "customer": f"cus_{uuid.uuid4().hex[:14]}",
        "status": "trialing",
        "trial_end": now + 14 * 86_400,
        "cancel_at_period_end": False,
        "metadata": {"tenant_id": str(tenant_id)},
        "items": {
            "object": "list",
            "data": [
                {
                    "id": "si_1",
                    "current_period_start": now,
                    "current_period_end": now + 30 * 86_400,
                    "price": {"id": "price_1", "metadata": {"plan_id": "business"}},
                }
            ],
        },
    }


async def test_an_event_for_a_tenant_without_a_billing_workflow_starts_it(
    api: httpx.AsyncClient, temporal_client: Client, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    now = int(time.time())
    subscription = _trialing(admin.tenant_id, now)
    response = await _post(api, stripe_event("customer.subscription.created", subscription, now))
    assert response.json()["status"] == "delivered"
    row = await _billed(sessions, admin.tenant_id, BillingStatus.TRIALING)
    assert (row.plan, row.stripe_subscription_id) == (PlanId.BUSINESS, subscription["id"])
    handle = temporal_client.get_workflow_handle_for(
        BillingWorkflow.run, workflow_id(admin.tenant_id)
    )
    assert (await handle.query(BillingWorkflow.view)).plan is PlanId.BUSINESS


async def test_unmatched_events_are_delivered_once_their_tenant_is_known(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    replay = "/api/v1/billing/events/unmatched/replay"
    staff = await member(sessions, settings, Role.SUPER_ADMIN)
    now = int(time.time())
    # Stripe's event about a tenant whose row is not committed yet, and one about a stranger.
    tenant_id = uuid.uuid4()
    early = stripe_event("customer.subscription.created", _trialing(tenant_id, now), now)
    stranger = stripe_event(
        "invoice.payment_failed",
        {"id": "in_2", "customer": f"cus_{uuid.uuid4().hex[:12]}", "status": "open"},
        now,
    )
    for event in (early, stranger):
        assert (await _post(api, event)).json()["status"] == "unmatched"
    async with transaction(sessions) as session:
        session.add(Tenant(id=tenant_id, name="Late Ltd", slug=f"late-{tenant_id.hex[:8]}"))
    admin = await member(sessions, settings, tenant_id=tenant_id)
    assert (await api.post(replay, headers=admin.headers)).status_code == 403

    response = await api.post(replay, headers=staff.headers)
    assert response.status_code == 200, response.text
    assert early["id"] in response.json()["delivered"]
    assert stranger["id"] not in response.json()["delivered"]
    assert response.json()["unmatched"] >= 1
    row = await _billed(sessions, tenant_id, BillingStatus.TRIALING)
    assert row.plan is PlanId.BUSINESS
    rows = {row.id: row for row in await _inbox(sessions, [early["id"], stranger["id"]])}
    assert (rows[early["id"]].status, rows[early["id"]].tenant_id) == (
        StripeEventStatus.DELIVERED,
        tenant_id,
    )
    assert rows[stranger["id"]].status is StripeEventStatus.UNMATCHED
    # Again: nothing more is delivered.
    again = await api.post(replay, headers=staff.headers)
    assert early["id"] not in again.json()["delivered"]
    assert (await _actions(sessions, tenant_id)).count("billing.event_replayed") == 1


async def test_every_event_three_times_shuffled_has_one_effect_each(
    api: httpx.AsyncClient,
    temporal_client: Client,
    settings: Settings,
    sessions: SessionFactory,
    localstripe: LocalStripe,
) -> None:
    admin, customer, row = await _subscribed(temporal_client, settings, sessions, localstripe)
    subscription_id = str(row.stripe_subscription_id)
    async with localstripe.sdk() as sdk:
        invoice_id = await unpaid_invoice(sdk, customer, subscription_id)
        unpaid = (await sdk.v1.invoices.retrieve_async(invoice_id)).to_dict()
        paid = await pay(sdk, customer, invoice_id)
        subscription = (await sdk.v1.subscriptions.retrieve_async(subscription_id)).to_dict()
    t = int(time.time()) + 5  # newer than what provisioning read
    events = [
        stripe_event("invoice.created", unpaid | {"status": "draft"}, t),
        stripe_event("invoice.payment_failed", unpaid, t + 1),
        stripe_event("customer.subscription.updated", subscription | {"status": "past_due"}, t + 1),
        stripe_event("invoice.payment_succeeded", paid, t + 2),
        stripe_event("invoice.paid", paid, t + 2),
        stripe_event("customer.subscription.updated", subscription | {"status": "active"}, t + 3),
    ]
    deliveries = [event for event in events for _ in range(3)]
    random.Random(2).shuffle(deliveries)  # an order that enters and leaves a lapse
    duplicates = 0
    for event in deliveries:
        response = await _post(api, event)
        assert response.status_code == 200, response.text
        duplicates += response.json()["duplicate"]
    assert duplicates == 2 * len(events)

    ids = [event["id"] for event in events]
    rows = await eventually(
        lambda: _inbox(sessions, ids),
        lambda rows: (
            len(rows) == len(events) and all(r.status is StripeEventStatus.DELIVERED for r in rows)
        ),
    )
    assert {r.tenant_id for r in rows} == {admin.tenant_id}
    (invoice,) = await eventually(
        lambda: _invoices(sessions, admin.tenant_id),
        lambda found: [i.status for i in found] == ["paid"],
    )
    assert (invoice.stripe_invoice_id, invoice.amount_paid) == (invoice_id, paid["amount_paid"])

    final = await _billed(sessions, admin.tenant_id, BillingStatus.ACTIVE)
    assert final.grace_ends_at is None
    view = (await api.get("/api/v1/billing/subscription", headers=admin.headers)).json()
    assert (view["status"], view["plan"]) == ("active", "starter")
    actions = await _actions(sessions, admin.tenant_id)
    # Whatever the order, a lapse is entered and left at most once, and the tenant ends active.
    assert actions.count("billing.payment_failed") == actions.count("billing.reactivated") <= 1
    async with sessions() as session:
        tenant = await session.get(Tenant, admin.tenant_id)
    assert tenant is not None
    assert tenant.status is TenantStatus.ACTIVE


# --- localstripe delivering to the running API --------------------------------------------


@pytest.fixture
async def served_api(
    settings: Settings, temporal_env: WorkflowEnvironment, engine: AsyncEngine, worker: Worker
) -> AsyncIterator[str]:
    """The app served by uvicorn on a loopback port, for a peer that needs a real URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, temporal_env.client, engine),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
        )
    )
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: asyncio.sleep(0.02, server.started), bool)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await serving


async def test_localstripe_delivers_signed_events_that_reach_the_workflow(
    served_api: str,
    temporal_client: Client,
    settings: Settings,
    sessions: SessionFactory,
    localstripe: LocalStripe,
) -> None:
    await localstripe.send_webhooks_to(served_api + WEBHOOK, WEBHOOK_SECRET)
    admin, customer, row = await _subscribed(temporal_client, settings, sessions, localstripe)

    # The first invoice of the subscription, paid through the SDK at creation, arrives as
    # localstripe's own webhooks (signed with the shared secret, a second later, in any order).
    async def delivered() -> list[StripeEvent]:
        async with sessions() as session:
            found = await session.scalars(
                select(StripeEvent).where(StripeEvent.tenant_id == admin.tenant_id)
            )
            return list(found)

    rows = await eventually(
        delivered,
        lambda rows: (
            {"customer.subscription.created", "invoice.payment_succeeded"} <= {r.type for r in rows}
            and all(r.status is StripeEventStatus.DELIVERED for r in rows)
        ),
    )
    assert {r.tenant_id for r in rows} == {admin.tenant_id}
    await eventually(
        lambda: _invoices(sessions, admin.tenant_id),
        lambda found: [i.status for i in found] == ["paid"],
    )
    async with httpx.AsyncClient(base_url=served_api) as http:
        listed = (await http.get("/api/v1/billing/invoices", headers=admin.headers)).json()
    assert [(i["status"], i["amount_paid"], i["currency"]) for i in listed["items"]] == [
        ("paid", 2900, "usd")
    ]
    assert listed["next_cursor"] is None

    # The usage Schedule was created with the subscription; an empty run reports nothing.
    schedule = temporal_client.get_schedule_handle(usage_schedule_id(admin.tenant_id))
    described = await schedule.describe()
    assert isinstance(described.schedule.action, ScheduleActionStartWorkflow)
    assert described.schedule.action.workflow == "UsageReportWorkflow"
    await schedule.trigger()
    described = await eventually(schedule.describe, lambda found: bool(found.info.recent_actions))
    started = described.info.recent_actions[0].action
    assert isinstance(started, ScheduleActionExecutionStartWorkflow)
    assert await temporal_client.get_workflow_handle(started.workflow_id).result() == 0
    assert customer == row.stripe_customer_id


# --- Changes to the subscription ----------------------------------------------------------


async def test_plan_change_refuses_a_downgrade_below_usage(
    api: httpx.AsyncClient,
    temporal_client: Client,
    settings: Settings,
    sessions: SessionFactory,
    localstripe: LocalStripe,
) -> None:
    admin, _, row = await _subscribed(temporal_client, settings, sessions, localstripe)
    plan = "/api/v1/billing/subscription/plan"

    upgraded = await api.put(plan, json={"plan_id": "professional"}, headers=admin.headers)
    assert upgraded.status_code == 200, upgraded.text
    assert upgraded.json()["plan"] == "professional"
    async with localstripe.sdk() as sdk:
        in_stripe = await sdk.v1.subscriptions.retrieve_async(str(row.stripe_subscription_id))
    assert in_stripe.to_dict()["plan"]["metadata"]["plan_id"] == "professional"
    async with sessions() as session:
        tenant = await session.get(Tenant, admin.tenant_id)
    assert tenant is not None
    assert (tenant.plan, tenant.plan_reserved) == ("professional", None)  # recorded: not held

    same = await api.put(plan, json={"plan_id": "professional"}, headers=admin.headers)
    assert same.status_code == 409
    unknown = await api.put(plan, json={"plan_id": "platinum"}, headers=admin.headers)
    assert unknown.status_code == 422

    for _ in range(3):  # four members: more than the starter plan's three users
        await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    refused = await api.put(plan, json={"plan_id": "starter"}, headers=admin.headers)
    assert refused.status_code == 409, refused.text
    assert refused.json()["excesses"] == [{"resource": "users", "used": 4, "limit": 3}]
    unchanged = await _projection(sessions, admin.tenant_id)
    assert unchanged is not None
    assert unchanged.plan is PlanId.PROFESSIONAL

    user = await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    forbidden = await api.put(plan, json={"plan_id": "business"}, headers=user.headers)
    assert forbidden.status_code == 403
    assert await _actions(sessions, admin.tenant_id) == [
        "billing.provisioned",
        "billing.plan_changed",
    ]


async def test_a_change_stripe_refuses_is_a_bad_gateway_and_changes_nothing(
    api: httpx.AsyncClient,
    temporal_client: Client,
    settings: Settings,
    sessions: SessionFactory,
    localstripe: LocalStripe,
) -> None:
    admin, _, _ = await _subscribed(temporal_client, settings, sessions, localstripe)
    await localstripe.reset()  # Stripe no longer knows the subscription
    response = await api.put(
        "/api/v1/billing/subscription/plan", json={"plan_id": "business"}, headers=admin.headers
    )
    assert response.status_code == 502, response.text
    assert response.json()["type"].endswith("payment-provider-refused")
    row = await _projection(sessions, admin.tenant_id)
    assert row is not None
    assert row.plan is PlanId.STARTER
    assert await _actions(sessions, admin.tenant_id) == ["billing.provisioned"]


async def test_cancel_at_period_end_and_resume(
    api: httpx.AsyncClient,
    temporal_client: Client,
    settings: Settings,
    sessions: SessionFactory,
    localstripe: LocalStripe,
) -> None:
    admin, _, row = await _subscribed(temporal_client, settings, sessions, localstripe)
    cancelled = await api.post("/api/v1/billing/subscription/cancel", headers=admin.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["cancel_at_period_end"] is True
    again = await api.post("/api/v1/billing/subscription/cancel", headers=admin.headers)
    assert again.status_code == 409
    view = (await api.get("/api/v1/billing/subscription", headers=admin.headers)).json()
    assert view["cancel_at_period_end"] is True
    assert view["current_period_end"] is not None

    resumed = await api.post("/api/v1/billing/subscription/resume", headers=admin.headers)
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["cancel_at_period_end"] is False
    async with localstripe.sdk() as sdk:
        in_stripe = await sdk.v1.subscriptions.retrieve_async(str(row.stripe_subscription_id))
    assert in_stripe.cancel_at_period_end is False
    assert await _actions(sessions, admin.tenant_id) == [
        "billing.provisioned",
        "billing.cancellation_scheduled",
        "billing.renewal_resumed",
    ]


async def test_a_retried_change_with_its_idempotency_key_has_one_effect(
    api: httpx.AsyncClient,
    temporal_client: Client,
    settings: Settings,
    sessions: SessionFactory,
    localstripe: LocalStripe,
) -> None:
    admin, _, _ = await _subscribed(temporal_client, settings, sessions, localstripe)
    headers = admin.headers | {"Idempotency-Key": "cancel-7f3a"}
    first = await api.post("/api/v1/billing/subscription/cancel", headers=headers)
    assert first.status_code == 200, first.text
    # The client lost the answer and retries: the same answer, nothing more happens.
    retried = await api.post("/api/v1/billing/subscription/cancel", headers=headers)
    assert retried.status_code == 200, retried.text
    assert retried.json() == first.json()
    # The same key on another action is another request.
    other = await api.post("/api/v1/billing/subscription/resume", headers=headers)
    assert other.status_code == 200, other.text
    assert await _actions(sessions, admin.tenant_id) == [
        "billing.provisioned",
        "billing.cancellation_scheduled",
        "billing.renewal_resumed",
    ]


async def test_reads_before_billing_exists(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    missing = await api.get("/api/v1/billing/subscription", headers=admin.headers)
    assert missing.status_code == 404
    change = await api.put(
        "/api/v1/billing/subscription/plan", json={"plan_id": "business"}, headers=admin.headers
    )
    assert change.status_code == 404
    assert (await api.get("/api/v1/billing/invoices", headers=admin.headers)).json() == {
        "items": [],
        "next_cursor": None,
    }
    plans = (await api.get("/api/v1/billing/plans", headers=admin.headers)).json()
    assert [(p["id"], p["amount"], p["limits"]["users"]) for p in plans] == [
        ("starter", 2900, 3),
        ("professional", 7900, 10),
        ("business", 19900, 50),
        ("enterprise", 49900, None),
    ]
    bad_cursor = await api.get("/api/v1/billing/invoices?cursor=xyz", headers=admin.headers)
    assert bad_cursor.status_code == 422


# --- Usage metering -----------------------------------------------------------------------


async def test_usage_is_recorded_once_and_reported_once(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    settings: Settings,
    meter_recorder: MeterRecorder,
) -> None:
    admin = await member(sessions, settings)
    customer = f"cus_{uuid.uuid4().hex[:12]}"
    async with transaction(sessions) as session:
        session.add(Subscription(tenant_id=admin.tenant_id, stripe_customer_id=customer))
    now = datetime.now(UTC)
    runs = [_use(admin, UsageMetric.WORKFLOW_RUNS, 1, now, f"run-{n}") for n in range(3)]
    sizes = [_use(admin, UsageMetric.STORAGE_BYTES, size, now, f"size-{size}") for size in (5, 8)]
    metering = BillingActivities(
        sessions,
        mailer_from_settings(settings, sessions),
        settings,
        partial(stripe_gateway, meter_recorder.settings(settings)),
    )
    env = ActivityEnvironment()
    assert [await env.run(metering.record_usage, r) for r in runs + sizes] == [True] * 5
    assert await env.run(metering.record_usage, runs[0]) is False  # the same key: once

    usage = (await api.get("/api/v1/billing/usage", headers=admin.headers)).json()
    assert usage["usage"] == _no_usage() | {"workflow_runs": 3, "storage_bytes": 8}

    assert await env.run(metering.report_usage, admin.tenant_id) == 2
    sent = {r["event_name"]: r for r in meter_recorder.received}
    assert sent["bizosaas_workflow_runs"]["payload[value]"] == "3"  # counters: summed
    assert sent["bizosaas_storage_bytes"]["payload[value]"] == "8"  # gauges: the latest
    assert {r["payload[stripe_customer_id]"] for r in sent.values()} == {customer}
    assert all(r["identifier"] == r["idempotency-key"] for r in sent.values())
    assert await env.run(metering.report_usage, admin.tenant_id) == 0  # nothing new

    # A report whose sending was not recorded (a crash) goes again under its identifier.
    async with transaction(sessions) as session:
        report = await session.scalar(
            select(UsageReport).where(
                UsageReport.tenant_id == admin.tenant_id,
                UsageReport.metric == UsageMetric.WORKFLOW_RUNS,
            )
        )
        assert report is not None
        report.sent_at = None
    await env.run(metering.record_usage, _use(admin, UsageMetric.WORKFLOW_RUNS, 2, now, "run-9"))
    assert await env.run(metering.report_usage, admin.tenant_id) == 2
    resent, fresh = meter_recorder.received[-2:]
    assert (resent["identifier"], resent["payload[value]"]) == (report.id, "3")
    assert fresh["payload[value]"] == "2"
    async with sessions() as session:
        unreported = await session.scalar(
            select(func.count())
            .select_from(UsageEvent)
            .where(UsageEvent.tenant_id == admin.tenant_id, UsageEvent.report_id.is_(None))
        )
    assert unreported == 0


async def test_a_service_account_records_usage_once_per_key_for_its_own_tenant(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    settings: Settings,
    meter_recorder: MeterRecorder,
) -> None:
    service = await member(sessions, settings, Role.SERVICE_ACCOUNT)
    other = await member(sessions, settings, Role.SERVICE_ACCOUNT)
    route = "/api/v1/billing/usage"
    use = {"metric": "workflow_runs", "quantity": 4}
    keyed = service.headers | {"Idempotency-Key": "run-batch-1"}

    first = await api.post(route, json=use, headers=keyed)
    assert first.status_code == 201, first.text
    assert (first.json()["quantity"], first.json()["duplicate"]) == (4, False)
    retried = await api.post(route, json=use, headers=keyed)
    assert retried.status_code == 200, retried.text
    assert retried.json() == first.json() | {"duplicate": True}
    reused = await api.post(route, json=use | {"quantity": 5}, headers=keyed)
    assert reused.status_code == 422, reused.text
    # The same key in another tenant is that tenant's own use; a body naming a tenant is refused.
    theirs = other.headers | {"Idempotency-Key": "run-batch-1"}
    assert (await api.post(route, json=use, headers=theirs)).status_code == 201
    foreign = use | {"tenant_id": str(service.tenant_id)}
    assert (await api.post(route, json=foreign, headers=theirs)).status_code == 422

    now = datetime.now(UTC)
    refused = [
        {"metric": "coffee_cups", "quantity": 1},
        {"metric": "workflow_runs", "quantity": -1},
        {"metric": "workflow_runs", "quantity": "5"},
        {"metric": "workflow_runs", "quantity": 1.5},
        {"metric": "workflow_runs", "quantity": True},
        {"metric": "workflow_runs", "quantity": 2**60},
        {"metric": "workflow_runs"},
        {"metric": "workflow_runs", "quantity": 1, "occurred_at": "2020-01-01T00:00:00"},
        {"metric": "workflow_runs", "quantity": 1, "occurred_at": "2020-01-01T00:00:00Z"},
        {"metric": "workflow_runs", "quantity": 1, "occurred_at": f"{now.year + 1}-01-01T00:00Z"},
    ]
    for n, body in enumerate(refused):
        headers = service.headers | {"Idempotency-Key": f"bad-{n}"}
        response = await api.post(route, json=body, headers=headers)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    unkeyed = await api.post(route, json=use, headers=service.headers)
    assert unkeyed.status_code == 422, unkeyed.text
    for role in (Role.USER, Role.READONLY, Role.AGENT):
        someone = await member(sessions, settings, role, tenant_id=service.tenant_id)
        headers = someone.headers | {"Idempotency-Key": f"{role.value}-1"}
        assert (await api.post(route, json=use, headers=headers)).status_code == 403

    # A tenant admin records too; the gauge keeps its latest measurement.
    admin = await member(sessions, settings, tenant_id=service.tenant_id)
    for n, size in enumerate((700, 900)):
        headers = admin.headers | {"Idempotency-Key": f"size-{n}"}
        sized = {"metric": "storage_bytes", "quantity": size, "occurred_at": now.isoformat()}
        assert (await api.post(route, json=sized, headers=headers)).status_code == 201
    usage = (await api.get("/api/v1/billing/usage", headers=admin.headers)).json()
    assert usage["usage"] == _no_usage() | {"workflow_runs": 4, "storage_bytes": 900}
    async with sessions() as session:
        counted = await session.scalar(
            select(func.count())
            .select_from(UsageEvent)
            .where(UsageEvent.tenant_id.in_([service.tenant_id, other.tenant_id]))
        )
    assert counted == 4  # two tenants' runs and two measurements; nothing refused was kept

    # What the API recorded is what the hourly report sends to the tenant's meters.
    customer = f"cus_{uuid.uuid4().hex[:12]}"
    async with transaction(sessions) as session:
        session.add(Subscription(tenant_id=service.tenant_id, stripe_customer_id=customer))
    metering = BillingActivities(
        sessions,
        mailer_from_settings(settings, sessions),
        settings,
        partial(stripe_gateway, meter_recorder.settings(settings)),
    )
    assert await ActivityEnvironment().run(metering.report_usage, service.tenant_id) == 2
    sent = {r["event_name"]: r["payload[value]"] for r in meter_recorder.received}
    assert sent == {"bizosaas_workflow_runs": "4", "bizosaas_storage_bytes": "900"}


def _no_usage() -> dict[str, int]:
    """Every metric at zero (the usage view lists them all)."""
    return {metric.value: 0 for metric in UsageMetric}


def _use(
    someone: Member, metric: UsageMetric, quantity: int, at: datetime, key: str
) -> UsageRecord:
    return UsageRecord(
        tenant_id=someone.tenant_id,
        metric=metric,
        quantity=quantity,
        occurred_at=at,
        idempotency_key=f"{someone.tenant_id}:{key}",
    )


# --- The read-only guard ------------------------------------------------------------------


async def test_a_suspended_tenant_reads_but_does_not_write(
    sessions: SessionFactory, settings: Settings
) -> None:
    router = APIRouter(dependencies=[read_only_guard])

    @router.get("/things")
    async def read_things() -> dict[str, bool]:
        return {"ok": True}

    @router.post("/things")
    async def write_things() -> dict[str, bool]:
        return {"ok": True}

    @router.put("/own")
    async def write_own(_: WritableTenant) -> dict[str, bool]:
        return {"ok": True}

    app = FastAPI()
    app.state.settings, app.state.sessions = settings, sessions
    problems.install(app)
    app.include_router(router)
    admin = await member(sessions, settings)
    staff = await member(sessions, settings, Role.SUPER_ADMIN, status=TenantStatus.SUSPENDED)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        for status, refusal in (
            (TenantStatus.ACTIVE, None),
            (TenantStatus.SUSPENDED, "tenant-suspended"),
            (TenantStatus.CANCELLED, "tenant-cancelled"),
        ):
            async with transaction(sessions) as session:
                tenant = await session.get(Tenant, admin.tenant_id)
                assert tenant is not None
                tenant.status = status
            assert (await http.get("/things", headers=admin.headers)).status_code == 200
            for response in (
                await http.post("/things", headers=admin.headers),
                await http.put("/own", headers=admin.headers),
            ):
                if refusal is None:
                    assert response.status_code == 200
                else:
                    assert response.status_code == 403
                    assert response.json()["type"].endswith(refusal)
        # Platform staff are not held by a tenant's billing.
        assert (await http.post("/things", headers=staff.headers)).status_code == 200


# --- Collecting a card ---------------------------------------------------------------------


async def test_a_card_added_through_a_setup_intent_pays_the_overdue_invoice(
    api: httpx.AsyncClient,
    temporal_client: Client,
    settings: Settings,
    sessions: SessionFactory,
    localstripe: LocalStripe,
) -> None:
    admin, customer, row = await _subscribed(temporal_client, settings, sessions, localstripe)
    async with localstripe.sdk() as sdk:
        invoice_id = await unpaid_invoice(sdk, customer, str(row.stripe_subscription_id))
        failed = (await sdk.v1.invoices.retrieve_async(invoice_id)).to_dict()
    t = int(time.time())  # not after the retried payment, whose result is then the newer
    assert (await _post(api, stripe_event("invoice.payment_failed", failed, t))).status_code == 200
    await _billed(sessions, admin.tenant_id, BillingStatus.PAST_DUE)

    response = await api.post("/api/v1/billing/payment-method", headers=admin.headers)
    assert response.status_code == 200, response.text
    collection = response.json()
    setup_intent_id: str = collection["setup_intent_id"]
    client_secret: str = collection["client_secret"]
    async with localstripe.sdk() as sdk:
        confirmed = await confirm_card_setup(sdk, setup_intent_id, client_secret)
    card = str(confirmed["payment_method"])
    saved = stripe_event("setup_intent.succeeded", confirmed, t + 1)
    for _ in range(2):  # Stripe may deliver it twice
        assert (await _post(api, saved)).status_code == 200

    final = await _billed(sessions, admin.tenant_id, BillingStatus.ACTIVE)
    assert final.grace_ends_at is None
    async with localstripe.sdk() as sdk:
        holder = await sdk.v1.customers.retrieve_async(customer)
        invoice = await sdk.v1.invoices.retrieve_async(invoice_id)
    assert holder.invoice_settings is not None
    assert holder.invoice_settings.default_payment_method == card
    assert invoice.status == "paid"
    (projected,) = await eventually(
        lambda: _invoices(sessions, admin.tenant_id),
        lambda found: [i.status for i in found] == ["paid"],
    )
    assert projected.stripe_invoice_id == invoice_id
    actions = await _actions(sessions, admin.tenant_id)
    async with sessions() as session:
        requested = await session.scalar(
            select(AuditEntry).where(
                AuditEntry.tenant_id == admin.tenant_id,
                AuditEntry.action == "billing.payment_method_requested",
            )
        )
    assert requested is not None
    assert (requested.actor_id, requested.data["setup_intent"]) == (admin.user_id, setup_intent_id)
    assert actions.count("billing.payment_method_added") == 1
    assert actions.count("billing.reactivated") == 1

    handle = temporal_client.get_workflow_handle(workflow_id(admin.tenant_id))
    run_id = (await handle.describe()).run_id
    history = await decoded_history(temporal_client, workflow_id(admin.tenant_id), run_id)
    assert setup_intent_id.encode() in history
    assert client_secret.encode() not in history
    async with sessions() as session:
        stored = await session.get(PaymentMethodSetup, setup_intent_id)
    assert stored is not None
    assert client_secret not in stored.client_secret  # kept encrypted
    assert settings.field_cipher().decrypt(stored.client_secret) == client_secret


async def test_adding_a_card_needs_a_billing_account_and_an_admin(
    api: httpx.AsyncClient,
    temporal_client: Client,
    settings: Settings,
    sessions: SessionFactory,
    localstripe: LocalStripe,
) -> None:
    unbilled = await member(sessions, settings)
    response = await api.post("/api/v1/billing/payment-method", headers=unbilled.headers)
    assert response.status_code == 409, response.text
    assert response.headers["content-type"] == "application/problem+json"

    admin, _, _ = await _subscribed(temporal_client, settings, sessions, localstripe)
    user = await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    response = await api.post("/api/v1/billing/payment-method", headers=user.headers)
    assert response.status_code == 403, response.text
    assert "billing.payment_method_requested" not in await _actions(sessions, admin.tenant_id)
    async with sessions() as session:
        setups = await session.scalar(
            select(func.count())
            .select_from(PaymentMethodSetup)
            .where(PaymentMethodSetup.tenant_id == admin.tenant_id)
        )
    assert setups == 0


# --- Saved payment methods -------------------------------------------------------------------


async def test_saved_cards_are_listed_and_removed_but_not_the_default_or_anothers(
    api: httpx.AsyncClient,
    temporal_client: Client,
    settings: Settings,
    sessions: SessionFactory,
    localstripe: LocalStripe,
) -> None:
    admin, customer, _ = await _subscribed(temporal_client, settings, sessions, localstripe)
    stranger = await member(sessions, settings)
    async with localstripe.sdk() as sdk:
        spare = await sdk.v1.payment_methods.create_async(
            params={
                "type": "card",
                "card": {
                    "number": "5555555555554444",
                    "exp_month": 3,
                    "exp_year": 2041,
                    "cvc": "123",
                },
            }
        )
        await sdk.v1.payment_methods.attach_async(str(spare.id), params={"customer": customer})
        theirs_customer = await card_holder(sdk, stranger.tenant_id, stranger.email)
        listed_theirs = await sdk.v1.payment_methods.list_async(
            params={"customer": theirs_customer, "type": "card"}
        )
    theirs = str(listed_theirs.data[0].id)
    route = "/api/v1/billing/payment-methods"

    listed = await api.get(route, headers=admin.headers)
    assert listed.status_code == 200, listed.text
    items = {item["payment_method_id"]: item for item in listed.json()["items"]}
    assert len(items) == 2
    (default,) = [pm for pm, item in items.items() if item["is_default"]]
    assert items[str(spare.id)] == {
        "payment_method_id": str(spare.id),
        "brand": "visa",  # localstripe calls every card a visa
        "last4": "4444",
        "exp_month": 3,
        "exp_year": 2041,
        "is_default": False,
    }

    refused = await api.delete(f"{route}/{default}", headers=admin.headers)
    assert refused.status_code == 409, refused.text
    for other in (theirs, "pm_1NoSuchCardAnywhere"):
        missing = await api.delete(f"{route}/{other}", headers=admin.headers)
        assert missing.status_code == 404, missing.text
        assert missing.headers["content-type"] == "application/problem+json"
    assert (await api.delete(f"{route}/not-an-id", headers=admin.headers)).status_code == 422
    user = await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    assert (await api.delete(f"{route}/{spare.id}", headers=user.headers)).status_code == 403
    assert (await api.get(route, headers=user.headers)).status_code == 403
    # Without a billing account there is nothing to list or remove.
    assert (await api.get(route, headers=stranger.headers)).json() == {"items": []}
    assert (await api.delete(f"{route}/{theirs}", headers=stranger.headers)).status_code == 404

    keyed = admin.headers | {"Idempotency-Key": "remove-spare"}
    removed = await api.delete(f"{route}/{spare.id}", headers=keyed)
    assert removed.status_code == 204, removed.text
    retried = await api.delete(f"{route}/{spare.id}", headers=keyed)
    assert retried.status_code == 204, retried.text  # the same request: nothing more happens
    again = await api.delete(f"{route}/{spare.id}", headers=admin.headers)
    assert again.status_code == 404, again.text  # a new request: it is gone
    remaining = (await api.get(route, headers=admin.headers)).json()["items"]
    assert [item["payment_method_id"] for item in remaining] == [default]
    async with localstripe.sdk() as sdk:
        detached = await sdk.v1.payment_methods.retrieve_async(str(spare.id))
        still_theirs = await sdk.v1.payment_methods.retrieve_async(theirs)
    assert detached.customer is None
    assert still_theirs.customer == theirs_customer
    actions = await _actions(sessions, admin.tenant_id)
    assert actions.count("billing.payment_method_removed") == 1
    assert await _actions(sessions, stranger.tenant_id) == []


@pytest.mark.parametrize("where", ["local", "s3"])
async def test_the_usage_report_measures_what_a_tenant_stores(
    where: str,
    request: pytest.FixtureRequest,
    temporal_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
) -> None:
    if where == "s3":
        settings = request.getfixturevalue("s3_settings")
    admin = await member(sessions, settings)
    neighbour = await member(sessions, settings)
    idle = await member(sessions, settings)
    await _store(settings, f"tenants/{admin.tenant_id}/onboarding/{uuid.uuid4()}", 100)
    await _store(settings, f"tenants/{admin.tenant_id}/tasks/{uuid.uuid4()}/a", 50)
    await _store(settings, f"tenants/{neighbour.tenant_id}/onboarding/{uuid.uuid4()}", 999)
    if where == "local":  # an upload under way is not stored yet
        folder = LocalStorage(settings).path_of(f"tenants/{admin.tenant_id}/tasks")
        (folder / f".upload.{uuid.uuid4().hex}.part").write_bytes(b"x" * 70)

    async def report(who: Member) -> None:
        await temporal_env.client.execute_workflow(
            UsageReportWorkflow.run,
            who.tenant_id,
            id=f"usage-{uuid.uuid4()}",
            task_queue=settings.temporal_task_queue,
        )

    async with build_worker(temporal_env.client, sessions, settings):
        await report(admin)
        await report(idle)  # nothing stored, ever: nothing recorded
        await _store(settings, f"tenants/{admin.tenant_id}/content/{uuid.uuid4()}", 25)
        await report(admin)
    async with sessions() as session:
        gauges = await session.execute(
            select(UsageEvent.tenant_id, UsageEvent.quantity)
            .where(
                UsageEvent.tenant_id.in_([admin.tenant_id, idle.tenant_id]),
                UsageEvent.metric == UsageMetric.STORAGE_BYTES,
            )
            .order_by(UsageEvent.occurred_at)
        )
    assert [tuple(row) for row in gauges] == [(admin.tenant_id, 150), (admin.tenant_id, 175)]


async def _store(settings: Settings, key: str, size: int) -> None:
    """An object of ``size`` bytes under ``key``, put where the settings keep objects."""
    storage = storage_from_settings(settings)
    if isinstance(storage, LocalStorage):
        path = storage.path_of(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        return
    target = await storage.upload_target(key, "application/octet-stream", size)
    async with httpx.AsyncClient() as http:
        response = await http.put(target.url, content=b"x" * size, headers=target.headers)
    response.raise_for_status()
