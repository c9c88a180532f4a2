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
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.billing import PROCESS, BillingActivities
    from core.plans import Excess
    from core.search import BIZ_PROCESS, BIZ_STATUS, TENANT_ID
    from models.billing import (
        BillingEvent,
        BillingInput,
        BillingNotice,
        BillingState,
        BillingStatus,
        BillingTransition,
        BillingView,
        CustomerRequest,
        DefaultPaymentMethod,
        Dunning,
        InvoiceRecord,
        InvoiceSnapshot,
        NoticeKind,
        OpenInvoicesPayment,
        PaymentMethodCollection,
        PaymentMethodRequest,
        PlanChange,
        PlanFit,
        ProvisionRequest,
        RenewalChange,
        SetupIntentRequest,
        SetupIntentSnapshot,
        SubscriptionRequest,
        SubscriptionSnapshot,
        SubscriptionUpdate,
    )
    from models.onboarding import PlanId

# Error types of refused or failed updates; the API maps each to its HTTP status.
BILLING_STATE = "BillingState"  # 409: the change does not apply in the current state
SAME_PLAN = "SamePlan"  # 409
PLAN_LIMIT_EXCEEDED = "PlanLimitExceeded"  # 409, details: the excesses

# Bounds of the remembered ids carried across continue-as-new.
_REMEMBERED_EVENTS = 500
_REMEMBERED_INVOICES = 100
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
      payment is overdue, retries the open invoices (their payment reactivates the tenant).

    Every transition writes the subscriptions projection, the tenant's status, ``BizStatus`` and
    an audit row. The workflow continues as new before its history grows large.
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

    @workflow.run
    async def run(self, start: BillingInput) -> BillingStatus:
        """Apply requests, events and timers until the cancelled tenant's retention ends."""
        workflow.upsert_search_attributes(
            [TENANT_ID.value_set(str(self._tenant_id)), BIZ_PROCESS.value_set(PROCESS)]
        )
        self._publish()
        while not self._retention_over():
            await self._wait_for_work()
            async with self._lock:
                await self._handle_work()
            if self._history_is_large():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._carried())
        await workflow.wait_condition(workflow.all_handlers_finished)
        ended = self._state.retention_ends_at
        assert ended is not None
        await self._record(
            BillingStatus.CANCELLED,
            "billing.retention_expired",
            cause=f"retention:{ended.isoformat()}",
        )
        return self._state.status

    # --- Messages -------------------------------------------------------------------------

    @workflow.signal
    def stripe_event(self, event: BillingEvent) -> None:
        """A verified Stripe event from the webhook inbox; repeats are applied once."""
        self._inbox.append(event)

    @workflow.signal
    def provision(self, request: ProvisionRequest) -> None:
        """Give the tenant a subscription for the plan (on approval)."""
        self._provisions.append(request)

    @workflow.query
    def view(self) -> BillingView:
        """The tenant's billing state: status, plan, period, renewal, grace and retention."""
        subscription = self._state.subscription
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
        )

    @workflow.update
    async def change_plan(self, change: PlanChange) -> BillingView:
        """Move the subscription to another plan (Stripe prorates); a downgrade below what the
        tenant uses now is refused and nothing changes."""
        async with self._lock:
            self._check_plan_change(change)
            excess = await self._activity(
                BillingActivities.plan_excesses,
                PlanFit(tenant_id=self._tenant_id, plan=change.plan),
            )
            if excess:
                raise ApplicationError(
                    f"The tenant uses more than the {change.plan.value} plan allows: "
                    + ", ".join(_describe(item) for item in excess),
                    [item.model_dump(mode="json") for item in excess],
                    type=PLAN_LIMIT_EXCEEDED,
                )
            previous = self._state.plan
            snapshot = await self._update_subscription(plan=change.plan)
            self._adopt(snapshot)
            await self._record(
                self._state.status,
                "billing.plan_changed",
                cause=_update_id(),
                actor_id=change.requested_by,
                data={
                    "plan": change.plan.value,
                    "previous_plan": previous.value if previous else "",
                },
            )
            return self.view()

    @change_plan.validator
    def _validate_plan_change(self, change: PlanChange) -> None:
        self._check_plan_change(change)

    @workflow.update
    async def set_renewal(self, change: RenewalChange) -> BillingView:
        """Cancel the subscription at the end of its period (``cancel``), or resume renewal."""
        async with self._lock:
            self._check_renewal(change)
            snapshot = await self._update_subscription(cancel_at_period_end=change.cancel)
            self._adopt(snapshot)
            await self._record(
                self._state.status,
                "billing.cancellation_scheduled" if change.cancel else "billing.renewal_resumed",
                cause=_update_id(),
                actor_id=change.requested_by,
            )
            return self.view()

    @set_renewal.validator
    def _validate_renewal(self, change: RenewalChange) -> None:
        self._check_renewal(change)

    @workflow.update
    async def collect_payment_method(
        self, request: PaymentMethodRequest
    ) -> PaymentMethodCollection:
        """Open a SetupIntent for the customer's card. Its client secret stays out of history:
        the activity keeps it (encrypted) for the API and returns only the SetupIntent's id."""
        async with self._lock:
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
            return PaymentMethodCollection(setup_intent_id=setup_intent_id)

    @collect_payment_method.validator
    def _validate_payment_method(self, request: PaymentMethodRequest) -> None:
        self._check_payment_method()

    def _check_payment_method(self) -> None:
        if self._state.customer_id is None or self._state.status is BillingStatus.CANCELLED:
            raise ApplicationError(
                f"No billing account to add a card to (billing is {self._state.status.value}).",
                type=BILLING_STATE,
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
        if change.plan == self._state.plan:
            raise ApplicationError(
                f"The tenant is on the {change.plan.value} plan already.", type=SAME_PLAN
            )

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
        deadline = self._next_deadline()
        timeout = (deadline - workflow.now()) if deadline is not None else None
        if timeout is not None and timeout <= timedelta(0):
            return
        # A timeout means a timer is due (a reminder, the grace or retention end): handled next.
        with suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: bool(self._inbox or self._provisions),
                timeout=timeout,
                timeout_summary="next billing timer",
            )

    async def _handle_work(self) -> None:
        while self._provisions:
            await self._provision(self._provisions.pop(0))
        while self._inbox:
            await self._apply(self._inbox.pop(0))
        await self._fire_due_timers()

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
                ),
            )
        except ActivityError as exc:
            workflow.logger.warning("provisioning billing failed: %s", exc.cause)
            await self._record(
                state.status,
                "billing.provisioning_failed",
                cause=f"provision:{request.idempotency_key}",
                data={"plan": request.plan.value, "reason": str(exc.cause)},
            )
            return
        state.retention_ends_at = None
        state.subscription = None
        self._adopt(snapshot)
        await self._record(
            _access_of(snapshot.stripe_status) or BillingStatus.PROVISIONING,
            "billing.provisioned",
            cause=f"provision:{request.idempotency_key}",
            data={"plan": request.plan.value},
        )
        await self._activity(BillingActivities.ensure_usage_schedule, self._tenant_id)

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

    async def _follow_subscription(self, snapshot: SubscriptionSnapshot, cause: str) -> None:
        """Adopt a newer subscription state and move access where it points."""
        previous = self._state.subscription
        self._adopt(snapshot)
        target = _access_of(snapshot.stripe_status)
        status = self._state.status
        if target is BillingStatus.CANCELLED:
            await self._cancel(cause)
        elif target is BillingStatus.PAST_DUE:
            if status in (BillingStatus.PROVISIONING, BillingStatus.TRIALING, BillingStatus.ACTIVE):
                await self._start_dunning(cause)
            else:
                await self._refresh(cause)
        elif target is not None and not self._state.unpaid_invoices and status is not target:
            await self._record(target, _action_for(status, target), cause=cause)
        elif previous is None or _changed(previous, snapshot):
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
            await self._start_dunning(cause)

    async def _settle(self, invoice: InvoiceSnapshot, cause: str) -> None:
        state = self._state
        _remember(state.settled_invoices, invoice.invoice_id, _REMEMBERED_INVOICES)
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
            await self._follow_subscription(fetched, cause)

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
            workflow.logger.warning("the saved card could not become the default: %s", exc.cause)
            return
        await self._record(
            self._state.status,
            "billing.payment_method_added",
            cause=event.event_id,
            data={"setup_intent": saved.setup_intent_id},
        )
        if self._state.status not in (BillingStatus.PAST_DUE, BillingStatus.SUSPENDED):
            return
        try:
            attempted = await self._activity(
                BillingActivities.pay_open_invoices,
                OpenInvoicesPayment(customer_id=saved.customer_id, idempotency_key=f"{key}:pay"),
                limit=timedelta(minutes=2),
            )
        except ActivityError as exc:
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

    # --- Dunning, suspension, cancellation ------------------------------------------------

    async def _start_dunning(self, cause: str) -> None:
        self._state.dunning = Dunning(since=workflow.now())
        await self._record(BillingStatus.PAST_DUE, "billing.payment_failed", cause=cause)

    async def _cancel(self, cause: str) -> None:
        state = self._state
        if state.status is BillingStatus.CANCELLED:
            return
        state.unpaid_invoices = []
        state.retention_ends_at = workflow.now() + self._policy.retention
        await self._record(BillingStatus.CANCELLED, "billing.cancelled", cause=cause)
        await self._notify(NoticeKind.CANCELLED, cause, deadline=state.retention_ends_at)
        await self._activity(BillingActivities.remove_usage_schedule, self._tenant_id)

    def _grace_ends_at(self) -> datetime | None:
        dunning = self._state.dunning
        return dunning.since + self._policy.grace if dunning is not None else None

    def _due_reminders(self) -> list[tuple[int, datetime]]:
        dunning = self._state.dunning
        if dunning is None or self._state.status is not BillingStatus.PAST_DUE:
            return []
        return [
            (day, dunning.since + timedelta(days=day))
            for day in self._policy.reminder_days
            if day not in dunning.reminders_sent
        ]

    def _next_deadline(self) -> datetime | None:
        deadlines = [at for _, at in self._due_reminders()]
        grace_ends = self._grace_ends_at()
        if grace_ends is not None and self._state.status is BillingStatus.PAST_DUE:
            deadlines.append(grace_ends)
        if self._state.retention_ends_at is not None:
            deadlines.append(self._state.retention_ends_at)
        return min(deadlines, default=None)

    async def _fire_due_timers(self) -> None:
        now = workflow.now()
        dunning = self._state.dunning
        for day, at in self._due_reminders():
            if at <= now and dunning is not None:
                dunning.reminders_sent.append(day)
                await self._notify(
                    NoticeKind.PAYMENT_REMINDER,
                    f"dunning:{dunning.since.isoformat()}:day-{day}",
                    day=day,
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

    def _retention_over(self) -> bool:
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
        self._state.subscription = snapshot
        self._state.customer_id = snapshot.customer_id
        self._state.plan = snapshot.plan or self._state.plan

    async def _update_subscription(
        self, *, plan: PlanId | None = None, cancel_at_period_end: bool | None = None
    ) -> SubscriptionSnapshot:
        assert self._state.subscription is not None
        return await self._activity(
            BillingActivities.update_subscription,
            SubscriptionUpdate(
                subscription=self._state.subscription,
                plan=plan,
                cancel_at_period_end=cancel_at_period_end,
                idempotency_key=f"{workflow.info().workflow_id}:{_update_id()}",
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
    ) -> None:
        previous, self._state.status = self._state.status, status
        if status not in (BillingStatus.PAST_DUE, BillingStatus.SUSPENDED):
            self._state.dunning = None
        await self._activity(
            BillingActivities.apply_billing_transition,
            BillingTransition(
                tenant_id=self._tenant_id,
                status=status,
                previous=previous,
                action=action,
                idempotency_key=f"{workflow.info().workflow_id}:{cause}:{action}",
                actor_id=actor_id,
                subscription=self._state.subscription,
                customer_id=self._state.customer_id,
                grace_ends_at=self._grace_ends_at(),
                retention_ends_at=self._state.retention_ends_at,
                data=data or {},
            ),
        )
        self._publish()

    async def _notify(
        self,
        kind: NoticeKind,
        cause: str,
        *,
        day: int | None = None,
        deadline: datetime | None = None,
    ) -> None:
        await self._activity(
            BillingActivities.send_billing_notice,
            BillingNotice(
                tenant_id=self._tenant_id,
                kind=kind,
                idempotency_key=f"{workflow.info().workflow_id}:{cause}:{kind.value}",
                day=day,
                deadline=deadline,
            ),
            limit=timedelta(minutes=2),
        )

    async def _activity(
        self,
        method: Callable[[Any, Any], Awaitable[T]],
        arg: Any,
        *,
        limit: timedelta = timedelta(seconds=30),
    ) -> T:
        return await workflow.execute_activity_method(
            method,
            arg,
            start_to_close_timeout=limit,
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
        )

    def _publish(self) -> None:
        workflow.upsert_search_attributes([BIZ_STATUS.value_set(self._state.status.value)])


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
        """Aggregate unreported usage and send it; returns how many reports were sent."""
        return await workflow.execute_activity_method(
            BillingActivities.report_usage,
            tenant_id,
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(minutes=1),
        )
