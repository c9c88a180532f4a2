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
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.approval import DeadlinePolicy
from models.base import Base, Timestamped, str_enum

MAX_STEPS = 50  # the most a tenant may allow one run (planning steps and tool calls)
#: The most days one read of a daily metric covers.
MAX_METRIC_DAYS = 90
#: A CRM record id as the vendors give them.
RecordId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
#: An analytics metric as the vendor names it (GA4: ``sessions``, ``activeUsers``).
MetricName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_:.]{0,99}$")]
#: The ports whose tools run on one of the tenant's connections (of the connector kind of the
#: same name), and how a message names that kind.
CONNECTION_PORTS = {"crm": "a CRM", "analytics": "an analytics system"}


class AgentCategory(StrEnum):
    MARKETING = "marketing"
    ECOMMERCE = "e-commerce"
    ANALYTICS = "analytics"
    OPERATIONS = "operations"
    CRM = "crm"


# --- Tools ------------------------------------------------------------------------------


class ContactArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    contact_id: RecordId


class CompanyArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    company_id: RecordId


class ListArgs(BaseModel):
    """A page of a listing: ``cursor`` from the previous page's ``next_cursor``."""

    model_config = ConfigDict(extra="forbid")
    cursor: str | None = Field(default=None, max_length=2000)
    limit: int = Field(default=50, ge=1, le=100)


class NoteArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    contact_ids: list[RecordId] = Field(min_length=1, max_length=10)
    subject: str = Field(max_length=500)
    body: str = Field(max_length=65_000)


class ContentArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content_id: str = Field(max_length=64)


class DailyMetricArgs(BaseModel):
    """``metric`` per day over the ``days`` days up to ``end`` (default: yesterday)."""

    model_config = ConfigDict(extra="forbid")
    metric: MetricName
    days: int = Field(ge=1, le=MAX_METRIC_DAYS)
    end: date | None = None


class ToolSpec(BaseModel):
    """A tool an agent may call: a port method on a connection (or a read of a content item);
    ``args`` is the model its arguments must fit (a model's function parameters)."""

    name: str
    port: Literal["crm", "content", "analytics"]
    writes: bool = False
    description: str
    args: type[BaseModel] = Field(exclude=True)

    @property
    def function_name(self) -> str:
        """The name a chat model calls it by (function names allow no dots)."""
        return self.name.replace(".", "__")


TOOLS: dict[str, ToolSpec] = {
    tool.name: tool
    for tool in (
        ToolSpec(
            name="crm.get_contact",
            port="crm",
            description="Read one CRM contact.",
            args=ContactArgs,
        ),
        ToolSpec(
            name="crm.list_contacts",
            port="crm",
            description="List CRM contacts, page by page.",
            args=ListArgs,
        ),
        ToolSpec(
            name="crm.get_company",
            port="crm",
            description="Read one CRM company.",
            args=CompanyArgs,
        ),
        ToolSpec(
            name="crm.create_note",
            port="crm",
            writes=True,
            description="Log a note on CRM contacts (once per key, however often retried).",
            args=NoteArgs,
        ),
        ToolSpec(
            name="content.get_item",
            port="content",
            description="Read one of the tenant's content items (title, meta, rendered body).",
            args=ContentArgs,
        ),
        ToolSpec(
            name="analytics.daily_metric",
            port="analytics",
            description=(
                "Read one metric's value per day over the last days (up to yesterday, the last "
                "complete day, or an end date you give)."
            ),
            args=DailyMetricArgs,
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


class EmailDraftInput(BaseModel):
    """Draft an e-mail to one contact of a CRM connection, for ``purpose``."""

    model_config = ConfigDict(extra="forbid")

    connection_id: uuid.UUID
    contact_id: RecordId
    purpose: str = Field(min_length=3, max_length=500)


class AccountSummaryInput(BaseModel):
    """Summarise one company of a CRM connection (optionally with its known contacts)."""

    model_config = ConfigDict(extra="forbid")

    connection_id: uuid.UUID
    company_id: RecordId
    contact_ids: list[RecordId] = Field(default_factory=list, max_length=10)


class ContentBriefInput(BaseModel):
    """Brief a blog post on ``topic``; ``content_id`` names an existing item to build on."""

    model_config = ConfigDict(extra="forbid")

    topic: str = Field(min_length=3, max_length=200)
    keyword: str | None = Field(default=None, min_length=2, max_length=100)
    audience: str | None = Field(default=None, max_length=200)
    content_id: uuid.UUID | None = None


class AnomalyInput(BaseModel):
    """Look for days whose ``metric`` departs from the ``baseline_days`` before them, over the
    last ``days`` days of an analytics connection (up to ``end``; by default yesterday, the
    last complete day)."""

    model_config = ConfigDict(extra="forbid")

    connection_id: uuid.UUID
    metric: MetricName = "sessions"
    days: int = Field(default=28, ge=4, le=MAX_METRIC_DAYS)
    baseline_days: int = Field(default=7, ge=3, le=28)
    threshold: float = Field(
        default=3.0, ge=1.0, le=10.0, description="standard deviations that make an anomaly"
    )
    end: date | None = Field(default=None, description="the last day scanned (default: yesterday)")

    @model_validator(mode="after")
    def _room_for_a_baseline(self) -> AnomalyInput:
        if self.days <= self.baseline_days:
            raise ValueError("days must be more than baseline_days")
        return self


class ContentDraftInput(BaseModel):
    """Write a blog post from a brief: its title, outline and keywords."""

    model_config = ConfigDict(extra="forbid")

    topic: str = Field(min_length=3, max_length=200)
    title: str = Field(min_length=1, max_length=300)
    outline: list[Annotated[str, Field(max_length=300)]] = Field(min_length=1, max_length=30)
    keywords: list[Annotated[str, Field(max_length=100)]] = Field(
        default_factory=list, max_length=20
    )


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
    #: A model-backed agent's instructions (its system message) and the output it must give.
    instructions: str = ""
    output_model: type[BaseModel] | None = Field(default=None, exclude=True)

    def input_schema(self) -> dict[str, Any]:
        return self.input_model.model_json_schema()

    @property
    def write_tools(self) -> tuple[str, ...]:
        return tuple(t for t in self.tools if TOOLS[t].writes)

    @property
    def connection_kind(self) -> str | None:
        """The kind of connection its input's ``connection_id`` names: its tools' port."""
        ports = (TOOLS[t].port for t in self.tools)
        return next((port for port in ports if port in CONNECTION_PORTS), None)


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


class EmailDraft(BaseModel):
    kind: Literal["email_draft"] = "email_draft"
    contact_id: str
    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=10_000)


class AccountSummary(BaseModel):
    kind: Literal["account_summary"] = "account_summary"
    company_id: str
    summary: str = Field(min_length=1, max_length=4_000)
    highlights: list[str] = Field(default_factory=list, max_length=10)


class ContentBrief(BaseModel):
    kind: Literal["content_brief"] = "content_brief"
    title: str = Field(min_length=1, max_length=300)
    outline: list[str] = Field(min_length=1, max_length=30)
    keywords: list[str] = Field(default_factory=list, max_length=20)


class MetricAnomaly(BaseModel):
    """A day whose value departs from the days before it."""

    date: date
    value: float
    baseline_mean: float
    z_score: float | None = Field(
        description="standard deviations from the baseline's mean; null after days of 0 only"
    )
    direction: Literal["up", "down"]


class AnalyticsAnomalies(BaseModel):
    kind: Literal["analytics_anomalies"] = "analytics_anomalies"
    metric: str
    start: date = Field(description="the first day read")
    end: date = Field(description="the last day read")
    days_scanned: int = Field(description="days from the first one with data to the last")
    baseline_days: int = Field(description="the days before a day that it is compared with")
    threshold: float
    anomalies: list[MetricAnomaly]


class ContentDraft(BaseModel):
    kind: Literal["content_draft"] = "content_draft"
    title: str = Field(min_length=1, max_length=300)
    body: str = Field(min_length=1, max_length=100_000, description="the post, in HTML")
    excerpt: str = Field(default="", max_length=1000)
    meta_description: str | None = Field(default=None, max_length=500)


AgentOutput = Annotated[
    LeadScore
    | SeoAudit
    | DuplicateReport
    | EmailDraft
    | AccountSummary
    | ContentBrief
    | AnalyticsAnomalies
    | ContentDraft,
    Field(discriminator="kind"),
]


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
        AgentSpec(
            id="email-draft",
            name="E-mail draft",
            category=AgentCategory.CRM,
            description=(
                "Drafts an e-mail to a CRM contact for a purpose you give, from the contact and "
                "its company. Needs your model provider."
            ),
            tools=("crm.get_contact", "crm.get_company"),
            needs_model=True,
            input_model=EmailDraftInput,
            output_model=EmailDraft,
            instructions=(
                "You draft short, specific business e-mails. Read the contact (and its company "
                "when it has one) with the tools before writing. Never invent facts about them."
            ),
        ),
        AgentSpec(
            id="account-summary",
            name="Account summary",
            category=AgentCategory.CRM,
            description=(
                "Summarises a CRM company and the contacts you name: who they are, where the "
                "relationship stands, what to do next. Needs your model provider."
            ),
            tools=("crm.get_company", "crm.get_contact"),
            needs_model=True,
            input_model=AccountSummaryInput,
            output_model=AccountSummary,
            instructions=(
                "You summarise a customer account for an account manager. Read the company and "
                "each named contact with the tools; state only what the records say."
            ),
        ),
        AgentSpec(
            id="content-brief",
            name="Content brief",
            category=AgentCategory.MARKETING,
            description=(
                "Writes a brief for a blog post: a title, an outline and the keywords to use, "
                "building on an existing content item when you name one. Needs your model "
                "provider."
            ),
            tools=("content.get_item",),
            needs_model=True,
            input_model=ContentBriefInput,
            output_model=ContentBrief,
            instructions=(
                "You write briefs for blog posts: a working title, an outline of sections and "
                "the keywords to use. When a content item is named, read it first and build on it."
            ),
        ),
        AgentSpec(
            id="content-draft",
            name="Content draft",
            category=AgentCategory.MARKETING,
            description=(
                "Writes a blog post (HTML body, excerpt, meta description) from a brief: its "
                "title, outline and keywords. Needs your model provider."
            ),
            tools=(),
            needs_model=True,
            input_model=ContentDraftInput,
            output_model=ContentDraft,
            instructions=(
                "You write blog posts from a brief. Follow the outline, one <h2> per section, "
                "plain HTML paragraphs and lists, no inline styles; use the keywords naturally."
            ),
        ),
        AgentSpec(
            id="analytics-anomaly",
            name="Analytics anomalies",
            category=AgentCategory.ANALYTICS,
            description=(
                "Reads one metric per day (sessions, say) over the last 28 days, or up to 90, "
                "and flags the days that depart from the week before them by 3 standard "
                "deviations or more, up or down, each with its z-score."
            ),
            tools=("analytics.daily_metric",),
            input_model=AnomalyInput,
        ),
    )
}


class ToolRequest(BaseModel):
    """A tool call an agent asks for (``call_id``: the model's id of the call)."""

    tool: str
    connection_id: uuid.UUID | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    summary: str = ""
    call_id: str | None = None


class AgentResult(BaseModel):
    """What an agent concludes: its typed output, how sure it is, why, and the writes it
    proposes (applied only after the run's review rules allow)."""

    output: AgentOutput
    confidence: float = Field(ge=0, le=1)
    rationale: str
    writes: list[ToolRequest] = Field(default_factory=list)


# --- The run's payloads -----------------------------------------------------------------


class Observation(BaseModel):
    """A tool call and what it answered, as the agent's next step sees it; ``step`` is the
    step that asked for it (a model's turn), ``call_id`` the model's id of the call."""

    tool: str
    args: dict[str, Any]
    result: dict[str, Any]
    step: int = 0
    call_id: str | None = None


class ModelChoice(BaseModel):
    """The model a model-backed run talks to, through the tenant's own provider (its key is
    read by reference inside the activity, never carried here)."""

    model: str = Field(min_length=1, max_length=100)
    temperature: float | None = Field(default=None, ge=0, le=2)


class StepRequest(BaseModel):
    run_id: uuid.UUID
    tenant_id: uuid.UUID
    agent_id: str
    input: dict[str, Any]
    observations: list[Observation]
    model: ModelChoice | None = None
    #: The tools offered to a model (the agent's that the tenant allows).
    tools: list[str] = Field(default_factory=list)
    #: Tokens the run may still spend (the model's answer is capped to it).
    tokens_left: int | None = None


class StepDecision(BaseModel):
    """Either the tool calls to make next, or the result; what the step cost in tokens."""

    tool_calls: list[ToolRequest] = Field(default_factory=list)
    result: AgentResult | None = None
    tokens: int = 0


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
    model: ModelChoice | None = None
    run_token_budget: int | None = None


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
    model: str | None = None
    tokens: int = 0


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
    model: str | None = None
    tokens: int = 0


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
    # Model-backed agents: tokens per run and per month; the model (None: the provider's
    # default) and its temperature.
    run_token_budget: Mapped[int | None]
    monthly_token_budget: Mapped[int | None]
    model: Mapped[str | None] = mapped_column(String(100))
    temperature: Mapped[float | None]
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
    model: Mapped[str | None] = mapped_column(String(100))
    tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    duration_ms: Mapped[int | None]
