"""Playbooks over HTTP: the playbooks shipped, checking a document, and runs. A run is a
``PlaybookWorkflow`` (``playbook:{run_id}``): starting one is a workflow start, pause, resume
and cancel are its updates, one run is its query, the listing reads ``playbook_runs``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError

from api import workflow_calls
from api.billing_guard import read_only_guard
from api.deps import CurrentPrincipal, SessionDep, SettingsDep, TemporalDep, require_role
from api.pagination import newest_first
from api.routers.agents import run_config
from api.tenancy import scoped
from api.workflow_calls import Entity, IdempotencyKey, entity_dependency, update_id
from core.errors import Conflict, NotFound, Unprocessable
from core.search import start_options
from core.security import Principal
from core.settings import Settings
from models.agents import AGENTS
from models.playbooks import (
    PLAYBOOKS,
    AgentStep,
    PlaybookControl,
    PlaybookDocument,
    PlaybookRun,
    PlaybookStart,
    PlaybookState,
    PlaybookStatus,
    parse_document,
)
from models.user import Role
from workflows.playbook import NOT_RUNNING, PROCESS, PlaybookWorkflow, workflow_id

router = APIRouter(prefix="/api/v1/playbooks", tags=["playbooks"], dependencies=[read_only_guard])
TenantAdmin = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN))]
_MAX_YAML = 100_000


class DocumentRequest(BaseModel):
    """A playbook document, as JSON (``document``) or YAML text (``document_yaml``)."""

    document: dict[str, Any] | None = None
    document_yaml: str | None = Field(default=None, max_length=_MAX_YAML)

    @model_validator(mode="after")
    def _one(self) -> DocumentRequest:
        if (self.document is None) == (self.document_yaml is None):
            raise ValueError("give either document or document_yaml")
        return self

    def parsed(self) -> PlaybookDocument:
        """The document; 422 naming the step that fails validation."""
        data: Any = self.document
        if self.document_yaml is not None:
            try:
                data = yaml.safe_load(self.document_yaml)
            except yaml.YAMLError as exc:
                raise Unprocessable(f"The YAML cannot be read: {exc}") from None
        try:
            return parse_document(data)
        except ValueError as exc:
            raise Unprocessable(f"The playbook is invalid: {exc}") from None


class RunRequest(BaseModel):
    """A run of a shipped playbook (``playbook_id``) or of your own document."""

    playbook_id: str | None = Field(default=None, max_length=64)
    document: dict[str, Any] | None = None
    document_yaml: str | None = Field(default=None, max_length=_MAX_YAML)
    input: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> RunRequest:
        sources = (self.playbook_id, self.document, self.document_yaml)
        if sum(source is not None for source in sources) != 1:
            raise ValueError("give one of playbook_id, document or document_yaml")
        return self


class PlaybookList(BaseModel):
    items: list[PlaybookDocument]


class RunListItem(BaseModel):
    run_id: uuid.UUID
    playbook_id: str
    status: PlaybookStatus
    current: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class RunPage(BaseModel):
    items: list[RunListItem]
    next_cursor: str | None


@router.get("", summary="The playbooks shipped")
async def list_playbooks(principal: CurrentPrincipal) -> PlaybookList:
    """Each a document you can run as it is, or start from for your own."""
    return PlaybookList(items=list(PLAYBOOKS.values()))


@router.post("/validate", summary="Check a playbook document")
async def validate_playbook(body: DocumentRequest, principal: CurrentPrincipal) -> PlaybookDocument:
    """The document as it will run; 422 naming the step (and field) that is wrong."""
    return body.parsed()


@router.post("/runs", status_code=status.HTTP_202_ACCEPTED, summary="Start a playbook run")
async def start_run(
    body: RunRequest,
    principal: TenantAdmin,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
    key: IdempotencyKey,
) -> PlaybookState:
    """404 for an unknown ``playbook_id``; 422 for a document that fails validation or an
    input that lacks (or adds to) the playbook's inputs; 409 when an agent it runs is
    disabled or lacks its model provider. A retry with the same ``Idempotency-Key`` answers
    with the same run."""
    document = _document(body)
    given = body.input
    missing = sorted(set(document.inputs) - set(given))
    extra = sorted(set(given) - set(document.inputs))
    if missing or extra:
        raise Unprocessable(
            "The input does not fit the playbook's inputs.",
            errors=[_input_error(name, "missing") for name in missing]
            + [_input_error(name, "not an input of the playbook") for name in extra],
        )
    uid = update_id("start_playbook", principal, key)
    run_id = uuid.uuid5(uuid.NAMESPACE_URL, uid) if uid else uuid.uuid4()
    start = PlaybookStart(
        run_id=run_id,
        tenant_id=principal.tenant_id,
        started_by=principal.user_id,
        created_at=datetime.now(UTC),
        document=document,
        input=given,
        agents=await _agent_configs(session, principal, settings, document),
    )
    operation = WithStartWorkflowOperation(
        PlaybookWorkflow.run,
        start,
        **start_options(
            settings,
            workflow_id=workflow_id(run_id),
            tenant_id=principal.tenant_id,
            process=PROCESS,
            status=PlaybookStatus.RUNNING.value,
            summary=f"Playbook {document.id} {run_id}",
        ),
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
    )
    async with workflow_calls.deadline(settings):
        state: PlaybookState = await client.execute_update_with_start_workflow(
            PlaybookWorkflow.listed, start_workflow_operation=operation, id=uid
        )
    return state


def _document(body: RunRequest) -> PlaybookDocument:
    """The shipped playbook or the document given (the request holds exactly one)."""
    if body.playbook_id is not None:
        found = PLAYBOOKS.get(body.playbook_id)
        if found is None:
            raise NotFound(f"No playbook {body.playbook_id}.")
        return found
    return DocumentRequest(document=body.document, document_yaml=body.document_yaml).parsed()


def _input_error(name: str, message: str) -> dict[str, Any]:
    return {"loc": ["body", "input", name], "msg": message, "type": "value_error"}


async def _agent_configs(
    session: AsyncSession, principal: Principal, settings: Settings, document: PlaybookDocument
) -> dict[str, Any]:
    """The tenant's configuration of each agent the playbook runs (409 as for a run)."""
    agent_ids = sorted({s.agent_id for s in document.steps if isinstance(s, AgentStep)})
    return {
        agent_id: await run_config(session, principal, settings, AGENTS[agent_id])
        for agent_id in agent_ids
    }


@router.get("/runs", summary="Your tenant's playbook runs")
async def list_runs(
    principal: CurrentPrincipal,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> RunPage:
    """Newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    query = scoped(select(PlaybookRun), PlaybookRun, principal)
    page, following = await newest_first(
        session, query, PlaybookRun.created_at, PlaybookRun.id, limit, cursor
    )
    return RunPage(
        items=[
            RunListItem(
                run_id=row.id,
                playbook_id=row.playbook_id,
                status=row.status,
                current=row.current,
                error=row.error,
                created_at=row.created_at,
                updated_at=row.updated_at,
                finished_at=row.finished_at,
            )
            for row in page
        ],
        next_cursor=following,
    )


def _refuse(cause: ApplicationError) -> None:
    """Translate the workflow's refusal (see ``workflows/playbook.py``)."""
    if cause.type == NOT_RUNNING:
        raise Conflict(cause.message)


RunsDep = Annotated[
    Entity[PlaybookState],
    Depends(
        entity_dependency(
            PlaybookRun,
            workflow_id=workflow_id,
            state_query=PlaybookWorkflow.state,
            refuse=_refuse,
            view=lambda state: state,
        )
    ),
]


@router.get("/runs/{playbook_run_id}", summary="One playbook run")
async def get_run(playbook_run_id: uuid.UUID, runs: RunsDep) -> PlaybookState:
    """Status, the current step, each step gone through (when, whether it went well, where it
    led) and the steps' results."""
    return await runs.state(playbook_run_id)


@router.post("/runs/{playbook_run_id}/pause", summary="Pause a playbook run")
async def pause_run(
    playbook_run_id: uuid.UUID, principal: TenantAdmin, runs: RunsDep
) -> PlaybookState:
    """It stops before its next step (a step under way finishes); 409 unless running."""
    return await runs.update(
        playbook_run_id, PlaybookWorkflow.pause, PlaybookControl(by=principal.user_id)
    )


@router.post("/runs/{playbook_run_id}/resume", summary="Resume a paused playbook run")
async def resume_run(
    playbook_run_id: uuid.UUID, principal: TenantAdmin, runs: RunsDep
) -> PlaybookState:
    """409 unless paused."""
    return await runs.update(
        playbook_run_id, PlaybookWorkflow.resume, PlaybookControl(by=principal.user_id)
    )


@router.post("/runs/{playbook_run_id}/cancel", summary="Cancel a playbook run")
async def cancel_run(
    playbook_run_id: uuid.UUID, principal: TenantAdmin, runs: RunsDep
) -> PlaybookState:
    """It ends now: a wait or a pending approval is cancelled, nothing more runs; 409 once it
    has ended."""
    return await runs.update(
        playbook_run_id, PlaybookWorkflow.cancel, PlaybookControl(by=principal.user_id)
    )
