"""The Stripe gateway against localstripe through the real SDK, Stripe's current shapes, and
meter events against a recorder answering in Stripe's published shape."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from connectors.billing import (
    BillingGateway,
    BillingRejected,
    BillingUnavailable,
    handles,
    parse_event,
)
from connectors.billing.stripe_gateway import stripe_gateway
from core.plans import default_plans, plan_of
from core.settings import Settings
from models.onboarding import PlanId
from tests.peers.stripe_front import Fault, StripeFront
from tests.peers_stripe import DECLINING_CARD, LocalStripe, MeterRecorder, card_holder, stripe_event

pytest_plugins = ["tests.peers_stripe", "tests.peers.stripe_front"]

STARTER = plan_of(default_plans(), PlanId.STARTER)
PROFESSIONAL = plan_of(default_plans(), PlanId.PROFESSIONAL)


@pytest.fixture
async def gateway(localstripe: LocalStripe) -> AsyncIterator[BillingGateway]:
    async with stripe_gateway(localstripe.settings(Settings(_env_file=None))) as opened:
        yield opened


async def _customer_with_card(
    localstripe: LocalStripe, tenant_id: uuid.UUID, email: str, card: str | None = None
) -> str:
    async with localstripe.sdk() as sdk:
        return await card_holder(sdk, tenant_id, email, card)


async def test_customer_subscription_and_paid_invoice(
    gateway: BillingGateway, localstripe: LocalStripe
) -> None:
    tenant_id = uuid.uuid4()
    assert await gateway.ensure_plan(STARTER) == STARTER.stripe_plan_id
    assert await gateway.ensure_plan(STARTER) == STARTER.stripe_plan_id  # found, not created

    existing = await _customer_with_card(localstripe, tenant_id, "billing@example.com")
    # Looked up by tenant id before creating: the customer with the card is the one.
    found = await gateway.ensure_customer(tenant_id, "Acme", "billing@example.com", "key-1")
    assert found == existing
    assert await gateway.find_subscription(existing) is None

    subscription = await gateway.create_subscription(
        existing, STARTER.stripe_plan_id, tenant_id, None, "key-2"
    )
    assert subscription.stripe_status == "active"
    assert subscription.plan is PlanId.STARTER
    assert subscription.tenant_id == tenant_id
    assert subscription.current_period_end is not None
    assert subscription.current_period_end > datetime.now(UTC) + timedelta(days=27)
    again = await gateway.find_subscription(existing)
    assert again is not None
    assert again.model_copy(update={"as_of": 0}) == subscription.model_copy(update={"as_of": 0})

    async with localstripe.sdk() as sdk:
        invoices = await sdk.v1.invoices.list_async(params={"customer": existing})
    (paid,) = invoices.data
    invoice = await gateway.fetch_invoice(str(paid.id))
    assert invoice is not None
    assert (invoice.status, invoice.amount_paid, invoice.currency) == ("paid", 2900, "usd")
    assert invoice.subscription_id == subscription.subscription_id
    assert invoice.settled


async def test_new_customer_then_trial_plan_change_and_cancel_at_period_end(
    gateway: BillingGateway,
) -> None:
    tenant_id = uuid.uuid4()
    customer = await gateway.ensure_customer(tenant_id, "Acme", "trial@example.com", "key-1")
    # The same tenant again: found by its metadata, not created twice.
    assert (
        await gateway.ensure_customer(tenant_id, "Acme", "trial@example.com", "key-1") == customer
    )
    other = await gateway.ensure_customer(uuid.uuid4(), "Other", "trial@example.com", "key-3")
    assert other != customer

    price = await gateway.ensure_plan(STARTER)
    trial_end = datetime.now(UTC).replace(microsecond=0) + timedelta(days=14)
    trialing = await gateway.create_subscription(customer, price, tenant_id, trial_end, "key-2")
    assert trialing.stripe_status == "trialing"
    assert trialing.trial_end == trial_end

    upgraded = await gateway.update_subscription(
        trialing, "key-4", price_id=await gateway.ensure_plan(PROFESSIONAL)
    )
    assert upgraded.plan is PlanId.PROFESSIONAL
    assert upgraded.subscription_id == trialing.subscription_id

    cancelling = await gateway.update_subscription(upgraded, "key-5", cancel_at_period_end=True)
    assert cancelling.cancel_at_period_end
    resumed = await gateway.update_subscription(cancelling, "key-6", cancel_at_period_end=False)
    assert not resumed.cancel_at_period_end
    fetched = await gateway.fetch_subscription(trialing.subscription_id)
    assert fetched is not None
    assert fetched.plan is PlanId.PROFESSIONAL


async def test_declined_card_leaves_the_subscription_incomplete(
    gateway: BillingGateway, localstripe: LocalStripe
) -> None:
    tenant_id = uuid.uuid4()
    customer = await _customer_with_card(
        localstripe, tenant_id, "declined@example.com", card=DECLINING_CARD
    )
    price = await gateway.ensure_plan(STARTER)
    subscription = await gateway.create_subscription(customer, price, tenant_id, None, "key")
    # A business outcome: the subscription exists, unpaid; nothing was raised.
    assert subscription.stripe_status == "incomplete"


async def test_refusals_and_unknown_objects(gateway: BillingGateway) -> None:
    customer = await gateway.ensure_customer(uuid.uuid4(), "Acme", "refused@example.com", "k")
    with pytest.raises(BillingRejected, match="404"):
        await gateway.create_subscription(customer, "no-such-plan", uuid.uuid4(), None, "k2")
    assert await gateway.fetch_invoice("in_unknown") is None
    assert await gateway.fetch_subscription("sub_unknown") is None


# --- Stripe's current shapes (API 2025+), as published ------------------------------------


def test_current_api_shapes_are_read() -> None:
    tenant_id = uuid.uuid4()
    subscription = {
        "id": "sub_1",
        "object": "subscription",
        "customer": "cus_1",
        "status": "past_due",
        "cancel_at_period_end": True,
        "trial_end": None,
        "latest_invoice": "in_1",
        "metadata": {"tenant_id": str(tenant_id)},
        "items": {
            "object": "list",
            "data": [
                {
                    "id": "si_1",
                    "object": "subscription_item",
                    "current_period_start": 1767225600,
                    "current_period_end": 1769904000,
                    "price": {"id": "price_1", "metadata": {"plan_id": "business"}},
                    "quantity": 1,
                }
            ],
        },
    }
    event = parse_event(
        stripe_event("customer.subscription.updated", subscription, created=1767300000)
    )
    assert event.tenant_id == tenant_id
    assert event.customer_id == "cus_1"
    snapshot = event.subscription
    assert snapshot is not None
    assert (snapshot.stripe_status, snapshot.plan, snapshot.item_id) == (
        "past_due",
        PlanId.BUSINESS,
        "si_1",
    )
    assert snapshot.current_period_end == datetime(2026, 2, 1, tzinfo=UTC)
    assert snapshot.cancel_at_period_end
    assert snapshot.as_of == 1767300000

    invoice = {
        "id": "in_1",
        "object": "invoice",
        "customer": {"id": "cus_1", "object": "customer"},
        "status": "paid",
        "number": "ABC-0001",
        "amount_due": 19900,
        "amount_paid": 19900,
        "currency": "usd",
        "created": 1767225600,
        "period_start": 1767225600,
        "period_end": 1769904000,
        "hosted_invoice_url": "https://invoice.stripe.com/i/acct_1/test",
        "parent": {
            "type": "subscription_details",
            "subscription_details": {
                "subscription": "sub_1",
                "metadata": {"tenant_id": str(tenant_id)},
            },
        },
    }
    paid = parse_event(stripe_event("invoice.paid", invoice, created=1767300001))
    assert paid.tenant_id == tenant_id
    assert paid.invoice is not None
    assert paid.invoice.subscription_id == "sub_1"
    assert paid.invoice.customer_id == "cus_1"
    assert paid.invoice.settled

    other = parse_event(stripe_event("charge.captured", {"id": "ch_1"}, created=1767300002))
    assert (other.subscription, other.invoice, other.tenant_id) == (None, None, None)


# --- Meter events -------------------------------------------------------------------------


async def test_usage_goes_to_the_meter_with_its_identifier(
    meter_recorder: MeterRecorder,
) -> None:
    settings = meter_recorder.settings(Settings(_env_file=None))
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with stripe_gateway(settings) as gateway:
        await gateway.report_usage("bizosaas_workflow_runs", "cus_1", 42, "usage-1", at)
    assert meter_recorder.received == [
        {
            "event_name": "bizosaas_workflow_runs",
            "payload[stripe_customer_id]": "cus_1",
            "payload[value]": "42",
            "identifier": "usage-1",
            "timestamp": str(int(at.timestamp())),
            "idempotency-key": "usage-1",
        }
    ]


async def test_meters_are_found_before_they_are_created(stripe_front: StripeFront) -> None:
    meters = {"bizosaas_workflow_runs": "sum", "bizosaas_storage_bytes": "last"}
    async with stripe_gateway(stripe_front.settings(Settings(_env_file=None))) as gateway:
        await gateway.ensure_meters(meters)
        await gateway.ensure_meters(meters | {"bizosaas_agent_minutes": "sum"})
    assert stripe_front.meter_creations == 3
    assert {
        name: meter["default_aggregation"]["formula"] for name, meter in stripe_front.meters.items()
    } == {
        "bizosaas_workflow_runs": "sum",
        "bizosaas_storage_bytes": "last",
        "bizosaas_agent_minutes": "sum",
    }


async def test_a_card_saved_through_a_setup_intent_pays_the_open_invoice(
    gateway: BillingGateway, localstripe: LocalStripe
) -> None:
    tenant_id = uuid.uuid4()
    customer = await _customer_with_card(
        localstripe, tenant_id, "setup@example.com", card=DECLINING_CARD
    )
    price = await gateway.ensure_plan(STARTER)
    await gateway.create_subscription(customer, price, tenant_id, None, "key")
    (unpaid,) = await gateway.open_invoices(customer)

    setup_intent_id, client_secret = await gateway.create_setup_intent(customer, "setup-key")
    assert setup_intent_id.startswith("seti_")
    assert client_secret.startswith(f"{setup_intent_id}_secret_")
    async with localstripe.sdk() as sdk:  # what Stripe.js does in the browser
        confirmed = await sdk.v1.setup_intents.confirm_async(
            setup_intent_id, params={"payment_method": "pm_card_visa"}
        )
    assert confirmed.status == "succeeded"
    event = parse_event(stripe_event("setup_intent.succeeded", confirmed.to_dict(), 1))
    assert handles(event)
    assert event.setup_intent is not None
    assert (event.customer_id, event.setup_intent.setup_intent_id) == (customer, setup_intent_id)
    card = event.setup_intent.payment_method_id

    for _ in range(2):  # the second time the card is attached already
        await gateway.set_default_payment_method(customer, card, "default-key")
    async with localstripe.sdk() as sdk:
        holder = await sdk.v1.customers.retrieve_async(customer)
    assert holder.invoice_settings is not None
    assert holder.invoice_settings.default_payment_method == card

    paid = await gateway.pay_invoice(unpaid, "pay-key")
    assert (paid.invoice_id, paid.status, paid.amount_paid) == (unpaid, "paid", 2900)
    assert await gateway.open_invoices(customer) == []


# --- How Stripe's errors are classified ---------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault(401, "invalid_request_error", message="Invalid API Key provided: sk_test_****"),
        Fault(403, "invalid_request_error", message="The key lacks a permission"),
        Fault(409, "idempotency_error", message="A concurrent request uses the same key"),
        Fault(429, "invalid_request_error", "rate_limit", "Too many requests"),
        Fault(429, "invalid_request_error", "lock_timeout", "The object is locked"),
        Fault(400, "invalid_request_error", "lock_timeout", "The object is locked"),
        Fault(500, "api_error", message="Stripe had a fault"),
    ],
    ids=["rotated-key", "permission", "conflict", "rate-limit", "lock-timeout", "lock-400", "5xx"],
)
async def test_faults_an_operator_or_time_can_fix_are_retryable(
    stripe_front: StripeFront, fault: Fault
) -> None:
    stripe_front.fail("/v1/invoices/", fault)
    async with stripe_gateway(stripe_front.settings(Settings(_env_file=None))) as gateway:
        with pytest.raises(BillingUnavailable, match=str(fault.status)) as raised:
            await gateway.fetch_invoice("in_1")
        # The key never reaches the message that activities put in history.
        assert "sk_test" not in str(raised.value)
        # The next request (the activity's retry) goes through.
        assert await gateway.fetch_invoice("in_1") is None


@pytest.mark.parametrize(
    "fault",
    [
        Fault(400, "invalid_request_error", "parameter_missing", "Missing required param"),
        Fault(400, "idempotency_error", message="Keys can only be reused with the same request"),
    ],
    ids=["bad-request", "key-reused"],
)
async def test_request_errors_are_refusals(stripe_front: StripeFront, fault: Fault) -> None:
    stripe_front.fail("/v1/invoices/", fault)
    async with stripe_gateway(stripe_front.settings(Settings(_env_file=None))) as gateway:
        with pytest.raises(BillingRejected, match=str(fault.status)):
            await gateway.fetch_invoice("in_1")
