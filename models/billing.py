"""Billing: the plan catalogue as Stripe knows it, the subscriptions and invoices projections
(with the refunds, disputes and credit notes on invoices), the Stripe webhook inbox, metered
usage, and the types that cross the billing workflow."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Timestamped, new_id, str_enum, utcnow
from models.onboarding import PlanId


class BillingStatus(StrEnum):
    """A tenant's access as billing decides it."""

    PROVISIONING = "provisioning"  # asked for, no subscription yet
    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"  # a payment failed; full access during the grace period
    SUSPENDED = "suspended"  # grace period over: read-only until paid
    CANCELLED = "cancelled"  # subscription ended; data kept until retention ends


class UsageMetric(StrEnum):
    """What is metered, and reported to Stripe meters."""

    WORKFLOW_RUNS = "workflow_runs"
    AGENT_MINUTES = "agent_minutes"
    STORAGE_BYTES = "storage_bytes"
    CONTENT_PUBLISHED = "content_published"
    RECORDS_SYNCED = "records_synced"


# Gauges are measurements (the latest counts); the other metrics are counters (summed).
GAUGES = frozenset({UsageMetric.STORAGE_BYTES})


class BillingInterval(StrEnum):
    """How often a subscription renews: a plan's monthly price, or its annual one."""

    MONTH = "month"
    YEAR = "year"


class AdjustmentKind(StrEnum):
    """What changed an invoice after it was paid (or issued)."""

    # A charge's refunds: the amount is Stripe's ``amount_refunded`` of the charge, cumulative.
    REFUND = "refund"
    DISPUTE = "dispute"  # a chargeback the cardholder's bank opened
    CREDIT_NOTE = "credit_note"


# --- Tables -------------------------------------------------------------------------------


class BillingPlan(Timestamped, Base):
    """A configured plan and the Stripe plan (price) that bills it, written when first used."""

    __tablename__ = "plans"

    id: Mapped[PlanId] = mapped_column(str_enum(PlanId), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(String(3))
    interval: Mapped[str] = mapped_column(String(16))
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    stripe_price_id: Mapped[str] = mapped_column(String(100))


class Subscription(Timestamped, Base):
    """The subscriptions projection: one row per tenant, written by the billing workflow."""

    __tablename__ = "subscriptions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), unique=True
    )
    stripe_customer_id: Mapped[str | None] = mapped_column(String(100), unique=True)
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(100), unique=True)
    plan: Mapped[PlanId | None] = mapped_column(str_enum(PlanId))
    status: Mapped[BillingStatus] = mapped_column(
        str_enum(BillingStatus), default=BillingStatus.PROVISIONING
    )
    stripe_status: Mapped[str | None] = mapped_column(String(32))
    current_period_start: Mapped[datetime | None]
    current_period_end: Mapped[datetime | None]
    cancel_at_period_end: Mapped[bool] = mapped_column(default=False)
    trial_end: Mapped[datetime | None]
    grace_ends_at: Mapped[datetime | None]
    retention_ends_at: Mapped[datetime | None]
    # A plan change waiting for the period's end, and when it is applied.
    scheduled_plan: Mapped[PlanId | None] = mapped_column(str_enum(PlanId))
    scheduled_plan_at: Mapped[datetime | None]
    # The subscription's quantity: the seats of a plan priced per user, else 1.
    seats: Mapped[int | None]
    # How often it renews (``month``, ``year``).
    interval: Mapped[str | None] = mapped_column(String(16))


class Invoice(Timestamped, Base):
    """The invoices projection, from ``invoice.*`` events; a row keeps its newest state."""

    __tablename__ = "invoices"
    __table_args__ = (Index("ix_invoices_tenant_created", "tenant_id", "stripe_created"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    stripe_invoice_id: Mapped[str] = mapped_column(String(100), unique=True)
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(100))
    number: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(32))
    amount_due: Mapped[int] = mapped_column(BigInteger)
    amount_paid: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    period_start: Mapped[datetime | None]
    period_end: Mapped[datetime | None]
    hosted_invoice_url: Mapped[str | None] = mapped_column(String(1000))
    stripe_created: Mapped[datetime]
    # The Stripe event time of the state held, so that an older event never overwrites it.
    as_of: Mapped[int] = mapped_column(BigInteger)


class InvoiceAdjustment(Timestamped, Base):
    """Refunds, disputes and credit notes on the invoices projection, one row per Stripe object
    (a refund row per charge), from ``charge.refunded``, ``charge.dispute.*`` and
    ``credit_note.*`` events; a row keeps its newest state. Rows join their invoice by its
    Stripe id (an adjustment may arrive before the invoice's own events)."""

    __tablename__ = "invoice_adjustments"
    __table_args__ = (
        UniqueConstraint("kind", "stripe_id"),
        Index("ix_invoice_adjustments_tenant_invoice", "tenant_id", "stripe_invoice_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[AdjustmentKind] = mapped_column(str_enum(AdjustmentKind))
    # The charge (a refund), the dispute or the credit note.
    stripe_id: Mapped[str] = mapped_column(String(255))
    # ``None`` when Stripe knows no invoice for it (a charge outside billing).
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(100))
    stripe_charge_id: Mapped[str | None] = mapped_column(String(255))
    # Refund: the charge's refunded total so far; dispute: the disputed amount; credit note:
    # its total. In the currency's smallest unit.
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str | None] = mapped_column(String(32))
    # The Stripe event time of the state held, so that an older event never overwrites it.
    as_of: Mapped[int] = mapped_column(BigInteger)


class StripeEventStatus(StrEnum):
    RECEIVED = "received"  # stored, not yet handed to the tenant's workflow
    DELIVERED = "delivered"  # signalled to the tenant's billing workflow
    IGNORED = "ignored"  # an event type billing does not act on
    UNMATCHED = "unmatched"  # no tenant owns the customer it is about


class StripeEvent(Base):
    """The webhook inbox: every verified Stripe event, once (the event id is the key)."""

    __tablename__ = "stripe_events"
    __table_args__ = (Index("ix_stripe_events_status_created", "status", "stripe_created"),)

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="SET NULL"), index=True
    )
    status: Mapped[StripeEventStatus] = mapped_column(str_enum(StripeEventStatus))
    stripe_created: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class PaymentMethodSetup(Base):
    """A SetupIntent the tenant's admin completes in the browser; its client secret is kept
    encrypted (``Settings.field_cipher``) for the API to hand over, never in workflow history."""

    __tablename__ = "payment_method_setups"

    setup_intent_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    client_secret: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UsageEvent(Base):
    """One metered use (a workflow run, agent minutes, a storage measurement), recorded once
    under its idempotency key; ``report_id`` is set once it is counted in a report."""

    __tablename__ = "usage_events"
    __table_args__ = (Index("ix_usage_events_tenant_occurred", "tenant_id", "occurred_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    metric: Mapped[UsageMetric] = mapped_column(str_enum(UsageMetric))
    quantity: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime]
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    report_id: Mapped[str | None] = mapped_column(
        ForeignKey("usage_reports.id", ondelete="SET NULL"), index=True
    )


class UsageReport(Base):
    """What one aggregation reported to a Stripe meter; its id is the meter event identifier,
    so Stripe drops a repeated report."""

    __tablename__ = "usage_reports"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    metric: Mapped[UsageMetric] = mapped_column(str_enum(UsageMetric))
    quantity: Mapped[int] = mapped_column(BigInteger)
    # The last use counted: the meter event's timestamp.
    occurred_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    # Why Stripe refused it (a meter missing or inactive, say): recorded and alerted once, not
    # resent every hour; an operator fixes the meter and clears this to send it again.
    refused: Mapped[str | None] = mapped_column(String(500))


# --- What Stripe says, normalised by the gateway ------------------------------------------


class SubscriptionSnapshot(BaseModel):
    """A Stripe subscription as billing needs it; ``created`` orders snapshots (the event's
    time when it came with an event, the fetch time when fetched)."""

    subscription_id: str
    customer_id: str
    # The subscription's (single) item: a plan change replaces its price.
    item_id: str | None = None
    tenant_id: uuid.UUID | None = None
    plan: PlanId | None = None
    stripe_status: str
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    cancel_at_period_end: bool = False
    trial_end: datetime | None = None
    as_of: int
    # The item's quantity: the seats of a plan priced per user, else 1.
    quantity: int = 1
    # How often its price renews (``month``, ``year``; Stripe's word).
    interval: str | None = None


class InvoiceSnapshot(BaseModel):
    invoice_id: str
    customer_id: str
    subscription_id: str | None = None
    tenant_id: uuid.UUID | None = None
    number: str | None = None
    status: str
    amount_due: int
    amount_paid: int
    currency: str
    period_start: datetime | None = None
    period_end: datetime | None = None
    hosted_invoice_url: str | None = None
    created: datetime
    as_of: int

    @property
    def settled(self) -> bool:
        """Paid, or voided: nothing is owed on it any more."""
        return self.status in ("paid", "void")


class SetupIntentSnapshot(BaseModel):
    """A SetupIntent that succeeded: which card the customer saved."""

    setup_intent_id: str
    customer_id: str
    payment_method_id: str
    tenant_id: uuid.UUID | None = None


class PaymentMethodSnapshot(BaseModel):
    """A saved payment method as the tenant's admins see it (never the card number)."""

    payment_method_id: str
    customer_id: str | None = None
    brand: str | None = None
    last4: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None
    # The customer's default for invoices: it pays the subscription.
    is_default: bool = False


class ChargeSnapshot(BaseModel):
    """A Stripe charge as billing needs it: whose it is, what it paid, what was refunded."""

    charge_id: str
    customer_id: str | None = None
    # Found through the charge's PaymentIntent when the charge does not name it (API versions
    # from 2025-03-31 on).
    invoice_id: str | None = None
    payment_intent_id: str | None = None
    amount: int
    amount_refunded: int
    refunded: bool
    currency: str


class AdjustmentSnapshot(BaseModel):
    """A refund (a charge's refunded total), a dispute or a credit note, as the invoices
    projection records it; ``as_of`` orders its states (the event's time)."""

    kind: AdjustmentKind
    # The charge of a refund, the dispute, the credit note. (Lengths: the projection's columns.)
    stripe_id: str = Field(max_length=255)
    customer_id: str | None = Field(default=None, max_length=100)
    invoice_id: str | None = Field(default=None, max_length=100)
    charge_id: str | None = Field(default=None, max_length=255)
    tenant_id: uuid.UUID | None = None
    amount: int = Field(ge=0)
    currency: str = Field(min_length=3, max_length=3)
    reason: str | None = Field(default=None, max_length=100)
    status: str | None = Field(default=None, max_length=32)
    as_of: int


class BillingEvent(BaseModel):
    """A verified Stripe event, reduced to what the billing workflow acts on."""

    event_id: str
    type: str
    created: int
    customer_id: str | None = None
    subscription: SubscriptionSnapshot | None = None
    invoice: InvoiceSnapshot | None = None
    setup_intent: SetupIntentSnapshot | None = None
    # A refund, dispute or credit note.
    adjustment: AdjustmentSnapshot | None = None

    @property
    def tenant_id(self) -> uuid.UUID | None:
        """The tenant named in the object's metadata, when the object carries it."""
        for snapshot in (self.subscription, self.invoice, self.setup_intent, self.adjustment):
            if snapshot is not None and snapshot.tenant_id is not None:
                return snapshot.tenant_id
        return None


# --- The workflow's input, state, requests and view ----------------------------------------


class ProvisionRequest(BaseModel):
    """Give a tenant its subscription (on approval); repeated requests under one key are one."""

    tenant_id: uuid.UUID
    plan: PlanId
    idempotency_key: str
    interval: BillingInterval = BillingInterval.MONTH


class BillingPolicy(BaseModel):
    """The human-facing clock, fixed from settings when the workflow starts."""

    trial_days: int = 14
    grace: timedelta = timedelta(days=7)
    reminder_days: list[int] = Field(default_factory=lambda: [1, 3, 6])
    # Reminders as durations into the grace period; when set, they replace ``reminder_days``.
    reminders: list[timedelta] | None = None
    retention: timedelta = timedelta(days=30)
    usage_report_every: timedelta = timedelta(hours=1)
    # The run continues as new once its history reaches this many events.
    history_limit: int = 2_000
    # How long one activity may take, retries included, before the workflow gives up on it,
    # records the failure and goes on: while it runs it holds the lock (every update and timer
    # waits), so it is bounded. Updates wait on a tighter bound: a person is waiting.
    activity_deadline: timedelta = timedelta(minutes=10)
    update_deadline: timedelta = timedelta(minutes=1)
    notice_deadline: timedelta = timedelta(minutes=30)
    # A Stripe event whose handling failed is parked and tried again after this, doubling, up
    # to ``parked_attempts`` times; after that an operator replays it.
    parked_retry: timedelta = timedelta(hours=1)
    parked_attempts: int = 6
    # After a failed timer action (a suspension whose projection write failed, say), wait this
    # long before trying it again.
    failure_backoff: timedelta = timedelta(minutes=5)
    # A run that holds no customer and receives nothing for this long ends (a fresh start
    # rebuilds it from the projection).
    idle_end: timedelta = timedelta(days=30)
    # A change at the period's end is made this long before the period ends, so that the
    # renewal bills the new plan.
    plan_change_lead: timedelta = timedelta(hours=1)


def reminder_offsets(policy: BillingPolicy) -> list[tuple[int, timedelta, str]]:
    """The policy's reminders: (key remembered once sent, offset into the grace period, label).
    Day-based reminders keep their day as the key (as runs always had); duration-based ones use
    their offset in seconds."""
    if policy.reminders is None:
        return [(day, timedelta(days=day), f"day-{day}") for day in policy.reminder_days]
    return [
        (int(at.total_seconds()), at, f"after-{int(at.total_seconds())}s")
        for at in sorted(policy.reminders)
    ]


class Dunning(BaseModel):
    """An unpaid period: since when, and which reminders went out."""

    since: datetime
    reminders_sent: list[int] = Field(default_factory=list)


class ParkedEvent(BaseModel):
    """A Stripe event whose handling failed: tried again at ``retry_at`` (``None``: attempts
    exhausted, waiting for an operator)."""

    event: BillingEvent
    attempts: int
    error: str
    retry_at: datetime | None


class OperatorHold(BaseModel):
    """An operator's suspension: the tenant is read-only whatever Stripe says, until lifted."""

    reason: str
    since: datetime
    by: uuid.UUID | None = None


# Ids of the events the reconciliation with Stripe delivers (``reconcile:{subscription}:...``):
# the projection differed from Stripe, so billing reads Stripe and writes the projection again.
RECONCILED = "reconcile:"


class ScheduledPlan(BaseModel):
    """A plan change that takes effect at the end of the period (a downgrade, by default)."""

    plan: PlanId
    # When it is applied: shortly before the period ends, so that the renewal bills it.
    at: datetime
    requested_by: uuid.UUID | None = None
    interval: BillingInterval | None = None


class BillingState(BaseModel):
    """Everything the workflow knows; carried across continue-as-new."""

    status: BillingStatus = BillingStatus.PROVISIONING
    plan: PlanId | None = None
    customer_id: str | None = None
    subscription: SubscriptionSnapshot | None = None
    provision_keys: list[str] = Field(default_factory=list)
    # Invoices a payment failed on and nothing has settled since, by Stripe id.
    unpaid_invoices: list[str] = Field(default_factory=list)
    # Recently settled invoices: a late failure event for one of them changes nothing.
    settled_invoices: list[str] = Field(default_factory=list)
    # Recently applied events (ids): a repeated signal changes nothing.
    applied_events: list[str] = Field(default_factory=list)
    dunning: Dunning | None = None
    retention_ends_at: datetime | None = None
    # Whether the tenant's usage-report Schedule was ensured (removed on cancellation).
    usage_scheduled: bool = False
    # The plan of a provisioning that failed (no card, say), and why: a saved card retries it.
    pending_plan: PlanId | None = None
    pending_interval: BillingInterval = BillingInterval.MONTH
    provision_failure: str | None = None
    # Stripe events whose handling failed, kept for another try (bounded, oldest dropped).
    parked: list[ParkedEvent] = Field(default_factory=list)
    # Ids of updates handled (with the SetupIntent a card collection returned, else ""):
    # Temporal drops a repeated update id only within a run, so the window is carried here.
    handled_updates: dict[str, str] = Field(default_factory=dict)
    # An operator's suspension in force (billing goes on underneath it).
    hold: OperatorHold | None = None
    # A plan change waiting for the period's end.
    scheduled_plan: ScheduledPlan | None = None
    # Since when the tenant's members changed and the seats billed were not counted again.
    seats_changed_since: datetime | None = None
    # Messages received but not yet handled when the run continued as new.
    pending: list[BillingEvent] = Field(default_factory=list)
    pending_provisions: list[ProvisionRequest] = Field(default_factory=list)


class BillingInput(BaseModel):
    tenant_id: uuid.UUID
    policy: BillingPolicy = BillingPolicy()
    state: BillingState | None = None


class PlanChange(BaseModel):
    """Move to ``plan`` now (prorated), or at the end of the period (``at_period_end``): the
    renewal then bills the new plan and nothing is prorated."""

    plan: PlanId
    requested_by: uuid.UUID | None = None
    at_period_end: bool = False
    # The price's interval; ``None`` keeps the subscription's.
    interval: BillingInterval | None = None


class PlanPreview(BaseModel):
    """What Stripe would bill for a change to ``plan`` (nothing changes)."""

    plan: PlanId
    at_period_end: bool = False
    interval: BillingInterval | None = None


class InvoiceLine(BaseModel):
    description: str | None
    amount: int
    proration: bool


class InvoicePreview(BaseModel):
    """The invoice a plan change would bring: due now (prorated) or at the period's end."""

    plan: PlanId
    currency: str
    amount_due: int
    # When Stripe would bill it: now for a prorated change, else the period's end.
    billed_at: datetime | None
    lines: list[InvoiceLine]


class RenewalChange(BaseModel):
    """Cancel at the period's end (``cancel=True``) or resume renewal (``cancel=False``)."""

    cancel: bool
    requested_by: uuid.UUID | None = None


class BillingView(BaseModel):
    """What the billing workflow reports about a tenant (its query)."""

    tenant_id: uuid.UUID
    status: BillingStatus
    plan: PlanId | None
    stripe_status: str | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    trial_end: datetime | None
    grace_ends_at: datetime | None
    retention_ends_at: datetime | None
    unpaid_invoices: list[str]
    # Stripe events whose handling failed, waiting for another try or an operator.
    parked_events: list[str] = Field(default_factory=list)
    # Why the last provisioning failed (until a saved card or a retry subscribes the tenant).
    provision_failure: str | None = None
    # Why an operator suspended the tenant (``None``: no operator suspension).
    suspended_by_operator: str | None = None
    # A plan change waiting for the period's end, and when it is applied.
    scheduled_plan: PlanId | None = None
    scheduled_plan_at: datetime | None = None
    # The seats billed (members, for a plan priced per user; else 1).
    seats: int | None = None
    interval: str | None = None
    scheduled_interval: BillingInterval | None = None


# --- Activity inputs ----------------------------------------------------------------------


class CustomerRequest(BaseModel):
    tenant_id: uuid.UUID
    idempotency_key: str


class SubscriptionRequest(BaseModel):
    tenant_id: uuid.UUID
    customer_id: str
    plan: PlanId
    trial_end: datetime | None = None
    idempotency_key: str
    interval: BillingInterval = BillingInterval.MONTH


class SubscriptionUpdate(BaseModel):
    """A change to the live subscription through Stripe (plan, renewal, or trial end)."""

    # Whose (for the seats of a plan priced per user); runs before it was sent name it in
    # the subscription's metadata only.
    tenant_id: uuid.UUID | None = None
    subscription: SubscriptionSnapshot
    plan: PlanId | None = None
    cancel_at_period_end: bool | None = None
    trial_end: datetime | None = None
    idempotency_key: str
    # Whether Stripe prorates a plan change (a change at the period's end is not prorated).
    prorate: bool = True
    # The new price's interval (``None``: the subscription's).
    interval: BillingInterval | None = None


class BillingTransition(BaseModel):
    """One change of a tenant's billing: projection, tenant row and audit row together, once
    under ``idempotency_key``."""

    tenant_id: uuid.UUID
    status: BillingStatus
    previous: BillingStatus
    # The audit action; ``None`` for a projection refresh that changes no access (a renewal).
    action: str | None
    idempotency_key: str
    actor_id: uuid.UUID | None = None
    subscription: SubscriptionSnapshot | None = None
    customer_id: str | None = None
    grace_ends_at: datetime | None = None
    retention_ends_at: datetime | None = None
    data: dict[str, str] = Field(default_factory=dict)
    # An operator's suspension holds: the tenant stays read-only whatever ``status`` grants.
    held: bool = False
    # The plan change waiting for the period's end (projected); ``release_hold`` ends the
    # tenant's hold to its plan (a scheduled change withdrawn).
    scheduled_plan: ScheduledPlan | None = None
    release_hold: bool = False


class PaymentMethodRequest(BaseModel):
    """Start collecting a card for the tenant's subscription (a SetupIntent)."""

    requested_by: uuid.UUID | None = None


class OperatorRequest(BaseModel):
    """An operator's action on a tenant's billing (who asked)."""

    requested_by: uuid.UUID | None = None


class PaymentMethodRemoval(BaseModel):
    """Remove a saved payment method from the tenant's customer (who asked)."""

    payment_method_id: str
    requested_by: uuid.UUID | None = None


class PaymentMethodLookup(BaseModel):
    """A payment method as Stripe has it, with whether it is ``customer_id``'s default."""

    customer_id: str
    payment_method_id: str


class PaymentMethodDetach(BaseModel):
    """Detach a payment method from its customer, once under the key."""

    payment_method_id: str
    idempotency_key: str


class OperatorSuspension(BaseModel):
    """An operator suspends a tenant, or lifts the suspension, for a reason (audited)."""

    reason: str = Field(min_length=1, max_length=500)
    requested_by: uuid.UUID | None = None


class TrialExtension(BaseModel):
    """An operator moves a trialing tenant's trial end later."""

    trial_end: datetime
    requested_by: uuid.UUID | None = None


class PaymentMethodCollection(BaseModel):
    """The SetupIntent the browser confirms; its client secret is only in the projection."""

    setup_intent_id: str


class SetupIntentRequest(BaseModel):
    tenant_id: uuid.UUID
    customer_id: str
    idempotency_key: str


class DefaultPaymentMethod(BaseModel):
    """Make a saved card the customer's default for invoices, once under the key."""

    customer_id: str
    payment_method_id: str
    idempotency_key: str


class OpenInvoicesPayment(BaseModel):
    """Retry the payment of the customer's open invoices, each once under the key."""

    customer_id: str
    idempotency_key: str


class PlanFit(BaseModel):
    """Does the tenant's usage fit ``plan``?"""

    tenant_id: uuid.UUID
    plan: PlanId
    # Hold the tenant to the plan until then (a change at the period's end), not briefly.
    hold_until: datetime | None = None


class SeatsUpdate(BaseModel):
    """Bill the tenant's members as the subscription's seats (a plan priced per user)."""

    tenant_id: uuid.UUID
    subscription: SubscriptionSnapshot
    # Prefix of the Stripe idempotency key (the count of seats completes it).
    idempotency_key: str


class PreviewRequest(BaseModel):
    """Ask Stripe what moving ``subscription`` to ``plan`` would bill."""

    tenant_id: uuid.UUID
    subscription: SubscriptionSnapshot
    plan: PlanId
    prorate: bool
    interval: BillingInterval | None = None


class InvoiceRecord(BaseModel):
    tenant_id: uuid.UUID
    invoice: InvoiceSnapshot


class AdjustmentRecord(BaseModel):
    """Record a refund, dispute or credit note on the tenant's invoices (audited once under
    ``idempotency_key``)."""

    tenant_id: uuid.UUID
    adjustment: AdjustmentSnapshot
    # The Stripe event it came with (``charge.dispute.created``, say): named in the audit row.
    event_type: str
    idempotency_key: str


class BillingFailure(BaseModel):
    """Something the billing workflow could not do and went on without: recorded (audit) and
    alerted (an error log line), never a reason for the workflow to stop."""

    tenant_id: uuid.UUID
    # What failed: ``event``, ``notice``, ``provisioning``, ``timer``.
    what: str
    subject: str
    error: str
    idempotency_key: str


class BillingRebuild(BaseModel):
    """Rebuild a fresh run's state from the projection and Stripe, under the run's policy."""

    tenant_id: uuid.UUID
    policy: BillingPolicy


class NoticeKind(StrEnum):
    PAYMENT_REMINDER = "payment_reminder"
    SUSPENDED = "suspended"
    REACTIVATED = "reactivated"
    CANCELLED = "cancelled"
    TRIAL_ENDING = "trial_ending"
    PAYMENT_FAILED = "payment_failed"
    RECEIPT = "receipt"
    # A payment was disputed: the tenant's admins, and the platform's operators, are told.
    DISPUTED = "disputed"


class BillingNotice(BaseModel):
    """An e-mail to the tenant's admins, sent once per admin under ``idempotency_key``."""

    tenant_id: uuid.UUID
    kind: NoticeKind
    idempotency_key: str
    day: int | None = None
    deadline: datetime | None = None
    # The invoice a payment notice is about (failure or receipt).
    invoice: InvoiceSnapshot | None = None
    # The dispute a ``disputed`` notice is about.
    adjustment: AdjustmentSnapshot | None = None


class UsageRecord(BaseModel):
    """One metered use, recorded once under ``idempotency_key``."""

    tenant_id: uuid.UUID
    metric: UsageMetric
    quantity: int = Field(ge=0)
    occurred_at: datetime
    idempotency_key: str
