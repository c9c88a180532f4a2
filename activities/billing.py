"""Billing activities: Stripe through the billing gateway, the billing projections, the tenant's
access, billing e-mails, and usage metering."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
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
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from connectors.billing import (
    DISPUTE_OPENED,
    BillingDeclined,
    BillingGateway,
    BillingRejected,
    GatewayOpener,
    with_charge,
)
from connectors.mail import Mailer
from connectors.storage import ObjectStorage
from core import audit, search
from core.db import SessionFactory, transaction
from core.plans import (
    Excess,
    excesses,
    latest_storage,
    measured_usage,
    plan_of,
    reserve_plan,
    seats_of,
)
from core.settings import Settings
from models.audit import AuditEntry
from models.billing import (
    GAUGES,
    AdjustmentKind,
    AdjustmentRecord,
    AdjustmentSnapshot,
    BillingEvent,
    BillingFailure,
    BillingInput,
    BillingInterval,
    BillingNotice,
    BillingPlan,
    BillingPolicy,
    BillingRebuild,
    BillingState,
    BillingStatus,
    BillingTransition,
    CustomerRequest,
    DefaultPaymentMethod,
    Dunning,
    Invoice,
    InvoiceAdjustment,
    InvoicePreview,
    InvoiceRecord,
    InvoiceSnapshot,
    NoticeKind,
    OpenInvoicesPayment,
    OperatorHold,
    PaymentMethodDetach,
    PaymentMethodLookup,
    PaymentMethodSetup,
    PaymentMethodSnapshot,
    PlanFit,
    PreviewRequest,
    ProvisionRequest,
    SeatsUpdate,
    SetupIntentRequest,
    Subscription,
    SubscriptionRequest,
    SubscriptionSnapshot,
    SubscriptionUpdate,
    UsageEvent,
    UsageMetric,
    UsageRecord,
    UsageReport,
    reminder_offsets,
)
from models.email import EmailMessage
from models.onboarding import PlanId
from models.tenant import Tenant, TenantStatus
from models.user import Membership, Role, User

log = logging.getLogger(__name__)

PROCESS = "billing"
USAGE_PROCESS = "usage_report"
# Error types raised to the workflow (non-retryable).
PAYMENT_DECLINED = "PaymentDeclined"
STRIPE_REJECTED = "StripeRejected"
BILLING_NOT_CONFIGURED = "BillingNotConfigured"

# The tenant statuses billing governs; onboarding owns the others.
_BILLED_TENANT = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.CANCELLED})
_TENANT_STATUS = {
    BillingStatus.TRIALING: TenantStatus.ACTIVE,
    BillingStatus.ACTIVE: TenantStatus.ACTIVE,
    BillingStatus.PAST_DUE: TenantStatus.ACTIVE,
    BillingStatus.SUSPENDED: TenantStatus.SUSPENDED,
    BillingStatus.CANCELLED: TenantStatus.CANCELLED,
}
# The order of an invoice's states: at the same event time, a later state wins.
_INVOICE_RANK = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}
# Likewise for disputes and credit notes: a closed dispute, a voided credit note win a tie.
_ADJUSTMENT_RANK = {"won": 1, "lost": 1, "warning_closed": 1, "void": 1}
# The audit action of each recorded Stripe event.
_ADJUSTMENT_ACTIONS = {
    "charge.refunded": "billing.refund_recorded",
    DISPUTE_OPENED: "billing.dispute_opened",
    "charge.dispute.updated": "billing.dispute_updated",
    "charge.dispute.closed": "billing.dispute_closed",
    "credit_note.created": "billing.credit_note_issued",
    "credit_note.voided": "billing.credit_note_voided",
}
# The audit actions of an operator's suspension (a rebuilt run finds the last one).
OPERATOR_SUSPENDED = "billing.operator_suspended"
OPERATOR_UNSUSPENDED = "billing.operator_unsuspended"
OPERATOR_HOLD_ACTIONS = (OPERATOR_SUSPENDED, OPERATOR_UNSUSPENDED)
# Stripe meter event names, one meter per metric (created in Stripe with these names).
METER_EVENTS = {metric: f"bizosaas_{metric.value}" for metric in UsageMetric}


# The unique key columns (outbox, audit) hold 200 characters.
_KEY_LENGTH = 200


def bounded_key(key: str) -> str:
    """``key`` itself when it fits the key columns, else a digest of it (a long e-mail address
    or client key would otherwise fail the insert on every retry)."""
    if len(key) <= _KEY_LENGTH:
        return key
    return f"sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def usage_event(record: UsageRecord) -> UsageEvent:
    """The row of one metered use; its key is unique, so a repeat fails the insert."""
    return UsageEvent(
        tenant_id=record.tenant_id,
        metric=record.metric,
        quantity=record.quantity,
        occurred_at=record.occurred_at,
        idempotency_key=record.idempotency_key,
    )


def workflow_id(tenant_id: uuid.UUID) -> str:
    return f"billing:{tenant_id}"


def usage_schedule_id(tenant_id: uuid.UUID) -> str:
    return f"usage-report:{tenant_id}"


def billing_policy(settings: Settings) -> BillingPolicy:
    """The workflow's clock, fixed from settings when it starts."""
    return BillingPolicy(
        trial_days=settings.billing_trial_days,
        grace=settings.billing_grace or timedelta(days=settings.billing_grace_days),
        reminder_days=sorted(settings.billing_reminder_days),
        reminders=settings.billing_reminders,
        retention=timedelta(days=settings.billing_retention_days),
        usage_report_every=settings.usage_report_every,
    )


async def signal_billing(
    client: Client, settings: Settings, tenant_id: uuid.UUID, signal: str, arg: object
) -> None:
    """Signal the tenant's billing workflow, starting it first if it is not running."""
    await client.start_workflow(
        "BillingWorkflow",
        BillingInput(tenant_id=tenant_id, policy=billing_policy(settings)),
        id=workflow_id(tenant_id),
        task_queue=settings.temporal_task_queue,
        start_signal=signal,
        start_signal_args=[arg],
        static_summary=f"Billing of tenant {tenant_id}",
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(search.TENANT_ID, str(tenant_id)),
                SearchAttributePair(search.BIZ_PROCESS, PROCESS),
                SearchAttributePair(search.BIZ_STATUS, BillingStatus.PROVISIONING.value),
            ]
        ),
    )


async def count_seats_again(client: Client, tenant_id: uuid.UUID) -> None:
    """Tell the tenant's billing workflow, if it runs, that its members changed (send it
    before committing the change: the workflow counts a little later)."""
    try:
        await client.get_workflow_handle(workflow_id(tenant_id)).signal("seats_changed")
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:  # no billing: nothing to count
            raise


async def deliver_event(
    client: Client, settings: Settings, tenant_id: uuid.UUID, event: BillingEvent
) -> None:
    """Hand a stored Stripe event to the tenant's billing workflow (signal-with-start)."""
    await signal_billing(client, settings, tenant_id, "stripe_event", event)


@asynccontextmanager
async def _stripe_outcomes() -> AsyncIterator[None]:
    """The gateway's business outcomes as non-retryable activity errors; faults retry."""
    try:
        yield
    except BillingDeclined as exc:
        raise ApplicationError(
            str(exc), {"code": exc.code}, type=PAYMENT_DECLINED, non_retryable=True
        ) from exc
    except BillingRejected as exc:
        raise ApplicationError(str(exc), type=STRIPE_REJECTED, non_retryable=True) from exc


@asynccontextmanager
async def open_stripe(open_gateway: GatewayOpener | None) -> AsyncIterator[BillingGateway]:
    """The billing gateway for one activity, its outcomes as activity errors (a refusal is
    final, faults are retried); without a payment provider, a final error."""
    if open_gateway is None:
        raise ApplicationError(
            "billing needs a payment provider: set BIZ_STRIPE_SECRET_KEY",
            type=BILLING_NOT_CONFIGURED,
            non_retryable=True,
        )
    async with _stripe_outcomes(), open_gateway() as gateway:
        yield gateway


async def _tenant_admins(session: AsyncSession, tenant_id: uuid.UUID) -> list[tuple[str, str]]:
    """(e-mail, full name) of the tenant's active admins, oldest membership first."""
    rows = await session.execute(
        select(User.email, User.full_name)
        .join(Membership, Membership.user_id == User.id)
        .where(
            Membership.tenant_id == tenant_id,
            Membership.role == Role.TENANT_ADMIN,
            User.is_active,
        )
        .order_by(Membership.created_at, User.email)
    )
    return [(email, name) for email, name in rows]


async def _platform_operators(session: AsyncSession) -> list[tuple[str, str]]:
    """(e-mail, full name) of the platform's active operators (``super_admin``)."""
    rows = await session.execute(
        select(User.email, User.full_name)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.role == Role.SUPER_ADMIN, User.is_active)
        .order_by(User.email)
    )
    return [(email, name) for email, name in rows]


def _adjustment_order(
    kind: AdjustmentKind, as_of: int, amount: int, status: str | None
) -> tuple[int, int]:
    """What orders two states of one adjustment: the event time, then (in the same second) the
    larger refunded total, or the closed dispute and the voided credit note."""
    if kind is AdjustmentKind.REFUND:
        return as_of, amount  # a charge's refunded total only grows
    return as_of, _ADJUSTMENT_RANK.get(status or "", 0)


async def _subscription_row(session: AsyncSession, tenant_id: uuid.UUID) -> Subscription:
    row = await session.scalar(
        select(Subscription).where(Subscription.tenant_id == tenant_id).with_for_update()
    )
    if row is None:
        row = Subscription(tenant_id=tenant_id)
        session.add(row)
    return row


def _copy_snapshot(row: Subscription, snapshot: SubscriptionSnapshot) -> None:
    row.stripe_customer_id = snapshot.customer_id
    row.stripe_subscription_id = snapshot.subscription_id
    row.plan = snapshot.plan or row.plan
    row.stripe_status = snapshot.stripe_status
    row.current_period_start = snapshot.current_period_start
    row.current_period_end = snapshot.current_period_end
    row.cancel_at_period_end = snapshot.cancel_at_period_end
    row.trial_end = snapshot.trial_end
    row.seats = snapshot.quantity
    row.interval = snapshot.interval


class BillingActivities:
    """Activities bound to the database, the mail port, settings and the billing gateway."""

    def __init__(
        self,
        sessions: SessionFactory,
        mailer: Mailer,
        settings: Settings,
        open_gateway: GatewayOpener | None,
    ) -> None:
        self._sessions = sessions
        self._mailer = mailer
        self._settings = settings
        self._open_gateway = open_gateway

    def _stripe(self) -> AbstractAsyncContextManager[BillingGateway]:
        return open_stripe(self._open_gateway)

    # --- Provisioning ---------------------------------------------------------------------

    @activity.defn
    async def provision_tenant_billing(self, request: ProvisionRequest) -> str | None:
        """Ask the tenant's billing workflow to provision the plan (signal-with-start; a
        repeated request under the same key is one). Returns the billing workflow id.

        Without a payment provider configured (the embedded default) there is nothing to
        bill through: the tenant runs without a subscription, which is logged, and ``None``
        is returned.
        """
        if self._open_gateway is None:
            log.warning(
                "billing is off (BIZ_STRIPE_SECRET_KEY is not set): tenant %s has no subscription",
                request.tenant_id,
            )
            return None
        await signal_billing(
            activity.client(), self._settings, request.tenant_id, "provision", request
        )
        return workflow_id(request.tenant_id)

    @activity.defn
    async def ensure_plan_price(
        self, plan_id: PlanId, interval: BillingInterval | None = None
    ) -> str:
        """The configured plan's Stripe price (its annual one for ``year``), created on first
        use; the plan's own price is recorded in ``plans``."""
        plan = plan_of(self._settings.billing_plans, plan_id)
        try:
            priced = plan.priced(interval)
        except ValueError as exc:
            raise ApplicationError(str(exc), type=STRIPE_REJECTED, non_retryable=True) from None
        async with self._stripe() as gateway:
            price_id = await gateway.ensure_plan(priced)
        if priced is not plan:
            return price_id
        async with transaction(self._sessions) as session:
            row = await session.get(BillingPlan, plan.id, with_for_update=True)
            if row is None:
                row = BillingPlan(id=plan.id)
                session.add(row)
            row.name, row.amount, row.currency = plan.name, plan.amount, plan.currency
            row.interval, row.stripe_price_id = plan.interval, price_id
            row.limits = {resource.value: limit for resource, limit in plan.limits.items()}
        return price_id

    @activity.defn
    async def ensure_customer(self, request: CustomerRequest) -> str:
        """The tenant's Stripe customer: the recorded one, else found by tenant id, else created
        under the workflow's key; recorded before any subscription exists (webhooks route by
        it)."""
        async with self._sessions() as session:
            recorded = await session.scalar(
                select(Subscription.stripe_customer_id).where(
                    Subscription.tenant_id == request.tenant_id
                )
            )
            tenant = await session.get(Tenant, request.tenant_id)
            admins = await _tenant_admins(session, request.tenant_id)
        if recorded is not None:
            return recorded
        if tenant is None:
            raise ApplicationError(f"tenant {request.tenant_id} is gone", non_retryable=True)
        if not admins:
            raise ApplicationError(
                f"tenant {request.tenant_id} has no active admin to bill", non_retryable=True
            )
        async with self._stripe() as gateway:
            customer_id = await gateway.ensure_customer(
                request.tenant_id, tenant.name, admins[0][0], request.idempotency_key
            )
        async with transaction(self._sessions) as session:
            row = await _subscription_row(session, request.tenant_id)
            row.stripe_customer_id = customer_id
        return customer_id

    @activity.defn
    async def create_subscription(self, request: SubscriptionRequest) -> SubscriptionSnapshot:
        """The customer's live subscription, or a new one for the plan (with its trial)."""
        async with self._stripe() as gateway:
            existing = await gateway.find_subscription(request.customer_id)
        if existing is not None:
            return existing
        price_id = await self.ensure_plan_price(request.plan, request.interval)
        seats = await self._seats(request.tenant_id, request.plan)
        async with self._stripe() as gateway:
            return await gateway.create_subscription(
                request.customer_id,
                price_id,
                request.tenant_id,
                request.trial_end,
                request.idempotency_key,
                quantity=seats,
            )

    async def _seats(self, tenant_id: uuid.UUID, plan_id: PlanId) -> int:
        """The quantity ``plan_id`` bills the tenant (its members if priced per user)."""
        plan = plan_of(self._settings.billing_plans, plan_id)
        async with self._sessions() as session:
            return await seats_of(session, plan, tenant_id)

    @activity.defn
    async def fetch_subscription(self, subscription_id: str) -> SubscriptionSnapshot | None:
        """The subscription as Stripe has it now (``None`` when Stripe does not know it)."""
        async with self._stripe() as gateway:
            return await gateway.fetch_subscription(subscription_id)

    @activity.defn
    async def fetch_invoice(self, invoice_id: str) -> InvoiceSnapshot | None:
        """The invoice as Stripe has it now (``None`` when Stripe does not know it)."""
        async with self._stripe() as gateway:
            return await gateway.fetch_invoice(invoice_id)

    @activity.defn
    async def update_subscription(self, update: SubscriptionUpdate) -> SubscriptionSnapshot:
        """Change the plan (Stripe prorates) or whether the subscription renews."""
        price_id, seats = None, None
        tenant_id = update.tenant_id or update.subscription.tenant_id
        if update.plan is not None:
            price_id = await self.ensure_plan_price(update.plan, update.interval)
            seats = await self._seats(tenant_id, update.plan) if tenant_id else None
        async with self._stripe() as gateway:
            return await gateway.update_subscription(
                update.subscription,
                update.idempotency_key,
                price_id=price_id,
                cancel_at_period_end=update.cancel_at_period_end,
                trial_end=update.trial_end,
                prorate=update.prorate,
                quantity=seats,
            )

    @activity.defn
    async def update_seats(self, update: SeatsUpdate) -> SubscriptionSnapshot | None:
        """Bill the tenant's members as the seats of a plan priced per user (prorated);
        ``None`` when the quantity is right already."""
        plan_id = update.subscription.plan
        if plan_id is None:
            return None
        seats = await self._seats(update.tenant_id, plan_id)
        if seats == update.subscription.quantity:
            return None
        async with self._stripe() as gateway:
            return await gateway.update_subscription(
                update.subscription, f"{update.idempotency_key}:{seats}", quantity=seats
            )

    @activity.defn
    async def preview_plan_change(self, request: PreviewRequest) -> InvoicePreview:
        """What Stripe would bill for the change (nothing changes)."""
        price_id = await self.ensure_plan_price(request.plan, request.interval)
        seats = await self._seats(request.tenant_id, request.plan)
        async with self._stripe() as gateway:
            return await gateway.preview_plan_change(
                request.subscription,
                request.plan,
                price_id,
                prorate=request.prorate,
                quantity=seats,
            )

    @activity.defn
    async def plan_excesses(self, change: PlanFit) -> list[Excess]:
        """What the tenant uses beyond the target plan's limits (empty when it fits). When it
        fits, the tenant is held to the stricter plan until the change is recorded: the check
        and the reservation take the tenant's row, as invitations do, so none slips between."""
        plan = plan_of(self._settings.billing_plans, change.plan)
        async with transaction(self._sessions) as session:
            await session.get(Tenant, change.tenant_id, with_for_update=True)
            found = excesses(plan, await measured_usage(session, change.tenant_id))
            if not found:
                await reserve_plan(session, change.tenant_id, change.plan, change.hold_until)
            return found

    # --- Payment methods ------------------------------------------------------------------

    @activity.defn
    async def create_setup_intent(self, request: SetupIntentRequest) -> str:
        """A SetupIntent for the customer, created once under the workflow's key; its client
        secret is stored encrypted for the API and only the SetupIntent's id is returned."""
        async with self._stripe() as gateway:
            setup_intent_id, client_secret = await gateway.create_setup_intent(
                request.customer_id, request.idempotency_key
            )
        sealed = self._settings.field_cipher().encrypt(client_secret)
        async with transaction(self._sessions) as session:
            row = await session.get(PaymentMethodSetup, setup_intent_id, with_for_update=True)
            if row is None:
                session.add(
                    PaymentMethodSetup(
                        setup_intent_id=setup_intent_id,
                        tenant_id=request.tenant_id,
                        client_secret=sealed,
                    )
                )
        return setup_intent_id

    @activity.defn
    async def set_default_payment_method(self, change: DefaultPaymentMethod) -> None:
        """Bill the customer's invoices to the card it saved."""
        async with self._stripe() as gateway:
            await gateway.set_default_payment_method(
                change.customer_id, change.payment_method_id, change.idempotency_key
            )

    @activity.defn
    async def fetch_payment_method(
        self, lookup: PaymentMethodLookup
    ) -> PaymentMethodSnapshot | None:
        """The payment method as Stripe has it (``None`` when Stripe does not know it), marked
        default when it is the customer's default."""
        async with self._stripe() as gateway:
            return await gateway.fetch_payment_method(lookup.customer_id, lookup.payment_method_id)

    @activity.defn
    async def detach_payment_method(self, detach: PaymentMethodDetach) -> None:
        """Detach a saved payment method from its customer."""
        async with self._stripe() as gateway:
            await gateway.detach_payment_method(detach.payment_method_id, detach.idempotency_key)

    @activity.defn
    async def pay_open_invoices(self, payment: OpenInvoicesPayment) -> list[InvoiceSnapshot]:
        """Charge the default payment method for each open invoice of the customer; returns
        the invoices as they stand after the attempt (a declined one stays open).

        Heartbeats after each invoice with the invoices attempted so far; a retry resumes from
        them and does not charge (or ask Stripe about) those again."""
        details = activity.info().heartbeat_details
        attempted = [InvoiceSnapshot.model_validate(item) for item in details[0]] if details else []
        done = {invoice.invoice_id for invoice in attempted}
        async with self._stripe() as gateway:
            for invoice_id in await gateway.open_invoices(payment.customer_id):
                if invoice_id in done:
                    continue
                key = f"{payment.idempotency_key}:{invoice_id}"
                try:
                    attempted.append(await gateway.pay_invoice(invoice_id, key))
                except BillingDeclined as exc:
                    log.info("invoice %s was declined again: %s", invoice_id, exc)
                    fetched = await gateway.fetch_invoice(invoice_id)
                    if fetched is not None:
                        attempted.append(fetched)
                done.add(invoice_id)
                activity.heartbeat([invoice.model_dump(mode="json") for invoice in attempted])
        return attempted

    # --- Projections and the tenant -------------------------------------------------------

    @activity.defn
    async def apply_billing_transition(self, change: BillingTransition) -> None:
        """Write the subscriptions projection, the tenant's status and plan, and the audit
        row, in one transaction; a retry finds the audit row under its key and adds none."""
        async with transaction(self._sessions) as session:
            tenant = await session.get(Tenant, change.tenant_id, with_for_update=True)
            if tenant is None:
                raise ApplicationError(f"tenant {change.tenant_id} is gone", non_retryable=True)
            row = await _subscription_row(session, change.tenant_id)
            row.status = change.status
            if change.customer_id is not None:
                row.stripe_customer_id = change.customer_id
            if change.subscription is not None:
                _copy_snapshot(row, change.subscription)
            row.grace_ends_at = change.grace_ends_at
            row.retention_ends_at = change.retention_ends_at
            tenant_status = _TENANT_STATUS.get(change.status)
            if change.held and tenant_status is TenantStatus.ACTIVE:
                tenant_status = TenantStatus.SUSPENDED  # an operator's suspension holds
            if tenant_status is not None and tenant.status in _BILLED_TENANT:
                tenant.status = tenant_status
            scheduled = change.scheduled_plan
            row.scheduled_plan = scheduled.plan if scheduled else None
            row.scheduled_plan_at = scheduled.at if scheduled else None
            if row.plan is not None:
                tenant.plan = row.plan.value
                if tenant.plan_reserved == tenant.plan or change.release_hold:
                    tenant.plan_reserved = tenant.plan_reserved_until = None
            if change.action is not None:
                await audit.append(
                    session,
                    change.action,
                    tenant_id=change.tenant_id,
                    actor=audit.Actor(user_id=change.actor_id),
                    data={"status": change.status.value, "from": change.previous.value}
                    | change.data,
                    idempotency_key=bounded_key(change.idempotency_key),
                )

    @activity.defn
    async def record_billing_failure(self, failure: BillingFailure) -> None:
        """Record what the billing workflow could not do (an audit row, once under its key) and
        alert operators (an error log line); the workflow goes on."""
        log.error(
            "billing for tenant %s could not handle %s %s: %s",
            failure.tenant_id,
            failure.what,
            failure.subject,
            failure.error,
        )
        async with transaction(self._sessions) as session:
            if await session.get(Tenant, failure.tenant_id) is None:
                return  # the tenant is gone: the log line is the record
            await audit.append(
                session,
                f"billing.{failure.what}_failed",
                tenant_id=failure.tenant_id,
                data={"subject": failure.subject, "error": failure.error[:500]},
                idempotency_key=bounded_key(failure.idempotency_key),
            )

    @activity.defn
    async def load_billing_state(self, rebuild: BillingRebuild) -> BillingState | None:
        """A fresh run's state, rebuilt from the subscriptions and invoices projections and the
        subscription as Stripe has it now (``None`` for a tenant billing never knew), so that a
        run started after another ended or died never starts empty."""
        async with self._sessions() as session:
            row = await session.scalar(
                select(Subscription).where(Subscription.tenant_id == rebuild.tenant_id)
            )
            if row is None:
                return None
            unpaid = []
            if row.status in (BillingStatus.PAST_DUE, BillingStatus.SUSPENDED):
                unpaid = list(
                    await session.scalars(
                        select(Invoice.stripe_invoice_id)
                        .where(Invoice.tenant_id == rebuild.tenant_id, Invoice.status == "open")
                        .order_by(Invoice.stripe_created)
                    )
                )
        snapshot = None
        if row.stripe_subscription_id is not None and row.stripe_customer_id is not None:
            if self._open_gateway is not None:
                async with self._stripe() as gateway:
                    snapshot = await gateway.fetch_subscription(row.stripe_subscription_id)
            if snapshot is None:  # Stripe does not know it (or is not configured)
                snapshot = SubscriptionSnapshot(
                    subscription_id=row.stripe_subscription_id,
                    customer_id=row.stripe_customer_id,
                    plan=row.plan,
                    stripe_status=row.stripe_status or "canceled",
                    current_period_start=row.current_period_start,
                    current_period_end=row.current_period_end,
                    cancel_at_period_end=row.cancel_at_period_end,
                    trial_end=row.trial_end,
                    as_of=0,
                )
        dunning = None
        if row.grace_ends_at is not None and row.status in (
            BillingStatus.PAST_DUE,
            BillingStatus.SUSPENDED,
        ):
            since = row.grace_ends_at - rebuild.policy.grace
            now = datetime.now(UTC)
            # Reminders whose time has passed went out (or are too late to matter).
            offsets = reminder_offsets(rebuild.policy)
            sent = [key for key, offset, _ in offsets if since + offset <= now]
            dunning = Dunning(since=since, reminders_sent=sent)
        return BillingState(
            hold=await self._operator_hold(rebuild.tenant_id),
            status=row.status,
            plan=row.plan,
            customer_id=row.stripe_customer_id,
            subscription=snapshot,
            unpaid_invoices=unpaid,
            dunning=dunning,
            retention_ends_at=row.retention_ends_at
            if row.status is BillingStatus.CANCELLED
            else None,
        )

    async def _operator_hold(self, tenant_id: uuid.UUID) -> OperatorHold | None:
        """The operator's suspension in force, from the audit trail (the last of suspend and
        unsuspend), for a rebuilt run."""
        async with self._sessions() as session:
            last = await session.scalar(
                select(AuditEntry)
                .where(
                    AuditEntry.tenant_id == tenant_id,
                    AuditEntry.action.in_(OPERATOR_HOLD_ACTIONS),
                )
                .order_by(AuditEntry.id.desc())
                .limit(1)
            )
        if last is None or last.action != OPERATOR_SUSPENDED:
            return None
        return OperatorHold(
            reason=str(last.data.get("reason", "")), since=last.created_at, by=last.actor_id
        )

    @activity.defn
    async def record_invoice(self, record: InvoiceRecord) -> None:
        """Upsert the invoice's projection row, unless it already holds a newer state."""
        invoice = record.invoice
        async with transaction(self._sessions) as session:
            row = await session.scalar(
                select(Invoice)
                .where(Invoice.stripe_invoice_id == invoice.invoice_id)
                .with_for_update()
            )
            if row is None:
                row = Invoice(tenant_id=record.tenant_id, stripe_invoice_id=invoice.invoice_id)
                session.add(row)
            elif (row.as_of, _INVOICE_RANK.get(row.status, 0)) > (
                invoice.as_of,
                _INVOICE_RANK.get(invoice.status, 0),
            ):
                return
            row.stripe_subscription_id = invoice.subscription_id
            row.number, row.status = invoice.number, invoice.status
            row.amount_due, row.amount_paid = invoice.amount_due, invoice.amount_paid
            row.currency = invoice.currency
            row.period_start, row.period_end = invoice.period_start, invoice.period_end
            row.hosted_invoice_url = invoice.hosted_invoice_url
            row.stripe_created, row.as_of = invoice.created, invoice.as_of

    @activity.defn
    async def record_invoice_adjustment(self, record: AdjustmentRecord) -> AdjustmentSnapshot:
        """Record a refund, dispute or credit note on the invoices projection (one row per
        Stripe object; an older state never overwrites a newer one, and a refund holds the
        charge's refunded total as Stripe counts it, so a repeat adds nothing), audited once
        under the record's key. The invoice of a charge that does not name it is looked up in
        Stripe. Returns the adjustment as recorded."""
        adjustment = record.adjustment
        charge_id = adjustment.charge_id
        if adjustment.invoice_id is None and charge_id is not None:
            async with self._sessions() as session:
                known = await session.scalar(
                    select(InvoiceAdjustment.stripe_invoice_id).where(
                        InvoiceAdjustment.kind == adjustment.kind,
                        InvoiceAdjustment.stripe_id == adjustment.stripe_id,
                    )
                )
            if known is not None:
                adjustment = adjustment.model_copy(update={"invoice_id": known})
            elif self._open_gateway is not None:
                async with self._stripe() as gateway:
                    charge = await gateway.fetch_charge(charge_id)
                if charge is not None:
                    adjustment = with_charge(adjustment, charge)
        async with transaction(self._sessions) as session:
            row = await session.scalar(
                select(InvoiceAdjustment)
                .where(
                    InvoiceAdjustment.kind == adjustment.kind,
                    InvoiceAdjustment.stripe_id == adjustment.stripe_id,
                )
                .with_for_update()
            )
            if row is None:
                row = InvoiceAdjustment(
                    tenant_id=record.tenant_id,
                    kind=adjustment.kind,
                    stripe_id=adjustment.stripe_id,
                )
                session.add(row)
            elif row.tenant_id != record.tenant_id:
                raise ApplicationError(
                    f"{adjustment.kind.value} {adjustment.stripe_id} is recorded for another "
                    "tenant",
                    non_retryable=True,
                )
            elif _adjustment_order(row.kind, row.as_of, row.amount, row.status) > (
                _adjustment_order(
                    adjustment.kind, adjustment.as_of, adjustment.amount, adjustment.status
                )
            ):
                # A newer state is recorded already.
                return adjustment.model_copy(update={"invoice_id": row.stripe_invoice_id})
            row.stripe_invoice_id = adjustment.invoice_id or row.stripe_invoice_id
            row.stripe_charge_id = adjustment.charge_id or row.stripe_charge_id
            row.amount, row.currency = adjustment.amount, adjustment.currency
            row.reason, row.status = adjustment.reason, adjustment.status
            row.as_of = adjustment.as_of
            await audit.append(
                session,
                _ADJUSTMENT_ACTIONS.get(record.event_type, f"billing.{adjustment.kind.value}"),
                tenant_id=record.tenant_id,
                data={
                    "kind": adjustment.kind.value,
                    "stripe_id": adjustment.stripe_id,
                    "charge": adjustment.charge_id or "",
                    "invoice": row.stripe_invoice_id or "",
                    "amount": str(adjustment.amount),
                    "currency": adjustment.currency,
                    "reason": adjustment.reason or "",
                    "status": adjustment.status or "",
                },
                idempotency_key=bounded_key(record.idempotency_key),
            )
        return adjustment.model_copy(update={"invoice_id": row.stripe_invoice_id})

    @activity.defn
    async def send_operator_notice(self, notice: BillingNotice) -> int:
        """Alert the platform's operators (every active ``super_admin``) to a tenant's billing
        event, a dispute say: an e-mail to each, once per operator under the notice's key, and
        a warning log line. Returns how many operators were written to."""
        async with self._sessions() as session:
            tenant = await session.get(Tenant, notice.tenant_id)
            operators = await _platform_operators(session)
        name = tenant.name if tenant is not None else "(tenant gone)"
        subject, body = _operator_text(notice, name)
        log.warning("billing alert for tenant %s: %s", notice.tenant_id, subject)
        for address, full_name in operators:
            await self._mailer.send(
                EmailMessage(
                    idempotency_key=bounded_key(f"{notice.idempotency_key}:{address}"),
                    to=address,
                    subject=subject,
                    body=f"Hello {full_name},\n\n{body}\n",
                )
            )
        return len(operators)

    @activity.defn
    async def send_billing_notice(self, notice: BillingNotice) -> int:
        """E-mail the tenant's admins, once per admin under the notice's key. Returns how
        many admins were written to."""
        async with self._sessions() as session:
            tenant = await session.get(Tenant, notice.tenant_id)
            admins = await _tenant_admins(session, notice.tenant_id)
        if tenant is None:
            raise ApplicationError(f"tenant {notice.tenant_id} is gone", non_retryable=True)
        subject, body = _notice_text(notice, tenant.name, self._billing_link())
        for address, full_name in admins:
            await self._mailer.send(
                EmailMessage(
                    idempotency_key=bounded_key(f"{notice.idempotency_key}:{address}"),
                    to=address,
                    subject=subject,
                    body=f"Hello {full_name},\n\n{body}\n",
                    tenant_id=notice.tenant_id,
                )
            )
        return len(admins)

    def _billing_link(self) -> str:
        return f"{self._settings.public_app_url.rstrip('/')}/settings/billing"

    # --- Usage metering -------------------------------------------------------------------

    @activity.defn
    async def record_usage(self, record: UsageRecord) -> bool:
        """Record one metered use; ``False`` when its key was already recorded."""
        try:
            async with transaction(self._sessions) as session:
                session.add(usage_event(record))
        except IntegrityError:
            return False
        return True

    @activity.defn
    async def report_usage(self, tenant_id: uuid.UUID) -> int:
        """Aggregate the tenant's unreported usage into reports and send each unsent report to
        its Stripe meter (the report id is the meter event identifier). Returns how many
        reports were sent."""
        async with self._sessions() as session:
            customer_id = await session.scalar(
                select(Subscription.stripe_customer_id).where(Subscription.tenant_id == tenant_id)
            )
        if customer_id is None:
            return 0
        await self._aggregate_usage(tenant_id)
        async with self._sessions() as session:
            unsent = (
                await session.scalars(
                    select(UsageReport)
                    .where(
                        UsageReport.tenant_id == tenant_id,
                        UsageReport.sent_at.is_(None),
                        UsageReport.refused.is_(None),
                    )
                    .order_by(UsageReport.created_at)
                )
            ).all()
        if not unsent:
            return 0
        sent = 0
        async with self._open_meters() as gateway:
            # Found before created: a report to a meter that does not exist would be refused.
            await gateway.ensure_meters(
                {
                    METER_EVENTS[metric]: "last" if metric in GAUGES else "sum"
                    for metric in UsageMetric
                }
            )
            for report in unsent:
                try:
                    await gateway.report_usage(
                        METER_EVENTS[report.metric],
                        customer_id,
                        report.quantity,
                        report.id,
                        report.occurred_at,
                    )
                except BillingRejected as exc:
                    await self._refuse_report(report, str(exc))
                else:
                    async with transaction(self._sessions) as session:
                        stored = await session.get(UsageReport, report.id)
                        assert stored is not None
                        stored.sent_at = datetime.now(UTC)
                    sent += 1
                activity.heartbeat(report.id)
        return sent

    @asynccontextmanager
    async def _open_meters(self) -> AsyncIterator[BillingGateway]:
        """The gateway with its refusals raised as they are (each report is judged alone)."""
        if self._open_gateway is None:
            raise ApplicationError(
                "billing needs a payment provider: set BIZ_STRIPE_SECRET_KEY",
                type=BILLING_NOT_CONFIGURED,
                non_retryable=True,
            )
        async with self._open_gateway() as gateway:
            yield gateway

    async def _refuse_report(self, report: UsageReport, reason: str) -> None:
        """Keep a report Stripe refused, with why; audit it and alert (an error log line)."""
        log.error(
            "Stripe refused usage report %s of tenant %s (%s %s): %s",
            report.id,
            report.tenant_id,
            report.metric.value,
            report.quantity,
            reason,
        )
        async with transaction(self._sessions) as session:
            stored = await session.get(UsageReport, report.id, with_for_update=True)
            assert stored is not None
            stored.refused = reason[:500]
            await audit.append(
                session,
                "billing.usage_report_refused",
                tenant_id=report.tenant_id,
                data={
                    "report": report.id,
                    "metric": report.metric.value,
                    "quantity": str(report.quantity),
                    "reason": reason[:300],
                },
                idempotency_key=f"usage-report-refused:{report.id}",
            )

    async def _aggregate_usage(self, tenant_id: uuid.UUID) -> None:
        """One report per metric over the usage not yet counted, in one transaction."""
        async with transaction(self._sessions) as session:
            events = (
                await session.scalars(
                    select(UsageEvent)
                    .where(UsageEvent.tenant_id == tenant_id, UsageEvent.report_id.is_(None))
                    .order_by(UsageEvent.occurred_at)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            by_metric: dict[UsageMetric, list[UsageEvent]] = {}
            for event in events:
                by_metric.setdefault(event.metric, []).append(event)
            for metric, counted in by_metric.items():
                quantity = (
                    counted[-1].quantity
                    if metric in GAUGES
                    else sum(event.quantity for event in counted)
                )
                report = UsageReport(
                    id=f"usage-{uuid.uuid4()}",
                    tenant_id=tenant_id,
                    metric=metric,
                    quantity=quantity,
                    occurred_at=counted[-1].occurred_at,
                )
                session.add(report)
                await session.flush()
                for event in counted:
                    event.report_id = report.id

    @activity.defn
    async def ensure_usage_schedule(self, tenant_id: uuid.UUID) -> None:
        """The tenant's usage-report Schedule (created once; an existing one is kept)."""
        every = self._settings.usage_report_every
        with suppress(ScheduleAlreadyRunningError):
            await activity.client().create_schedule(
                usage_schedule_id(tenant_id),
                Schedule(
                    action=ScheduleActionStartWorkflow(
                        "UsageReportWorkflow",
                        tenant_id,
                        id=usage_schedule_id(tenant_id),
                        task_queue=self._settings.temporal_task_queue,
                        static_summary=f"Usage report of tenant {tenant_id}",
                        typed_search_attributes=TypedSearchAttributes(
                            [
                                SearchAttributePair(search.TENANT_ID, str(tenant_id)),
                                SearchAttributePair(search.BIZ_PROCESS, USAGE_PROCESS),
                            ]
                        ),
                    ),
                    spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
                    policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
                ),
            )

    @activity.defn
    async def remove_usage_schedule(self, tenant_id: uuid.UUID) -> None:
        """Delete the tenant's usage-report Schedule (gone already is fine)."""
        handle = activity.client().get_schedule_handle(usage_schedule_id(tenant_id))
        try:
            await handle.delete()
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise


def _money(amount: int, currency: str) -> str:
    return f"{amount / 100:.2f} {currency.upper()}"


def _dispute_facts(dispute: AdjustmentSnapshot | None) -> tuple[str, str, str]:
    """(amount, invoice, reason) of a dispute, as an e-mail names them."""
    if dispute is None:
        return "a payment", "the invoice", "not given"
    return (
        _money(dispute.amount, dispute.currency),
        f"invoice {dispute.invoice_id}"
        if dispute.invoice_id
        else f"the payment {dispute.charge_id or dispute.stripe_id}",
        (dispute.reason or "not given").replace("_", " "),
    )


def _operator_text(notice: BillingNotice, tenant: str) -> tuple[str, str]:
    """Subject and body of an operator's alert (a dispute)."""
    dispute = notice.adjustment
    amount, invoice, reason = _dispute_facts(dispute)
    dispute_id = dispute.stripe_id if dispute else "unknown"
    return (
        f"Dispute opened: {tenant}, {amount}",
        f"A payment of tenant {tenant} ({notice.tenant_id}) was disputed: {amount} for "
        f"{invoice}, reason: {reason}, status: {dispute.status if dispute else 'unknown'}. "
        f"Answer it in Stripe before its evidence deadline: "
        f"https://dashboard.stripe.com/disputes/{dispute_id}",
    )


def _notice_text(notice: BillingNotice, tenant: str, link: str) -> tuple[str, str]:
    """Subject and body of a billing e-mail."""
    deadline = notice.deadline.strftime("%d %B %Y") if notice.deadline else "soon"
    invoice = notice.invoice
    number = (invoice.number or invoice.invoice_id) if invoice else "the invoice"
    amount = (
        f"{(invoice.amount_paid or invoice.amount_due) / 100:.2f} {invoice.currency.upper()}"
        if invoice
        else "the amount due"
    )
    disputed, disputed_invoice, disputed_reason = _dispute_facts(notice.adjustment)
    texts = {
        NoticeKind.PAYMENT_FAILED: (
            f"Payment failed for {tenant}",
            f"We could not collect {amount} for invoice {number} of {tenant}'s subscription. "
            f"Please update the payment method at {link} before {deadline}; the account stays "
            "fully usable until then.",
        ),
        NoticeKind.RECEIPT: (
            f"Receipt for {tenant}: invoice {number}",
            f"Thank you: we received {amount} for invoice {number} of {tenant}'s subscription."
            + (
                f" The invoice: {invoice.hosted_invoice_url}"
                if invoice and invoice.hosted_invoice_url
                else ""
            ),
        ),
        NoticeKind.PAYMENT_REMINDER: (
            f"Payment overdue for {tenant}",
            f"We could not collect the payment for {tenant}'s subscription. Please update the "
            f"payment method at {link} before {deadline}; after that the account becomes "
            "read-only until the invoice is paid.",
        ),
        NoticeKind.SUSPENDED: (
            f"{tenant} is read-only until payment",
            f"The grace period for {tenant}'s overdue invoice has ended, so the account is "
            f"read-only. Pay the invoice at {link} and full access returns at once.",
        ),
        NoticeKind.REACTIVATED: (
            f"{tenant} is fully active again",
            f"Thank you: the overdue invoice for {tenant} is paid and full access is restored.",
        ),
        NoticeKind.CANCELLED: (
            f"{tenant}'s subscription has ended",
            f"{tenant}'s subscription has ended. Its data is kept until {deadline}; subscribe "
            f"again at {link} to keep it.",
        ),
        NoticeKind.TRIAL_ENDING: (
            f"{tenant}'s trial ends on {deadline}",
            f"{tenant}'s free trial ends on {deadline}. Add a payment method at {link} to keep "
            "the account active.",
        ),
        NoticeKind.DISPUTED: (
            f"A payment of {tenant} was disputed",
            f"Your card issuer disputed a payment for {tenant}'s subscription: "
            f"{disputed} for {disputed_invoice} (reason: {disputed_reason}). If you did not mean "
            f"to dispute it, please ask your bank to withdraw the dispute; your invoices are at "
            f"{link}.",
        ),
    }
    return texts[notice.kind]


class StorageMetering:
    """The tenant's stored bytes, measured where they are kept (object storage)."""

    def __init__(self, sessions: SessionFactory, storage: ObjectStorage) -> None:
        self._sessions = sessions
        self._storage = storage

    @activity.defn
    async def measure_storage(self, tenant_id: uuid.UUID) -> int | None:
        """The bytes the tenant keeps (documents, images, attachments: everything under
        ``tenants/{id}/``); ``None`` when it keeps none and never did (nothing to record)."""
        used = await self._storage.used_bytes(f"tenants/{tenant_id}/")
        if used:
            return used
        async with self._sessions() as session:
            return 0 if await latest_storage(session, tenant_id) else None
