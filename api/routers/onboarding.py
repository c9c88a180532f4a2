"""Tenant onboarding's HTTP surface: the caller's tenant, its wizard, documents and submit.

Every route works on the caller's own tenant; the workflow id is derived from the access
token, never taken from the client. The wizard's rules live in the workflow's update
validators: refused updates become 404 / 409 / 422 here and nothing is written.
"""

from __future__ import annotations

import uuid
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, status
from pydantic import BaseModel, ValidationError
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api import workflow_calls
from api.deps import (
    CurrentPrincipal,
    SessionDep,
    SettingsDep,
    StorageDep,
    TemporalDep,
    require_role,
)
from api.workflow_calls import IdempotencyKey, update_id
from connectors.storage import upload_problem
from core import search
from core.errors import Conflict, NotFound, Unprocessable
from core.plans import ensure_sold
from core.security import Principal
from core.settings import Settings
from models.approval import DeadlinePolicy
from models.billing import BillingInterval
from models.onboarding import (
    Document,
    DocumentCheck,
    DocumentRequest,
    DocumentUpload,
    OnboardingInput,
    OnboardingState,
    OnboardingStatus,
    OnboardingStep,
    PlanStep,
    StepData,
    Submission,
    sealed_key,
)
from models.tenant import Tenant, TenantStatus
from models.user import Role
from workflows.onboarding import (
    INVALID_DOCUMENT,
    INVALID_STEP_DATA,
    ONBOARDING_CLOSED,
    ONBOARDING_INCOMPLETE,
    PROCESS,
    UNKNOWN_DOCUMENT,
    OnboardingWorkflow,
    workflow_id,
)

router = APIRouter(prefix="/api/v1", tags=["onboarding"])
TenantAdmin = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN))]
Onboarding = WorkflowHandle[OnboardingWorkflow, OnboardingStatus]


def onboarding_input(settings: Settings, tenant_id: uuid.UUID) -> OnboardingInput:
    """The workflow's input: deadlines and limits are fixed from settings when it starts."""
    return OnboardingInput(
        tenant_id=tenant_id,
        approval_policy=DeadlinePolicy(
            remind_after=settings.onboarding_remind_after,
            escalate_after=settings.onboarding_escalate_after,
            expire_after=settings.onboarding_expire_after,
        ),
        abandon_after=settings.onboarding_abandon_after,
        document_max_bytes=settings.document_max_bytes,
        max_documents=settings.max_documents,
        document_upload_window=timedelta(seconds=settings.document_url_seconds),
    )


async def start_onboarding(client: Client, settings: Settings, tenant_id: uuid.UUID) -> str:
    """Start the tenant's onboarding (or find the running one) and return its workflow id."""
    async with workflow_calls.deadline(settings):
        handle = await client.start_workflow(
            OnboardingWorkflow.run,
            onboarding_input(settings, tenant_id),
            **_start_options(settings, tenant_id),
        )
    return handle.id


def _start_options(settings: Settings, tenant_id: uuid.UUID) -> dict[str, Any]:
    """How an onboarding starts: one per tenant, found when running, never started twice."""
    return {
        "id": workflow_id(tenant_id),
        "task_queue": settings.temporal_task_queue,
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        # A finished onboarding (approved, rejected, abandoned) is never started again.
        "id_reuse_policy": WorkflowIDReusePolicy.REJECT_DUPLICATE,
        "static_summary": f"Onboarding of tenant {tenant_id}",
        "search_attributes": TypedSearchAttributes(
            [
                SearchAttributePair(search.TENANT_ID, str(tenant_id)),
                SearchAttributePair(search.BIZ_PROCESS, PROCESS),
                SearchAttributePair(search.BIZ_STATUS, OnboardingStatus.IN_PROGRESS.value),
            ]
        ),
    }


class TenantView(BaseModel):
    tenant_id: uuid.UUID
    name: str
    slug: str
    status: str
    plan: str | None


class DocumentUploadTicket(BaseModel):
    document_id: uuid.UUID
    upload_url: str
    method: Literal["PUT"]
    headers: dict[str, str]


@router.get("/tenant", summary="The caller's tenant", tags=["tenant"])
async def get_tenant(principal: CurrentPrincipal, session: SessionDep) -> TenantView:
    """Name, slug, status and plan of the caller's own tenant."""
    tenant = await session.get(Tenant, principal.tenant_id)
    if tenant is None:
        raise NotFound("Your tenant no longer exists.")
    return TenantView(
        tenant_id=tenant.id,
        name=tenant.name,
        slug=tenant.slug,
        status=tenant.status.value,
        plan=tenant.plan,
    )


class Wizard:
    """The caller's onboarding workflow, reached only through the caller's own tenant.

    Queries and updates are bounded by the call deadline; updates carry the id derived from
    the request's ``Idempotency-Key`` and start the onboarding when it never started
    (registration could not reach Temporal after committing the account).
    """

    def __init__(
        self, client: Client, settings: Settings, principal: Principal, key: str | None
    ) -> None:
        self.client, self.settings, self.principal, self.key = client, settings, principal, key
        self.handle: Onboarding = client.get_workflow_handle_for(
            OnboardingWorkflow.run, workflow_id(principal.tenant_id)
        )

    async def state(self) -> OnboardingState:
        """The workflow's state query; 404 when the tenant has no onboarding."""
        try:
            state: OnboardingState = await workflow_calls.query(
                self.handle, OnboardingWorkflow.state, settings=self.settings
            )
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise NotFound("Your tenant has no onboarding.") from None
            raise
        return state

    async def update(self, update: Any, argument: BaseModel) -> OnboardingState:
        """Send a wizard update (starting the onboarding if it never started); the workflow's
        refusals become the matching problems."""
        name = getattr(update, "__name__", str(update))
        uid = update_id(name, self.principal, self.key)
        try:
            async with workflow_calls.deadline(self.settings):
                try:
                    state: OnboardingState = await self.handle.execute_update(
                        update, argument, id=uid
                    )
                except RPCError as err:
                    if err.status != RPCStatusCode.NOT_FOUND:
                        raise
                    # Never started (or finished: then the start is refused below).
                    state = await self._update_with_start(update, argument, uid)
        except WorkflowUpdateFailedError as err:
            if isinstance(err.cause, ApplicationError):
                _refuse(err.cause)
            raise
        except WorkflowAlreadyStartedError:
            raise Conflict("The onboarding has finished and cannot be changed.") from None
        return state

    async def _update_with_start(
        self, update: Any, argument: BaseModel, uid: str | None
    ) -> OnboardingState:
        tenant_id = self.principal.tenant_id
        start = WithStartWorkflowOperation(
            OnboardingWorkflow.run,
            onboarding_input(self.settings, tenant_id),
            **_start_options(self.settings, tenant_id),
        )
        state: OnboardingState = await self.client.execute_update_with_start_workflow(
            update, argument, start_workflow_operation=start, id=uid
        )
        return state


async def wizard(
    principal: CurrentPrincipal, client: TemporalDep, settings: SettingsDep, key: IdempotencyKey
) -> Wizard:
    return Wizard(client, settings, principal, key)


WizardDep = Annotated[Wizard, Depends(wizard)]


@router.get("/onboarding", summary="The onboarding wizard's state")
async def get_onboarding(
    principal: CurrentPrincipal, onboarding: WizardDep, session: SessionDep
) -> OnboardingState:
    """Status, current step, filled steps, missing steps, documents and the approval.

    A tenant still in ``onboarding`` whose workflow never started (registration could not
    reach Temporal after committing) gets it started here.
    """
    try:
        return await onboarding.state()
    except NotFound:
        tenant = await session.get(Tenant, principal.tenant_id)
        if tenant is None or tenant.status != TenantStatus.ONBOARDING:
            raise
    await start_onboarding(onboarding.client, onboarding.settings, principal.tenant_id)
    return await onboarding.state()


@router.put("/onboarding/steps/{step}", summary="Save one wizard step")
async def save_step(
    step: str,
    data: Annotated[dict[str, Any], Body()],
    principal: TenantAdmin,
    onboarding: WizardDep,
    settings: SettingsDep,
) -> OnboardingState:
    """Replace the step's data. 422 with field errors when invalid (a plan asked for by the
    year that is not sold so, too), 409 once submitted."""
    if step not in OnboardingStep.__members__.values():
        raise NotFound(f"There is no onboarding step {step!r}.")
    if step == OnboardingStep.PLAN:
        _sold(settings, data)
    step_data = StepData(step=OnboardingStep(step), data=data)
    return await onboarding.update(OnboardingWorkflow.save_step, step_data)


def _sold(settings: Settings, data: dict[str, Any]) -> None:
    """422 for a plan asked for by the year that is sold monthly only (other faults are the
    step's validation's)."""
    with suppress(ValidationError):
        chosen = PlanStep.model_validate(data)
        ensure_sold(settings.billing_plans, chosen.plan_id, BillingInterval(chosen.interval))


@router.post(
    "/onboarding/documents",
    status_code=status.HTTP_201_CREATED,
    summary="Ask for a supporting document's upload URL",
)
async def request_document_upload(
    body: DocumentRequest, principal: TenantAdmin, onboarding: WizardDep, storage: StorageDep
) -> DocumentUploadTicket:
    """Announce the document to the workflow, then hand out a short-lived upload URL.

    A retry with the same ``Idempotency-Key`` announces the same document.
    """
    key = update_id("expect_document", principal, onboarding.key)
    document_id = uuid.uuid5(uuid.NAMESPACE_URL, key) if key else uuid.uuid4()
    upload = DocumentUpload(
        **body.model_dump(),
        document_id=document_id,
        storage_key=f"tenants/{principal.tenant_id}/onboarding/{document_id}",
    )
    await onboarding.update(OnboardingWorkflow.expect_document, upload)
    target = await storage.upload_target(upload.storage_key, upload.content_type, upload.size)
    return DocumentUploadTicket(
        document_id=document_id, upload_url=target.url, method="PUT", headers=target.headers
    )


@router.post(
    "/onboarding/documents/{document_id}/complete",
    summary="Check an uploaded document and keep it",
)
async def complete_document_upload(
    document_id: uuid.UUID,
    principal: TenantAdmin,
    onboarding: WizardDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> OnboardingState:
    """Seal the uploaded object (move it where no upload URL reaches), check it (size, type
    by its magic bytes) and record it.

    A document that fails the checks is removed: 422. One whose upload window passed with
    nothing uploaded frees its slot: 422. Completing a stored document again changes nothing.
    """
    state = await onboarding.state()
    document = _announced(state, document_id)
    if document.stored:
        return state
    sealed = sealed_key(document.storage_key)
    stored = await storage.seal(document.storage_key, sealed)
    if stored is None:
        if _upload_window_passed(document, settings):
            await _forget(onboarding, document)
            raise Unprocessable("The upload window has passed; announce the document again.")
        raise Unprocessable("Nothing has been uploaded for this document yet.")
    problem = upload_problem(document.content_type, stored, settings.document_max_bytes)
    if problem is not None:
        await storage.delete(sealed)
        await _forget(onboarding, document)
        raise Unprocessable(problem)
    check = DocumentCheck(
        document_id=document_id, accepted=True, size=stored.size, sealed_key=sealed
    )
    return await onboarding.update(OnboardingWorkflow.settle_document, check)


async def _forget(onboarding: Wizard, document: Document) -> None:
    check = DocumentCheck(document_id=document.document_id, accepted=False)
    await onboarding.update(OnboardingWorkflow.settle_document, check)


def _upload_window_passed(document: Document, settings: Settings) -> bool:
    if document.announced_at is None:
        return False
    window = timedelta(seconds=settings.document_url_seconds)
    return datetime.now(UTC) >= document.announced_at + window


@router.post(
    "/onboarding/submit",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Submit the wizard for approval",
)
async def submit_onboarding(principal: TenantAdmin, onboarding: WizardDep) -> OnboardingState:
    """Hand the application in; 409 with ``missing`` when a step is not filled."""
    submission = Submission(submitted_by=principal.user_id)
    return await onboarding.update(OnboardingWorkflow.submit, submission)


def _announced(state: OnboardingState, document_id: uuid.UUID) -> Document:
    found = next((d for d in state.documents if d.document_id == document_id), None)
    if found is None:
        raise NotFound(f"No document {document_id} in your application.")
    return found


def _refuse(cause: ApplicationError) -> None:
    """Translate the workflow's refusal types (see ``workflows/onboarding.py``)."""
    if cause.type == INVALID_STEP_DATA:
        errors = [{**error, "loc": ["body", *error["loc"]]} for error in cause.details[0]]
        raise Unprocessable("The step has invalid fields.", errors=errors)
    if cause.type == INVALID_DOCUMENT:
        raise Unprocessable(cause.message)
    if cause.type == UNKNOWN_DOCUMENT:
        raise NotFound(cause.message)
    if cause.type == ONBOARDING_INCOMPLETE:
        raise Conflict("The wizard is incomplete.", missing=list(cause.details[0]))
    if cause.type == ONBOARDING_CLOSED:
        raise Conflict(cause.message)
