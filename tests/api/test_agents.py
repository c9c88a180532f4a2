"""AI agents over HTTP on the dev server, their CRM tools against the HubSpot peer: the
directory and configuration, runs with their traces, the decision log, review before a write
(approve applies, reject discards), the tenant's tool and step limits, and other tenants."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
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
from tests.factories import Member, cms_connection, member
from tests.history import decoded_history
from tests.peers.hubspot import PRIVATE_APP_TOKEN, HubSpotPeer
from workers.main import build_worker

pytest_plugins = ["tests.peers.hubspot"]
DONE = {"completed", "failed"}


@pytest.fixture
def agent_settings(settings: Settings, hubspot_peer: HubSpotPeer) -> Settings:
    # The peer listens on loopback, which production settings refuse (SSRF).
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


# Long on both backends: PostgreSQL by default (SQLite when it does not answer), both with
# --slow.
pytestmark = pytest.mark.one_database


async def crm(api: httpx.AsyncClient, admin: Member) -> str:
    created = await api.post(
        "/api/v1/connections",
        json={
            "connector_id": "hubspot",
            "label": "CRM",
            "auth_kind": "api_key",
            "form": {"api_key": PRIVATE_APP_TOKEN},
        },
        headers=admin.headers,
    )
    assert created.status_code == 201, created.text
    connection_id: str = created.json()["connection_id"]
    return connection_id


def seed_lead(peer: HubSpotPeer) -> str:
    """A VP at a company with a matching domain: score 100, every field known."""
    company = peer.seed("companies", {"name": "Acme", "domain": "acme.io", "industry": "Software"})
    contact = peer.seed(
        "contacts",
        {
            "email": "ada@acme.io",
            "firstname": "Ada",
            "lastname": "Lovelace",
            "jobtitle": "VP Marketing",
            "phone": "+49 30 1234567",
        },
    )
    peer.associate("contacts", contact["id"], "companies", company["id"])
    contact_id: str = contact["id"]
    return contact_id


async def start(
    api: httpx.AsyncClient, who: Member, agent_id: str, given: dict[str, Any], **headers: str
) -> dict[str, Any]:
    started = await api.post(
        f"/api/v1/agents/{agent_id}/runs", json={"input": given}, headers=who.headers | headers
    )
    assert started.status_code == 202, started.text
    run: dict[str, Any] = started.json()
    return run


async def until(
    api: httpx.AsyncClient, who: Member, run_id: str, statuses: set[str]
) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            got = await api.get(f"/api/v1/agents/runs/{run_id}", headers=who.headers)
            assert got.status_code == 200, got.text
            run: dict[str, Any] = got.json()
            if run["status"] in statuses:
                return run
            await asyncio.sleep(0.1)


async def configure(api: httpx.AsyncClient, admin: Member, agent_id: str, **config: Any) -> None:
    put = await api.put(f"/api/v1/agents/{agent_id}/config", json=config, headers=admin.headers)
    assert put.status_code == 200, put.text


async def pending_action(
    api: httpx.AsyncClient, admin: Member, kind: str = "agent_action"
) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            queue = await api.get(f"/api/v1/approvals?kind={kind}", headers=admin.headers)
            assert queue.status_code == 200, queue.text
            if queue.json()["items"]:
                item: dict[str, Any] = queue.json()["items"][0]
                return item
            await asyncio.sleep(0.1)


def notes(peer: HubSpotPeer) -> list[dict[str, Any]]:
    return list(peer.records["notes"].values())


async def test_directory_and_configuration(
    api: httpx.AsyncClient, sessions: SessionFactory, agent_settings: Settings
) -> None:
    admin = await member(sessions, agent_settings)
    user = await member(sessions, agent_settings, Role.USER, tenant_id=admin.tenant_id)
    other = await member(sessions, agent_settings)

    directory = await api.get("/api/v1/agents", headers=user.headers)
    assert directory.status_code == 200, directory.text
    agents = {a["id"]: a for a in directory.json()["items"]}
    assert set(agents) == {
        "lead-scoring",
        "seo-audit",
        "crm-duplicates",
        "email-draft",
        "account-summary",
        "content-brief",
        "content-draft",
        "analytics-anomaly",
    }
    assert agents["email-draft"]["needs_model"] is True
    lead = agents["lead-scoring"]
    assert (lead["category"], lead["needs_model"], lead["enabled"]) == ("crm", False, True)
    assert [(t["name"], t["writes"]) for t in lead["tools"]] == [
        ("crm.get_contact", False),
        ("crm.get_company", False),
        ("crm.create_note", True),
    ]
    assert lead["input_schema"]["required"] == ["connection_id", "contact_id"]
    assert (await api.get("/api/v1/agents/nope", headers=user.headers)).status_code == 404
    assert (await api.get("/api/v1/agents/nope/config", headers=user.headers)).status_code == 404

    defaults = await api.get("/api/v1/agents/lead-scoring/config", headers=user.headers)
    assert defaults.json() == {
        "enabled": True,
        "confidence_threshold": 0.8,
        "allowed_tools": None,
        "always_review": False,
        "max_steps": 20,
        "concurrency_limit": 3,
        "run_token_budget": None,
        "monthly_token_budget": None,
        "model": None,
        "temperature": None,
    }
    config = {"enabled": False, "always_review": True, "allowed_tools": ["crm.get_contact"]}
    path = "/api/v1/agents/lead-scoring/config"
    assert (await api.put(path, json=config, headers=user.headers)).status_code == 403
    bad = await api.put(
        path,
        json={"allowed_tools": ["crm.get_contact", "cms.delete_everything"], "run_token_budget": 5},
        headers=admin.headers,
    )
    assert bad.status_code == 422, bad.text
    assert [e["loc"] for e in bad.json()["errors"]] == [
        ["body", "allowed_tools"],
        ["body", "run_token_budget"],
    ]
    out_of_range = await api.put(path, json={"confidence_threshold": 1.5}, headers=admin.headers)
    assert out_of_range.status_code == 422
    assert (
        await api.put("/api/v1/agents/nope/config", json={}, headers=admin.headers)
    ).status_code == 404
    await configure(api, admin, "lead-scoring", **config)
    assert (await api.get(path, headers=user.headers)).json()["always_review"] is True
    listed = await api.get("/api/v1/agents/lead-scoring", headers=user.headers)
    assert listed.json()["enabled"] is False
    # Another tenant's configuration is its own.
    assert (await api.get(path, headers=other.headers)).json()["enabled"] is True

    refused = await api.post(
        "/api/v1/agents/lead-scoring/runs",
        json={"input": {"connection_id": str(uuid.uuid4()), "contact_id": "1"}},
        headers=user.headers,
    )
    assert refused.status_code == 409, refused.text


async def test_lead_scoring_run_review_and_decision_log(
    api: httpx.AsyncClient,
    hubspot_peer: HubSpotPeer,
    sessions: SessionFactory,
    agent_settings: Settings,
    temporal_env: WorkflowEnvironment,
) -> None:
    admin = await member(sessions, agent_settings, mfa_enabled=True)
    user = await member(sessions, agent_settings, Role.USER, tenant_id=admin.tenant_id)
    connection_id = await crm(api, admin)
    contact_id = seed_lead(hubspot_peer)
    given = {"connection_id": connection_id, "contact_id": contact_id}

    # Read only: the result, no write, no review.
    key = {"Idempotency-Key": uuid.uuid4().hex}
    run = await start(api, user, "lead-scoring", given, **key)
    assert run["status"] == "running"
    again = await start(api, user, "lead-scoring", given, **key)
    assert again["run_id"] == run["run_id"]
    done = await until(api, user, run["run_id"], DONE)
    assert (done["status"], done["outcome"], done["steps"]) == ("completed", "no_action", 5)
    assert done["result"]["output"]["score"] == 100
    assert done["result"]["confidence"] == 1.0
    assert [(t["kind"], t["name"]) for t in done["trace"] if t["kind"] == "tool"] == [
        ("tool", "crm.get_contact"),
        ("tool", "crm.get_company"),
    ]
    late = await start(api, user, "lead-scoring", given, **key)  # retried after it ended
    assert (late["run_id"], late["status"]) == (run["run_id"], "completed")

    # Always reviewed: rejected, nothing is written.
    await configure(api, admin, "lead-scoring", always_review=True)
    rejected_run = await start(api, user, "lead-scoring", given | {"write_score": True})
    waiting = await until(api, user, rejected_run["run_id"], {"awaiting_review"})
    action = await pending_action(api, admin)
    assert action["approval_id"] == waiting["approval_id"]
    assert action["subject"] == "Lead scoring: 1 change(s) to apply"
    detail = await api.get(f"/api/v1/approvals/{action['approval_id']}", headers=admin.headers)
    assert detail.json()["facts"]["write_1"] == f"log lead score 100 on contact {contact_id}"
    decided = await api.post(
        f"/api/v1/approvals/{action['approval_id']}/decision",
        json={"decision": "reject", "reason": "Not now."},
        headers=admin.headers,
    )
    assert decided.status_code == 200, decided.text
    rejected = await until(api, user, rejected_run["run_id"], DONE)
    assert (rejected["status"], rejected["outcome"]) == ("completed", "rejected")
    assert notes(hubspot_peer) == []

    # Approved: the note is written once.
    approved_run = await start(api, user, "lead-scoring", given | {"write_score": True})
    await until(api, user, approved_run["run_id"], {"awaiting_review"})
    action = await pending_action(api, admin)
    decided = await api.post(
        f"/api/v1/approvals/{action['approval_id']}/decision",
        json={"decision": "approve"},
        headers=admin.headers,
    )
    assert decided.status_code == 200, decided.text
    approved = await until(api, user, approved_run["run_id"], DONE)
    assert (approved["status"], approved["outcome"]) == ("completed", "approved")
    written = notes(hubspot_peer)
    assert len(written) == 1
    assert written[0]["properties"]["hs_note_body"].startswith("Score 100/100 (hot).")
    assert ("contacts", contact_id) in written[0]["associations"]

    # Confident enough and not always reviewed: written at once.
    await configure(api, admin, "lead-scoring", confidence_threshold=0.9)
    applied_run = await start(api, user, "lead-scoring", given | {"write_score": True})
    applied = await until(api, user, applied_run["run_id"], DONE)
    assert applied["outcome"] == "applied"
    assert len(notes(hubspot_peer)) == 2

    log = await api.get("/api/v1/agents/decisions?agent_id=lead-scoring", headers=user.headers)
    assert log.status_code == 200, log.text
    rows = log.json()["items"]
    assert [r["outcome"] for r in rows] == ["applied", "approved", "rejected", "no_action"]
    assert rows[0]["confidence"] == 1.0
    assert rows[0]["rationale"].startswith("Score 100/100 (hot).")
    assert rows[0]["writes"] == [
        {"tool": "crm.create_note", "summary": f"log lead score 100 on contact {contact_id}"}
    ]
    assert rows[0]["input_summary"] == (
        f"connection_id={connection_id}, contact_id={contact_id}, write_score=True"
    )
    page = await api.get("/api/v1/agents/decisions?limit=2", headers=user.headers)
    following = await api.get(
        f"/api/v1/agents/decisions?limit=2&cursor={page.json()['next_cursor']}",
        headers=user.headers,
    )
    assert [r["run_id"] for r in page.json()["items"] + following.json()["items"]] == [
        r["run_id"] for r in rows
    ]
    runs = await api.get("/api/v1/agents/runs?limit=3", headers=user.headers)
    assert runs.json()["items"][0]["run_id"] == applied_run["run_id"]
    assert runs.json()["next_cursor"] is not None
    bad_cursor = await api.get("/api/v1/agents/runs?cursor=nonsense", headers=user.headers)
    assert bad_cursor.status_code == 422

    metrics = await api.get("/api/v1/agents/metrics?days=7", headers=user.headers)
    assert metrics.status_code == 200, metrics.text
    [lead] = metrics.json()["items"]
    assert {k: lead[k] for k in ("agent_id", "runs", "success_rate", "tokens")} == {
        "agent_id": "lead-scoring",
        "runs": 4,
        "success_rate": 1.0,
        "tokens": 0,
    }
    assert (lead["reviewed"], lead["overturned_rate"]) == (2, 0.5)
    assert 0 <= lead["latency_p50_ms"] <= lead["latency_p95_ms"]

    # The CRM's credentials never reach the run's history (the connection id does).
    workflow = f"agent-run:{run['run_id']}"
    described = await temporal_env.client.get_workflow_handle(workflow).describe()
    history = await decoded_history(temporal_env.client, workflow, described.run_id)
    assert PRIVATE_APP_TOKEN.encode() not in history
    assert connection_id.encode() in history

    # Another tenant sees none of it.
    stranger = await member(sessions, agent_settings)
    assert (
        await api.get(f"/api/v1/agents/runs/{run['run_id']}", headers=stranger.headers)
    ).status_code == 404
    assert (await api.get("/api/v1/agents/runs", headers=stranger.headers)).json()["items"] == []
    assert (await api.get("/api/v1/agents/decisions", headers=stranger.headers)).json()[
        "items"
    ] == []
    foreign = await api.post(
        "/api/v1/agents/lead-scoring/runs", json={"input": given}, headers=stranger.headers
    )
    assert foreign.status_code == 404


async def test_tool_and_step_limits_and_bad_input(
    api: httpx.AsyncClient,
    hubspot_peer: HubSpotPeer,
    sessions: SessionFactory,
    agent_settings: Settings,
) -> None:
    admin = await member(sessions, agent_settings)
    reader = await member(sessions, agent_settings, Role.READONLY, tenant_id=admin.tenant_id)
    connection_id = await crm(api, admin)
    contact_id = seed_lead(hubspot_peer)
    given = {"connection_id": connection_id, "contact_id": contact_id}

    # The tenant does not allow the company read this contact needs.
    await configure(
        api, admin, "lead-scoring", allowed_tools=["crm.get_contact", "crm.create_note"]
    )
    run = await until(api, admin, (await start(api, admin, "lead-scoring", given))["run_id"], DONE)
    assert (run["status"], run["outcome"]) == ("failed", "failed")
    assert run["error"] == "The tool crm.get_company is not allowed for this agent."
    await configure(api, admin, "lead-scoring", max_steps=2)
    run = await until(api, admin, (await start(api, admin, "lead-scoring", given))["run_id"], DONE)
    assert run["status"] == "failed"
    assert run["error"] == "The step budget of 2 steps is spent (next: step)."
    assert run["steps"] == 2

    # One contact: nothing to pair.
    lonely = await start(
        api, admin, "crm-duplicates", {"connection_id": connection_id, "max_contacts": 2}
    )
    assert (await until(api, admin, lonely["run_id"], DONE))["outcome"] == "no_action"
    await configure(api, admin, "lead-scoring")
    gone = await until(
        api,
        admin,
        (await start(api, admin, "lead-scoring", given | {"contact_id": "999999"}))["run_id"],
        DONE,
    )
    assert gone["status"] == "failed"
    assert gone["error"].startswith("read the contact: ")

    for body, field in (
        ({"contact_id": "1"}, ["body", "input", "connection_id"]),
        ({**given, "contact_id": "a b"}, ["body", "input", "contact_id"]),
        ({**given, "extra": 1}, ["body", "input", "extra"]),
    ):
        refused = await api.post(
            "/api/v1/agents/lead-scoring/runs", json={"input": body}, headers=admin.headers
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["loc"] == field
    unknown = await api.post(
        "/api/v1/agents/nope/runs", json={"input": given}, headers=admin.headers
    )
    assert unknown.status_code == 404
    readonly = await api.post(
        "/api/v1/agents/lead-scoring/runs", json={"input": given}, headers=reader.headers
    )
    assert readonly.status_code == 403


async def test_duplicates_across_pages_with_merge_notes(
    api: httpx.AsyncClient,
    hubspot_peer: HubSpotPeer,
    sessions: SessionFactory,
    agent_settings: Settings,
) -> None:
    admin = await member(sessions, agent_settings)
    connection_id = await crm(api, admin)
    for n in range(118):  # distinct people: no shared block, no pair
        code = "".join(chr(97 + n // 26**k % 26) for k in range(3))
        hubspot_peer.seed(
            "contacts",
            {"email": f"{code}{n}@gmail.com", "firstname": "Kim", "lastname": f"{code}son"},
        )
    first = hubspot_peer.seed(
        "contacts", {"email": "ada@acme.io", "firstname": "Ada", "lastname": "Lovelace"}
    )
    second = hubspot_peer.seed(
        "contacts", {"email": "ADA+crm@acme.io", "firstname": "Ada", "lastname": "Lovelace"}
    )
    await configure(api, admin, "crm-duplicates", confidence_threshold=0.5)
    run = await start(
        api,
        admin,
        "crm-duplicates",
        {"connection_id": connection_id, "max_contacts": 500, "propose_notes": True},
    )
    done = await until(api, admin, run["run_id"], DONE)
    assert (done["status"], done["outcome"]) == ("completed", "applied"), done
    output = done["result"]["output"]
    assert output["scanned"] == 120
    assert [(p["contact_ids"], p["similarity"]) for p in output["pairs"]] == [
        ([first["id"], second["id"]], 1.0)
    ]
    pages = [t for t in done["trace"] if t["name"] == "crm.list_contacts"]
    assert len(pages) == 2
    written = notes(hubspot_peer)
    assert len(written) == 1
    assert {("contacts", first["id"]), ("contacts", second["id"])} <= written[0]["associations"]


async def test_seo_audit_of_a_content_item_and_of_html(
    api: httpx.AsyncClient, sessions: SessionFactory, agent_settings: Settings
) -> None:
    admin = await member(sessions, agent_settings)
    stranger = await member(sessions, agent_settings)
    blog = await cms_connection(sessions, admin.tenant_id, "https://blog.example.com")
    item = await api.post(
        "/api/v1/content",
        json={
            "connection_id": str(blog),
            "title": "Solar panels for homes: what they cost in 2026",
            "body": "## Costs\n\nSolar panels cost less every year. ![](a.png)",
            "body_format": "markdown",
            "meta_description": "Too short.",
        },
        headers=admin.headers,
    )
    assert item.status_code == 201, item.text
    content_id = item.json()["content_id"]
    run = await start(
        api, admin, "seo-audit", {"content_id": content_id, "keyword": "solar panels"}
    )
    done = await until(api, admin, run["run_id"], DONE)
    assert (done["status"], done["outcome"]) == ("completed", "no_action"), done
    audit = done["result"]["output"]
    assert audit["content_id"] == content_id
    assert audit["word_count"] == 7
    assert {c["check"]: c["passed"] for c in audit["checks"]} == {
        "title_length": True,
        "meta_description_length": False,
        "h1": True,
        "subheadings": True,
        "heading_order": True,
        "images_alt": False,
        "links": False,
        "link_text": True,
        "length": False,
        "keyword_in_title": True,
        "keyword_in_meta": False,
        "keyword_early": True,
        "keyword_density": False,
    }
    assert [t["name"] for t in done["trace"] if t["kind"] == "tool"] == ["content.get_item"]

    foreign = await api.post(
        "/api/v1/agents/seo-audit/runs",
        json={"input": {"content_id": content_id}},
        headers=stranger.headers,
    )
    assert foreign.status_code == 404
    page = await start(
        api, stranger, "seo-audit", {"html": "<h1>Hi</h1><p>Hello.</p>", "title": "Hi"}
    )
    done = await until(api, stranger, page["run_id"], DONE)
    assert done["result"]["output"]["score"] == 44  # 4 of 9 checks
    assert done["steps"] == 1
    assert datetime.fromisoformat(done["finished_at"]) <= datetime.now(UTC)


async def task_until(
    api: httpx.AsyncClient, who: Member, task_id: str, status: str
) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            got = await api.get(f"/api/v1/tasks/{task_id}", headers=who.headers)
            assert got.status_code == 200, got.text
            task: dict[str, Any] = got.json()
            if task["status"] == status:
                return task
            await asyncio.sleep(0.1)


async def test_an_agent_assignee_works_a_task_and_a_doubtful_result_goes_to_review(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    agent_settings: Settings,
    hubspot_peer: HubSpotPeer,
) -> None:
    admin = await member(sessions, agent_settings)
    project = await api.post("/api/v1/projects", json={"name": "Growth"}, headers=admin.headers)
    base = f"/api/v1/projects/{project.json()['project_id']}/tasks"

    # A sure result (an SEO audit): the agent accepts, comments and closes the task.
    audit = {"agent_id": "seo-audit", "input": {"html": "<h1>Pricing</h1><p>Plans.</p>"}}
    created = await api.post(
        base, json={"title": "Audit the pricing page", "agent": audit}, headers=admin.headers
    )
    assert created.status_code == 201, created.text
    assert created.json()["assignee"]["kind"] == "agent"
    done = await task_until(api, admin, created.json()["task_id"], "done")
    [comment] = done["comments"]
    assert comment["agent_id"] == "seo-audit"
    assert "confidence 100%" in comment["body"]
    events = [e["event"] for e in done["events"]]
    assert events[:3] == ["created", "assigned", "accepted"]
    assert "agent_finished" in events
    assert {c["kind"]: c["met_at"] is not None for c in done["clocks"]} == {
        "response": True,
        "resolution": True,
    }

    # A doubtful one (a lead known by its e-mail only): a person reviews it.
    connection_id = await crm(api, admin)
    lead = hubspot_peer.seed("contacts", {"email": "someone@example.org"})
    scoring = {
        "agent_id": "lead-scoring",
        "input": {"connection_id": connection_id, "contact_id": lead["id"]},
    }
    doubtful = await api.post(
        base, json={"title": "Score the new lead", "agent": scoring}, headers=admin.headers
    )
    assert doubtful.status_code == 201, doubtful.text
    review = await task_until(api, admin, doubtful.json()["task_id"], "review")
    assert review["comments"][0]["agent_id"] == "lead-scoring"
    decisions = await api.get("/api/v1/agents/decisions", headers=admin.headers)
    assert {d["agent_id"] for d in decisions.json()["items"]} == {"seo-audit", "lead-scoring"}

    # An agent the tenant switched off, or an input that does not fit, is refused up front.
    off = await api.put(
        "/api/v1/agents/seo-audit/config", json={"enabled": False}, headers=admin.headers
    )
    assert off.status_code == 200, off.text
    refused = await api.post(base, json={"title": "x", "agent": audit}, headers=admin.headers)
    assert refused.status_code == 409
    bad = await api.post(
        base,
        json={"title": "x", "agent": {"agent_id": "lead-scoring", "input": {"contact_id": "1"}}},
        headers=admin.headers,
    )
    assert bad.status_code == 422


async def test_routing_gives_tasks_to_agents_up_to_their_concurrency_limit(
    api: httpx.AsyncClient,
    sessions: SessionFactory,
    agent_settings: Settings,
    hubspot_peer: HubSpotPeer,
) -> None:
    admin = await member(sessions, agent_settings)
    connection_id = await crm(api, admin)
    lead = seed_lead(hubspot_peer)
    # The agent writes only after a review, so its tasks stay open while it waits; it takes
    # one task at a time.
    config = {"always_review": True, "concurrency_limit": 1}
    configured = await api.put(
        "/api/v1/agents/lead-scoring/config", json=config, headers=admin.headers
    )
    assert configured.status_code == 200, configured.text
    members = [
        {"agent_id": "lead-scoring", "skills": ["crm"]},
        {"user_id": str(admin.user_id), "skills": ["crm"]},
    ]
    created = await api.post(
        "/api/v1/projects", json={"name": "Leads", "members": members}, headers=admin.headers
    )
    assert created.status_code == 201, created.text
    base = f"/api/v1/projects/{created.json()['project_id']}/tasks"
    scoring = {"connection_id": connection_id, "contact_id": lead, "write_score": True}

    async def routed(title: str, agent_input: dict[str, Any] | None) -> dict[str, Any]:
        body = {"title": title, "skill": "crm", "agent_input": agent_input}
        task = await api.post(base, json=body, headers=admin.headers)
        assert task.status_code == 201, task.text
        async with asyncio.timeout(20):
            while True:
                answer = await api.get(
                    f"/api/v1/tasks/{task.json()['task_id']}", headers=admin.headers
                )
                got: dict[str, Any] = answer.json()
                if got["assignee"] is not None and (
                    got["assignee"]["kind"] == "user" or got["accepted"]
                ):
                    return got
                await asyncio.sleep(0.1)

    first = await routed("Score Ada", scoring)
    assert (first["assignee"]["kind"], first["assignee"]["agent_id"]) == ("agent", "lead-scoring")
    assert first["status"] == "in_progress"
    # The agent is at its limit: the next task goes to the person; so does one it cannot read.
    second = await routed("Score Ada again", scoring)
    assert second["assignee"] == {
        "kind": "user",
        "id": str(admin.user_id),
        "agent_id": None,
        "confidence_threshold": None,
    }
    third = await routed("Call Ada", None)
    assert third["assignee"]["kind"] == "user"

    bad = await api.post(
        "/api/v1/projects",
        json={"name": "x", "members": [{"agent_id": "no-such-agent"}]},
        headers=admin.headers,
    )
    assert bad.status_code == 422
    both = await api.post(
        "/api/v1/projects",
        json={"name": "x", "members": [{"agent_id": "seo-audit", "user_id": str(admin.user_id)}]},
        headers=admin.headers,
    )
    assert both.status_code == 422
