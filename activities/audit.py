"""Audit-log activities: verify a tenant's hash chain, record what a verification found."""

from __future__ import annotations

import uuid

from pydantic import BaseModel
from temporalio import activity

from core import audit
from core.db import SessionFactory, transaction
from models.audit import ChainPosition, ChainReport


class TamperFinding(BaseModel):
    """A broken chain, reported on the platform chain (the tenant's own chain is not trusted)."""

    tenant_id: uuid.UUID
    first_broken_seq: int
    workflow_id: str
    run_id: str


class AuditActivities:
    """Activities bound to the application database."""

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    @activity.defn
    async def verify_audit_chain(self, tenant_id: uuid.UUID) -> ChainReport:
        """Walk the tenant's audit chain and report the first broken row.

        The walk heartbeats its position; a retried attempt resumes from the last one."""
        details = activity.info().heartbeat_details
        since = ChainPosition.model_validate(details[0]) if details else None
        async with self._sessions() as session:
            return await audit.verify(session, tenant_id, since, activity.heartbeat)

    @activity.defn
    async def record_tamper_finding(self, finding: TamperFinding) -> None:
        """Append the finding to the platform chain, once per verification run."""
        async with transaction(self._sessions) as session:
            await audit.append(
                session,
                "audit.tamper_detected",
                tenant_id=None,
                data={
                    "tenant_id": str(finding.tenant_id),
                    "first_broken_seq": finding.first_broken_seq,
                    "workflow_id": finding.workflow_id,
                },
                idempotency_key=f"tamper:{finding.run_id}",
            )
