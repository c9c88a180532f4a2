"""Tenant onboarding's HTTP surface: the caller's tenant, its wizard, documents and submit.

Every route works on the caller's own tenant; the workflow id is derived from the access
token, never taken from the client. The wizard's rules live in the workflow's update
validators: refused updates become 404 / 409 / 422 here and nothing is written.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, NoReturn

from fastapi import APIRouter, Body, Depends, status
from pydantic import BaseModel
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import (
    CurrentPrincipal,
    SessionDep,
    SettingsDep,
    StorageDep,
    TemporalDep,
    require_role,
)
from connectors.storage import ObjectStorage, StoredObject, sniff_type
from core import search
from core.errors import Conflict, NotFound, Unprocessable
from core.security import Principal
from core.settings import Settings
from models.approval import DeadlinePolicy
from models.onboarding import (
    Document,
    DocumentCheck,
    DocumentRequest,
    DocumentUpload,
    OnboardingInput,
    OnboardingState,
    OnboardingStatus,
    OnboardingStep,
    StepData,
    Submission,
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
    )


async def start_onboarding(client: Client, settings: Settings, tenant_id: uuid.UUID) -> str:
    """Start the tenant's onboarding (or find the running one) and return its workflow id."""
    handle = await client.start_workflow(
        OnboardingWorkflow.run,
        onboarding_input(settings, tenant_id),
        id=workflow_id(tenant_id),
        task_queue=settings.temporal_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(search.TENANT_ID, str(tenant_id)),
                SearchAttributePair(search.BIZ_PROCESS, PROCESS),
                SearchAttributePair(search.BIZ_STATUS, OnboardingStatus.IN_PROGRESS.value),
            ]
        ),
    )
    return handle.id


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


@router.get("/onboarding", summary="The onboarding wizard's state")
async def get_onboarding(
    principal: CurrentPrincipal, client: TemporalDep, session: SessionDep, settings: SettingsDep
) -> OnboardingState:
    """Status, current step, filled steps, missing steps, documents and the approval.

    A tenant still in ``onboarding`` whose workflow never started (registration could not
    reach Temporal after committing) gets it started here.
    """
    handle = _handle(client, principal)
    try:
        return await handle.query(OnboardingWorkflow.state)
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
    tenant = await session.get(Tenant, principal.tenant_id)
    if tenant is None or tenant.status != TenantStatus.ONBOARDING:
        raise NotFound("Your tenant has no onboarding.")
    await start_onboarding(client, settings, principal.tenant_id)
    return await _state(handle)


@router.put("/onboarding/steps/{step}", summary="Save one wizard step")
async def save_step(
    step: str,
    data: Annotated[dict[str, Any], Body()],
    principal: TenantAdmin,
    client: TemporalDep,
) -> OnboardingState:
    """Replace the step's data. 422 with field errors when invalid, 409 once submitted."""
    if step not in OnboardingStep.__members__.values():
        raise NotFound(f"There is no onboarding step {step!r}.")
    step_data = StepData(step=OnboardingStep(step), data=data)
    return await _update(_handle(client, principal), OnboardingWorkflow.save_step, step_data)


@router.post(
    "/onboarding/documents",
    status_code=status.HTTP_201_CREATED,
    summary="Ask for a supporting document's upload URL",
)
async def request_document_upload(
    body: DocumentRequest, principal: TenantAdmin, client: TemporalDep, storage: StorageDep
) -> DocumentUploadTicket:
    """Announce the document to the workflow, then hand out a short-lived upload URL."""
    document_id = uuid.uuid4()
    upload = DocumentUpload(
        **body.model_dump(),
        document_id=document_id,
        storage_key=f"tenants/{principal.tenant_id}/onboarding/{document_id}",
    )
    await _update(_handle(client, principal), OnboardingWorkflow.expect_document, upload)
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
    client: TemporalDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> OnboardingState:
    """Check the stored object (exists, size, type by its magic bytes) and record it.

    A document that fails the checks is removed: 422.
    """
    handle = _handle(client, principal)
    document = _announced(await _state(handle), document_id)
    stored = await storage.stat(document.storage_key)
    if stored is None:
        raise Unprocessable("Nothing has been uploaded for this document yet.")
    problem = _document_problem(document, stored, settings.document_max_bytes)
    if problem is not None:
        await _discard(handle, storage, document)
        raise Unprocessable(problem)
    check = DocumentCheck(document_id=document_id, accepted=True, size=stored.size)
    return await _update(handle, OnboardingWorkflow.settle_document, check)


@router.post(
    "/onboarding/submit",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Submit the wizard for approval",
)
async def submit_onboarding(principal: TenantAdmin, client: TemporalDep) -> OnboardingState:
    """Hand the application in; 409 with ``missing`` when a step is not filled."""
    submission = Submission(submitted_by=principal.user_id)
    return await _update(_handle(client, principal), OnboardingWorkflow.submit, submission)


def _handle(client: Client, principal: Principal) -> Onboarding:
    return client.get_workflow_handle_for(OnboardingWorkflow.run, workflow_id(principal.tenant_id))


async def _state(handle: Onboarding) -> OnboardingState:
    try:
        return await handle.query(OnboardingWorkflow.state)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise NotFound("Your tenant has no onboarding.") from None
        raise


def _announced(state: OnboardingState, document_id: uuid.UUID) -> Document:
    found = next((d for d in state.documents if d.document_id == document_id), None)
    if found is None:
        raise NotFound(f"No document {document_id} in your application.")
    return found


def _document_problem(document: Document, stored: StoredObject, max_bytes: int) -> str | None:
    """Why the stored object may not be kept, or ``None`` when it may."""
    if stored.size == 0:
        return "The uploaded document is empty."
    if stored.size > max_bytes:
        return f"The uploaded document has {stored.size} bytes; at most {max_bytes} are allowed."
    found = sniff_type(stored.head)
    if found is None:
        return "The uploaded document is not a PDF, PNG or JPEG file."
    if found != document.content_type:
        return f"The uploaded document is {found}, not {document.content_type} as announced."
    return None


async def _discard(handle: Onboarding, storage: ObjectStorage, document: Document) -> None:
    await storage.delete(document.storage_key)
    check = DocumentCheck(document_id=document.document_id, accepted=False)
    await _update(handle, OnboardingWorkflow.settle_document, check)


async def _update(handle: Onboarding, update: Any, argument: BaseModel) -> OnboardingState:
    """Send a wizard update; a refusal becomes the matching problem."""
    try:
        state: OnboardingState = await handle.execute_update(update, argument)
    except WorkflowUpdateFailedError as err:
        if isinstance(err.cause, ApplicationError):
            _refuse(err.cause)
        raise
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            await _missing_or_finished(handle)
        raise
    return state


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


async def _missing_or_finished(handle: Onboarding) -> NoReturn:
    try:
        await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise NotFound("Your tenant has no onboarding.") from None
        raise
    raise Conflict("The onboarding has finished and cannot be changed.")
