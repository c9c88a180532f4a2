"""Usage metering from inside a process (no process of its own): the one call by which a
tenant's processes record what they use, each use under a key fixed here so that a retried or
replayed record counts once. The hourly usage report sends the totals to Stripe's meters."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from models.billing import UsageMetric, UsageRecord

#: Runs started before this change record no workflow run.
WORKFLOW_RUNS_PATCH = "usage-workflow-runs"
_STORE_TIMEOUT = timedelta(seconds=30)
# How long a run's count is tried before the run goes on without it.
_COUNT_DEADLINE = timedelta(hours=1)


async def record_usage(
    tenant_id: uuid.UUID,
    metric: UsageMetric,
    quantity: int,
    key: str,
    summary: str,
    *,
    deadline: timedelta | None = None,
) -> None:
    """Record ``quantity`` of ``metric`` for the tenant, once under ``key`` (retried until
    ``deadline``, if given)."""
    await workflow.execute_activity(
        "record_usage",
        UsageRecord(
            tenant_id=tenant_id,
            metric=metric,
            quantity=quantity,
            occurred_at=workflow.now(),
            idempotency_key=key,
        ),
        start_to_close_timeout=_STORE_TIMEOUT,
        schedule_to_close_timeout=deadline,
        summary=summary,
    )


async def count_run(tenant_id: uuid.UUID) -> None:
    """Count this business process run as one of the tenant's workflow runs.

    A run is counted once, by its first workflow run: one that continued as new was counted
    when it began. A child run (an agent step of a playbook, a task's agent run, a playbook's
    content item) is part of its parent's run, which counts it.
    """
    info = workflow.info()
    if info.parent is not None or info.continued_run_id is not None:
        return
    if not workflow.patched(WORKFLOW_RUNS_PATCH):
        return
    try:
        await record_usage(
            tenant_id,
            UsageMetric.WORKFLOW_RUNS,
            1,
            f"{info.workflow_id}:{info.first_execution_run_id}:run",
            "count the run as usage",
            deadline=_COUNT_DEADLINE,
        )
    except ActivityError as exc:
        if is_cancelled_exception(exc):
            raise
        # The process goes on: an uncounted run is logged, not a reason to stop the work.
        workflow.logger.error("the run of %s was not counted as usage: %s", info.workflow_id, exc)
