"""Billing lifecycle: one long-lived workflow per tenant owns the tenant's access and the
human-facing timers; Stripe owns the billing clock. Also the usage report the tenant's
Schedule runs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.billing import (
        OPERATOR_SUSPENDED,
        OPERATOR_UNSUSPENDED,
        PROCESS,
        BillingActivities,
        StorageMetering,
    )
    from connectors.billing import DISPUTE_OPENED
    from core.plans import Excess
    from core.search import BIZ_PROCESS, BIZ_STATUS, TENANT_ID
    from models.billing import (
        RECONCILED,
        AdjustmentRecord,
        AdjustmentSnapshot,
        BillingEvent,
        BillingFailure,
        BillingInput,
        BillingInterval,
        BillingNotice,
        BillingPolicy,
        BillingRebuild,
        BillingState,
        BillingStatus,
        BillingTransition,
        BillingView,
        CustomerRequest,
        DefaultPaymentMethod,
        Dunning,
        InvoicePreview,
        InvoiceRecord,
        InvoiceSnapshot,
        NoticeKind,
        OpenInvoicesPayment,
        OperatorHold,
        OperatorRequest,
        OperatorSuspension,
        ParkedEvent,
        PaymentMethodCollection,
        PaymentMethodDetach,
        PaymentMethodLookup,
        PaymentMethodRemoval,
        PaymentMethodRequest,
        PlanChange,
        PlanFit,
        PlanPreview,
        PreviewRequest,
        ProvisionRequest,
        RenewalChange,
        ScheduledPlan,
        SeatsUpdate,
        SetupIntentRequest,
        SetupIntentSnapshot,
        SubscriptionRequest,
        SubscriptionSnapshot,
        SubscriptionUpdate,
        TrialExtension,
        UsageMetric,
        UsageRecord,
        reminder_offsets,
    )
    from models.onboarding import PlanId

# Error types of refused or failed updates; the API maps each to its HTTP status.
BILLING_STATE = "BillingState"  # 409: the change does not apply in the current state
SAME_PLAN = "SamePlan"  # 409
PLAN_LIMIT_EXCEEDED = "PlanLimitExceeded"  # 409, details: the excesses
PAYMENT_METHOD_NOT_FOUND = "PaymentMethodNotFound"  # 404: not a card of the tenant's customer

# Bounds of the remembered ids carried across continue-as-new.
_REMEMBERED_EVENTS = 500
_REMEMBERED_INVOICES = 100
_REMEMBERED_UPDATES = 500
_PARKED_EVENTS = 100
# The patch behind which this workflow catches failures and goes on, rebuilds a fresh run,
# clears retention on a return to paying, re-checks its inbox before ending, ends idle runs,
# wakes for continue-as-new on updates alone and cleans up when cancelled. Histories recorded
# before it replay the earlier commands.
LIFELINE = "billing-lifeline"
# The patch behind which dunning follows Stripe: a subscription's unpaid status is checked
# against a fresh read before dunning starts, a failed payment and each payment are e-mailed,
# and a saved card retries a provisioning that failed.
FOLLOW_STRIPE = "billing-follow-stripe"
# The patch behind which operators extend trials and suspend or unsuspend tenants (commands
# only these updates issue; histories recorded before them never invoked them).
OPERATIONS = "billing-operations"
# The usage report measures the tenant's storage first.
MEASURE_STORAGE = "usage-measure-storage"
# The patch behind which refunds, disputes and credit notes are recorded on the invoices
# projection and a dispute alerts the tenant's admins and the operators (commands only these
# Stripe events issue; histories recorded before them never received one).
ADJUSTMENTS = "billing-invoice-adjustments"
# A change at the period's end holds the tenant to the new plan's limits until it is made
# (recording it ends the hold), with room for a late timer or a failed first try.
_SCHEDULED_HOLD = timedelta(days=1)
# The patch behind which the loop wakes when an update moves the next timer (a change
# scheduled for the period's end, a new policy's grace): it waited for the earlier one.
REARM = "billing-rearm-timers"
# Members are counted this long after the news of a change: the change is signalled before it
# is committed (a change that is not committed is then counted as no change).
_SEATS_SETTLE = timedelta(seconds=5)
# Stripe statuses of a subscription with a payment outstanding, and of one that is over.
_UNPAID = frozenset({"past_due", "unpaid"})
_ENDED = frozenset({"canceled", "incomplete_expired"})
_PAYMENT_EVENTS = frozenset({"invoice.paid", "invoice.payment_succeeded"})

T = TypeVar("T")


def _remember(items: list[str], item: str, bound: int) -> None:
    if item not in items:
        items.append(item)
        del items[:-bound]


@workflow.defn
class BillingWorkflow:
    """A tenant's billing, from provisioning to cancellation.

    Stripe renews and retries payments; this workflow decides what the tenant may do:

    - **provision** (signal, on approval): the Stripe customer and a subscription for the
      plan, with the configured trial → ``trialing`` (or ``active``);
    - **Stripe events** (signal, from the webhook inbox, possibly repeated or out of order):
      applied once each, and only when newer than what is known (a tie is settled by
      re-reading Stripe);
    - a failed payment → ``past_due`` with a grace period and reminder e-mails on its days →
      ``suspended`` (read-only) when it ends → ``active`` again once nothing is unpaid;
    - subscription deleted → ``cancelled``; the data-retention timer then ends the workflow;
    - **change_plan**, **set_renewal** (validated updates) change the subscription through
      Stripe (prorated; cancel at period end or resume);
    - **collect_payment_method** (validated update) opens a SetupIntent for the browser; its
      ``setup_intent.succeeded`` event makes the card the customer's default and, while
      payment is overdue, retries the open invoices (their payment reactivates the tenant);
    - refunds, disputes and credit notes (Stripe events) are recorded on the invoices
      projection; a dispute opened is e-mailed to the tenant's admins and the platform's
      operators, once. They change no access.

    Every transition writes the subscriptions projection, the tenant's status, ``BizStatus`` and
    an audit row. The workflow continues as new before its history grows large, carrying its
    state, unhandled messages and the ids of handled updates.

    It never dies of one failure: every activity is bounded, and an event whose handling fails
    is recorded, alerted and parked for another try (an e-mail that cannot go out is recorded
    and skipped). A run started after another ended or died rebuilds its state from the
    projection and Stripe; a run holding nothing ends when idle. Cancelled, it removes its
    usage schedule.
    """

    @workflow.init
    def __init__(self, start: BillingInput) -> None:
        self._tenant_id = start.tenant_id
        self._policy = start.policy
        self._state = start.state or BillingState()
        self._inbox: list[BillingEvent] = self._state.pending
        self._provisions: list[ProvisionRequest] = self._state.pending_provisions
        self._state.pending, self._state.pending_provisions = [], []
        # Serialises event handling with the updates: both change the subscription.
        self._lock = asyncio.Lock()
        # Whether this run has the LIFELINE commands (see ``_patched``).
        self._lifeline: bool | None = None
        self._follows_stripe: bool | None = None
        # Whether the loop wakes for a timer an update moved (REARM), and the one it waits for.
        self._rearms = False
        self._armed: datetime | None = None
        # After a failed timer action, timers wait until then.
        self._hold_until: datetime | None = None
        # When this run last had work (an idle run without a customer ends).
        self._idle_since: datetime | None = None
        self._expiry_recorded = False

    @workflow.run
    async def run(self, start: BillingInput) -> BillingStatus:
        """Apply requests, events and timers until the cancelled tenant's retention ends (or,
        holding no customer, until it has been idle long enough)."""
        self._follows()
        self._rearms = workflow.patched(REARM)
        if self._patched():
            self._idle_since = workflow.now()
            if start.state is None:
                async with self._lock:
                    await self._rebuild()
        workflow.upsert_search_attributes(
            [TENANT_ID.value_set(str(self._tenant_id)), BIZ_PROCESS.value_set(PROCESS)]
        )
        self._publish()
        try:
            return await self._live()
        except asyncio.CancelledError:
            if self._lifeline:
                await self._on_cancelled()
            raise

    async def _live(self) -> BillingStatus:
        while True:
            while not self._over():
                await self._wait_for_work()
                async with self._lock:
                    await self._handle_work()
                if self._history_is_large():
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    workflow.continue_as_new(self._carried())
            await workflow.wait_condition(workflow.all_handlers_finished)
            ended = self._state.retention_ends_at
            if not self._lifeline:
                assert ended is not None
            if ended is not None and not self._expiry_recorded:
                self._set_details("ending: the data retention period is over")
                await self._record(
                    BillingStatus.CANCELLED,
                    "billing.retention_expired",
                    cause=f"retention:{ended.isoformat()}",
                )
                self._expiry_recorded = True
            # Messages that arrived during the final write are handled, not dropped.
            if not self._lifeline or not (self._inbox or self._provisions):
                return self._state.status

    def _patched(self) -> bool:
        """Whether this run issues the LIFELINE commands: always, except when replaying a
        history recorded before them. Memoised; first asked at the start of ``run``."""
        if self._lifeline is None:
            self._lifeline = workflow.patched(LIFELINE)
        return self._lifeline

    def _follows(self) -> bool:
        """Whether this run issues the FOLLOW_STRIPE commands (memoised like ``_patched``)."""
        if self._follows_stripe is None:
            self._follows_stripe = workflow.patched(FOLLOW_STRIPE)
        return self._follows_stripe

    async def _rebuild(self) -> None:
        """A fresh run never starts empty: the projection and Stripe say what billing knew."""
        while True:
            self._set_details("rebuilding the billing state from the projection and Stripe")
            try:
                rebuilt = await self._activity(
                    BillingActivities.load_billing_state,
                    BillingRebuild(tenant_id=self._tenant_id, policy=self._policy),
                    summary="rebuild state from the projection and Stripe",
                )
            except ActivityError as exc:
                _reraise_cancellation(exc)
                await self._record_failure("rebuild", "state", _error_text(exc))
                # Starting empty would forget the customer: messages wait until it works.
                await workflow.sleep(
                    self._policy.failure_backoff, summary="retry rebuilding the state"
                )
                continue
            if rebuilt is not None:
                self._state = rebuilt
            return

    async def _on_cancelled(self) -> None:
        """The workflow was cancelled: the usage schedule it owns goes with it."""
        self._set_details("cancelled: removing the usage schedule")
        try:
            await self._activity(
                BillingActivities.remove_usage_schedule,
                self._tenant_id,
                summary="remove the usage schedule (workflow cancelled)",
            )
        except ActivityError as exc:
            workflow.logger.error("the usage schedule was not removed: %s", exc.cause)

    # --- Messages -------------------------------------------------------------------------

    @workflow.signal
    def stripe_event(self, event: BillingEvent) -> None:
        """A verified Stripe event from the webhook inbox; repeats are applied once."""
        self._inbox.append(event)

    @workflow.signal
    def provision(self, request: ProvisionRequest) -> None:
        """Give the tenant a subscription for the plan (on approval)."""
        self._provisions.append(request)

    @workflow.signal
    def seats_changed(self) -> None:
        """The tenant's members changed: the seats of a plan priced per user are counted
        again (once for any number of changes until then)."""
        if self._state.seats_changed_since is None:
            self._state.seats_changed_since = workflow.now()

    @workflow.query
    def view(self) -> BillingView:
        """The tenant's billing state: status, plan, period, renewal, grace and retention."""
        subscription, scheduled = self._state.subscription, self._state.scheduled_plan
        return BillingView(
            tenant_id=self._tenant_id,
            status=self._state.status,
            plan=self._state.plan,
            stripe_status=subscription.stripe_status if subscription else None,
            current_period_end=subscription.current_period_end if subscription else None,
            cancel_at_period_end=subscription.cancel_at_period_end if subscription else False,
            trial_end=subscription.trial_end if subscription else None,
            grace_ends_at=self._grace_ends_at(),
            retention_ends_at=self._state.retention_ends_at,
            unpaid_invoices=list(self._state.unpaid_invoices),
            parked_events=[parked.event.event_id for parked in self._state.parked],
            provision_failure=self._state.provision_failure,
            suspended_by_operator=self._state.hold.reason if self._state.hold else None,
            scheduled_plan=scheduled.plan if scheduled else None,
            scheduled_plan_at=scheduled.at if scheduled else None,
            seats=subscription.quantity if subscription else None,
            interval=subscription.interval if subscription else None,
            scheduled_interval=scheduled.interval if scheduled else None,
        )

    @workflow.update
    async def change_plan(self, change: PlanChange) -> BillingView:
        """Move the subscription to another plan (Stripe prorates); a downgrade below what the
        tenant uses now is refused and nothing changes. A repeated update id (within the
        carried window) changes nothing and answers the current view."""
        async with self._lock:
            if self._is_repeat():
                return self.view()
            self._check_plan_change(change)
            if self._is_current(change):
                await self._withdraw_scheduled_plan(change)
                return self.view()
            at = self._scheduled_plan_at() if change.at_period_end else None
            excess = await self._activity(
                BillingActivities.plan_excesses,
                PlanFit(
                    tenant_id=self._tenant_id,
                    plan=change.plan,
                    hold_until=at + _SCHEDULED_HOLD if at is not None else None,
                ),
            )
            if excess:
                raise ApplicationError(
                    f"The tenant uses more than the {change.plan.value} plan allows: "
                    + ", ".join(_describe(item) for item in excess),
                    [item.model_dump(mode="json") for item in excess],
                    type=PLAN_LIMIT_EXCEEDED,
                )
            if at is not None:
                await self._schedule_plan(change, at)
                return self.view()
            previous = self._state.plan
            snapshot = await self._update_subscription(
                plan=change.plan, interval=self._interval_of(change.interval)
            )
            self._state.scheduled_plan = None  # a change made now replaces a scheduled one
            self._adopt(snapshot)
            await self._record(
                self._state.status,
                "billing.plan_changed",
                cause=_update_id(),
                actor_id=change.requested_by,
                data={
                    "plan": change.plan.value,
                    "previous_plan": previous.value if previous else "",
                    "interval": snapshot.interval or "",
                },
            )
            self._handled("")
            return self.view()

    @change_plan.validator
    def _validate_plan_change(self, change: PlanChange) -> None:
        if not self._is_repeat():
            self._check_plan_change(change)

    async def _schedule_plan(self, change: PlanChange, at: datetime) -> None:
        """Keep the change for the period's end (the tenant is held to the new plan's limits
        meanwhile): the timer applies it then."""
        self._state.scheduled_plan = ScheduledPlan(
            plan=change.plan,
            at=at,
            requested_by=change.requested_by,
            interval=self._interval_of(change.interval),
        )
        await self._record(
            self._state.status,
            "billing.plan_change_scheduled",
            cause=_update_id(),
            actor_id=change.requested_by,
            data={"plan": change.plan.value, "at": at.isoformat()},
        )
        self._handled("")

    async def _withdraw_scheduled_plan(self, change: PlanChange) -> None:
        """A change back to the current plan withdraws the one scheduled (and its hold)."""
        scheduled = self._state.scheduled_plan
        assert scheduled is not None  # the check refuses the current plan otherwise
        self._state.scheduled_plan = None
        await self._record(
            self._state.status,
            "billing.plan_change_withdrawn",
            cause=_update_id(),
            actor_id=change.requested_by,
            data={"plan": scheduled.plan.value},
            release_hold=True,
        )
        self._handled("")

    def _is_current(self, change: PlanChange) -> bool:
        """Whether the change asks for the plan and interval the tenant has."""
        return change.plan == self._state.plan and (
            change.interval is None or change.interval == self._interval_of(None)
        )

    def _interval_of(self, asked: BillingInterval | None) -> BillingInterval | None:
        """The interval asked for, else the subscription's (``None``: not known)."""
        if asked is not None:
            return asked
        subscription = self._state.subscription
        known = subscription.interval if subscription else None
        return BillingInterval(known) if known in set(BillingInterval) else None

    def _scheduled_plan_at(self) -> datetime:
        """When a change at the period's end is applied: a little before the period ends, so
        that the renewal bills the new plan (at once when the period is nearly over)."""
        subscription = self._state.subscription
        assert subscription is not None
        assert subscription.current_period_end is not None
        return max(subscription.current_period_end - self._policy.plan_change_lead, workflow.now())

    @workflow.update
    async def preview_plan_change(self, preview: PlanPreview) -> InvoicePreview:
        """What Stripe would bill for a change to ``preview.plan``, prorated now or at the
        period's end; nothing changes."""
        self._check_plan_change(_as_change(preview))
        assert self._state.subscription is not None
        return await self._activity(
            BillingActivities.preview_plan_change,
            PreviewRequest(
                tenant_id=self._tenant_id,
                subscription=self._state.subscription,
                plan=preview.plan,
                prorate=not preview.at_period_end,
                interval=self._interval_of(preview.interval),
            ),
            summary=f"preview a change to the {preview.plan.value} plan",
        )

    @preview_plan_change.validator
    def _validate_preview(self, preview: PlanPreview) -> None:
        self._check_plan_change(_as_change(preview))

    @workflow.update
    async def set_renewal(self, change: RenewalChange) -> BillingView:
        """Cancel the subscription at the end of its period (``cancel``), or resume renewal.
        A repeated update id changes nothing and answers the current view."""
        async with self._lock:
            if self._is_repeat():
                return self.view()
            self._check_renewal(change)
            snapshot = await self._update_subscription(cancel_at_period_end=change.cancel)
            self._adopt(snapshot)
            await self._record(
                self._state.status,
                "billing.cancellation_scheduled" if change.cancel else "billing.renewal_resumed",
                cause=_update_id(),
                actor_id=change.requested_by,
            )
            self._handled("")
            return self.view()

    @set_renewal.validator
    def _validate_renewal(self, change: RenewalChange) -> None:
        if not self._is_repeat():
            self._check_renewal(change)

    @workflow.update
    async def collect_payment_method(
        self, request: PaymentMethodRequest
    ) -> PaymentMethodCollection:
        """Open a SetupIntent for the customer's card. Its client secret stays out of history:
        the activity keeps it (encrypted) for the API and returns only the SetupIntent's id.
        A repeated update id answers the SetupIntent it opened."""
        async with self._lock:
            repeated = self._state.handled_updates.get(_update_id())
            if repeated is not None:
                return PaymentMethodCollection(setup_intent_id=repeated)
            self._check_payment_method()
            customer_id = self._state.customer_id
            assert customer_id is not None
            setup_intent_id = await self._activity(
                BillingActivities.create_setup_intent,
                SetupIntentRequest(
                    tenant_id=self._tenant_id,
                    customer_id=customer_id,
                    idempotency_key=f"{workflow.info().workflow_id}:{_update_id()}:setup-intent",
                ),
            )
            await self._record(
                self._state.status,
                "billing.payment_method_requested",
                cause=_update_id(),
                actor_id=request.requested_by,
                data={"setup_intent": setup_intent_id},
            )
            self._handled(setup_intent_id)
            return PaymentMethodCollection(setup_intent_id=setup_intent_id)

    @collect_payment_method.validator
    def _validate_payment_method(self, request: PaymentMethodRequest) -> None:
        if not self._is_repeat():
            self._check_payment_method()

    @workflow.update
    async def remove_payment_method(self, removal: PaymentMethodRemoval) -> BillingView:
        """Detach a saved card from the tenant's customer. A card that is not the customer's
        is not found; the default card stays while a subscription runs (it pays it: save
        another card first). A repeated update id changes nothing."""
        async with self._lock:
            if self._is_repeat():
                return self.view()
            self._check_has_customer()
            customer_id = self._state.customer_id
            assert customer_id is not None
            found = await self._activity(
                BillingActivities.fetch_payment_method,
                PaymentMethodLookup(
                    customer_id=customer_id, payment_method_id=removal.payment_method_id
                ),
                summary="look up the card to remove",
            )
            if found is None or found.customer_id != customer_id:
                raise ApplicationError(
                    "The tenant has no such payment method.", type=PAYMENT_METHOD_NOT_FOUND
                )
            subscription = self._state.subscription
            if (
                found.is_default
                and subscription is not None
                and (subscription.stripe_status not in _ENDED)
            ):
                raise ApplicationError(
                    "The default payment method pays the subscription; save another card "
                    "before removing it.",
                    type=BILLING_STATE,
                )
            await self._activity(
                BillingActivities.detach_payment_method,
                PaymentMethodDetach(
                    payment_method_id=found.payment_method_id,
                    idempotency_key=f"{workflow.info().workflow_id}:{_update_id()}:detach",
                ),
                summary="detach the card",
            )
            await self._record(
                self._state.status,
                "billing.payment_method_removed",
                cause=_update_id(),
                actor_id=removal.requested_by,
                data={"payment_method": found.payment_method_id},
            )
            self._handled("")
            return self.view()

    @remove_payment_method.validator
    def _validate_removal(self, removal: PaymentMethodRemoval) -> None:
        if not self._is_repeat():
            self._check_has_customer()

    @workflow.update
    async def extend_trial(self, extension: TrialExtension) -> BillingView:
        """An operator moves the trial's end later (Stripe's ``trial_end``); only while the
        tenant is trialing. A repeated update id changes nothing."""
        async with self._lock:
            if self._is_repeat():
                return self.view()
            self._check_trial_extension(extension)
            workflow.patched(OPERATIONS)
            subscription = self._state.subscription
            assert subscription is not None
            previous = subscription.trial_end
            snapshot = await self._update_subscription(trial_end=extension.trial_end)
            self._adopt(snapshot)
            await self._record(
                self._state.status,
                "billing.trial_extended",
                cause=_update_id(),
                actor_id=extension.requested_by,
                data={
                    "trial_end": extension.trial_end.isoformat(),
                    "previous_trial_end": previous.isoformat() if previous else "",
                },
            )
            self._handled("")
            return self.view()

    @extend_trial.validator
    def _validate_trial_extension(self, extension: TrialExtension) -> None:
        if not self._is_repeat():
            self._check_trial_extension(extension)

    @workflow.update
    async def suspend(self, request: OperatorSuspension) -> BillingView:
        """An operator suspends the tenant (read-only) for a reason, whatever Stripe says;
        billing goes on underneath and ``unsuspend`` lifts it. Audited with the reason."""
        async with self._lock:
            if self._is_repeat():
                return self.view()
            self._check_suspension(request, suspend=True)
            workflow.patched(OPERATIONS)
            self._state.hold = OperatorHold(
                reason=request.reason, since=workflow.now(), by=request.requested_by
            )
            try:
                await self._record(
                    self._state.status,
                    OPERATOR_SUSPENDED,
                    cause=_update_id(),
                    actor_id=request.requested_by,
                    data={"reason": request.reason},
                )
            except ActivityError:
                self._state.hold = None  # not written: not suspended
                raise
            self._handled("")
            return self.view()

    @suspend.validator
    def _validate_suspend(self, request: OperatorSuspension) -> None:
        if not self._is_repeat():
            self._check_suspension(request, suspend=True)

    @workflow.update
    async def unsuspend(self, request: OperatorSuspension) -> BillingView:
        """An operator lifts their suspension, for a reason (audited); the tenant's access is
        billing's again (still suspended if an invoice is overdue past its grace)."""
        async with self._lock:
            if self._is_repeat():
                return self.view()
            self._check_suspension(request, suspend=False)
            workflow.patched(OPERATIONS)
            hold = self._state.hold
            assert hold is not None
            self._state.hold = None
            try:
                await self._record(
                    self._state.status,
                    OPERATOR_UNSUSPENDED,
                    cause=_update_id(),
                    actor_id=request.requested_by,
                    data={"reason": request.reason, "suspended_for": hold.reason},
                )
            except ActivityError:
                self._state.hold = hold
                raise
            self._handled("")
            return self.view()

    @unsuspend.validator
    def _validate_unsuspend(self, request: OperatorSuspension) -> None:
        if not self._is_repeat():
            self._check_suspension(request, suspend=False)

    @workflow.update
    async def retry_provisioning(self, request: OperatorRequest) -> BillingView:
        """An operator provisions again a tenant whose provisioning failed (Stripe refused a
        request since put right, or could not be reached): the plan it asked for, under this
        update's key (audited). A new failure shows in the view as before."""
        async with self._lock:
            if self._is_repeat():
                return self.view()
            self._check_provisioning_failed()
            plan = self._state.pending_plan
            assert plan is not None
            await self._record(
                self._state.status,
                "billing.provisioning_retried",
                cause=_update_id(),
                actor_id=request.requested_by,
                data={"plan": plan.value},
            )
            await self._provision(
                ProvisionRequest(
                    tenant_id=self._tenant_id,
                    plan=plan,
                    idempotency_key=f"retry:{_update_id()}",
                    interval=self._state.pending_interval,
                )
            )
            self._handled("")
            return self.view()

    @retry_provisioning.validator
    def _validate_retry_provisioning(self, request: OperatorRequest) -> None:
        if not self._is_repeat():
            self._check_provisioning_failed()

    @workflow.update
    async def set_policy(self, policy: BillingPolicy) -> BillingView:
        """Apply new policy (trial, grace, reminders, retention) to this running tenant; it is
        carried across continue-as-new. A dunning already running keeps its start: the new
        grace period and reminders count from it."""
        async with self._lock:
            self._policy = policy
            return self.view()

    @workflow.update
    async def replay_parked_events(self, request: OperatorRequest) -> BillingView:
        """Try every parked Stripe event again now (an operator, once the cause is fixed)."""
        async with self._lock:
            now = workflow.now()
            for parked in self._state.parked:
                parked.retry_at = now
            await self._retry_parked()
            return self.view()

    @set_policy.validator
    def _validate_policy(self, policy: BillingPolicy) -> None:
        offsets = [offset for _, offset, _ in reminder_offsets(policy)]
        if policy.grace <= timedelta(0) or any(
            not timedelta(0) < at < policy.grace for at in offsets
        ):
            raise ApplicationError(
                "Reminders must fall within a positive grace period.", type=BILLING_STATE
            )

    def _is_repeat(self) -> bool:
        """Whether the current update's id was handled already (in this run or, within the
        carried window, an earlier one)."""
        return _update_id() in self._state.handled_updates

    def _handled(self, result: str) -> None:
        handled = self._state.handled_updates
        handled[_update_id()] = result
        for stale in list(handled)[:-_REMEMBERED_UPDATES]:
            del handled[stale]

    def _check_payment_method(self) -> None:
        if self._state.customer_id is None or self._state.status is BillingStatus.CANCELLED:
            raise ApplicationError(
                f"No billing account to add a card to (billing is {self._state.status.value}).",
                type=BILLING_STATE,
            )

    def _check_trial_extension(self, extension: TrialExtension) -> None:
        subscription = self._state.subscription
        if (
            subscription is None
            or self._state.status is not BillingStatus.TRIALING
            or subscription.trial_end is None
        ):
            raise ApplicationError(
                f"Only a trial can be extended (billing is {self._state.status.value}).",
                type=BILLING_STATE,
            )
        if extension.trial_end <= max(subscription.trial_end, workflow.now()):
            raise ApplicationError(
                f"The trial ends on {subscription.trial_end.isoformat()} already; an extension "
                "must end later.",
                type=BILLING_STATE,
            )

    def _check_suspension(self, request: OperatorSuspension, *, suspend: bool) -> None:
        if not request.reason.strip():
            raise ApplicationError("A reason is required.", type=BILLING_STATE)
        held = self._state.hold is not None
        if suspend and (held or self._state.status is BillingStatus.CANCELLED):
            raise ApplicationError(
                "The tenant is suspended by an operator already."
                if held
                else "The tenant's subscription has ended; it is read-only already.",
                type=BILLING_STATE,
            )
        if not suspend and not held:
            raise ApplicationError(
                "No operator suspension to lift (a suspension for non-payment ends when the "
                "invoice is paid).",
                type=BILLING_STATE,
            )

    def _check_provisioning_failed(self) -> None:
        state = self._state
        subscription = state.subscription
        if (
            state.status is not BillingStatus.PROVISIONING
            or state.pending_plan is None
            or (subscription is not None and subscription.stripe_status not in _ENDED)
        ):
            raise ApplicationError(
                "The tenant's provisioning has not failed: nothing to provision again (a first "
                "payment that did not go through is paid with a card instead).",
                type=BILLING_STATE,
            )

    def _check_has_customer(self) -> None:
        if self._state.customer_id is None:
            raise ApplicationError(
                "The tenant has no billing account (and so no payment methods).",
                type=PAYMENT_METHOD_NOT_FOUND,
            )

    def _check_plan_change(self, change: PlanChange) -> None:
        if self._state.subscription is None or self._state.status not in (
            BillingStatus.TRIALING,
            BillingStatus.ACTIVE,
        ):
            raise ApplicationError(
                f"The plan can change only while the subscription is trialing or active "
                f"(it is {self._state.status.value}).",
                type=BILLING_STATE,
            )
        scheduled = self._state.scheduled_plan
        if self._is_current(change) and scheduled is None:
            raise ApplicationError(
                f"The tenant is on the {change.plan.value} plan already.", type=SAME_PLAN
            )
        if (
            change.at_period_end
            and scheduled is not None
            and (scheduled.plan, scheduled.interval)
            == (change.plan, self._interval_of(change.interval))
        ):
            raise ApplicationError(
                f"A change to the {change.plan.value} plan is scheduled already.", type=SAME_PLAN
            )
        if change.at_period_end and self._state.subscription.current_period_end is None:
            raise ApplicationError("The subscription has no period to end.", type=BILLING_STATE)

    def _check_renewal(self, change: RenewalChange) -> None:
        subscription = self._state.subscription
        if subscription is None or self._state.status not in (
            BillingStatus.TRIALING,
            BillingStatus.ACTIVE,
            BillingStatus.PAST_DUE,
        ):
            raise ApplicationError(
                f"No renewing subscription to change (billing is {self._state.status.value}).",
                type=BILLING_STATE,
            )
        if subscription.cancel_at_period_end == change.cancel:
            raise ApplicationError(
                "The subscription is set to cancel at its period's end already."
                if change.cancel
                else "The subscription renews already.",
                type=BILLING_STATE,
            )

    # --- The loop -------------------------------------------------------------------------

    async def _wait_for_work(self) -> None:
        deadlines = self._deadlines()
        deadline, label = min(deadlines) if deadlines else (None, "")
        self._armed = deadline
        timeout = (deadline - workflow.now()) if deadline is not None else None
        if timeout is not None and timeout <= timedelta(0):
            return
        self._set_details(
            f"{self._state.status.value}: waiting for Stripe events, provisioning and changes"
            + (f"; next: {label} at {deadline.isoformat()}" if deadline is not None else "")
        )
        # A timeout means a timer is due (a reminder, the grace or retention end): handled next.
        with suppress(TimeoutError):
            await workflow.wait_condition(
                self._has_work, timeout=timeout, timeout_summary=label or "next billing timer"
            )

    def _has_work(self) -> bool:
        # A history grown large by updates alone also wakes the loop, to continue as new, and
        # so does an update that moved the next timer.
        return (
            bool(self._inbox or self._provisions)
            or (bool(self._lifeline) and self._history_is_large())
            or (self._rearms and self._next_deadline() != self._armed)
        )

    def _next_deadline(self) -> datetime | None:
        deadlines = self._deadlines()
        return min(deadlines)[0] if deadlines else None

    async def _handle_work(self) -> None:
        if self._lifeline:
            self._idle_since = workflow.now()
        while self._provisions:
            request = self._provisions.pop(0)
            self._set_details(f"provisioning the {request.plan.value} plan")
            error = await self._attempt(
                "provisioning", request.idempotency_key, self._provision(request)
            )
            if error is not None:
                # A repeat of the request (an operator's retry) provisions again.
                with suppress(ValueError):
                    self._state.provision_keys.remove(request.idempotency_key)
        while self._inbox:
            event = self._inbox.pop(0)
            self._set_details(f"applying Stripe {event.type} ({event.event_id})")
            error = await self._attempt(
                "event", f"{event.type} {event.event_id}", self._apply(event)
            )
            if error is not None:
                self._park(event, error, attempts=1)
        if self._lifeline:
            await self._retry_parked()
        now = workflow.now()
        if self._hold_until is not None and now < self._hold_until:
            return
        self._hold_until = None
        error = await self._attempt("timer", "dunning and retention", self._fire_due_timers())
        if error is not None:
            self._hold_until = now + self._policy.failure_backoff

    async def _attempt(self, what: str, subject: str, step: Awaitable[None]) -> str | None:
        """Run ``step``; if an activity in it fails, record and alert the failure and return
        its text, so that the workflow goes on (before LIFELINE: the failure ends the run)."""
        if not self._lifeline:
            await step
            return None
        try:
            await step
        except ActivityError as exc:
            _reraise_cancellation(exc)
            error = _error_text(exc)
            await self._record_failure(what, subject, error)
            return error
        return None

    def _park(self, event: BillingEvent, error: str, *, attempts: int) -> None:
        """Keep a failed event for another try (backing off), or for an operator."""
        state = self._state
        with suppress(ValueError):
            state.applied_events.remove(event.event_id)  # so that a retry applies it
        retry_at = (
            workflow.now() + self._policy.parked_retry * 2 ** (attempts - 1)
            if attempts < self._policy.parked_attempts
            else None
        )
        state.parked.append(
            ParkedEvent(event=event, attempts=attempts, error=error[:500], retry_at=retry_at)
        )
        for dropped in state.parked[:-_PARKED_EVENTS]:
            workflow.logger.error("parked Stripe event %s dropped", dropped.event.event_id)
        del state.parked[:-_PARKED_EVENTS]

    async def _retry_parked(self) -> None:
        now = workflow.now()
        due = [p for p in self._state.parked if p.retry_at is not None and p.retry_at <= now]
        for parked in due:
            self._state.parked.remove(parked)
            if parked.event.event_id in self._state.applied_events:
                continue  # Stripe delivered it again meanwhile, and it was applied
            event = parked.event
            self._set_details(f"retrying parked Stripe {event.type} ({event.event_id})")
            error = await self._attempt(
                "event",
                f"{event.type} {event.event_id} (try {parked.attempts + 1})",
                self._apply(event),
            )
            if error is not None:
                self._park(event, error, attempts=parked.attempts + 1)

    async def _record_failure(self, what: str, subject: str, error: str) -> None:
        workflow.logger.error("billing could not handle %s %s: %s", what, subject, error)
        try:
            await self._activity(
                BillingActivities.record_billing_failure,
                BillingFailure(
                    tenant_id=self._tenant_id,
                    what=what,
                    subject=subject,
                    error=error,
                    idempotency_key=f"{workflow.info().workflow_id}:failed:{what}:{subject}",
                ),
                summary=f"record the failure: {what}",
            )
        except ActivityError as exc:
            _reraise_cancellation(exc)
            workflow.logger.error("the failure could not be recorded either: %s", exc.cause)

    def _over(self) -> bool:
        if self._retention_over():
            return True
        idle_ends = self._idle_ends_at()
        return (
            idle_ends is not None
            and idle_ends <= workflow.now()
            and not self._inbox
            and not self._provisions
        )

    def _idle_ends_at(self) -> datetime | None:
        state = self._state
        if (
            not self._lifeline
            or self._idle_since is None
            or state.status is not BillingStatus.PROVISIONING
            or state.customer_id is not None
            or state.subscription is not None
            or state.parked
        ):
            return None
        return self._idle_since + self._policy.idle_end

    def _set_details(self, text: str) -> None:
        if self._lifeline:
            workflow.set_current_details(text)

    def _history_is_large(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self._policy.history_limit
        )

    def _carried(self) -> BillingInput:
        """The state for the next run, with the messages not yet handled."""
        state = self._state.model_copy(
            update={"pending": self._inbox, "pending_provisions": self._provisions}
        )
        return BillingInput(tenant_id=self._tenant_id, policy=self._policy, state=state)

    # --- Provisioning ---------------------------------------------------------------------

    async def _provision(self, request: ProvisionRequest) -> None:
        """Customer, then subscription, each under a key fixed by the request."""
        state = self._state
        if request.idempotency_key in state.provision_keys:
            return
        _remember(state.provision_keys, request.idempotency_key, _REMEMBERED_EVENTS)
        if state.status not in (BillingStatus.PROVISIONING, BillingStatus.CANCELLED):
            return  # already subscribed
        key = f"{workflow.info().workflow_id}:{request.idempotency_key}"
        first = state.subscription is None
        trial = first and self._policy.trial_days > 0
        try:
            state.customer_id = await self._activity(
                BillingActivities.ensure_customer,
                CustomerRequest(tenant_id=self._tenant_id, idempotency_key=f"{key}:customer"),
            )
            snapshot = await self._activity(
                BillingActivities.create_subscription,
                SubscriptionRequest(
                    tenant_id=self._tenant_id,
                    customer_id=state.customer_id,
                    plan=request.plan,
                    trial_end=workflow.now() + timedelta(days=self._policy.trial_days)
                    if trial
                    else None,
                    idempotency_key=f"{key}:subscription",
                    interval=request.interval,
                ),
            )
        except ActivityError as exc:
            _reraise_cancellation(exc)
            workflow.logger.warning("provisioning billing failed: %s", exc.cause)
            # A clear state the tenant resolves: a saved card provisions this plan again.
            state.pending_plan, state.pending_interval = request.plan, request.interval
            state.provision_failure = _error_text(exc)
            await self._record(
                state.status,
                "billing.provisioning_failed",
                cause=f"provision:{request.idempotency_key}",
                data={"plan": request.plan.value, "reason": str(exc.cause)},
            )
            return
        state.retention_ends_at = None
        state.subscription = None
        state.pending_plan = request.plan if snapshot.stripe_status == "incomplete" else None
        state.pending_interval = request.interval
        state.provision_failure = (
            "the first payment did not go through" if state.pending_plan else None
        )
        self._adopt(snapshot)
        await self._record(
            _access_of(snapshot.stripe_status) or BillingStatus.PROVISIONING,
            "billing.provisioned",
            cause=f"provision:{request.idempotency_key}",
            data={"plan": request.plan.value},
        )
        await self._activity(BillingActivities.ensure_usage_schedule, self._tenant_id)
        state.usage_scheduled = True

    # --- Stripe events --------------------------------------------------------------------

    async def _apply(self, event: BillingEvent) -> None:
        if event.event_id in self._state.applied_events:
            return
        _remember(self._state.applied_events, event.event_id, _REMEMBERED_EVENTS)
        if event.subscription is not None:
            await self._on_subscription(event, event.subscription)
        elif event.invoice is not None:
            await self._on_invoice(event, event.invoice)
        elif event.setup_intent is not None:
            await self._on_card_saved(event, event.setup_intent)
        elif event.adjustment is not None:
            await self._on_adjustment(event, event.adjustment)

    async def _on_subscription(self, event: BillingEvent, snapshot: SubscriptionSnapshot) -> None:
        current = self._state.subscription
        if current is not None and snapshot.subscription_id != current.subscription_id:
            if current.stripe_status not in _ENDED:
                return  # about another (older) subscription of this customer
            current = None
        if event.type == "customer.subscription.trial_will_end":
            await self._notify(NoticeKind.TRIAL_ENDING, event.event_id, deadline=snapshot.trial_end)
        if event.type == "customer.subscription.deleted":
            # An ended subscription never comes back: applied whatever its time.
            ended = snapshot.model_copy(update={"stripe_status": "canceled"})
            await self._follow_subscription(ended, event.event_id)
            return
        if event.event_id.startswith(RECONCILED):
            await self._reconcile(snapshot, event.event_id)
            return
        if current is not None and snapshot.as_of < current.as_of:
            return  # older than what is known
        if current is not None and snapshot.as_of == current.as_of and snapshot != current:
            # Two states of one second: Stripe has the last word.
            fetched = await self._activity(
                BillingActivities.fetch_subscription, snapshot.subscription_id
            )
            if fetched is None:
                return
            snapshot = fetched
        await self._follow_subscription(snapshot, event.event_id)

    async def _reconcile(self, snapshot: SubscriptionSnapshot, cause: str) -> None:
        """The projection differed from Stripe: follow Stripe as it is now and write the
        projection again, even where this workflow knew it already (a rebuilt run, say)."""
        fetched = await self._activity(
            BillingActivities.fetch_subscription,
            snapshot.subscription_id,
            summary="re-read the subscription the reconciliation found drifted",
        )
        if fetched is not None:
            await self._follow_subscription(fetched, cause, fresh=True, rewrite=True)

    async def _follow_subscription(
        self,
        snapshot: SubscriptionSnapshot,
        cause: str,
        *,
        fresh: bool = False,
        rewrite: bool = False,
    ) -> None:
        """Adopt a newer subscription state and move access where it points (``fresh``: the
        snapshot was just read from Stripe; ``rewrite``: the projection is written even if
        nothing changed here)."""
        previous = self._state.subscription
        self._adopt(snapshot)
        target = _access_of(snapshot.stripe_status)
        status = self._state.status
        if (
            target in (BillingStatus.TRIALING, BillingStatus.ACTIVE, BillingStatus.PAST_DUE)
            and not self._state.usage_scheduled
            and self._follows()
        ):
            # However the tenant got its subscription (provisioning, Checkout, a rebuilt run),
            # its usage is reported.
            await self._activity(
                BillingActivities.ensure_usage_schedule,
                self._tenant_id,
                summary="ensure the usage-report schedule",
            )
            self._state.usage_scheduled = True
        if target is BillingStatus.CANCELLED:
            await self._cancel(cause)
        elif target is BillingStatus.PAST_DUE:
            if status in (BillingStatus.PROVISIONING, BillingStatus.TRIALING, BillingStatus.ACTIVE):
                if not fresh and self._follows():
                    # An event's snapshot may be older than a payment since (Stripe sends no
                    # order): dunning starts only if Stripe still says unpaid now.
                    now = await self._activity(
                        BillingActivities.fetch_subscription,
                        snapshot.subscription_id,
                        summary="re-read the subscription before dunning",
                    )
                    if now is not None and _access_of(now.stripe_status) is not target:
                        await self._follow_subscription(now, cause, fresh=True)
                        return
                await self._start_dunning(cause)
            else:
                await self._refresh(cause)
        elif target is not None and not self._state.unpaid_invoices and status is not target:
            await self._record(target, _action_for(status, target), cause=cause)
        elif previous is None or _changed(previous, snapshot) or rewrite:
            await self._refresh(cause)

    async def _on_invoice(self, event: BillingEvent, invoice: InvoiceSnapshot) -> None:
        await self._activity(
            BillingActivities.record_invoice,
            InvoiceRecord(tenant_id=self._tenant_id, invoice=invoice),
        )
        current = self._state.subscription
        if current is not None and invoice.subscription_id not in (None, current.subscription_id):
            return  # an invoice of an older subscription: recorded, changes no access
        if event.type in _PAYMENT_EVENTS or invoice.settled:
            await self._settle(invoice, event.event_id)
        elif event.type == "invoice.payment_failed":
            await self._payment_failed(invoice, event.event_id)

    async def _payment_failed(self, invoice: InvoiceSnapshot, cause: str) -> None:
        state = self._state
        if invoice.invoice_id in state.settled_invoices:
            return  # a late failure of an invoice paid since
        # Before restricting anyone, ask Stripe whether the invoice was paid since.
        fetched = await self._activity(BillingActivities.fetch_invoice, invoice.invoice_id)
        if fetched is not None and fetched.settled:
            await self._settle(fetched, cause)
            return
        _remember(state.unpaid_invoices, invoice.invoice_id, _REMEMBERED_INVOICES)
        if state.status in (BillingStatus.TRIALING, BillingStatus.ACTIVE):
            await self._start_dunning(cause, invoice)

    async def _settle(self, invoice: InvoiceSnapshot, cause: str) -> None:
        state = self._state
        first_news = invoice.invoice_id not in state.settled_invoices
        _remember(state.settled_invoices, invoice.invoice_id, _REMEMBERED_INVOICES)
        if first_news and invoice.status == "paid" and invoice.amount_paid > 0 and self._follows():
            # One receipt per invoice, whichever of its payment events comes first.
            await self._notify(NoticeKind.RECEIPT, f"receipt:{invoice.invoice_id}", invoice=invoice)
        if invoice.invoice_id in state.unpaid_invoices:
            state.unpaid_invoices.remove(invoice.invoice_id)
        if state.unpaid_invoices:
            return
        if state.status in (BillingStatus.PAST_DUE, BillingStatus.SUSPENDED):
            suspended = state.status is BillingStatus.SUSPENDED
            await self._record(BillingStatus.ACTIVE, "billing.reactivated", cause=cause)
            if suspended:
                await self._notify(NoticeKind.REACTIVATED, cause)
        elif (
            state.status in (BillingStatus.PROVISIONING, BillingStatus.TRIALING)
            and invoice.amount_paid > 0
        ):
            # A paid invoice ends a trial or completes a first payment: re-read the subscription.
            await self._refetch_subscription(cause)

    async def _refetch_subscription(self, cause: str) -> None:
        current = self._state.subscription
        if current is None:
            return
        fetched = await self._activity(
            BillingActivities.fetch_subscription, current.subscription_id
        )
        if fetched is not None and fetched.as_of >= current.as_of:
            await self._follow_subscription(fetched, cause, fresh=True)

    async def _on_card_saved(self, event: BillingEvent, saved: SetupIntentSnapshot) -> None:
        """A card saved through a SetupIntent becomes the default; overdue invoices are retried
        on it at once."""
        if saved.customer_id != self._state.customer_id:
            return  # another customer's card
        key = f"{workflow.info().workflow_id}:{event.event_id}"
        try:
            await self._activity(
                BillingActivities.set_default_payment_method,
                DefaultPaymentMethod(
                    customer_id=saved.customer_id,
                    payment_method_id=saved.payment_method_id,
                    idempotency_key=f"{key}:default-payment-method",
                ),
            )
        except ActivityError as exc:
            _reraise_cancellation(exc)
            workflow.logger.warning("the saved card could not become the default: %s", exc.cause)
            return
        await self._record(
            self._state.status,
            "billing.payment_method_added",
            cause=event.event_id,
            data={"setup_intent": saved.setup_intent_id},
        )
        state = self._state
        if state.status is BillingStatus.PROVISIONING and self._follows():
            subscription = state.subscription
            if (subscription is None or subscription.stripe_status in _ENDED) and (
                state.pending_plan is not None
            ):
                # Provisioning failed for want of a card: the card makes it go through.
                await self._provision(
                    ProvisionRequest(
                        tenant_id=self._tenant_id,
                        plan=state.pending_plan,
                        idempotency_key=f"card:{event.event_id}",
                        interval=state.pending_interval,
                    )
                )
            subscription = state.subscription
            if (
                state.status is not BillingStatus.PROVISIONING
                or subscription is None
                or subscription.stripe_status != "incomplete"
            ):
                return
            # An incomplete first subscription: its open invoice is paid with the card below.
        elif state.status not in (BillingStatus.PAST_DUE, BillingStatus.SUSPENDED):
            return
        try:
            attempted = await self._activity(
                BillingActivities.pay_open_invoices,
                OpenInvoicesPayment(customer_id=saved.customer_id, idempotency_key=f"{key}:pay"),
                limit=timedelta(minutes=2),
                heartbeat=timedelta(seconds=30),
                summary="charge the open invoices to the saved card",
            )
        except ActivityError as exc:
            _reraise_cancellation(exc)
            # Stripe retries on its own schedule; its invoice events still settle the lapse.
            workflow.logger.warning("retrying the open invoices failed: %s", exc.cause)
            return
        for invoice in attempted:
            await self._activity(
                BillingActivities.record_invoice,
                InvoiceRecord(tenant_id=self._tenant_id, invoice=invoice),
            )
            if invoice.settled:
                await self._settle(invoice, event.event_id)

    async def _on_adjustment(self, event: BillingEvent, adjustment: AdjustmentSnapshot) -> None:
        """A refund, dispute or credit note: recorded on the invoices projection (newest state
        wins; a refund is the charge's refunded total, never added up). A dispute opened is
        e-mailed to the tenant's admins and alerted to the operators, once per dispute."""
        workflow.patched(ADJUSTMENTS)
        recorded = await self._activity(
            BillingActivities.record_invoice_adjustment,
            AdjustmentRecord(
                tenant_id=self._tenant_id,
                adjustment=adjustment,
                event_type=event.type,
                idempotency_key=f"{workflow.info().workflow_id}:{event.event_id}:{event.type}",
            ),
            summary=f"record the {adjustment.kind.value} on the invoice",
        )
        if event.type != DISPUTE_OPENED:
            return
        cause = f"dispute:{adjustment.stripe_id}"
        await self._notify(NoticeKind.DISPUTED, cause, adjustment=recorded)
        await self._alert_operators(NoticeKind.DISPUTED, cause, recorded)

    # --- Dunning, suspension, cancellation ------------------------------------------------

    async def _start_dunning(self, cause: str, invoice: InvoiceSnapshot | None = None) -> None:
        self._state.dunning = Dunning(since=workflow.now())
        await self._record(BillingStatus.PAST_DUE, "billing.payment_failed", cause=cause)
        if self._follows():
            # The customer hears of it the day it happens, not at the first reminder.
            await self._notify(
                NoticeKind.PAYMENT_FAILED, cause, deadline=self._grace_ends_at(), invoice=invoice
            )

    async def _cancel(self, cause: str) -> None:
        state = self._state
        if state.status is BillingStatus.CANCELLED:
            return
        state.unpaid_invoices = []
        state.retention_ends_at = workflow.now() + self._policy.retention
        await self._record(BillingStatus.CANCELLED, "billing.cancelled", cause=cause)
        await self._notify(NoticeKind.CANCELLED, cause, deadline=state.retention_ends_at)
        await self._activity(BillingActivities.remove_usage_schedule, self._tenant_id)
        state.usage_scheduled = False

    def _grace_ends_at(self) -> datetime | None:
        dunning = self._state.dunning
        return dunning.since + self._policy.grace if dunning is not None else None

    def _due_reminders(self) -> list[tuple[int, datetime, str]]:
        """Reminders not sent yet: (key, when, label for the notice's key)."""
        dunning = self._state.dunning
        if dunning is None or self._state.status is not BillingStatus.PAST_DUE:
            return []
        return [
            (key, dunning.since + offset, label)
            for key, offset, label in reminder_offsets(self._policy)
            if key not in dunning.reminders_sent
        ]

    def _deadlines(self) -> list[tuple[datetime, str]]:
        """The timers due, each with what it is for."""
        state = self._state
        deadlines = [(at, f"payment reminder ({label})") for _, at, label in self._due_reminders()]
        grace_ends = self._grace_ends_at()
        if grace_ends is not None and state.status is BillingStatus.PAST_DUE:
            deadlines.append((grace_ends, "grace period ends: suspension"))
        # Retention counts only while cancelled: a tenant back to paying keeps its data (a
        # stale date in the past would make the loop spin).
        if state.retention_ends_at is not None and (
            state.status is BillingStatus.CANCELLED or not self._lifeline
        ):
            deadlines.append((state.retention_ends_at, "data retention ends"))
        if state.seats_changed_since is not None:
            at = state.seats_changed_since + _SEATS_SETTLE
            deadlines.append((at, "count the seats again"))
        if state.scheduled_plan is not None:
            deadlines.append(
                (state.scheduled_plan.at, f"plan change to {state.scheduled_plan.plan.value}")
            )
        if self._lifeline:
            if self._hold_until is not None:
                # Timer actions failed a moment ago: not before the backoff is over.
                deadlines = [(max(at, self._hold_until), label) for at, label in deadlines]
            deadlines += [
                (parked.retry_at, f"retry parked Stripe event {parked.event.event_id}")
                for parked in state.parked
                if parked.retry_at is not None
            ]
            idle_ends = self._idle_ends_at()
            if idle_ends is not None:
                deadlines.append((idle_ends, "idle end (no customer)"))
        return deadlines

    async def _fire_due_timers(self) -> None:
        now = workflow.now()
        dunning = self._state.dunning
        by_days = self._policy.reminders is None
        for key, at, label in self._due_reminders():
            if at <= now and dunning is not None:
                dunning.reminders_sent.append(key)
                await self._notify(
                    NoticeKind.PAYMENT_REMINDER,
                    f"dunning:{dunning.since.isoformat()}:{label}",
                    day=key if by_days else None,
                    deadline=self._grace_ends_at(),
                )
        grace_ends = self._grace_ends_at()
        if (
            dunning is not None
            and grace_ends is not None
            and grace_ends <= now
            and self._state.status is BillingStatus.PAST_DUE
        ):
            cause = f"dunning:{dunning.since.isoformat()}"
            await self._record(BillingStatus.SUSPENDED, "billing.suspended", cause=cause)
            await self._notify(NoticeKind.SUSPENDED, cause)
        scheduled = self._state.scheduled_plan
        if scheduled is not None and scheduled.at <= now:
            await self._apply_scheduled_plan(scheduled)
        seats_changed = self._state.seats_changed_since
        if seats_changed is not None and seats_changed + _SEATS_SETTLE <= now:
            await self._count_seats(seats_changed)

    async def _count_seats(self, since: datetime) -> None:
        """Bill the members as the seats of a plan priced per user (Stripe prorates)."""
        state = self._state
        cause = f"seats:{since.isoformat()}"
        if state.subscription is not None and state.status is not BillingStatus.CANCELLED:
            snapshot = await self._activity(
                BillingActivities.update_seats,
                SeatsUpdate(
                    tenant_id=self._tenant_id,
                    subscription=state.subscription,
                    idempotency_key=f"{workflow.info().workflow_id}:{cause}",
                ),
            )
            if snapshot is not None:
                self._adopt(snapshot)
                await self._record(
                    state.status,
                    "billing.seats_changed",
                    cause=cause,
                    data={"seats": str(snapshot.quantity)},
                )
        state.seats_changed_since = None

    async def _apply_scheduled_plan(self, scheduled: ScheduledPlan) -> None:
        """The period is ending: move to the scheduled plan without proration (the renewal
        bills it), unless billing ended meanwhile or the tenant no longer fits the plan."""
        state = self._state
        cause = f"scheduled-plan:{scheduled.at.isoformat()}"
        previous = state.plan
        if state.subscription is None or state.status is BillingStatus.CANCELLED:
            state.scheduled_plan = None
            await self._record(
                state.status,
                "billing.plan_change_dropped",
                cause=cause,
                data={"plan": scheduled.plan.value, "reason": "billing ended"},
                release_hold=True,
            )
            return
        if not self._is_current(PlanChange(plan=scheduled.plan, interval=scheduled.interval)):
            excess = await self._activity(
                BillingActivities.plan_excesses,
                PlanFit(tenant_id=self._tenant_id, plan=scheduled.plan),
            )
            if excess:
                state.scheduled_plan = None
                reason = "uses more than it allows: " + ", ".join(map(_describe, excess))
                await self._record(
                    state.status,
                    "billing.plan_change_dropped",
                    cause=cause,
                    data={"plan": scheduled.plan.value, "reason": reason},
                    release_hold=True,
                )
                return
            self._adopt(
                await self._update_subscription(
                    plan=scheduled.plan, interval=scheduled.interval, prorate=False, key=cause
                )
            )
        state.scheduled_plan = None
        await self._record(
            state.status,
            "billing.plan_changed",
            cause=cause,
            actor_id=scheduled.requested_by,
            data={
                "plan": scheduled.plan.value,
                "previous_plan": previous.value if previous else "",
                "at_period_end": "true",
            },
        )

    def _retention_over(self) -> bool:
        """The cancelled tenant's data retention is over and no message waits."""
        ends = self._state.retention_ends_at
        return (
            self._state.status is BillingStatus.CANCELLED
            and ends is not None
            and ends <= workflow.now()
            and not self._inbox
            and not self._provisions
        )

    # --- Effects --------------------------------------------------------------------------

    def _adopt(self, snapshot: SubscriptionSnapshot) -> None:
        if snapshot.stripe_status in ("trialing", "active"):
            self._state.pending_plan = self._state.provision_failure = None
        self._state.subscription = snapshot
        self._state.customer_id = snapshot.customer_id
        self._state.plan = snapshot.plan or self._state.plan

    async def _update_subscription(
        self,
        *,
        plan: PlanId | None = None,
        cancel_at_period_end: bool | None = None,
        trial_end: datetime | None = None,
        prorate: bool = True,
        key: str | None = None,
        interval: BillingInterval | None = None,
    ) -> SubscriptionSnapshot:
        """Change the subscription at Stripe, under the update's id (or ``key``, off an
        update)."""
        assert self._state.subscription is not None
        return await self._activity(
            BillingActivities.update_subscription,
            SubscriptionUpdate(
                subscription=self._state.subscription,
                plan=plan,
                cancel_at_period_end=cancel_at_period_end,
                trial_end=trial_end,
                tenant_id=self._tenant_id,
                idempotency_key=f"{workflow.info().workflow_id}:{key or _update_id()}",
                prorate=prorate,
                interval=interval,
            ),
        )

    async def _refresh(self, cause: str) -> None:
        """Projection only: the subscription changed, access did not (a renewal, say)."""
        await self._record(self._state.status, None, cause=cause)

    async def _record(
        self,
        status: BillingStatus,
        action: str | None,
        *,
        cause: str,
        actor_id: uuid.UUID | None = None,
        data: dict[str, str] | None = None,
        release_hold: bool = False,
    ) -> None:
        # The state moves only once the write succeeded: a failed write is tried again whole.
        state = self._state
        previous = state.status
        dunning = (
            state.dunning if status in (BillingStatus.PAST_DUE, BillingStatus.SUSPENDED) else None
        )
        retention = state.retention_ends_at
        if status is not BillingStatus.CANCELLED and self._lifeline:
            retention = None  # back to paying (or never left): the data stays
        await self._activity(
            BillingActivities.apply_billing_transition,
            BillingTransition(
                tenant_id=self._tenant_id,
                status=status,
                previous=previous,
                action=action,
                idempotency_key=f"{workflow.info().workflow_id}:{cause}:{action}",
                actor_id=actor_id,
                subscription=state.subscription,
                customer_id=state.customer_id,
                grace_ends_at=dunning.since + self._policy.grace if dunning else None,
                retention_ends_at=retention,
                data=data or {},
                held=state.hold is not None,
                scheduled_plan=state.scheduled_plan,
                release_hold=release_hold,
            ),
            summary=f"{previous.value} → {status.value}: {action or 'projection refresh'}",
        )
        state.status, state.dunning, state.retention_ends_at = status, dunning, retention
        self._publish()

    async def _notify(
        self,
        kind: NoticeKind,
        cause: str,
        *,
        day: int | None = None,
        deadline: datetime | None = None,
        invoice: InvoiceSnapshot | None = None,
        adjustment: AdjustmentSnapshot | None = None,
    ) -> None:
        # Bounded, and a failure is recorded and skipped: a mail server that is down must not
        # hold the lock (and with it every timer and update) for ever.
        try:
            await self._activity(
                BillingActivities.send_billing_notice,
                BillingNotice(
                    tenant_id=self._tenant_id,
                    kind=kind,
                    idempotency_key=f"{workflow.info().workflow_id}:{cause}:{kind.value}",
                    day=day,
                    deadline=deadline,
                    invoice=invoice,
                    adjustment=adjustment,
                ),
                limit=timedelta(minutes=2),
                deadline=self._policy.notice_deadline,
                summary=f"e-mail the admins: {kind.value}",
            )
        except ActivityError as exc:
            _reraise_cancellation(exc)
            await self._record_failure("notice", f"{kind.value} {cause}", _error_text(exc))

    async def _alert_operators(
        self, kind: NoticeKind, cause: str, adjustment: AdjustmentSnapshot
    ) -> None:
        """E-mail the platform's operators, once each; bounded, and a failure is recorded and
        skipped like a notice to the admins."""
        try:
            await self._activity(
                BillingActivities.send_operator_notice,
                BillingNotice(
                    tenant_id=self._tenant_id,
                    kind=kind,
                    idempotency_key=f"{workflow.info().workflow_id}:{cause}:{kind.value}:operators",
                    adjustment=adjustment,
                ),
                limit=timedelta(minutes=2),
                deadline=self._policy.notice_deadline,
                summary=f"alert the operators: {kind.value}",
            )
        except ActivityError as exc:
            _reraise_cancellation(exc)
            await self._record_failure(
                "notice", f"{kind.value} {cause} (operators)", _error_text(exc)
            )

    async def _activity(
        self,
        method: Callable[[Any, Any], Awaitable[T]],
        arg: Any,
        *,
        limit: timedelta = timedelta(seconds=30),
        deadline: timedelta | None = None,
        heartbeat: timedelta | None = None,
        summary: str | None = None,
    ) -> T:
        """Run an activity, retried until ``deadline`` (retries included): the activity
        deadline of the policy, or its update deadline inside an update (a person waits)."""
        if deadline is None:
            in_update = workflow.current_update_info() is not None
            deadline = self._policy.update_deadline if in_update else self._policy.activity_deadline
        return await workflow.execute_activity_method(
            method,
            arg,
            start_to_close_timeout=limit,
            schedule_to_close_timeout=max(deadline, limit),
            heartbeat_timeout=heartbeat,
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
            summary=summary or method.__name__.replace("_", " "),
        )

    def _publish(self) -> None:
        workflow.upsert_search_attributes([BIZ_STATUS.value_set(self._state.status.value)])


def _reraise_cancellation(exc: ActivityError) -> None:
    """A cancellation is never a failure to record and go on from."""
    if is_cancelled_exception(exc):
        raise exc


def _error_text(exc: ActivityError) -> str:
    """What failed, for the record: the activity's error (its type and message)."""
    cause = exc.cause or exc
    kind = getattr(cause, "type", None) or type(cause).__name__
    message = getattr(cause, "message", None) or str(cause)
    return f"{kind}: {message}"[:500]


def _as_change(preview: PlanPreview) -> PlanChange:
    """The change a preview is of."""
    return PlanChange(
        plan=preview.plan, at_period_end=preview.at_period_end, interval=preview.interval
    )


def _update_id() -> str:
    info = workflow.current_update_info()
    assert info is not None
    return f"update:{info.id}"


def _access_of(stripe_status: str) -> BillingStatus | None:
    """The access a Stripe subscription status points to (``None``: no change)."""
    if stripe_status == "trialing":
        return BillingStatus.TRIALING
    if stripe_status == "active":
        return BillingStatus.ACTIVE
    if stripe_status in _UNPAID:
        return BillingStatus.PAST_DUE
    if stripe_status in _ENDED:
        return BillingStatus.CANCELLED
    return None  # incomplete, paused: nothing to grant or take yet


def _action_for(previous: BillingStatus, status: BillingStatus) -> str:
    if status is BillingStatus.ACTIVE and previous in (
        BillingStatus.PAST_DUE,
        BillingStatus.SUSPENDED,
    ):
        return "billing.reactivated"
    return f"billing.{status.value}"


def _changed(before: SubscriptionSnapshot, after: SubscriptionSnapshot) -> bool:
    return before.model_dump(exclude={"as_of"}) != after.model_dump(exclude={"as_of"})


def _describe(excess: Excess) -> str:
    return f"{excess.resource.value} {excess.used} (limit {excess.limit})"


@workflow.defn
class UsageReportWorkflow:
    """Report a tenant's metered usage to Stripe (run by the tenant's usage Schedule)."""

    @workflow.run
    async def run(self, tenant_id: uuid.UUID) -> int:
        """Measure the tenant's storage, then aggregate unreported usage and send it; returns
        how many reports were sent."""
        if workflow.patched(MEASURE_STORAGE):
            await self._measure_storage(tenant_id)
        return await workflow.execute_activity_method(
            BillingActivities.report_usage,
            tenant_id,
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(minutes=1),
        )

    @staticmethod
    async def _measure_storage(tenant_id: uuid.UUID) -> None:
        """Record the bytes the tenant stores as the storage gauge, once per run."""
        used = await workflow.execute_activity_method(
            StorageMetering.measure_storage,
            tenant_id,
            start_to_close_timeout=timedelta(minutes=2),
            summary="measure the tenant's stored bytes",
        )
        if used is None:
            return  # nothing stored, ever
        await workflow.execute_activity_method(
            BillingActivities.record_usage,
            UsageRecord(
                tenant_id=tenant_id,
                metric=UsageMetric.STORAGE_BYTES,
                quantity=used,
                occurred_at=workflow.now(),
                idempotency_key=f"storage:{workflow.info().workflow_id}",
            ),
            start_to_close_timeout=timedelta(seconds=30),
            summary="record the stored bytes as usage",
        )
