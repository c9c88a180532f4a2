"""The billing port: what activities and the API need from a billing provider.

The port's types and Stripe's event shapes live here; the SDK itself is only imported by
:mod:`connectors.billing.stripe_gateway`, so workflow code that imports activities never
pulls it in. Stripe owns the billing clock; the port hides how Stripe is spoken to: which API shapes
(``current_period_*`` on the subscription before 2025, on its items after; an invoice's
subscription at the top level or under ``parent``), how a plan is priced, and how Stripe's
errors divide into business outcomes (a declined card), refusals (a request Stripe will never
accept) and faults worth retrying (:class:`BillingUnavailable`: connection errors, 5xx, 429 and
lock timeouts, 409 conflicts, and 401/403, which an operator fixes by rotating the key).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

from core.plans import PlanSpec
from models.billing import (
    AdjustmentKind,
    AdjustmentSnapshot,
    BillingEvent,
    ChargeSnapshot,
    InvoiceLine,
    InvoicePreview,
    InvoiceSnapshot,
    PaymentMethodSnapshot,
    SetupIntentSnapshot,
    SubscriptionSnapshot,
)
from models.onboarding import PlanId

# Metadata keys this project sets on Stripe objects.
TENANT_KEY = "tenant_id"
PLAN_KEY = "plan_id"

SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.trial_will_end",
        "customer.subscription.paused",
        "customer.subscription.resumed",
    }
)
INVOICE_EVENTS = frozenset(
    {
        "invoice.created",
        "invoice.finalized",
        "invoice.updated",
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.payment_failed",
        "invoice.voided",
        "invoice.marked_uncollectible",
    }
)
SETUP_INTENT_EVENTS = frozenset({"setup_intent.succeeded"})
# Refunds, disputes and credit notes, recorded on the invoices projection.
REFUND_EVENTS = frozenset({"charge.refunded"})
DISPUTE_OPENED = "charge.dispute.created"
DISPUTE_EVENTS = frozenset({DISPUTE_OPENED, "charge.dispute.updated", "charge.dispute.closed"})
CREDIT_NOTE_EVENTS = frozenset({"credit_note.created", "credit_note.voided"})
ADJUSTMENT_EVENTS = REFUND_EVENTS | DISPUTE_EVENTS | CREDIT_NOTE_EVENTS
# A subscription that ended (or never started) stays ended: it is never reused.
ENDED_STATUSES = frozenset({"canceled", "incomplete_expired"})


class BillingDeclined(Exception):
    """Stripe declined a payment (a business outcome, not a fault)."""

    def __init__(self, message: str, code: str | None) -> None:
        super().__init__(message)
        self.code = code


class MalformedEvent(ValueError):
    """A (correctly signed) body that is not a Stripe event billing can read."""


class BillingRejected(Exception):
    """Stripe refused the request (4xx): retrying the same request cannot succeed."""


class BillingUnavailable(Exception):
    """Stripe could not serve the request now (down, rate limited, a lock or a conflicting
    request, or a key an operator must rotate): the same request may succeed later. Its message
    never holds the key."""


class BillingGateway(Protocol):
    """What billing needs from a payment provider."""

    async def ensure_plan(self, plan: PlanSpec) -> str:
        """The provider's price id for ``plan``, created on first use."""
        ...

    async def ensure_customer(
        self, tenant_id: uuid.UUID, name: str, email: str, idempotency_key: str
    ) -> str:
        """The tenant's customer id: found by its tenant id, else created under the key."""
        ...

    async def find_subscription(self, customer_id: str) -> SubscriptionSnapshot | None:
        """The customer's live (not ended) subscription, if any."""
        ...

    async def create_subscription(
        self,
        customer_id: str,
        price_id: str,
        tenant_id: uuid.UUID,
        trial_end: datetime | None,
        idempotency_key: str,
        quantity: int = 1,
    ) -> SubscriptionSnapshot: ...

    async def fetch_subscription(self, subscription_id: str) -> SubscriptionSnapshot | None: ...

    async def fetch_invoice(self, invoice_id: str) -> InvoiceSnapshot | None: ...

    async def fetch_charge(self, charge_id: str) -> ChargeSnapshot | None:
        """The charge (``None`` when the provider does not know it) with the invoice it paid,
        looked up through its payment when the charge itself does not name it."""
        ...

    async def update_subscription(
        self,
        subscription: SubscriptionSnapshot,
        idempotency_key: str,
        *,
        price_id: str | None = None,
        cancel_at_period_end: bool | None = None,
        trial_end: datetime | None = None,
        prorate: bool = True,
        quantity: int | None = None,
    ) -> SubscriptionSnapshot:
        """Change the plan and/or its quantity (prorated unless ``prorate`` is false), whether
        it renews, and/or when its trial ends."""
        ...

    async def preview_plan_change(
        self,
        subscription: SubscriptionSnapshot,
        plan: PlanId,
        price_id: str,
        *,
        prorate: bool,
        quantity: int = 1,
    ) -> InvoicePreview:
        """The invoice a change of the subscription to ``plan`` (``price_id``) brings, as
        Stripe computes it; nothing changes."""
        ...

    async def report_usage(
        self,
        event_name: str,
        customer_id: str,
        value: int,
        identifier: str,
        timestamp: datetime,
    ) -> None:
        """Send one meter event; the provider drops a repeated ``identifier``."""
        ...

    async def ensure_meters(self, meters: Mapping[str, str]) -> None:
        """Billing meters for the event names (name → aggregation: ``sum`` or ``last``): the
        active ones found are kept, the missing ones created."""
        ...

    async def create_setup_intent(self, customer_id: str, idempotency_key: str) -> tuple[str, str]:
        """A SetupIntent saving a card for the customer's future invoices, created once under
        the key: ``(setup_intent_id, client_secret)`` for the browser to confirm."""
        ...

    async def set_default_payment_method(
        self, customer_id: str, payment_method_id: str, idempotency_key: str
    ) -> None:
        """Attach the saved card to the customer (if it is not) and bill invoices to it."""
        ...

    async def list_payment_methods(self, customer_id: str) -> list[PaymentMethodSnapshot]:
        """The customer's saved cards, the default marked."""
        ...

    async def fetch_payment_method(
        self, customer_id: str, payment_method_id: str
    ) -> PaymentMethodSnapshot | None:
        """The payment method (``None`` when the provider does not know it), marked default
        when it is ``customer_id``'s default."""
        ...

    async def detach_payment_method(self, payment_method_id: str, idempotency_key: str) -> None:
        """Detach the payment method from its customer; it can no longer be charged."""
        ...

    async def open_invoices(self, customer_id: str) -> list[str]:
        """The customer's invoices still awaiting payment, oldest first."""
        ...

    async def pay_invoice(self, invoice_id: str, idempotency_key: str) -> InvoiceSnapshot:
        """Charge the customer's default payment method for the invoice (declines raise
        :class:`BillingDeclined`)."""
        ...


# --- Stripe's shapes ----------------------------------------------------------------------


# Unix seconds after 9999-12-31 are no date Stripe sends (milliseconds would be).
_LAST_SECOND = 253_402_300_799


def _seconds(value: Any) -> int:
    """Unix seconds, as Stripe sends them; anything else is malformed."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _LAST_SECOND:
        raise MalformedEvent(f"not a time in Unix seconds: {value!r:.40}")
    return value


def _time(value: Any) -> datetime | None:
    return datetime.fromtimestamp(_seconds(value), UTC) if value else None


def _id(value: Any) -> str:
    """An id, whether Stripe sent it bare or as an expanded object."""
    found = value.get("id") if isinstance(value, Mapping) else value
    if not isinstance(found, str) or not found:
        raise MalformedEvent(f"not a Stripe id: {found!r:.40}")
    return found


def _optional_id(value: Any) -> str | None:
    return _id(value) if value else None


def _amount(value: Any) -> int:
    """An amount in the currency's smallest unit, as Stripe sends it (a non-negative integer)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise MalformedEvent(f"not an amount: {value!r:.40}")
    return value


def _currency(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 3 or not value.isalpha():
        raise MalformedEvent(f"not a currency: {value!r:.40}")
    return value.lower()


def _label(value: Any, length: int) -> str | None:
    """A short code (a reason, a status) that fits its column; ``None`` when absent."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > length:
        raise MalformedEvent(f"not a Stripe code: {value!r:.40}")
    return value


def _object(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedEvent("data.object is not an object")
    return value


def tenant_of(metadata: Mapping[str, Any] | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(str((metadata or {})[TENANT_KEY]))
    except (KeyError, ValueError):
        return None


def _plan(metadata: Mapping[str, Any] | None) -> PlanId | None:
    try:
        return PlanId((metadata or {})[PLAN_KEY])
    except (KeyError, ValueError):
        return None


def subscription_snapshot(obj: Mapping[str, Any], as_of: int) -> SubscriptionSnapshot:
    """A Stripe subscription object (any API version, or localstripe's) as billing sees it."""
    items = (obj.get("items") or {}).get("data") or [{}]
    item = items[0]
    price = item.get("price") or item.get("plan") or obj.get("plan") or {}
    status = str(obj["status"])
    if status == "incomplete" and obj.get("trial_end") and not obj.get("latest_invoice"):
        # localstripe leaves a subscription created with a trial `incomplete` (and issues no
        # invoice); Stripe calls that `trialing`. Stripe's own incomplete ones have an invoice.
        status = "trialing"
    return SubscriptionSnapshot(
        subscription_id=str(obj["id"]),
        customer_id=_id(obj["customer"]),
        item_id=item.get("id"),
        tenant_id=tenant_of(obj.get("metadata")),
        plan=_plan(price.get("metadata")),
        stripe_status=status,
        current_period_start=_time(
            item.get("current_period_start") or obj.get("current_period_start")
        ),
        current_period_end=_time(item.get("current_period_end") or obj.get("current_period_end")),
        cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
        trial_end=_time(obj.get("trial_end")),
        as_of=as_of,
        quantity=int(item.get("quantity") or obj.get("quantity") or 1),
        interval=price.get("interval") or (price.get("recurring") or {}).get("interval"),
    )


def invoice_snapshot(obj: Mapping[str, Any], as_of: int) -> InvoiceSnapshot:
    """A Stripe invoice object (any API version, or localstripe's) as billing sees it."""
    details = (obj.get("parent") or {}).get("subscription_details") or {}
    subscription = obj.get("subscription") or details.get("subscription")
    tenant = tenant_of(details.get("metadata")) or tenant_of(obj.get("metadata"))
    return InvoiceSnapshot(
        invoice_id=str(obj["id"]),
        customer_id=_id(obj["customer"]),
        subscription_id=_id(subscription) if subscription else None,
        tenant_id=tenant,
        number=obj.get("number"),
        status=str(obj.get("status") or "draft"),
        amount_due=int(obj.get("amount_due") or 0),
        amount_paid=int(obj.get("amount_paid") or 0),
        currency=str(obj.get("currency") or "usd"),
        period_start=_time(obj.get("period_start")),
        period_end=_time(obj.get("period_end")),
        hosted_invoice_url=obj.get("hosted_invoice_url"),
        created=_time(obj.get("created") or obj.get("date")) or datetime.fromtimestamp(as_of, UTC),
        as_of=as_of,
    )


def invoice_preview(
    obj: Mapping[str, Any], plan: PlanId, billed_at: datetime | None
) -> InvoicePreview:
    """A previewed Stripe invoice (any API version, or localstripe's): its total and lines."""
    lines = (obj.get("lines") or {}).get("data") or []
    return InvoicePreview(
        plan=plan,
        currency=str(obj.get("currency") or "usd"),
        amount_due=int(obj.get("amount_due") or 0),
        billed_at=billed_at,
        lines=[
            InvoiceLine(
                description=line.get("description"),
                amount=int(line.get("amount") or 0),
                proration=_is_proration(line),
            )
            for line in lines
        ],
    )


def _is_proration(line: Mapping[str, Any]) -> bool:
    """Named on the line before API version 2025-03-31, under its parent since."""
    if "proration" in line:
        return bool(line["proration"])
    parent = line.get("parent") or {}
    details = parent.get("subscription_item_details") or parent.get("invoice_item_details") or {}
    return bool(details.get("proration"))


def setup_intent_snapshot(obj: Mapping[str, Any]) -> SetupIntentSnapshot:
    """A succeeded Stripe SetupIntent as billing sees it."""
    if not obj.get("payment_method"):
        raise MalformedEvent("a succeeded SetupIntent without a payment method")
    return SetupIntentSnapshot(
        setup_intent_id=str(obj["id"]),
        customer_id=_id(obj["customer"]),
        payment_method_id=_id(obj["payment_method"]),
        tenant_id=tenant_of(obj.get("metadata")),
    )


def charge_snapshot(obj: Mapping[str, Any]) -> ChargeSnapshot:
    """A Stripe charge (any API version, or localstripe's) as billing sees it."""
    return ChargeSnapshot(
        charge_id=_id(obj["id"]),
        customer_id=_optional_id(obj.get("customer")),
        # Charges name their invoice before API version 2025-03-31 only.
        invoice_id=_optional_id(obj.get("invoice")),
        payment_intent_id=_optional_id(obj.get("payment_intent")),
        amount=_amount(obj["amount"]),
        amount_refunded=_amount(obj["amount_refunded"]),
        refunded=bool(obj.get("refunded")),
        currency=_currency(obj["currency"]),
    )


def refund_snapshot(obj: Mapping[str, Any], as_of: int) -> AdjustmentSnapshot:
    """A refunded charge: its refunded total (Stripe's ``amount_refunded``, cumulative)."""
    charge = charge_snapshot(obj)
    if charge.amount_refunded > charge.amount:
        raise MalformedEvent("a charge refunded beyond its amount")
    refunds = (obj.get("refunds") or {}).get("data") or []
    latest = refunds[0] if refunds and isinstance(refunds[0], Mapping) else {}
    return AdjustmentSnapshot(
        kind=AdjustmentKind.REFUND,
        stripe_id=charge.charge_id,
        customer_id=charge.customer_id,
        invoice_id=charge.invoice_id,
        charge_id=charge.charge_id,
        tenant_id=tenant_of(obj.get("metadata")),
        amount=charge.amount_refunded,
        currency=charge.currency,
        reason=_label(latest.get("reason"), 100),
        status="refunded" if charge.refunded else "partially_refunded",
        as_of=as_of,
    )


def dispute_snapshot(obj: Mapping[str, Any], as_of: int) -> AdjustmentSnapshot:
    """A Stripe dispute. It names its charge, not its customer nor its invoice: those come
    from the charge (expanded here, or fetched)."""
    charge = obj["charge"]
    expanded = (
        charge_snapshot(charge) if isinstance(charge, Mapping) and "amount" in charge else None
    )
    return AdjustmentSnapshot(
        kind=AdjustmentKind.DISPUTE,
        stripe_id=_id(obj["id"]),
        customer_id=expanded.customer_id if expanded else None,
        invoice_id=expanded.invoice_id if expanded else None,
        charge_id=_id(charge),
        tenant_id=tenant_of(obj.get("metadata")),
        amount=_amount(obj["amount"]),
        currency=_currency(obj["currency"]),
        reason=_label(obj["reason"], 100),
        status=_label(obj["status"], 32),
        as_of=as_of,
    )


def credit_note_snapshot(obj: Mapping[str, Any], as_of: int) -> AdjustmentSnapshot:
    """A Stripe credit note: its total (``amount`` when no total is sent) against its invoice."""
    total = obj.get("total")
    return AdjustmentSnapshot(
        kind=AdjustmentKind.CREDIT_NOTE,
        stripe_id=_id(obj["id"]),
        customer_id=_id(obj["customer"]),
        invoice_id=_id(obj["invoice"]),
        tenant_id=tenant_of(obj.get("metadata")),
        amount=_amount(obj["amount"] if total is None else total),
        currency=_currency(obj["currency"]),
        reason=_label(obj.get("reason"), 100),
        status=_label(obj.get("status"), 32),
        as_of=as_of,
    )


def with_charge(adjustment: AdjustmentSnapshot, charge: ChargeSnapshot) -> AdjustmentSnapshot:
    """The adjustment with the customer and invoice its charge names (a dispute names neither)."""
    return adjustment.model_copy(
        update={
            "customer_id": adjustment.customer_id or charge.customer_id,
            "invoice_id": adjustment.invoice_id or charge.invoice_id,
        }
    )


def default_payment_method(customer: Mapping[str, Any]) -> str | None:
    """The id of a Stripe customer's default payment method for invoices, if any."""
    found = (customer.get("invoice_settings") or {}).get("default_payment_method")
    return _id(found) if found else None


def payment_method_snapshot(
    obj: Mapping[str, Any], default_id: str | None
) -> PaymentMethodSnapshot:
    """A Stripe payment method as the tenant's admins see it (brand, last four, expiry)."""
    card = obj.get("card") or {}
    customer = obj.get("customer")
    return PaymentMethodSnapshot(
        payment_method_id=str(obj["id"]),
        customer_id=_id(customer) if customer else None,
        brand=card.get("brand"),
        last4=card.get("last4"),
        exp_month=card.get("exp_month"),
        exp_year=card.get("exp_year"),
        is_default=default_id is not None and obj["id"] == default_id,
    )


def parse_event(payload: Mapping[str, Any]) -> BillingEvent:
    """A verified event's payload as a :class:`BillingEvent`; types billing does not act on
    keep only their id, type and time. Raises :class:`MalformedEvent` for anything that is
    not a Stripe event of the shape its type has."""
    try:
        return _parse_event(payload)
    except MalformedEvent:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, OSError) as exc:
        raise MalformedEvent(f"{type(exc).__name__}: {exc}"[:300]) from None


def _parse_event(payload: Mapping[str, Any]) -> BillingEvent:
    event_id, event_type = payload["id"], payload["type"]
    if not isinstance(event_id, str) or not isinstance(event_type, str):
        raise MalformedEvent("the event's id and type must be strings")
    created = _seconds(payload["created"])
    data = payload.get("data")
    if not isinstance(data, Mapping):
        raise MalformedEvent("data is not an object")
    subscription = invoice = setup_intent = adjustment = None
    if event_type in SUBSCRIPTION_EVENTS:
        subscription = subscription_snapshot(_object(data.get("object")), created)
    elif event_type in INVOICE_EVENTS:
        invoice = invoice_snapshot(_object(data.get("object")), created)
    elif event_type in SETUP_INTENT_EVENTS:
        setup_intent = setup_intent_snapshot(_object(data.get("object")))
    elif event_type in REFUND_EVENTS:
        adjustment = refund_snapshot(_object(data.get("object")), created)
    elif event_type in DISPUTE_EVENTS:
        adjustment = dispute_snapshot(_object(data.get("object")), created)
    elif event_type in CREDIT_NOTE_EVENTS:
        adjustment = credit_note_snapshot(_object(data.get("object")), created)
    customer = subscription or invoice or setup_intent or adjustment
    return BillingEvent(
        event_id=event_id,
        type=event_type,
        created=created,
        customer_id=customer.customer_id if customer else None,
        subscription=subscription,
        invoice=invoice,
        setup_intent=setup_intent,
        adjustment=adjustment,
    )


def handles(event: BillingEvent) -> bool:
    """Whether billing acts on this event type."""
    return (
        event.type in SUBSCRIPTION_EVENTS
        or event.type in INVOICE_EVENTS
        or event.type in SETUP_INTENT_EVENTS
        or event.type in ADJUSTMENT_EVENTS
    )


def needs_charge(event: BillingEvent) -> bool:
    """Whether the event names no customer and no tenant until its charge is fetched (a
    dispute names only its charge)."""
    adjustment = event.adjustment
    return (
        adjustment is not None
        and adjustment.charge_id is not None
        and adjustment.customer_id is None
        and adjustment.tenant_id is None
    )


# Opens a gateway for one unit of work (connections closed on exit).
GatewayOpener = Callable[[], AbstractAsyncContextManager[BillingGateway]]
