"""The onboarding workflow: crashes during provisioning on the dev server, and its deadlines
(approval expiry, abandonment) on the time-skipping server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from temporalio import activity
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.onboarding import OnboardingActivities
from api.routers.onboarding import onboarding_input, start_onboarding
from connectors.mail import mailer_from_settings
from core.db import SessionFactory
from core.settings import Settings
from models.approval import Approval, ApprovalStatus, Decision, Verdict
from models.audit import AuditEntry
from models.email import OutboundEmail
from models.onboarding import (
    OnboardingState,
    OnboardingStatus,
    OnboardingStep,
    StepData,
    Submission,
    TenantTransition,
    WelcomeEmail,
)
from models.tenant import Tenant, TenantStatus
from models.user import Role
from tests.conftest import SmtpSink
from tests.factories import Member, member
from workers import registry
from workflows import approval
from workflows.onboarding import (
    INVALID_STEP_DATA,
    ONBOARDING_CLOSED,
    OnboardingWorkflow,
    workflow_id,
)

Onboarding = WorkflowHandle[OnboardingWorkflow, OnboardingStatus]

WIZARD = {
    OnboardingStep.COMPANY: {
        "legal_name": "Crashproof Ltd",
        "industry": "Logistics",
        "country": "NL",
    },
    OnboardingStep.GOALS: {
        "primary_goal": "brand_awareness",
        "monthly_budget": 900,
        "currency": "EUR",
    },
    OnboardingStep.PRESENCE: {},
    OnboardingStep.PLAN: {"plan_id": "starter"},
}


async def _submitted(client: Client, settings: Settings, admin: Member) -> Onboarding:
    await start_onboarding(client, settings, admin.tenant_id)
    handle = client.get_workflow_handle_for(OnboardingWorkflow.run, workflow_id(admin.tenant_id))
    for step, data in WIZARD.items():
        await handle.execute_update(OnboardingWorkflow.save_step, StepData(step=step, data=data))
    await handle.execute_update(OnboardingWorkflow.submit, Submission(submitted_by=admin.user_id))
    return handle


async def _approval_row(
    sessions: SessionFactory, tenant_id: uuid.UUID, status: ApprovalStatus
) -> Approval:
    for _ in range(200):
        async with sessions() as session:
            row = await session.scalar(
                select(Approval).where(Approval.tenant_id == tenant_id, Approval.status == status)
            )
        if row is not None:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {status} approval for tenant {tenant_id}")


# Long on both backends: PostgreSQL by default (SQLite when it does not answer), both with
# --slow.
pytestmark = pytest.mark.one_database


async def _state_until(handle: Onboarding, status: OnboardingStatus) -> OnboardingState:
    for _ in range(200):
        state = await handle.query(OnboardingWorkflow.state)
        if state.status is status:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"onboarding never reached {status}")


async def _tenant(sessions: SessionFactory, tenant_id: uuid.UUID) -> Tenant:
    async with sessions() as session:
        tenant = await session.get(Tenant, tenant_id)
    assert tenant is not None
    return tenant


async def _audit_actions(sessions: SessionFactory, tenant_id: uuid.UUID) -> list[str]:
    async with sessions() as session:
        return list(
            await session.scalars(
                select(AuditEntry.action)
                .where(AuditEntry.tenant_id == tenant_id)
                .order_by(AuditEntry.seq)
            )
        )


# --- Crashes during provisioning (dev server) --------------------------------------------


def _crashing_worker(
    client: Client,
    sessions: SessionFactory,
    settings: Settings,
    crashed: asyncio.Event,
    crash_in: str,
) -> Worker:
    """A worker whose ``crash_in`` activity does its real work and then dies before telling
    the server: the activity's effect exists, its completion does not."""
    real = OnboardingActivities(sessions, mailer_from_settings(settings, sessions), settings)

    async def die() -> None:
        crashed.set()
        await asyncio.Event().wait()  # until the worker is stopped

    @activity.defn(name="transition_tenant")
    async def transition_then_die(change: TenantTransition) -> None:
        await real.transition_tenant(change)
        if change.action == "tenant.activated":
            await die()

    @activity.defn(name="send_welcome_email")
    async def welcome_then_die(welcome: WelcomeEmail) -> int:
        sent = await real.send_welcome_email(welcome)
        await die()
        return sent

    replacements: dict[str, Callable[..., Any]] = {
        "transition_tenant": transition_then_die,
        "send_welcome_email": welcome_then_die,
    }
    activities = [
        a for a in registry.activities(sessions, settings) if getattr(a, "__name__", "") != crash_in
    ]
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=registry.WORKFLOWS,
        activities=[*activities, replacements[crash_in]],
    )


async def test_worker_crashes_during_provisioning_duplicate_nothing(
    temporal_env: WorkflowEnvironment,
    sessions: SessionFactory,
    smtp_settings: Settings,
    smtp_sink: SmtpSink,
) -> None:
    client = temporal_env.client
    admin = await member(sessions, smtp_settings, status=TenantStatus.ONBOARDING)
    decider = await member(sessions, smtp_settings, Role.SUPER_ADMIN, mfa_enabled=True)

    activation_crash, welcome_crash = asyncio.Event(), asyncio.Event()
    first = _crashing_worker(client, sessions, smtp_settings, activation_crash, "transition_tenant")
    async with first:
        handle = await _submitted(client, smtp_settings, admin)
        row = await _approval_row(sessions, admin.tenant_id, ApprovalStatus.PENDING)
        await client.get_workflow_handle(row.workflow_id).execute_update(
            approval.ApprovalWorkflow.decide,
            Decision(
                decision=Verdict.APPROVE, decided_by=decider.user_id, decider_role=Role.SUPER_ADMIN
            ),
        )
        await asyncio.wait_for(activation_crash.wait(), timeout=10)
    assert (await _tenant(sessions, admin.tenant_id)).status is TenantStatus.ACTIVE

    second = _crashing_worker(client, sessions, smtp_settings, welcome_crash, "send_welcome_email")
    async with second:
        await asyncio.wait_for(welcome_crash.wait(), timeout=15)
    assert len(smtp_sink.to(admin.email)) == 1

    async with registry_worker(client, sessions, smtp_settings):
        assert await asyncio.wait_for(handle.result(), timeout=15) is OnboardingStatus.APPROVED

    assert len(smtp_sink.to(admin.email)) == 1
    async with sessions() as session:
        welcomes = list(
            await session.scalars(
                select(OutboundEmail).where(OutboundEmail.recipient == admin.email)
            )
        )
    assert len(welcomes) == 1
    actions = await _audit_actions(sessions, admin.tenant_id)
    assert actions.count("tenant.activated") == 1
    assert actions.count("onboarding.submitted") == 1


def registry_worker(client: Client, sessions: SessionFactory, settings: Settings) -> Worker:
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=registry.WORKFLOWS,
        activities=registry.activities(sessions, settings),
    )


# --- Deadlines (time-skipping server) ----------------------------------------------------


@pytest.fixture
async def ts_client(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> Any:
    async with registry_worker(time_skipping_env.client, sessions, settings):
        yield time_skipping_env.client


async def test_an_expired_approval_reopens_the_wizard(
    ts_client: Client,
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
) -> None:
    admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
    decider = await member(sessions, settings, Role.SUPER_ADMIN, mfa_enabled=True)
    handle = await _submitted(ts_client, settings, admin)
    first = await _approval_row(sessions, admin.tenant_id, ApprovalStatus.PENDING)

    await time_skipping_env.sleep(timedelta(days=8))

    state = await _state_until(handle, OnboardingStatus.EXPIRED)
    assert state.editable
    assert state.approval is not None
    assert state.approval.status is ApprovalStatus.EXPIRED
    assert (await _tenant(sessions, admin.tenant_id)).status is TenantStatus.ONBOARDING
    async with sessions() as session:
        keys = set(
            await session.scalars(
                select(OutboundEmail.idempotency_key).where(
                    OutboundEmail.recipient == decider.email
                )
            )
        )
    assert {
        f"{first.workflow_id}:reminder:{decider.user_id}",
        f"{first.workflow_id}:escalation:{decider.user_id}",
    } <= keys

    await handle.execute_update(OnboardingWorkflow.submit, Submission(submitted_by=admin.user_id))
    second = await _approval_row(sessions, admin.tenant_id, ApprovalStatus.PENDING)
    assert second.id != first.id
    assert (await _audit_actions(sessions, admin.tenant_id)).count(
        "onboarding.approval_expired"
    ) == 1

    # Finish both runs: a workflow left waiting would hold the shared server's clock.
    await ts_client.get_workflow_handle(second.workflow_id).execute_update(
        approval.ApprovalWorkflow.decide,
        Decision(
            decision=Verdict.REJECT,
            reason="Incomplete.",
            decided_by=decider.user_id,
            decider_role=Role.SUPER_ADMIN,
        ),
    )
    await _state_until(handle, OnboardingStatus.REJECTED)


async def test_an_untouched_application_is_abandoned(
    ts_client: Client,
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
) -> None:
    admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
    await start_onboarding(ts_client, settings, admin.tenant_id)
    handle = ts_client.get_workflow_handle_for(OnboardingWorkflow.run, workflow_id(admin.tenant_id))

    await time_skipping_env.sleep(timedelta(days=31))
    assert await handle.result() is OnboardingStatus.ABANDONED

    assert (await _tenant(sessions, admin.tenant_id)).status is TenantStatus.CANCELLED
    assert await _audit_actions(sessions, admin.tenant_id) == ["onboarding.abandoned"]


async def test_invalid_steps_never_enter_the_history(
    ts_client: Client, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
    await start_onboarding(ts_client, settings, admin.tenant_id)
    handle = ts_client.get_workflow_handle_for(OnboardingWorkflow.run, workflow_id(admin.tenant_id))

    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(
            OnboardingWorkflow.save_step,
            StepData(step=OnboardingStep.PLAN, data={"plan_id": "free"}),
        )
    assert isinstance(refused.value.cause, ApplicationError)
    assert refused.value.cause.type == INVALID_STEP_DATA
    assert refused.value.cause.details[0][0]["loc"] == ["plan_id"]

    history = await handle.fetch_history()
    assert not [
        e
        for e in history.events
        if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]
    assert (await handle.query(OnboardingWorkflow.state)).steps == {}
    assert onboarding_input(settings, admin.tenant_id).abandon_after == timedelta(days=30)
    await handle.terminate("test finished")


async def test_a_long_edited_wizard_continues_as_new(
    ts_client: Client, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
    start = onboarding_input(settings, admin.tenant_id).model_copy(update={"history_limit": 40})
    handle = await ts_client.start_workflow(
        OnboardingWorkflow.run,
        start,
        id=workflow_id(admin.tenant_id),
        task_queue=settings.temporal_task_queue,
    )
    first_run = handle.result_run_id
    plans = ["starter", "professional", "business", "enterprise"] * 5
    for plan in plans:
        await handle.execute_update(
            OnboardingWorkflow.save_step,
            StepData(step=OnboardingStep.PLAN, data={"plan_id": plan}),
        )

    latest = ts_client.get_workflow_handle_for(OnboardingWorkflow.run, handle.id)
    assert (await latest.describe()).run_id != first_run
    state = await latest.query(OnboardingWorkflow.state)
    assert state.steps == {OnboardingStep.PLAN: {"plan_id": plans[-1], "interval": "month"}}
    assert state.status is OnboardingStatus.IN_PROGRESS
    await latest.terminate("test finished")


async def test_a_submission_while_abandoning_is_refused(
    temporal_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    """Abandonment is final from its first step: a submit arriving while the tenant is being
    cancelled is refused, not left pending for a cancelled tenant."""
    settings = settings.model_copy(update={"onboarding_abandon_after": timedelta(seconds=2)})
    admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
    real = OnboardingActivities(sessions, mailer_from_settings(settings, sessions), settings)
    cancelling, release = asyncio.Event(), asyncio.Event()

    @activity.defn(name="transition_tenant")
    async def slow_cancellation(change: TenantTransition) -> None:
        if change.action == "onboarding.abandoned":
            cancelling.set()
            await release.wait()
        await real.transition_tenant(change)

    activities = [
        a
        for a in registry.activities(sessions, settings)
        if getattr(a, "__name__", "") != "transition_tenant"
    ]
    client = temporal_env.client
    async with Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=registry.WORKFLOWS,
        activities=[*activities, slow_cancellation],
    ):
        await start_onboarding(client, settings, admin.tenant_id)
        handle = client.get_workflow_handle_for(
            OnboardingWorkflow.run, workflow_id(admin.tenant_id)
        )
        for step, data in WIZARD.items():
            await handle.execute_update(
                OnboardingWorkflow.save_step, StepData(step=step, data=data)
            )
        await asyncio.wait_for(cancelling.wait(), timeout=30)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                OnboardingWorkflow.submit, Submission(submitted_by=admin.user_id)
            )
        assert isinstance(refused.value.cause, ApplicationError)
        assert refused.value.cause.type == ONBOARDING_CLOSED
        release.set()
        assert await handle.result() is OnboardingStatus.ABANDONED
    assert (await _tenant(sessions, admin.tenant_id)).status is TenantStatus.CANCELLED


async def test_a_cancelled_onboarding_withdraws_its_pending_approval(
    ts_client: Client, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
    handle = await _submitted(ts_client, settings, admin)
    pending = await _approval_row(sessions, admin.tenant_id, ApprovalStatus.PENDING)

    await handle.cancel()

    withdrawn = await _approval_row(sessions, admin.tenant_id, ApprovalStatus.WITHDRAWN)
    assert withdrawn.id == pending.id
    assert [event["event"] for event in withdrawn.history][-1] == "withdrawn"
