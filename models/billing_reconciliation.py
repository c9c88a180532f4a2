"""Billing reconciliation: the types that cross the reconciliation workflow (no tables).

The subscriptions projection is compared with Stripe; what differs is a drift, by kind. Only
Stripe ids, tenant ids, plans, statuses and dates travel here: no personal data.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, Field

from models.billing import BillingEvent, SubscriptionSnapshot
from models.onboarding import PlanId


class DriftKind(StrEnum):
    """How the projection differs from Stripe."""

    STATUS = "status"  # Stripe's status of the subscription
    PLAN = "plan"
    PERIOD_END = "period_end"
    CANCEL_AT_PERIOD_END = "cancel_at_period_end"
    TRIAL_END = "trial_end"
    GONE = "gone"  # Stripe no longer knows the subscription the projection holds
    # The customer has a live subscription the projection does not hold.
    UNKNOWN_SUBSCRIPTION = "unknown_subscription"


class ReconciliationPolicy(BaseModel):
    """How a reconciliation run pages, retries and waits; fixed when the Schedule starts it."""

    page_size: int = Field(default=100, ge=1, le=1000)
    # Pages per workflow run before it continues as new (sooner if Temporal suggests it).
    pages_per_run: int = Field(default=5, ge=1)
    # Tenants checked against Stripe at once.
    parallel: int = Field(default=10, ge=1, le=50)
    # Tries of one tenant's Stripe read, and the time they may take together.
    attempts: int = Field(default=5, ge=1)
    check_deadline: timedelta = timedelta(minutes=5)
    # How long the billing workflows get to apply a page's repairs before they are read back.
    settle: timedelta = timedelta(minutes=1)


class ReconciliationReport(BaseModel):
    """What a run found, in counts of tenants (and of drifts by kind)."""

    # Compared with Stripe.
    checked: int = 0
    # Differing from Stripe in at least one way, and the drifts by kind.
    drifted: int = 0
    drift: dict[DriftKind, int] = Field(default_factory=dict)
    # Drifted, handed to the billing workflow, and matching Stripe once it settled.
    repaired: int = 0
    # Handed to the billing workflow, still differing from Stripe once it settled.
    unrepaired: int = 0
    # Not compared (Stripe failed or refused for the tenant) or not handed over.
    failed: int = 0


class ReconciliationInput(BaseModel):
    """A run's start: the policy, and where the previous run stopped with what it counted."""

    policy: ReconciliationPolicy = Field(default_factory=ReconciliationPolicy)
    # The last tenant reconciled by the previous run (``None``: from the first).
    after: uuid.UUID | None = None
    report: ReconciliationReport = Field(default_factory=ReconciliationReport)


class PageRequest(BaseModel):
    """Subscriptions of tenants after ``after`` (by tenant id), at most ``limit``."""

    after: uuid.UUID | None = None
    limit: int


class SubscriptionRecord(BaseModel):
    """A row of the subscriptions projection, as far as Stripe can contradict it."""

    tenant_id: uuid.UUID
    customer_id: str
    subscription_id: str | None = None
    plan: PlanId | None = None
    stripe_status: str | None = None
    current_period_end: datetime | None = None
    cancel_at_period_end: bool = False
    trial_end: datetime | None = None


class SubscriptionCheck(BaseModel):
    """Compare one tenant's row with Stripe; ``run_key`` makes the repair events' ids."""

    record: SubscriptionRecord
    run_key: str


class SubscriptionDrift(BaseModel):
    """What one tenant's check found: the drifts, the Stripe events that tell its billing
    workflow what Stripe says (in order), and the subscription the projection should then
    hold (``expected``)."""

    tenant_id: uuid.UUID
    kinds: list[DriftKind] = Field(default_factory=list)
    events: list[BillingEvent] = Field(default_factory=list)
    expected: SubscriptionSnapshot | None = None
