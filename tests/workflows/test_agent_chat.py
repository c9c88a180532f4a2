"""AgentChatWorkflow on the time-skipping server, its model the chat-completions peer: a long
session continues as a new run with its latest entries, and a quiet one ends after a day."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from connectors.secrets import model_provider_path, secret_store_from_settings
from core.db import SessionFactory
from core.settings import Settings
from models.agent_chat import AgentChat, ChatMessage, ChatStart, ChatState, ChatStatus
from models.agents import AgentRunConfig, ModelChoice
from tests.factories import Member, member
from tests.peers.chat_model import ChatModelPeer
from workers.main import build_worker
from workflows.agent_chat import AgentChatWorkflow, workflow_id

pytest_plugins = ["tests.peers.chat_model"]
pytestmark = pytest.mark.one_database
Handle = WorkflowHandle[AgentChatWorkflow, ChatState]


@pytest.fixture
async def client(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> AsyncIterator[Client]:
    peered = settings.model_copy(update={"connector_allow_private_urls": True})
    async with build_worker(time_skipping_env.client, sessions, peered):
        yield time_skipping_env.client


async def _chat(client: Client, settings: Settings, peer: ChatModelPeer, person: Member) -> Handle:
    await secret_store_from_settings(settings).put(
        model_provider_path(person.tenant_id),
        {"base_url": peer.url, "model": "peer-large", "api_key": peer.api_key},
    )
    session_id = uuid.uuid4()
    start = ChatStart(
        session_id=session_id,
        tenant_id=person.tenant_id,
        agent_id="content-brief",
        started_by=person.user_id,
        created_at=datetime.now(UTC),
        input={"topic": "Spring sale"},
        config=AgentRunConfig(allowed_tools=[], model=ModelChoice(model="peer-large")),
        longest=30,
        kept=10,
    )
    return await client.start_workflow(
        AgentChatWorkflow.run,
        start,
        id=workflow_id(session_id),
        task_queue=settings.temporal_task_queue,
    )


async def test_a_long_chat_continues_as_new_with_its_latest_entries(
    client: Client,
    sessions: SessionFactory,
    settings: Settings,
    chat_model_peer: ChatModelPeer,
) -> None:
    person = await member(sessions, settings)
    handle = await _chat(client, settings, chat_model_peer, person)
    first_run = (await handle.describe()).run_id
    for number in range(16):  # 32 entries: past the 30 this session's run holds
        chat_model_peer.reply_text(f"Reply {number}", tokens=(1, 1))
        reply = await handle.execute_update(
            AgentChatWorkflow.say, ChatMessage(text=f"Message {number}", by=person.user_id)
        )
        assert reply.text == f"Reply {number}"
    assert chat_model_peer.failures == []

    chat_model_peer.reply_text("Still here.", tokens=(1, 1))
    reply = await handle.execute_update(
        AgentChatWorkflow.say, ChatMessage(text="Still there?", by=person.user_id)
    )
    assert reply.text == "Still here."
    assert (await handle.describe()).run_id != first_run
    state = await handle.query(AgentChatWorkflow.state)
    assert state.transcript[0].role == "user"
    assert state.earlier + len(state.transcript) == 34
    assert state.earlier == 22  # the latest 10 carried, then one more message
    assert state.tokens == 17 * 2
    # The new run's model saw the carried entries only, from a person's message on.
    last = chat_model_peer.requests[-1]["messages"]
    assert [m["role"] for m in last[:2]] == ["system", "user"]
    assert len(last) == 1 + len(state.transcript) - 1
    async with sessions() as session:
        row = await session.scalar(select(AgentChat).where(AgentChat.id == state.session_id))
    assert row is not None
    assert row.messages == 34


async def test_a_quiet_chat_ends_after_a_day(
    client: Client,
    sessions: SessionFactory,
    settings: Settings,
    chat_model_peer: ChatModelPeer,
    time_skipping_env: WorkflowEnvironment,
) -> None:
    person = await member(sessions, settings)
    handle = await _chat(client, settings, chat_model_peer, person)
    chat_model_peer.reply_text("Hello.")
    await handle.execute_update(AgentChatWorkflow.say, ChatMessage(text="Hi", by=person.user_id))
    await time_skipping_env.sleep(timedelta(days=1, minutes=1))
    ended = await handle.result()
    assert (ended.status, ended.ended_reason) == (ChatStatus.ENDED, "idle")
    assert [e.role for e in ended.transcript] == ["user", "assistant"]
