"""Billing reconciliation's side effects: the subscriptions projection read page by page, Stripe
read through the billing gateway, the tenants' billing workflows told what Stripe says, the
run's counts logged and metered; and the Schedule that runs it.

Reconciliation never writes the projection: the tenant's billing workflow does, as it does for
every Stripe event.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid

from sqlalchemy import select
from temporalio import activity
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from activities.billing import deliver_event, open_stripe
from connectors.billing import ENDED_STATUSES, GatewayOpener
from core import metrics, search
from core.db import SessionFactory
from core.settings import Settings
from models.billing import RECONCILED, BillingEvent, Subscription, SubscriptionSnapshot
from models.billing_reconciliation import (
    DriftKind,
    PageRequest,
    ReconciliationInput,
    ReconciliationPolicy,
    ReconciliationReport,
    SubscriptionCheck,
    SubscriptionDrift,
    SubscriptionRecord,
)

log = logging.getLogger(__name__)

PROCESS = "billing_reconciliation"
SCHEDULE_ID = "billing-reconciliation"
# The Stripe event types that carry what Stripe says to the billing workflow.
_UPDATED = "customer.subscription.updated"
_DELETED = "customer.subscription.deleted"
_CREATED = "customer.subscription.created"


# --- The Schedule -------------------------------------------------------------------------


def reconciliation_policy(settings: Settings) -> ReconciliationPolicy:
    """The runs' policy from settings (fixed in the Schedule's action)."""
    return ReconciliationPolicy(page_size=settings.billing_reconciliation_page_size)


def reconciliation_schedule(settings: Settings) -> Schedule:
    """One run every ``BIZ_BILLING_RECONCILIATION_EVERY``, never two at once."""
    return Schedule(
        action=ScheduleActionStartWorkflow(
            "BillingReconciliationWorkflow",
            ReconciliationInput(policy=reconciliation_policy(settings)),
            id=SCHEDULE_ID,
            task_queue=settings.temporal_task_queue,
            static_summary="Billing reconciliation with Stripe",
            typed_search_attributes=TypedSearchAttributes(
                [SearchAttributePair(search.BIZ_PROCESS, PROCESS)]
            ),
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=settings.billing_reconciliation_every)]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_reconciliation_schedule(client: Client, settings: Settings) -> None:
    """The reconciliation Schedule: created once, then kept to the settings (its interval and
    page size; an operator's pause stays). Without a payment provider there is nothing to
    reconcile and no Schedule is made."""
    if settings.stripe_secret_key is None:
        return
    schedule = reconciliation_schedule(settings)
    try:
        await client.create_schedule(SCHEDULE_ID, schedule)
    except ScheduleAlreadyRunningError:

        def configured(found: ScheduleUpdateInput) -> ScheduleUpdate:
            state = found.description.schedule.state
            return ScheduleUpdate(schedule=dataclasses.replace(schedule, state=state))

        await client.get_schedule_handle(SCHEDULE_ID).update(configured)


# --- Comparing ----------------------------------------------------------------------------


def differences(record: SubscriptionRecord, found: SubscriptionSnapshot) -> list[DriftKind]:
    """How the projection's row differs from Stripe's state of the same subscription."""
    if record.stripe_status in ENDED_STATUSES and found.stripe_status in ENDED_STATUSES:
        return []  # ended on both sides: an ended subscription never changes again
    compared = [
        (DriftKind.STATUS, found.stripe_status != record.stripe_status),
        # A price without the plan's metadata names no plan: the workflow keeps its own.
        (DriftKind.PLAN, found.plan is not None and found.plan != record.plan),
        (DriftKind.PERIOD_END, found.current_period_end != record.current_period_end),
        (DriftKind.CANCEL_AT_PERIOD_END, found.cancel_at_period_end != record.cancel_at_period_end),
        (DriftKind.TRIAL_END, found.trial_end != record.trial_end),
    ]
    return [kind for kind, differs in compared if differs]


def drift_of(
    check: SubscriptionCheck,
    found: SubscriptionSnapshot | None,
    live: SubscriptionSnapshot | None,
    now: int,
) -> SubscriptionDrift:
    """The drift of a tenant: its row against Stripe's state of its subscription (``found``,
    ``None`` when Stripe does not know it) and the customer's live subscription (``live``, when
    the row's is not live), with the events that tell its billing workflow, in order."""
    record = check.record
    drift = SubscriptionDrift(tenant_id=record.tenant_id)
    if record.subscription_id is not None:
        if found is None:
            if record.stripe_status not in ENDED_STATUSES:
                ended = _snapshot_of(record, now).model_copy(update={"stripe_status": "canceled"})
                _add(drift, [DriftKind.GONE], _event(_DELETED, ended, check.run_key))
        elif kinds := differences(record, found):
            over = found.stripe_status in ENDED_STATUSES
            _add(drift, kinds, _event(_DELETED if over else _UPDATED, found, check.run_key))
    if live is not None and live.subscription_id != record.subscription_id:
        _add(drift, [DriftKind.UNKNOWN_SUBSCRIPTION], _event(_CREATED, live, check.run_key))
    return drift


def matches(row: Subscription | None, expected: SubscriptionSnapshot | None) -> bool:
    """Whether the projection's row holds what Stripe said (once the repair settled)."""
    if row is None or expected is None or row.stripe_customer_id is None:
        return False
    return row.stripe_subscription_id == expected.subscription_id and not differences(
        _record_of(row, row.stripe_customer_id), expected
    )


def _add(drift: SubscriptionDrift, kinds: list[DriftKind], event: BillingEvent) -> None:
    drift.kinds += kinds
    drift.events.append(event)
    drift.expected = event.subscription


def _event(event_type: str, snapshot: SubscriptionSnapshot, run_key: str) -> BillingEvent:
    """What Stripe says, as the Stripe event billing acts on; its id is stable within a run
    (a retried delivery is applied once) and unique across runs."""
    return BillingEvent(
        event_id=f"{RECONCILED}{snapshot.subscription_id}:{run_key}",
        type=event_type,
        created=snapshot.as_of,
        customer_id=snapshot.customer_id,
        subscription=snapshot,
    )


def _snapshot_of(record: SubscriptionRecord, as_of: int) -> SubscriptionSnapshot:
    """The row's subscription as a snapshot (for one Stripe no longer knows)."""
    assert record.subscription_id is not None
    return SubscriptionSnapshot(
        subscription_id=record.subscription_id,
        customer_id=record.customer_id,
        tenant_id=record.tenant_id,
        plan=record.plan,
        stripe_status=record.stripe_status or "canceled",
        current_period_end=record.current_period_end,
        cancel_at_period_end=record.cancel_at_period_end,
        trial_end=record.trial_end,
        as_of=as_of,
    )


def _record_of(row: Subscription, customer_id: str) -> SubscriptionRecord:
    return SubscriptionRecord(
        tenant_id=row.tenant_id,
        customer_id=customer_id,
        subscription_id=row.stripe_subscription_id,
        plan=row.plan,
        stripe_status=row.stripe_status,
        current_period_end=row.current_period_end,
        cancel_at_period_end=row.cancel_at_period_end,
        trial_end=row.trial_end,
    )


# --- Activities ---------------------------------------------------------------------------


class ReconciliationActivities:
    """Activities bound to the database, settings and the billing gateway."""

    def __init__(
        self, sessions: SessionFactory, settings: Settings, open_gateway: GatewayOpener | None
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._open_gateway = open_gateway

    @activity.defn
    async def list_subscriptions(self, page: PageRequest) -> list[SubscriptionRecord]:
        """The next rows of the subscriptions projection (by tenant id, after ``page.after``)
        of tenants billing knows a Stripe customer of."""
        query = (
            select(Subscription)
            .where(Subscription.stripe_customer_id.is_not(None))
            .order_by(Subscription.tenant_id)
            .limit(page.limit)
        )
        if page.after is not None:
            query = query.where(Subscription.tenant_id > page.after)
        async with self._sessions() as session:
            rows = (await session.scalars(query)).all()
        return [_record_of(row, row.stripe_customer_id or "") for row in rows]

    @activity.defn
    async def check_subscription(self, check: SubscriptionCheck) -> SubscriptionDrift:
        """Read the tenant's subscription fresh from Stripe (and, when it is not live, the
        customer's live one) and say how the projection differs from it."""
        record = check.record
        async with open_stripe(self._open_gateway) as gateway:
            found = (
                await gateway.fetch_subscription(record.subscription_id)
                if record.subscription_id is not None
                else None
            )
            live = None
            if found is None or found.stripe_status in ENDED_STATUSES:
                live = await gateway.find_subscription(record.customer_id)
        return drift_of(check, found, live, int(time.time()))

    @activity.defn
    async def repair_subscription(self, drift: SubscriptionDrift) -> None:
        """Hand the tenant's billing workflow what Stripe says, as the webhook hands it Stripe's
        events (signal-with-start: a workflow that ended starts again rebuilt from the
        projection and Stripe). The workflow applies each event id once."""
        for event in drift.events:
            await deliver_event(activity.client(), self._settings, drift.tenant_id, event)

    @activity.defn
    async def unrepaired(self, drifts: list[SubscriptionDrift]) -> list[uuid.UUID]:
        """The tenants whose projection still differs from what Stripe said."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(Subscription).where(
                    Subscription.tenant_id.in_([drift.tenant_id for drift in drifts])
                )
            )
            by_tenant = {row.tenant_id: row for row in rows}
        return [
            drift.tenant_id
            for drift in drifts
            if not matches(by_tenant.get(drift.tenant_id), drift.expected)
        ]

    @activity.defn
    async def report_reconciliation(self, report: ReconciliationReport) -> None:
        """Log the run's counts and add them to the worker's metrics."""
        log.info(
            "billing reconciliation: %d checked, %d drifted (%s), %d repaired, %d unrepaired, "
            "%d failed",
            report.checked,
            report.drifted,
            ", ".join(f"{kind.value} {count}" for kind, count in sorted(report.drift.items()))
            or "none",
            report.repaired,
            report.unrepaired,
            report.failed,
        )
        for outcome in ("checked", "drifted", "repaired", "unrepaired", "failed"):
            metrics.RECONCILED_SUBSCRIPTIONS.labels(outcome).inc(getattr(report, outcome))
        for kind, count in report.drift.items():
            metrics.SUBSCRIPTION_DRIFT.labels(kind.value).inc(count)
