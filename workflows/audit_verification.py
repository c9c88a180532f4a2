"""Audit verification: check one tenant's hash-chained audit log and report tampering."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.audit import AuditActivities, TamperFinding
    from core.search import BIZ_STATUS
    from models.audit import ChainReport

PROCESS = "audit_verification"


def workflow_id(tenant_id: uuid.UUID) -> str:
    return f"audit-verify:{tenant_id}"


@workflow.defn
class AuditVerificationWorkflow:
    """Verify a tenant's audit chain; a broken chain is recorded on the platform chain.

    ``BizStatus`` goes ``verifying`` → ``intact`` or ``tampered``.
    """

    def __init__(self) -> None:
        self._status = "verifying"

    @workflow.run
    async def run(self, tenant_id: uuid.UUID) -> ChainReport:
        """Run the verification and return the chain report."""
        workflow.upsert_search_attributes([BIZ_STATUS.value_set(self._status)])
        workflow.set_current_details("verifying the audit chain")
        report = await workflow.execute_activity_method(
            AuditActivities.verify_audit_chain,
            tenant_id,
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(minutes=1),
            summary="walk the tenant's audit chain",
        )
        if report.first_broken_seq is not None:
            info = workflow.info()
            await workflow.execute_activity_method(
                AuditActivities.record_tamper_finding,
                TamperFinding(
                    tenant_id=tenant_id,
                    first_broken_seq=report.first_broken_seq,
                    workflow_id=info.workflow_id,
                    run_id=info.run_id,
                ),
                start_to_close_timeout=timedelta(seconds=30),
                summary="record the tamper finding on the platform chain",
            )
        self._status = "intact" if report.intact else "tampered"
        workflow.set_current_details(f"the chain is {self._status} ({report.rows} rows)")
        workflow.upsert_search_attributes([BIZ_STATUS.value_set(self._status)])
        return report

    @workflow.query
    def status(self) -> str:
        """``verifying``, ``intact`` or ``tampered``."""
        return self._status
