"""Billing's HTTP surface: Stripe's webhooks, the caller's subscription, invoices, usage and
plan, and changes to the subscription (sent to the tenant's billing workflow)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import stripe
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi import Path as FastApiPath
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.billing import (
    PAYMENT_DECLINED,
    STRIPE_REJECTED,
    billing_policy,
    bounded_key,
    deliver_event,
    signal_billing,
    usage_event,
    workflow_id,
)
from api import workflow_calls
from api.deps import CurrentPrincipal, SessionDep, SettingsDep, TemporalDep, require_role
from api.pagination import decode_cursor, encode_cursor
from api.routers.auth import request_actor
from connectors.billing import (
    BillingRejected,
    BillingUnavailable,
    handles,
    needs_charge,
    parse_event,
    with_charge,
)
from connectors.billing.stripe_gateway import gateway_from_settings
from core import audit, metrics
from core.errors import Conflict, NotFound, Problem, ServiceUnavailable, Unprocessable
from core.plans import PlanSpec, ensure_sold, plan_of, usage_since
from core.security import Principal
from core.settings import Settings
from models.base import utcnow
from models.billing import (
    AdjustmentKind,
    BillingEvent,
    BillingInterval,
    BillingStatus,
    BillingView,
    Invoice,
    InvoiceAdjustment,
    InvoicePreview,
    OperatorRequest,
    OperatorSuspension,
    PaymentMethodCollection,
    PaymentMethodRemoval,
    PaymentMethodRequest,
    PaymentMethodSetup,
    PlanChange,
    PlanPreview,
    ProvisionRequest,
    RenewalChange,
    StripeEvent,
    StripeEventStatus,
    Subscription,
    TrialExtension,
    UsageEvent,
    UsageMetric,
    UsageRecord,
)
from models.onboarding import PlanId
from models.tenant import Tenant
from models.user import Role
from workflows.billing import (
    BILLING_STATE,
    PAYMENT_METHOD_NOT_FOUND,
    PLAN_LIMIT_EXCEEDED,
    SAME_PLAN,
    BillingWorkflow,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/billing", tags=["billing"])
TenantAdmin = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN, Role.SUPER_ADMIN))]


class WebhookRejected(Problem):
    status, slug, title = 400, "webhook-rejected", "Webhook rejected"


class WebhooksDisabled(Problem):
    status, slug, title = 503, "webhooks-disabled", "Stripe webhooks are not configured"


class PaymentDeclined(Problem):
    status, slug, title = 402, "payment-declined", "Payment declined"


class ProviderRefused(Problem):
    status, slug, title = 502, "payment-provider-refused", "The payment provider refused"


# --- Stripe webhooks ----------------------------------------------------------------------


class WebhookReceipt(BaseModel):
    received: bool = True
    duplicate: bool
    status: StripeEventStatus


@router.post(
    "/webhooks/stripe",
    summary="Receive a Stripe event",
    response_model=WebhookReceipt,
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": {}}}}},
)
async def stripe_webhook(
    request: Request, settings: SettingsDep, session: SessionDep, client: TemporalDep
) -> WebhookReceipt:
    """Verify the signature on the raw body, keep the event once in the inbox, and hand it to
    the tenant's billing workflow (signal-with-start). A repeated event is accepted and changes
    nothing; an event type billing does not act on is recorded and ignored. Stripe is called
    only for a new dispute, which names neither customer nor tenant: its charge says whose it
    is (503 while Stripe cannot answer; Stripe sends the event again)."""
    if settings.stripe_webhook_secret is None:
        raise WebhooksDisabled("Set BIZ_STRIPE_WEBHOOK_SECRET to receive Stripe events.")
    payload = _verified_payload(
        await request.body(),
        request.headers.get("Stripe-Signature"),
        settings.stripe_webhook_secret.get_secret_value(),
        settings.stripe_webhook_tolerance_seconds,
    )
    try:
        event = parse_event(payload)
    except (KeyError, TypeError, ValueError) as exc:
        metrics.STRIPE_WEBHOOKS.labels("rejected").inc()
        raise WebhookRejected(
            f"The event is not a Stripe event this API understands: {exc}"
        ) from None
    if event.created > time.time() + settings.stripe_webhook_tolerance_seconds:
        # Stripe stamps events when they happen; one from the future is not Stripe's.
        metrics.STRIPE_WEBHOOKS.labels("rejected").inc()
        raise WebhookRejected("The event is dated in the future.")
    if needs_charge(event) and await session.get(StripeEvent, event.event_id) is None:
        event = await _with_charge_owner(settings, event)
    row, duplicate = await _store(session, event, payload)
    if row.status is StripeEventStatus.RECEIVED and row.tenant_id is not None:
        await deliver_event(client, settings, row.tenant_id, event)
        row.status, row.delivered_at = StripeEventStatus.DELIVERED, utcnow()
        await session.commit()
    metrics.STRIPE_WEBHOOKS.labels("duplicate" if duplicate else row.status.value).inc()
    return WebhookReceipt(duplicate=duplicate, status=row.status)


def _verified_payload(
    body: bytes, signature: str | None, secret: str, tolerance: int
) -> dict[str, Any]:
    try:
        # The signature first, on the raw bytes; then the JSON, parsed once, here (the SDK's
        # own event construction fails on bodies that are JSON but not objects).
        stripe.WebhookSignature.verify_header(body.decode("utf-8"), signature, secret, tolerance)
        payload = json.loads(body)
    except RecursionError:
        metrics.STRIPE_WEBHOOKS.labels("rejected").inc()
        raise WebhookRejected("The body is nested too deeply.") from None
    except stripe.SignatureVerificationError as exc:
        metrics.STRIPE_WEBHOOKS.labels("rejected").inc()
        raise WebhookRejected(f"The Stripe-Signature does not match the body: {exc}") from None
    except ValueError:
        metrics.STRIPE_WEBHOOKS.labels("rejected").inc()
        raise WebhookRejected("The body is not JSON.") from None
    if not isinstance(payload, dict):
        metrics.STRIPE_WEBHOOKS.labels("rejected").inc()
        raise WebhookRejected("The body is not a Stripe event.")
    return payload


async def _with_charge_owner(settings: Settings, event: BillingEvent) -> BillingEvent:
    """The event with the customer (and invoice) of its charge, read from Stripe; as it was
    when Stripe does not know the charge or billing has no Stripe key (it is then unmatched)."""
    adjustment = event.adjustment
    opener = gateway_from_settings(settings)
    if adjustment is None or adjustment.charge_id is None or opener is None:
        return event
    try:
        async with opener() as gateway:
            charge = await gateway.fetch_charge(adjustment.charge_id)
    except BillingUnavailable as exc:
        raise ServiceUnavailable(str(exc), headers={"Retry-After": "60"}) from None
    except BillingRejected as exc:
        log.warning("Stripe event %s: its charge could not be read: %s", event.event_id, exc)
        return event
    if charge is None:
        return event
    return event.model_copy(
        update={"adjustment": with_charge(adjustment, charge), "customer_id": charge.customer_id}
    )


async def _owner(session: AsyncSession, event: BillingEvent) -> uuid.UUID | None:
    """The tenant an event is about: from the object's metadata, else by its customer."""
    tenant_id = event.tenant_id
    if tenant_id is None and event.customer_id is not None:
        tenant_id = await session.scalar(
            select(Subscription.tenant_id).where(
                Subscription.stripe_customer_id == event.customer_id
            )
        )
    if tenant_id is None or await session.get(Tenant, tenant_id) is None:
        return None
    return tenant_id


async def _store(
    session: AsyncSession, event: BillingEvent, payload: dict[str, Any]
) -> tuple[StripeEvent, bool]:
    """The inbox row of the event, and whether it was there already."""
    existing = await session.get(StripeEvent, event.event_id)
    if existing is not None:
        return existing, True
    tenant_id = await _owner(session, event) if handles(event) else None
    if not handles(event):
        status = StripeEventStatus.IGNORED
    elif tenant_id is None:
        status = StripeEventStatus.UNMATCHED
        log.warning("Stripe event %s (%s) matches no tenant", event.event_id, event.type)
    else:
        status = StripeEventStatus.RECEIVED
    row = StripeEvent(
        id=event.event_id,
        type=event.type,
        tenant_id=tenant_id,
        status=status,
        stripe_created=datetime.fromtimestamp(event.created, UTC),
        payload=payload,
    )
    session.add(row)
    try:
        await session.commit()
    except IntegrityError:  # the same event, stored by a concurrent delivery
        await session.rollback()
        stored = await session.get(StripeEvent, event.event_id)
        assert stored is not None
        return stored, True
    return row, False


# --- The caller's billing -----------------------------------------------------------------


class SubscriptionView(BaseModel):
    plan: PlanId | None
    status: str
    current_period_end: datetime | None
    cancel_at_period_end: bool
    trial_end: datetime | None
    grace_ends_at: datetime | None
    retention_ends_at: datetime | None
    scheduled_plan: PlanId | None
    scheduled_plan_at: datetime | None
    seats: int | None
    interval: str | None


@router.get("/subscription", summary="The caller's tenant subscription")
async def get_subscription(principal: CurrentPrincipal, session: SessionDep) -> SubscriptionView:
    """Plan, billing status (``trialing``, ``active``, ``past_due``, ``suspended``,
    ``cancelled``), period end and renewal, from the subscriptions projection."""
    row = await _subscription(session, principal.tenant_id)
    return SubscriptionView(
        plan=row.plan,
        status=row.status.value,
        current_period_end=row.current_period_end,
        cancel_at_period_end=row.cancel_at_period_end,
        trial_end=row.trial_end,
        grace_ends_at=row.grace_ends_at,
        retention_ends_at=row.retention_ends_at,
        scheduled_plan=row.scheduled_plan,
        scheduled_plan_at=row.scheduled_plan_at,
        seats=row.seats,
        interval=row.interval,
    )


class DisputeItem(BaseModel):
    dispute_id: str
    charge_id: str | None
    amount: int
    currency: str
    reason: str | None
    # Stripe's: ``warning_needs_response``, ``needs_response``, ``under_review``, ``won``,
    # ``lost``...
    status: str | None


class CreditNoteItem(BaseModel):
    credit_note_id: str
    amount: int
    currency: str
    reason: str | None
    status: str | None


class InvoiceItem(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    invoice_id: str
    number: str | None
    status: str
    amount_due: int
    amount_paid: int
    # Refunded so far, over the invoice's charges (Stripe's totals; never added up twice).
    amount_refunded: int = 0
    currency: str
    period_start: datetime | None
    period_end: datetime | None
    hosted_invoice_url: str | None
    created_at: datetime
    # The latest dispute of a payment of the invoice, if any.
    dispute: DisputeItem | None = None
    credit_notes: list[CreditNoteItem] = Field(default_factory=list)


class InvoicePage(BaseModel):
    items: list[InvoiceItem]
    next_cursor: str | None


@router.get("/invoices", summary="The caller's tenant invoices, newest first")
async def list_invoices(
    principal: TenantAdmin,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> InvoicePage:
    """From the invoices projection (Stripe's ``invoice.*`` events), keyset-paginated, each
    with its refunded amount, dispute and credit notes (``charge.refunded``,
    ``charge.dispute.*``, ``credit_note.*``)."""
    query = (
        select(Invoice)
        .where(Invoice.tenant_id == principal.tenant_id)
        .order_by(Invoice.stripe_created.desc(), Invoice.id.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        query = query.where(
            tuple_(Invoice.stripe_created, Invoice.id) < tuple_(*decode_cursor(cursor))
        )
    rows = (await session.scalars(query)).all()
    adjustments = await _adjustments(
        session, principal.tenant_id, [row.stripe_invoice_id for row in rows[:limit]]
    )
    items = [_invoice_item(row, adjustments.get(row.stripe_invoice_id, [])) for row in rows[:limit]]
    return InvoicePage(
        items=items,
        next_cursor=encode_cursor(rows[limit - 1].stripe_created, rows[limit - 1].id)
        if len(rows) > limit
        else None,
    )


async def _adjustments(
    session: AsyncSession, tenant_id: uuid.UUID, invoice_ids: list[str]
) -> dict[str, list[InvoiceAdjustment]]:
    """The refunds, disputes and credit notes of the tenant's invoices, by invoice, oldest
    first."""
    if not invoice_ids:
        return {}
    rows = await session.scalars(
        select(InvoiceAdjustment)
        .where(
            InvoiceAdjustment.tenant_id == tenant_id,
            InvoiceAdjustment.stripe_invoice_id.in_(invoice_ids),
        )
        .order_by(InvoiceAdjustment.as_of, InvoiceAdjustment.created_at)
    )
    found: dict[str, list[InvoiceAdjustment]] = {}
    for row in rows:
        assert row.stripe_invoice_id is not None
        found.setdefault(row.stripe_invoice_id, []).append(row)
    return found


def _invoice_item(row: Invoice, adjustments: list[InvoiceAdjustment]) -> InvoiceItem:
    disputes = [a for a in adjustments if a.kind is AdjustmentKind.DISPUTE]
    dispute = disputes[-1] if disputes else None
    return InvoiceItem(
        invoice_id=row.stripe_invoice_id,
        number=row.number,
        status=row.status,
        amount_due=row.amount_due,
        amount_paid=row.amount_paid,
        amount_refunded=sum(a.amount for a in adjustments if a.kind is AdjustmentKind.REFUND),
        currency=row.currency,
        period_start=row.period_start,
        period_end=row.period_end,
        hosted_invoice_url=row.hosted_invoice_url,
        created_at=row.stripe_created,
        dispute=DisputeItem(
            dispute_id=dispute.stripe_id,
            charge_id=dispute.stripe_charge_id,
            amount=dispute.amount,
            currency=dispute.currency,
            reason=dispute.reason,
            status=dispute.status,
        )
        if dispute is not None
        else None,
        credit_notes=[
            CreditNoteItem(
                credit_note_id=a.stripe_id,
                amount=a.amount,
                currency=a.currency,
                reason=a.reason,
                status=a.status,
            )
            for a in adjustments
            if a.kind is AdjustmentKind.CREDIT_NOTE
        ],
    )


class UsageView(BaseModel):
    period_start: datetime
    usage: dict[UsageMetric, int]


@router.get("/usage", summary="The caller's tenant usage in the current billing period")
async def get_usage(principal: TenantAdmin, session: SessionDep) -> UsageView:
    """Workflow runs and agent minutes since the period began; storage at its latest."""
    since = await session.scalar(
        select(Subscription.current_period_start).where(
            Subscription.tenant_id == principal.tenant_id
        )
    )
    if since is None:
        now = datetime.now(UTC)
        since = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return UsageView(
        period_start=since, usage=await usage_since(session, principal.tenant_id, since)
    )


# Stripe takes meter events up to 35 days old and at most 5 minutes ahead
# (https://docs.stripe.com/api/billing/meter-event/create, ``timestamp``).
_USAGE_MAX_AGE = timedelta(days=35)
_USAGE_MAX_AHEAD = timedelta(minutes=5)
# The largest quantity one record may carry (JSON's exact integer range).
_USAGE_MAX_QUANTITY = 2**53 - 1
Metering = Annotated[Principal, Depends(require_role(Role.SERVICE_ACCOUNT, Role.TENANT_ADMIN))]


async def _required_key(
    key: Annotated[
        str,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Required: the use is recorded once per key (per tenant).",
        ),
    ],
) -> str:
    return key


class UsageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: UsageMetric
    # Strict: ``"5"``, ``5.0`` and ``true`` are not quantities.
    quantity: int = Field(ge=0, le=_USAGE_MAX_QUANTITY, strict=True)
    occurred_at: AwareDatetime | None = Field(
        default=None, description="When the use happened (default: now)."
    )


class UsageReceipt(BaseModel):
    metric: UsageMetric
    quantity: int
    occurred_at: datetime
    # A retry under a key recorded already: nothing new was recorded.
    duplicate: bool


@router.post(
    "/usage",
    summary="Record a metered use",
    status_code=201,
    responses={200: {"description": "Recorded already under this Idempotency-Key"}},
)
async def record_usage(
    body: UsageBody,
    principal: Metering,
    session: SessionDep,
    response: Response,
    key: Annotated[str, Depends(_required_key)],
) -> UsageReceipt:
    """Record one use of a metered resource for the caller's tenant (a service account, or a
    tenant admin); the hourly usage report sends it to Stripe's meter. The ``Idempotency-Key``
    header is required: a retry under the same key records nothing more and answers 200 with
    the first record; the same key with another metric or quantity is refused (422)."""
    now = datetime.now(UTC)
    occurred_at = (body.occurred_at or now).astimezone(UTC)
    if not now - _USAGE_MAX_AGE <= occurred_at <= now + _USAGE_MAX_AHEAD:
        raise Unprocessable(
            "occurred_at must lie within the last 35 days and at most 5 minutes ahead."
        )
    record = UsageRecord(
        tenant_id=principal.tenant_id,
        metric=body.metric,
        quantity=body.quantity,
        occurred_at=occurred_at,
        # The caller's tenant is part of the key: tenants' keys never meet.
        idempotency_key=bounded_key(f"api:{principal.tenant_id}:{key}"),
    )
    session.add(usage_event(record))
    try:
        await session.commit()
    except IntegrityError:  # recorded already (or concurrently) under this key
        await session.rollback()
        stored = await session.scalar(
            select(UsageEvent).where(
                UsageEvent.idempotency_key == record.idempotency_key,
                UsageEvent.tenant_id == principal.tenant_id,
            )
        )
        if stored is None:
            raise
        if (stored.metric, stored.quantity) != (record.metric, record.quantity):
            raise Unprocessable(
                "This Idempotency-Key recorded another use; send a new key for a new use."
            ) from None
        response.status_code = 200
        return UsageReceipt(
            metric=stored.metric,
            quantity=stored.quantity,
            occurred_at=stored.occurred_at,
            duplicate=True,
        )
    return UsageReceipt(
        metric=record.metric,
        quantity=record.quantity,
        occurred_at=record.occurred_at,
        duplicate=False,
    )


@router.get("/plans", summary="The plans on offer")
async def list_plans(_: CurrentPrincipal, settings: SettingsDep) -> list[PlanSpec]:
    """Each plan's price and limits (``null`` is unlimited; storage in bytes)."""
    return settings.billing_plans


# --- Changes to the subscription ----------------------------------------------------------


class PlanBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan_id: PlanId
    # ``month`` or ``year`` (the plan's annual price); by default the subscription's.
    interval: BillingInterval | None = None
    # ``now`` (prorated) or ``period_end`` (the renewal bills the new plan); by default a
    # cheaper plan, or monthly instead of yearly, takes effect at the period's end, any other
    # change at once.
    effective: Literal["now", "period_end"] | None = None

    def sold(self, settings: Settings) -> None:
        """422 when the plan is not sold by the interval asked for."""
        ensure_sold(settings.billing_plans, self.plan_id, self.interval)

    def at_period_end(self, settings: Settings, current: Subscription) -> bool:
        if self.effective is not None:
            return self.effective == "period_end"
        if current.plan is None:
            return False
        plans = settings.billing_plans
        cheaper = plan_of(plans, self.plan_id).amount < plan_of(plans, current.plan).amount
        shorter = self.interval is BillingInterval.MONTH and current.interval == "year"
        return cheaper or shorter


@router.put("/subscription/plan", summary="Change the plan")
async def change_plan(
    body: PlanBody,
    principal: TenantAdmin,
    client: TemporalDep,
    session: SessionDep,
    settings: SettingsDep,
    key: workflow_calls.IdempotencyKey,
) -> BillingView:
    """A change made now is prorated; one at the period's end (a cheaper plan, by default) is
    kept until then (``scheduled_plan``) and the renewal bills it, while the tenant is held to
    the new plan's limits. Changing to the current plan withdraws a scheduled change. 409 when
    the tenant is not trialing or active, is on that plan already, or uses more than the new
    plan allows (``excesses`` names what). A retry with the same ``Idempotency-Key`` changes
    nothing more and answers the same."""
    body.sold(settings)
    row = await _subscription(session, principal.tenant_id)
    change = PlanChange(
        plan=body.plan_id,
        requested_by=principal.user_id,
        at_period_end=body.at_period_end(settings, row),
        interval=body.interval,
    )
    call = _Call(client, settings, principal, key)
    return await _update(call, "change_plan", BillingWorkflow.change_plan, change)


@router.post("/subscription/plan/preview", summary="Preview the invoice of a plan change")
async def preview_plan_change(
    body: PlanBody,
    principal: TenantAdmin,
    client: TemporalDep,
    session: SessionDep,
    settings: SettingsDep,
) -> InvoicePreview:
    """What Stripe would bill for the change, as ``PUT /subscription/plan`` with the same body
    would make it: the prorated lines and the new plan's price on the next invoice, or only the
    new price at the period's end. Nothing changes; 409 as for the change itself."""
    body.sold(settings)
    row = await _subscription(session, principal.tenant_id)
    preview = PlanPreview(
        plan=body.plan_id,
        at_period_end=body.at_period_end(settings, row),
        interval=body.interval,
    )
    call = _Call(client, settings, principal, None)
    answer: InvoicePreview = await _execute(
        call, "preview_plan", BillingWorkflow.preview_plan_change, preview
    )
    return answer


@router.post("/subscription/cancel", summary="Cancel at the end of the period")
async def cancel_subscription(
    principal: TenantAdmin,
    client: TemporalDep,
    session: SessionDep,
    settings: SettingsDep,
    key: workflow_calls.IdempotencyKey,
) -> BillingView:
    """The subscription runs to the end of the paid period and does not renew."""
    await _subscription(session, principal.tenant_id)
    change = RenewalChange(cancel=True, requested_by=principal.user_id)
    call = _Call(client, settings, principal, key)
    return await _update(call, "cancel_subscription", BillingWorkflow.set_renewal, change)


class Resubscription(BaseModel):
    status: str
    plan: PlanId


@router.post("/subscription", summary="Subscribe again after cancellation", status_code=202)
async def resubscribe(
    body: PlanBody,
    principal: TenantAdmin,
    client: TemporalDep,
    session: SessionDep,
    settings: SettingsDep,
    key: workflow_calls.IdempotencyKey,
) -> Resubscription:
    """A cancelled tenant (its data still kept, or past retention) subscribes to a plan again
    with the customer's saved card; the billing workflow provisions it (202: follow
    ``GET /subscription``). A retry with the same ``Idempotency-Key`` provisions once. 409 when
    the tenant's subscription has not ended."""
    body.sold(settings)
    row = await _subscription(session, principal.tenant_id)
    if row.status is not BillingStatus.CANCELLED:
        raise Conflict(f"Your tenant's subscription has not ended (it is {row.status.value}).")
    request = ProvisionRequest(
        tenant_id=principal.tenant_id,
        plan=body.plan_id,
        interval=body.interval or BillingInterval.MONTH,
        idempotency_key=workflow_calls.update_id("resubscribe", principal, key)
        or f"resubscribe:{uuid.uuid4()}",
    )
    async with workflow_calls.deadline(settings):
        await signal_billing(client, settings, principal.tenant_id, "provision", request)
    return Resubscription(status=BillingStatus.PROVISIONING.value, plan=body.plan_id)


@router.post("/subscription/resume", summary="Resume renewal")
async def resume_subscription(
    principal: TenantAdmin,
    client: TemporalDep,
    session: SessionDep,
    settings: SettingsDep,
    key: workflow_calls.IdempotencyKey,
) -> BillingView:
    """Undo a cancellation at period end: the subscription renews again."""
    await _subscription(session, principal.tenant_id)
    change = RenewalChange(cancel=False, requested_by=principal.user_id)
    call = _Call(client, settings, principal, key)
    return await _update(call, "resume_subscription", BillingWorkflow.set_renewal, change)


class PaymentMethodIntent(BaseModel):
    setup_intent_id: str
    client_secret: str


@router.post("/payment-method", summary="Start adding a card")
async def collect_payment_method(
    principal: TenantAdmin,
    client: TemporalDep,
    session: SessionDep,
    settings: SettingsDep,
    key: workflow_calls.IdempotencyKey,
) -> PaymentMethodIntent:
    """A Stripe SetupIntent for the browser to confirm with Stripe.js (``confirmCardSetup``);
    once Stripe reports it succeeded the card becomes the default, and overdue invoices are
    charged to it. 409 when the tenant has no billing account."""
    customer_id = await session.scalar(
        select(Subscription.stripe_customer_id).where(Subscription.tenant_id == principal.tenant_id)
    )
    if customer_id is None:
        raise Conflict("Your tenant has no billing account to add a card to.")
    request = PaymentMethodRequest(requested_by=principal.user_id)
    # A retry under the same Idempotency-Key gets the same SetupIntent (keyed on the update).
    collection: PaymentMethodCollection = await _execute(
        _Call(client, settings, principal, key),
        "collect_payment_method",
        BillingWorkflow.collect_payment_method,
        request,
    )
    setup = await session.scalar(
        select(PaymentMethodSetup).where(
            PaymentMethodSetup.setup_intent_id == collection.setup_intent_id,
            PaymentMethodSetup.tenant_id == principal.tenant_id,
        )
    )
    assert setup is not None, "the activity stores the SetupIntent before the update returns"
    return PaymentMethodIntent(
        setup_intent_id=setup.setup_intent_id,
        client_secret=settings.field_cipher().decrypt(setup.client_secret),
    )


class PaymentMethodItem(BaseModel):
    payment_method_id: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    is_default: bool


class PaymentMethodList(BaseModel):
    items: list[PaymentMethodItem]


@router.get("/payment-methods", summary="The saved payment methods")
async def list_payment_methods(
    principal: TenantAdmin, session: SessionDep, settings: SettingsDep
) -> PaymentMethodList:
    """The cards saved on the tenant's Stripe customer (brand, last four digits, expiry), read
    from Stripe; ``is_default`` marks the one invoices are charged to. Empty without a billing
    account."""
    customer_id = await _customer_id(session, principal.tenant_id)
    opener = gateway_from_settings(settings)
    if customer_id is None or opener is None:
        return PaymentMethodList(items=[])
    try:
        async with opener() as gateway:
            methods = await gateway.list_payment_methods(customer_id)
    except BillingUnavailable as exc:
        raise ServiceUnavailable(str(exc), headers={"Retry-After": "5"}) from None
    except BillingRejected as exc:
        raise ProviderRefused(str(exc)) from None
    return PaymentMethodList(
        items=[
            PaymentMethodItem.model_validate(method.model_dump(exclude={"customer_id"}))
            for method in methods
        ]
    )


@router.delete(
    "/payment-methods/{payment_method_id}",
    summary="Remove a saved payment method",
    status_code=204,
)
async def remove_payment_method(
    payment_method_id: Annotated[
        str, FastApiPath(max_length=100, pattern=r"^(pm|card|src)_[A-Za-z0-9_]+$")
    ],
    principal: TenantAdmin,
    client: TemporalDep,
    session: SessionDep,
    settings: SettingsDep,
    key: workflow_calls.IdempotencyKey,
) -> Response:
    """Detach a card from the tenant's Stripe customer (through the billing workflow, audited
    as ``billing.payment_method_removed``). 404 when the card is not one of the tenant's; 409
    for the default card while a subscription runs (save another card first)."""
    if await _customer_id(session, principal.tenant_id) is None:
        raise NotFound("Your tenant has no such payment method.")
    removal = PaymentMethodRemoval(
        payment_method_id=payment_method_id, requested_by=principal.user_id
    )
    call = _Call(client, settings, principal, key)
    await _update(call, "remove_payment_method", BillingWorkflow.remove_payment_method, removal)
    return Response(status_code=204)


async def _customer_id(session: AsyncSession, tenant_id: uuid.UUID) -> str | None:
    customer_id: str | None = await session.scalar(
        select(Subscription.stripe_customer_id).where(Subscription.tenant_id == tenant_id)
    )
    return customer_id


# --- Operations (super_admin) ---------------------------------------------------------------

Operator = Annotated[Principal, Depends(require_role(Role.SUPER_ADMIN))]


@router.post("/tenants/{tenant_id}/policy", summary="Apply the configured billing policy")
async def apply_policy(
    tenant_id: uuid.UUID,
    principal: Operator,
    client: TemporalDep,
    settings: SettingsDep,
    key: workflow_calls.IdempotencyKey,
) -> BillingView:
    """A running billing workflow keeps the policy (trial, grace, reminders, retention) it
    started with; this applies the API's current settings to the tenant's workflow. 409 when
    billing for the tenant has ended."""
    call = _Call(client, settings, principal, key, tenant_id=tenant_id)
    return await _update(call, "set_policy", BillingWorkflow.set_policy, billing_policy(settings))


@router.post(
    "/tenants/{tenant_id}/parked-events/replay", summary="Replay the tenant's parked events"
)
async def replay_parked_events(
    tenant_id: uuid.UUID,
    principal: Operator,
    client: TemporalDep,
    settings: SettingsDep,
    key: workflow_calls.IdempotencyKey,
) -> BillingView:
    """Stripe events whose handling failed wait in the workflow (``parked_events``) and are
    retried on their own, backing off; once the cause is fixed, this tries them all now."""
    call = _Call(client, settings, principal, key, tenant_id=tenant_id)
    request = OperatorRequest(requested_by=principal.user_id)
    return await _update(call, "replay_parked", BillingWorkflow.replay_parked_events, request)


@router.post(
    "/tenants/{tenant_id}/provisioning/retry", summary="Provision a tenant's billing again"
)
async def retry_provisioning(
    tenant_id: uuid.UUID,
    principal: Operator,
    client: TemporalDep,
    settings: SettingsDep,
    key: workflow_calls.IdempotencyKey,
) -> BillingView:
    """Create the customer and subscription again for a tenant whose provisioning failed, on
    the plan it asked for (audited as ``billing.provisioning_retried``); the view shows the
    outcome (``provision_failure`` again if Stripe still refuses). 409 when its provisioning
    has not failed."""
    call = _Call(client, settings, principal, key, tenant_id=tenant_id)
    request = OperatorRequest(requested_by=principal.user_id)
    return await _update(call, "retry_provisioning", BillingWorkflow.retry_provisioning, request)


#: Unmatched events looked at per replay, oldest first.
REPLAY_BATCH = 500


class UnmatchedReplay(BaseModel):
    delivered: list[str] = Field(description="Ids of the events delivered, oldest first")
    unmatched: int = Field(description="Events looked at that still match no tenant")


@router.post("/events/unmatched/replay", summary="Deliver unmatched events whose tenant is known")
async def replay_unmatched_events(
    request: Request,
    principal: Operator,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
) -> UnmatchedReplay:
    """Match the inbox's unmatched Stripe events again (the oldest 500), as the webhook does:
    an event whose tenant is known now (its customer recorded, its tenant created since) goes
    to that tenant's billing workflow and is audited there as ``billing.event_replayed``.
    Safe to repeat: an event is delivered once (the workflow also ignores one it applied)."""
    rows = await session.scalars(
        select(StripeEvent)
        .where(StripeEvent.status == StripeEventStatus.UNMATCHED)
        .order_by(StripeEvent.stripe_created, StripeEvent.id)
        .limit(REPLAY_BATCH)
    )
    report = UnmatchedReplay(delivered=[], unmatched=0)
    for row in rows.all():
        event = parse_event(row.payload)
        if needs_charge(event):
            event = await _with_charge_owner(settings, event)
        tenant_id = await _owner(session, event)
        if tenant_id is None:
            report.unmatched += 1
            continue
        await deliver_event(client, settings, tenant_id, event)
        if await _claim(session, row.id, tenant_id):
            await audit.append(
                session,
                "billing.event_replayed",
                tenant_id=tenant_id,
                actor=request_actor(request, principal),
                data={"event_id": row.id, "type": row.type},
            )
            report.delivered.append(row.id)
        await session.commit()
    return report


async def _claim(session: AsyncSession, event_id: str, tenant_id: uuid.UUID) -> bool:
    """Mark an unmatched event delivered to ``tenant_id``; false when a concurrent replay did."""
    result = await session.execute(
        update(StripeEvent)
        .where(StripeEvent.id == event_id, StripeEvent.status == StripeEventStatus.UNMATCHED)
        .values(tenant_id=tenant_id, status=StripeEventStatus.DELIVERED, delivered_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# Stripe refuses a trial end more than two years ahead.
_LONGEST_TRIAL = timedelta(days=730)


class TrialBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trial_end: AwareDatetime


@router.post("/tenants/{tenant_id}/trial", summary="Extend a tenant's trial")
async def extend_trial(
    tenant_id: uuid.UUID,
    body: TrialBody,
    principal: Operator,
    client: TemporalDep,
    settings: SettingsDep,
    key: workflow_calls.IdempotencyKey,
) -> BillingView:
    """Move a trialing tenant's trial end later, in Stripe and in the tenant's billing workflow
    (audited as ``billing.trial_extended``). 422 for a time in the past or more than two years
    ahead; 409 when the tenant is not trialing or the trial already ends later."""
    if not datetime.now(UTC) < body.trial_end <= datetime.now(UTC) + _LONGEST_TRIAL:
        raise Unprocessable("trial_end must lie in the future, at most two years ahead.")
    extension = TrialExtension(trial_end=body.trial_end, requested_by=principal.user_id)
    call = _Call(client, settings, principal, key, tenant_id=tenant_id)
    return await _update(call, "extend_trial", BillingWorkflow.extend_trial, extension)


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500, pattern=r"\S")


@router.post("/tenants/{tenant_id}/suspend", summary="Suspend a tenant")
async def suspend_tenant(
    tenant_id: uuid.UUID,
    body: ReasonBody,
    principal: Operator,
    client: TemporalDep,
    settings: SettingsDep,
    key: workflow_calls.IdempotencyKey,
) -> BillingView:
    """Make the tenant read-only for a reason, whatever its payments (audited as
    ``billing.operator_suspended`` with the reason); billing and Stripe go on underneath.
    409 when it is suspended by an operator already or its subscription has ended."""
    request = OperatorSuspension(reason=body.reason, requested_by=principal.user_id)
    call = _Call(client, settings, principal, key, tenant_id=tenant_id)
    return await _update(call, "suspend", BillingWorkflow.suspend, request)


@router.post("/tenants/{tenant_id}/unsuspend", summary="Lift an operator's suspension")
async def unsuspend_tenant(
    tenant_id: uuid.UUID,
    body: ReasonBody,
    principal: Operator,
    client: TemporalDep,
    settings: SettingsDep,
    key: workflow_calls.IdempotencyKey,
) -> BillingView:
    """Lift an operator's suspension, for a reason (audited as ``billing.operator_unsuspended``);
    the tenant's access is billing's again (a suspension for non-payment stays until the
    invoice is paid). 409 when no operator suspension is in force."""
    request = OperatorSuspension(reason=body.reason, requested_by=principal.user_id)
    call = _Call(client, settings, principal, key, tenant_id=tenant_id)
    return await _update(call, "unsuspend", BillingWorkflow.unsuspend, request)


async def _subscription(session: AsyncSession, tenant_id: uuid.UUID) -> Subscription:
    row = await session.scalar(select(Subscription).where(Subscription.tenant_id == tenant_id))
    if row is None:
        raise NotFound("Your tenant has no subscription yet.")
    return row


@dataclass(frozen=True)
class _Call:
    """Who sends an update to the tenant's billing workflow, and the request's key."""

    client: Client
    settings: Settings
    principal: Principal
    key: str | None
    # Another tenant's workflow (operators); the caller's own by default.
    tenant_id: uuid.UUID | None = None


async def _update(call: _Call, name: str, update: Any, change: BaseModel) -> BillingView:
    view: BillingView = await _execute(call, name, update, change)
    return view


async def _execute(call: _Call, name: str, update: Any, change: BaseModel) -> Any:
    """Send the update to the tenant's billing workflow, within the API's deadline and under
    the id the request's ``Idempotency-Key`` gives; its refusals as problems."""
    tenant_id = call.tenant_id or call.principal.tenant_id
    handle = call.client.get_workflow_handle_for(BillingWorkflow.run, workflow_id(tenant_id))
    try:
        return await workflow_calls.execute_update(
            handle,
            update,
            change,
            settings=call.settings,
            update_id=workflow_calls.update_id(name, call.principal, call.key),
        )
    except WorkflowUpdateFailedError as err:
        if isinstance(err.cause, ApplicationError):
            _refuse(err.cause)
        if isinstance(err.cause, ActivityError) and isinstance(err.cause.cause, ApplicationError):
            _provider_refusal(err.cause.cause)
        raise
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            if call.tenant_id is not None:  # an operator's call on another tenant
                raise Conflict(
                    "No billing runs for this tenant: it ended or never started."
                ) from None
            raise Conflict("Billing for your tenant has ended; subscribe again.") from None
        raise


def _provider_refusal(cause: ApplicationError) -> None:
    """Stripe's answer to the change, when it was no (see ``activities/billing.py``)."""
    if cause.type == PAYMENT_DECLINED:
        raise PaymentDeclined(f"The card was declined: {cause.message}")
    if cause.type == STRIPE_REJECTED:
        raise ProviderRefused(cause.message)


def _refuse(cause: ApplicationError) -> None:
    """Translate the workflow's refusal types (see ``workflows/billing.py``)."""
    if cause.type == PLAN_LIMIT_EXCEEDED:
        raise Conflict(cause.message, excesses=list(cause.details[0]))
    if cause.type in (BILLING_STATE, SAME_PLAN):
        raise Conflict(cause.message)
    if cause.type == PAYMENT_METHOD_NOT_FOUND:
        raise NotFound(cause.message)
