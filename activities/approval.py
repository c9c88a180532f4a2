"""Approval activities: the pending-queue projection and the deciders' reminder e-mails."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from connectors.mail import Mailer
from core.db import SessionFactory, transaction
from core.settings import Settings
from models.approval import Approval, ApprovalNotice, ApprovalRecord
from models.email import EmailMessage
from models.user import Membership, Role, User


class ApprovalActivities:
    """Activities bound to the application database and the mail port."""

    def __init__(self, sessions: SessionFactory, mailer: Mailer, settings: Settings) -> None:
        self._sessions = sessions
        self._mailer = mailer
        self._settings = settings

    @activity.defn
    async def record_approval(self, record: ApprovalRecord) -> None:
        """Write the approval's whole state into its projection row (an upsert: retries are
        harmless, and the workflow writes its changes one after another)."""
        async with transaction(self._sessions) as session:
            row = await session.get(Approval, record.approval_id)
            if row is None:
                row = Approval(id=record.approval_id)
                session.add(row)
            row.workflow_id = record.workflow_id
            row.tenant_id = record.tenant_id
            row.kind = record.kind
            row.subject = record.subject
            row.decider_role = record.decider_role
            row.status = record.status
            row.requested_at = record.requested_at
            row.due_at = record.due_at
            row.escalated_at = record.escalated_at
            row.decided_at = record.decided_at
            row.decided_by = record.decided_by
            row.reason = record.reason
            row.facts = dict(record.facts)
            row.attachments = [a.model_dump(mode="json") for a in record.attachments]
            row.history = [e.model_dump(mode="json") for e in record.history]

    @activity.defn
    async def notify_approvers(self, notice: ApprovalNotice) -> int:
        """E-mail every decider a reminder (or, escalated, the wider group); once per recipient
        under the workflow's key. Returns how many recipients there are."""
        async with self._sessions() as session:
            approval = await session.get(Approval, notice.approval_id)
            if approval is None:
                raise ApplicationError(
                    f"approval {notice.approval_id} has no projection row", non_retryable=True
                )
            recipients = await _deciders(session, approval, widen=notice.kind == "escalation")
        link = f"{self._settings.public_app_url.rstrip('/')}/approvals/{approval.id}"
        due = approval.due_at.strftime("%Y-%m-%d %H:%M UTC")
        if notice.kind == "escalation":
            subject = f"Escalated: approval overdue: {approval.subject}"
            opening = "This approval has waited past its escalation deadline."
        else:
            subject = f"Reminder: approval waiting: {approval.subject}"
            opening = "This approval is still waiting for a decision."
        body = f"{opening}\n\n{approval.subject}\n\nIt expires at {due}. Decide at {link}\n"
        platform_decision = approval.decider_role is Role.SUPER_ADMIN
        for user_id, address in recipients:
            await self._mailer.send(
                EmailMessage(
                    idempotency_key=f"{notice.idempotency_key}:{user_id}",
                    to=address,
                    subject=subject,
                    body=body,
                    tenant_id=None if platform_decision else approval.tenant_id,
                )
            )
        return len(recipients)


async def _deciders(
    session: AsyncSession, approval: Approval, *, widen: bool
) -> list[tuple[str, str]]:
    """Active users who may decide: platform staff for platform decisions, otherwise the
    tenant's members with the deciding role (and platform staff too when escalating)."""
    query = select(User.id, User.email).join(Membership, Membership.user_id == User.id)
    in_tenant = (Membership.tenant_id == approval.tenant_id) & (
        Membership.role == approval.decider_role
    )
    staff = Membership.role == Role.SUPER_ADMIN
    if approval.decider_role is Role.SUPER_ADMIN:
        query = query.where(staff)
    elif widen:
        query = query.where(in_tenant | staff)
    else:
        query = query.where(in_tenant)
    rows = await session.execute(query.where(User.is_active).order_by(User.email))
    return [(str(user_id), email) for user_id, email in rows]
