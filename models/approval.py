"""Approvals: the generic human-in-the-loop decision, and its pending-queue projection.

:class:`ApprovalRequest` starts an ``ApprovalWorkflow``; the workflow writes its
:class:`ApprovalRecord` into the ``approvals`` table on every state change, and returns an
:class:`ApprovalOutcome` to the process that asked.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, str_enum
from models.user import Role


class ApprovalKind(StrEnum):
    """What is being approved; each kind is asked for by one process."""

    TENANT_ONBOARDING = "tenant_onboarding"
    CONTENT_REVIEW = "content_review"
    AGENT_ACTION = "agent_action"  # an agent's result that writes to a tenant's system
    PLAYBOOK_STEP = "playbook_step"  # a playbook's approval step


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    CHANGES_REQUESTED = "changes_requested"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"  # the requesting process ended (cancelled) before a decision


# Facts only the deciders see: what the checks found about other tenants. The applicant's
# own view of its approval never shows them (nor the identities of the staff who decide).
SIMILAR_TENANTS_FACT = "similar_tenants"
DECIDER_ONLY_FACTS = frozenset({SIMILAR_TENANTS_FACT})


class Verdict(StrEnum):
    """What a decider may say (expiry is the workflow's own decision)."""

    APPROVE = "approve"
    REJECT = "reject"
    REQUEST_CHANGES = "request_changes"


VERDICT_STATUS = {
    Verdict.APPROVE: ApprovalStatus.APPROVED,
    Verdict.REJECT: ApprovalStatus.REJECTED,
    Verdict.REQUEST_CHANGES: ApprovalStatus.CHANGES_REQUESTED,
}


class DeadlinePolicy(BaseModel):
    """When to remind the deciders, escalate to a wider group, and give up; each counted from
    the request."""

    remind_after: timedelta = timedelta(hours=24)
    escalate_after: timedelta = timedelta(hours=48)
    expire_after: timedelta = timedelta(days=7)

    @model_validator(mode="after")
    def _in_order(self) -> DeadlinePolicy:
        if not timedelta(0) < self.remind_after < self.escalate_after < self.expire_after:
            raise ValueError(
                "deadlines must grow: 0 < remind_after < escalate_after < expire_after"
            )
        return self


class Attachment(BaseModel):
    """A stored file the deciders may open (through a short-lived download URL)."""

    document_id: uuid.UUID
    filename: str
    content_type: str
    size: int
    storage_key: str


class ApprovalRequest(BaseModel):
    """What to decide, who decides, and by when. ``subject`` never holds personal data."""

    approval_id: uuid.UUID
    kind: ApprovalKind
    tenant_id: uuid.UUID
    subject: str = Field(max_length=300)
    decider_role: Role
    policy: DeadlinePolicy = DeadlinePolicy()
    facts: dict[str, str] = Field(default_factory=dict)
    attachments: list[Attachment] = Field(default_factory=list)


class DecisionRequest(BaseModel):
    """A decider's verdict; rejecting or requesting changes needs a reason."""

    decision: Verdict
    reason: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _reason_when_not_approving(self) -> DecisionRequest:
        if self.reason is not None:
            self.reason = self.reason.strip() or None
        if self.decision is not Verdict.APPROVE and self.reason is None:
            raise ValueError(f"a reason is required to {self.decision.value.replace('_', ' ')}")
        return self


class Decision(DecisionRequest):
    """The verdict with who gave it (checked by the API, recorded by the workflow)."""

    decided_by: uuid.UUID
    decider_role: Role


ApprovalEventName = Literal[
    "requested",
    "reminded",
    "escalated",
    "approved",
    "rejected",
    "changes_requested",
    "expired",
    "withdrawn",
]


class ApprovalEvent(BaseModel):
    """One line of an approval's history."""

    at: datetime
    event: ApprovalEventName
    by: uuid.UUID | None = None
    role: Role | None = None
    reason: str | None = None


class ApprovalRecord(BaseModel):
    """The whole state of one approval: the projection row, and what the query returns."""

    approval_id: uuid.UUID
    workflow_id: str
    kind: ApprovalKind
    tenant_id: uuid.UUID
    subject: str
    decider_role: Role
    status: ApprovalStatus
    requested_at: datetime
    due_at: datetime
    escalated_at: datetime | None = None
    decided_at: datetime | None = None
    decided_by: uuid.UUID | None = None
    reason: str | None = None
    facts: dict[str, str] = Field(default_factory=dict)
    attachments: list[Attachment] = Field(default_factory=list)
    history: list[ApprovalEvent] = Field(default_factory=list)


class ApprovalOutcome(BaseModel):
    """What the approval returns to the process that asked for it."""

    approval_id: uuid.UUID
    status: ApprovalStatus
    reason: str | None = None
    decided_by: uuid.UUID | None = None
    decided_at: datetime


class ApprovalNotice(BaseModel):
    """A reminder or escalation e-mail to the deciders; the key is fixed by the workflow."""

    approval_id: uuid.UUID
    kind: Literal["reminder", "escalation"]
    idempotency_key: str


class Approval(Base):
    """The pending-queue projection: one row per approval, written only by its workflow."""

    __tablename__ = "approvals"
    __table_args__ = (
        # The queue: oldest first within a status, keyset-paginated on (requested_at, id).
        Index("ix_approvals_queue", "status", "requested_at", "id"),
        Index("ix_approvals_tenant_queue", "tenant_id", "status", "requested_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(200))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[ApprovalKind] = mapped_column(str_enum(ApprovalKind))
    subject: Mapped[str] = mapped_column(String(300))
    decider_role: Mapped[Role] = mapped_column(str_enum(Role))
    status: Mapped[ApprovalStatus] = mapped_column(str_enum(ApprovalStatus))
    requested_at: Mapped[datetime]
    due_at: Mapped[datetime]
    escalated_at: Mapped[datetime | None]
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[uuid.UUID | None]
    reason: Mapped[str | None] = mapped_column(Text)
    facts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attachments: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
