"""The audit log's HTTP surface: chain verification runs as a workflow."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response, status
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from api import workflow_calls
from api.deps import SessionDep, SettingsDep, TemporalDep, require_role
from core import search
from core.errors import NotFound
from core.security import Principal
from models.audit import AuditEntry, ChainReport, chain_of
from models.user import Membership, Role
from workflows.audit_verification import PROCESS, AuditVerificationWorkflow, workflow_id

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])
MAX_SEQ = 2**63 - 1
TenantAdmin = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN, Role.SUPER_ADMIN))]


class AuditItem(BaseModel):
    seq: int
    action: str
    actor_id: uuid.UUID | None
    ip: str | None
    user_agent: str | None
    data: dict[str, Any]
    created_at: datetime


class AuditPage(BaseModel):
    items: list[AuditItem]
    next_cursor: int | None


_CSV_FIELDS = ["seq", "created_at", "action", "actor_id", "ip", "user_agent", "data"]


def _csv(items: list[AuditItem]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_CSV_FIELDS)
    writer.writeheader()
    for item in items:
        row = item.model_dump(mode="json")
        row["data"] = json.dumps(row["data"], sort_keys=True)
        writer.writerow(row)
    return out.getvalue()


async def _without_staff(
    session: AsyncSession, tenant_id: uuid.UUID, items: list[AuditItem]
) -> list[AuditItem]:
    """A tenant sees its own members as actors; platform staff who acted on it (a decider, an
    operator) stay anonymous, as in its view of its approvals."""
    actors = {item.actor_id for item in items if item.actor_id is not None}
    members = set(
        await session.scalars(
            select(Membership.user_id).where(
                Membership.tenant_id == tenant_id, Membership.user_id.in_(actors)
            )
        )
    )
    return [
        item if item.actor_id in members else item.model_copy(update={"actor_id": None})
        for item in items
    ]


@router.get(
    "",
    summary="The caller's tenant audit log, newest first",
    response_model=AuditPage,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def list_audit(
    principal: TenantAdmin,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        int | None,
        # Bounded like the column (a 64-bit integer): past it the database would fail, not refuse.
        Query(ge=1, le=MAX_SEQ, description="next_cursor of the previous page"),
    ] = None,
    output: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
) -> AuditPage | Response:
    """Keyset-paginated by sequence number; ``format=csv`` downloads the page as CSV."""
    query = (
        select(AuditEntry)
        .where(AuditEntry.chain == chain_of(principal.tenant_id))
        .order_by(AuditEntry.seq.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        query = query.where(AuditEntry.seq < cursor)
    rows = (await session.scalars(query)).all()
    items = [AuditItem.model_validate(row, from_attributes=True) for row in rows[:limit]]
    if not principal.is_super_admin:
        items = await _without_staff(session, principal.tenant_id, items)
    next_cursor = items[-1].seq if len(rows) > limit else None
    if output == "csv":
        return Response(
            _csv(items),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
        )
    return AuditPage(items=items, next_cursor=next_cursor)


class VerificationStarted(BaseModel):
    workflow_id: str
    run_id: str


class Verification(BaseModel):
    workflow_id: str
    status: Literal["running", "completed", "failed"]
    report: ChainReport | None = None


@router.post(
    "/verifications",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Verify the caller's tenant audit chain",
)
async def start_verification(
    principal: TenantAdmin, client: TemporalDep, settings: SettingsDep
) -> VerificationStarted:
    """Start a verification run; while one is running, its handle is returned instead."""
    async with workflow_calls.deadline(settings):
        handle = await client.start_workflow(
            AuditVerificationWorkflow.run,
            principal.tenant_id,
            id=workflow_id(principal.tenant_id),
            task_queue=settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"Audit chain verification of tenant {principal.tenant_id}",
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(search.TENANT_ID, str(principal.tenant_id)),
                    SearchAttributePair(search.BIZ_PROCESS, PROCESS),
                ]
            ),
        )
    return VerificationStarted(workflow_id=handle.id, run_id=handle.result_run_id or "")


@router.get("/verifications/latest", summary="The latest verification of the caller's tenant")
async def latest_verification(
    principal: TenantAdmin, client: TemporalDep, settings: SettingsDep
) -> Verification:
    """State of the most recent run: running, or completed with its chain report."""
    handle = client.get_workflow_handle_for(
        AuditVerificationWorkflow.run, workflow_id(principal.tenant_id)
    )
    async with workflow_calls.deadline(settings):
        try:
            description = await handle.describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise NotFound("No verification has run for this tenant.") from None
            raise
        if description.status == WorkflowExecutionStatus.RUNNING:
            return Verification(workflow_id=handle.id, status="running")
        if description.status == WorkflowExecutionStatus.COMPLETED:
            report = await handle.result()
            return Verification(workflow_id=handle.id, status="completed", report=report)
    return Verification(workflow_id=handle.id, status="failed")
