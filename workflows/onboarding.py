"""Tenant onboarding: the wizard, the checks on submit, the approval, and provisioning."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.billing import BillingActivities
    from activities.onboarding import OnboardingActivities
    from core.search import BIZ_PROCESS, BIZ_STATUS, TENANT_ID
    from models.approval import (
        SIMILAR_TENANTS_FACT,
        ApprovalKind,
        ApprovalOutcome,
        ApprovalRequest,
        ApprovalStatus,
        Attachment,
    )
    from models.billing import BillingInterval, ProvisionRequest
    from models.onboarding import (
        EDITABLE,
        STEP_MODELS,
        ApprovalView,
        Document,
        DocumentCheck,
        DocumentUpload,
        DuplicateQuery,
        OnboardingInput,
        OnboardingState,
        OnboardingStatus,
        OnboardingStep,
        PlanId,
        SimilarTenant,
        StepData,
        Submission,
        TenantTransition,
        WelcomeEmail,
        WizardState,
    )
    from models.tenant import TenantStatus
    from models.user import Role
    from workflows import approval

PROCESS = "onboarding"
# Error types of refused updates; the API maps each to its HTTP status.
INVALID_STEP_DATA = "InvalidStepData"  # 422, details: the field errors
INVALID_DOCUMENT = "InvalidDocument"  # 422
UNKNOWN_DOCUMENT = "UnknownDocument"  # 404
ONBOARDING_CLOSED = "OnboardingClosed"  # 409: submitted, or finished
ONBOARDING_INCOMPLETE = "OnboardingIncomplete"  # 409, details: the missing steps

_ACTIVITY_TIMEOUT = timedelta(seconds=30)
# How long a notice (e-mail) is retried before it is given up and logged.
_NOTICE_WINDOW = timedelta(hours=1)


def workflow_id(tenant_id: uuid.UUID) -> str:
    return f"onboarding:{tenant_id}"


def field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors in the shape of the API's ``errors`` field (``loc``, ``msg``, ``type``)."""
    return [
        {"loc": [str(part) for part in error["loc"]], "msg": error["msg"], "type": error["type"]}
        for error in exc.errors()
    ]


@workflow.defn
class OnboardingWorkflow:
    """A new tenant's way from registration to an active account.

    The applicant fills the wizard (``company``, ``goals``, ``presence``, ``plan``) and uploads
    supporting documents, each a validated update, then submits. On submit the tenant becomes
    ``pending_approval``, the checks run (similar existing tenants), and an
    :class:`~workflows.approval.ApprovalWorkflow` child asks platform staff to decide:

    - **approve**: the tenant is provisioned once (``active`` with its plan, billing, welcome
      e-mail, audit rows) and the run ends ``approved``;
    - **reject**: the tenant is ``rejected`` and the run ends;
    - **request changes** or **expiry**: the wizard opens again (``changes_requested`` or
      ``expired``) and a new submit asks for a new approval.

    An application nobody submits within ``abandon_after`` ends ``abandoned`` (final: nothing
    reopens it) with the tenant ``cancelled``. ``BizStatus`` follows the onboarding status.
    """

    @workflow.init
    def __init__(self, start: OnboardingInput) -> None:
        self._input = start
        self._status = OnboardingStatus.IN_PROGRESS
        self._steps: dict[OnboardingStep, dict[str, Any]] = {}
        self._documents: dict[uuid.UUID, Document] = {}
        self._approval: ApprovalView | None = None
        self._submission: Submission | None = None
        self._abandon_at: datetime | None = None
        if start.wizard is not None:  # a continued run
            self._status = start.wizard.status
            self._steps = dict(start.wizard.steps)
            self._documents = {d.document_id: d for d in start.wizard.documents}
            self._approval = start.wizard.approval
            self._abandon_at = start.wizard.abandon_at

    @workflow.run
    async def run(self, start: OnboardingInput) -> OnboardingStatus:
        """Wizard until submit, then approval; repeat until approved, rejected or abandoned."""
        self._publish_status()
        while True:
            submission = await self._wait_for_submission()
            if submission is None:
                await self._abandon()
                break
            outcome = await self._review(submission)
            if outcome.status is ApprovalStatus.APPROVED:
                await self._provision(outcome)
                break
            if outcome.status is ApprovalStatus.REJECTED:
                await self._reject(outcome)
                break
            await self._reopen(outcome)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._status

    # --- The wizard -----------------------------------------------------------------------

    @workflow.update
    def save_step(self, step: StepData) -> OnboardingState:
        """Store one wizard page (replacing what it held); returns the new state."""
        model = STEP_MODELS[step.step].model_validate(step.data)
        self._steps[step.step] = model.model_dump(mode="json", exclude_none=True)
        return self.state()

    @save_step.validator
    def _check_step(self, step: StepData) -> None:
        """The wizard is open and the page's data is valid."""
        self._require_editable()
        try:
            STEP_MODELS[step.step].model_validate(step.data)
        except ValidationError as exc:
            raise ApplicationError(
                f"the {step.step.value} step has invalid fields",
                field_errors(exc),
                type=INVALID_STEP_DATA,
            ) from None

    @workflow.update
    def expect_document(self, upload: DocumentUpload) -> OnboardingState:
        """Announce a supporting document about to be uploaded to ``storage_key``; earlier
        announcements whose upload window passed without an upload are forgotten."""
        for document in [d for d in self._documents.values() if not self._holds_slot(d)]:
            del self._documents[document.document_id]
        self._documents[upload.document_id] = Document(
            **upload.model_dump(), announced_at=workflow.now()
        )
        return self.state()

    def _holds_slot(self, document: Document) -> bool:
        """Stored, or announced and its upload window still open."""
        if document.stored or document.announced_at is None:
            return True
        return workflow.now() < document.announced_at + self._input.document_upload_window

    @expect_document.validator
    def _check_upload(self, upload: DocumentUpload) -> None:
        """The wizard is open, the document is small enough, and there is room for it."""
        self._require_editable()
        if upload.size > self._input.document_max_bytes:
            raise ApplicationError(
                f"a document may have at most {self._input.document_max_bytes} bytes",
                type=INVALID_DOCUMENT,
            )
        if upload.document_id in self._documents:
            raise ApplicationError("this document is already announced", type=INVALID_DOCUMENT)
        if sum(map(self._holds_slot, self._documents.values())) >= self._input.max_documents:
            raise ApplicationError(
                f"an application has at most {self._input.max_documents} documents",
                type=INVALID_DOCUMENT,
            )

    @workflow.update
    def settle_document(self, check: DocumentCheck) -> OnboardingState:
        """Keep an uploaded document that passed the checks; forget one that did not."""
        if check.accepted:
            document = self._documents[check.document_id]
            document.stored = True
            document.size = check.size if check.size is not None else document.size
            document.storage_key = check.sealed_key or document.storage_key
        else:
            self._documents.pop(check.document_id, None)
        return self.state()

    @settle_document.validator
    def _check_settlement(self, check: DocumentCheck) -> None:
        """The wizard is open and the document was announced."""
        self._require_editable()
        if check.document_id not in self._documents:
            raise ApplicationError(
                f"no document {check.document_id} in this application", type=UNKNOWN_DOCUMENT
            )

    @workflow.update
    def submit(self, submission: Submission) -> OnboardingState:
        """Hand the completed wizard in for approval; the checks and the approval follow."""
        self._submission = submission
        self._set_status(OnboardingStatus.PENDING_APPROVAL)
        return self.state()

    @submit.validator
    def _check_submission(self, submission: Submission) -> None:
        """The wizard is open and every step is filled."""
        self._require_editable()
        missing = self._missing()
        if missing:
            raise ApplicationError(
                f"the wizard is incomplete: {', '.join(missing)}",
                [step.value for step in missing],
                type=ONBOARDING_INCOMPLETE,
            )

    @workflow.query
    def state(self) -> OnboardingState:
        """What the frontend renders: status, the next step, the filled steps, the documents
        and the current approval."""
        missing = self._missing()
        return OnboardingState(
            workflow_id=workflow.info().workflow_id,
            tenant_id=self._input.tenant_id,
            status=self._status,
            editable=self._status in EDITABLE,
            current_step=missing[0] if missing else None,
            steps=dict(self._steps),
            missing=missing,
            documents=list(self._documents.values()),
            approval=self._approval,
        )

    def _missing(self) -> list[OnboardingStep]:
        return [step for step in OnboardingStep if step not in self._steps]

    def _require_editable(self) -> None:
        if self._status not in EDITABLE:
            raise ApplicationError(
                f"the application is {self._status.value} and cannot be changed",
                type=ONBOARDING_CLOSED,
            )

    # --- Submission and approval ----------------------------------------------------------

    async def _wait_for_submission(self) -> Submission | None:
        """The next submission, or ``None`` when the wizard stays unsubmitted too long.

        A wizard edited so often that the history grows long continues as a new run.
        """
        if self._abandon_at is None:
            self._abandon_at = workflow.now() + self._input.abandon_after
        remaining = self._abandon_at - workflow.now()
        workflow.set_current_details(
            f"waiting for the wizard's submission until {self._abandon_at:%Y-%m-%d %H:%M} UTC"
        )
        if remaining > timedelta(0):
            try:
                await workflow.wait_condition(
                    lambda: self._submission is not None or self._history_is_long(),
                    timeout=remaining,
                    timeout_summary="application abandoned",
                )
            except TimeoutError:
                # Abandoned, unless a submission was accepted in the same instant.
                workflow.logger.info("no submission within %s", self._input.abandon_after)
        if self._submission is None and self._history_is_long():
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(self._input.model_copy(update={"wizard": self._wizard()}))
        submission, self._submission = self._submission, None
        self._abandon_at = None
        return submission

    def _history_is_long(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self._input.history_limit
        )

    def _wizard(self) -> WizardState:
        assert self._abandon_at is not None
        return WizardState(
            status=self._status,
            steps=self._steps,
            documents=list(self._documents.values()),
            approval=self._approval,
            abandon_at=self._abandon_at,
        )

    async def _review(self, submission: Submission) -> ApprovalOutcome:
        """Mark the tenant pending, run the checks, and wait for the approval's outcome."""
        approval_id = workflow.uuid4()
        self._approval = ApprovalView(approval_id=approval_id, status=ApprovalStatus.PENDING)
        await self._transition(
            TenantStatus.PENDING_APPROVAL,
            "onboarding.submitted",
            key=f"{approval_id}:submitted",
            actor_id=submission.submitted_by,
            data={"approval_id": str(approval_id)},
        )
        similar = await workflow.execute_activity_method(
            OnboardingActivities.find_similar_tenants,
            DuplicateQuery(tenant_id=self._input.tenant_id, legal_name=self._company["legal_name"]),
            start_to_close_timeout=_ACTIVITY_TIMEOUT,
            summary="look for similar existing tenants",
        )
        workflow.set_current_details(f"waiting for approval {approval_id}")
        outcome = await workflow.execute_child_workflow(
            approval.ApprovalWorkflow.run,
            self._approval_request(approval_id, similar),
            id=approval.workflow_id(approval_id),
            # An onboarding that ends takes its pending approval out of the queue.
            parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
            static_summary=f"Tenant onboarding approval {approval_id}",
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(TENANT_ID, str(self._input.tenant_id)),
                    SearchAttributePair(BIZ_PROCESS, approval.PROCESS),
                    SearchAttributePair(BIZ_STATUS, ApprovalStatus.PENDING.value),
                ]
            ),
        )
        self._approval = ApprovalView(
            approval_id=approval_id,
            status=outcome.status,
            reason=outcome.reason,
            decided_at=outcome.decided_at,
        )
        return outcome

    def _approval_request(
        self, approval_id: uuid.UUID, similar: list[SimilarTenant]
    ) -> ApprovalRequest:
        """What the deciders see: the company, its plan, the checks, and the documents."""
        company, goals = self._company, self._steps[OnboardingStep.GOALS]
        plan = self._plan.value
        facts = {
            "legal_name": company["legal_name"],
            "industry": company["industry"],
            "country": company["country"],
            "website": company.get("website", ""),
            "primary_goal": goals["primary_goal"],
            "monthly_budget": f"{goals['monthly_budget']} {goals['currency']}",
            "plan": plan,
            SIMILAR_TENANTS_FACT: "; ".join(
                f"{t.name} ({t.status.value}, {t.tenant_id})" for t in similar
            )
            or "none",
        }
        return ApprovalRequest(
            approval_id=approval_id,
            kind=ApprovalKind.TENANT_ONBOARDING,
            tenant_id=self._input.tenant_id,
            subject=f"New tenant: {company['legal_name']} ({plan})"[:300],
            decider_role=Role.SUPER_ADMIN,
            policy=self._input.approval_policy,
            facts=facts,
            attachments=[
                Attachment.model_validate(document, from_attributes=True)
                for document in self._documents.values()
                if document.stored
            ],
        )

    # --- Outcomes -------------------------------------------------------------------------

    async def _provision(self, outcome: ApprovalOutcome) -> None:
        """Activate the tenant, set up billing, welcome its admins; each effect once, under
        keys fixed by this approval."""
        approval_id = outcome.approval_id
        await self._transition(
            TenantStatus.ACTIVE,
            "tenant.activated",
            key=f"{approval_id}:activated",
            actor_id=outcome.decided_by,
            plan=self._plan,
            data={"approval_id": str(approval_id)},
        )
        await workflow.execute_activity_method(
            BillingActivities.provision_tenant_billing,
            ProvisionRequest(
                tenant_id=self._input.tenant_id,
                plan=self._plan,
                idempotency_key=self._key(f"{approval_id}:billing"),
                interval=BillingInterval(
                    self._steps[OnboardingStep.PLAN].get("interval", BillingInterval.MONTH)
                ),
            ),
            start_to_close_timeout=_ACTIVITY_TIMEOUT,
            summary="provision billing",
        )
        try:
            await workflow.execute_activity_method(
                OnboardingActivities.send_welcome_email,
                WelcomeEmail(
                    tenant_id=self._input.tenant_id,
                    idempotency_key=self._key(f"{approval_id}:welcome"),
                ),
                start_to_close_timeout=timedelta(minutes=2),
                schedule_to_close_timeout=_NOTICE_WINDOW,
                summary="e-mail the welcome",
            )
        except ActivityError as err:
            # The tenant is active either way; the e-mail is not worth holding that up.
            workflow.logger.warning("the welcome e-mail could not be sent: %s", err.cause)
        self._set_status(OnboardingStatus.APPROVED)

    async def _reject(self, outcome: ApprovalOutcome) -> None:
        await self._transition(
            TenantStatus.REJECTED,
            "onboarding.rejected",
            key=f"{outcome.approval_id}:rejected",
            actor_id=outcome.decided_by,
            data={"approval_id": str(outcome.approval_id), "reason": outcome.reason or ""},
        )
        self._set_status(OnboardingStatus.REJECTED)

    async def _reopen(self, outcome: ApprovalOutcome) -> None:
        """Back to the wizard after a change request or an expired approval."""
        changes = outcome.status is ApprovalStatus.CHANGES_REQUESTED
        await self._transition(
            TenantStatus.ONBOARDING,
            "onboarding.changes_requested" if changes else "onboarding.approval_expired",
            key=f"{outcome.approval_id}:{outcome.status.value}",
            actor_id=outcome.decided_by,
            data={"approval_id": str(outcome.approval_id), "reason": outcome.reason or ""},
        )
        self._set_status(
            OnboardingStatus.CHANGES_REQUESTED if changes else OnboardingStatus.EXPIRED
        )

    async def _abandon(self) -> None:
        # First, and terminal: no submission may slip in during the activity below.
        abandoned = workflow.patched("onboarding-abandoned-status")
        self._set_status(OnboardingStatus.ABANDONED if abandoned else OnboardingStatus.EXPIRED)
        await self._transition(
            TenantStatus.CANCELLED,
            "onboarding.abandoned",
            key=f"{workflow.info().run_id}:abandoned",
        )

    # --- Plumbing -------------------------------------------------------------------------

    @property
    def _company(self) -> dict[str, Any]:
        return self._steps[OnboardingStep.COMPANY]

    @property
    def _plan(self) -> PlanId:
        return PlanId(self._steps[OnboardingStep.PLAN]["plan_id"])

    async def _transition(
        self,
        status: TenantStatus,
        action: str,
        *,
        key: str,
        actor_id: uuid.UUID | None = None,
        plan: PlanId | None = None,
        data: dict[str, str] | None = None,
    ) -> None:
        await workflow.execute_activity_method(
            OnboardingActivities.transition_tenant,
            TenantTransition(
                tenant_id=self._input.tenant_id,
                status=status,
                action=action,
                idempotency_key=self._key(key),
                actor_id=actor_id,
                plan=plan,
                data=data or {},
            ),
            start_to_close_timeout=_ACTIVITY_TIMEOUT,
            summary=f"tenant {status.value}: {action}",
        )

    def _key(self, effect: str) -> str:
        """An idempotency key: this workflow and the effect it names."""
        return f"{workflow.info().workflow_id}:{effect}"

    def _set_status(self, status: OnboardingStatus) -> None:
        self._status = status
        self._publish_status()

    def _publish_status(self) -> None:
        workflow.upsert_search_attributes([BIZ_STATUS.value_set(self._status.value)])
