"""AI agents: the catalogue of agents, the tools they may call, what a run carries across the
workflow boundary, and the projections (runs, the decision log) and per-tenant configuration.

An agent run (``AgentRunWorkflow``) alternates *steps* (the agent decides what to read next,
or gives its result) and *tool calls* (a port method on one of the tenant's connections), each
an activity. A result that would write to an external system goes through review first when
its confidence is below the tenant's threshold or the tenant always reviews the agent.

Nothing here does I/O: workflows import it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.approval import DeadlinePolicy
from models.base import Base, Timestamped, str_enum

MAX_STEPS = 50  # the most a tenant may allow one run (planning steps and tool calls)
#: A CRM record id as the vendors give them.
RecordId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class AgentCategory(StrEnum):
    MARKETING = "marketing"
    ECOMMERCE = "e-commerce"
    ANALYTICS = "analytics"
    OPERATIONS = "operations"
    CRM = "crm"


# --- Tools ------------------------------------------------------------------------------


class ToolSpec(BaseModel):
    """A tool an agent may call: a port method on a connection (or a read of a content item)."""

    name: str
    port: Literal["crm", "content"]
    writes: bool = False
    description: str


TOOLS: dict[str, ToolSpec] = {
    tool.name: tool
    for tool in (
        ToolSpec(name="crm.get_contact", port="crm", description="Read one CRM contact."),
        ToolSpec(
            name="crm.list_contacts", port="crm", description="List CRM contacts, page by page."
        ),
        ToolSpec(name="crm.get_company", port="crm", description="Read one CRM company."),
        ToolSpec(
            name="crm.create_note",
            port="crm",
            writes=True,
            description="Log a note on CRM contacts (once per key, however often retried).",
        ),
        ToolSpec(
            name="content.get_item",
            port="content",
            description="Read one of the tenant's content items (title, meta, rendered body).",
        ),
    )
}


# --- Agents' inputs ---------------------------------------------------------------------


class LeadScoringInput(BaseModel):
    """Score one contact of a CRM connection; ``write_score`` logs the score on the contact
    as a note (reviewed first when the tenant's configuration asks for it)."""

    model_config = ConfigDict(extra="forbid")

    connection_id: uuid.UUID
    contact_id: RecordId
    write_score: bool = False


class SeoAuditInput(BaseModel):
    """Audit a content item (``content_id``) or a page given as ``html`` (with its ``title``
    and ``meta_description``); ``keyword`` adds the keyword checks."""

    model_config = ConfigDict(extra="forbid")

    content_id: uuid.UUID | None = None
    html: str | None = Field(default=None, max_length=200_000)
    title: str | None = Field(default=None, max_length=300)
    meta_description: str | None = Field(default=None, max_length=500)
    keyword: str | None = Field(default=None, min_length=2, max_length=100)

    @model_validator(mode="after")
    def _one_source(self) -> SeoAuditInput:
        if (self.content_id is None) == (self.html is None):
            raise ValueError("give either content_id or html")
        return self


class DuplicateFinderInput(BaseModel):
    """Look for duplicate contacts among the first ``max_contacts`` of a CRM connection;
    ``propose_notes`` logs a note on each pair found (reviewed first when configured)."""

    model_config = ConfigDict(extra="forbid")

    connection_id: uuid.UUID
    max_contacts: int = Field(default=200, ge=2, le=500)
    min_similarity: float = Field(default=0.85, ge=0.5, le=1.0)
    propose_notes: bool = False


# --- The catalogue ----------------------------------------------------------------------


class AgentSpec(BaseModel):
    """One agent of the directory."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    category: AgentCategory
    description: str
    tools: tuple[str, ...]
    needs_model: bool = False
    input_model: type[BaseModel] = Field(exclude=True)

    def input_schema(self) -> dict[str, Any]:
        return self.input_model.model_json_schema()

    @property
    def write_tools(self) -> tuple[str, ...]:
        return tuple(t for t in self.tools if TOOLS[t].writes)


AGENTS: dict[str, AgentSpec] = {
    spec.id: spec
    for spec in (
        AgentSpec(
            id="lead-scoring",
            name="Lead scoring",
            category=AgentCategory.CRM,
            description=(
                "Scores a CRM contact from 0 to 100 with fixed rules over its fields and its "
                "company (each rule explained), grades it hot, warm or cold, and can log the "
                "score on the contact."
            ),
            tools=("crm.get_contact", "crm.get_company", "crm.create_note"),
            input_model=LeadScoringInput,
        ),
        AgentSpec(
            id="seo-audit",
            name="SEO audit",
            category=AgentCategory.MARKETING,
            description=(
                "Checks a content item or a page: title and meta description lengths, "
                "headings, links, images without alt text, length and keyword use."
            ),
            tools=("content.get_item",),
            input_model=SeoAuditInput,
        ),
        AgentSpec(
            id="crm-duplicates",
            name="CRM duplicate finder",
            category=AgentCategory.CRM,
            description=(
                "Finds contacts that are likely the same person (e-mail, fuzzy name, company "
                "domain, phone) and can log a merge note on each pair."
            ),
            tools=("crm.list_contacts", "crm.create_note"),
            input_model=DuplicateFinderInput,
        ),
    )
}


# --- Results ----------------------------------------------------------------------------


class LeadRule(BaseModel):
    rule: str
    points: int = Field(description="points given (0 when the rule did not match)")
    max_points: int
    explanation: str


class LeadScore(BaseModel):
    kind: Literal["lead_score"] = "lead_score"
    contact_id: str
    score: int = Field(ge=0, le=100)
    grade: Literal["hot", "warm", "cold"]
    rules: list[LeadRule]


class SeoCheck(BaseModel):
    check: str
    passed: bool
    detail: str


class SeoAudit(BaseModel):
    kind: Literal["seo_audit"] = "seo_audit"
    content_id: uuid.UUID | None = None
    score: int = Field(ge=0, le=100, description="share of the checks passed, in percent")
    word_count: int
    checks: list[SeoCheck]


class DuplicatePair(BaseModel):
    contact_ids: tuple[str, str]
    similarity: float
    reasons: list[str]


class DuplicateReport(BaseModel):
    kind: Literal["duplicates"] = "duplicates"
    scanned: int
    pairs: list[DuplicatePair]


AgentOutput = Annotated[LeadScore | SeoAudit | DuplicateReport, Field(discriminator="kind")]


class ToolRequest(BaseModel):
    """A tool call an agent asks for."""

    tool: str
    connection_id: uuid.UUID | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    summary: str = ""


class AgentResult(BaseModel):
    """What an agent concludes: its typed output, how sure it is, why, and the writes it
    proposes (applied only after the run's review rules allow)."""

    output: AgentOutput
    confidence: float = Field(ge=0, le=1)
    rationale: str
    writes: list[ToolRequest] = Field(default_factory=list)


# --- The run's payloads -----------------------------------------------------------------


class Observation(BaseModel):
    """A tool call and what it answered, as the agent's next step sees it."""

    tool: str
    args: dict[str, Any]
    result: dict[str, Any]


class StepRequest(BaseModel):
    run_id: uuid.UUID
    tenant_id: uuid.UUID
    agent_id: str
    input: dict[str, Any]
    observations: list[Observation]


class StepDecision(BaseModel):
    """Either the tool calls to make next, or the result."""

    tool_calls: list[ToolRequest] = Field(default_factory=list)
    result: AgentResult | None = None


class ToolCall(BaseModel):
    """One tool call of a run; ``key`` makes a write idempotent (fixed by the workflow)."""

    run_id: uuid.UUID
    tenant_id: uuid.UUID
    agent_id: str
    request: ToolRequest
    key: str | None = None


class ToolOutcome(BaseModel):
    result: dict[str, Any]


class AgentRunStatus(StrEnum):
    RUNNING = "running"
    AWAITING_REVIEW = "awaiting_review"
    APPLYING = "applying"
    COMPLETED = "completed"
    FAILED = "failed"


class DecisionOutcome(StrEnum):
    """What became of a run's result."""

    NO_ACTION = "no_action"  # the result proposes no write
    APPLIED = "applied"  # written without review
    APPROVED = "approved"  # written after a reviewer approved
    REJECTED = "rejected"  # a reviewer rejected (or asked for changes): nothing written
    EXPIRED = "expired"  # nobody decided in time: nothing written
    FAILED = "failed"  # the run or its writes failed


class TraceEntry(BaseModel):
    """One line of a run's trace."""

    at: datetime
    kind: Literal["step", "tool", "review", "write", "error"]
    name: str
    detail: str | None = None
    ok: bool = True


class AgentRunConfig(BaseModel):
    """The tenant's configuration of the agent, fixed into a run when it starts."""

    confidence_threshold: float = Field(default=0.8, ge=0, le=1)
    allowed_tools: list[str]
    always_review: bool = False
    max_steps: int = Field(default=20, ge=1, le=MAX_STEPS)
    review: DeadlinePolicy = DeadlinePolicy()


class AgentRunStart(BaseModel):
    run_id: uuid.UUID
    tenant_id: uuid.UUID
    agent_id: str
    started_by: uuid.UUID
    created_at: datetime
    input: dict[str, Any]
    config: AgentRunConfig


class AgentRunState(BaseModel):
    """A run as its ``state`` query shows it."""

    run_id: uuid.UUID
    tenant_id: uuid.UUID
    agent_id: str
    started_by: uuid.UUID
    created_at: datetime
    status: AgentRunStatus = AgentRunStatus.RUNNING
    steps: int = 0
    max_steps: int
    trace: list[TraceEntry] = Field(default_factory=list)
    result: AgentResult | None = None
    outcome: DecisionOutcome | None = None
    approval_id: uuid.UUID | None = None
    error: str | None = None
    finished_at: datetime | None = None


class AgentRunRow(BaseModel):
    """What the projections keep of a run; the decision log row once it has finished."""

    run_id: uuid.UUID
    tenant_id: uuid.UUID
    agent_id: str
    started_by: uuid.UUID
    created_at: datetime
    status: AgentRunStatus
    steps: int
    approval_id: uuid.UUID | None = None
    error: str | None = None
    finished_at: datetime | None = None
    input_summary: str = ""
    result: AgentResult | None = None
    outcome: DecisionOutcome | None = None


# --- Tables -----------------------------------------------------------------------------


class AgentConfig(Timestamped, Base):
    """A tenant's configuration of one agent (defaults when it has no row)."""

    __tablename__ = "agent_configs"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    agent_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    enabled: Mapped[bool]
    confidence_threshold: Mapped[float]
    # None: every tool of the agent.
    allowed_tools: Mapped[list[str] | None] = mapped_column(JSON)
    always_review: Mapped[bool]
    max_steps: Mapped[int]
    # How many of the tenant's tasks the agent works at once (routing skips it when full).
    concurrency_limit: Mapped[int] = mapped_column(default=3, server_default="3")
    # Reserved for model-backed agents (tokens per run and per month).
    run_token_budget: Mapped[int | None]
    monthly_token_budget: Mapped[int | None]
    updated_by: Mapped[uuid.UUID | None]


class AgentRun(Base):
    """The runs' listing projection, written only by the run's workflow."""

    __tablename__ = "agent_runs"
    __table_args__ = (
        Index("ix_agent_runs_listing", "tenant_id", "created_at", "id"),
        Index("ix_agent_runs_agent_listing", "tenant_id", "agent_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    agent_id: Mapped[str] = mapped_column(String(64))
    started_by: Mapped[uuid.UUID]
    status: Mapped[AgentRunStatus] = mapped_column(str_enum(AgentRunStatus))
    steps: Mapped[int]
    approval_id: Mapped[uuid.UUID | None]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class AgentDecision(Base):
    """The decision log: one row per finished run with its result and what became of it.
    Outputs hold record ids and explanations, never the records' contents."""

    __tablename__ = "agent_decisions"
    __table_args__ = (
        Index("ix_agent_decisions_log", "tenant_id", "decided_at", "run_id"),
        Index("ix_agent_decisions_agent_log", "tenant_id", "agent_id", "decided_at", "run_id"),
    )

    run_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    agent_id: Mapped[str] = mapped_column(String(64))
    decided_at: Mapped[datetime]
    input_summary: Mapped[str] = mapped_column(String(500))
    confidence: Mapped[float | None]
    rationale: Mapped[str | None] = mapped_column(Text)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    writes: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    outcome: Mapped[DecisionOutcome] = mapped_column(str_enum(DecisionOutcome))
    approval_id: Mapped[uuid.UUID | None]
    error: Mapped[str | None] = mapped_column(Text)
