"""The audit log's HTTP surface: chain verification runs as a workflow."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, status
from pydantic import BaseModel
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from api.deps import SettingsDep, TemporalDep, require_role
from core import search
from core.errors import NotFound
from core.security import Principal
from models.audit import ChainReport
from models.user import Role
from workflows.audit_verification import PROCESS, AuditVerificationWorkflow, workflow_id

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])
TenantAdmin = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN, Role.SUPER_ADMIN))]


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
    handle = await client.start_workflow(
        AuditVerificationWorkflow.run,
        principal.tenant_id,
        id=workflow_id(principal.tenant_id),
        task_queue=settings.temporal_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(search.TENANT_ID, str(principal.tenant_id)),
                SearchAttributePair(search.BIZ_PROCESS, PROCESS),
            ]
        ),
    )
    return VerificationStarted(workflow_id=handle.id, run_id=handle.result_run_id or "")


@router.get("/verifications/latest", summary="The latest verification of the caller's tenant")
async def latest_verification(principal: TenantAdmin, client: TemporalDep) -> Verification:
    """State of the most recent run: running, or completed with its chain report."""
    handle = client.get_workflow_handle_for(
        AuditVerificationWorkflow.run, workflow_id(principal.tenant_id)
    )
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise NotFound("No verification has run for this tenant.") from None
        raise
    if description.status == WorkflowExecutionStatus.RUNNING:
        return Verification(workflow_id=handle.id, status="running")
    if description.status == WorkflowExecutionStatus.COMPLETED:
        return Verification(workflow_id=handle.id, status="completed", report=await handle.result())
    return Verification(workflow_id=handle.id, status="failed")
