"""Approval: one human decision, with reminders, escalation and expiry (generic, reused)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Literal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.approval import ApprovalActivities
    from core.search import BIZ_STATUS
    from models.approval import (
        VERDICT_STATUS,
        ApprovalEvent,
        ApprovalNotice,
        ApprovalOutcome,
        ApprovalRecord,
        ApprovalRequest,
        ApprovalStatus,
        DeadlinePolicy,
        Decision,
    )

PROCESS = "approval"
# Error types of refused decisions; the API answers them with 409 and 403.
ALREADY_DECIDED = "ApprovalAlreadyDecided"
NOT_A_DECIDER = "NotADecider"

_PROJECTION_TIMEOUT = timedelta(seconds=30)
# A reminder that cannot be delivered for this long is given up (and logged): the decision
# deadlines matter more than the e-mail.
_NOTICE_RETRY_WINDOW = timedelta(hours=1)


def workflow_id(approval_id: uuid.UUID) -> str:
    return f"approval:{approval_id}"


@workflow.defn
class ApprovalWorkflow:
    """Wait for one decision on a request, at most ``policy.expire_after``.

    At ``remind_after`` the deciders get a reminder; at ``escalate_after`` the approval is
    escalated to a wider group; at ``expire_after`` it expires, which is a decision too. Each
    change is written to the ``approvals`` projection (the pending queue) and to ``BizStatus``
    (``pending`` → ``escalated`` → the outcome). The outcome is returned to the parent.
    """

    @workflow.init
    def __init__(self, request: ApprovalRequest) -> None:
        now = workflow.now()
        self._request = request
        self._record = ApprovalRecord(
            approval_id=request.approval_id,
            workflow_id=workflow.info().workflow_id,
            kind=request.kind,
            tenant_id=request.tenant_id,
            subject=request.subject,
            decider_role=request.decider_role,
            status=ApprovalStatus.PENDING,
            requested_at=now,
            due_at=now + request.policy.expire_after,
            facts=request.facts,
            attachments=request.attachments,
            history=[ApprovalEvent(at=now, event="requested")],
        )
        self._decision: Decision | None = None
        self._settled = False

    @workflow.run
    async def run(self, request: ApprovalRequest) -> ApprovalOutcome:
        """Publish the request, then remind, escalate and expire as the deadlines pass.

        Cancelled (its requesting process ended), it leaves the queue as ``withdrawn``."""
        try:
            decided = await self._deadlines(request.policy)
        except asyncio.CancelledError:
            await self._withdraw()
            raise
        if decided:
            self._apply_decision()
        else:
            self._expire()
        await self._settle()
        return ApprovalOutcome(
            approval_id=self._record.approval_id,
            status=self._record.status,
            reason=self._record.reason,
            decided_by=self._record.decided_by,
            decided_at=self._record.decided_at or workflow.now(),
        )

    async def _deadlines(self, policy: DeadlinePolicy) -> bool:
        """Wait for the decision through remind, escalate and expire; ``False``: expired."""
        await self._publish()
        decided = await self._decision_within(policy.remind_after)
        if not decided:
            await self._notify("reminder")
            decided = await self._decision_within(policy.escalate_after)
        if not decided:
            await self._escalate()
            decided = await self._decision_within(policy.expire_after)
        return decided

    async def _settle(self) -> None:
        """Publish the final state, then let a waiting ``decide`` return before the run ends."""
        await self._publish()
        self._settled = True
        workflow.set_current_details(f"decided: {self._record.status.value}")
        await workflow.wait_condition(workflow.all_handlers_finished)

    async def _withdraw(self) -> None:
        now = workflow.now()
        self._record.status = ApprovalStatus.WITHDRAWN
        self._record.decided_at = now
        self._record.history.append(ApprovalEvent(at=now, event="withdrawn"))
        await self._settle()

    @workflow.update
    async def decide(self, decision: Decision) -> ApprovalRecord:
        """Approve, reject or request changes (with a reason for the last two).

        Returns the approval once the decision is recorded in the projection.
        """
        self._decision = decision
        await workflow.wait_condition(lambda: self._settled)
        return self._record

    @decide.validator
    def _check_decision(self, decision: Decision) -> None:
        """Only one decision, before expiry, by the deciding role."""
        if self._decision is not None or self._record.status is not ApprovalStatus.PENDING:
            raise ApplicationError(
                f"approval {self._record.approval_id} is already {self._decided_status()}",
                type=ALREADY_DECIDED,
            )
        if decision.decider_role is not self._record.decider_role:
            raise ApplicationError(
                f"only a {self._record.decider_role.value} may decide this approval",
                type=NOT_A_DECIDER,
            )

    @workflow.query
    def record(self) -> ApprovalRecord:
        """The approval with its history, as the projection holds it."""
        return self._record

    async def _decision_within(self, offset: timedelta) -> bool:
        """Wait until a decision arrives or ``offset`` after the request passes."""
        until = self._record.requested_at + offset
        remaining = until - workflow.now()
        if remaining <= timedelta(0):
            return self._decision is not None
        workflow.set_current_details(
            f"waiting for a {self._record.decider_role.value} decision "
            f"(next deadline {until:%Y-%m-%d %H:%M} UTC)"
        )
        try:
            await workflow.wait_condition(
                lambda: self._decision is not None,
                timeout=remaining,
                timeout_summary="approval deadline",
            )
        except TimeoutError:
            return self._decision is not None  # one accepted in the same instant still counts
        return True

    async def _escalate(self) -> None:
        self._record.escalated_at = workflow.now()
        self._record.history.append(ApprovalEvent(at=workflow.now(), event="escalated"))
        await self._publish()
        await self._notify("escalation")

    async def _notify(self, kind: Literal["reminder", "escalation"]) -> None:
        notice = ApprovalNotice(
            approval_id=self._record.approval_id,
            kind=kind,
            idempotency_key=f"{self._record.workflow_id}:{kind}",
        )
        try:
            await workflow.execute_activity_method(
                ApprovalActivities.notify_approvers,
                notice,
                start_to_close_timeout=timedelta(seconds=60),
                schedule_to_close_timeout=_NOTICE_RETRY_WINDOW,
                retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=5)),
                summary=f"e-mail the deciders a {kind}",
            )
        except ActivityError:
            workflow.logger.warning("the %s of %s could not be sent", kind, notice.approval_id)
            return
        if kind == "reminder":
            self._record.history.append(ApprovalEvent(at=workflow.now(), event="reminded"))
            await self._publish()

    def _apply_decision(self) -> None:
        assert self._decision is not None
        decision, now = self._decision, workflow.now()
        status = VERDICT_STATUS[decision.decision]
        self._record.status = status
        self._record.decided_at = now
        self._record.decided_by = decision.decided_by
        self._record.reason = decision.reason
        self._record.history.append(
            ApprovalEvent(
                at=now,
                event=status.value,
                by=decision.decided_by,
                role=decision.decider_role,
                reason=decision.reason,
            )
        )

    def _expire(self) -> None:
        now = workflow.now()
        self._record.status = ApprovalStatus.EXPIRED
        self._record.decided_at = now
        self._record.reason = "No decision before the deadline."
        self._record.history.append(ApprovalEvent(at=now, event="expired"))

    def _decided_status(self) -> str:
        if self._decision is not None:
            return VERDICT_STATUS[self._decision.decision].value
        return self._record.status.value

    async def _publish(self) -> None:
        """Write the projection row and ``BizStatus`` for the current state."""
        biz_status = self._record.status.value
        if self._record.status is ApprovalStatus.PENDING and self._record.escalated_at:
            biz_status = "escalated"
        workflow.upsert_search_attributes([BIZ_STATUS.value_set(biz_status)])
        await workflow.execute_activity_method(
            ApprovalActivities.record_approval,
            self._record,
            start_to_close_timeout=_PROJECTION_TIMEOUT,
            summary=f"write the pending queue: {self._record.status.value}",
        )
