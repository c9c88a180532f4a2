"""The approval workflow on the time-skipping server: days of deadlines pass in milliseconds."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError, WorkflowUpdateStage
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from core import search
from core.db import SessionFactory
from core.settings import Settings
from models.approval import (
    Approval,
    ApprovalKind,
    ApprovalOutcome,
    ApprovalRequest,
    ApprovalStatus,
    Decision,
    Verdict,
)
from models.email import OutboundEmail
from models.tenant import TenantStatus
from models.user import Role
from tests.factories import Member, member
from workers.main import build_worker
from workflows.approval import ALREADY_DECIDED, NOT_A_DECIDER, ApprovalWorkflow, workflow_id

Handle = WorkflowHandle[ApprovalWorkflow, ApprovalOutcome]


@pytest.fixture
async def ts_worker(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> AsyncIterator[Worker]:
    async with build_worker(time_skipping_env.client, sessions, settings) as worker:
        yield worker


@pytest.fixture
async def applicant(sessions: SessionFactory, settings: Settings) -> Member:
    return await member(sessions, settings, status=TenantStatus.PENDING_APPROVAL)


@pytest.fixture
async def staff(sessions: SessionFactory, settings: Settings) -> Member:
    return await member(sessions, settings, Role.SUPER_ADMIN, mfa_enabled=True)


async def _request(
    env: WorkflowEnvironment, settings: Settings, tenant_id: uuid.UUID
) -> tuple[Handle, uuid.UUID]:
    approval_id = uuid.uuid4()
    handle = await env.client.start_workflow(
        ApprovalWorkflow.run,
        ApprovalRequest(
            approval_id=approval_id,
            kind=ApprovalKind.TENANT_ONBOARDING,
            tenant_id=tenant_id,
            subject="New tenant: Example Trading (starter)",
            decider_role=Role.SUPER_ADMIN,
        ),
        id=workflow_id(approval_id),
        task_queue=settings.temporal_task_queue,
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(search.TENANT_ID, str(tenant_id))]
        ),
    )
    return handle, approval_id


def _decision(verdict: Verdict, by: Member, reason: str | None = None) -> Decision:
    return Decision(decision=verdict, reason=reason, decided_by=by.user_id, decider_role=by.role)


async def _row(sessions: SessionFactory, approval_id: uuid.UUID) -> Approval:
    async with sessions() as session:
        row = await session.get(Approval, approval_id)
    assert row is not None
    return row


async def _notices(sessions: SessionFactory, approval_id: uuid.UUID) -> list[OutboundEmail]:
    prefix = f"{workflow_id(approval_id)}:"
    async with sessions() as session:
        rows = await session.scalars(
            select(OutboundEmail).where(OutboundEmail.idempotency_key.startswith(prefix))
        )
        return list(rows)


async def test_reminds_escalates_then_expires(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    settings: Settings,
    sessions: SessionFactory,
    applicant: Member,
    staff: Member,
) -> None:
    handle, approval_id = await _request(time_skipping_env, settings, applicant.tenant_id)

    outcome = await handle.result()  # seven days pass without a decision

    assert outcome.status is ApprovalStatus.EXPIRED
    row = await _row(sessions, approval_id)
    assert row.status is ApprovalStatus.EXPIRED
    assert [event["event"] for event in row.history] == [
        "requested",
        "reminded",
        "escalated",
        "expired",
    ]
    assert row.escalated_at is not None
    assert abs(row.escalated_at - row.requested_at - timedelta(hours=48)) < timedelta(seconds=5)
    assert row.due_at == row.requested_at + timedelta(days=7)
    assert row.decided_at is not None
    assert abs(row.decided_at - row.due_at) < timedelta(seconds=5)
    mails = await _notices(sessions, approval_id)
    to_staff = sorted(
        m.idempotency_key.rsplit(":", 2)[1] for m in mails if m.recipient == staff.email
    )
    assert to_staff == ["escalation", "reminder"]
    assert all(m.sent_at is not None and "Example Trading" in m.subject for m in mails)
    assert applicant.email not in {m.recipient for m in mails}


async def test_decision_after_the_reminder_stops_the_clock(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    settings: Settings,
    sessions: SessionFactory,
    applicant: Member,
    staff: Member,
) -> None:
    handle, approval_id = await _request(time_skipping_env, settings, applicant.tenant_id)
    await time_skipping_env.sleep(timedelta(hours=30))
    assert [e.event for e in (await handle.query(ApprovalWorkflow.record)).history] == [
        "requested",
        "reminded",
    ]

    record = await handle.execute_update(
        ApprovalWorkflow.decide, _decision(Verdict.REQUEST_CHANGES, staff, "Add a VAT number.")
    )

    assert record.status is ApprovalStatus.CHANGES_REQUESTED
    outcome = await handle.result()
    assert outcome.status is ApprovalStatus.CHANGES_REQUESTED
    assert outcome.reason == "Add a VAT number."
    assert outcome.decided_by == staff.user_id
    row = await _row(sessions, approval_id)
    assert row.escalated_at is None
    assert row.reason == "Add a VAT number."
    assert row.decided_by == staff.user_id
    last = row.history[-1]
    assert (last["event"], last["role"], last["by"]) == (
        "changes_requested",
        "super_admin",
        str(staff.user_id),
    )
    keys = [m.idempotency_key for m in await _notices(sessions, approval_id)]
    assert not [k for k in keys if ":escalation:" in k]


async def test_refused_decisions_leave_no_trace(
    time_skipping_env: WorkflowEnvironment,
    ts_worker: Worker,
    settings: Settings,
    sessions: SessionFactory,
    applicant: Member,
    staff: Member,
) -> None:
    handle, approval_id = await _request(time_skipping_env, settings, applicant.tenant_id)

    with pytest.raises(WorkflowUpdateFailedError) as wrong_role:
        await handle.execute_update(ApprovalWorkflow.decide, _decision(Verdict.APPROVE, applicant))
    assert isinstance(wrong_role.value.cause, ApplicationError)
    assert wrong_role.value.cause.type == NOT_A_DECIDER

    with pytest.raises(WorkflowUpdateFailedError):  # no reason: refused when decoded
        await handle.execute_update(
            "decide",
            {"decision": "reject", "decided_by": str(staff.user_id), "decider_role": "super_admin"},
        )

    first = await handle.start_update(
        ApprovalWorkflow.decide,
        _decision(Verdict.APPROVE, staff),
        wait_for_stage=WorkflowUpdateStage.ACCEPTED,
    )
    with pytest.raises(WorkflowUpdateFailedError) as second:
        await handle.execute_update(
            ApprovalWorkflow.decide, _decision(Verdict.REJECT, staff, "Changed my mind.")
        )
    assert isinstance(second.value.cause, ApplicationError)
    assert second.value.cause.type == ALREADY_DECIDED
    assert (await first.result()).status is ApprovalStatus.APPROVED

    assert (await handle.result()).status is ApprovalStatus.APPROVED
    history = await handle.fetch_history()
    accepted = [
        e
        for e in history.events
        if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    assert len(accepted) == 1  # rejected updates never entered the history
    row = await _row(sessions, approval_id)
    assert [e["event"] for e in row.history] == ["requested", "approved"]
    assert row.reason is None
