"""Projects and tasks over HTTP, and the tenant's business calendar.

Projects and the calendar are configuration (written here); each task is a ``TaskWorkflow``
(``task:{task_id}``): status changes, assignment, acceptance, priority and comments are its
updates (refusals become 403 / 409 / 422 and change nothing), one task is its query, and the
Kanban and list views read the ``tasks`` projection its activities write.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import ColumnElement, Select, cast, func, select, tuple_
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import (
    WithStartWorkflowOperation,
)
from temporalio.exceptions import ApplicationError

from activities.tasks import task_policy, tenant_calendar
from api import workflow_calls
from api.billing_guard import read_only_guard
from api.deps import (
    CurrentPrincipal,
    SessionDep,
    SettingsDep,
    StorageDep,
    TemporalDep,
    require_role,
)
from api.pagination import decode_cursor, encode_cursor, newest_first
from api.routers.agents import prepare_run
from api.tenancy import owned, scoped
from api.workflow_calls import (
    Entity,
    IdempotencyKey,
    entity_dependency,
    update_id,
)
from connectors.storage import upload_problem
from core.errors import Conflict, Forbidden, NotFound, Unprocessable
from core.search import start_options
from core.security import Principal
from core.settings import Settings
from models.agents import AGENTS, AgentRunStart
from models.onboarding import Document, DocumentCheck, DocumentRequest, DocumentUpload, sealed_key
from models.tasks import (
    ASSIGNABLE,
    MAX_COMMENT_CHARS,
    AcceptCommand,
    AssignCommand,
    Assignee,
    BusinessCalendar,
    CommentCommand,
    Priority,
    PriorityChange,
    Project,
    SlaTarget,
    StatusChange,
    Task,
    TaskEdit,
    TaskEvent,
    TaskFields,
    TaskStart,
    TaskState,
    TaskStatus,
    TenantCalendar,
)
from models.user import Membership, Role, User
from workflows.task import (
    ILLEGAL_TRANSITION,
    NOT_ASSIGNEE,
    PROCESS,
    TASK_CLOSED,
    TOO_MANY_COMMENTS,
    UNKNOWN_ATTACHMENT,
    TaskWorkflow,
    workflow_id,
)

router = APIRouter(prefix="/api/v1", tags=["tasks"], dependencies=[read_only_guard])
Worker = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN, Role.USER))]
TenantAdmin = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN))]


class ProjectMember(BaseModel):
    """A person (``user_id``) or an agent of the directory (``agent_id``) that routing may give
    the project's tasks to, with the skills it has."""

    user_id: uuid.UUID | None = None
    agent_id: str | None = Field(default=None, max_length=64)
    skills: list[str] = Field(default_factory=list, max_length=20)

    @model_validator(mode="after")
    def _one_of(self) -> ProjectMember:
        if (self.user_id is None) == (self.agent_id is None):
            raise ValueError("a member is a person (user_id) or an agent (agent_id)")
        return self


class ProjectRequest(BaseModel):
    """A project: its members (routing picks among them) and its SLA targets per priority
    (business minutes; the defaults for priorities not given)."""

    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=5000)
    members: list[ProjectMember] = Field(default_factory=list, max_length=200)
    sla: dict[Priority, SlaTarget] = Field(default_factory=dict)


class ProjectView(ProjectRequest):
    project_id: uuid.UUID
    created_at: datetime

    @classmethod
    def of(cls, row: Project) -> ProjectView:
        return cls(
            project_id=row.id,
            name=row.name,
            description=row.description,
            members=[ProjectMember.model_validate(m) for m in row.members],
            sla={Priority(k): SlaTarget.model_validate(v) for k, v in row.sla.items()},
            created_at=row.created_at,
        )


class ProjectPage(BaseModel):
    items: list[ProjectView]
    next_cursor: str | None


class AgentAssignment(BaseModel):
    """An agent of the directory and its input (``GET /api/v1/agents/{agent_id}``)."""

    agent_id: str = Field(max_length=64)
    input: dict[str, Any] = Field(default_factory=dict)


#: Text compared in the database (labels, filters): one line, no control characters
#: (PostgreSQL takes no NUL in text or JSON; one in a label would break the tenant's filtering).
_TEXT = r"^[^\x00-\x1f\x7f]+$"
Label = Annotated[str, Field(min_length=1, max_length=64, pattern=_TEXT)]


def _not_past(value: datetime | None) -> datetime | None:
    if value is not None:
        if value.tzinfo is None:
            raise ValueError("due_at needs a time zone")
        if value <= datetime.now(UTC):
            raise ValueError("due_at is in the past")
    return value


class TaskRequest(TaskFields):
    """A new task; ``assignee_id`` (a person) or ``agent`` assigns it directly, otherwise
    routing picks a member."""

    labels: list[Label] = Field(default_factory=list, max_length=20)
    assignee_id: uuid.UUID | None = None
    agent: AgentAssignment | None = None

    @model_validator(mode="after")
    def _one_assignee(self) -> TaskRequest:
        if self.assignee_id is not None and self.agent is not None:
            raise ValueError("assign a person or an agent, not both")
        return self

    _future = field_validator("due_at")(_not_past)


class TaskItem(BaseModel):
    task_id: uuid.UUID
    project_id: uuid.UUID
    title: str
    status: TaskStatus
    priority: Priority
    due_at: datetime | None
    labels: list[str]
    assignee_id: uuid.UUID | None
    assignee_agent_id: str | None = Field(
        default=None, description="the agent holding the task (``assignee_id`` is its run)"
    )
    accepted: bool
    accept_due: datetime | None
    response_due: datetime | None
    resolution_due: datetime | None
    breached: bool
    escalated: bool
    updated_at: datetime

    @classmethod
    def of(cls, row: Task) -> TaskItem:
        return cls.model_validate(
            {**{c: getattr(row, c) for c in cls.model_fields if c != "task_id"}, "task_id": row.id}
        )


class TaskPage(BaseModel):
    items: list[TaskItem]
    next_cursor: str | None


class StatusBody(BaseModel):
    status: TaskStatus


class AssignBody(BaseModel):
    """A person (``assignee_id``) or an agent (``agent``)."""

    assignee_id: uuid.UUID | None = None
    agent: AgentAssignment | None = None

    @model_validator(mode="after")
    def _one_assignee(self) -> AssignBody:
        if (self.assignee_id is None) == (self.agent is None):
            raise ValueError("assign either a person (assignee_id) or an agent")
        return self


class PriorityBody(BaseModel):
    priority: Priority


class TaskEditBody(BaseModel):
    """The fields to change; ``due_at: null`` removes the due date."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, min_length=1, max_length=300)
    description: str | None = Field(default=None, max_length=20_000)
    labels: list[Label] | None = Field(default=None, max_length=20)
    due_at: datetime | None = None

    _future = field_validator("due_at")(_not_past)

    @model_validator(mode="after")
    def _no_nulls(self) -> TaskEditBody:
        for name in ("title", "description", "labels"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class CommentBody(BaseModel):
    body: str = Field(min_length=1, max_length=MAX_COMMENT_CHARS)


# --- Calendar -------------------------------------------------------------------------------


@router.get("/tenant/calendar", summary="Your tenant's business calendar", tags=["tenant"])
async def get_calendar(principal: CurrentPrincipal, session: SessionDep) -> BusinessCalendar:
    """Time zone, working days and hours, holidays: SLA clocks count only this time."""
    return await tenant_calendar(session, principal.tenant_id)


@router.put("/tenant/calendar", summary="Change the business calendar", tags=["tenant"])
async def put_calendar(
    body: BusinessCalendar, principal: TenantAdmin, session: SessionDep
) -> BusinessCalendar:
    """Tasks created from now on count their SLA in it."""
    row = await session.get(TenantCalendar, principal.tenant_id)
    if row is None:
        row = TenantCalendar(tenant_id=principal.tenant_id)
        session.add(row)
    row.calendar = body.model_dump(mode="json")
    await session.commit()
    return body


# --- Projects -------------------------------------------------------------------------------


@router.post("/projects", status_code=status.HTTP_201_CREATED, summary="Create a project")
async def create_project(
    body: ProjectRequest, principal: TenantAdmin, session: SessionDep
) -> ProjectView:
    """Members must be people of your tenant or agents of the directory (422 otherwise)."""
    await _check_members(session, principal, body.members)
    row = Project(
        id=uuid.uuid4(),
        tenant_id=principal.tenant_id,
        name=body.name,
        description=body.description,
        members=[m.model_dump(mode="json", exclude_none=True) for m in body.members],
        sla={k.value: v.model_dump() for k, v in body.sla.items()},
    )
    session.add(row)
    await session.commit()
    return ProjectView.of(row)


@router.get("/projects", summary="Your tenant's projects")
async def list_projects(
    principal: CurrentPrincipal,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ProjectPage:
    """Oldest first."""
    query = scoped(select(Project), Project, principal)
    if cursor is not None:
        query = query.where(tuple_(Project.created_at, Project.id) > tuple_(*decode_cursor(cursor)))
    rows = list(
        await session.scalars(query.order_by(Project.created_at, Project.id).limit(limit + 1))
    )
    page = rows[:limit]
    more = len(rows) > limit
    return ProjectPage(
        items=[ProjectView.of(row) for row in page],
        next_cursor=encode_cursor(page[-1].created_at, page[-1].id) if more else None,
    )


@router.get("/projects/{project_id}", summary="One project")
async def get_project(
    project_id: uuid.UUID, principal: CurrentPrincipal, session: SessionDep
) -> ProjectView:
    return ProjectView.of(await owned(session, Project, project_id, principal))


@router.put("/projects/{project_id}", summary="Change a project")
async def put_project(
    project_id: uuid.UUID, body: ProjectRequest, principal: TenantAdmin, session: SessionDep
) -> ProjectView:
    """Members and SLA targets apply to tasks created from now on."""
    row = await owned(session, Project, project_id, principal)
    await _check_members(session, principal, body.members)
    row.name, row.description = body.name, body.description
    row.members = [m.model_dump(mode="json", exclude_none=True) for m in body.members]
    row.sla = {k.value: v.model_dump() for k, v in body.sla.items()}
    await session.commit()
    return ProjectView.of(row)


class ProjectEvent(TaskEvent):
    task_id: uuid.UUID
    task_title: str


#: The tasks whose records make a project's timeline: the most recently changed ones.
_TIMELINE_TASKS = 50


@router.get("/projects/{project_id}/timeline", summary="What happened in a project lately")
async def project_timeline(
    project_id: uuid.UUID,
    principal: CurrentPrincipal,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[ProjectEvent]:
    """Newest first: the events its 50 most recently changed tasks recorded."""
    await owned(session, Project, project_id, principal)
    rows = await session.scalars(
        select(Task.id)
        .where(Task.tenant_id == principal.tenant_id, Task.project_id == project_id)
        .order_by(Task.updated_at.desc(), Task.id.desc())
        .limit(_TIMELINE_TASKS)
    )
    states: list[TaskState] = await asyncio.gather(
        *(
            workflow_calls.query(
                client.get_workflow_handle(workflow_id(task_id)),
                TaskWorkflow.state,
                settings=settings,
            )
            for task_id in rows
        )
    )
    events = [
        ProjectEvent(**event.model_dump(), task_id=state.task_id, task_title=state.fields.title)
        for state in states
        for event in state.events
    ]
    events.sort(key=lambda event: event.at, reverse=True)
    return events[:limit]


async def _check_members(
    session: AsyncSession, principal: Principal, members: list[ProjectMember]
) -> None:
    unknown = sorted({m.agent_id for m in members if m.agent_id and m.agent_id not in AGENTS})
    if unknown:
        raise Unprocessable(
            f"No such agents: {', '.join(unknown)}.",
            errors=[{"loc": ["body", "members"], "msg": "unknown agent", "type": "value_error"}],
        )
    people = [m.user_id for m in members if m.user_id is not None]
    await _check_people(session, principal, people, "members")


async def _check_people(
    session: AsyncSession, principal: Principal, user_ids: list[uuid.UUID], field: str
) -> None:
    """422 unless every id is an active person (tenant admin or user) of the caller's tenant;
    another tenant's user is as unknown as a made-up id."""
    if not user_ids:
        return
    found = set(
        await session.scalars(
            select(Membership.user_id)
            .join(User, User.id == Membership.user_id)
            .where(
                Membership.tenant_id == principal.tenant_id,
                Membership.user_id.in_(user_ids),
                Membership.role.in_(ASSIGNABLE),
                User.is_active,
            )
        )
    )
    unknown = [str(u) for u in user_ids if u not in found]
    if unknown:
        raise Unprocessable(
            f"Not people of your tenant who can take tasks: {', '.join(unknown)}.",
            errors=[{"loc": ["body", field], "msg": "unknown user", "type": "value_error"}],
        )


# --- Tasks ----------------------------------------------------------------------------------


@router.post(
    "/projects/{project_id}/tasks", status_code=status.HTTP_201_CREATED, summary="Create a task"
)
async def create_task(
    project_id: uuid.UUID,
    body: TaskRequest,
    principal: Worker,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
    key: IdempotencyKey,
) -> TaskState:
    """A ``todo`` task of the project, with its SLA clocks running. 422 for an unknown
    assignee (or one of another tenant) or a due date in the past. A retry with the same
    ``Idempotency-Key`` answers with the same task."""
    project = await owned(session, Project, project_id, principal)
    uid = update_id("create_task", principal, key)
    task_id = uuid.uuid5(uuid.NAMESPACE_URL, uid) if uid else uuid.uuid4()
    assignee, run = await _assignee(session, principal, settings, body, task_id)
    start = TaskStart(
        state=TaskState(
            task_id=task_id,
            tenant_id=principal.tenant_id,
            project_id=project.id,
            created_by=principal.user_id,
            created_at=datetime.now(UTC),
            fields=TaskFields.model_validate(body.model_dump(exclude={"assignee_id"})),
        ),
        policy=await task_policy(session, settings, project),
        assignee=assignee,
        agent_run=run,
    )
    options = start_options(
        settings,
        workflow_id=workflow_id(task_id),
        tenant_id=principal.tenant_id,
        process=PROCESS,
        status=TaskStatus.TODO.value,
        summary=f"Task {task_id}",
    )
    operation = WithStartWorkflowOperation(TaskWorkflow.run, start, **options)
    async with workflow_calls.deadline(settings):
        state: TaskState = await client.execute_update_with_start_workflow(
            TaskWorkflow.listed, start_workflow_operation=operation, id=uid
        )
    return state


@router.get("/tasks", summary="Your tenant's tasks (list and Kanban)")
async def list_tasks(
    principal: CurrentPrincipal,
    session: SessionDep,
    project_id: uuid.UUID | None = None,
    status: TaskStatus | None = None,
    assignee_id: uuid.UUID | None = None,
    assignee_agent_id: Annotated[str | None, Query(max_length=64, pattern=_TEXT)] = None,
    label: Annotated[str | None, Query(max_length=100, pattern=_TEXT)] = None,
    due_before: datetime | None = None,
    breached: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> TaskPage:
    """Most recently changed first; filters combine (``assignee_agent_id``: tasks an agent of
    the directory holds)."""
    query: Select[Any] = scoped(select(Task), Task, principal)
    for column, value in (
        (Task.project_id, project_id),
        (Task.status, status),
        (Task.assignee_id, assignee_id),
        (Task.assignee_agent_id, assignee_agent_id),
        (Task.breached, breached),
    ):
        if value is not None:
            query = query.where(column == value)
    if due_before is not None:
        query = query.where(Task.due_at < due_before)
    if label is not None:
        query = query.where(_has_label(session, label))
    rows, next_cursor = await newest_first(session, query, Task.updated_at, Task.id, limit, cursor)
    return TaskPage(items=[TaskItem.of(row) for row in rows], next_cursor=next_cursor)


def _has_label(session: AsyncSession, label: str) -> ColumnElement[bool]:
    """``labels`` (a JSON list) holds ``label``: in the database, so that a page is filtered
    before it is cut."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(Task.labels, JSONB).contains([label])
    values = func.json_each(Task.labels).table_valued("value")
    return select(values.c.value).where(values.c.value == label).exists()


TasksDep = Annotated[
    Entity[TaskState],
    Depends(
        entity_dependency(
            Task,
            workflow_id=workflow_id,
            state_query=TaskWorkflow.state,
            refuse=lambda cause: _refuse(cause),  # defined below, with the routes
            view=TaskState.model_validate,
        )
    ),
]


@router.get("/tasks/{task_id}", summary="One task with its comments and SLA clocks")
async def get_task(task_id: uuid.UUID, tasks: TasksDep) -> TaskState:
    return await tasks.state(task_id)


@router.get("/tasks/{task_id}/timeline", summary="A task's record of events")
async def task_timeline(task_id: uuid.UUID, tasks: TasksDep) -> list[TaskEvent]:
    """Oldest first, as the task's workflow recorded them."""
    return (await tasks.state(task_id)).events


@router.post("/tasks/{task_id}/status", summary="Move a task")
async def change_status(
    task_id: uuid.UUID, body: StatusBody, principal: Worker, tasks: TasksDep
) -> TaskState:
    """409 for a move the task's status does not allow (the allowed ones are named)."""
    change = StatusChange(status=body.status, by=principal.user_id)
    return await tasks.update(task_id, TaskWorkflow.change_status, change)


@router.post("/tasks/{task_id}/assign", summary="Assign a task to a person or an agent")
async def assign_task(
    task_id: uuid.UUID, body: AssignBody, principal: Worker, tasks: TasksDep
) -> TaskState:
    """A person of your tenant (``assignee_id``) or an agent of the directory (``agent``); 422
    naming the field for anyone else. A person has the acceptance window to accept; an agent
    accepts by starting its run."""
    await tasks.handle(task_id)  # another tenant's task: 404 before anything about the body
    assignee, run = await _assignee(tasks.session, principal, tasks.settings, body, uuid.uuid4())
    assert assignee is not None
    command = AssignCommand(assignee=assignee, by=principal.user_id, agent_run=run)
    return await tasks.update(task_id, TaskWorkflow.assign, command)


async def _assignee(
    session: AsyncSession,
    principal: Principal,
    settings: Settings,
    body: TaskRequest | AssignBody,
    run_seed: uuid.UUID,
) -> tuple[Assignee | None, AgentRunStart | None]:
    """The person (checked to be one of your tenant's) or the agent (its run prepared with
    your tenant's configuration of it) the body names, if any; 422 naming the field for an
    unknown person or agent."""
    if body.assignee_id is not None:
        await _check_people(session, principal, [body.assignee_id], "assignee_id")
        return Assignee(id=body.assignee_id), None
    if body.agent is None:
        return None, None
    if body.agent.agent_id not in AGENTS:
        raise Unprocessable(
            f"No agent {body.agent.agent_id} in the directory.",
            errors=[
                {
                    "loc": ["body", "agent", "agent_id"],
                    "msg": "unknown agent",
                    "type": "value_error",
                }
            ],
        )
    run_id = uuid.uuid5(run_seed, body.agent.agent_id)
    run = await prepare_run(
        session, principal, settings, body.agent.agent_id, body.agent.input, run_id
    )
    return Assignee(kind="agent", id=run_id, agent_id=run.agent_id), run


@router.post("/tasks/{task_id}/accept", summary="Accept a task assigned to you")
async def accept_task(task_id: uuid.UUID, principal: Worker, tasks: TasksDep) -> TaskState:
    """403 unless you are its assignee; 409 once accepted."""
    return await tasks.update(task_id, TaskWorkflow.accept, AcceptCommand(by=principal.user_id))


@router.post("/tasks/{task_id}/decline", summary="Decline a task assigned to you")
async def decline_task(task_id: uuid.UUID, principal: Worker, tasks: TasksDep) -> TaskState:
    """The next eligible person is asked (or the task escalates)."""
    answer = AcceptCommand(by=principal.user_id, accept=False)
    return await tasks.update(task_id, TaskWorkflow.accept, answer)


@router.put("/tasks/{task_id}/priority", summary="Change a task's priority")
async def change_priority(
    task_id: uuid.UUID, body: PriorityBody, principal: Worker, tasks: TasksDep
) -> TaskState:
    """The SLA deadlines are recomputed from the time already used."""
    change = PriorityChange(priority=body.priority, by=principal.user_id)
    return await tasks.update(task_id, TaskWorkflow.change_priority, change)


@router.patch("/tasks/{task_id}", summary="Edit a task's title, description, labels or due date")
async def edit_task(
    task_id: uuid.UUID, body: TaskEditBody, principal: Worker, tasks: TasksDep
) -> TaskState:
    """Only the fields given change; 422 for a due date in the past, 409 once the task is
    closed. The timeline records which fields changed."""
    edit = TaskEdit(
        by=principal.user_id,
        title=body.title,
        description=body.description,
        labels=body.labels,
        due_at=body.due_at,
        clear_due_at="due_at" in body.model_fields_set and body.due_at is None,
    )
    return await tasks.update(task_id, TaskWorkflow.edit, edit)


@router.post(
    "/tasks/{task_id}/comments", status_code=status.HTTP_201_CREATED, summary="Comment a task"
)
async def comment_task(
    task_id: uuid.UUID, body: CommentBody, principal: Worker, tasks: TasksDep
) -> TaskState:
    """Up to 5,000 characters (422 beyond)."""
    uid = update_id("comment", principal, tasks.key)
    command = CommentCommand(
        comment_id=uuid.uuid5(uuid.NAMESPACE_URL, uid) if uid else uuid.uuid4(),
        body=body.body,
        by=principal.user_id,
    )
    return await tasks.update(task_id, TaskWorkflow.comment, command)


def _refuse(cause: ApplicationError) -> None:
    """Translate the workflow's refusal types (see ``workflows/task.py``)."""
    if cause.type == ILLEGAL_TRANSITION:
        allowed = list(cause.details[0]) if cause.details else []
        raise Conflict(cause.message, allowed=allowed)
    if cause.type == TASK_CLOSED:
        raise Conflict(cause.message)
    if cause.type == NOT_ASSIGNEE:
        raise Forbidden(cause.message)
    if cause.type == TOO_MANY_COMMENTS:
        raise Unprocessable(cause.message)
    if cause.type == UNKNOWN_ATTACHMENT:
        raise NotFound(cause.message)


# --- Attachments ----------------------------------------------------------------------------


class AttachmentTicket(BaseModel):
    attachment_id: uuid.UUID
    upload_url: str
    method: Literal["PUT"]
    headers: dict[str, str]


class DownloadLink(BaseModel):
    url: str
    expires_at: datetime


@router.post(
    "/tasks/{task_id}/attachments",
    status_code=status.HTTP_201_CREATED,
    summary="Ask for an attachment's upload URL",
)
async def request_attachment(
    task_id: uuid.UUID,
    body: DocumentRequest,
    principal: Worker,
    tasks: TasksDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> AttachmentTicket:
    """A PDF, PNG or JPEG up to ``document_max_bytes`` (422 otherwise, or beyond 20 files).
    Upload it to the URL, then complete it; a retry with the same ``Idempotency-Key``
    announces the same file."""
    if body.size > settings.document_max_bytes:
        raise Unprocessable(
            f"The file has {body.size} bytes; at most {settings.document_max_bytes} are allowed."
        )
    uid = update_id("expect_attachment", principal, tasks.key)
    attachment_id = uuid.uuid5(uuid.NAMESPACE_URL, uid) if uid else uuid.uuid4()
    upload = DocumentUpload(
        **body.model_dump(),
        document_id=attachment_id,
        storage_key=f"tenants/{principal.tenant_id}/tasks/{task_id}/{attachment_id}",
    )
    await tasks.update(task_id, TaskWorkflow.expect_attachment, upload)
    target = await storage.upload_target(upload.storage_key, upload.content_type, upload.size)
    return AttachmentTicket(
        attachment_id=attachment_id, upload_url=target.url, method="PUT", headers=target.headers
    )


@router.post(
    "/tasks/{task_id}/attachments/{attachment_id}/complete",
    summary="Check an uploaded attachment and keep it",
)
async def complete_attachment(
    task_id: uuid.UUID,
    attachment_id: uuid.UUID,
    principal: Worker,
    tasks: TasksDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> TaskState:
    """Sealed (out of reach of its upload URL) and checked by its magic bytes and size; one
    that fails the checks is removed (422). Completing a kept file again changes nothing."""
    found = _attachment(await tasks.state(task_id), attachment_id)
    if found.stored:
        return await tasks.state(task_id)
    sealed = sealed_key(found.storage_key)
    stored = await storage.seal(found.storage_key, sealed)
    if stored is None:
        raise Unprocessable("Nothing has been uploaded for this attachment yet.")
    problem = upload_problem(found.content_type, stored, settings.document_max_bytes)
    if problem is not None:
        await storage.delete(sealed)
        refused = DocumentCheck(document_id=attachment_id, accepted=False)
        await tasks.update(task_id, TaskWorkflow.settle_attachment, refused)
        raise Unprocessable(problem)
    check = DocumentCheck(
        document_id=attachment_id, accepted=True, size=stored.size, sealed_key=sealed
    )
    return await tasks.update(task_id, TaskWorkflow.settle_attachment, check)


@router.get("/tasks/{task_id}/attachments/{attachment_id}", summary="An attachment's URL")
async def attachment_url(
    task_id: uuid.UUID,
    attachment_id: uuid.UUID,
    tasks: TasksDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> DownloadLink:
    """A short-lived download URL of a kept attachment."""
    found = _attachment(await tasks.state(task_id), attachment_id)
    if not found.stored:
        raise NotFound(f"Attachment {attachment_id} has not been kept yet.")
    expires_at = datetime.now(UTC) + timedelta(seconds=settings.document_url_seconds)
    url = await storage.download_url(found.storage_key, found.filename, found.content_type)
    return DownloadLink(url=url, expires_at=expires_at)


def _attachment(state: TaskState, attachment_id: uuid.UUID) -> Document:
    found = next((a for a in state.attachments if a.document_id == attachment_id), None)
    if found is None:
        raise NotFound(f"No attachment {attachment_id} on this task.")
    return found
