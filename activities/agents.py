"""Agent activities: an agent's steps, its tool calls on the tenant's connections (credentials
resolved here, by the connection's id), and the runs' projections (the listing and the
decision log)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.connections import open_row
from connectors import registry
from connectors.analytics import AnalyticsPort, DateRange, ReportRequest, report_day
from connectors.chat_models import ChatFunction, ModelTurn, OpenAIChatRunner, model_timeout
from connectors.crm import ActivityDraft, ActivityQuery, CRMPort, RecordRef
from connectors.http import ConnectorError, SchemaMismatch, as_application_error, connector_client
from connectors.pacing import DatabasePacer, Pacer
from connectors.ports import Connector, ListQuery
from connectors.secrets import SecretStore, model_provider_path
from core import agent_rules, model_agents
from core.db import SessionFactory, transaction
from core.render import body_html
from core.settings import Settings
from models.agent_chat import AgentChat, ChatRow, ChatTurn, ChatTurnRequest
from models.agents import (
    AGENTS,
    CONNECTION_PORTS,
    MAX_METRIC_DAYS,
    TOOLS,
    AgentDecision,
    AgentRun,
    AgentRunRow,
    AgentSpec,
    CompanyArgs,
    ContactArgs,
    ContentArgs,
    DailyMetricArgs,
    ListArgs,
    ModelChoice,
    NoteArgs,
    StepDecision,
    StepRequest,
    ToolCall,
    ToolOutcome,
)
from models.connection import Connection, ConnectionStatus
from models.content import ContentItem, ContentItemState

#: Error type of a tool call the run may not make; the run fails with the reason.
TOOL_REFUSED = "AgentToolRefused"
#: How often a model call heartbeats while it waits for the model.
HEARTBEAT_EVERY = 2.0
#: Error type of a model's turn the run cannot use (retried: the model may answer better).
MODEL_ANSWER_INVALID = "ModelAnswerInvalid"
# Notes already logged on a contact are looked through this far for a retried write's key.
_NOTE_PAGES = 5
# The report dimension of the day (GA4's name, the only analytics vendor so far).
_DAY = "date"


class AgentActivities:
    """Activities bound to the database, the secret store and the connector registry."""

    def __init__(self, sessions: SessionFactory, settings: Settings, secrets: SecretStore) -> None:
        self._sessions = sessions
        self._settings = settings
        self._secrets = secrets
        self._pacer = DatabasePacer(sessions)

    @activity.defn
    async def plan_agent_step(self, request: StepRequest) -> StepDecision:
        """The agent's next step: tool calls to make, or its result (a model-backed agent asks
        its model, through the tenant's own provider)."""
        spec = AGENTS.get(request.agent_id)
        if spec is not None and spec.needs_model:
            return await self._ask_model(spec, request)
        try:
            return agent_rules.plan(request)
        except (ValueError, ValidationError) as exc:  # an input or answer the agent cannot use
            message = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise ApplicationError(
                f"The agent cannot go on: {message}", non_retryable=True
            ) from None

    async def _ask_model(self, spec: AgentSpec, request: StepRequest) -> StepDecision:
        """One turn of the model for a run's step."""
        if request.model is None:
            raise _no_provider()
        try:
            turn = await self._complete(
                request.tenant_id,
                model_agents.conversation(spec, request),
                model_agents.functions(spec, request.tools),
                request.model,
                request.tokens_left,
            )
            return model_agents.decision(spec, request, turn)
        except (ConnectorError, model_agents.ModelAnswerInvalid) as exc:
            raise _model_error(exc) from None

    @activity.defn
    async def chat_turn(self, request: ChatTurnRequest) -> ChatTurn:
        """One turn of the model in a chat with the agent: its reply, or tool calls first."""
        spec = AGENTS[request.agent_id]
        try:
            turn = await self._complete(
                request.tenant_id,
                model_agents.chat_messages(spec, request.input, request.transcript),
                model_agents.functions(spec, request.tools),
                request.model,
                request.tokens_left,
            )
            return model_agents.chat_turn(spec, request.input, turn)
        except (ConnectorError, model_agents.ModelAnswerInvalid) as exc:
            raise _model_error(exc) from None

    async def _complete(
        self,
        tenant_id: uuid.UUID,
        messages: list[dict[str, Any]],
        functions: list[ChatFunction],
        choice: ModelChoice,
        tokens_left: int | None,
    ) -> ModelTurn:
        """Ask the tenant's own provider, heartbeating while the model thinks (a worker that
        dies mid-call is noticed in seconds, not at the step's timeout). The key is read here,
        by the tenant's reference, and used only in the request's header."""
        provider = await self._secrets.get(model_provider_path(tenant_id))
        if provider is None:
            raise _no_provider()
        client = connector_client(
            allow_private=self._settings.connector_allow_private_urls,
            timeout=model_timeout(self._settings.agent_model_timeout_seconds),
        )
        async with client:
            runner = OpenAIChatRunner(client, provider["base_url"], provider["api_key"])
            asked = asyncio.ensure_future(
                runner.complete(
                    messages,
                    functions,
                    model=choice.model,
                    temperature=choice.temperature,
                    max_tokens=tokens_left,
                )
            )
            try:
                while not (await asyncio.wait({asked}, timeout=HEARTBEAT_EVERY))[0]:
                    activity.heartbeat()
            finally:
                asked.cancel()
            return asked.result()

    @activity.defn
    async def call_agent_tool(self, call: ToolCall) -> ToolOutcome:
        """Run one tool of the agent on the run's connection (of the run's tenant)."""
        request = call.request
        spec = TOOLS.get(request.tool)
        agent = AGENTS.get(call.agent_id)
        if spec is None or agent is None or request.tool not in agent.tools:
            raise _refused(f"The tool {request.tool} is not one of the agent's.")
        try:
            if spec.port == "content":
                return ToolOutcome(result=await self._content_item(call))
            async with self._connection(call, spec.port) as port:
                if spec.port == "analytics":
                    return ToolOutcome(result=await _daily_metric(cast(AnalyticsPort, port), call))
                return ToolOutcome(result=await _crm_tool(cast(CRMPort, port), call))
        except ValidationError as exc:
            raise _refused(f"Bad arguments for {request.tool}: {exc.errors()[0]['msg']}") from None

    @activity.defn
    async def record_agent_run(self, row: AgentRunRow) -> None:
        """Upsert the run's listing row; once finished, its decision-log row."""
        now = datetime.now(UTC)
        async with transaction(self._sessions) as session:
            run = await session.get(AgentRun, row.run_id)
            if run is None:
                run = AgentRun(id=row.run_id, created_at=row.created_at)
                session.add(run)
            run.tenant_id, run.agent_id, run.started_by = (
                row.tenant_id,
                row.agent_id,
                row.started_by,
            )
            run.status, run.steps, run.approval_id = row.status, row.steps, row.approval_id
            run.error, run.finished_at, run.updated_at = row.error, row.finished_at, now
            if row.finished_at is None or row.outcome is None:
                return
            decision = await session.get(AgentDecision, row.run_id)
            if decision is None:
                decision = AgentDecision(run_id=row.run_id)
                session.add(decision)
            result = row.result
            decision.tenant_id, decision.agent_id = row.tenant_id, row.agent_id
            decision.decided_at, decision.input_summary = row.finished_at, row.input_summary
            decision.confidence = result.confidence if result else None
            decision.rationale = result.rationale if result else None
            decision.output = result.output.model_dump(mode="json") if result else None
            decision.writes = (
                [w.model_dump(mode="json", include={"tool", "summary"}) for w in result.writes]
                if result
                else []
            )
            decision.outcome, decision.approval_id = row.outcome, row.approval_id
            decision.error, decision.model, decision.tokens = row.error, row.model, row.tokens
            decision.duration_ms = round((row.finished_at - row.created_at).total_seconds() * 1000)

    @activity.defn
    async def record_agent_chat(self, row: ChatRow) -> None:
        """Upsert a chat session's listing row."""
        async with transaction(self._sessions) as session:
            chat = await session.get(AgentChat, row.session_id)
            if chat is None:
                chat = AgentChat(id=row.session_id, created_at=row.created_at)
                session.add(chat)
            chat.tenant_id, chat.agent_id, chat.started_by = (
                row.tenant_id,
                row.agent_id,
                row.started_by,
            )
            chat.status, chat.messages, chat.ended_at = row.status, row.messages, row.ended_at
            chat.updated_at = datetime.now(UTC)

    # --- Tools --------------------------------------------------------------------------

    async def _content_item(self, call: ToolCall) -> dict[str, Any]:
        """The item's title, meta and body as it will be published (its workflow's query)."""
        args = ContentArgs.model_validate(call.request.args)
        async with self._sessions() as session:
            row = await session.get(ContentItem, _uuid(args.content_id))
        if row is None or row.tenant_id != call.tenant_id:
            raise _refused("No such content item in the tenant.")
        handle = activity.client().get_workflow_handle(f"publish:{row.id}")
        item = await handle.query("state", result_type=ContentItemState)
        fields = item.fields
        return {
            "content_id": str(item.content_id),
            "title": fields.title,
            "seo_title": fields.seo_title,
            "meta_description": fields.meta_description,
            "html": body_html(fields),
            "title_is_h1": True,
        }

    def _connection(self, call: ToolCall, kind: str) -> AbstractAsyncContextManager[Connector]:
        """The call's connection, opened: the run's tenant's, connected, and of ``kind``."""
        if call.request.connection_id is None:
            raise _refused(f"{call.request.tool} needs a connection.")
        return tenant_connection(
            self._sessions,
            self._settings,
            self._secrets,
            tenant_id=call.tenant_id,
            connection_id=call.request.connection_id,
            kind=kind,
            refuse=_refused,
            pacer=self._pacer,
        )


@asynccontextmanager
async def tenant_connection(
    sessions: SessionFactory,
    settings: Settings,
    secrets: SecretStore,
    *,
    tenant_id: uuid.UUID,
    connection_id: uuid.UUID,
    kind: str,
    refuse: Callable[[str], ApplicationError],
    pacer: Pacer,
) -> AsyncIterator[Connector]:
    """One of the tenant's connections, opened: connected and of ``kind`` (a port of
    :data:`~models.agents.CONNECTION_PORTS`), else ``refuse``'s error; vendor errors as
    Temporal's."""
    async with sessions() as session:
        row = await session.get(Connection, connection_id)
    if row is None or row.tenant_id != tenant_id:
        raise refuse("No such connection in the tenant.")
    if registry.get_spec(row.connector_id).kind != kind:
        raise refuse(f"The connection ({row.connector_id}) is not {CONNECTION_PORTS[kind]}.")
    if row.status is not ConnectionStatus.CONNECTED:
        raise refuse("The connection is disconnected.")
    try:
        async with open_row(settings, secrets, row, pacer) as port:
            yield port
    except ConnectorError as exc:
        raise as_application_error(exc) from None


async def _crm_tool(crm: CRMPort, call: ToolCall) -> dict[str, Any]:
    request = call.request
    args = request.args
    if request.tool == "crm.get_contact":
        contact = await crm.get_contact(ContactArgs.model_validate(args).contact_id)
        return contact.model_dump(mode="json")
    if request.tool == "crm.get_company":
        company = await crm.get_company(CompanyArgs.model_validate(args).company_id)
        return company.model_dump(mode="json")
    if request.tool == "crm.list_contacts":
        page = await crm.list_contacts(ListQuery(**ListArgs.model_validate(args).model_dump()))
        return page.model_dump(mode="json")
    if request.tool == "crm.create_note":
        if call.key is None:
            raise _refused("A write needs its key.")
        return await note_once(crm, NoteArgs.model_validate(args), call.key)
    raise _refused(f"Unknown tool {request.tool}.")


async def note_once(crm: CRMPort, note: NoteArgs, key: str) -> dict[str, Any]:
    """Log the note unless an earlier attempt did: the note ends with its key, looked for
    among the first contact's notes. (The key is not kept as the note's ``external_id``:
    the HubSpot connector cannot create that property on notes yet.)"""
    reference = f"(ref {key})"
    first = RecordRef(kind="contact", id=note.contact_ids[0])
    cursor: str | None = None
    for _ in range(_NOTE_PAGES):
        page = await crm.list_activities(ActivityQuery(related=first, cursor=cursor, limit=100))
        found = next((a for a in page.items if reference in a.body), None)
        if found is not None:
            return {"activity_id": found.id, "created": False}
        cursor = page.next_cursor
        if cursor is None:
            break
    created = await crm.create_activity(
        ActivityDraft(
            kind="note",
            subject=note.subject,
            body=f"{note.body}\n\n{reference}",
            related=[RecordRef(kind="contact", id=i) for i in note.contact_ids],
        )
    )
    return {"activity_id": created.id, "created": True}


async def _daily_metric(analytics: AnalyticsPort, call: ToolCall) -> dict[str, Any]:
    """The metric per day over ``days`` days up to ``end``: by default yesterday, the last
    complete day (today's count, still growing, would look like a drop). Days the vendor has no
    row for are left out (GA4 leaves out days without data)."""
    args = DailyMetricArgs.model_validate(call.request.args)
    today = datetime.now(UTC).date()
    end = args.end or today - timedelta(days=1)
    if end >= today:
        raise _refused("The last day read must be before today: today is not over yet.")
    start = end - timedelta(days=args.days - 1)
    report = await analytics.run_report(
        ReportRequest(
            date_range=DateRange(start=start, end=end),
            dimensions=[_DAY],
            metrics=[args.metric],
            limit=MAX_METRIC_DAYS,  # one row a day: one page
        )
    )
    rows = [
        {"date": report_day(row.dimensions[0], index).isoformat(), "value": row.metrics[0]}
        for index, row in enumerate(report.rows)
    ]
    return {"metric": args.metric, "start": start.isoformat(), "end": end.isoformat(), "rows": rows}


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _refused("Not a content item id.") from None


def _model_error(exc: ConnectorError | model_agents.ModelAnswerInvalid) -> ApplicationError:
    """A malformed answer is retried (the model may do better); the provider's errors are
    every vendor's (a bad key is final, a 429 waits as long as asked)."""
    if isinstance(exc, SchemaMismatch | model_agents.ModelAnswerInvalid):
        return ApplicationError(
            f"The model's answer cannot be used: {exc}", type=MODEL_ANSWER_INVALID
        )
    return as_application_error(exc)


def _no_provider() -> ApplicationError:
    return ApplicationError(
        "The tenant has no model provider set.", type="ModelProviderMissing", non_retryable=True
    )


def _refused(message: str) -> ApplicationError:
    return ApplicationError(message, type=TOOL_REFUSED, non_retryable=True)
