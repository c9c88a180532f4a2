"""Deploys must not break running workflows: every committed history replays on today's code.

The histories under ``tests/histories`` were recorded from the deployed code (``make
histories``). A change that makes one of them fail here would fail the workflows running in
production the same way (a non-determinism error on their next task): put the change behind
``workflow.patched`` instead, and never re-record a history to make this test pass.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from tests.histories import history_files, load, replay_converter, workflow_type
from workers.registry import WORKFLOWS

with workflow.unsafe.imports_passed_through():
    from core.search import BIZ_STATUS
    from models.audit import ChainReport

HISTORIES = history_files()
# The states the recorder drives each workflow type to; a lost file is a lost guarantee.
EXPECTED = {
    "onboarding-mid-wizard",
    "onboarding-pending-approval",
    "onboarding-approved",
    "onboarding-approval-expired",
    "onboarding-changes-requested",
    "onboarding-rejected",
    "onboarding-abandoned",  # before the final status: the patch's old branch
    "onboarding-abandoned-final-status",
    "onboarding-cancelled-pending-approval",
    "onboarding-continued-as-new-first-run",
    "onboarding-continued-as-new-next-run",
    "approval-pending",
    "approval-reminded",
    "approval-escalated",
    "approval-expired",
    "approval-approved",
    "approval-changes-requested-after-reminder",
    "approval-rejected",
    "approval-withdrawn",
    "billing-trialing",
    "billing-active",
    "billing-past-due",
    "billing-suspended",
    "billing-reactivated-by-card",
    "billing-plan-changed-and-cancel-scheduled",
    "billing-cancelled",
    "billing-retention-ended",
    "billing-continued-as-new-first-run",
    "billing-continued-as-new-next-run",
    "billing-trial-extended",
    "billing-operator-suspended",
    "billing-operator-unsuspended",
    "billing-payment-method-removed",
    "billing-refunded",  # a partial refund of a paid invoice, recorded once
    "billing-disputed",  # a dispute opened: admins and operators told
    "billing-credit-noted",
    "billing-plan-change-scheduled",  # a downgrade kept for the period's end
    "billing-plan-changed-at-period-end",
    "billing-seats-counted",  # a plan priced per user bills the members
    "billing-reconciliation-repaired",  # drift repaired, a refused read counted; continued as new
    "billing-reconciliation-reported",
    "password-reset-pending",
    "password-reset-done",
    "password-reset-expired",
    "password-reset-requested",
    "password-reset-renewed",
    "password-reset-renewed-done",
    "password-reset-undeliverable",
    "invitation-pending",
    "audit-verification-intact",
    "audit-verification-tampered",
    "usage-report-sent",
    "connection-refused",
    "connection-connected",
    "connection-tested",
    "connection-disconnected",
    "connection-consent-expired",
    "connection-write-created",
    "connection-write-found",
    "sync-completed",
    "sync-continued-as-new-first-run",
    "sync-continued-as-new-next-run",
    "sync-auth-failed",
    "sync-failed",  # a failed run that does not yet halt the profile
    "sync-halted",
    "sync-two-way-conflict",  # both legs of a two-way run, a conflict won by the target
    "publish-draft-edited",
    "publish-changes-requested",
    "publish-scheduled",
    "publish-published",
    "publish-updated-and-unpublished",
    "publish-not-reconnected",
    "publish-continued-as-new",
    "task-breached",
    "task-done",
    "task-escalated",
    "task-done-by-agent",
    "task-routed-to-agent",
    "task-routed-then-escalated",
    "agent-run-no-action",
    "agent-run-awaiting-review",
    "agent-run-approved",
    "agent-run-rejected",
    "agent-run-review-expired",
    "agent-run-failed",
    "agent-run-model",
    "agent-run-token-budget",
    "agent-chat",
    "agent-chat-idle",
    "playbook-lead-hot",
    "playbook-cancelled",
    "playbook-blog-published",
    "playbook-blog-rejected",
    "publish-from-playbook",
    # Each business process's run counted once as workflow_runs usage.
    "sync-run-counted",
    "publish-run-counted",
    "task-run-counted",
    "agent-run-counted",
    "agent-chat-run-counted",
    "playbook-run-counted",
}


@pytest.fixture(scope="module")
def replayer() -> Replayer:
    """The worker's workflows, sandboxed as the worker runs them, with the project's converter."""
    return Replayer(workflows=WORKFLOWS, data_converter=replay_converter())


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays(replayer: Replayer, path: Path) -> None:
    result = await replayer.replay_workflow(load(path), raise_on_replay_failure=False)
    if result.replay_failure is not None:
        pytest.fail(
            f"{path.name} no longer replays: the change breaks running workflows; guard it "
            f"with workflow.patched (do not re-record): {result.replay_failure}",
            pytrace=False,
        )


def test_every_workflow_type_and_state_has_a_history() -> None:
    recorded = {workflow_type(load(path)) for path in HISTORIES}
    registered = {str(workflow._Definition.must_from_class(cls).name) for cls in WORKFLOWS}
    assert registered <= recorded, f"no history for {sorted(registered - recorded)}"
    missing = EXPECTED - {path.stem for path in HISTORIES}
    assert not missing, f"histories missing: {sorted(missing)} (make histories)"


# --- The guard works: an incompatible change fails, a patched one replays -----------------


@workflow.defn(name="AuditVerificationWorkflow")
class PausingVerification:
    """The audit verification as it would be with a pause added before the check: one new
    timer command where the recorded history scheduled the activity."""

    @workflow.run
    async def run(self, tenant_id: uuid.UUID) -> ChainReport:
        """Pause, then verify (the intact chain: no finding to record)."""
        workflow.upsert_search_attributes([BIZ_STATUS.value_set("verifying")])
        await workflow.sleep(timedelta(seconds=5))
        return await _verify_chain(tenant_id)


@workflow.defn(name="AuditVerificationWorkflow")
class PatchedPausingVerification:
    """The same change behind ``workflow.patched``: runs that started before it skip the
    pause, so their histories still replay."""

    @workflow.run
    async def run(self, tenant_id: uuid.UUID) -> ChainReport:
        """Pause only in runs started by the new code, then verify."""
        workflow.upsert_search_attributes([BIZ_STATUS.value_set("verifying")])
        if workflow.patched("audit-verification-pause"):
            await workflow.sleep(timedelta(seconds=5))
        return await _verify_chain(tenant_id)


async def _verify_chain(tenant_id: uuid.UUID) -> ChainReport:
    report: ChainReport = await workflow.execute_activity(
        "verify_audit_chain",
        tenant_id,
        start_to_close_timeout=timedelta(minutes=5),
        result_type=ChainReport,
    )
    workflow.upsert_search_attributes([BIZ_STATUS.value_set("intact")])
    return report


def _variant_replayer(variant: type) -> Replayer:
    # The variants live in this test module, which imports more than a workflow module may;
    # determinism does not depend on the sandbox, so they replay without it.
    return Replayer(
        workflows=[variant],
        data_converter=replay_converter(),
        workflow_runner=UnsandboxedWorkflowRunner(),
    )


async def test_an_incompatible_change_is_caught() -> None:
    history = load(next(p for p in HISTORIES if p.stem == "audit-verification-intact"))
    with pytest.raises(workflow.NondeterminismError):
        await _variant_replayer(PausingVerification).replay_workflow(history)


async def test_the_same_change_behind_a_patch_replays() -> None:
    history = load(next(p for p in HISTORIES if p.stem == "audit-verification-intact"))
    result = await _variant_replayer(PatchedPausingVerification).replay_workflow(history)
    assert result.replay_failure is None
