"""Billing reconciliation: every subscription billing knows compared with Stripe, and drift
repaired through the tenants' billing workflows. Run by the ``billing-reconciliation``
Schedule."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.billing_reconciliation import PROCESS, ReconciliationActivities
    from core.search import BIZ_PROCESS, BIZ_STATUS
    from models.billing_reconciliation import (
        PageRequest,
        ReconciliationInput,
        ReconciliationPolicy,
        ReconciliationReport,
        SubscriptionCheck,
        SubscriptionDrift,
        SubscriptionRecord,
    )

# Database reads and Temporal signals: retried for a few minutes, then the step fails.
_STEP_DEADLINE = timedelta(minutes=5)
_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=30))


@workflow.defn
class BillingReconciliationWorkflow:
    """Compare the subscriptions projection with Stripe and repair what drifted.

    Page by page (by tenant id), each tenant's subscription is read fresh from Stripe. Where
    the projection differs (status, plan, period end, renewal, trial end; a subscription
    Stripe no longer knows; a live subscription of the customer it does not hold), the
    tenant's billing workflow is told what Stripe says, as the Stripe events it acts on, under
    ids fixed by this run (``reconcile:{subscription}:{workflow id}``): the billing workflow
    decides and writes, as for a webhook; reconciliation never writes the projection. Once the
    page's repairs have settled, their rows are read back: matching Stripe, a tenant counts as
    repaired, else as unrepaired (logged).

    A tenant whose Stripe read fails (after its retries) or is refused is counted as failed and
    the run goes on. The run continues as new every few pages, carrying where it stopped and
    its counts; it returns the counts (checked, drifted by kind, repaired, unrepaired,
    failed), which are also logged and metered. Tenant ids and Stripe ids only: no personal
    data.
    """

    def __init__(self) -> None:
        self._report = ReconciliationReport()

    @workflow.run
    async def run(self, start: ReconciliationInput) -> ReconciliationReport:
        """Reconcile page after page from where the previous run stopped; return the counts
        of the whole reconciliation."""
        self._report = start.report.model_copy(deep=True)
        policy, after = start.policy, start.after
        workflow.upsert_search_attributes(
            [BIZ_PROCESS.value_set(PROCESS), BIZ_STATUS.value_set("reconciling")]
        )
        pages = 0
        while True:
            page = await self._page(after, policy.page_size)
            if page:
                await self._reconcile(page, policy)
                after = page[-1].tenant_id
            if len(page) < policy.page_size:
                return await self._finish()
            pages += 1
            if pages >= policy.pages_per_run or workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(
                    ReconciliationInput(policy=policy, after=after, report=self._report)
                )

    @workflow.query
    def report(self) -> ReconciliationReport:
        """The counts so far (of this run and the runs it continues)."""
        return self._report

    async def _page(self, after: uuid.UUID | None, size: int) -> list[SubscriptionRecord]:
        return await workflow.execute_activity_method(
            ReconciliationActivities.list_subscriptions,
            PageRequest(after=after, limit=size),
            start_to_close_timeout=timedelta(seconds=30),
            schedule_to_close_timeout=_STEP_DEADLINE,
            retry_policy=_RETRY,
            summary="read the next page of subscriptions",
        )

    async def _reconcile(
        self, page: list[SubscriptionRecord], policy: ReconciliationPolicy
    ) -> None:
        """Check the page's tenants (a few at once), hand the drifted ones to their billing
        workflows, and read back what they wrote."""
        self._details(f"checking {len(page)} subscriptions against Stripe")
        drifted: list[SubscriptionDrift] = []
        for first in range(0, len(page), policy.parallel):
            batch = page[first : first + policy.parallel]
            checked = await asyncio.gather(*(self._check(record, policy) for record in batch))
            drifted += [drift for drift in checked if drift is not None and drift.kinds]
        handed = [drift for drift in drifted if await self._repair(drift)]
        if not handed:
            return
        self._details(f"letting {len(handed)} billing workflows apply what Stripe says")
        await workflow.sleep(policy.settle, summary="let the billing workflows apply the repairs")
        await self._read_back(handed)

    async def _check(
        self, record: SubscriptionRecord, policy: ReconciliationPolicy
    ) -> SubscriptionDrift | None:
        """The tenant's drift (``None``: Stripe could not be read for it, counted as failed)."""
        try:
            drift = await workflow.execute_activity_method(
                ReconciliationActivities.check_subscription,
                SubscriptionCheck(record=record, run_key=workflow.info().workflow_id),
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=policy.check_deadline,
                retry_policy=RetryPolicy(
                    maximum_interval=timedelta(seconds=30), maximum_attempts=policy.attempts
                ),
                summary=f"compare tenant {record.tenant_id} with Stripe",
            )
        except ActivityError as exc:
            self._failed(exc, "could not be checked against Stripe", record.tenant_id)
            return None
        report = self._report
        report.checked += 1
        if drift.kinds:
            report.drifted += 1
            for kind in drift.kinds:
                report.drift[kind] = report.drift.get(kind, 0) + 1
            workflow.logger.info(
                "tenant %s drifted from Stripe: %s",
                drift.tenant_id,
                ", ".join(kind.value for kind in drift.kinds),
            )
        return drift

    async def _repair(self, drift: SubscriptionDrift) -> bool:
        """Tell the tenant's billing workflow what Stripe says; whether it was told."""
        try:
            await workflow.execute_activity_method(
                ReconciliationActivities.repair_subscription,
                drift,
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=_STEP_DEADLINE,
                retry_policy=_RETRY,
                summary=f"tell the billing of tenant {drift.tenant_id} what Stripe says",
            )
        except ActivityError as exc:
            self._failed(exc, "could not be handed its repair", drift.tenant_id)
            return False
        return True

    async def _read_back(self, handed: list[SubscriptionDrift]) -> None:
        """Count the handed tenants whose projection now matches Stripe as repaired."""
        try:
            unrepaired = await workflow.execute_activity_method(
                ReconciliationActivities.unrepaired,
                handed,
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=_STEP_DEADLINE,
                retry_policy=_RETRY,
                summary="read back the repaired subscriptions",
            )
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            workflow.logger.error("the repairs could not be read back: %s", _error_text(exc))
            unrepaired = [drift.tenant_id for drift in handed]
        for tenant_id in unrepaired:
            workflow.logger.warning("tenant %s still differs from Stripe", tenant_id)
        self._report.unrepaired += len(unrepaired)
        self._report.repaired += len(handed) - len(unrepaired)

    async def _finish(self) -> ReconciliationReport:
        report = self._report
        self._details(
            f"done: {report.checked} checked, {report.drifted} drifted, {report.repaired} "
            f"repaired, {report.unrepaired} unrepaired, {report.failed} failed"
        )
        workflow.upsert_search_attributes([BIZ_STATUS.value_set("reconciled")])
        try:
            await workflow.execute_activity_method(
                ReconciliationActivities.report_reconciliation,
                report,
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=_STEP_DEADLINE,
                retry_policy=_RETRY,
                summary="log and meter the counts",
            )
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            workflow.logger.error("the counts could not be metered: %s", _error_text(exc))
        return report

    def _failed(self, exc: ActivityError, what: str, tenant_id: uuid.UUID) -> None:
        if is_cancelled_exception(exc):
            raise exc
        self._report.failed += 1
        workflow.logger.warning("tenant %s %s: %s", tenant_id, what, _error_text(exc))

    @staticmethod
    def _details(text: str) -> None:
        workflow.set_current_details(text)


def _error_text(exc: ActivityError) -> str:
    """What failed: the activity's error type and message."""
    cause = exc.cause or exc
    kind = getattr(cause, "type", None) or type(cause).__name__
    message = getattr(cause, "message", None) or str(cause)
    return f"{kind}: {message}"[:300]
