"""Model-backed agents over HTTP on the dev server: the tenant's own model provider (BYOK), runs
whose model turns go to a chat-completions peer and whose tool calls read the HubSpot peer, the
token budgets, and what a model can get wrong (malformed answers, 429, slowness, a bad key)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from connectors.crm.hubspot import API_BASE
from core.db import SessionFactory
from core.settings import Settings
from models.user import Role
from tests.api.test_agents import DONE, configure, crm, seed_lead, start, until
from tests.factories import Member, member
from tests.history import decoded_history
from tests.peers.chat_model import ChatModelPeer
from tests.peers.hubspot import HubSpotPeer
from workers.main import build_worker

pytest_plugins = ["tests.peers.hubspot", "tests.peers.chat_model"]
# Agents' SQL is the same on both backends: PostgreSQL by default, SQLite too with --slow.
pytestmark = pytest.mark.one_database
PROVIDER = "/api/v1/agents/model-provider"


@pytest.fixture
def agent_settings(settings: Settings, hubspot_peer: HubSpotPeer) -> Settings:
    # The peers listen on loopback, which production settings refuse (SSRF).
    return settings.model_copy(
        update={
            "connector_allow_private_urls": True,
            "connector_vendor_origins": {API_BASE: hubspot_peer.url},
            "agent_model_timeout_seconds": 1.5,
        }
    )


@pytest.fixture
async def api(
    agent_settings: Settings,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    sessions: SessionFactory,
) -> AsyncIterator[httpx.AsyncClient]:
    async with build_worker(temporal_env.client, sessions, agent_settings):
        app = create_app(agent_settings, temporal_env.client, engine)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def provider(
    api: httpx.AsyncClient, admin: Member, peer: ChatModelPeer, key: str | None = None
) -> None:
    put = await api.put(
        PROVIDER,
        json={"base_url": peer.url, "model": "peer-large", "api_key": key or peer.api_key},
        headers=admin.headers,
    )
    assert put.status_code == 200, put.text


async def to_end(
    api: httpx.AsyncClient, who: Member, agent_id: str, given: dict[str, Any]
) -> dict[str, Any]:
    return await until(api, who, (await start(api, who, agent_id, given))["run_id"], DONE)


def answer(output: dict[str, Any], confidence: float = 0.9) -> str:
    return json.dumps({"output": output, "confidence": confidence, "rationale": "From the CRM."})


BRIEF = {"title": "Spring sale guide", "outline": ["Why", "How"], "keywords": ["spring sale"]}
DRAFT = {"contact_id": "", "subject": "Your Q3 plan", "body": "Hello Ada, ..."}


async def test_the_model_provider_is_the_tenants_own(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    agent_settings: Settings,
    chat_model_peer: ChatModelPeer,
) -> None:
    admin = await member(sessions, agent_settings, mfa_enabled=True)
    user = await member(sessions, agent_settings, Role.USER, tenant_id=admin.tenant_id)
    other = await member(sessions, agent_settings)
    assert (await api.get(PROVIDER, headers=admin.headers)).status_code == 404
    refused = await start_refused(api, user)
    assert "set your model provider first" in refused["detail"]

    form = {"base_url": "ftp://models.example", "model": "m", "api_key": "sk-0123456789"}
    bad = await api.put(PROVIDER, json=form, headers=admin.headers)
    assert bad.status_code == 422, bad.text
    assert bad.json()["errors"][0]["loc"] == ["body", "base_url"]
    form["base_url"] = "https://models.example/v1/"
    assert (await api.put(PROVIDER, json=form, headers=user.headers)).status_code == 403
    put = await api.put(PROVIDER, json=form, headers=admin.headers)
    assert put.status_code == 200, put.text
    shown = (await api.get(PROVIDER, headers=admin.headers)).json()
    assert (shown["base_url"], shown["model"], shown["key_hint"]) == (
        "https://models.example/v1",
        "m",
        "…6789",
    )
    assert "sk-0123456789" not in json.dumps(shown)
    assert (await api.get(PROVIDER, headers=other.headers)).status_code == 404
    # A model-backed agent takes a model and a temperature; a built-in one does not.
    await configure(api, admin, "email-draft", model="peer-small", temperature=0.2)
    wrong = await api.put(
        "/api/v1/agents/lead-scoring/config", json={"model": "m"}, headers=admin.headers
    )
    assert wrong.status_code == 422, wrong.text
    deleted = await api.delete(PROVIDER, headers=admin.headers)
    assert deleted.status_code == 204
    assert (await api.get(PROVIDER, headers=admin.headers)).status_code == 404


async def start_refused(api: httpx.AsyncClient, user: Member) -> dict[str, Any]:
    refused = await api.post(
        "/api/v1/agents/content-brief/runs",
        json={"input": {"topic": "Spring sale"}},
        headers=user.headers,
    )
    assert refused.status_code == 409, refused.text
    body: dict[str, Any] = refused.json()
    return body


async def test_an_email_draft_reads_the_crm_through_a_tool_call(
    api: httpx.AsyncClient,
    hubspot_peer: HubSpotPeer,
    chat_model_peer: ChatModelPeer,
    sessions: SessionFactory,
    agent_settings: Settings,
    temporal_env: WorkflowEnvironment,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = await member(sessions, agent_settings, mfa_enabled=True)
    user = await member(sessions, agent_settings, Role.USER, tenant_id=admin.tenant_id)
    await provider(api, admin, chat_model_peer)
    connection_id = await crm(api, admin)
    contact_id = seed_lead(hubspot_peer)
    chat_model_peer.reply_tool_calls(
        ("crm__get_contact", {"contact_id": contact_id}), tokens=(200, 20)
    )
    # Retried: the model may do better (what a failed turn cost is not counted: unknown here).
    chat_model_peer.reply_text("not the JSON asked for", tokens=(5, 5))
    chat_model_peer.reply_error(429, retry_after=1)
    chat_model_peer.reply_text(answer(DRAFT | {"contact_id": contact_id}), tokens=(300, 40))

    given = {"connection_id": connection_id, "contact_id": contact_id, "purpose": "renewal"}
    run = await start(api, user, "email-draft", given)
    done = await until(api, user, run["run_id"], DONE)
    assert (done["status"], done["outcome"], done["model"]) == (
        "completed",
        "no_action",
        "peer-large",
    )
    assert done["result"]["output"] == DRAFT | {"kind": "email_draft", "contact_id": contact_id}
    assert [t["name"] for t in done["trace"] if t["kind"] == "tool"] == ["crm.get_contact"]
    assert chat_model_peer.failures == []

    asked, retried, limited, answered = chat_model_peer.requests
    assert asked["model"] == "peer-large"
    assert [t["function"]["name"] for t in asked["tools"]] == [
        "crm__get_contact",
        "crm__get_company",
    ]
    tool_message = answered["messages"][-1]
    assert tool_message["role"] == "tool"
    assert json.loads(tool_message["content"])["email"] == "ada@acme.io"
    assert answered["messages"] == retried["messages"] == limited["messages"]
    assert done["tokens"] == 220 + 340

    log = await api.get("/api/v1/agents/decisions?agent_id=email-draft", headers=user.headers)
    row = log.json()["items"][0]
    assert (row["model"], row["tokens"], row["outcome"]) == ("peer-large", 560, "no_action")
    assert row["duration_ms"] >= 0

    run_handle = temporal_env.client.get_workflow_handle(f"agent-run:{run['run_id']}")
    history = await decoded_history(
        temporal_env.client, run_handle.id, (await run_handle.describe()).run_id
    )
    assert chat_model_peer.api_key.encode() not in history
    assert b"ada@acme.io" in history  # decoded indeed: the tool's answer is there
    assert chat_model_peer.api_key not in caplog.text


async def test_budgets_and_failures_end_a_run_cleanly(
    api: httpx.AsyncClient,
    hubspot_peer: HubSpotPeer,
    chat_model_peer: ChatModelPeer,
    sessions: SessionFactory,
    agent_settings: Settings,
) -> None:
    admin = await member(sessions, agent_settings, mfa_enabled=True)
    await provider(api, admin, chat_model_peer)
    connection_id = await crm(api, admin)
    contact_id = seed_lead(hubspot_peer)
    given = {"connection_id": connection_id, "contact_id": contact_id, "purpose": "renewal"}

    # The run's token budget is spent after the first turn: no second turn is asked.
    await configure(api, admin, "email-draft", run_token_budget=300, monthly_token_budget=300)
    chat_model_peer.reply_tool_calls(
        ("crm__get_contact", {"contact_id": contact_id}), tokens=(350, 20)
    )
    spent = await to_end(api, admin, "email-draft", given)
    assert (spent["status"], spent["tokens"]) == ("failed", 370)
    assert spent["error"] == "The token budget of 300 tokens is spent (370 used)."
    assert len(chat_model_peer.requests) == 1

    # The month's budget (300) is spent by now: 409, nothing started.
    refused = await api.post(
        "/api/v1/agents/email-draft/runs", json={"input": given}, headers=admin.headers
    )
    assert refused.status_code == 409, refused.text
    assert "token budget for the month (300) is spent" in refused.json()["detail"]

    # A slow model is given up on and asked again; an answer that does not fit the output
    # schema is asked again too, within limits.
    chat_model_peer.reply_slow(3)  # the answer comes after the run stopped waiting for it
    chat_model_peer.reply_text(answer(BRIEF | {"title": "Too late"}), tokens=(10, 10))
    chat_model_peer.reply_text(answer({"title": "", "outline": []}), tokens=(10, 10))
    chat_model_peer.reply_text(answer(BRIEF), tokens=(10, 10))
    brief = await start(api, admin, "content-brief", {"topic": "Spring sale"})
    written = await until(api, admin, brief["run_id"], DONE)
    assert (written["status"], written["tokens"]) == ("completed", 20)
    assert written["result"]["output"] == BRIEF | {"kind": "content_brief"}
    assert [r["model"] for r in chat_model_peer.requests[1:]] == ["peer-large"] * 3

    # A key the provider refuses fails the run at once, without the key in the reason.
    await provider(api, admin, chat_model_peer, key="sk-wrong-but-long-enough")
    await configure(api, admin, "email-draft")
    before = len(chat_model_peer.requests)
    failed = await to_end(api, admin, "email-draft", given)
    assert failed["status"] == "failed"
    assert "401" in failed["error"]
    assert "sk-wrong" not in failed["error"]
    assert len(chat_model_peer.requests) == before  # refused before it was read
    assert chat_model_peer.failures == []


async def test_a_chat_of_three_turns_with_a_tool_call(
    api: httpx.AsyncClient,
    hubspot_peer: HubSpotPeer,
    chat_model_peer: ChatModelPeer,
    sessions: SessionFactory,
    agent_settings: Settings,
) -> None:
    admin = await member(sessions, agent_settings, mfa_enabled=True)
    user = await member(sessions, agent_settings, Role.USER, tenant_id=admin.tenant_id)
    colleague = await member(sessions, agent_settings, Role.USER, tenant_id=admin.tenant_id)
    await provider(api, admin, chat_model_peer)
    connection_id = await crm(api, admin)
    contact_id = seed_lead(hubspot_peer)
    given = {"connection_id": connection_id, "contact_id": contact_id, "purpose": "renewal"}
    refused = await api.post(
        "/api/v1/agent-chats", json={"agent_id": "lead-scoring", "input": {}}, headers=user.headers
    )
    assert refused.status_code == 422, refused.text
    started = await api.post(
        "/api/v1/agent-chats",
        json={"agent_id": "email-draft", "input": given},
        headers=user.headers,
    )
    assert started.status_code == 201, started.text
    chat = f"/api/v1/agent-chats/{started.json()['session_id']}"

    async def say(text: str) -> dict[str, Any]:
        said = await api.post(f"{chat}/messages", json={"text": text}, headers=user.headers)
        assert said.status_code == 200, said.text
        reply: dict[str, Any] = said.json()
        return reply

    chat_model_peer.reply_tool_calls(("crm__get_contact", {"contact_id": contact_id}))
    chat_model_peer.reply_text("Ada Lovelace, VP Marketing at Acme.")
    assert (await say("Who is this?"))["text"] == "Ada Lovelace, VP Marketing at Acme."
    chat_model_peer.reply_text("Subject: Your renewal, Ada")
    assert (await say("A subject line, please."))["text"] == "Subject: Your renewal, Ada"
    chat_model_peer.reply_error(400, message="This model's maximum context length is exceeded.")
    failed = await say("And the body?")
    assert failed["error"] is True
    assert "maximum context length" in failed["text"]
    assert chat_model_peer.failures == []
    # The second turn's model saw the whole conversation, the tool's answer included.
    roles = [m["role"] for m in chat_model_peer.requests[2]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]

    assert (await api.get(chat, headers=colleague.headers)).status_code == 404
    shown = (await api.get(chat, headers=user.headers)).json()
    assert [(e["role"], e["error"]) for e in shown["transcript"]] == [
        ("user", False),
        ("assistant", False),
        ("tool", False),
        ("assistant", False),
        ("user", False),
        ("assistant", False),
        ("user", False),
        ("assistant", True),
    ]
    assert shown["transcript"][1]["tool_calls"][0]["tool"] == "crm.get_contact"
    ended = await api.delete(chat, headers=user.headers)
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "ended"
    late = await api.post(f"{chat}/messages", json={"text": "Hello?"}, headers=user.headers)
    assert late.status_code == 409, late.text
    listed = (await api.get("/api/v1/agent-chats", headers=user.headers)).json()["items"]
    assert [(c["status"], c["messages"]) for c in listed] == [("ended", 8)]
    assert (await api.get("/api/v1/agent-chats", headers=colleague.headers)).json()["items"] == []
