"""Playbooks over HTTP on the dev server: the new-lead follow-up against the HubSpot peer (a hot
lead gets a deal and a call task, a cold one a nurture note), the blog post pipeline against the
chat-completions peer and the real WordPress, documents refused naming the step, and a run
paused, resumed and cancelled."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from connectors.crm.hubspot import API_BASE
from connectors.secrets import connection_path, secret_store_from_settings
from core.db import SessionFactory
from core.settings import Settings
from models.tasks import Task
from models.user import Role
from tests.api.test_agents import crm, pending_action, seed_lead
from tests.api.test_model_agents import answer, provider
from tests.factories import Member, cms_connection, member
from tests.peers.chat_model import ChatModelPeer
from tests.peers.hubspot import HubSpotPeer
from tests.peers.wordpress import WordPressSite
from workers.main import build_worker

pytest_plugins = ["tests.peers.hubspot", "tests.peers.chat_model", "tests.peers.wordpress"]
# Agents' SQL is the same on both backends: PostgreSQL by default, SQLite too with --slow.
pytestmark = pytest.mark.one_database
RUNS = "/api/v1/playbooks/runs"
ENDED = {"completed", "failed", "cancelled"}


@pytest.fixture
def agent_settings(settings: Settings, hubspot_peer: HubSpotPeer) -> Settings:
    # The peers listen on loopback, which production settings refuse (SSRF).
    return settings.model_copy(
        update={
            "connector_allow_private_urls": True,
            "connector_vendor_origins": {API_BASE: hubspot_peer.url},
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


async def run(
    api: httpx.AsyncClient, who: Member, given: dict[str, Any], **body: Any
) -> dict[str, Any]:
    started = await api.post(RUNS, json={"input": given, **body}, headers=who.headers)
    assert started.status_code == 202, started.text
    state: dict[str, Any] = started.json()
    return state


async def until(
    api: httpx.AsyncClient, who: Member, run_id: str, done: Any, seconds: float = 30
) -> dict[str, Any]:
    async with asyncio.timeout(seconds):
        while True:
            got = await api.get(f"{RUNS}/{run_id}", headers=who.headers)
            assert got.status_code == 200, got.text
            state: dict[str, Any] = got.json()
            if done(state):
                return state
            await asyncio.sleep(0.1)


def ended(state: dict[str, Any]) -> bool:
    return state["status"] in ENDED


async def test_new_lead_follow_up(
    api: httpx.AsyncClient,
    hubspot_peer: HubSpotPeer,
    sessions: SessionFactory,
    agent_settings: Settings,
) -> None:
    admin = await member(sessions, agent_settings, mfa_enabled=True)
    owner = await member(sessions, agent_settings, Role.USER, tenant_id=admin.tenant_id)
    connection_id = await crm(api, admin)
    project = await api.post("/api/v1/projects", json={"name": "Sales"}, headers=admin.headers)
    assert project.status_code == 201, project.text
    shipped = await api.get("/api/v1/playbooks", headers=owner.headers)
    assert [p["id"] for p in shipped.json()["items"]] == [
        "new-lead-follow-up",
        "blog-post-pipeline",
    ]
    lead = {
        "connection_id": connection_id,
        "project_id": project.json()["project_id"],
        "owner_id": str(owner.user_id),
    }

    hot = seed_lead(hubspot_peer)
    started = await run(api, admin, lead | {"contact_id": hot}, playbook_id="new-lead-follow-up")
    done = await until(api, admin, started["run_id"], ended)
    assert done["status"] == "completed", done
    assert [s["step_id"] for s in done["steps"]] == ["score", "route", "deal", "call"]
    assert done["results"]["score"]["output"]["score"] == 100
    assert done["results"]["route"] == {"holds": True}
    [deal] = hubspot_peer.records["deals"].values()
    assert deal["properties"]["dealname"] == f"Hot lead {hot}"
    task_id = uuid.UUID(done["results"]["call"]["task_id"])
    async with asyncio.timeout(20):
        while True:
            async with sessions() as session:
                task = await session.scalar(select(Task).where(Task.id == task_id))
            if task is not None:
                break
            await asyncio.sleep(0.1)
    assert (task.title, task.assignee_id, task.priority.value) == (
        f"Call the hot lead {hot} (score 100)",
        owner.user_id,
        "high",
    )

    cold = hubspot_peer.seed("contacts", {"email": "someone@gmail.com"})["id"]
    started = await run(api, admin, lead | {"contact_id": cold}, playbook_id="new-lead-follow-up")
    done = await until(api, admin, started["run_id"], ended)
    assert [s["step_id"] for s in done["steps"]] == ["score", "route", "nurture"]
    [note] = [
        n
        for n in hubspot_peer.records["notes"].values()
        if n["properties"]["hs_note_body"].startswith("Lead score")
    ]
    score = done["results"]["score"]["output"]
    assert note["properties"]["hs_note_body"].startswith(
        f"Lead score {score['score']} ({score['grade']}): added to nurture."
    )
    listed = await api.get(RUNS, headers=owner.headers)
    assert [r["status"] for r in listed.json()["items"]] == ["completed", "completed"]


async def test_documents_are_checked_naming_the_step(
    api: httpx.AsyncClient, sessions: SessionFactory, agent_settings: Settings
) -> None:
    admin = await member(sessions, agent_settings, mfa_enabled=True)
    bad = {
        "id": "mine",
        "name": "Mine",
        "steps": [
            {"id": "wait", "kind": "wait", "duration": "PT1H"},
            {"id": "note", "kind": "action", "action": "crm.create_note", "args": {"x": 1}},
        ],
    }
    refused = await api.post(
        "/api/v1/playbooks/validate", json={"document": bad}, headers=admin.headers
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"] == (
        "The playbook is invalid: step note: crm.create_note takes no x"
    )
    yaml_doc = (
        "id: mine\nname: Mine\nsteps:\n  - {id: a, kind: branch, when: {value: 1}, "
        "then: end, otherwise: nowhere}\n"
    )
    refused = await api.post(
        "/api/v1/playbooks/validate", json={"document_yaml": yaml_doc}, headers=admin.headers
    )
    assert refused.status_code == 422, refused.text
    assert "step a: when: give exactly one of" in refused.json()["detail"]
    unknown = await api.post(RUNS, json={"playbook_id": "nope"}, headers=admin.headers)
    assert unknown.status_code == 404, unknown.text
    # One source of the playbook, no more, no fewer (two used to fail inside the route: 500).
    for sources in (
        {},
        {"document": bad, "document_yaml": yaml_doc},
        {"playbook_id": "new-lead-follow-up", "document": bad},
    ):
        ambiguous = await api.post(RUNS, json=sources, headers=admin.headers)
        assert ambiguous.status_code == 422, (sources, ambiguous.text)
    lacking = await api.post(
        RUNS,
        json={"playbook_id": "new-lead-follow-up", "input": {"contact_id": "1", "x": 2}},
        headers=admin.headers,
    )
    assert lacking.status_code == 422, lacking.text
    assert [e["loc"][-1] for e in lacking.json()["errors"]] == [
        "connection_id",
        "owner_id",
        "project_id",
        "x",
    ]
    user = await member(sessions, agent_settings, Role.USER, tenant_id=admin.tenant_id)
    assert (
        await api.post(RUNS, json={"playbook_id": "new-lead-follow-up"}, headers=user.headers)
    ).status_code == 403


async def test_a_run_is_paused_resumed_and_cancelled(
    api: httpx.AsyncClient, sessions: SessionFactory, agent_settings: Settings
) -> None:
    admin = await member(sessions, agent_settings, mfa_enabled=True)
    other = await member(sessions, agent_settings, mfa_enabled=True)
    document = {
        "id": "slow",
        "name": "Slow",
        "steps": [
            {"id": "first", "kind": "wait", "duration": "PT1S"},
            {"id": "long", "kind": "wait", "duration": "P1D"},
        ],
    }
    started = await run(api, admin, {}, document=document)
    run_id = started["run_id"]
    # Paused during the first step (a pause before it would hold the run before it).
    await until(api, admin, run_id, lambda s: s["current"] == "first")
    paused = await api.post(f"{RUNS}/{run_id}/pause", headers=admin.headers)
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused"
    assert (await api.post(f"{RUNS}/{run_id}/pause", headers=admin.headers)).status_code == 409
    # The first wait ends; the run holds before the next step, however long it waits.
    held = await until(api, admin, run_id, lambda s: [x["step_id"] for x in s["steps"]] != [])
    assert [s["step_id"] for s in held["steps"]] == ["first"]
    await asyncio.sleep(0.5)
    held = (await api.get(f"{RUNS}/{run_id}", headers=admin.headers)).json()
    assert ([s["step_id"] for s in held["steps"]], held["status"]) == (["first"], "paused")
    resumed = await api.post(f"{RUNS}/{run_id}/resume", headers=admin.headers)
    assert resumed.json()["status"] == "running"
    await until(api, admin, run_id, lambda s: s["current"] == "long")
    assert (await api.get(f"{RUNS}/{run_id}", headers=other.headers)).status_code == 404
    cancelled = await api.post(f"{RUNS}/{run_id}/cancel", headers=admin.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert [c.split(" by ")[0] for c in cancelled.json()["controls"]] == [
        "paused",
        "resumed",
        "cancelled",
    ]
    assert (await api.post(f"{RUNS}/{run_id}/cancel", headers=admin.headers)).status_code == 409


async def test_blog_post_pipeline_publishes_to_wordpress(
    api: httpx.AsyncClient,
    chat_model_peer: ChatModelPeer,
    wordpress_site: WordPressSite,
    sessions: SessionFactory,
    agent_settings: Settings,
) -> None:
    admin = await member(sessions, agent_settings, mfa_enabled=True)
    await provider(api, admin, chat_model_peer)
    connection_id = await cms_connection(sessions, admin.tenant_id, wordpress_site.url)
    await secret_store_from_settings(agent_settings).put(
        connection_path(admin.tenant_id, connection_id),
        {
            "username": wordpress_site.username,
            "application_password": wordpress_site.application_password,
        },
    )
    brief = {"title": "Spring sale: a guide", "outline": ["Why", "How"], "keywords": ["sale"]}
    chat_model_peer.reply_text(answer(brief))
    draft = {
        "title": "Spring sale: a guide",
        "body": "<h2>Why</h2><p>Because.</p><h2>How</h2><p>Like this.</p>",
        "excerpt": "Everything about the spring sale.",
        "meta_description": "The spring sale, explained.",
    }
    chat_model_peer.reply_text(answer(draft))
    given = {"topic": "Spring sale", "connection_id": str(connection_id)}
    started = await run(api, admin, given, playbook_id="blog-post-pipeline")
    review = await pending_action(api, admin, kind="playbook_step")
    assert review["subject"] == "Publish the post “Spring sale: a guide”?"
    decided = await api.post(
        f"/api/v1/approvals/{review['approval_id']}/decision",
        json={"decision": "approve"},
        headers=admin.headers,
    )
    assert decided.status_code == 200, decided.text
    done = await until(api, admin, started["run_id"], ended, seconds=60)
    assert done["status"] == "completed", done
    post_id = done["results"]["publish"]["post_id"]
    post = wordpress_site.rest("GET", f"wp/v2/posts/{post_id}", params={"context": "edit"})
    assert (post["status"], post["title"]["raw"]) == ("publish", draft["title"])
    assert "<h2>Why</h2>" in post["content"]["raw"]
    # The draft agent was asked with the brief's outline.
    asked = json.loads(
        chat_model_peer.requests[1]["messages"][1]["content"].removeprefix("Input:\n")
    )
    assert asked["outline"] == ["Why", "How"]
    assert chat_model_peer.failures == []
