"""Which workflows and activities the ``bizosaas`` task queue runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from activities.agents import AgentActivities
from activities.approval import ApprovalActivities
from activities.audit import AuditActivities
from activities.billing import BillingActivities, StorageMetering
from activities.billing_reconciliation import ReconciliationActivities
from activities.connections import ConnectionActivities
from activities.identity import PasswordResetActivities
from activities.onboarding import OnboardingActivities
from activities.playbooks import PlaybookActivities
from activities.publishing import PublishingActivities
from activities.sync import SyncActivities
from activities.tasks import TaskActivities
from connectors.billing.stripe_gateway import gateway_from_settings
from connectors.mail import mailer_from_settings
from connectors.secrets import secret_store_from_settings
from connectors.storage import storage_from_settings
from core.db import SessionFactory
from core.settings import Settings
from workflows.agent_chat import AgentChatWorkflow
from workflows.agent_run import AgentRunWorkflow
from workflows.approval import ApprovalWorkflow
from workflows.audit_verification import AuditVerificationWorkflow
from workflows.billing import BillingWorkflow, UsageReportWorkflow
from workflows.billing_reconciliation import BillingReconciliationWorkflow
from workflows.connection import ConnectionWorkflow, ConnectionWriteWorkflow
from workflows.onboarding import OnboardingWorkflow
from workflows.password_reset import PasswordResetWorkflow
from workflows.playbook import PlaybookWorkflow
from workflows.publish import PublishWorkflow
from workflows.sync import SyncWorkflow
from workflows.task import TaskWorkflow

WORKFLOWS: Sequence[type] = (
    AuditVerificationWorkflow,
    PasswordResetWorkflow,
    OnboardingWorkflow,
    ApprovalWorkflow,
    BillingWorkflow,
    UsageReportWorkflow,
    BillingReconciliationWorkflow,
    ConnectionWorkflow,
    ConnectionWriteWorkflow,
    SyncWorkflow,
    PublishWorkflow,
    TaskWorkflow,
    AgentRunWorkflow,
    AgentChatWorkflow,
    PlaybookWorkflow,
)


def activities(sessions: SessionFactory, settings: Settings) -> list[Callable[..., Any]]:
    """Every activity, bound to its dependencies."""
    audit = AuditActivities(sessions)
    password_reset = PasswordResetActivities(
        sessions, settings, mailer_from_settings(settings, sessions)
    )
    return [
        audit.verify_audit_chain,
        audit.record_tamper_finding,
        password_reset.send_password_reset_email,
        password_reset.apply_password_reset,
        *onboarding_activities(sessions, settings),
        *billing_activities(sessions, settings),
        *reconciliation_activities(sessions, settings),
        *connection_activities(sessions, settings),
        *sync_activities(sessions, settings),
        *publishing_activities(sessions, settings),
        *task_activities(sessions, settings),
        *agent_activities(sessions, settings),
        *playbook_activities(sessions, settings),
    ]


def onboarding_activities(sessions: SessionFactory, settings: Settings) -> list[Callable[..., Any]]:
    """Tenant onboarding and the generic approval."""
    mailer = mailer_from_settings(settings, sessions)
    onboarding = OnboardingActivities(sessions, mailer, settings)
    approval = ApprovalActivities(sessions, mailer, settings)
    return [
        onboarding.find_similar_tenants,
        onboarding.transition_tenant,
        onboarding.send_welcome_email,
        approval.record_approval,
        approval.notify_approvers,
    ]


def billing_activities(sessions: SessionFactory, settings: Settings) -> list[Callable[..., Any]]:
    """The billing lifecycle (Stripe through the gateway) and usage metering."""
    mailer = mailer_from_settings(settings, sessions)
    billing = BillingActivities(sessions, mailer, settings, gateway_from_settings(settings))
    return [
        billing.provision_tenant_billing,
        billing.ensure_plan_price,
        billing.ensure_customer,
        billing.create_subscription,
        billing.fetch_subscription,
        billing.fetch_invoice,
        billing.update_subscription,
        billing.preview_plan_change,
        billing.update_seats,
        billing.plan_excesses,
        billing.create_setup_intent,
        billing.set_default_payment_method,
        billing.fetch_payment_method,
        billing.detach_payment_method,
        billing.pay_open_invoices,
        billing.apply_billing_transition,
        billing.record_billing_failure,
        billing.load_billing_state,
        billing.record_invoice,
        billing.record_invoice_adjustment,
        billing.send_billing_notice,
        billing.send_operator_notice,
        billing.record_usage,
        billing.report_usage,
        billing.ensure_usage_schedule,
        billing.remove_usage_schedule,
        StorageMetering(sessions, storage_from_settings(settings)).measure_storage,
    ]


def reconciliation_activities(
    sessions: SessionFactory, settings: Settings
) -> list[Callable[..., Any]]:
    """Billing reconciliation: the subscriptions projection against Stripe."""
    reconciliation = ReconciliationActivities(sessions, settings, gateway_from_settings(settings))
    return [
        reconciliation.list_subscriptions,
        reconciliation.check_subscription,
        reconciliation.repair_subscription,
        reconciliation.unrepaired,
        reconciliation.report_reconciliation,
    ]


def connection_activities(sessions: SessionFactory, settings: Settings) -> list[Callable[..., Any]]:
    """Tenants' connections to their own systems (credentials through the secret store)."""
    connections = ConnectionActivities(
        sessions,
        settings,
        secret_store_from_settings(settings),
        mailer_from_settings(settings, sessions),
    )
    return [
        connections.check_credentials,
        connections.exchange_authorization_code,
        connections.adopt_credentials,
        connections.discard_staged_credentials,
        connections.record_connection,
        connections.notify_auth_failure,
        connections.disconnect,
        connections.write_record,
    ]


def sync_activities(sessions: SessionFactory, settings: Settings) -> list[Callable[..., Any]]:
    """Connector sync between a tenant's connections (credentials through the secret store)."""
    sync = SyncActivities(
        sessions,
        settings,
        secret_store_from_settings(settings),
        mailer_from_settings(settings, sessions),
    )
    return [
        sync.begin_sync_run,
        sync.sync_page,
        sync.commit_sync_page,
        sync.finish_sync_run,
        sync.halt_failing_sync,
        sync.suspend_sync,
    ]


def publishing_activities(sessions: SessionFactory, settings: Settings) -> list[Callable[..., Any]]:
    """Content publishing to tenants' CMS connections (images from object storage)."""
    publishing = PublishingActivities(
        sessions, settings, secret_store_from_settings(settings), storage_from_settings(settings)
    )
    return [
        publishing.push_featured_image,
        publishing.resolve_terms,
        publishing.write_post,
        publishing.verify_post,
        publishing.unpublish_post,
        publishing.check_connection,
        publishing.record_content,
    ]


def task_activities(sessions: SessionFactory, settings: Settings) -> list[Callable[..., Any]]:
    """Tasks: business-hours deadlines, routing, the projection and notices."""
    tasks = TaskActivities(sessions, mailer_from_settings(settings, sessions), settings)
    return [
        tasks.plan_sla,
        tasks.sla_used,
        tasks.route_task,
        tasks.route_task_to,
        tasks.record_task,
        tasks.notify_task,
    ]


def agent_activities(sessions: SessionFactory, settings: Settings) -> list[Callable[..., Any]]:
    """AI agents: their steps, tool calls on tenants' connections, and the runs' projections."""
    agents = AgentActivities(sessions, settings, secret_store_from_settings(settings))
    return [
        agents.plan_agent_step,
        agents.call_agent_tool,
        agents.record_agent_run,
        agents.chat_turn,
        agents.record_agent_chat,
    ]


def playbook_activities(sessions: SessionFactory, settings: Settings) -> list[Callable[..., Any]]:
    """Playbooks: their action steps, waiting for what they publish, and the runs' listing."""
    playbooks = PlaybookActivities(sessions, settings, secret_store_from_settings(settings))
    return [
        playbooks.playbook_action,
        playbooks.await_publication,
        playbooks.record_playbook_run,
    ]
