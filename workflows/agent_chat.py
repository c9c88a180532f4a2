"""Agent chat: a conversation with a model-backed agent (``chat:{session_id}``), each message an
update answered with the agent's reply, its tool calls as activities."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from functools import partial
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    # Activities by name: their module reaches the model provider and the tenant's systems.
    from core.search import BIZ_STATUS
    from models.agent_chat import (
        ChatEnd,
        ChatEntry,
        ChatMessage,
        ChatRow,
        ChatStart,
        ChatState,
        ChatStatus,
        ChatTurn,
        ChatTurnRequest,
    )
    from models.agents import TOOLS, ToolCall, ToolOutcome, ToolRequest
    from workflows import metering

PROCESS = "agent-chat"
#: Refusal types of the updates (the API maps them to problems).
CHAT_ENDED = "ChatEnded"
NOT_THE_CHATS = "NotTheChats"

_IDLE = timedelta(days=1)  # a session nobody wrote in for this long ends
_STORE_TIMEOUT = timedelta(seconds=30)
_MODEL_HEARTBEAT = timedelta(seconds=5)  # the model call heartbeats every 2 s
_MODEL_TIMEOUT = timedelta(minutes=6)  # above the longest model timeout (300 s) of settings
_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
)

T = TypeVar("T")


def workflow_id(session_id: object) -> str:
    return f"chat:{session_id}"


class TurnFailed(Exception):
    """A turn cannot be answered: the reason becomes the transcript's error entry."""


@workflow.defn
class AgentChatWorkflow:
    """A chat with one model-backed agent, for the person who started it.

    - **say** (update): the person's message; the model's turn is the ``chat_turn``
      activity, its tool calls (the agent's reads that the tenant allows; never writes) are
      ``call_agent_tool`` activities, until the model replies. The reply (or, when a turn
      fails, an error entry naming why) is the update's answer; the session goes on either
      way. One message at a time, in order.
    - **end** (update): the person closes the session; a day without messages closes it too.
    - Steps per message follow the agent's ``max_steps``, tokens per message its
      ``run_token_budget``. A long transcript continues as a new run with its latest entries.
    - The session counts one workflow run as it starts (not again when it continues).
    """

    @workflow.init
    def __init__(self, start: ChatStart) -> None:
        self._start = start
        self._state = ChatState(
            session_id=start.session_id,
            agent_id=start.agent_id,
            started_by=start.started_by,
            created_at=start.created_at,
            transcript=list(start.transcript),
            tokens=start.tokens,
            earlier=start.earlier,
        )
        self._lock = asyncio.Lock()
        self._said = 0
        self._listed = False

    @workflow.run
    async def run(self, start: ChatStart) -> ChatState:
        """Wait for messages; end when asked or idle; continue as new when long."""
        await self._record()
        await metering.count_run(start.tenant_id)
        while self._state.status is ChatStatus.OPEN:
            try:
                await workflow.wait_condition(partial(self._stirred, self._said), timeout=_IDLE)
            except TimeoutError:
                if not self._lock.locked():
                    self._end("idle")
                    await self._record()
                continue
            if self._too_long() and not self._ended():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._carried())
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._state

    @workflow.update
    async def listed(self) -> ChatState:
        """The session once its listing row is written (the API starts sessions with it)."""
        await workflow.wait_condition(lambda: self._listed)
        return self._state

    @workflow.update
    async def say(self, message: ChatMessage) -> ChatEntry:
        """The person's message, answered with the agent's reply (or why it could not)."""
        async with self._lock:
            self._add(ChatEntry(at=workflow.now(), role="user", text=message.text, by=message.by))
            try:
                reply = await self._reply()
            except TurnFailed as failure:
                reply = ChatEntry(
                    at=workflow.now(), role="assistant", text=str(failure), error=True
                )
                self._add(reply)
            self._said += 1
            await self._record()
            return reply

    @say.validator
    def _check_say(self, message: ChatMessage) -> None:
        """Only the person who started it, while it is open."""
        self._check_open(message.by)

    @workflow.update
    async def end(self, command: ChatEnd) -> ChatState:
        """The person ends the session."""
        self._end("ended by its person")
        await self._record()
        return self._state

    @end.validator
    def _check_end(self, command: ChatEnd) -> None:
        """Only the person who started it, while it is open."""
        self._check_open(command.by)

    @workflow.query
    def state(self) -> ChatState:
        """The session: status, transcript (its latest entries), tokens used."""
        return self._state

    # --- A turn -----------------------------------------------------------------------

    async def _reply(self) -> ChatEntry:
        config = self._start.config
        if config.model is None:
            raise TurnFailed("The agent has no model.")
        spent = 0
        for _ in range(config.max_steps):
            budget = config.run_token_budget
            if budget is not None and spent >= budget:
                raise TurnFailed(f"The token budget of {budget} tokens per message is spent.")
            turn: ChatTurn = await self._activity(
                "chat_turn",
                ChatTurnRequest(
                    tenant_id=self._start.tenant_id,
                    agent_id=self._start.agent_id,
                    input=self._start.input,
                    transcript=self._state.transcript,
                    model=config.model,
                    tools=config.allowed_tools,
                    tokens_left=None if budget is None else budget - spent,
                ),
                ChatTurn,
                _MODEL_TIMEOUT,
                heartbeat=_MODEL_HEARTBEAT,
            )
            spent += turn.tokens
            self._state.tokens += turn.tokens
            if turn.text is not None:
                reply = ChatEntry(
                    at=workflow.now(), role="assistant", text=turn.text, tokens=turn.tokens
                )
                self._add(reply)
                return reply
            self._add(
                ChatEntry(
                    at=workflow.now(),
                    role="assistant",
                    tool_calls=turn.tool_calls,
                    tokens=turn.tokens,
                )
            )
            for request in turn.tool_calls:
                await self._tool(request)
        raise TurnFailed(f"The step budget of {config.max_steps} steps per message is spent.")

    async def _tool(self, request: ToolRequest) -> None:
        spec = TOOLS.get(request.tool)
        if spec is None or spec.writes or request.tool not in self._start.config.allowed_tools:
            raise TurnFailed(f"The tool {request.tool} is not allowed in a chat.")
        outcome: ToolOutcome = await self._activity(
            "call_agent_tool",
            ToolCall(
                run_id=self._start.session_id,
                tenant_id=self._start.tenant_id,
                agent_id=self._start.agent_id,
                request=request,
            ),
            ToolOutcome,
            timedelta(seconds=60),
        )
        self._add(
            ChatEntry(
                at=workflow.now(),
                role="tool",
                tool=request.tool,
                call_id=request.call_id,
                text=json.dumps(outcome.result, sort_keys=True, default=str),
            )
        )

    async def _activity(
        self,
        name: str,
        argument: object,
        result: type[T],
        within: timedelta,
        heartbeat: timedelta | None = None,
    ) -> T:
        try:
            value: T = await workflow.execute_activity(
                name,
                argument,
                result_type=result,
                start_to_close_timeout=within,
                heartbeat_timeout=heartbeat,
                schedule_to_close_timeout=timedelta(minutes=10),
                retry_policy=_RETRY,
                summary=name,
            )
        except ActivityError as err:
            cause = err.cause
            reason = cause.message if isinstance(cause, ApplicationError) else str(cause)
            raise TurnFailed(f"The agent could not answer: {reason}") from err
        return value

    # --- State ------------------------------------------------------------------------

    def _add(self, entry: ChatEntry) -> None:
        self._state.transcript.append(entry)

    def _stirred(self, said: int) -> bool:
        """Something to do since ``said`` messages: a message, the end, a new run due."""
        return self._said != said or self._ended() or self._too_long()

    def _ended(self) -> bool:
        return self._state.status is ChatStatus.ENDED

    def _end(self, reason: str) -> None:
        self._state.status = ChatStatus.ENDED
        self._state.ended_at = workflow.now()
        self._state.ended_reason = reason

    def _check_open(self, by: object) -> None:
        if by != self._start.started_by:
            raise ApplicationError("Only who started the chat can write in it.", type=NOT_THE_CHATS)
        if self._ended():
            raise ApplicationError("The chat has ended.", type=CHAT_ENDED)

    def _too_long(self) -> bool:
        longest = len(self._state.transcript) > self._start.longest
        return longest or workflow.info().is_continue_as_new_suggested()

    def _carried(self) -> ChatStart:
        """The next run's start: the latest entries, from a person's message on (a model
        must never see tool answers without the call that asked for them)."""
        transcript = self._state.transcript
        cut = max(0, len(transcript) - self._start.kept)
        while cut < len(transcript) and transcript[cut].role != "user":
            cut += 1
        return self._start.model_copy(
            update={
                "transcript": transcript[cut:],
                "tokens": self._state.tokens,
                "earlier": self._state.earlier + cut,
            }
        )

    async def _record(self) -> None:
        state = self._state
        workflow.upsert_search_attributes([BIZ_STATUS.value_set(state.status.value)])
        await workflow.execute_activity(
            "record_agent_chat",
            ChatRow(
                session_id=state.session_id,
                tenant_id=self._start.tenant_id,
                agent_id=state.agent_id,
                started_by=state.started_by,
                created_at=state.created_at,
                status=state.status,
                messages=state.earlier + len(state.transcript),
                ended_at=state.ended_at,
            ),
            start_to_close_timeout=_STORE_TIMEOUT,
            summary=f"record the chat: {state.status.value}",
        )
        self._listed = True
