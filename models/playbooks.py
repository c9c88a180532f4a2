"""Playbooks: a business process written as data, run by one generic ``PlaybookWorkflow``
(``playbook:{run_id}``).

A playbook is a validated document (JSON or YAML) of **steps**, run in order unless a step says
where to go ``next`` (a step id, or ``end``):

- ``agent``: run an agent of the directory (a child ``AgentRunWorkflow``, with the tenant's
  configuration of it, its review rules included); its result is the step's.
- ``action``: a port action on the tenant's systems (``crm.create_deal``, ``crm.create_note``,
  ``task.create``), once, however often retried.
- ``approval``: ask a person (an ``ApprovalWorkflow`` child); anything but an approval goes to
  ``on_reject`` (``end`` by default).
- ``branch``: go to ``then`` or ``otherwise`` by a condition on a value.
- ``wait``: wait for a duration (ISO 8601, ``PT2H``).
- ``publish``: a content item published through its ``PublishWorkflow`` (a child).

Values may hold templates: ``{{input.NAME}}`` (the run's input) and ``{{steps.ID.PATH}}`` (what
an earlier step gave: an agent's ``output``, ``confidence``, ``outcome``; an action's answer;
an approval's ``decision``). A value that is one template keeps its type; templates inside text
are written in. Everything here is pure: the workflow imports it.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.agents import AGENTS, AgentRunConfig, NoteArgs, RecordId
from models.base import Base, str_enum
from models.tasks import Priority
from models.user import Role

END = "end"
MAX_STEPS = 50
StepId = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]
Target = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]
_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")
_WHOLE = re.compile(r"^\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}$")


class TemplateError(ValueError):
    """A template names nothing: an input not given, a step not run, a missing field."""


# --- Steps --------------------------------------------------------------------------------


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: StepId
    next: Target | None = Field(default=None, description="the step to go to; default: the next")


class AgentStep(_Step):
    kind: Literal["agent"]
    agent_id: str
    input: dict[str, Any]


class ActionKind(StrEnum):
    CREATE_DEAL = "crm.create_deal"
    CREATE_NOTE = "crm.create_note"
    CREATE_TASK = "task.create"


class DealArgs(BaseModel):
    """A deal for a contact (its first pipeline's first stage unless ``stage_id``)."""

    model_config = ConfigDict(extra="forbid")

    connection_id: uuid.UUID
    name: str = Field(min_length=1, max_length=200)
    contact_id: RecordId | None = None
    company_id: RecordId | None = None
    amount: Decimal | None = Field(default=None, ge=0)
    stage_id: str | None = Field(default=None, max_length=100)


class NoteActionArgs(NoteArgs):
    connection_id: uuid.UUID


class TaskArgs(BaseModel):
    """A task in one of the tenant's projects, for a person (or routed when nobody is named)."""

    model_config = ConfigDict(extra="forbid")

    project_id: uuid.UUID
    title: str = Field(min_length=1, max_length=300)
    description: str = Field(default="", max_length=20_000)
    priority: Priority = Priority.NORMAL
    assignee_id: uuid.UUID | None = None


ACTION_ARGS: dict[ActionKind, type[BaseModel]] = {
    ActionKind.CREATE_DEAL: DealArgs,
    ActionKind.CREATE_NOTE: NoteActionArgs,
    ActionKind.CREATE_TASK: TaskArgs,
}


class ActionStep(_Step):
    kind: Literal["action"]
    action: ActionKind
    args: dict[str, Any]

    @model_validator(mode="after")
    def _known_args(self) -> ActionStep:
        fields = ACTION_ARGS[self.action].model_fields
        unknown = sorted(set(self.args) - set(fields))
        if unknown:
            raise ValueError(f"{self.action.value} takes no {', '.join(unknown)}")
        missing = sorted(n for n, f in fields.items() if f.is_required() and n not in self.args)
        if missing:
            raise ValueError(f"{self.action.value} needs {', '.join(missing)}")
        return self


class ApprovalStep(_Step):
    kind: Literal["approval"]
    subject: str = Field(min_length=1, max_length=300)
    facts: dict[str, str] = Field(default_factory=dict, max_length=20)
    on_reject: Target = END


class Condition(BaseModel):
    """``value`` compared by exactly one operator (against a value that is not null)."""

    model_config = ConfigDict(extra="forbid")

    value: Any
    equals: Any = None
    not_equals: Any = None
    at_least: float | None = None
    at_most: float | None = None

    @model_validator(mode="after")
    def _one_operator(self) -> Condition:
        operators = (self.equals, self.not_equals, self.at_least, self.at_most)
        if sum(operator is not None for operator in operators) != 1:
            raise ValueError("give exactly one of equals, not_equals, at_least, at_most")
        return self

    def holds(self, value: Any) -> bool:
        if self.equals is not None:
            return bool(value == self.equals)
        if self.not_equals is not None:
            return bool(value != self.not_equals)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TemplateError(f"{value!r} is not a number to compare")
        if self.at_least is not None:
            return value >= self.at_least
        assert self.at_most is not None
        return value <= self.at_most


class BranchStep(_Step):
    kind: Literal["branch"]
    when: Condition
    then: Target
    otherwise: Target


class WaitStep(_Step):
    kind: Literal["wait"]
    duration: timedelta = Field(gt=timedelta(0), le=timedelta(days=90))


class PublishStep(_Step):
    kind: Literal["publish"]
    connection_id: str
    title: str
    body: str
    excerpt: str = ""
    meta_description: str | None = None


Step = Annotated[
    AgentStep | ActionStep | ApprovalStep | BranchStep | WaitStep | PublishStep,
    Field(discriminator="kind"),
]


class PlaybookDocument(BaseModel):
    """A playbook: its inputs and its steps (checked: ids unique, every target a step or
    ``end``, agents known, templates naming inputs and earlier steps only)."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{1,63}$")]
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    inputs: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]] = Field(
        default_factory=list, max_length=20
    )
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)

    @model_validator(mode="after")
    def _coherent(self) -> PlaybookDocument:
        ids = [step.id for step in self.steps]
        for index, step in enumerate(self.steps):
            if step.id in ids[:index]:
                raise ValueError(f"step {step.id}: the id is used twice")
            for target in _targets(step):
                if target != END and target not in ids:
                    raise ValueError(f"step {step.id}: goes to {target}, which is no step")
            if isinstance(step, AgentStep) and step.agent_id not in AGENTS:
                raise ValueError(f"step {step.id}: no agent {step.agent_id}")
            for name in _template_names(step):
                _check_name(name, step.id, self.inputs, ids[:index])
        return self

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    def after(self, step: Step) -> str:
        """Where a step goes when it does not say: the step after it, or the end."""
        if step.next is not None:
            return step.next
        index = self.steps.index(step)
        return self.steps[index + 1].id if index + 1 < len(self.steps) else END


def _targets(step: Step) -> list[str]:
    targets = [step.next] if step.next else []
    if isinstance(step, BranchStep):
        targets += [step.then, step.otherwise]
    if isinstance(step, ApprovalStep):
        targets.append(step.on_reject)
    return targets


def _template_names(step: Step) -> list[str]:
    fields = step.model_dump(exclude={"id", "next", "kind"})
    return [match.group(1) for text in _strings(fields) for match in _TEMPLATE.finditer(text)]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def _check_name(name: str, step_id: str, inputs: list[str], earlier: list[str]) -> None:
    parts = name.split(".")
    if parts[0] == "input" and len(parts) == 2 and parts[1] in inputs:
        return
    if parts[0] == "steps" and len(parts) >= 3 and parts[1] in earlier:
        return
    raise ValueError(
        f"step {step_id}: {{{{{name}}}}} names no input and no earlier step "
        "(use input.NAME or steps.ID.FIELD)"
    )


def parse_document(data: Any) -> PlaybookDocument:
    """The document, or a ``ValueError`` naming the step (and field) that is wrong."""
    try:
        return PlaybookDocument.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        context = error.get("ctx") or {}
        message = str(context["error"]) if "error" in context else error["msg"]
        loc = list(error["loc"])
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            steps = data.get("steps") if isinstance(data, dict) else None
            step = steps[loc[1]] if isinstance(steps, list) and loc[1] < len(steps) else None
            name = step.get("id") if isinstance(step, dict) else None
            field = ".".join(str(part) for part in loc[3:])
            prefix = f"step {name or loc[1]}: " + (f"{field}: " if field else "")
            raise ValueError(prefix + message) from None
        where = ".".join(str(part) for part in loc)
        raise ValueError(f"{where}: {message}" if where else message) from None


# --- Templates ----------------------------------------------------------------------------


def resolve(value: Any, context: dict[str, Any]) -> Any:
    """``value`` with its templates filled from ``context`` (``input`` and ``steps``)."""
    if isinstance(value, str):
        whole = _WHOLE.match(value)
        if whole:
            return _lookup(whole.group(1), context)
        return _TEMPLATE.sub(lambda m: _text(_lookup(m.group(1), context)), value)
    if isinstance(value, dict):
        return {key: resolve(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, context) for item in value]
    return value


def _lookup(name: str, context: dict[str, Any]) -> Any:
    found: Any = context
    for part in name.split("."):
        if isinstance(found, dict) and part in found:
            found = found[part]
        elif isinstance(found, list) and part.isdigit() and int(part) < len(found):
            found = found[int(part)]
        else:
            raise TemplateError(f"{{{{{name}}}}} names nothing")
    return found


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_text(item) for item in value)
    return "" if value is None else str(value)


# --- Runs ---------------------------------------------------------------------------------


class PlaybookStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepRecord(BaseModel):
    """A step the run went through: when, what it gave (or why it failed)."""

    step_id: str
    kind: str
    started_at: datetime
    finished_at: datetime | None = None
    ok: bool = True
    detail: str | None = None


class PlaybookStart(BaseModel):
    run_id: uuid.UUID
    tenant_id: uuid.UUID
    started_by: uuid.UUID
    created_at: datetime
    document: PlaybookDocument
    input: dict[str, Any]
    #: The tenant's configuration of each agent the playbook runs, fixed at the start.
    agents: dict[str, AgentRunConfig]
    approver: Role = Role.TENANT_ADMIN


class PlaybookState(BaseModel):
    """A run as its ``state`` query shows it."""

    run_id: uuid.UUID
    playbook_id: str
    status: PlaybookStatus = PlaybookStatus.RUNNING
    current: str | None = None
    steps: list[StepRecord] = Field(default_factory=list)
    results: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    finished_at: datetime | None = None
    controls: list[str] = Field(default_factory=list, description="who paused, resumed, cancelled")


class PlaybookControl(BaseModel):
    """Who pauses, resumes or cancels a run."""

    by: uuid.UUID


class PlaybookAction(BaseModel):
    """An action step's call (the ``playbook_action`` activity); ``key`` makes it once."""

    tenant_id: uuid.UUID
    started_by: uuid.UUID
    action: ActionKind
    args: dict[str, Any]
    key: str


class PlaybookRunRow(BaseModel):
    run_id: uuid.UUID
    tenant_id: uuid.UUID
    playbook_id: str
    started_by: uuid.UUID
    created_at: datetime
    status: PlaybookStatus
    current: str | None
    error: str | None
    finished_at: datetime | None


class PlaybookRun(Base):
    """The playbook runs' listing projection, written only by the run's workflow."""

    __tablename__ = "playbook_runs"
    __table_args__ = (Index("ix_playbook_runs_listing", "tenant_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    playbook_id: Mapped[str] = mapped_column(String(64))
    started_by: Mapped[uuid.UUID]
    status: Mapped[PlaybookStatus] = mapped_column(str_enum(PlaybookStatus))
    current: Mapped[str | None] = mapped_column(String(40))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


# --- The playbooks shipped --------------------------------------------------------------

_LEAD = {"connection_id": "{{input.connection_id}}", "contact_id": "{{input.contact_id}}"}
_DRAFT = "{{steps.draft.output.%s}}"

PLAYBOOKS: dict[str, PlaybookDocument] = {
    document.id: document
    for document in (
        PlaybookDocument.model_validate(
            {
                "id": "new-lead-follow-up",
                "name": "New lead follow-up",
                "description": (
                    "Scores a new CRM contact; a hot lead (70 or more) gets a deal and a call "
                    "task for its owner, any other a nurture note on the contact."
                ),
                "inputs": ["connection_id", "contact_id", "project_id", "owner_id"],
                "steps": [
                    {"id": "score", "kind": "agent", "agent_id": "lead-scoring", "input": _LEAD},
                    {
                        "id": "route",
                        "kind": "branch",
                        "when": {"value": "{{steps.score.output.score}}", "at_least": 70},
                        "then": "deal",
                        "otherwise": "nurture",
                    },
                    {
                        "id": "deal",
                        "kind": "action",
                        "action": "crm.create_deal",
                        "args": _LEAD | {"name": "Hot lead {{input.contact_id}}"},
                    },
                    {
                        "id": "call",
                        "kind": "action",
                        "action": "task.create",
                        "next": "end",
                        "args": {
                            "project_id": "{{input.project_id}}",
                            "assignee_id": "{{input.owner_id}}",
                            "title": "Call the hot lead {{input.contact_id}} "
                            "(score {{steps.score.output.score}})",
                            "priority": "high",
                        },
                    },
                    {
                        "id": "nurture",
                        "kind": "action",
                        "action": "crm.create_note",
                        "args": {
                            "connection_id": "{{input.connection_id}}",
                            "contact_ids": ["{{input.contact_id}}"],
                            "subject": "Nurture",
                            "body": "Lead score {{steps.score.output.score}} "
                            "({{steps.score.output.grade}}): added to nurture.",
                        },
                    },
                ],
            }
        ),
        PlaybookDocument.model_validate(
            {
                "id": "blog-post-pipeline",
                "name": "Blog post pipeline",
                "description": (
                    "Briefs and drafts a post on a topic with the tenant's model, asks a tenant "
                    "admin to approve it, and publishes it to the CMS connection."
                ),
                "inputs": ["topic", "connection_id"],
                "steps": [
                    {
                        "id": "brief",
                        "kind": "agent",
                        "agent_id": "content-brief",
                        "input": {"topic": "{{input.topic}}"},
                    },
                    {
                        "id": "draft",
                        "kind": "agent",
                        "agent_id": "content-draft",
                        "input": {
                            "topic": "{{input.topic}}",
                            "title": "{{steps.brief.output.title}}",
                            "outline": "{{steps.brief.output.outline}}",
                            "keywords": "{{steps.brief.output.keywords}}",
                        },
                    },
                    {
                        "id": "review",
                        "kind": "approval",
                        "subject": "Publish the post “{{steps.draft.output.title}}”?",
                        "facts": {"title": _DRAFT % "title", "excerpt": _DRAFT % "excerpt"},
                    },
                    {
                        "id": "publish",
                        "kind": "publish",
                        "connection_id": "{{input.connection_id}}",
                        "title": _DRAFT % "title",
                        "body": _DRAFT % "body",
                        "excerpt": _DRAFT % "excerpt",
                        "meta_description": _DRAFT % "meta_description",
                    },
                ],
            }
        ),
    )
}
