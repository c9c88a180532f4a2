"""AI agents over HTTP: the directory, a tenant's configuration of each agent, runs and the
decision log.

A run is an ``AgentRunWorkflow`` (``agent-run:{run_id}``): starting one is a workflow start
(with an ``Idempotency-Key``), one run is its query, and the listings read the ``agent_runs``
and ``agent_decisions`` projections its activities write. Results that need review appear in
the approvals queue (``/api/v1/approvals``, kind ``agent_action``).
"""

from __future__ import annotations

import statistics
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from api import workflow_calls
from api.billing_guard import read_only_guard
from api.deps import CurrentPrincipal, SessionDep, SettingsDep, TemporalDep, require_role
from api.pagination import newest_first
from api.tenancy import owned, scoped
from api.workflow_calls import IdempotencyKey, update_id
from connectors import registry
from connectors.http import UnsafeURL, check_base_url
from connectors.secrets import model_provider_path, secret_store_from_settings
from core import search
from core.errors import Conflict, NotFound, Unprocessable
from core.security import Principal
from core.settings import Settings
from models.agents import (
    AGENTS,
    CONNECTION_PORTS,
    MAX_STEPS,
    TOOLS,
    AgentCategory,
    AgentConfig,
    AgentDecision,
    AgentRun,
    AgentRunConfig,
    AgentRunStart,
    AgentRunState,
    AgentRunStatus,
    AgentSpec,
    DecisionOutcome,
    ModelChoice,
)
from models.connection import Connection, ConnectionStatus
from models.content import ContentItem
from models.user import Role
from workflows.agent_run import PROCESS, AgentRunWorkflow, workflow_id

router = APIRouter(prefix="/api/v1/agents", tags=["agents"], dependencies=[read_only_guard])
Runner = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN, Role.USER))]
TenantAdmin = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN))]


class ToolView(BaseModel):
    name: str
    writes: bool
    description: str


class AgentView(BaseModel):
    """One agent of the directory, and whether it is enabled for your tenant."""

    id: str
    name: str
    category: AgentCategory
    description: str
    tools: list[ToolView]
    input_schema: dict[str, Any]
    needs_model: bool
    enabled: bool

    @classmethod
    def of(cls, spec: AgentSpec, enabled: bool) -> AgentView:
        return cls(
            id=spec.id,
            name=spec.name,
            category=spec.category,
            description=spec.description,
            tools=[
                ToolView(**TOOLS[t].model_dump(include={"name", "writes", "description"}))
                for t in spec.tools
            ],
            input_schema=spec.input_schema(),
            needs_model=spec.needs_model,
            enabled=enabled,
        )


class AgentDirectory(BaseModel):
    items: list[AgentView]
    next_cursor: str | None = None


class ConfigView(BaseModel):
    """Your tenant's configuration of an agent. ``allowed_tools`` null: all of the agent's
    tools. A result that writes is reviewed by a tenant admin first when its confidence is
    below ``confidence_threshold`` or ``always_review`` is set. The token budgets are for
    model-backed agents only."""

    enabled: bool = True
    confidence_threshold: float = Field(default=0.8, ge=0, le=1)
    allowed_tools: list[str] | None = Field(default=None, max_length=50)
    always_review: bool = False
    max_steps: int = Field(default=20, ge=1, le=MAX_STEPS)
    concurrency_limit: int = Field(
        default=3, ge=1, le=50, description="tasks the agent works at once (routing)"
    )
    run_token_budget: int | None = Field(default=None, ge=1)
    monthly_token_budget: int | None = Field(default=None, ge=1)
    model: str | None = Field(
        default=None, min_length=1, max_length=100, description="null: the provider's default"
    )
    temperature: float | None = Field(default=None, ge=0, le=2)


class ModelProviderForm(BaseModel):
    """Your tenant's own model provider (any OpenAI-compatible chat-completions API): its
    base URL, the model agents use unless configured otherwise, and your API key."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(default="https://api.openai.com/v1", max_length=500)
    model: str = Field(min_length=1, max_length=100)
    api_key: SecretStr = Field(min_length=8, max_length=500)


class ModelProviderView(BaseModel):
    """The provider as set; the key shows only as its last four characters."""

    base_url: str
    model: str
    key_hint: str
    updated_at: datetime


class RunRequest(BaseModel):
    """The agent's input (see its ``input_schema`` in the directory)."""

    input: dict[str, Any]


class RunListItem(BaseModel):
    run_id: uuid.UUID
    agent_id: str
    status: AgentRunStatus
    steps: int
    approval_id: uuid.UUID | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, row: AgentRun) -> RunListItem:
        return cls(
            run_id=row.id,
            agent_id=row.agent_id,
            status=row.status,
            steps=row.steps,
            approval_id=row.approval_id,
            error=row.error,
            created_at=row.created_at,
            updated_at=row.updated_at,
            finished_at=row.finished_at,
        )


class RunPage(BaseModel):
    items: list[RunListItem]
    next_cursor: str | None


class DecisionItem(BaseModel):
    """A finished run: its result, how sure the agent was and why, and what became of it."""

    run_id: uuid.UUID
    agent_id: str
    decided_at: datetime
    input_summary: str
    confidence: float | None
    rationale: str | None
    output: dict[str, Any] | None
    writes: list[dict[str, Any]]
    outcome: DecisionOutcome
    approval_id: uuid.UUID | None
    error: str | None
    model: str | None
    tokens: int
    duration_ms: int | None

    @classmethod
    def of(cls, row: AgentDecision) -> DecisionItem:
        return cls(
            run_id=row.run_id,
            agent_id=row.agent_id,
            decided_at=row.decided_at,
            input_summary=row.input_summary,
            confidence=row.confidence,
            rationale=row.rationale,
            output=row.output,
            writes=row.writes,
            outcome=row.outcome,
            approval_id=row.approval_id,
            error=row.error,
            model=row.model,
            tokens=row.tokens,
            duration_ms=row.duration_ms,
        )


class DecisionPage(BaseModel):
    items: list[DecisionItem]
    next_cursor: str | None


class AgentMetrics(BaseModel):
    """One agent's finished runs in the period. ``success_rate``: share not failed;
    ``overturned_rate``: of the results a person reviewed, the share rejected (null when
    none was reviewed); latencies from start to end, reviews included."""

    agent_id: str
    runs: int
    success_rate: float
    latency_p50_ms: int | None
    latency_p95_ms: int | None
    tokens: int
    reviewed: int
    overturned_rate: float | None


class MetricsPage(BaseModel):
    since: datetime
    items: list[AgentMetrics]


Limit = Annotated[int, Query(ge=1, le=200)]
Cursor = Annotated[str | None, Query(max_length=200)]


def _spec(agent_id: str) -> AgentSpec:
    spec = AGENTS.get(agent_id)
    if spec is None:
        raise NotFound(f"No agent {agent_id}.")
    return spec


async def _config(
    session: AsyncSession, principal: Principal, spec: AgentSpec, settings: Settings
) -> ConfigView:
    row = await session.get(AgentConfig, (principal.tenant_id, spec.id))
    if row is None:
        return ConfigView(
            confidence_threshold=settings.agent_confidence_threshold,
            max_steps=settings.agent_max_steps,
        )
    return ConfigView(
        enabled=row.enabled,
        confidence_threshold=row.confidence_threshold,
        allowed_tools=row.allowed_tools,
        always_review=row.always_review,
        max_steps=row.max_steps,
        concurrency_limit=row.concurrency_limit,
        run_token_budget=row.run_token_budget,
        monthly_token_budget=row.monthly_token_budget,
        model=row.model,
        temperature=row.temperature,
    )


# --- Directory --------------------------------------------------------------------------


@router.get("", summary="The agent directory")
async def list_agents(
    principal: CurrentPrincipal, session: SessionDep, settings: SettingsDep
) -> AgentDirectory:
    """Every agent: what it does, the tools it needs, its input schema, whether it needs a
    model, and whether your tenant has it enabled."""
    items = [
        AgentView.of(spec, (await _config(session, principal, spec, settings)).enabled)
        for spec in AGENTS.values()
    ]
    return AgentDirectory(items=items)


# --- The tenant's model provider, runs and decisions (before /{agent_id}) ----------------


@router.get("/model-provider", summary="Your tenant's model provider")
async def get_model_provider(principal: TenantAdmin, settings: SettingsDep) -> ModelProviderView:
    """404 until a tenant admin sets it; the key is never shown, only its last characters."""
    provider = await secret_store_from_settings(settings).get(
        model_provider_path(principal.tenant_id)
    )
    if provider is None:
        raise NotFound("No model provider is set.")
    return _provider_view(provider)


@router.put("/model-provider", summary="Set your tenant's model provider (your own key)")
async def put_model_provider(
    body: ModelProviderForm, principal: TenantAdmin, settings: SettingsDep
) -> ModelProviderView:
    """Model-backed agents call this provider with your key, read from the secret store by the
    run's activity (never in a workflow's history, never logged). 422 for a base URL that is
    not https (or that points into a private network)."""
    try:
        base_url = check_base_url(
            body.base_url, allow_private=settings.connector_allow_private_urls
        )
    except UnsafeURL as exc:
        raise Unprocessable(
            "The base URL cannot be used.", errors=[_field_error("base_url", exc.message)]
        ) from None
    provider = {
        "base_url": base_url,
        "model": body.model,
        "api_key": body.api_key.get_secret_value(),
        "updated_at": datetime.now(UTC).isoformat(),
        "updated_by": str(principal.user_id),
    }
    await secret_store_from_settings(settings).put(
        model_provider_path(principal.tenant_id), provider
    )
    return _provider_view(provider)


@router.delete(
    "/model-provider",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove your tenant's model provider",
)
async def delete_model_provider(principal: TenantAdmin, settings: SettingsDep) -> Response:
    """Every version of the key is removed; model-backed agents cannot start until it is set
    again (runs under way fail at their next step)."""
    await secret_store_from_settings(settings).delete(model_provider_path(principal.tenant_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _provider_view(provider: dict[str, Any]) -> ModelProviderView:
    return ModelProviderView(
        base_url=provider["base_url"],
        model=provider["model"],
        key_hint="…" + str(provider["api_key"])[-4:],
        updated_at=datetime.fromisoformat(provider["updated_at"]),
    )


@router.get("/runs", summary="Your tenant's agent runs")
async def list_runs(
    principal: CurrentPrincipal,
    session: SessionDep,
    agent_id: Annotated[str | None, Query(max_length=64)] = None,
    status: AgentRunStatus | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> RunPage:
    """Newest first, optionally of one agent or status; pass ``next_cursor`` back as
    ``cursor`` for the next page."""
    query = scoped(select(AgentRun), AgentRun, principal)
    if agent_id is not None:
        query = query.where(AgentRun.agent_id == agent_id)
    if status is not None:
        query = query.where(AgentRun.status == status)
    page, following = await newest_first(
        session, query, AgentRun.created_at, AgentRun.id, limit, cursor
    )
    return RunPage(items=[RunListItem.of(row) for row in page], next_cursor=following)


@router.get("/runs/{run_id}", summary="One agent run, with its trace")
async def get_run(
    run_id: uuid.UUID,
    principal: CurrentPrincipal,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
) -> AgentRunState:
    """Status, steps used, every step and tool call, the result and its outcome."""
    row = await owned(session, AgentRun, run_id, principal)
    handle = client.get_workflow_handle_for(AgentRunWorkflow.run, workflow_id(row.id))
    state: AgentRunState = await workflow_calls.query(
        handle, AgentRunWorkflow.state, settings=settings
    )
    return state


@router.get("/decisions", summary="Your tenant's agent decision log")
async def list_decisions(
    principal: CurrentPrincipal,
    session: SessionDep,
    agent_id: Annotated[str | None, Query(max_length=64)] = None,
    outcome: DecisionOutcome | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> DecisionPage:
    """Finished runs, newest first: result, confidence, rationale and outcome (applied,
    approved, rejected, expired, no action, failed)."""
    query = scoped(select(AgentDecision), AgentDecision, principal)
    if agent_id is not None:
        query = query.where(AgentDecision.agent_id == agent_id)
    if outcome is not None:
        query = query.where(AgentDecision.outcome == outcome)
    page, following = await newest_first(
        session, query, AgentDecision.decided_at, AgentDecision.run_id, limit, cursor
    )
    return DecisionPage(items=[DecisionItem.of(row) for row in page], next_cursor=following)


@router.get("/metrics", summary="How your tenant's agents perform")
async def agent_metrics(
    principal: CurrentPrincipal,
    session: SessionDep,
    days: Annotated[int, Query(ge=1, le=90)] = 30,
) -> MetricsPage:
    """Per agent, over the last ``days`` days of the decision log: runs, success rate,
    latency p50/p95, tokens, and how often people overturned what the agent proposed."""
    since = datetime.now(UTC) - timedelta(days=days)
    query = select(
        AgentDecision.agent_id,
        AgentDecision.outcome,
        AgentDecision.duration_ms,
        AgentDecision.tokens,
    ).where(AgentDecision.tenant_id == principal.tenant_id, AgentDecision.decided_at >= since)
    rows = (await session.execute(query)).all()
    by_agent: dict[str, list[Any]] = {}
    for row in rows:
        by_agent.setdefault(row.agent_id, []).append(row)
    return MetricsPage(
        since=since, items=[_metrics(agent, runs) for agent, runs in sorted(by_agent.items())]
    )


def _metrics(agent_id: str, runs: list[Any]) -> AgentMetrics:
    failed = sum(r.outcome is DecisionOutcome.FAILED for r in runs)
    approved = sum(r.outcome is DecisionOutcome.APPROVED for r in runs)
    rejected = sum(r.outcome is DecisionOutcome.REJECTED for r in runs)
    latencies = sorted(r.duration_ms for r in runs if r.duration_ms is not None)
    return AgentMetrics(
        agent_id=agent_id,
        runs=len(runs),
        success_rate=round(1 - failed / len(runs), 4),
        latency_p50_ms=_percentile(latencies, 50),
        latency_p95_ms=_percentile(latencies, 95),
        tokens=sum(r.tokens for r in runs),
        reviewed=approved + rejected,
        overturned_rate=round(rejected / (approved + rejected), 4) if approved + rejected else None,
    )


def _percentile(values: list[int], pct: int) -> int | None:
    if len(values) < 2:
        return values[0] if values else None
    return round(statistics.quantiles(values, n=100, method="inclusive")[pct - 1])


# --- One agent --------------------------------------------------------------------------


@router.get("/{agent_id}", summary="One agent of the directory")
async def get_agent(
    agent_id: str, principal: CurrentPrincipal, session: SessionDep, settings: SettingsDep
) -> AgentView:
    """404 for an unknown agent."""
    spec = _spec(agent_id)
    return AgentView.of(spec, (await _config(session, principal, spec, settings)).enabled)


@router.get("/{agent_id}/config", summary="Your tenant's configuration of an agent")
async def get_config(
    agent_id: str, principal: CurrentPrincipal, session: SessionDep, settings: SettingsDep
) -> ConfigView:
    """Defaults until a tenant admin sets it."""
    return await _config(session, principal, _spec(agent_id), settings)


@router.put("/{agent_id}/config", summary="Configure an agent for your tenant")
async def put_config(
    agent_id: str, body: ConfigView, principal: TenantAdmin, session: SessionDep
) -> ConfigView:
    """Runs started from now on follow it (a run keeps the configuration it started with).
    422 naming the field for tools the agent does not have or budgets of an agent without a
    model."""
    spec = _spec(agent_id)
    errors: list[dict[str, Any]] = []
    unknown = sorted(set(body.allowed_tools or ()) - set(spec.tools))
    if unknown:
        errors.append(
            _field_error("allowed_tools", f"not tools of {spec.id}: {', '.join(unknown)}")
        )
    if not spec.needs_model:
        for name in ("run_token_budget", "monthly_token_budget", "model", "temperature"):
            if getattr(body, name) is not None:
                errors.append(_field_error(name, "only model-backed agents have a model"))
    if errors:
        raise Unprocessable("The configuration is invalid.", errors=errors)
    row = await session.get(AgentConfig, (principal.tenant_id, spec.id))
    if row is None:
        row = AgentConfig(tenant_id=principal.tenant_id, agent_id=spec.id)
        session.add(row)
    row.enabled, row.confidence_threshold = body.enabled, body.confidence_threshold
    row.allowed_tools = sorted(set(body.allowed_tools)) if body.allowed_tools is not None else None
    row.always_review, row.max_steps = body.always_review, body.max_steps
    row.concurrency_limit = body.concurrency_limit
    row.run_token_budget, row.monthly_token_budget = (
        body.run_token_budget,
        body.monthly_token_budget,
    )
    row.model, row.temperature = body.model, body.temperature
    row.updated_by = principal.user_id
    await session.commit()
    return body.model_copy(update={"allowed_tools": row.allowed_tools})


def _field_error(field: str, message: str) -> dict[str, Any]:
    return {"loc": ["body", field], "msg": message, "type": "value_error"}


@router.post("/{agent_id}/runs", status_code=status.HTTP_202_ACCEPTED, summary="Start an agent run")
async def start_run(
    agent_id: str,
    body: RunRequest,
    principal: Runner,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
    key: IdempotencyKey,
) -> AgentRunState:
    """Start a run with the agent's ``input`` (422 naming the field when it does not fit the
    agent's input schema). Connections and content items it names must be your tenant's
    (404 otherwise); 409 when the agent is disabled for your tenant. A retry with the same
    ``Idempotency-Key`` answers with the same run."""
    uid = update_id("start_agent_run", principal, key)
    run_id = uuid.uuid5(uuid.NAMESPACE_URL, uid) if uid else uuid.uuid4()
    start = await prepare_run(session, principal, settings, agent_id, body.input, run_id)
    handle = client.get_workflow_handle_for(AgentRunWorkflow.run, workflow_id(run_id))
    if await session.get(AgentRun, run_id) is not None:  # a retried request
        state: AgentRunState = await workflow_calls.query(
            handle, AgentRunWorkflow.state, settings=settings
        )
        return state
    operation = WithStartWorkflowOperation(
        AgentRunWorkflow.run,
        start,
        id=workflow_id(run_id),
        task_queue=settings.temporal_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        # A finished run is never started again under its id: a late retry reads it.
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        static_summary=f"Agent run {start.agent_id} {run_id}",
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(search.TENANT_ID, str(principal.tenant_id)),
                SearchAttributePair(search.BIZ_PROCESS, PROCESS),
                SearchAttributePair(search.BIZ_STATUS, AgentRunStatus.RUNNING.value),
            ]
        ),
    )
    try:
        async with workflow_calls.deadline(settings):
            state = await client.execute_update_with_start_workflow(
                AgentRunWorkflow.listed, start_workflow_operation=operation, id=uid
            )
    except WorkflowAlreadyStartedError:
        state = await workflow_calls.query(handle, AgentRunWorkflow.state, settings=settings)
    return state


async def prepare_run(
    session: AsyncSession,
    principal: Principal,
    settings: Settings,
    agent_id: str,
    agent_input: dict[str, Any],
    run_id: uuid.UUID,
) -> AgentRunStart:
    """A run of the agent for the caller's tenant, with the tenant's configuration fixed into
    it: 404 for an unknown agent or another tenant's connection or item, 422 naming the field
    when the input does not fit the agent's schema, 409 when the agent is disabled."""
    spec = _spec(agent_id)
    try:
        given = spec.input_model.model_validate(agent_input)
    except ValidationError as exc:
        raise Unprocessable(
            "The input does not fit the agent's input schema.",
            errors=[
                {"loc": ["body", "input", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors(include_url=False, include_context=False)
            ],
        ) from None
    config = await run_config(session, principal, settings, spec)
    await _check_references(session, principal, spec, given)
    return AgentRunStart(
        run_id=run_id,
        tenant_id=principal.tenant_id,
        agent_id=spec.id,
        started_by=principal.user_id,
        created_at=datetime.now(UTC),
        input=given.model_dump(mode="json"),
        config=config,
    )


async def run_config(
    session: AsyncSession, principal: Principal, settings: Settings, spec: AgentSpec
) -> AgentRunConfig:
    """The tenant's configuration of the agent as a run fixes it: 409 when the agent is
    disabled, or needs a model and the tenant has no provider or has spent the month's
    tokens."""
    config = await _config(session, principal, spec, settings)
    if not config.enabled:
        raise Conflict(f"The agent {spec.id} is disabled for your tenant.")
    return AgentRunConfig(
        confidence_threshold=config.confidence_threshold,
        allowed_tools=config.allowed_tools
        if config.allowed_tools is not None
        else list(spec.tools),
        always_review=config.always_review,
        max_steps=config.max_steps,
        model=await _model_choice(session, principal, settings, spec, config),
        run_token_budget=config.run_token_budget,
    )


async def _model_choice(
    session: AsyncSession,
    principal: Principal,
    settings: Settings,
    spec: AgentSpec,
    config: ConfigView,
) -> ModelChoice | None:
    """A model-backed agent's model: 409 without a model provider or with the month's token
    budget spent."""
    if not spec.needs_model:
        return None
    provider = await secret_store_from_settings(settings).get(
        model_provider_path(principal.tenant_id)
    )
    if provider is None:
        raise Conflict(
            f"{spec.name} needs a model: set your model provider first "
            "(PUT /api/v1/agents/model-provider)."
        )
    budget = config.monthly_token_budget
    if budget is not None:
        month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        spent = await session.scalar(
            select(func.coalesce(func.sum(AgentDecision.tokens), 0)).where(
                AgentDecision.tenant_id == principal.tenant_id,
                AgentDecision.agent_id == spec.id,
                AgentDecision.decided_at >= month,
            )
        )
        if (spent or 0) >= budget:
            raise Conflict(
                f"{spec.name}'s token budget for the month ({budget}) is spent: "
                f"{spent} tokens used."
            )
    return ModelChoice(model=config.model or provider["model"], temperature=config.temperature)


async def _check_references(
    session: AsyncSession, principal: Principal, spec: AgentSpec, given: BaseModel
) -> None:
    """The connection and content item an input names belong to the caller's tenant; the
    connection is of the kind the agent's tools need (a CRM, an analytics system)."""
    connection_id = getattr(given, "connection_id", None)
    if connection_id is not None:
        connection = await owned(session, Connection, connection_id, principal)
        kind = spec.connection_kind
        if kind is not None and registry.get_spec(connection.connector_id).kind != kind:
            raise Unprocessable(
                f"The connection ({connection.connector_id}) is not {CONNECTION_PORTS[kind]}."
            )
        if connection.status is not ConnectionStatus.CONNECTED:
            raise Unprocessable("The connection is disconnected; reconnect it first.")
    content_id = getattr(given, "content_id", None)
    if content_id is not None:
        await owned(session, ContentItem, content_id, principal)
