"""Chats with model-backed agents over HTTP. A session is an ``AgentChatWorkflow``
(``chat:{session_id}``): starting one is a workflow start, a message is its ``say`` update
(answered with the agent's reply), the transcript its query. A session belongs to the person
who started it: anyone else gets a 404.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, Field
from sqlalchemy import select
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError

from api import workflow_calls
from api.billing_guard import read_only_guard
from api.deps import SessionDep, SettingsDep, TemporalDep, require_role
from api.pagination import newest_first
from api.routers.agents import prepare_run
from api.tenancy import owned
from api.workflow_calls import Entity, IdempotencyKey, entity_dependency, update_id
from core.errors import Conflict, Forbidden, NotFound, Unprocessable
from core.search import start_options
from core.security import Principal
from models.agent_chat import (
    MAX_MESSAGE,
    AgentChat,
    ChatEnd,
    ChatEntry,
    ChatMessage,
    ChatStart,
    ChatState,
    ChatStatus,
)
from models.agents import AGENTS
from models.user import Role
from workflows.agent_chat import CHAT_ENDED, NOT_THE_CHATS, PROCESS, AgentChatWorkflow, workflow_id

router = APIRouter(prefix="/api/v1/agent-chats", tags=["agents"], dependencies=[read_only_guard])
Chatter = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN, Role.USER))]


class ChatRequest(BaseModel):
    """A chat with a model-backed agent; ``input`` fits the agent's input schema (its
    connection or content item is what the chat is about)."""

    agent_id: str = Field(max_length=64)
    input: dict[str, Any]


class MessageRequest(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_MESSAGE)


class ChatListItem(BaseModel):
    session_id: uuid.UUID
    agent_id: str
    status: ChatStatus
    messages: int
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None


class ChatPage(BaseModel):
    items: list[ChatListItem]
    next_cursor: str | None


@router.post("", status_code=status.HTTP_201_CREATED, summary="Start a chat with an agent")
async def start_chat(
    body: ChatRequest,
    principal: Chatter,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
    key: IdempotencyKey,
) -> ChatState:
    """With a model-backed agent of the directory (422 for one without a model), configured
    and checked as for a run: 404 for an unknown agent or another tenant's connection, 409
    when it is disabled, without a model provider or with the month's tokens spent. A retry
    with the same ``Idempotency-Key`` answers with the same session."""
    spec = AGENTS.get(body.agent_id)
    if spec is not None and not spec.needs_model:
        raise Unprocessable(f"{spec.name} needs no model: start a run of it instead.")
    uid = update_id("start_agent_chat", principal, key)
    session_id = uuid.uuid5(uuid.NAMESPACE_URL, uid) if uid else uuid.uuid4()
    run = await prepare_run(session, principal, settings, body.agent_id, body.input, session_id)
    start = ChatStart(
        session_id=session_id,
        tenant_id=principal.tenant_id,
        agent_id=run.agent_id,
        started_by=principal.user_id,
        created_at=datetime.now(UTC),
        input=run.input,
        config=run.config,
    )
    operation = WithStartWorkflowOperation(
        AgentChatWorkflow.run,
        start,
        **start_options(
            settings,
            workflow_id=workflow_id(session_id),
            tenant_id=principal.tenant_id,
            process=PROCESS,
            status=ChatStatus.OPEN.value,
            summary=f"Chat with {run.agent_id} {session_id}",
        ),
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
    )
    async with workflow_calls.deadline(settings):
        state: ChatState = await client.execute_update_with_start_workflow(
            AgentChatWorkflow.listed, start_workflow_operation=operation, id=uid
        )
    return state


@router.get("", summary="Your chats with agents")
async def list_chats(
    principal: Chatter,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ChatPage:
    """Newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    query = select(AgentChat).where(
        AgentChat.tenant_id == principal.tenant_id, AgentChat.started_by == principal.user_id
    )
    page, following = await newest_first(
        session, query, AgentChat.created_at, AgentChat.id, limit, cursor
    )
    return ChatPage(
        items=[
            ChatListItem(
                session_id=row.id,
                agent_id=row.agent_id,
                status=row.status,
                messages=row.messages,
                created_at=row.created_at,
                updated_at=row.updated_at,
                ended_at=row.ended_at,
            )
            for row in page
        ],
        next_cursor=following,
    )


def _refuse(cause: ApplicationError) -> None:
    """Translate the workflow's refusal types (see ``workflows/agent_chat.py``)."""
    if cause.type == CHAT_ENDED:
        raise Conflict(cause.message)
    if cause.type == NOT_THE_CHATS:
        raise Forbidden(cause.message)


ChatsDep = Annotated[
    Entity[Any],
    Depends(
        entity_dependency(
            AgentChat,
            workflow_id=workflow_id,
            state_query=AgentChatWorkflow.state,
            refuse=_refuse,
            view=lambda answer: answer,
        )
    ),
]


async def _mine(session_id: uuid.UUID, session: SessionDep, principal: Chatter) -> uuid.UUID:
    """The session, if the caller started it (404 otherwise, as for another tenant's)."""
    row = await owned(session, AgentChat, session_id, principal)
    if row.started_by != principal.user_id:
        raise NotFound(f"No chat {session_id}.")
    return row.id


Mine = Annotated[uuid.UUID, Depends(_mine)]


@router.get("/{session_id}", summary="A chat and its transcript")
async def get_chat(session_id: Mine, chats: ChatsDep) -> ChatState:
    """Status, the transcript (its latest entries: ``earlier`` counts those left behind), and
    the tokens used."""
    state: ChatState = await chats.state(session_id)
    return state


@router.post("/{session_id}/messages", summary="Say something; get the agent's reply")
async def say(
    body: MessageRequest, session_id: Mine, principal: Chatter, chats: ChatsDep
) -> ChatEntry:
    """The agent's reply once it has read what it needs (an entry with ``error`` set names
    why it could not answer; the chat goes on). 409 once the chat has ended. A reply slower
    than the call deadline is a 504: retry with the same ``Idempotency-Key`` to get it."""
    message = ChatMessage(text=body.text, by=principal.user_id)
    reply: ChatEntry = await chats.update(session_id, AgentChatWorkflow.say, message)
    return reply


@router.delete("/{session_id}", summary="End a chat")
async def end_chat(session_id: Mine, principal: Chatter, chats: ChatsDep) -> ChatState:
    """The transcript stays readable; 409 when it has ended already."""
    command = ChatEnd(by=principal.user_id)
    state: ChatState = await chats.update(session_id, AgentChatWorkflow.end, command)
    return state
