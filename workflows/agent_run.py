"""Agent run: one run of an agent from the directory, step by step, with its tool calls as
activities, a bounded number of steps, and a human review before a result writes to a tenant's
system when the tenant's configuration asks for it (``agent-run:{run_id}``)."""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    # Activities by name: their module reaches the tenant's systems over HTTP.
    from core.search import BIZ_PROCESS, BIZ_STATUS, TENANT_ID
    from models.agents import (
        AGENTS,
        TOOLS,
        AgentResult,
        AgentRunRow,
        AgentRunStart,
        AgentRunState,
        AgentRunStatus,
        DecisionOutcome,
        Observation,
        StepDecision,
        StepRequest,
        ToolCall,
        ToolOutcome,
        ToolRequest,
        TraceEntry,
    )
    from models.approval import ApprovalKind, ApprovalOutcome, ApprovalRequest, ApprovalStatus
    from models.billing import UsageMetric
    from models.user import Role
    from workflows import approval, metering

PROCESS = "agent-run"
_STORE_TIMEOUT = timedelta(seconds=30)
# A tool's system that keeps failing (5xx, 429) is retried this long, then the run fails.
_TOOL_WINDOW = timedelta(minutes=10)
_TOOL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1)
)
# A step is a model's turn for model-backed agents: rate limits and malformed answers retry.
_STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1), maximum_attempts=5
)
# A model's step heartbeats every 2 s: a worker lost mid-call is noticed this soon.
_STEP_HEARTBEAT = timedelta(seconds=5)
_STEP_TIMEOUT = timedelta(minutes=6)  # above the longest model timeout (300 s) of settings
_TRACE_KEPT = 200
T = TypeVar("T")


def workflow_id(run_id: uuid.UUID) -> str:
    return f"agent-run:{run_id}"


def write_key(run_id: uuid.UUID, index: int) -> str:
    """The idempotency key of a run's ``index``-th write (kept at the vendor with the record)."""
    return f"agent-{run_id.hex}-{index}"


class RunFailed(Exception):
    """The run stops: the reason is recorded (never a secret or a record's contents)."""


@workflow.defn
class AgentRunWorkflow:
    """One agent run.

    - **Think**: each step is the ``plan_agent_step`` activity: the agent asks for tool calls
      or gives its result. Each tool call is a ``call_agent_tool`` activity on the run's
      connection; only tools of the agent that the tenant allows, and no writes while
      thinking. Steps and tool calls together are bounded by ``max_steps``: past it the run
      fails with the reason.
    - **Review**: a result that proposes writes goes to a ``tenant_admin`` through an
      :class:`~workflows.approval.ApprovalWorkflow` child (kind ``agent_action``) when its
      confidence is below the tenant's threshold or the tenant always reviews the agent.
      Approved, the writes run; rejected, changes requested or expired, nothing is written.
    - **Apply**: each write is an activity with a key fixed here, so a retry never writes
      twice.

    The ``agent_runs`` projection follows the status; the decision log gets the result. Usage:
    the run's agent minutes, and one workflow run unless a task or playbook started it.
    """

    @workflow.init
    def __init__(self, start: AgentRunStart) -> None:
        self._start = start
        self._state = AgentRunState(
            run_id=start.run_id,
            tenant_id=start.tenant_id,
            agent_id=start.agent_id,
            started_by=start.started_by,
            created_at=start.created_at,
            max_steps=start.config.max_steps,
            model=start.config.model.model if start.config.model else None,
        )
        self._thought_until: datetime | None = None
        self._shown = self._state
        self._observations: list[Observation] = []
        self._listed = False

    @workflow.run
    async def run(self, start: AgentRunStart) -> AgentRunState:
        """Think, have the writes reviewed when required, apply them; return the run."""
        await self._record()
        await metering.count_run(start.tenant_id)
        began = workflow.now()
        failure: RunFailed | None = None
        try:
            await self._decide_and_act()
        except RunFailed as err:
            failure = err
        if workflow.patched("agent-run-usage"):
            await self._count_minutes((self._thought_until or workflow.now()) - began)
        self._shown = self._state.model_copy(deep=True)  # until the end is recorded
        if failure is None:
            self._state.status = AgentRunStatus.COMPLETED
        else:
            self._state.status = AgentRunStatus.FAILED
            self._state.outcome = DecisionOutcome.FAILED
            self._state.error = str(failure)
            self._trace("error", "failed", str(failure), ok=False)
        self._state.finished_at = workflow.now()
        await self._record()
        self._shown = self._state
        return self._state

    async def _decide_and_act(self) -> None:
        """Think; then write nothing, have the writes reviewed, or apply them."""
        result = await self._think()
        self._thought_until = workflow.now()
        self._state.result = result
        self._trace("step", "result", f"confidence {result.confidence:.2f}")
        if not result.writes:
            self._state.outcome = DecisionOutcome.NO_ACTION
        elif self._needs_review(result):
            await self._review(result)
        else:
            await self._apply(result, DecisionOutcome.APPLIED)

    @workflow.update
    async def listed(self) -> AgentRunState:
        """The run once its listing row is written (the API starts runs with it)."""
        await workflow.wait_condition(lambda: self._listed)
        return self._state

    @workflow.query
    def state(self) -> AgentRunState:
        """The run: status, steps, its trace, the result and its outcome.

        The end shows once the decision log has it: whoever sees a finished run finds it there.
        """
        return self._shown

    # --- Steps ------------------------------------------------------------------------

    async def _think(self) -> AgentResult:
        config = self._start.config
        while True:
            self._spend("step")
            step = self._state.steps
            decision: StepDecision = await self._activity(
                "plan_agent_step",
                StepRequest(
                    run_id=self._start.run_id,
                    tenant_id=self._start.tenant_id,
                    agent_id=self._start.agent_id,
                    input=self._start.input,
                    observations=self._observations,
                    model=config.model,
                    tools=config.allowed_tools,
                    tokens_left=self._tokens_left(),
                ),
                StepDecision,
                f"step {step} of the agent",
                retry=_STEP_RETRY,
                within=_STEP_TIMEOUT,
                heartbeat=_STEP_HEARTBEAT,
            )
            self._state.tokens += decision.tokens
            if decision.result is not None:
                return decision.result
            if not decision.tool_calls:
                raise RunFailed("The agent asked for nothing and gave no result.")
            self._trace("step", "tool calls", ", ".join(c.tool for c in decision.tool_calls))
            for request in decision.tool_calls:
                self._check_tool(request, writing=False)
                self._spend(request.tool)
                outcome = await self._tool(request)
                self._observations.append(
                    Observation(
                        tool=request.tool,
                        args=request.args,
                        result=outcome.result,
                        step=step,
                        call_id=request.call_id,
                    )
                )
                self._trace("tool", request.tool, request.summary or None)

    def _needs_review(self, result: AgentResult) -> bool:
        config = self._start.config
        return config.always_review or result.confidence < config.confidence_threshold

    async def _review(self, result: AgentResult) -> None:
        approval_id = workflow.uuid4()
        self._state.status = AgentRunStatus.AWAITING_REVIEW
        self._state.approval_id = approval_id
        self._trace("review", "requested", f"approval {approval_id}")
        await self._record()
        workflow.set_current_details(f"waiting for review {approval_id}")
        try:
            outcome: ApprovalOutcome = await workflow.execute_child_workflow(
                approval.ApprovalWorkflow.run,
                self._approval_request(approval_id, result),
                id=approval.workflow_id(approval_id),
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
                static_summary=f"Agent action review {approval_id}",
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(TENANT_ID, str(self._start.tenant_id)),
                        SearchAttributePair(BIZ_PROCESS, approval.PROCESS),
                        SearchAttributePair(BIZ_STATUS, ApprovalStatus.PENDING.value),
                    ]
                ),
            )
        except ChildWorkflowError as err:
            raise RunFailed("The review ended without a decision.") from err
        self._trace("review", outcome.status.value, outcome.reason, ok=True)
        if outcome.status is ApprovalStatus.APPROVED:
            await self._apply(result, DecisionOutcome.APPROVED)
        elif outcome.status is ApprovalStatus.EXPIRED:
            self._state.outcome = DecisionOutcome.EXPIRED
        else:
            self._state.outcome = DecisionOutcome.REJECTED

    async def _apply(self, result: AgentResult, outcome: DecisionOutcome) -> None:
        self._state.status = AgentRunStatus.APPLYING
        await self._record()
        for index, request in enumerate(result.writes):
            self._check_tool(request, writing=True)
            await self._tool(request, key=write_key(self._start.run_id, index))
            self._trace("write", request.tool, request.summary or None)
        self._state.outcome = outcome

    async def _tool(self, request: ToolRequest, key: str | None = None) -> ToolOutcome:
        call = ToolCall(
            run_id=self._start.run_id,
            tenant_id=self._start.tenant_id,
            agent_id=self._start.agent_id,
            request=request,
            key=key,
        )
        outcome: ToolOutcome = await self._activity(
            "call_agent_tool", call, ToolOutcome, request.summary or request.tool, retry=_TOOL_RETRY
        )
        return outcome

    async def _activity(
        self,
        name: str,
        argument: object,
        result: type[T],
        summary: str,
        retry: RetryPolicy,
        within: timedelta = timedelta(seconds=60),
        heartbeat: timedelta | None = None,
    ) -> T:
        try:
            value: T = await workflow.execute_activity(
                name,
                argument,
                result_type=result,
                start_to_close_timeout=within,
                heartbeat_timeout=heartbeat,
                schedule_to_close_timeout=_TOOL_WINDOW,
                retry_policy=retry,
                summary=summary[:200],
            )
        except ActivityError as err:
            cause = err.cause
            reason = cause.message if isinstance(cause, ApplicationError) else str(cause)
            raise RunFailed(f"{summary}: {reason}") from err
        return value

    def _check_tool(self, request: ToolRequest, *, writing: bool) -> None:
        """Only the agent's tools that the tenant allows; writes only after the result."""
        spec = TOOLS.get(request.tool)
        allowed = set(AGENTS[self._start.agent_id].tools) & set(self._start.config.allowed_tools)
        if spec is None or request.tool not in allowed:
            raise RunFailed(f"The tool {request.tool} is not allowed for this agent.")
        if spec.writes != writing:
            raise RunFailed(
                f"The tool {request.tool} writes: only a result's reviewed writes may use it."
                if spec.writes
                else f"The tool {request.tool} is not a write."
            )

    def _tokens_left(self) -> int | None:
        """What the run's token budget still allows (None: no budget); spent, the run stops."""
        budget = self._start.config.run_token_budget
        if budget is None:
            return None
        if self._state.tokens >= budget:
            raise RunFailed(
                f"The token budget of {budget} tokens is spent ({self._state.tokens} used)."
            )
        return budget - self._state.tokens

    async def _count_minutes(self, thinking: timedelta) -> None:
        """The run's agent minutes (its thinking, not the wait for a review), rounded up."""
        await metering.record_usage(
            self._start.tenant_id,
            UsageMetric.AGENT_MINUTES,
            max(1, math.ceil(thinking.total_seconds() / 60)),
            f"{workflow_id(self._start.run_id)}:minutes",
            "count the run's agent minutes as usage",
        )

    def _spend(self, what: str) -> None:
        if self._state.steps >= self._start.config.max_steps:
            raise RunFailed(
                f"The step budget of {self._start.config.max_steps} steps is spent (next: {what})."
            )
        self._state.steps += 1

    # --- State ------------------------------------------------------------------------

    def _trace(self, kind: str, name: str, detail: str | None = None, *, ok: bool = True) -> None:
        trace = self._state.trace
        trace.append(
            TraceEntry.model_validate(
                {"at": workflow.now(), "kind": kind, "name": name, "detail": detail, "ok": ok}
            )
        )
        del trace[:-_TRACE_KEPT]

    def _approval_request(self, approval_id: uuid.UUID, result: AgentResult) -> ApprovalRequest:
        spec = AGENTS[self._start.agent_id]
        facts = {
            "run_id": str(self._start.run_id),
            "agent_id": spec.id,
            "confidence": f"{result.confidence:.2f}",
            "rationale": result.rationale[:2000],
        }
        for index, write in enumerate(result.writes[:20]):
            facts[f"write_{index + 1}"] = write.summary or write.tool
        return ApprovalRequest(
            approval_id=approval_id,
            kind=ApprovalKind.AGENT_ACTION,
            tenant_id=self._start.tenant_id,
            subject=f"{spec.name}: {len(result.writes)} change(s) to apply"[:300],
            decider_role=Role.TENANT_ADMIN,
            policy=self._start.config.review,
            facts=facts,
        )

    async def _record(self) -> None:
        """Write the projection row (and the decision once finished) and ``BizStatus``."""
        state = self._state
        workflow.upsert_search_attributes([BIZ_STATUS.value_set(state.status.value)])
        finished = state.finished_at is not None
        row = AgentRunRow(
            run_id=state.run_id,
            tenant_id=state.tenant_id,
            agent_id=state.agent_id,
            started_by=state.started_by,
            created_at=state.created_at,
            status=state.status,
            steps=state.steps,
            approval_id=state.approval_id,
            error=state.error,
            finished_at=state.finished_at,
            input_summary=_summary(self._start.input) if finished else "",
            result=state.result if finished else None,
            outcome=state.outcome if finished else None,
            model=state.model,
            tokens=state.tokens,
        )
        await workflow.execute_activity(
            "record_agent_run",
            row,
            start_to_close_timeout=_STORE_TIMEOUT,
            summary=f"record the run: {state.status.value}",
        )
        self._listed = True


def _summary(given: dict[str, object]) -> str:
    """The input's ids and options, never free text (a page's HTML, say)."""
    parts = [
        f"{key}={value}"
        for key, value in sorted(given.items())
        if isinstance(value, bool | int | float) or key.endswith("_id") or key == "keyword"
    ]
    if "html" in given:
        parts.append("html given")
    return ", ".join(parts)[:500]
