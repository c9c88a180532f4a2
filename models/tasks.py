"""Projects and tasks: the work of a tenant's people, with assignment, acceptance deadlines and
SLA timers in the tenant's business hours.

Each task is a ``TaskWorkflow`` (``task:{task_id}``) holding the task itself (description,
comments, its record of events); the ``tasks`` table is the projection its activities write for
the Kanban and list views and the inbox. Projects and the tenant's business calendar are
configuration, written by the API.
"""

from __future__ import annotations

import uuid
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import JSON, Boolean, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.agents import AgentRunStart
from models.base import Base, Timestamped, str_enum
from models.onboarding import Document
from models.user import Role

MAX_COMMENT_CHARS = 5_000
MAX_COMMENTS = 500
MAX_ATTACHMENTS = 20


class TaskStatus(StrEnum):
    TODO = "todo"
    IN_PROGRESS = "in_progress"
    WAITING = "waiting"  # on someone outside: the SLA clocks pause
    REVIEW = "review"
    DONE = "done"
    CANCELLED = "cancelled"


#: The moves a task may make; anything else is refused with the allowed ones named.
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.TODO: frozenset({TaskStatus.IN_PROGRESS, TaskStatus.WAITING, TaskStatus.CANCELLED}),
    TaskStatus.IN_PROGRESS: frozenset(
        {TaskStatus.WAITING, TaskStatus.REVIEW, TaskStatus.DONE, TaskStatus.CANCELLED}
    ),
    TaskStatus.WAITING: frozenset({TaskStatus.IN_PROGRESS, TaskStatus.CANCELLED}),
    TaskStatus.REVIEW: frozenset({TaskStatus.IN_PROGRESS, TaskStatus.DONE, TaskStatus.CANCELLED}),
    TaskStatus.DONE: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}
TERMINAL = frozenset({TaskStatus.DONE, TaskStatus.CANCELLED})


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class SlaTarget(BaseModel):
    """Business minutes to the first action (response) and to done (resolution)."""

    response_minutes: int = Field(ge=1, le=60 * 24 * 90)
    resolution_minutes: int = Field(ge=1, le=60 * 24 * 365)

    @model_validator(mode="after")
    def _response_first(self) -> SlaTarget:
        if self.response_minutes > self.resolution_minutes:
            raise ValueError("the response target cannot be later than the resolution target")
        return self


#: Roles a task can be assigned to (people who work in the tenant).
ASSIGNABLE = (Role.TENANT_ADMIN, Role.USER)

DEFAULT_SLA: dict[Priority, SlaTarget] = {
    Priority.URGENT: SlaTarget(response_minutes=60, resolution_minutes=8 * 60),
    Priority.HIGH: SlaTarget(response_minutes=4 * 60, resolution_minutes=2 * 8 * 60),
    Priority.NORMAL: SlaTarget(response_minutes=8 * 60, resolution_minutes=5 * 8 * 60),
    Priority.LOW: SlaTarget(response_minutes=2 * 8 * 60, resolution_minutes=10 * 8 * 60),
}


# A local time of day: 09:00 (seconds accepted).
_CLOCK = r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?$"


class BusinessCalendar(BaseModel):
    """When a tenant works: a time zone, working days (0 = Monday), hours and holidays."""

    time_zone: str = "UTC"
    work_days: list[int] = Field(default=[0, 1, 2, 3, 4], min_length=1, max_length=7)
    start: str = Field(default="09:00", pattern=_CLOCK, description="HH:MM, local time")
    end: str = Field(default="17:00", pattern=_CLOCK, description="HH:MM, local time")
    holidays: list[str] = Field(default_factory=list, max_length=400, description="YYYY-MM-DD")

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("work_days")
    @classmethod
    def _days(cls, value: list[int]) -> list[int]:
        if any(not 0 <= day <= 6 for day in value) or len(set(value)) != len(value):
            raise ValueError("work days are distinct numbers 0 (Monday) to 6 (Sunday)")
        return sorted(value)

    @field_validator("holidays")
    @classmethod
    def _dates(cls, value: list[str]) -> list[str]:
        from datetime import date

        for day in value:
            date.fromisoformat(day)
        return value

    @model_validator(mode="after")
    def _hours(self) -> BusinessCalendar:
        if self.opens >= self.closes:
            raise ValueError("the working day must start before it ends")
        return self

    @property
    def opens(self) -> time:
        return time.fromisoformat(self.start)

    @property
    def closes(self) -> time:
        return time.fromisoformat(self.end)


class Assignee(BaseModel):
    """A person of the tenant, or an agent of the directory (``id`` is then its run's)."""

    kind: Literal["user", "agent"] = "user"
    id: uuid.UUID
    agent_id: str | None = None
    # The tenant's threshold for the agent, fixed when its run starts.
    confidence_threshold: float | None = None


class Comment(BaseModel):
    comment_id: uuid.UUID
    author: uuid.UUID = Field(description="the person, or the agent's run")
    at: datetime
    body: str
    agent_id: str | None = None


TaskEventName = Literal[
    "created",
    "edited",
    "assigned",
    "accepted",
    "declined",
    "released",
    "acceptance_expired",
    "escalated",
    "status_changed",
    "priority_changed",
    "commented",
    "sla_warning",
    "sla_breached",
    "sla_paused",
    "sla_resumed",
    "agent_finished",
    "agent_failed",
    "attached",
]


class TaskEvent(BaseModel):
    at: datetime
    event: TaskEventName
    by: uuid.UUID | None = None
    detail: str | None = None


SlaKind = Literal["response", "resolution"]


class SlaClock(BaseModel):
    """One SLA clock: its budget, what was used before the last pause, and its deadlines
    while it runs (``None`` while paused or stopped)."""

    kind: SlaKind
    budget_minutes: int
    used_minutes: float = 0
    running_since: datetime | None = None
    warn_at: datetime | None = None
    due_at: datetime | None = None
    warned: bool = False
    breached: bool = False
    met_at: datetime | None = None


class SlaPlanRequest(BaseModel):
    """Deadlines ``budget - used`` business minutes (and the 80 % warning) from ``start``."""

    calendar: BusinessCalendar
    start: datetime
    remaining_minutes: float
    warn_remaining_minutes: float | None


class SlaPlan(BaseModel):
    due_at: datetime
    warn_at: datetime | None


class SlaUsage(BaseModel):
    calendar: BusinessCalendar
    start: datetime
    end: datetime


class TaskFields(BaseModel):
    title: str = Field(min_length=1, max_length=300)
    description: str = Field(default="", max_length=20_000)
    priority: Priority = Priority.NORMAL
    due_at: datetime | None = None
    labels: list[str] = Field(default_factory=list, max_length=20)
    skill: str | None = Field(default=None, max_length=64)
    # What an agent assignee works on (its input, e.g. {"html": ...}): routing offers the task
    # to the project's agents whose input it fits.
    agent_input: dict[str, Any] | None = None


class TaskState(BaseModel):
    """The whole task: the workflow's ``state`` query and its continue-as-new input."""

    task_id: uuid.UUID
    tenant_id: uuid.UUID
    project_id: uuid.UUID
    created_by: uuid.UUID
    created_at: datetime
    fields: TaskFields
    status: TaskStatus = TaskStatus.TODO
    assignee: Assignee | None = None
    accepted: bool = False
    accept_due: datetime | None = None
    tried: list[uuid.UUID] = Field(default_factory=list)
    tried_agents: list[str] = Field(default_factory=list)
    escalated: bool = False
    clocks: list[SlaClock] = Field(default_factory=list)
    comments: list[Comment] = Field(default_factory=list)
    # Files uploaded through the same signed URLs and checks as onboarding documents.
    attachments: list[Document] = Field(default_factory=list)
    events: list[TaskEvent] = Field(default_factory=list)


class TaskPolicy(BaseModel):
    """What a task's workflow fixes when it starts: its project's SLA targets and the
    tenant's calendar, acceptance windows and how many assignees are tried."""

    sla: dict[Priority, SlaTarget] = Field(default_factory=lambda: dict(DEFAULT_SLA))
    calendar: BusinessCalendar = BusinessCalendar()
    accept_within: timedelta = timedelta(hours=4)
    agent_accept_within: timedelta = timedelta(minutes=5)
    max_attempts: int = Field(default=3, ge=1, le=20)
    history_limit: int = 5_000


class TaskStart(BaseModel):
    state: TaskState
    policy: TaskPolicy = TaskPolicy()
    # Set by the API when the creator named an assignee; otherwise routing picks one.
    assignee: Assignee | None = None
    # The run an agent assignee makes (prepared by the API with the tenant's configuration).
    agent_run: AgentRunStart | None = None


class StatusChange(BaseModel):
    status: TaskStatus
    by: uuid.UUID


class AssignCommand(BaseModel):
    assignee: Assignee
    by: uuid.UUID
    agent_run: AgentRunStart | None = None


class AcceptCommand(BaseModel):
    by: uuid.UUID
    accept: bool = True


class ReleaseCommand(BaseModel):
    """A person no longer in the tenant lets go of the task (their membership was removed)."""

    user_id: uuid.UUID
    by: uuid.UUID


class PriorityChange(BaseModel):
    priority: Priority
    by: uuid.UUID


class TaskEdit(BaseModel):
    """New values for some of a task's fields (None: unchanged; ``clear_due_at`` removes the
    due date)."""

    by: uuid.UUID
    title: str | None = Field(default=None, min_length=1, max_length=300)
    description: str | None = Field(default=None, max_length=20_000)
    labels: list[str] | None = Field(default=None, max_length=20)
    due_at: datetime | None = None
    clear_due_at: bool = False


class CommentCommand(BaseModel):
    comment_id: uuid.UUID
    body: str = Field(min_length=1, max_length=MAX_COMMENT_CHARS)
    by: uuid.UUID


class RouteRequest(BaseModel):
    """Pick an eligible project member with the least open work, none of ``exclude`` (people)
    and ``exclude_agents``."""

    task_id: uuid.UUID
    project_id: uuid.UUID
    skill: str | None
    exclude: list[uuid.UUID]
    exclude_agents: list[str] = Field(default_factory=list)
    agent_input: dict[str, Any] | None = None
    created_by: uuid.UUID | None = None


NoticeKind = Literal["assigned", "sla_warning", "sla_breached", "escalated"]
Recipients = Literal["assignee", "admins"]


class TaskNotice(BaseModel):
    """An e-mail about the task; the key and the recipients are fixed by the workflow."""

    task_id: uuid.UUID
    kind: NoticeKind
    to: Recipients
    idempotency_key: str
    detail: str = ""
    # The person ``to="assignee"`` means (the projection may not show them yet); notices of
    # runs from before it was set name nobody: the projection's assignee then.
    assignee_id: uuid.UUID | None = None


class TaskRow(BaseModel):
    """What the projection keeps of a task (never its description or comments)."""

    task_id: uuid.UUID
    tenant_id: uuid.UUID
    project_id: uuid.UUID
    created_by: uuid.UUID
    created_at: datetime
    title: str
    status: TaskStatus
    priority: Priority
    due_at: datetime | None
    labels: list[str]
    assignee_id: uuid.UUID | None
    assignee_agent_id: str | None = None
    accepted: bool
    accept_due: datetime | None
    response_due: datetime | None
    resolution_due: datetime | None
    breached: bool
    escalated: bool


class RouteAnswer(BaseModel):
    """Who routing picked: a person, or an agent with the run it will make; nobody (None)."""

    assignee: Assignee | None = None
    agent_run: AgentRunStart | None = None


# --- Tables -------------------------------------------------------------------------------


class Project(Timestamped, Base):
    __tablename__ = "projects"
    __table_args__ = (Index("ix_projects_tenant_listing", "tenant_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    # [{"user_id": "...", "skills": ["seo", ...]}]
    members: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # {"urgent": {"response_minutes": 60, "resolution_minutes": 480}, ...}
    sla: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Task(Base):
    """The tasks projection, written only by each task's workflow."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_project_listing", "tenant_id", "project_id", "updated_at", "id"),
        Index("ix_tasks_assignee", "tenant_id", "assignee_id", "status"),
        Index("ix_tasks_agent_load", "tenant_id", "assignee_agent_id", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    created_by: Mapped[uuid.UUID]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    title: Mapped[str] = mapped_column(String(300))
    status: Mapped[TaskStatus] = mapped_column(str_enum(TaskStatus))
    priority: Mapped[Priority] = mapped_column(str_enum(Priority))
    due_at: Mapped[datetime | None]
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    assignee_id: Mapped[uuid.UUID | None]
    # The agent an agent assignee's run belongs to (its load counts these).
    assignee_agent_id: Mapped[str | None] = mapped_column(String(64))
    accepted: Mapped[bool] = mapped_column(Boolean, default=False)
    accept_due: Mapped[datetime | None]
    response_due: Mapped[datetime | None]
    resolution_due: Mapped[datetime | None]
    breached: Mapped[bool] = mapped_column(Boolean, default=False)
    escalated: Mapped[bool] = mapped_column(Boolean, default=False)


class TenantCalendar(Timestamped, Base):
    """A tenant's business calendar (defaults when it has no row)."""

    __tablename__ = "tenant_calendars"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    calendar: Mapped[dict[str, Any]] = mapped_column(JSON)
