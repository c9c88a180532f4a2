"""Refunds, disputes and credit notes at the webhook: Stripe-signed bodies that are not of
their type's shape are refused, events about customers no tenant owns are kept unmatched, and
a dispute (which names only its charge) is refused for a retry while Stripe cannot say whose
charge it is. Recording them on the invoices is tested with the billing workflow."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from core.db import SessionFactory
from core.settings import Settings
from models.billing import InvoiceAdjustment, StripeEvent, StripeEventStatus
from tests.api.test_billing import WEBHOOK, _inbox, _raw_signed
from tests.peers.stripe_front import Fault, StripeFront
from tests.peers_stripe import (
    LocalStripe,
    card_holder,
    credit_note,
    dispute,
    signed,
    stripe_event,
)

pytest_plugins = ["tests.peers_stripe", "tests.peers.stripe_front"]

# Long on both backends: PostgreSQL by default (SQLite when it does not answer), both with
# --slow.
pytestmark = pytest.mark.one_database


@pytest.fixture
def settings(settings: Settings, stripe_front: StripeFront) -> Settings:
    """Billing through the Stripe front (localstripe behind it, faults on demand)."""
    return stripe_front.settings(settings).model_copy(update={"billing_trial_days": 0})


def _charge(customer: str, **changes: Any) -> dict[str, Any]:
    """A refunded charge in Stripe's published shape (https://docs.stripe.com/api/charges)."""
    return {
        "id": f"ch_{uuid.uuid4().hex[:14]}",
        "object": "charge",
        "amount": 2900,
        "amount_refunded": 2900,
        "currency": "usd",
        "customer": customer,
        "invoice": f"in_{uuid.uuid4().hex[:14]}",
        "metadata": {},
        "payment_intent": None,
        "refunded": True,
        "status": "succeeded",
    } | changes


async def _post(api: httpx.AsyncClient, payload: dict[str, Any]) -> httpx.Response:
    body, headers = signed(payload)
    return await api.post(WEBHOOK, content=body, headers=headers)


async def _recorded(sessions: SessionFactory) -> int:
    async with sessions() as session:
        return len((await session.scalars(select(InvoiceAdjustment.id))).all())


async def test_malformed_refunds_disputes_and_credit_notes_are_refused_and_nothing_is_stored(
    api: httpx.AsyncClient, sessions: SessionFactory, stripe_front: StripeFront
) -> None:
    # Any call to Stripe would take this answer: none is made.
    stripe_front.fail("/v1/charges/", Fault(500))
    now = int(time.time())
    charge = _charge("cus_m")
    disputed = dispute(charge)
    note = credit_note("in_m", "cus_m", 500)
    events = [
        stripe_event("charge.refunded", {k: v for k, v in charge.items() if k != "amount"}, now),
        stripe_event("charge.refunded", charge | {"amount_refunded": "lots"}, now),
        stripe_event("charge.refunded", charge | {"amount_refunded": True}, now),
        stripe_event("charge.refunded", charge | {"amount_refunded": -1}, now),
        stripe_event("charge.refunded", charge | {"amount_refunded": 3000}, now),  # > amount
        stripe_event("charge.refunded", charge | {"currency": "dollars"}, now),
        stripe_event("charge.refunded", charge | {"customer": ["cus_m"]}, now),
        stripe_event("charge.refunded", charge | {"refunds": "all of them"}, now),
        stripe_event(
            "charge.dispute.created", {k: v for k, v in disputed.items() if k != "charge"}, now
        ),
        stripe_event("charge.dispute.created", disputed | {"charge": {"no": "id"}}, now),
        stripe_event("charge.dispute.created", disputed | {"amount": 12.5}, now),
        stripe_event("charge.dispute.created", disputed | {"reason": 7}, now),
        stripe_event("charge.dispute.updated", disputed | {"status": "x" * 40}, now),
        stripe_event("charge.dispute.closed", disputed | {"id": "dp_" + "x" * 300}, now),
        stripe_event("credit_note.created", {k: v for k, v in note.items() if k != "invoice"}, now),
        stripe_event("credit_note.created", note | {"total": "500"}, now),
        stripe_event("credit_note.voided", note | {"customer": None}, now),
        stripe_event("credit_note.created", "cn_1", now),  # type: ignore[arg-type]
    ]
    for event in events:
        content, headers = _raw_signed(json.dumps(event).encode())
        response = await api.post(WEBHOOK, content=content, headers=headers)
        assert response.status_code == 400, (event["type"], response.text)
        assert response.json()["type"].endswith("webhook-rejected")
    assert await _inbox(sessions, [event["id"] for event in events]) == []
    # Refused before anything is asked of Stripe or handed to a workflow.
    assert len(stripe_front.faults["/v1/charges/"]) == 1


async def test_events_about_customers_no_tenant_owns_are_unmatched(
    api: httpx.AsyncClient, sessions: SessionFactory, localstripe: LocalStripe
) -> None:
    now = int(time.time())
    stranger = f"cus_{uuid.uuid4().hex[:14]}"
    async with localstripe.sdk() as sdk:
        # A real charge, of a customer of this Stripe account that is no tenant's.
        customer = await card_holder(sdk, uuid.uuid4(), "x@example.com")
        foreign = await sdk.v1.charges.create_async(
            params={"amount": 1500, "currency": "usd", "customer": customer}
        )
    events = [
        stripe_event("charge.refunded", _charge(stranger), now),
        stripe_event("credit_note.created", credit_note("in_s", stranger, 500), now),
        # A dispute of a charge Stripe does not know, and of another customer's charge.
        stripe_event("charge.dispute.created", dispute(_charge(stranger, id="ch_unknown")), now),
        stripe_event("charge.dispute.created", dispute(foreign.to_dict()), now),
    ]
    before = await _recorded(sessions)
    for event in events:
        response = await _post(api, event)
        assert response.status_code == 200, response.text
        assert response.json() == {"received": True, "duplicate": False, "status": "unmatched"}
    rows = await _inbox(sessions, [event["id"] for event in events])
    assert {(row.status, row.tenant_id) for row in rows} == {(StripeEventStatus.UNMATCHED, None)}
    assert len(rows) == len(events)
    assert await _recorded(sessions) == before


async def test_a_dispute_is_refused_for_a_retry_while_stripe_cannot_answer(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    localstripe: LocalStripe,
    stripe_front: StripeFront,
) -> None:
    async with localstripe.sdk() as sdk:
        customer = await card_holder(sdk, uuid.uuid4(), "y@example.com")
        charge = await sdk.v1.charges.create_async(
            params={"amount": 900, "currency": "usd", "customer": customer}
        )
    event = stripe_event("charge.dispute.created", dispute(charge.to_dict()), int(time.time()))
    # Stripe is down, then the key was rotated: nothing is stored, Stripe sends it again.
    stripe_front.fail("/v1/charges/", Fault(500), Fault(401, "authentication_error"))
    for _ in range(2):
        refused = await _post(api, event)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "60"
        assert "sk_test" not in refused.text
        assert await _inbox(sessions, [event["id"]]) == []
    accepted = await _post(api, event)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "unmatched"
    stored: list[StripeEvent] = await _inbox(sessions, [event["id"]])
    assert [row.type for row in stored] == ["charge.dispute.created"]
