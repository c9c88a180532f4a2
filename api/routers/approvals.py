"""The pending queue: approvers list approvals, open one, fetch its documents, and decide.

Lists come from the ``approvals`` projection; a decision is an update of the approval's
workflow, whose id is derived from a row the caller may see (``api.tenancy.owned``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from sqlalchemy import Select, select, tuple_
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api import workflow_calls
from api.billing_guard import read_only_guard
from api.deps import MfaPrincipal, SessionDep, SettingsDep, StorageDep, TemporalDep, require_role
from api.pagination import decode_cursor, encode_cursor
from api.tenancy import owned, scoped
from api.workflow_calls import IdempotencyKey, update_id
from core.errors import Conflict, Forbidden, NotFound
from core.security import Principal
from core.settings import Settings
from models.approval import (
    DECIDER_ONLY_FACTS,
    VERDICT_STATUS,
    Approval,
    ApprovalEvent,
    ApprovalKind,
    ApprovalOutcome,
    ApprovalRecord,
    ApprovalStatus,
    Attachment,
    Decision,
    DecisionRequest,
)
from models.user import Role
from workflows.approval import ALREADY_DECIDED, NOT_A_DECIDER, ApprovalWorkflow

# A suspended tenant cannot decide its own approvals (platform staff are never held).
router = APIRouter(prefix="/api/v1/approvals", tags=["approvals"], dependencies=[read_only_guard])
Approver = Annotated[Principal, Depends(require_role(Role.SUPER_ADMIN, Role.TENANT_ADMIN))]


class ApprovalItem(BaseModel):
    approval_id: uuid.UUID
    kind: ApprovalKind
    tenant_id: uuid.UUID
    subject: str
    status: ApprovalStatus
    decider_role: Role
    requested_at: datetime
    due_at: datetime
    escalated_at: datetime | None

    @classmethod
    def of(cls, row: Approval) -> ApprovalItem:
        return cls(
            approval_id=row.id,
            kind=row.kind,
            tenant_id=row.tenant_id,
            subject=row.subject,
            status=row.status,
            decider_role=row.decider_role,
            requested_at=row.requested_at,
            due_at=row.due_at,
            escalated_at=row.escalated_at,
        )


class ApprovalPage(BaseModel):
    items: list[ApprovalItem]
    next_cursor: str | None


class DocumentInfo(BaseModel):
    document_id: uuid.UUID
    filename: str
    content_type: str
    size: int


class ApprovalDetail(ApprovalItem):
    decided_at: datetime | None
    decided_by: uuid.UUID | None
    reason: str | None
    facts: dict[str, str]
    documents: list[DocumentInfo]
    history: list[ApprovalEvent]


class DecisionResult(BaseModel):
    approval_id: uuid.UUID
    status: ApprovalStatus


class DownloadLink(BaseModel):
    url: str
    expires_at: datetime


@router.get("", summary="The approvals queue")
async def list_approvals(
    principal: Approver,
    session: SessionDep,
    status: ApprovalStatus = ApprovalStatus.PENDING,
    kind: ApprovalKind | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> ApprovalPage:
    """Oldest first. ``super_admin`` sees every tenant's approvals, a ``tenant_admin`` its own
    tenant's. Pass ``next_cursor`` back as ``cursor`` for the next page."""
    after = decode_cursor(cursor) if cursor is not None else None
    rows = list(await session.scalars(queue_query(principal, status, kind, after, limit + 1)))
    more = len(rows) > limit
    page = rows[:limit]
    return ApprovalPage(
        items=[ApprovalItem.of(row) for row in page],
        next_cursor=encode_cursor(page[-1].requested_at, page[-1].id) if more else None,
    )


def queue_query(
    principal: Principal,
    status: ApprovalStatus,
    kind: ApprovalKind | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> Select[Approval]:
    """One page of the queue the caller may see, oldest first, after the ``after`` key.

    The keyset ``(requested_at, id)`` follows the queue indexes of ``models/approval.py``, so
    a page costs the same at any depth.
    """
    query = scoped(select(Approval), Approval, principal).where(Approval.status == status)
    if kind is not None:
        query = query.where(Approval.kind == kind)
    if after is not None:
        query = query.where(tuple_(Approval.requested_at, Approval.id) > after)
    return query.order_by(Approval.requested_at, Approval.id).limit(limit)


@router.get("/{approval_id}", summary="One approval with its history")
async def get_approval(
    approval_id: uuid.UUID, principal: Approver, session: SessionDep
) -> ApprovalDetail:
    """The approval, its facts, its documents and every event so far.

    Its deciders see everything; anyone else (the applicant) sees the approval without what
    the checks found about other tenants and without the deciders' identities."""
    row = await owned(session, Approval, approval_id, principal)
    detail = ApprovalDetail(
        **ApprovalItem.of(row).model_dump(),
        decided_at=row.decided_at,
        decided_by=row.decided_by,
        reason=row.reason,
        facts=row.facts,
        documents=[DocumentInfo.model_validate(a) for a in row.attachments],
        history=[ApprovalEvent.model_validate(e) for e in row.history],
    )
    return detail if principal.role is row.decider_role else _applicant_view(detail)


def _applicant_view(detail: ApprovalDetail) -> ApprovalDetail:
    return detail.model_copy(
        update={
            "decided_by": None,
            "facts": {k: v for k, v in detail.facts.items() if k not in DECIDER_ONLY_FACTS},
            "history": [event.model_copy(update={"by": None}) for event in detail.history],
        }
    )


@router.post("/{approval_id}/decision", summary="Decide an approval (two-factor required)")
async def decide_approval(
    approval_id: uuid.UUID,
    body: DecisionRequest,
    principal: MfaPrincipal,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
    key: IdempotencyKey,
) -> DecisionResult:
    """Approve, reject or request changes. 409 once decided; 403 for a role that may not
    decide it. A retry with the same ``Idempotency-Key`` gets the first answer."""
    row = await owned(session, Approval, approval_id, principal)
    if principal.role is not row.decider_role:
        raise Forbidden(f"Only a {row.decider_role.value} may decide this approval.")
    if own_submission(row, principal):
        raise Forbidden("You submitted this item: another reviewer decides it.")
    if row.status is not ApprovalStatus.PENDING:
        if key is not None and _is_own_decision(row, principal, body):
            return DecisionResult(approval_id=row.id, status=row.status)
        raise Conflict(f"This approval is already {row.status.value}.")
    decision = Decision(
        **body.model_dump(), decided_by=principal.user_id, decider_role=principal.role
    )
    handle = client.get_workflow_handle_for(ApprovalWorkflow.run, row.workflow_id)
    record = await _send_decision(handle, decision, settings, update_id("decide", principal, key))
    return DecisionResult(approval_id=record.approval_id, status=record.status)


def own_submission(row: Approval, principal: Principal) -> bool:
    """A review among peers (decided by the role ``user``) that the caller asked for: four
    eyes, so not theirs to decide. Tenant admins, who answer for the tenant, may."""
    return row.decider_role is Role.USER and row.facts.get("submitted_by") == str(principal.user_id)


def _is_own_decision(row: Approval, principal: Principal, body: DecisionRequest) -> bool:
    """The recorded decision is the one this caller asked for (a retried request)."""
    return row.decided_by == principal.user_id and row.status is VERDICT_STATUS[body.decision]


@router.get("/{approval_id}/documents/{document_id}", summary="A document's download URL")
async def document_download_url(
    approval_id: uuid.UUID,
    document_id: uuid.UUID,
    principal: Approver,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> DownloadLink:
    """A short-lived URL to one of the approval's documents, for its deciders."""
    row = await owned(session, Approval, approval_id, principal)
    if principal.role is not row.decider_role:
        raise Forbidden(f"Only a {row.decider_role.value} may open this approval's documents.")
    attachments = [Attachment.model_validate(a) for a in row.attachments]
    found = next((a for a in attachments if a.document_id == document_id), None)
    if found is None:
        raise NotFound(f"No document {document_id} in this approval.")
    expires_at = datetime.now(UTC) + timedelta(seconds=settings.document_url_seconds)
    url = await storage.download_url(found.storage_key, found.filename, found.content_type)
    return DownloadLink(url=url, expires_at=expires_at)


async def _send_decision(
    handle: WorkflowHandle[ApprovalWorkflow, ApprovalOutcome],
    decision: Decision,
    settings: Settings,
    update: str | None,
) -> ApprovalRecord:
    try:
        record: ApprovalRecord = await workflow_calls.execute_update(
            handle, ApprovalWorkflow.decide, decision, settings=settings, update_id=update
        )
        return record
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.type == ALREADY_DECIDED:
            raise Conflict(cause.message) from None
        if isinstance(cause, ApplicationError) and cause.type == NOT_A_DECIDER:
            raise Forbidden(cause.message) from None
        raise
    except RPCError as err:
        # The run has ended (decided or expired) since the row was read.
        if err.status == RPCStatusCode.NOT_FOUND:
            raise Conflict("This approval has already been decided.") from None
        raise
