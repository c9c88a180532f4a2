"""The recorder: drives every workflow type to its interesting states and saves each history.

Run with ``make histories`` (``BIZ_RECORD_HISTORIES=1``); without it every scenario is skipped.
The scenarios run on the time-skipping server (days of timers pass in milliseconds) with the
same peers, helpers and activity stand-ins as the workflow tests, and the payloads are encrypted
with the committed test key (see :mod:`tests.histories`). Each saved history is replayed at
once, so a recording that would not replay is never written silently.

Recording adds NEW states only: a history already committed is kept as it is (it stands for
the workflows running in production) and is replayed instead of overwritten. If it no longer
replays, the change breaks running workflows: put it behind ``workflow.patched``; never delete a
history to make a recording pass. A history is dropped (delete the file, then record) only once
no run of that shape can exist any more, e.g. after a patch was deprecated and its runs ended.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from activities.billing import count_seats_again, usage_schedule_id
from activities.billing import workflow_id as billing_workflow_id
from api.app import create_app
from api.routers.onboarding import onboarding_input, start_onboarding
from api.routers.password_reset import start_password_link
from connectors.billing import parse_event
from connectors.crm.hubspot import API_BASE as HUBSPOT_API
from connectors.secrets import connection_path, secret_store_from_settings, staged_path
from connectors.storage import LocalStorage
from core.db import SessionFactory, transaction
from core.identity import membership_of
from core.settings import Settings
from models.agents import AgentRunConfig, AgentRunStart
from models.approval import ApprovalStatus, Decision, Verdict
from models.audit import AuditEntry
from models.billing import (
    BillingInput,
    BillingPolicy,
    BillingStatus,
    OperatorRequest,
    PlanChange,
    PlanPreview,
    ProvisionRequest,
    Subscription,
    UsageMetric,
    UsageRecord,
)
from models.billing_reconciliation import (
    DriftKind,
    ReconciliationInput,
    ReconciliationPolicy,
    ReconciliationReport,
)
from models.connection import (
    ConnectionAction,
    ConnectionCommand,
    ConnectionOutcome,
    WriteCommand,
    WrittenRecord,
)
from models.content import (
    ContentStatus,
    EditCommand,
    Reschedule,
    UnpublishMode,
    UnpublishRequest,
)
from models.content import Submission as ContentSubmission
from models.email import OutboundEmail
from models.onboarding import (
    DocumentCheck,
    DocumentUpload,
    OnboardingStatus,
    OnboardingStep,
    PlanId,
    StepData,
    Submission,
)
from models.password_reset import LinkPurpose, PasswordResetInput, ResetStatus
from models.sync import SyncDirection, SyncRunState
from models.tasks import (
    AcceptCommand,
    BusinessCalendar,
    CommentCommand,
    Priority,
    PriorityChange,
    Project,
    ReleaseCommand,
    SlaTarget,
    StatusChange,
    TaskFields,
    TaskPolicy,
    TaskStatus,
)
from models.tenant import TenantStatus
from models.user import Membership, Role, User
from tests.api.test_connections import _own_password
from tests.factories import Member, cms_connection, hubspot_connection, member
from tests.histories import HISTORIES, load, replay_converter
from tests.peers.chat_model import ChatModelPeer
from tests.peers.hubspot import PRIVATE_APP_TOKEN, HubSpotPeer
from tests.peers.stripe_front import Fault, StripeFront
from tests.peers.woocommerce import Fault as ShopFault
from tests.peers.woocommerce import WooCommercePeer
from tests.peers.wordpress import WordPressSite
from tests.peers.zoho import ZohoPeer
from tests.peers_stripe import (
    LocalStripe,
    MeterRecorder,
    card_holder,
    confirm_card_setup,
    credit_note,
    dispute,
    paid_charge,
    refund,
    stripe_event,
    unpaid_invoice,
)
from tests.polling import eventually
from tests.workflows.test_audit_verification import _admin_with_history, _verify
from tests.workflows.test_billing import (
    _post,
    _projection,
    _provision,
    _reminders,
    _status,
    _subjects,
)
from tests.workflows.test_billing import billing_worker as worker_without_schedules
from tests.workflows.test_billing_reconciliation import (
    _active_tenant,
    own_database,
)
from tests.workflows.test_onboarding import WIZARD, _approval_row, _state_until, _submitted
from tests.workflows.test_password_reset import _confirmation, _emailed_token, _start
from tests.workflows.test_publish import (
    FakeCms,
    fake_cms_worker,
    item_status,
    start_item,
)
from tests.workflows.test_sync import T0 as SYNC_T0
from tests.workflows.test_sync import (
    _hubspot_edit,
    _zoho_edit,
    add_profile,
    connect_crms,
    connect_pair,
    with_zoho,
)
from tests.workflows.test_task import _project as task_project
from tests.workflows.test_task import _start as start_task
from tests.workflows.test_task import _state as task_state
from workers import registry
from workers.main import build_worker
from workflows.approval import ApprovalWorkflow
from workflows.audit_verification import workflow_id as audit_workflow_id
from workflows.billing import BillingWorkflow, UsageReportWorkflow
from workflows.billing_reconciliation import BillingReconciliationWorkflow
from workflows.connection import ConnectionWorkflow, ConnectionWriteWorkflow, write_workflow_id
from workflows.connection import workflow_id as connection_workflow_id
from workflows.onboarding import OnboardingWorkflow, workflow_id
from workflows.password_reset import PasswordResetWorkflow
from workflows.publish import PublishWorkflow
from workflows.sync import SyncWorkflow
from workflows.task import TaskWorkflow

pytest_plugins = [
    "tests.peers_stripe",
    "tests.peers.stripe_front",
    "tests.peers.wordpress",
    "tests.peers.hubspot",
    "tests.peers.woocommerce",
    "tests.peers.chat_model",
    "tests.peers.zoho",
]

RECORDING = os.environ.get("BIZ_RECORD_HISTORIES") == "1"
pytestmark = pytest.mark.skipif(
    not RECORDING, reason="records histories only with BIZ_RECORD_HISTORIES=1 (make histories)"
)


async def record(client: Client, name: str, workflow: str, run_id: str | None = None) -> None:
    """Save the run's history as ``<name>.json`` (unless committed already) and prove at once
    that the file replays on the current code."""
    path = HISTORIES / f"{name}.json"
    if not path.exists():
        history = await client.get_workflow_handle(workflow, run_id=run_id).fetch_history()
        path.write_text(history.to_json() + "\n")
    replayer = Replayer(workflows=registry.WORKFLOWS, data_converter=replay_converter())
    result = await replayer.replay_workflow(load(path), raise_on_replay_failure=False)
    if result.replay_failure is not None:
        pytest.fail(
            f"{path.name} does not replay on this code: the change breaks running workflows. "
            f"Guard it with workflow.patched; do not re-record it. {result.replay_failure!r}"
        )


async def finish(client: Client, workflow: str) -> None:
    """Terminate a run left waiting: its timers would move the shared server's clock."""
    handle = client.get_workflow_handle(workflow)
    if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
        await handle.terminate("history recorded")


def _decision(verdict: Verdict, by: Member, reason: str | None = None) -> Decision:
    return Decision(decision=verdict, reason=reason, decided_by=by.user_id, decider_role=by.role)


async def _approval_events(client: Client, approval_workflow: str, count: int) -> None:
    """Wait until the approval's own history shows ``count`` events (requested, reminded...)."""
    handle = client.get_workflow_handle_for(ApprovalWorkflow.run, approval_workflow)
    await eventually(
        lambda: handle.query(ApprovalWorkflow.record), lambda found: len(found.history) == count
    )


# --- Fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def ts_worker(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> AsyncIterator[Worker]:
    """The production worker (no payment provider: billing is off) on the time-skipping server."""
    async with build_worker(time_skipping_env.client, sessions, settings) as worker:
        yield worker


@pytest.fixture
def billing_settings(settings: Settings, localstripe: LocalStripe) -> Settings:
    return localstripe.settings(settings).model_copy(update={"billing_trial_days": 0})


@pytest.fixture
async def billing_worker(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, billing_settings: Settings
) -> AsyncIterator[Worker]:
    """As in the billing tests: Stripe is localstripe."""
    async with worker_without_schedules(
        time_skipping_env.client, sessions, billing_settings
    ) as worker:
        yield worker


@pytest.fixture
async def ts_api(
    billing_settings: Settings,
    time_skipping_env: WorkflowEnvironment,
    engine: AsyncEngine,
    billing_worker: Worker,
) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP API in process on the time-skipping server (webhooks, audit verification)."""
    app = create_app(billing_settings, time_skipping_env.client, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


# --- Onboarding and approval ---------------------------------------------------------------


@pytest.mark.usefixtures("ts_worker")
async def test_onboarding_mid_wizard(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    client = time_skipping_env.client
    admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
    await start_onboarding(client, settings, admin.tenant_id)
    handle = client.get_workflow_handle_for(OnboardingWorkflow.run, workflow_id(admin.tenant_id))
    for step in (OnboardingStep.COMPANY, OnboardingStep.GOALS):
        await handle.execute_update(
            OnboardingWorkflow.save_step, StepData(step=step, data=WIZARD[step])
        )
    document_id = uuid.uuid4()
    await handle.execute_update(
        OnboardingWorkflow.expect_document,
        DocumentUpload(
            document_id=document_id,
            storage_key=f"onboarding/{admin.tenant_id}/{document_id}",
            filename="registration.pdf",
            content_type="application/pdf",
            size=2048,
        ),
    )
    await handle.execute_update(
        OnboardingWorkflow.settle_document,
        DocumentCheck(document_id=document_id, accepted=True, size=2048),
    )
    await record(client, "onboarding-mid-wizard", handle.id)
    await finish(client, handle.id)


@pytest.mark.usefixtures("ts_worker")
async def test_onboarding_approved(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    client = time_skipping_env.client
    admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
    decider = await member(sessions, settings, Role.SUPER_ADMIN, mfa_enabled=True)
    handle = await _submitted(client, settings, admin)
    row = await _approval_row(sessions, admin.tenant_id, ApprovalStatus.PENDING)
    await record(client, "onboarding-pending-approval", handle.id)
    await record(client, "approval-pending", row.workflow_id)

    await client.get_workflow_handle(row.workflow_id).execute_update(
        ApprovalWorkflow.decide, _decision(Verdict.APPROVE, decider)
    )
    assert await handle.result() is OnboardingStatus.APPROVED
    await record(client, "approval-approved", row.workflow_id)
    await record(client, "onboarding-approved", handle.id)


@pytest.mark.usefixtures("ts_worker")
async def test_approval_deadlines_and_reopened_wizard(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    """Reminded, escalated, expired; the wizard reopens; changes requested; then rejected."""
    client = time_skipping_env.client
    admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
    decider = await member(sessions, settings, Role.SUPER_ADMIN, mfa_enabled=True)
    handle = await _submitted(client, settings, admin)
    first = await _approval_row(sessions, admin.tenant_id, ApprovalStatus.PENDING)

    await time_skipping_env.sleep(timedelta(hours=30))
    await _approval_events(client, first.workflow_id, 2)
    await record(client, "approval-reminded", first.workflow_id)
    await time_skipping_env.sleep(timedelta(hours=20))
    await _approval_events(client, first.workflow_id, 3)
    await record(client, "approval-escalated", first.workflow_id)
    await time_skipping_env.sleep(timedelta(days=6))
    await _state_until(handle, OnboardingStatus.EXPIRED)
    await record(client, "approval-expired", first.workflow_id)
    await record(client, "onboarding-approval-expired", handle.id)

    await handle.execute_update(OnboardingWorkflow.submit, Submission(submitted_by=admin.user_id))
    second = await _approval_row(sessions, admin.tenant_id, ApprovalStatus.PENDING)
    await time_skipping_env.sleep(timedelta(hours=30))
    await _approval_events(client, second.workflow_id, 2)
    await client.get_workflow_handle(second.workflow_id).execute_update(
        ApprovalWorkflow.decide,
        _decision(Verdict.REQUEST_CHANGES, decider, "Add the VAT number."),
    )
    await _state_until(handle, OnboardingStatus.CHANGES_REQUESTED)
    await record(client, "approval-changes-requested-after-reminder", second.workflow_id)
    await record(client, "onboarding-changes-requested", handle.id)

    await handle.execute_update(
        OnboardingWorkflow.save_step,
        StepData(step=OnboardingStep.PLAN, data={"plan_id": "professional"}),
    )
    await handle.execute_update(OnboardingWorkflow.submit, Submission(submitted_by=admin.user_id))
    third = await _approval_row(sessions, admin.tenant_id, ApprovalStatus.PENDING)
    await client.get_workflow_handle(third.workflow_id).execute_update(
        ApprovalWorkflow.decide, _decision(Verdict.REJECT, decider, "Not a fit for the platform.")
    )
    assert await handle.result() is OnboardingStatus.REJECTED
    await record(client, "approval-rejected", third.workflow_id)
    await record(client, "onboarding-rejected", handle.id)


@pytest.mark.usefixtures("ts_worker")
async def test_onboarding_abandoned(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    client = time_skipping_env.client
    admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
    await start_onboarding(client, settings, admin.tenant_id)
    handle = client.get_workflow_handle_for(OnboardingWorkflow.run, workflow_id(admin.tenant_id))
    await handle.execute_update(
        OnboardingWorkflow.save_step,
        StepData(step=OnboardingStep.COMPANY, data=WIZARD[OnboardingStep.COMPANY]),
    )
    await time_skipping_env.sleep(timedelta(days=31))
    assert await handle.result() is OnboardingStatus.ABANDONED
    # onboarding-abandoned.json, recorded before this final status existed, stays committed:
    # it is the old branch of the "onboarding-abandoned-status" patch.
    await record(client, "onboarding-abandoned-final-status", handle.id)


@pytest.mark.usefixtures("ts_worker")
async def test_onboarding_cancelled_while_pending_approval(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    """A cancelled onboarding cancels its approval, which leaves the queue as withdrawn."""
    client = time_skipping_env.client
    admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
    handle = await _submitted(client, settings, admin)
    row = await _approval_row(sessions, admin.tenant_id, ApprovalStatus.PENDING)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    await _approval_row(sessions, admin.tenant_id, ApprovalStatus.WITHDRAWN)
    approval_run = client.get_workflow_handle(row.workflow_id)
    await eventually(
        approval_run.describe, lambda found: found.status == WorkflowExecutionStatus.CANCELED
    )
    await record(client, "onboarding-cancelled-pending-approval", handle.id)
    await record(client, "approval-withdrawn", row.workflow_id)


@pytest.mark.usefixtures("ts_worker")
async def test_onboarding_continued_as_new(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    client = time_skipping_env.client
    admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
    start = onboarding_input(settings, admin.tenant_id).model_copy(update={"history_limit": 40})
    handle = await client.start_workflow(
        OnboardingWorkflow.run,
        start,
        id=workflow_id(admin.tenant_id),
        task_queue=settings.temporal_task_queue,
    )
    first_run = handle.result_run_id
    for plan in ["starter", "professional", "business", "enterprise"] * 5:
        await handle.execute_update(
            OnboardingWorkflow.save_step, StepData(step=OnboardingStep.PLAN, data={"plan_id": plan})
        )
    latest = await client.get_workflow_handle(handle.id).describe()
    assert latest.run_id != first_run
    await record(client, "onboarding-continued-as-new-first-run", handle.id, first_run)
    await record(client, "onboarding-continued-as-new-next-run", handle.id, latest.run_id)
    await finish(client, handle.id)


# --- Billing -------------------------------------------------------------------------------


@pytest.mark.usefixtures("billing_worker")
async def test_billing_trial_then_cancelled(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
) -> None:
    client = time_skipping_env.client
    admin = await member(sessions, billing_settings)
    with_trial = billing_settings.model_copy(update={"billing_trial_days": 14})
    handle = await _provision(client, with_trial, admin.tenant_id)
    view = await _status(handle, sessions, admin.tenant_id, BillingStatus.TRIALING)
    assert view.trial_end is not None
    await record(client, "billing-trialing", handle.id)

    subscription_id = await _subscription_id(sessions, admin.tenant_id)
    async with localstripe.sdk() as sdk:
        subscription = await sdk.v1.subscriptions.retrieve_async(subscription_id)
        await _post(ts_api, "customer.subscription.trial_will_end", subscription.to_dict())
        ended = await sdk.v1.subscriptions.cancel_async(subscription_id)
    await _post(ts_api, "customer.subscription.deleted", ended.to_dict())
    await _status(handle, sessions, admin.tenant_id, BillingStatus.CANCELLED)
    await record(client, "billing-cancelled", handle.id)

    await time_skipping_env.sleep(timedelta(days=30, hours=1))
    assert await handle.result() is BillingStatus.CANCELLED
    await record(client, "billing-retention-ended", handle.id)


async def _subscription_id(sessions: SessionFactory, tenant_id: uuid.UUID) -> str:
    row = await _projection(sessions, tenant_id)
    assert row is not None
    assert row.stripe_subscription_id is not None
    return row.stripe_subscription_id


@pytest.mark.usefixtures("billing_worker")
async def test_billing_dunning_suspension_and_card(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
) -> None:
    """Active, past due (with its reminders), suspended, a card added, active again; then a plan
    change and a scheduled cancellation through the updates."""
    client = time_skipping_env.client
    admin = await member(sessions, billing_settings)
    async with localstripe.sdk() as sdk:
        customer = await card_holder(sdk, admin.tenant_id, admin.email)
    handle = await _provision(client, billing_settings, admin.tenant_id)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    await record(client, "billing-active", handle.id)

    subscription_id = await _subscription_id(sessions, admin.tenant_id)
    async with localstripe.sdk() as sdk:
        invoice_id = await unpaid_invoice(sdk, customer, subscription_id)
        invoice = (await sdk.v1.invoices.retrieve_async(invoice_id)).to_dict()
    await _post(ts_api, "invoice.payment_failed", invoice)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.PAST_DUE)
    await time_skipping_env.sleep(timedelta(days=3, hours=1))
    await _reminders(sessions, admin, 2)
    await record(client, "billing-past-due", handle.id)

    await time_skipping_env.sleep(timedelta(days=4))
    await _status(handle, sessions, admin.tenant_id, BillingStatus.SUSPENDED)
    await _reminders(sessions, admin, 3)
    await record(client, "billing-suspended", handle.id)

    response = await ts_api.post("/api/v1/billing/payment-method", headers=admin.headers)
    assert response.status_code == 200, response.text
    collection = response.json()
    async with localstripe.sdk() as sdk:
        confirmed = await confirm_card_setup(
            sdk, collection["setup_intent_id"], collection["client_secret"]
        )
    await _post(ts_api, "setup_intent.succeeded", confirmed)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    await record(client, "billing-reactivated-by-card", handle.id)

    changed = await ts_api.put(
        "/api/v1/billing/subscription/plan", json={"plan_id": "professional"}, headers=admin.headers
    )
    assert changed.status_code == 200, changed.text
    cancelled = await ts_api.post("/api/v1/billing/subscription/cancel", headers=admin.headers)
    assert cancelled.status_code == 200, cancelled.text
    await record(client, "billing-plan-changed-and-cancel-scheduled", handle.id)
    await finish(client, handle.id)


@pytest.mark.usefixtures("billing_worker")
async def test_billing_continued_as_new(
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
) -> None:
    """Renewal events until the run continues as new: both runs are recorded."""
    client = time_skipping_env.client
    admin = await member(sessions, billing_settings)
    async with localstripe.sdk() as sdk:
        await card_holder(sdk, admin.tenant_id, admin.email)
    request = ProvisionRequest(tenant_id=admin.tenant_id, plan=PlanId.STARTER, idempotency_key="a")
    handle = await client.start_workflow(
        BillingWorkflow.run,
        BillingInput(
            tenant_id=admin.tenant_id, policy=BillingPolicy(trial_days=0, history_limit=60)
        ),
        id=billing_workflow_id(admin.tenant_id),
        task_queue=billing_settings.temporal_task_queue,
        start_signal="provision",
        start_signal_args=[request],
    )
    first_run = handle.result_run_id
    await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    async with localstripe.sdk() as sdk:
        subscription = (
            await sdk.v1.subscriptions.retrieve_async(
                await _subscription_id(sessions, admin.tenant_id)
            )
        ).to_dict()
    base, period_end = int(time.time()) + 10, int(subscription["current_period_end"])
    for n in range(15):
        renewal = subscription | {
            "cancel_at_period_end": n % 2 == 0,
            "current_period_end": period_end + n * 86_400,
        }
        event = stripe_event("customer.subscription.updated", renewal, created=base + n)
        await handle.signal(BillingWorkflow.stripe_event, parse_event(event))
    final_end = datetime.fromtimestamp(period_end + 14 * 86_400, UTC)
    latest = await eventually(
        lambda: client.get_workflow_handle(handle.id).describe(),
        lambda found: found.run_id != first_run and found.status == WorkflowExecutionStatus.RUNNING,
    )
    current = client.get_workflow_handle_for(BillingWorkflow.run, handle.id, run_id=latest.run_id)
    await eventually(
        lambda: current.query(BillingWorkflow.view),
        lambda view: view.current_period_end == final_end,
    )
    await record(client, "billing-continued-as-new-first-run", handle.id, first_run)
    await record(client, "billing-continued-as-new-next-run", handle.id, latest.run_id)
    await finish(client, handle.id)


@pytest.fixture
async def meter_worker(
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
    meter_recorder: MeterRecorder,
) -> AsyncIterator[Settings]:
    """The production worker with Stripe's meter events answered by the meter recorder."""
    metered = meter_recorder.settings(settings)
    async with build_worker(time_skipping_env.client, sessions, metered):
        yield metered


async def test_usage_report(
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    meter_worker: Settings,
    meter_recorder: MeterRecorder,
) -> None:
    """What the tenant's usage Schedule starts: usage aggregated and sent to the meters."""
    client = time_skipping_env.client
    admin = await member(sessions, meter_worker)
    async with transaction(sessions) as session:
        session.add(Subscription(tenant_id=admin.tenant_id, stripe_customer_id="cus_replaytest01"))
    metering = [
        fn for fn in registry.activities(sessions, meter_worker) if fn.__name__ == "record_usage"
    ]
    now = datetime.now(UTC)
    for n, (metric, quantity) in enumerate(
        [
            (UsageMetric.WORKFLOW_RUNS, 1),
            (UsageMetric.WORKFLOW_RUNS, 2),
            (UsageMetric.STORAGE_BYTES, 8),
        ]
    ):
        usage = UsageRecord(
            tenant_id=admin.tenant_id,
            metric=metric,
            quantity=quantity,
            occurred_at=now,
            idempotency_key=f"{admin.tenant_id}:use-{n}",
        )
        assert await ActivityEnvironment().run(metering[0], usage) is True
    sent = await client.execute_workflow(
        UsageReportWorkflow.run,
        admin.tenant_id,
        id=usage_schedule_id(admin.tenant_id),
        task_queue=meter_worker.temporal_task_queue,
    )
    assert sent == 2
    assert len(meter_recorder.received) == 2
    await record(client, "usage-report-sent", usage_schedule_id(admin.tenant_id))


async def test_usage_report_measuring_storage(
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    meter_worker: Settings,
    meter_recorder: MeterRecorder,
) -> None:
    """A usage report that measures the tenant's stored bytes first, then sends them."""
    client = time_skipping_env.client
    admin = await member(sessions, meter_worker)
    async with transaction(sessions) as session:
        session.add(Subscription(tenant_id=admin.tenant_id, stripe_customer_id="cus_replaytest02"))
    stored = LocalStorage(meter_worker).path_of(f"tenants/{admin.tenant_id}/onboarding/doc")
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(b"x" * 64)
    workflow_id = f"usage-measured:{admin.tenant_id}"
    sent = await client.execute_workflow(
        UsageReportWorkflow.run,
        admin.tenant_id,
        id=workflow_id,
        task_queue=meter_worker.temporal_task_queue,
    )
    assert sent == 1
    assert len(meter_recorder.received) == 1
    await record(client, "usage-report-measured", workflow_id)


async def test_billing_reconciliation(
    time_skipping_env: WorkflowEnvironment,
    database_url: str,
    tmp_path: Path,
    settings: Settings,
    localstripe: LocalStripe,
    stripe_front: StripeFront,
) -> None:
    """A reconciliation over a database of its own (it reads every subscription): one tenant's
    subscription cancelled in Stripe (repaired), one in step, one whose read Stripe refuses
    (failed). The page is full, so the run continues as new; the next finds no more, reports."""
    client = time_skipping_env.client
    async with own_database(database_url, tmp_path) as (url, sessions):
        billing = stripe_front.settings(settings).model_copy(
            update={"billing_trial_days": 0, "database_url": url}
        )
        async with worker_without_schedules(client, sessions, billing):
            cancelled, _, refused = [
                await _active_tenant(client, sessions, billing, localstripe) for _ in range(3)
            ]
            async with localstripe.sdk() as sdk:
                await sdk.v1.subscriptions.cancel_async(cancelled.subscription)
            stripe_front.fail(
                f"/v1/subscriptions/{refused.subscription}", Fault(400, "invalid_request_error")
            )
            handle = await client.start_workflow(
                BillingReconciliationWorkflow.run,
                ReconciliationInput(
                    policy=ReconciliationPolicy(
                        page_size=3, pages_per_run=1, settle=timedelta(seconds=5)
                    )
                ),
                id="billing-reconciliation-recorded",
                task_queue=billing.temporal_task_queue,
            )
            report = await handle.result()
            assert report == ReconciliationReport(
                checked=2, drifted=1, drift={DriftKind.STATUS: 1}, repaired=1, failed=1
            )
            last = await handle.describe()
            assert last.run_id != handle.first_execution_run_id
            await record(
                client, "billing-reconciliation-repaired", handle.id, handle.first_execution_run_id
            )
            await record(client, "billing-reconciliation-reported", handle.id, last.run_id)


# --- Password reset, audit verification ----------------------------------------------------


@pytest.mark.usefixtures("ts_worker")
async def test_password_reset(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    client = time_skipping_env.client
    someone = await member(sessions, settings)
    handle = await _start(time_skipping_env, settings, someone.user_id)
    token = await _emailed_token(sessions, handle.result_run_id or "")
    await record(client, "password-reset-pending", handle.id)
    await time_skipping_env.sleep(timedelta(minutes=10))
    await handle.execute_update(PasswordResetWorkflow.confirm, _confirmation(token))
    assert await handle.result() == ResetStatus.COMPLETED
    await record(client, "password-reset-done", handle.id)

    other = await member(sessions, settings)
    expiring = await _start(time_skipping_env, settings, other.user_id)
    await _emailed_token(sessions, expiring.result_run_id or "")
    assert await expiring.result() == ResetStatus.EXPIRED
    await record(client, "password-reset-expired", expiring.id)


async def _membership(sessions: SessionFactory, user_id: uuid.UUID) -> Membership:
    async with sessions() as session:
        found = await membership_of(session, user_id)
    assert found is not None
    return found


async def _sent(sessions: SessionFactory, link_id: str) -> None:
    """Wait for the e-mail of one link (the outbox row the mail port writes)."""
    key = f"password-reset:{link_id}"

    async def probe() -> int:
        async with sessions() as session:
            found = await session.scalar(
                select(func.count())
                .select_from(OutboundEmail)
                .where(OutboundEmail.idempotency_key == key)
            )
        return int(found or 0)

    await eventually(probe, lambda count: count == 1)


@pytest.mark.usefixtures("ts_worker")
async def test_password_link_requested_twice(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    """Started as the API starts it (signal-with-start ``renew``); a second request renews the
    link, and the new link is confirmed."""
    client = time_skipping_env.client
    someone = await member(sessions, settings)
    membership = await _membership(sessions, someone.user_id)
    request = PasswordResetInput(
        user_id=someone.user_id, token_ttl=timedelta(minutes=settings.password_reset_minutes)
    )
    started = await start_password_link(client, settings, membership, request)
    run_id = (await started.describe()).run_id
    await _sent(sessions, run_id)
    await record(client, "password-reset-requested", started.id)

    await start_password_link(client, settings, membership, request)
    token = await _emailed_token(sessions, f"{run_id}:1")
    await record(client, "password-reset-renewed", started.id)
    handle = client.get_workflow_handle_for(PasswordResetWorkflow.run, started.id)
    await handle.execute_update(PasswordResetWorkflow.confirm, _confirmation(token))
    assert await handle.result() == ResetStatus.COMPLETED
    await record(client, "password-reset-renewed-done", started.id)


@pytest.mark.usefixtures("ts_worker")
async def test_invitation_link(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    """An invited member's first-password link runs in its own workflow."""
    client = time_skipping_env.client
    invited = await member(sessions, settings)
    request = PasswordResetInput(
        user_id=invited.user_id,
        token_ttl=timedelta(days=settings.invitation_days),
        purpose=LinkPurpose.INVITATION,
    )
    started = await start_password_link(
        client, settings, await _membership(sessions, invited.user_id), request
    )
    await _sent(sessions, (await started.describe()).run_id)
    await record(client, "invitation-pending", started.id)
    await finish(client, started.id)


@pytest.mark.usefixtures("ts_worker")
async def test_password_link_undeliverable(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    """The account was deactivated before its link went out: the e-mail cannot be sent (a
    non-retryable activity failure) and the run ends ``undeliverable``."""
    client = time_skipping_env.client
    someone = await member(sessions, settings)
    membership = await _membership(sessions, someone.user_id)
    async with transaction(sessions) as session:
        user = await session.get(User, someone.user_id)
        assert user is not None
        user.is_active = False
    request = PasswordResetInput(
        user_id=someone.user_id, token_ttl=timedelta(minutes=settings.password_reset_minutes)
    )
    started = await start_password_link(client, settings, membership, request)
    handle = client.get_workflow_handle_for(PasswordResetWorkflow.run, started.id)
    assert await handle.result() == ResetStatus.UNDELIVERABLE
    await record(client, "password-reset-undeliverable", started.id)


async def test_audit_verification(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
) -> None:
    """Started through the API as an operator would; one intact chain, one tampered."""
    client = time_skipping_env.client
    intact = await _admin_with_history(sessions, billing_settings)
    assert (await _verify(ts_api, intact.headers))["report"]["first_broken_seq"] is None
    await record(client, "audit-verification-intact", audit_workflow_id(intact.tenant_id))

    tampered = await _admin_with_history(sessions, billing_settings)
    async with transaction(sessions) as session:
        await session.execute(
            update(AuditEntry)
            .where(AuditEntry.tenant_id == tampered.tenant_id, AuditEntry.seq == 2)
            .values(action="user.logout")
        )
    assert (await _verify(ts_api, tampered.headers))["report"]["first_broken_seq"] == 2
    await record(client, "audit-verification-tampered", audit_workflow_id(tampered.tenant_id))


# --- Connections -------------------------------------------------------------------------


async def test_connection_lifecycle(
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
    wordpress_site: WordPressSite,
) -> None:
    """Connect (refused, then accepted), test and disconnect a real WordPress."""
    allowed = settings.model_copy(update={"connector_allow_private_urls": True})
    client = time_skipping_env.client
    admin = await member(sessions, allowed)
    command = ConnectionCommand(
        action=ConnectionAction.CONNECT,
        connection_id=uuid.uuid4(),
        tenant_id=admin.tenant_id,
        requested_by=admin.user_id,
        connector_id="wordpress",
        auth_kind="application_password",
        label="Main site",
        settings={"site_url": wordpress_site.url},
    )
    store = secret_store_from_settings(allowed)
    staged = staged_path(admin.tenant_id, command.connection_id)
    runs: dict[str, ConnectionCommand] = {
        "connection-refused": command,
        "connection-connected": command,
        "connection-tested": command.model_copy(update={"action": ConnectionAction.TEST}),
        "connection-disconnected": command.model_copy(
            update={"action": ConnectionAction.DISCONNECT}
        ),
    }
    own_password = await _own_password(wordpress_site)  # disconnecting revokes it
    async with build_worker(client, sessions, allowed):
        for name, run in runs.items():
            password = "wrong" if name == "connection-refused" else own_password
            if run.action is ConnectionAction.CONNECT:
                await store.put(
                    staged,
                    {"username": wordpress_site.username, "application_password": password},
                )
            handle = await client.start_workflow(
                ConnectionWorkflow.run,
                run,
                id=connection_workflow_id(run.connection_id),
                task_queue=allowed.temporal_task_queue,
            )
            outcome: ConnectionOutcome = await handle.result()
            assert (outcome.connection is None) == (name == "connection-refused"), outcome
            await record(client, name, handle.id, handle.result_run_id)


async def test_connection_consent_expired(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    """An OAuth connect whose consent never comes back."""
    admin = await member(sessions, settings)
    command = ConnectionCommand(
        action=ConnectionAction.CONNECT,
        connection_id=uuid.uuid4(),
        tenant_id=admin.tenant_id,
        requested_by=admin.user_id,
        connector_id="hubspot",
        auth_kind="oauth2_authorization_code",
        label="CRM",
        consent_timeout=timedelta(minutes=15),
    )
    client = time_skipping_env.client
    async with build_worker(client, sessions, settings):
        handle = await client.start_workflow(
            ConnectionWorkflow.run,
            command,
            id=connection_workflow_id(command.connection_id),
            task_queue=settings.temporal_task_queue,
        )
        await time_skipping_env.sleep(timedelta(minutes=16))
        outcome: ConnectionOutcome = await handle.result()
        assert outcome.consent_expired
        await record(client, "connection-consent-expired", handle.id, handle.result_run_id)


async def test_connection_write(
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
    hubspot_peer: HubSpotPeer,
) -> None:
    """A contact created in a connected HubSpot, then the same write again (found, not made)."""
    peered = settings.model_copy(
        update={
            "connector_allow_private_urls": True,
            "connector_vendor_origins": {HUBSPOT_API: hubspot_peer.url},
        }
    )
    admin = await member(sessions, peered)
    connection = ConnectionCommand(
        action=ConnectionAction.WRITE,
        connection_id=uuid.uuid4(),
        tenant_id=admin.tenant_id,
        requested_by=admin.user_id,
        connector_id="hubspot",
        auth_kind="api_key",
        label="CRM",
    )
    await secret_store_from_settings(peered).put(
        connection_path(admin.tenant_id, connection.connection_id),
        {"api_key": PRIVATE_APP_TOKEN},
    )
    write = WriteCommand(
        write_id=uuid.uuid4(),
        connection=connection,
        resource="contacts",
        record={"email": "grace@example.com", "first_name": "Grace"},
    )
    client = time_skipping_env.client
    async with build_worker(client, sessions, peered):
        for name, created in (
            ("connection-write-created", True),
            ("connection-write-found", False),
        ):
            handle = await client.start_workflow(
                ConnectionWriteWorkflow.run,
                write,
                id=write_workflow_id(write.write_id),
                task_queue=peered.temporal_task_queue,
            )
            written: WrittenRecord = await handle.result()
            assert written.created is created
            await record(client, name, handle.id, handle.result_run_id)


# --- Connector sync ------------------------------------------------------------------------


async def test_connector_sync(
    temporal_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
    hubspot_peer: HubSpotPeer,
    woocommerce_peer: WooCommercePeer,
) -> None:
    """Shop customers to CRM contacts: one run; a run that continues as new; refused
    credentials. On the dev server: the auth failure pauses the profile's Schedule."""
    peered = settings.model_copy(
        update={
            "connector_allow_private_urls": True,
            "connector_vendor_origins": {HUBSPOT_API: hubspot_peer.url},
        }
    )
    admin = await member(sessions, peered)
    for n in range(5):
        woocommerce_peer.add_customer(
            f"shopper{n}@example.com", modified=SYNC_T0 + timedelta(minutes=n)
        )
    client = temporal_env.client
    async with build_worker(client, sessions, peered):
        for name, state, secret in (
            ("sync-completed", {}, None),
            ("sync-continued-as-new", {"page_size": 2, "pages_per_run": 2}, None),
            ("sync-auth-failed", {}, "cs_refused"),
        ):
            shop, crm = await connect_pair(
                sessions, peered, admin.tenant_id, woocommerce_peer.url,
                **({"shop_secret": secret} if secret else {}),
            )  # fmt: skip
            profile_id = await add_profile(sessions, admin.tenant_id, shop, crm)
            handle = await client.start_workflow(
                SyncWorkflow.run,
                SyncRunState(profile_id=profile_id, **state),
                id=f"sync:{profile_id}",
                task_queue=peered.temporal_task_queue,
            )
            await handle.result()
            if name == "sync-continued-as-new":
                await record(client, f"{name}-first-run", handle.id, handle.first_execution_run_id)
                await record(client, f"{name}-next-run", handle.id)
            else:
                await record(client, name, handle.id)
            if name == "sync-completed":  # counted as a workflow run (usage-workflow-runs)
                await record(client, "sync-run-counted", handle.id)


async def test_connector_sync_failed_runs(
    temporal_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
    hubspot_peer: HubSpotPeer,
    woocommerce_peer: WooCommercePeer,
) -> None:
    """Runs whose page the shop refuses for good: the first failed run, and the one that makes
    three in a row and halts the profile (its Schedule paused, its admins told)."""
    peered = settings.model_copy(
        update={
            "connector_allow_private_urls": True,
            "connector_vendor_origins": {HUBSPOT_API: hubspot_peer.url},
        }
    )
    admin = await member(sessions, peered)
    woocommerce_peer.add_customer("shopper@example.com", modified=SYNC_T0)
    client = temporal_env.client
    shop, crm = await connect_pair(sessions, peered, admin.tenant_id, woocommerce_peer.url)
    profile_id = await add_profile(sessions, admin.tenant_id, shop, crm)
    async with build_worker(client, sessions, peered):
        for name in ("sync-failed", None, "sync-halted"):
            woocommerce_peer.fail(
                ShopFault(status=400, body={"code": "rest_invalid_param", "message": "Invalid"})
            )
            handle = await client.start_workflow(
                SyncWorkflow.run,
                SyncRunState(profile_id=profile_id),
                id=f"sync:{profile_id}",
                task_queue=peered.temporal_task_queue,
            )
            with pytest.raises(WorkflowFailureError):
                await handle.result()
            if name is not None:
                await record(client, name, handle.id)


async def test_connector_sync_two_way(
    temporal_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
    hubspot_peer: HubSpotPeer,
    zoho_peer: ZohoPeer,
) -> None:
    """HubSpot contacts and Zoho contacts synced two ways: a first run makes each side's
    contact at the other; then both sides change the HubSpot one and the run that follows
    (the one recorded: both legs, a conflict won by Zoho's later change) settles it."""
    peered = with_zoho(
        settings.model_copy(
            update={
                "connector_allow_private_urls": True,
                "connector_vendor_origins": {HUBSPOT_API: hubspot_peer.url},
            }
        ),
        zoho_peer,
    )
    admin = await member(sessions, peered)
    hubspot, zoho = await connect_crms(sessions, peered, admin.tenant_id, zoho_peer)
    profile_id = await add_profile(
        sessions,
        admin.tenant_id,
        hubspot,
        zoho,
        resources=("contacts", "contacts"),
        direction=SyncDirection.TWO_WAY,
    )
    earlier = datetime.now(UTC) - timedelta(minutes=10)
    contact = hubspot_peer.seed(
        "contacts", {"email": "ada@example.com", "lastname": "Byron"}, at=earlier
    )
    zoho_peer.seed("Contacts", {"Email": "alan@example.com", "Last_Name": "Turing"}, at=earlier)
    client = temporal_env.client
    async with build_worker(client, sessions, peered):
        workflow = f"sync:{profile_id}"
        queue = peered.temporal_task_queue
        first = await client.execute_workflow(
            SyncWorkflow.run, SyncRunState(profile_id=profile_id), id=workflow, task_queue=queue
        )
        assert first.created == 2
        copy = next(
            r for r in zoho_peer.records["Contacts"].values() if r["Email"] == "ada@example.com"
        )
        soon = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
        _hubspot_edit(contact, soon, lastname="Lovelace")
        _zoho_edit(copy, soon + timedelta(minutes=1), Last_Name="King")
        handle = await client.start_workflow(
            SyncWorkflow.run, SyncRunState(profile_id=profile_id), id=workflow, task_queue=queue
        )
        counts = await handle.result()
        assert (counts.conflicts, counts.updated) == (1, 1)
        await record(client, "sync-two-way-conflict", handle.id)


async def test_publishing(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    """A content item edited, reviewed (changes requested, then approved), scheduled and
    rescheduled, published, updated and unpublished; refused credentials never reconnected;
    and a long history continued as new. The CMS calls are the workflow tests' stand-ins."""
    client, cms = time_skipping_env.client, FakeCms()
    admin = await member(sessions, settings)
    connection_id = await cms_connection(sessions, admin.tenant_id, "https://x.example.com")
    by = admin.user_id
    async with fake_cms_worker(client, sessions, settings, cms):
        now = await time_skipping_env.get_current_time()
        item = await start_item(client, settings, admin, connection_id, review=True, now=now)
        await item.execute_update(
            PublishWorkflow.edit, EditCommand(changes={"excerpt": "x"}, by=by)
        )
        await item_status(item, ContentStatus.DRAFT)
        await record(client, "publish-draft-edited", item.id)
        await record(client, "publish-run-counted", item.id)  # usage-workflow-runs
        await item.execute_update(PublishWorkflow.submit, ContentSubmission(submitted_by=by))
        review = await _review_of(item)
        await _decide(client, review, _decision(Verdict.REQUEST_CHANGES, admin, "More."))
        await item_status(item, ContentStatus.DRAFT)
        await record(client, "publish-changes-requested", item.id)
        at = await time_skipping_env.get_current_time() + timedelta(days=2)
        await item.execute_update(
            PublishWorkflow.submit, ContentSubmission(submitted_by=by, publish_at=at)
        )
        review = await _review_of(item, after=review)
        await item.execute_update(
            PublishWorkflow.reschedule, Reschedule(publish_at=at + timedelta(days=1), by=by)
        )
        await _decide(client, review, _decision(Verdict.APPROVE, admin))
        await item_status(item, ContentStatus.SCHEDULED)
        await record(client, "publish-scheduled", item.id)
        await time_skipping_env.sleep(timedelta(days=4))
        await item_status(item, ContentStatus.PUBLISHED)
        await record(client, "publish-published", item.id)
        await item.execute_update(PublishWorkflow.edit, EditCommand(changes={"title": "T2"}, by=by))
        await item.execute_update(PublishWorkflow.submit, ContentSubmission(submitted_by=by))
        review = await _review_of(item, after=review)
        await _decide(client, review, _decision(Verdict.APPROVE, admin))
        await item_status(item, ContentStatus.PUBLISHED)
        await item.execute_update(
            PublishWorkflow.unpublish, UnpublishRequest(mode=UnpublishMode.TRASH, by=by)
        )
        await item_status(item, ContentStatus.UNPUBLISHED)
        await record(client, "publish-updated-and-unpublished", item.id)
        await finish(client, item.id)

        cms.refuse = True
        refused = await start_item(client, settings, admin, connection_id, now=now)
        await refused.execute_update(PublishWorkflow.submit, ContentSubmission(submitted_by=by))
        await item_status(refused, ContentStatus.WAITING_FOR_CONNECTION)
        await time_skipping_env.sleep(timedelta(days=4))
        await item_status(refused, ContentStatus.FAILED)
        await record(client, "publish-not-reconnected", refused.id)
        await finish(client, refused.id)

        long = await start_item(client, settings, admin, connection_id, now=now, history_limit=30)
        for n in range(8):
            await long.execute_update(
                PublishWorkflow.edit, EditCommand(changes={"excerpt": f"e{n}"}, by=by)
            )
        described = await eventually(
            lambda: long.describe(), lambda found: found.run_id != long.first_execution_run_id
        )
        await record(client, "publish-continued-as-new", long.id, long.first_execution_run_id)
        await finish(client, described.id)


async def test_publishing_a_post_that_does_not_verify(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    """A post written but read back otherwise: the item fails and keeps the post (the
    ``keep-unverified-post`` patch), then the next submit writes over it and publishes."""
    client, cms = time_skipping_env.client, FakeCms(rewritten=True)
    admin = await member(sessions, settings)
    connection_id = await cms_connection(sessions, admin.tenant_id, "https://x.example.com")
    by = admin.user_id
    async with fake_cms_worker(client, sessions, settings, cms):
        now = await time_skipping_env.get_current_time()
        item = await start_item(client, settings, admin, connection_id, now=now)
        await item.execute_update(PublishWorkflow.submit, ContentSubmission(submitted_by=by))
        await item_status(item, ContentStatus.FAILED)
        cms.rewritten = False
        await item.execute_update(PublishWorkflow.submit, ContentSubmission(submitted_by=by))
        await item_status(item, ContentStatus.PUBLISHED)
        await record(client, "publish-unverified-then-published", item.id)
        await finish(client, item.id)


async def _review_of(item: Any, after: uuid.UUID | None = None) -> uuid.UUID:
    state = await eventually(
        lambda: item.query(PublishWorkflow.state),
        lambda found: (
            found.review is not None
            and found.review.status is ApprovalStatus.PENDING
            and found.review.approval_id != after
        ),
    )
    approval_id: uuid.UUID = state.review.approval_id
    return approval_id


async def _decide(client: Client, approval_id: uuid.UUID, decision: Decision) -> None:
    """Decide the review once its workflow is up (the item shows it a moment before)."""
    handle = client.get_workflow_handle_for(ApprovalWorkflow.run, f"approval:{approval_id}")
    await eventually(lambda: _pending_record(handle), lambda started: started)
    await handle.execute_update(ApprovalWorkflow.decide, decision)


async def _pending_record(handle: Any) -> bool:
    try:
        await handle.query(ApprovalWorkflow.record)
    except RPCError:
        return False
    return True


# --- Billing operations and payment methods (appended) -------------------------------------


@pytest.mark.usefixtures("billing_worker")
async def test_billing_operator_trial_and_suspension(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
) -> None:
    """A trial extended by an operator; an operator's suspension, then lifted."""
    client = time_skipping_env.client
    admin = await member(sessions, billing_settings)
    operator = await member(sessions, billing_settings, Role.SUPER_ADMIN)
    with_trial = billing_settings.model_copy(update={"billing_trial_days": 14})
    handle = await _provision(client, with_trial, admin.tenant_id)
    view = await _status(handle, sessions, admin.tenant_id, BillingStatus.TRIALING)
    assert view.trial_end is not None
    base = f"/api/v1/billing/tenants/{admin.tenant_id}"
    later = (view.trial_end + timedelta(days=7)).isoformat()
    extended = await ts_api.post(
        f"{base}/trial", json={"trial_end": later}, headers=operator.headers
    )
    assert extended.status_code == 200, extended.text
    await record(client, "billing-trial-extended", handle.id)

    reason = {"reason": "terms of service review"}
    suspended = await ts_api.post(f"{base}/suspend", json=reason, headers=operator.headers)
    assert suspended.status_code == 200, suspended.text
    await record(client, "billing-operator-suspended", handle.id)

    lifted = await ts_api.post(f"{base}/unsuspend", json=reason, headers=operator.headers)
    assert lifted.status_code == 200, lifted.text
    await record(client, "billing-operator-unsuspended", handle.id)
    await finish(client, handle.id)


async def test_billing_provisioning_retried(
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    billing_settings: Settings,
    stripe_front: StripeFront,
) -> None:
    """A provisioning Stripe refused (a request error), provisioned again by an operator."""
    client = time_skipping_env.client
    settings = stripe_front.settings(billing_settings).model_copy(update={"billing_trial_days": 14})
    admin = await member(sessions, settings)
    operator = await member(sessions, settings, Role.SUPER_ADMIN)
    stripe_front.fail("/v1/subscriptions", Fault(400, "invalid_request_error"))
    async with worker_without_schedules(client, sessions, settings):
        handle = await _provision(client, settings, admin.tenant_id)
        await eventually(
            lambda: handle.query(BillingWorkflow.view),
            lambda view: view.provision_failure is not None,
        )
        await handle.execute_update(
            BillingWorkflow.retry_provisioning,
            OperatorRequest(requested_by=operator.user_id),
            id="retry-provisioning-1",
        )
        await _status(handle, sessions, admin.tenant_id, BillingStatus.TRIALING)
        await record(client, "billing-provisioning-retried", handle.id)
        await finish(client, handle.id)


async def test_billing_plan_change_at_period_end(
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    billing_settings: Settings,
    stripe_front: StripeFront,
    localstripe: LocalStripe,
) -> None:
    """A downgrade scheduled for the period's end (after a preview), withdrawn, scheduled
    again and applied unprorated when the period ends."""
    client = time_skipping_env.client
    settings = stripe_front.settings(billing_settings)
    admin = await member(sessions, settings)
    async with localstripe.sdk() as sdk:
        await card_holder(sdk, admin.tenant_id, admin.email)
    async with worker_without_schedules(client, sessions, settings):
        handle = await _provision(client, settings, admin.tenant_id, PlanId.PROFESSIONAL)
        await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
        down = PlanChange(plan=PlanId.STARTER, requested_by=admin.user_id, at_period_end=True)
        await handle.execute_update(
            BillingWorkflow.preview_plan_change,
            PlanPreview(plan=PlanId.STARTER, at_period_end=True),
        )
        await handle.execute_update(BillingWorkflow.change_plan, down, id="down-1")
        back = PlanChange(plan=PlanId.PROFESSIONAL, requested_by=admin.user_id)
        await handle.execute_update(BillingWorkflow.change_plan, back, id="back-1")
        view = await handle.execute_update(BillingWorkflow.change_plan, down, id="down-2")
        assert view.scheduled_plan_at is not None
        await record(client, "billing-plan-change-scheduled", handle.id)
        await time_skipping_env.sleep(view.scheduled_plan_at - datetime.now(UTC))
        await eventually(
            lambda: handle.query(BillingWorkflow.view),
            lambda found: found.plan is PlanId.STARTER and found.scheduled_plan is None,
        )
        await record(client, "billing-plan-changed-at-period-end", handle.id)
        await finish(client, handle.id)


async def test_billing_seats_counted(
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
) -> None:
    """A plan priced per user: members join and the seats billed follow."""
    client = time_skipping_env.client
    plans = [
        plan.model_copy(update={"per_seat": True}) if plan.id is PlanId.STARTER else plan
        for plan in billing_settings.billing_plans
    ]
    settings = billing_settings.model_copy(update={"billing_plans": plans})
    admin = await member(sessions, settings)
    async with localstripe.sdk() as sdk:
        await card_holder(sdk, admin.tenant_id, admin.email)
    async with worker_without_schedules(client, sessions, settings):
        handle = await _provision(client, settings, admin.tenant_id)
        await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
        await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
        await count_seats_again(client, admin.tenant_id)
        await time_skipping_env.sleep(timedelta(seconds=6))
        await eventually(lambda: handle.query(BillingWorkflow.view), lambda found: found.seats == 2)
        await record(client, "billing-seats-counted", handle.id)
        await finish(client, handle.id)


@pytest.mark.usefixtures("billing_worker")
async def test_billing_payment_method_removed(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
) -> None:
    """A spare card removed by the tenant's admin (looked up, detached, audited)."""
    client = time_skipping_env.client
    admin = await member(sessions, billing_settings)
    async with localstripe.sdk() as sdk:
        customer = await card_holder(sdk, admin.tenant_id, admin.email)
        spare = await sdk.v1.payment_methods.attach_async(
            "pm_card_visa", params={"customer": customer}
        )
    handle = await _provision(client, billing_settings, admin.tenant_id)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    removed = await ts_api.delete(
        f"/api/v1/billing/payment-methods/{spare.id}", headers=admin.headers
    )
    assert removed.status_code == 204, removed.text
    await record(client, "billing-payment-method-removed", handle.id)
    await finish(client, handle.id)


async def _audited(sessions: SessionFactory, tenant_id: uuid.UUID, action: str) -> bool:
    async with sessions() as session:
        found = await session.scalar(
            select(AuditEntry.id).where(
                AuditEntry.tenant_id == tenant_id, AuditEntry.action == action
            )
        )
    return found is not None


@pytest.mark.usefixtures("billing_worker")
async def test_billing_refund_dispute_and_credit_note(
    time_skipping_env: WorkflowEnvironment,
    ts_api: httpx.AsyncClient,
    sessions: SessionFactory,
    billing_settings: Settings,
    localstripe: LocalStripe,
) -> None:
    """A partial refund, a dispute (its admins and the operators e-mailed) and a credit note,
    recorded on the paid first invoice."""
    client = time_skipping_env.client
    admin = await member(sessions, billing_settings)
    operator = await member(sessions, billing_settings, Role.SUPER_ADMIN)
    async with localstripe.sdk() as sdk:
        customer = await card_holder(sdk, admin.tenant_id, admin.email)
    handle = await _provision(client, billing_settings, admin.tenant_id)
    await _status(handle, sessions, admin.tenant_id, BillingStatus.ACTIVE)
    async with localstripe.sdk() as sdk:
        invoice_id, charge = await paid_charge(
            sdk, await _subscription_id(sessions, admin.tenant_id)
        )
        refunded = await refund(sdk, charge["id"], 1000)
    await _post(ts_api, "charge.refunded", refunded)
    await eventually(lambda: _audited(sessions, admin.tenant_id, "billing.refund_recorded"), bool)
    await record(client, "billing-refunded", handle.id)

    await _post(ts_api, "charge.dispute.created", dispute(charge))
    await eventually(
        lambda: _subjects(sessions, operator), lambda found: any("Dispute" in s for s in found)
    )
    await record(client, "billing-disputed", handle.id)

    await _post(ts_api, "credit_note.created", credit_note(invoice_id, customer, 500))
    await eventually(
        lambda: _audited(sessions, admin.tenant_id, "billing.credit_note_issued"), bool
    )
    await record(client, "billing-credit-noted", handle.id)
    await finish(client, handle.id)


async def test_tasks(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    """A task accepted, worked (paused while waiting), its SLA warned and breached, done; and a
    task nobody accepts, escalated."""
    client = time_skipping_env.client
    admin = await member(sessions, settings)
    people = [await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id) for _ in "ab"]
    project_id = await task_project(sessions, admin, *people)
    policy = TaskPolicy(
        calendar=BusinessCalendar(work_days=[0, 1, 2, 3, 4, 5, 6], start="00:00", end="23:00"),
        sla={Priority.NORMAL: SlaTarget(response_minutes=60, resolution_minutes=120)},
        accept_within=timedelta(hours=1),
        max_attempts=2,
    )
    by = people[0].user_id
    async with build_worker(client, sessions, settings):
        now = await time_skipping_env.get_current_time()
        task = await start_task(client, settings, admin, project_id, now, policy, people[0])
        await task.execute_update(TaskWorkflow.accept, AcceptCommand(by=by))
        for status in (TaskStatus.IN_PROGRESS, TaskStatus.WAITING, TaskStatus.IN_PROGRESS):
            await task.execute_update(
                TaskWorkflow.change_status, StatusChange(status=status, by=by)
            )
        await task.execute_update(
            TaskWorkflow.comment, CommentCommand(comment_id=uuid.uuid4(), body="On it.", by=by)
        )
        await time_skipping_env.sleep(timedelta(hours=3))
        await task_state(task, lambda s: any(c.breached for c in s.clocks))
        await record(client, "task-breached", task.id)
        for status in (TaskStatus.REVIEW, TaskStatus.DONE):
            await task.execute_update(
                TaskWorkflow.change_status, StatusChange(status=status, by=by)
            )
        await task.result()
        await record(client, "task-done", task.id)
        await record(client, "task-run-counted", task.id)  # usage-workflow-runs

        unwanted = await start_task(client, settings, admin, project_id, now, policy)
        await time_skipping_env.sleep(timedelta(hours=3))
        await task_state(unwanted, lambda s: s.escalated)
        await record(client, "task-escalated", unwanted.id)
        await finish(client, unwanted.id)


async def test_task_released(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    """A task its accepted assignee lets go of (removed from the tenant): routed on."""
    client = time_skipping_env.client
    admin = await member(sessions, settings)
    people = [await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id) for _ in "ab"]
    project_id = await task_project(sessions, admin, *people)
    leaving = people[0].user_id
    async with build_worker(client, sessions, settings):
        now = await time_skipping_env.get_current_time()
        task = await start_task(client, settings, admin, project_id, now, TaskPolicy(), people[0])
        await task.execute_update(TaskWorkflow.accept, AcceptCommand(by=leaving))
        async with transaction(sessions) as session:
            await session.execute(delete(Membership).where(Membership.user_id == leaving))
        await task.signal(TaskWorkflow.release, ReleaseCommand(user_id=leaving, by=admin.user_id))
        await task_state(
            task, lambda s: s.assignee is not None and s.assignee.id == people[1].user_id
        )
        await record(client, "task-released", task.id)
        await finish(client, task.id)


# --- Agent runs (appended) -----------------------------------------------------------------


async def test_agent_runs(
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
    hubspot_peer: HubSpotPeer,
) -> None:
    """Agent runs against the HubSpot peer: a result without writes; a write waiting for its
    review, then approved; one rejected; one whose review expired; and a run stopped by the
    tenant's tool limit."""
    from models.agents import AgentRunConfig, AgentRunStart, AgentRunState, AgentRunStatus
    from workflows.agent_run import AgentRunWorkflow
    from workflows.agent_run import workflow_id as agent_run_workflow_id

    peered = settings.model_copy(
        update={
            "connector_allow_private_urls": True,
            "connector_vendor_origins": {HUBSPOT_API: hubspot_peer.url},
        }
    )
    admin = await member(sessions, peered, mfa_enabled=True)
    connection_id = await hubspot_connection(sessions, peered, admin.tenant_id)
    company = hubspot_peer.seed("companies", {"name": "Acme", "domain": "acme.io"})
    contact = hubspot_peer.seed(
        "contacts", {"email": "ada@acme.io", "firstname": "Ada", "jobtitle": "Director"}
    )
    hubspot_peer.associate("contacts", contact["id"], "companies", company["id"])
    lead = {"connection_id": str(connection_id), "contact_id": contact["id"]}
    tools = ["crm.get_contact", "crm.get_company", "crm.create_note"]
    client = time_skipping_env.client

    async def run(given: dict[str, Any], **config: Any) -> Any:
        run_id = uuid.uuid4()
        start = AgentRunStart(
            run_id=run_id,
            tenant_id=admin.tenant_id,
            agent_id="lead-scoring",
            started_by=admin.user_id,
            created_at=await time_skipping_env.get_current_time(),
            input=given,
            config=AgentRunConfig(**{"allowed_tools": tools, **config}),
        )
        return await client.start_workflow(
            AgentRunWorkflow.run,
            start,
            id=agent_run_workflow_id(run_id),
            task_queue=peered.temporal_task_queue,
        )

    async def review_of(handle: Any) -> uuid.UUID:
        state: AgentRunState = await eventually(
            lambda: handle.query(AgentRunWorkflow.state),
            lambda found: found.status is AgentRunStatus.AWAITING_REVIEW,
        )
        assert state.approval_id is not None
        return state.approval_id

    async with build_worker(client, sessions, peered):
        plain = await run(lead)
        assert (await plain.result()).outcome.value == "no_action"
        await record(client, "agent-run-no-action", plain.id)
        await record(client, "agent-run-counted", plain.id)  # usage-workflow-runs

        approved = await run(lead | {"write_score": True}, always_review=True)
        approval_id = await review_of(approved)
        await record(client, "agent-run-awaiting-review", approved.id)
        await _decide(client, approval_id, _decision(Verdict.APPROVE, admin))
        assert (await approved.result()).outcome.value == "approved"
        await record(client, "agent-run-approved", approved.id)

        rejected = await run(lead | {"write_score": True}, confidence_threshold=1.0)
        approval_id = await review_of(rejected)
        await _decide(client, approval_id, _decision(Verdict.REJECT, admin, "No."))
        assert (await rejected.result()).outcome.value == "rejected"
        await record(client, "agent-run-rejected", rejected.id)

        expired = await run(lead | {"write_score": True}, always_review=True)
        await review_of(expired)
        await time_skipping_env.sleep(timedelta(days=8))
        assert (await expired.result()).outcome.value == "expired"
        await record(client, "agent-run-review-expired", expired.id)

        limited = await run(lead, allowed_tools=["crm.get_contact"])
        assert (await limited.result()).status is AgentRunStatus.FAILED
        await record(client, "agent-run-failed", limited.id)


async def test_model_agent_runs(
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
    hubspot_peer: HubSpotPeer,
    chat_model_peer: ChatModelPeer,
) -> None:
    """A model-backed run (e-mail draft) whose model reads a contact through a tool call, and
    one stopped by its token budget."""
    from connectors.secrets import model_provider_path
    from models.agents import AgentRunConfig, AgentRunStart, AgentRunStatus, ModelChoice
    from workflows.agent_run import AgentRunWorkflow
    from workflows.agent_run import workflow_id as agent_run_workflow_id

    peered = settings.model_copy(
        update={
            "connector_allow_private_urls": True,
            "connector_vendor_origins": {HUBSPOT_API: hubspot_peer.url},
        }
    )
    admin = await member(sessions, peered, mfa_enabled=True)
    connection_id = await hubspot_connection(sessions, peered, admin.tenant_id)
    await secret_store_from_settings(peered).put(
        model_provider_path(admin.tenant_id),
        {
            "base_url": chat_model_peer.url,
            "model": "peer-large",
            "api_key": chat_model_peer.api_key,
        },
    )
    contact = hubspot_peer.seed("contacts", {"email": "ada@acme.io", "firstname": "Ada"})
    given = {"connection_id": str(connection_id), "contact_id": contact["id"], "purpose": "hi"}
    client = time_skipping_env.client

    async def run(**config: Any) -> Any:
        run_id = uuid.uuid4()
        start = AgentRunStart(
            run_id=run_id,
            tenant_id=admin.tenant_id,
            agent_id="email-draft",
            started_by=admin.user_id,
            created_at=await time_skipping_env.get_current_time(),
            input=given,
            config=AgentRunConfig(
                allowed_tools=["crm.get_contact", "crm.get_company"],
                model=ModelChoice(model="peer-large", temperature=0.3),
                **config,
            ),
        )
        return await client.start_workflow(
            AgentRunWorkflow.run,
            start,
            id=agent_run_workflow_id(run_id),
            task_queue=peered.temporal_task_queue,
        )

    lookup = ("crm__get_contact", {"contact_id": contact["id"]})
    draft = {"contact_id": contact["id"], "subject": "Hi Ada", "body": "Hello."}
    async with build_worker(client, sessions, peered):
        chat_model_peer.reply_tool_calls(lookup, tokens=(100, 10))
        chat_model_peer.reply_text(
            json.dumps({"output": draft, "confidence": 0.9, "rationale": "From the CRM."})
        )
        drafted = await run()
        assert (await drafted.result()).status is AgentRunStatus.COMPLETED
        await record(client, "agent-run-model", drafted.id)

        chat_model_peer.reply_tool_calls(lookup, tokens=(100, 10))
        spent = await run(run_token_budget=50)
        assert (await spent.result()).status is AgentRunStatus.FAILED
        await record(client, "agent-run-token-budget", spent.id)
    assert chat_model_peer.failures == []


async def test_agent_chats(
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
    hubspot_peer: HubSpotPeer,
    chat_model_peer: ChatModelPeer,
) -> None:
    """A chat with a tool call, a reply, a failed turn and its end; a chat ended by a quiet day."""
    from connectors.secrets import model_provider_path
    from models.agent_chat import ChatEnd, ChatMessage, ChatStart, ChatStatus
    from models.agents import AgentRunConfig, ModelChoice
    from workflows.agent_chat import AgentChatWorkflow
    from workflows.agent_chat import workflow_id as chat_workflow_id

    peered = settings.model_copy(
        update={
            "connector_allow_private_urls": True,
            "connector_vendor_origins": {HUBSPOT_API: hubspot_peer.url},
        }
    )
    person = await member(sessions, peered)
    connection_id = await hubspot_connection(sessions, peered, person.tenant_id)
    await secret_store_from_settings(peered).put(
        model_provider_path(person.tenant_id),
        {
            "base_url": chat_model_peer.url,
            "model": "peer-large",
            "api_key": chat_model_peer.api_key,
        },
    )
    contact = hubspot_peer.seed("contacts", {"email": "ada@acme.io", "firstname": "Ada"})
    client = time_skipping_env.client

    async def chat() -> Any:
        session_id = uuid.uuid4()
        start = ChatStart(
            session_id=session_id,
            tenant_id=person.tenant_id,
            agent_id="email-draft",
            started_by=person.user_id,
            created_at=await time_skipping_env.get_current_time(),
            input={"connection_id": str(connection_id), "contact_id": contact["id"]},
            config=AgentRunConfig(
                allowed_tools=["crm.get_contact", "crm.get_company"],
                model=ModelChoice(model="peer-large"),
            ),
        )
        return await client.start_workflow(
            AgentChatWorkflow.run,
            start,
            id=chat_workflow_id(session_id),
            task_queue=peered.temporal_task_queue,
        )

    def said(text: str) -> ChatMessage:
        return ChatMessage(text=text, by=person.user_id)

    async with build_worker(client, sessions, peered):
        talk = await chat()
        chat_model_peer.reply_tool_calls(("crm__get_contact", {"contact_id": contact["id"]}))
        chat_model_peer.reply_text("Ada, at Acme.")
        await talk.execute_update(AgentChatWorkflow.say, said("Who is this?"))
        chat_model_peer.reply_error(400, message="Too long.")
        await talk.execute_update(AgentChatWorkflow.say, said("More, please."))
        await talk.execute_update(AgentChatWorkflow.end, ChatEnd(by=person.user_id))
        assert (await talk.result()).status is ChatStatus.ENDED
        await record(client, "agent-chat", talk.id)
        await record(client, "agent-chat-run-counted", talk.id)  # usage-workflow-runs

        quiet = await chat()
        chat_model_peer.reply_text("Hello.")
        await quiet.execute_update(AgentChatWorkflow.say, said("Hi"))
        await time_skipping_env.sleep(timedelta(days=1, minutes=1))
        assert (await quiet.result()).ended_reason == "idle"
        await record(client, "agent-chat-idle", quiet.id)
    assert chat_model_peer.failures == []


async def test_playbooks(
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
    hubspot_peer: HubSpotPeer,
    chat_model_peer: ChatModelPeer,
    wordpress_site: WordPressSite,
) -> None:
    """Playbook runs: the new-lead follow-up with a hot lead (deal and task); a run paused,
    resumed and cancelled in its wait; the blog post pipeline approved and published to the
    real WordPress (its item's workflow started submitted); one whose review is rejected."""
    from connectors.secrets import model_provider_path
    from models.agents import AgentRunConfig, ModelChoice
    from models.playbooks import PLAYBOOKS, PlaybookControl, PlaybookStart, parse_document
    from workflows.playbook import PlaybookWorkflow
    from workflows.playbook import workflow_id as playbook_workflow_id

    peered = settings.model_copy(
        update={
            "connector_allow_private_urls": True,
            "connector_vendor_origins": {HUBSPOT_API: hubspot_peer.url},
        }
    )
    admin = await member(sessions, peered, mfa_enabled=True)
    crm_id = await hubspot_connection(sessions, peered, admin.tenant_id)
    cms_id = await cms_connection(sessions, admin.tenant_id, wordpress_site.url)
    store = secret_store_from_settings(peered)
    await store.put(
        connection_path(admin.tenant_id, cms_id),
        {
            "username": wordpress_site.username,
            "application_password": wordpress_site.application_password,
        },
    )
    await store.put(
        model_provider_path(admin.tenant_id),
        {"base_url": chat_model_peer.url, "model": "m", "api_key": chat_model_peer.api_key},
    )
    project_id = uuid.uuid4()
    async with transaction(sessions) as session:
        session.add(
            Project(
                id=project_id,
                tenant_id=admin.tenant_id,
                name="Sales",
                description="",
                members=[],
                sla={},
            )
        )
    company = hubspot_peer.seed("companies", {"name": "Acme", "domain": "acme.io"})
    contact = hubspot_peer.seed(
        "contacts",
        {
            "email": "ada@acme.io",
            "firstname": "Ada",
            "lastname": "Lovelace",
            "jobtitle": "VP Marketing",
            "phone": "+49 30 1234567",
        },
    )
    hubspot_peer.associate("contacts", contact["id"], "companies", company["id"])
    client = time_skipping_env.client
    model = ModelChoice(model="m")
    configs = {
        "lead-scoring": AgentRunConfig(
            allowed_tools=["crm.get_contact", "crm.get_company", "crm.create_note"]
        ),
        "content-brief": AgentRunConfig(allowed_tools=["content.get_item"], model=model),
        "content-draft": AgentRunConfig(allowed_tools=[], model=model),
    }

    async def run(document: Any, given: dict[str, Any]) -> Any:
        run_id = uuid.uuid4()
        start = PlaybookStart(
            run_id=run_id,
            tenant_id=admin.tenant_id,
            started_by=admin.user_id,
            created_at=await time_skipping_env.get_current_time(),
            document=document,
            input=given,
            agents=configs,
        )
        return await client.start_workflow(
            PlaybookWorkflow.run,
            start,
            id=playbook_workflow_id(run_id),
            task_queue=peered.temporal_task_queue,
        )

    async def review_of(handle: Any) -> uuid.UUID:
        found = await eventually(
            lambda: _approval_of(client, handle.id), lambda approval_id: approval_id is not None
        )
        assert found is not None
        return found

    def blog() -> None:
        brief = {"title": "Spring sale", "outline": ["Why", "How"], "keywords": ["sale"]}
        draft = {"title": "Spring sale", "body": "<h2>Why</h2><p>Now.</p>", "excerpt": "Sale."}
        for output in (brief, draft):
            chat_model_peer.reply_text(
                json.dumps({"output": output, "confidence": 0.9, "rationale": "Asked."})
            )

    control = PlaybookControl(by=admin.user_id)
    async with build_worker(client, sessions, peered):
        lead = await run(
            PLAYBOOKS["new-lead-follow-up"],
            {
                "connection_id": str(crm_id),
                "contact_id": contact["id"],
                "project_id": str(project_id),
                "owner_id": str(admin.user_id),
            },
        )
        assert (await lead.result()).status.value == "completed"
        await record(client, "playbook-lead-hot", lead.id)
        await record(client, "playbook-run-counted", lead.id)  # usage-workflow-runs

        slow = parse_document(
            {
                "id": "slow",
                "name": "Slow",
                "steps": [{"id": "wait", "kind": "wait", "duration": "P1D"}],
            }
        )
        held = await run(slow, {})
        await held.execute_update(PlaybookWorkflow.pause, control)
        await held.execute_update(PlaybookWorkflow.resume, control)
        await held.execute_update(PlaybookWorkflow.cancel, control)
        assert (await held.result()).status.value == "cancelled"
        await record(client, "playbook-cancelled", held.id)

        blog()
        given = {"topic": "Spring sale", "connection_id": str(cms_id)}
        published = await run(PLAYBOOKS["blog-post-pipeline"], given)
        await _decide(client, await review_of(published), _decision(Verdict.APPROVE, admin))
        done = await published.result()
        assert done.status.value == "completed", done.error
        await record(client, "playbook-blog-published", published.id)
        content_id = done.results["publish"]["content_id"]
        await record(client, "publish-from-playbook", f"publish:{content_id}")

        blog()
        rejected = await run(PLAYBOOKS["blog-post-pipeline"], given)
        await _decide(
            client, await review_of(rejected), _decision(Verdict.REJECT, admin, "Not now.")
        )
        assert (await rejected.result()).results["review"]["decision"] == "rejected"
        await record(client, "playbook-blog-rejected", rejected.id)
    assert chat_model_peer.failures == []


async def _approval_of(client: Client, playbook_workflow: str) -> uuid.UUID | None:
    """The approval child a playbook run has started, from its history."""
    history = await client.get_workflow_handle(playbook_workflow).fetch_history()
    for event in history.events:
        started = event.start_child_workflow_execution_initiated_event_attributes
        if started.workflow_id.startswith("approval:"):
            return uuid.UUID(started.workflow_id.removeprefix("approval:"))
    return None


async def test_task_by_agent(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    """A task an agent accepts by starting its run, and closes with its result."""
    client = time_skipping_env.client
    admin = await member(sessions, settings)
    project_id = await task_project(sessions, admin)
    run = AgentRunStart(
        run_id=uuid.uuid4(),
        tenant_id=admin.tenant_id,
        agent_id="seo-audit",
        started_by=admin.user_id,
        created_at=await time_skipping_env.get_current_time(),
        input={"html": "<h1>Pricing</h1><p>Plans.</p>"},
        config=AgentRunConfig(allowed_tools=[]),
    )
    async with build_worker(client, sessions, settings):
        now = await time_skipping_env.get_current_time()
        task = await start_task(
            client, settings, admin, project_id, now, TaskPolicy(), agent_run=run
        )
        assert await task.result() is TaskStatus.DONE
        await record(client, "task-done-by-agent", task.id)


async def test_task_routed(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    """Tasks routing gives to an agent of the project (which closes it) and to a person (who
    lets the acceptance window pass: escalated)."""
    client = time_skipping_env.client
    admin = await member(sessions, settings)
    project_id = uuid.uuid4()
    async with transaction(sessions) as session:
        session.add(
            Project(
                id=project_id,
                tenant_id=admin.tenant_id,
                name="Content",
                description="",
                members=[
                    {"agent_id": "seo-audit", "skills": ["seo"]},
                    {"user_id": str(admin.user_id), "skills": ["seo", "writing"]},
                ],
                sla={},
            )
        )
    policy = TaskPolicy(accept_within=timedelta(hours=1), max_attempts=1)
    async with build_worker(client, sessions, settings):
        now = await time_skipping_env.get_current_time()
        audit = await start_task(
            client,
            settings,
            admin,
            project_id,
            now,
            policy,
            fields=TaskFields(
                title="Audit the page", skill="seo", agent_input={"html": "<h1>Plans</h1>"}
            ),
        )
        assert await audit.result() is TaskStatus.DONE
        await record(client, "task-routed-to-agent", audit.id)
        writing = await start_task(
            client,
            settings,
            admin,
            project_id,
            now,
            policy,
            fields=TaskFields(title="Write", skill="writing"),
        )
        await time_skipping_env.sleep(timedelta(hours=2))
        await task_state(writing, lambda s: s.escalated)
        await record(client, "task-routed-then-escalated", writing.id)
        await finish(client, writing.id)


async def test_task_priority_changed_while_waiting(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    """A task made urgent while it waits (its clocks stay paused), then made normal again while
    worked (its clocks re-planned), then done."""
    client = time_skipping_env.client
    admin = await member(sessions, settings)
    person = await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    project_id = await task_project(sessions, admin, person)
    policy = TaskPolicy(
        calendar=BusinessCalendar(work_days=[0, 1, 2, 3, 4, 5, 6], start="00:00", end="23:00"),
        sla={
            Priority.NORMAL: SlaTarget(response_minutes=60, resolution_minutes=600),
            Priority.URGENT: SlaTarget(response_minutes=30, resolution_minutes=300),
        },
        accept_within=timedelta(hours=1),
    )
    by = person.user_id
    async with build_worker(client, sessions, settings):
        now = await time_skipping_env.get_current_time()
        task = await start_task(client, settings, admin, project_id, now, policy, person)
        await task.execute_update(TaskWorkflow.accept, AcceptCommand(by=by))
        for status in (TaskStatus.IN_PROGRESS, TaskStatus.WAITING):
            await task.execute_update(
                TaskWorkflow.change_status, StatusChange(status=status, by=by)
            )
        await task.execute_update(
            TaskWorkflow.change_priority, PriorityChange(priority=Priority.URGENT, by=by)
        )
        await time_skipping_env.sleep(timedelta(hours=8))
        await task.execute_update(
            TaskWorkflow.change_status, StatusChange(status=TaskStatus.IN_PROGRESS, by=by)
        )
        await task.execute_update(
            TaskWorkflow.change_priority, PriorityChange(priority=Priority.NORMAL, by=by)
        )
        await task.execute_update(
            TaskWorkflow.change_status, StatusChange(status=TaskStatus.DONE, by=by)
        )
        assert await task.result() is TaskStatus.DONE
        await record(client, "task-priority-while-waiting", task.id)
