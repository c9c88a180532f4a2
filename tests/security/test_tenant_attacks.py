"""Tenant attacks: another tenant guesses ids on every tenant-scoped route and process.

The routes are enumerated from ``app.routes``: a route is tenant-scoped when its dependencies
reach :func:`api.deps.current_principal`, and the roles it admits are read from its
``require_role`` dependencies, so a new route is attacked without editing this file. A route
that takes an id this suite cannot fill fails the suite until it learns one.

A victim tenant drives its onboarding (wizard, a document, submit: a pending approval), invites
a member, and has an invoice and a connection. An attacking tenant, with a member of every
tenant role (each having passed MFA, so that step-up is not what stops them), then:

- sends every tenant-scoped route the victim's ids (approval, document, user, invoice,
  connection): all refused, exactly as for an id that does not exist (existence never
  revealed), and no victim id, name or e-mail in any answer;
- as ``readonly`` writes nowhere, as ``user`` reaches no admin route, and no tenant role
  reaches an operator route (403);
- reads everything of its own (lists with every filter, its audit log, its approvals), which
  must show neither other tenants nor the platform staff who decided;
- forges password-reset and invitation tokens for the victim's users and guesses object URLs.

Afterwards the victim's approval, roles, document, connection and audit chain are unchanged.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from api.deps import current_principal
from api.pagination import encode_cursor
from core.db import SessionFactory, transaction
from core.settings import Settings
from models.agent_chat import AgentChat
from models.approval import Approval, ApprovalStatus
from models.audit import AuditEntry, chain_of
from models.billing import Invoice
from models.connection import Connection, ConnectionHealth, ConnectionStatus
from models.content import ContentItem
from models.sync import MatchRule, SyncProfile, SyncStatus
from models.tasks import Task
from models.user import Membership, Role
from tests.api.flows import (
    PDF,
    decide,
    fill_wizard,
    onboarding_until,
    pending_approval,
    staff,
    submit,
    upload_document,
    wizard,
)
from tests.factories import Member, member

# Roles a tenant member can hold (super_admin is platform staff and crosses tenants by design).
TENANT_ROLES = (Role.TENANT_ADMIN, Role.USER, Role.READONLY, Role.AGENT, Role.SERVICE_ACCOUNT)
# Routes that act only on the caller's own session or second factor, not on tenant data: every
# role may use them, and sending them would end or change the attacker's own session.
SELF_SERVICE = {
    ("POST", "/api/v1/auth/logout"),
    ("POST", "/api/v1/auth/mfa/totp/setup"),
    ("POST", "/api/v1/auth/mfa/totp/confirm"),
    ("POST", "/api/v1/auth/mfa/totp/disable"),
    ("POST", "/api/v1/auth/mfa/step-up"),
}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# Routes meant for callers without a tenant token (signing in, links, webhooks, probes). Any
# other route without a tenant principal is for operators: every tenant role is refused there.
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("POST", "/api/v1/auth/register"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    ("POST", "/api/v1/auth/password-reset"),
    ("POST", "/api/v1/auth/password-reset/confirm"),
    ("GET", "/api/v1/auth/sso/{provider}/login"),
    ("GET", "/api/v1/auth/sso/{provider}/callback"),
    ("POST", "/api/v1/billing/webhooks/stripe"),
    ("GET", "/api/v1/connections/oauth/callback"),
    ("PUT", "/api/v1/storage/{token}"),
    ("GET", "/api/v1/storage/{token}"),
}
# Path parameters that are not ids of a row: what to send for them.
NOT_IDS: dict[str, str] = {
    "step": "company",
    "connector_id": "wordpress",
    "resource": "posts",
    "record_kind": "contacts",
    "agent_id": "lead-scoring",
}
# POSTs that only read (a report is a query with a body): ``readonly`` may send them.
READS_BY_POST = {
    ("POST", "/api/v1/connections/{connection_id}/reports"),
    ("POST", "/api/v1/playbooks/validate"),
}
# Valid bodies where the value decides how deep a request gets; others come from the schema.
BODIES: dict[tuple[str, str], Callable[[], Any]] = {
    ("PUT", "/api/v1/onboarding/steps/{step}"): lambda: wizard("Probe Holdings")["company"],
    ("POST", "/api/v1/approvals/{approval_id}/decision"): lambda: {"decision": "approve"},
    ("PUT", "/api/v1/users/{user_id}/role"): lambda: {"role": "readonly"},
    ("POST", "/api/v1/content/{content_id}/schedule"): lambda: {
        "publish_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()
    },
    ("POST", "/api/v1/content/{content_id}/submit"): dict,
    ("PUT", "/api/v1/agents/{agent_id}/config"): dict,
    ("POST", "/api/v1/tasks/{task_id}/assign"): lambda: {"assignee_id": str(uuid.uuid4())},
    ("POST", "/api/v1/users"): lambda: {
        "email": f"probe-{uuid.uuid4().hex[:8]}@example.com",
        "full_name": "Probe Person",
        "role": "user",
    },
    ("POST", "/api/v1/onboarding/documents"): lambda: {
        "filename": "probe.pdf",
        "content_type": "application/pdf",
        "size": 100,
    },
    ("PUT", "/api/v1/billing/subscription/plan"): lambda: {"plan_id": "business"},
    ("POST", "/api/v1/connections"): lambda: {
        "connector_id": "wordpress",
        "label": "Probe site",
        "form": {},
    },
}
UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


# Tenant scoping is the same SQL on both backends: PostgreSQL (production) runs by default,
# SQLite too with --slow, to keep the suite short.
pytestmark = pytest.mark.parametrize(
    "database_url", ["postgresql", pytest.param("sqlite", marks=pytest.mark.slow)], indirect=True
)


# --- The world: a victim with something to steal, an attacker with every role -------------


@dataclass
class Victim:
    admin: Member
    full_name: str
    company: str
    approval_id: str
    document_id: str
    invitee_id: str
    invitee_email: str
    invitee_name: str
    invoice_id: str
    connection_id: str
    connection_label: str
    profile_id: str
    content_id: str
    project_id: str
    task_id: str
    run_id: str
    session_id: str
    playbook_run_id: str

    def markers(self) -> dict[str, str]:
        """Everything of the victim an attacker must never read."""
        return {
            "victim tenant id": str(self.admin.tenant_id),
            "victim admin id": str(self.admin.user_id),
            "victim admin e-mail": self.admin.email,
            "victim admin name": self.full_name,
            "victim company": self.company,
            "victim approval id": self.approval_id,
            "victim document id": self.document_id,
            "victim invitee id": self.invitee_id,
            "victim invitee e-mail": self.invitee_email,
            "victim invitee name": self.invitee_name,
            "victim invoice id": self.invoice_id,
            "victim connection id": self.connection_id,
            "victim connection label": self.connection_label,
            "victim sync profile id": self.profile_id,
            "victim content id": self.content_id,
            "victim project id": self.project_id,
            "victim task id": self.task_id,
            "victim agent run id": self.run_id,
            "victim chat id": self.session_id,
            "victim playbook run id": self.playbook_run_id,
        }

    def foreign_ids(self) -> dict[str, list[str]]:
        """The victim's ids, by the name of the path parameter that takes them."""
        return {
            "approval_id": [self.approval_id],
            "document_id": [self.document_id],
            "user_id": [str(self.admin.user_id), self.invitee_id],
            "invoice_id": [self.invoice_id],
            "connection_id": [self.connection_id],
            "profile_id": [self.profile_id],
            "content_id": [self.content_id],
            # Uploads are reached through their item: any id stands for one of the victim's.
            "upload_id": [str(uuid.uuid4())],
            "project_id": [self.project_id],
            "task_id": [self.task_id],
            "run_id": [self.run_id],
            "session_id": [self.session_id],
            "playbook_run_id": [self.playbook_run_id],
            # Attachments are reached through their task: any id stands for a victim's.
            "attachment_id": [str(uuid.uuid4())],
            # Looked up at Stripe under the caller's own customer: any id stands for a victim's.
            "payment_method_id": [f"pm_{uuid.uuid4().hex[:24]}"],
            "tenant_id": [str(self.admin.tenant_id)],
        }


@dataclass
class World:
    app: FastAPI
    api: httpx.AsyncClient
    victim: Victim
    attackers: dict[Role, Member]
    own_approval_id: str
    decided_approval_id: str
    own_connection_id: str
    own_profile_id: str
    own_content_id: str
    own_project_id: str
    own_task_id: str
    own_run_id: str
    own_session_id: str
    own_playbook_run_id: str
    staff: Member


@dataclass
class Tally:
    """What the suite tried and found; printed so it can be quoted."""

    routes: set[tuple[str, str]] = field(default_factory=set)
    cases: int = 0
    refused: int = 0
    leaked: int = 0
    server_errors: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self, name: str) -> str:
        return (
            f"{name}: {len(self.routes)} routes tried, {self.cases} cases, {self.refused} refused, "
            f"{self.leaked} leaked, {self.server_errors} 5xx"
        )


def report(request: pytest.FixtureRequest, line: str) -> None:
    """Print a figure line on the terminal, past output capture, so it can be quoted."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}", flush=True)


@pytest.fixture
async def app_api(
    settings: Settings, temporal_env: WorkflowEnvironment, engine: AsyncEngine, worker: Worker
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The API in process (local document store, outbox e-mail), and the app for its routes."""
    app = create_app(settings, temporal_env.client, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield app, client


async def _register(api: httpx.AsyncClient, company: str, full_name: str) -> Member:
    email = f"owner-{uuid.uuid4().hex[:10]}@example.com"
    password = f"quartz-{secrets.token_hex(6)}-harbor"
    body = {"email": email, "password": password, "full_name": full_name, "company_name": company}
    created = await api.post("/api/v1/auth/register", json=body)
    assert created.status_code == 201, created.text
    login = await api.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert login.status_code == 200, login.text
    ids, tokens = created.json(), login.json()
    return Member(
        tenant_id=uuid.UUID(ids["tenant_id"]),
        user_id=uuid.UUID(ids["user_id"]),
        role=Role.TENANT_ADMIN,
        email=email,
        access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
    )


async def _victim(
    api: httpx.AsyncClient, sessions: SessionFactory, platform: Member, tag: str
) -> Victim:
    company, full_name = f"Zephyrine Analytics {tag}", f"Vivienne Quellmark {tag}"
    admin = await _register(api, company, full_name)
    await fill_wizard(api, admin, company)
    completed = await upload_document(api, admin, PDF)
    assert completed.status_code == 200, completed.text
    [document] = completed.json()["documents"]
    await submit(api, admin)
    pending = await pending_approval(api, platform, admin.tenant_id)
    invitee_email = f"invitee-{tag}@example.com"
    invitee_name = f"Octavian Brellweather {tag}"
    invited = await api.post(
        "/api/v1/users",
        json={"email": invitee_email, "full_name": invitee_name, "role": "user"},
        headers=admin.headers,
    )
    assert invited.status_code == 201, invited.text
    invoice_id, connection_id = f"in_victim{tag}", uuid.uuid4()
    connection_label = f"Lanternfish shop {tag}"
    await _connection(sessions, admin.tenant_id, connection_label, connection_id)
    profile_id = await _sync_profile(sessions, admin.tenant_id, connection_id)
    content_id = await _content_item(api, admin, connection_id, f"Victim post {tag}")
    project_id, task_id = await _project_task(api, admin, f"Victim project {tag}")
    run_id = await _agent_run(api, admin)
    session_id = await _agent_chat(api, admin)
    playbook_run_id = await _playbook_run(api, admin)
    # The invoices projection row, as billing's workflow writes it.
    async with transaction(sessions) as session:
        session.add(
            Invoice(
                tenant_id=admin.tenant_id,
                stripe_invoice_id=invoice_id,
                status="open",
                amount_due=4900,
                amount_paid=0,
                currency="eur",
                stripe_created=datetime.now(UTC),
                as_of=0,
            )
        )
    return Victim(
        admin=admin,
        full_name=full_name,
        company=company,
        approval_id=str(pending["approval_id"]),
        document_id=str(document["document_id"]),
        invitee_id=invited.json()["user_id"],
        invitee_email=invitee_email,
        invitee_name=invitee_name,
        invoice_id=invoice_id,
        connection_id=str(connection_id),
        connection_label=connection_label,
        profile_id=str(profile_id),
        content_id=content_id,
        project_id=project_id,
        task_id=task_id,
        run_id=run_id,
        session_id=session_id,
        playbook_run_id=playbook_run_id,
    )


async def _content_item(
    api: httpx.AsyncClient, who: Member, connection_id: uuid.UUID, title: str
) -> str:
    """A draft content item (its workflow runs; nothing reaches the CMS until it is
    submitted)."""
    created = await api.post(
        "/api/v1/content",
        json={"title": title, "connection_id": str(connection_id)},
        headers=who.headers,
    )
    assert created.status_code == 201, created.text
    content_id: str = created.json()["content_id"]
    return content_id


async def _project_task(api: httpx.AsyncClient, who: Member, name: str) -> tuple[str, str]:
    """A project of the tenant and one task in it (its workflow runs; nobody to route to)."""
    project = await api.post("/api/v1/projects", json={"name": name}, headers=who.headers)
    assert project.status_code == 201, project.text
    project_id: str = project.json()["project_id"]
    task = await api.post(
        f"/api/v1/projects/{project_id}/tasks", json={"title": f"{name} task"}, headers=who.headers
    )
    assert task.status_code == 201, task.text
    task_id: str = task.json()["task_id"]
    return project_id, task_id


async def _agent_run(api: httpx.AsyncClient, who: Member) -> str:
    """An SEO audit of a snippet: a run that needs no connection."""
    run = await api.post(
        "/api/v1/agents/seo-audit/runs", json={"input": {"html": "<p>x</p>"}}, headers=who.headers
    )
    assert run.status_code in (201, 202), run.text
    run_id: str = run.json()["run_id"]
    return run_id


async def _agent_chat(api: httpx.AsyncClient, who: Member) -> str:
    """A chat about a brief (its model provider set; no message sent)."""
    provider = await api.put(
        "/api/v1/agents/model-provider",
        json={"base_url": "https://models.example/v1", "model": "m", "api_key": "sk-probe-key"},
        headers=who.headers,
    )
    assert provider.status_code == 200, provider.text
    chat = await api.post(
        "/api/v1/agent-chats",
        json={"agent_id": "content-brief", "input": {"topic": "Probe"}},
        headers=who.headers,
    )
    assert chat.status_code == 201, chat.text
    session_id: str = chat.json()["session_id"]
    return session_id


async def _playbook_run(api: httpx.AsyncClient, who: Member) -> str:
    """A playbook run that waits a day (it stays running)."""
    document = {
        "id": "probe",
        "name": "Probe",
        "steps": [{"id": "w", "kind": "wait", "duration": "P1D"}],
    }
    run = await api.post("/api/v1/playbooks/runs", json={"document": document}, headers=who.headers)
    assert run.status_code == 202, run.text
    run_id: str = run.json()["run_id"]
    return run_id


async def _sync_profile(
    sessions: SessionFactory, tenant_id: uuid.UUID, connection_id: uuid.UUID
) -> uuid.UUID:
    """A sync profile's row, as the API writes it (no Schedule: attacks never reach it)."""
    profile_id = uuid.uuid4()
    async with transaction(sessions) as session:
        session.add(
            SyncProfile(
                id=profile_id,
                tenant_id=tenant_id,
                source_connection_id=connection_id,
                target_connection_id=connection_id,
                source_resource="customers",
                target_resource="contacts",
                field_mapping={"email": "email"},
                match_rule=MatchRule.EXTERNAL_ID,
                interval=timedelta(hours=1),
                status=SyncStatus.ACTIVE,
            )
        )
    return profile_id


async def _connection(
    sessions: SessionFactory,
    tenant_id: uuid.UUID,
    label: str,
    connection_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """A connection's projection row, as its workflow writes it once the vendor accepted it
    (the attacks never get as far as calling the vendor)."""
    connection_id = connection_id or uuid.uuid4()
    async with transaction(sessions) as session:
        session.add(
            Connection(
                id=connection_id,
                tenant_id=tenant_id,
                connector_id="wordpress",
                auth_kind="application_password",
                label=label,
                settings={"base_url": f"https://{connection_id.hex[:12]}.example.com"},
                account={"name": label},
                status=ConnectionStatus.CONNECTED,
                health=ConnectionHealth.HEALTHY,
            )
        )
    return connection_id


@pytest.fixture
async def world(
    app_api: tuple[FastAPI, httpx.AsyncClient], sessions: SessionFactory, settings: Settings
) -> World:
    app, api = app_api
    tag = uuid.uuid4().hex[:8]
    platform = await staff(sessions, settings)
    victim = await _victim(api, sessions, platform, tag)
    # The attacker applies under the victim's company name (spelt differently, so that it is
    # not the marker itself), which the duplicate check matches: what the attacker then reads
    # about its own approval must not show the victim.
    owner = await _register(api, f"Mallory Media {tag}", "Mallory Owner")
    await fill_wizard(api, owner, f"Zéphyrine Analytics {tag} GmbH")
    await submit(api, owner)
    decided = str((await pending_approval(api, platform, owner.tenant_id))["approval_id"])
    changes = await decide(api, platform, decided, "request_changes", "A clearer website, please.")
    assert changes.status_code == 200, changes.text
    await onboarding_until(api, owner, "changes_requested")
    await submit(api, owner)
    again = await pending_approval(api, platform, owner.tenant_id)
    attackers = {
        role: await member(sessions, settings, role, tenant_id=owner.tenant_id, mfa_enabled=True)
        for role in TENANT_ROLES
    }
    own_connection = await _connection(sessions, owner.tenant_id, f"Mallory blog {tag}")
    own_profile = await _sync_profile(sessions, owner.tenant_id, own_connection)
    own_content = await _content_item(api, owner, own_connection, f"Mallory post {tag}")
    own_project, own_task = await _project_task(api, owner, f"Mallory project {tag}")
    own_run = await _agent_run(api, owner)
    own_session = await _agent_chat(api, owner)
    own_playbook_run = await _playbook_run(api, owner)
    return World(
        app=app,
        api=api,
        victim=victim,
        attackers=attackers,
        own_approval_id=str(again["approval_id"]),
        decided_approval_id=decided,
        own_connection_id=str(own_connection),
        own_profile_id=str(own_profile),
        own_content_id=own_content,
        own_project_id=own_project,
        own_task_id=own_task,
        own_run_id=own_run,
        own_session_id=own_session,
        own_playbook_run_id=own_playbook_run,
        staff=platform,
    )


# --- Routes, as the app declares them -----------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    params: tuple[str, ...]
    roles: frozenset[Role] | None  # None: any authenticated member
    scoped: bool

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.path)


def _calls(dependant: Dependant) -> Iterator[Any]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)


def _roles(dependant: Dependant) -> frozenset[Role] | None:
    """The roles the route's ``require_role`` dependencies admit (their intersection)."""
    admitted: frozenset[Role] | None = None
    for call in _calls(dependant):
        if getattr(call, "__qualname__", "") != "require_role.<locals>.check":
            continue
        closure = {
            name: cell.cell_contents
            for name, cell in zip(call.__code__.co_freevars, call.__closure__ or (), strict=True)
        }
        roles = frozenset(Role(role) for role in closure["roles"])
        admitted = roles if admitted is None else admitted & roles
    return admitted


def routes_of(app: FastAPI) -> list[Route]:
    """Every API operation as served: full path, with the app's and routers' dependencies."""
    found = []
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute):
            continue
        dependant: Dependant = route.dependant
        scoped = any(call is current_principal for call in _calls(dependant))
        params = tuple(param.name for param in dependant.path_params)
        for method in sorted((route.methods or set()) - {"HEAD", "OPTIONS"}):
            path = str(route.path_format)
            found.append(Route(method, path, params, _roles(dependant), scoped))
    return found


def _resolve(schema: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def sample(schema: dict[str, Any], spec: dict[str, Any]) -> Any:
    """A minimal valid value of a JSON schema (required properties only)."""
    schema = _resolve(schema, spec)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for alternative in ("anyOf", "oneOf", "allOf"):
        if alternative in schema:
            options = [o for o in schema[alternative] if _resolve(o, spec).get("type") != "null"]
            return sample(options[0], spec) if options else None
    kind = schema.get("type", "object")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: sample(properties[name], spec) for name in schema.get("required", [])}
    if kind == "array":
        return [sample(schema.get("items", {}), spec) for _ in range(schema.get("minItems", 0))]
    if kind == "integer":
        return int(schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1))
    if kind == "number":
        return float(schema.get("minimum", 1))
    if kind == "boolean":
        return False
    formats: dict[str, str] = {
        "uuid": str(uuid.uuid4()),
        "email": f"probe-{uuid.uuid4().hex[:8]}@example.com",
        "date-time": datetime.now(UTC).isoformat(),
        "date": datetime.now(UTC).date().isoformat(),
        "uri": "https://example.com/",
    }
    if schema.get("format") in formats:
        return formats[schema["format"]]
    return "p" * max(int(schema.get("minLength", 1)), 8)


def body_for(route: Route, spec: dict[str, Any]) -> Any:
    if route.key in BODIES:
        return BODIES[route.key]()
    operation = spec["paths"].get(route.path, {}).get(route.method.lower(), {})
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" not in content:
        return None
    return sample(content["application/json"].get("schema", {}), spec)


def _fill(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    return path


def _masked(text: str, sent: list[str]) -> str:
    """The answer with the ids the request itself carried replaced, for comparing answers."""
    for value in sent:
        text = text.replace(value, "<id>")
    return UUID_TEXT.sub(lambda m: "<id>" if m.group(0) in sent else m.group(0), text)


def leaks(text: str, markers: dict[str, str], sent: list[str]) -> list[str]:
    """Which markers an answer holds, apart from what the request itself sent."""
    found = []
    for what, value in markers.items():
        if value in sent:
            continue
        if value.lower() in text.lower():
            found.append(what)
    return found


async def _send(
    api: httpx.AsyncClient, method: str, url: str, who: Member, body: Any
) -> httpx.Response:
    kwargs: dict[str, Any] = {"headers": who.headers}
    if body is not None:
        kwargs["json"] = body
    return await api.request(method, url, **kwargs)


# --- The attacks --------------------------------------------------------------------------


async def test_foreign_ids_are_refused_on_every_route_without_a_trace(
    world: World, sessions: SessionFactory, request: pytest.FixtureRequest
) -> None:
    """Every tenant-scoped route with an id, every attacker role, every victim id: refused,
    indistinguishable from an unknown id, nothing of the victim in the answer."""
    tally, spec = Tally(), world.app.openapi()
    markers, foreign = world.victim.markers(), world.victim.foreign_ids()
    before = await _victim_state(sessions, world)
    # An id-taking route may also take one of the attacker's own ids (its own approval with
    # the victim's document): the attack then reaches the innermost check.
    own = {"approval_id": [world.own_approval_id]}
    for route in routes_of(world.app):
        if not route.scoped or route.key in SELF_SERVICE:
            continue
        ids = [p for p in route.params if p not in NOT_IDS]
        if not ids:
            continue
        unknown = [p for p in ids if p not in foreign]
        assert not unknown, f"{route.key} takes {unknown}: give this suite a victim id for it"
        tally.routes.add(route.key)
        for values in _combinations(ids, foreign, own):
            if all(values[p] in own.get(p, []) for p in ids):
                continue  # only the attacker's own ids: not an attack
            random_ids = {p: _unknown(p) if values[p] in foreign[p] else values[p] for p in ids}
            for role, who in world.attackers.items():
                body = body_for(route, spec)
                url = _fill(route.path, {**NOT_IDS, **values})
                answer = await _send(world.api, route.method, url, who, body)
                control = await _send(
                    world.api,
                    route.method,
                    _fill(route.path, {**NOT_IDS, **random_ids}),
                    who,
                    body_for(route, spec),
                )
                tally.cases += 1
                case = f"{route.method} {route.path} as {role.value} with {values}"
                sent = [*values.values(), *random_ids.values()]
                _judge(tally, case, answer, markers, sent)
                if answer.status_code not in (403, 404):
                    tally.failures.append(f"{case}: answered {answer.status_code} {answer.text}")
                elif (answer.status_code, _masked(answer.text, sent)) != (
                    control.status_code,
                    _masked(control.text, sent),
                ):
                    tally.failures.append(
                        f"{case}: tells the victim's id from an unknown one: "
                        f"{answer.status_code} {answer.text} vs "
                        f"{control.status_code} {control.text}"
                    )
    await _processes(world, tally, markers)
    report(request, tally.line("tenant attacks, foreign ids"))
    assert await _victim_state(sessions, world) == before, "an attack changed the victim's rows"
    assert not tally.failures, "\n".join(tally.failures)


def _unknown(param: str) -> str:
    """An id of the parameter's shape that names nothing."""
    if param == "payment_method_id":
        return f"pm_{uuid.uuid4().hex[:24]}"
    return str(uuid.uuid4())


def _combinations(
    ids: list[str], foreign: dict[str, list[str]], own: dict[str, list[str]]
) -> Iterator[dict[str, str]]:
    if not ids:
        yield {}
        return
    first, rest = ids[0], ids[1:]
    for value in [*foreign[first], *own.get(first, [])]:
        for others in _combinations(rest, foreign, own):
            yield {first: value, **others}


def _judge(
    tally: Tally, case: str, answer: httpx.Response, markers: dict[str, str], sent: list[str]
) -> None:
    if answer.status_code >= 500:
        tally.server_errors += 1
        tally.failures.append(f"{case}: {answer.status_code} {answer.text}")
    elif answer.status_code >= 400:
        tally.refused += 1
    found = leaks(answer.text + json.dumps(dict(answer.headers)), markers, sent)
    if found:
        tally.leaked += 1
        tally.failures.append(f"{case}: answer shows {found}: {answer.text[:600]}")


async def _processes(world: World, tally: Tally, markers: dict[str, str]) -> None:
    """The processes reached without a tenant's token: reset and invitation links (a forged
    token naming the victim's users), and the object store's signed URLs (guessed)."""
    for user_id in (world.victim.admin.user_id, uuid.UUID(world.victim.invitee_id)):
        for mark in ("", ".i"):
            tally.routes.add(("POST", "/api/v1/auth/password-reset/confirm"))
            forged = f"{user_id.hex}.{secrets.token_urlsafe(32)[:43]}{mark}"
            unknown = f"{uuid.uuid4().hex}.{secrets.token_urlsafe(32)[:43]}{mark}"
            answers = [
                await world.api.post(
                    "/api/v1/auth/password-reset/confirm",
                    json={"token": token, "new_password": "granite-lantern-meadow-77"},
                )
                for token in (forged, unknown)
            ]
            tally.cases += 1
            case = f"confirm a forged {'invitation' if mark else 'reset'} token for {user_id}"
            _judge(tally, case, answers[0], markers, [forged])
            if answers[0].status_code != 400 or (
                _masked(answers[0].text, [forged]) != _masked(answers[1].text, [unknown])
            ):
                tally.failures.append(
                    f"{case}: {answers[0].status_code} {answers[0].text}; for an unknown user: "
                    f"{answers[1].status_code} {answers[1].text}"
                )
    for route in routes_of(world.app):
        if route.params != ("token",):
            continue
        tally.routes.add(route.key)
        guess = base64.urlsafe_b64encode(
            f"tenants/{world.victim.admin.tenant_id}/onboarding/{world.victim.document_id}".encode()
        ).decode()
        for token in (guess, secrets.token_urlsafe(48)):
            answer = await world.api.request(
                route.method, _fill(route.path, {"token": token}), content=PDF
            )
            tally.cases += 1
            _judge(tally, f"{route.method} {route.path} with a guessed token", answer, markers, [])
            if answer.status_code not in (403, 404):
                tally.failures.append(f"{route.key} with a guessed token: {answer.status_code}")


async def _victim_state(sessions: SessionFactory, world: World) -> dict[str, Any]:
    """The victim's rows an attack could change."""
    victim = world.victim
    async with sessions() as session:
        approval = await session.get(Approval, uuid.UUID(victim.approval_id))
        assert approval is not None
        rows = await session.execute(
            select(Membership.user_id, Membership.role).where(
                Membership.tenant_id == victim.admin.tenant_id
            )
        )
        roles = {user_id: role for user_id, role in rows}  # noqa: C416 - rows, not pairs
        audit_rows = await session.scalar(
            select(func.count())
            .select_from(AuditEntry)
            .where(AuditEntry.chain == chain_of(victim.admin.tenant_id))
        )
        connection = await session.get(Connection, uuid.UUID(victim.connection_id))
        assert connection is not None
        profile = await session.get(SyncProfile, uuid.UUID(victim.profile_id))
        assert profile is not None
        content = await session.get(ContentItem, uuid.UUID(victim.content_id))
        assert content is not None
        task = await session.get(Task, uuid.UUID(victim.task_id))
        assert task is not None
        chat = await session.get(AgentChat, uuid.UUID(victim.session_id))
        assert chat is not None
    return {
        "chat": (chat.status, chat.messages),
        "task": (task.status, task.assignee_id, task.priority, task.title),
        "content item": (content.status, content.revision, content.title),
        "sync profile": profile.status,
        "connection": (connection.status, connection.health, connection.label),
        "approval": (approval.status, len(approval.history), approval.decided_by),
        "attachments": [a["document_id"] for a in approval.attachments],
        "roles": roles,
        "audit rows": audit_rows,
    }


async def test_roles_refused_where_they_may_not_act(
    world: World, request: pytest.FixtureRequest
) -> None:
    """``readonly`` writes nowhere; every role is refused (403) where its route does not admit
    it (``user`` on admin routes); and deciding is for the approval's decider role only."""
    tally, spec = Tally(), world.app.openapi()
    markers = world.victim.markers()
    own_ids = {
        "approval_id": world.own_approval_id,
        "document_id": str(uuid.uuid4()),
        "user_id": str(world.attackers[Role.TENANT_ADMIN].user_id),
        "invoice_id": str(uuid.uuid4()),
        "connection_id": world.own_connection_id,
        "profile_id": world.own_profile_id,
        "content_id": world.own_content_id,
        "upload_id": str(uuid.uuid4()),
        "project_id": world.own_project_id,
        "task_id": world.own_task_id,
        "run_id": world.own_run_id,
        "session_id": world.own_session_id,
        "playbook_run_id": world.own_playbook_run_id,
        "attachment_id": str(uuid.uuid4()),
        "payment_method_id": f"pm_{uuid.uuid4().hex[:24]}",
        "tenant_id": str(world.attackers[Role.TENANT_ADMIN].tenant_id),
        **NOT_IDS,
    }
    for route in routes_of(world.app):
        unknown = [p for p in route.params if p not in own_ids]
        assert not route.scoped or not unknown, f"{route.key} takes {unknown}: add an own id"
        if not route.scoped and route.key not in PUBLIC:
            await _operator_route(world, route, tally, markers, body_for(route, spec))
            continue
        if not route.scoped or route.key in SELF_SERVICE:
            continue
        for role, who in world.attackers.items():
            admitted = route.roles is None or role in route.roles
            read_only_write = (
                role is Role.READONLY
                and route.method not in SAFE_METHODS
                and route.key not in READS_BY_POST
            )
            if admitted and not read_only_write:
                continue
            tally.routes.add(route.key)
            answer = await _send(
                world.api, route.method, _fill(route.path, own_ids), who, body_for(route, spec)
            )
            tally.cases += 1
            case = f"{route.method} {route.path} as {role.value}"
            _judge(tally, case, answer, markers, [])
            if answer.status_code != 403:
                why = (
                    "a write by readonly"
                    if admitted
                    else f"admits only {sorted(route.roles or [])}"
                )
                tally.failures.append(
                    f"{case} ({why}): answered {answer.status_code} {answer.text}"
                )
    # Deciding is not a route-level role: the approval names its decider (platform staff here).
    for role, who in world.attackers.items():
        answer = await _send(
            world.api,
            "POST",
            f"/api/v1/approvals/{world.own_approval_id}/decision",
            who,
            {"decision": "approve"},
        )
        tally.cases += 1
        _judge(tally, f"decide its own tenant's approval as {role.value}", answer, markers, [])
        if answer.status_code != 403:
            tally.failures.append(
                f"{role.value} deciding its own onboarding: {answer.status_code} {answer.text}"
            )
    report(request, tally.line("tenant attacks, roles"))
    assert tally.cases > 0
    assert not tally.failures, "\n".join(tally.failures)


async def _operator_route(
    world: World, route: Route, tally: Tally, markers: dict[str, str], body: Any
) -> None:
    """A route for platform operators (the codec, say): no tenant role gets an answer."""
    tally.routes.add(route.key)
    for role, who in world.attackers.items():
        answer = await _send(world.api, route.method, route.path, who, body)
        tally.cases += 1
        case = f"{route.method} {route.path} (operators only) as {role.value}"
        _judge(tally, case, answer, markers, [])
        if answer.status_code not in (401, 403):
            tally.failures.append(f"{case}: answered {answer.status_code} {answer.text[:300]}")


async def test_own_reads_show_no_other_tenant_or_staff(
    world: World, request: pytest.FixtureRequest
) -> None:
    """Every tenant-scoped read, as every attacker role, on the attacker's own data (lists with
    every status and a cursor from the start of time included): no victim id, name or e-mail,
    and no identity of the platform staff who decided the attacker's approval."""
    tally = Tally()
    markers = world.victim.markers() | {
        "platform staff id": str(world.staff.user_id),
        "platform staff e-mail": world.staff.email,
    }
    own_ids = {
        "approval_id": world.decided_approval_id,
        "user_id": str(world.attackers[Role.TENANT_ADMIN].user_id),
        **NOT_IDS,
    }
    start = datetime(2000, 1, 1, tzinfo=UTC)
    queries: dict[str, list[dict[str, str]]] = {
        "/api/v1/approvals": [{"status": status.value, "limit": "200"} for status in ApprovalStatus]
        + [{"cursor": encode_cursor(start, uuid.UUID(int=0)), "limit": "200"}],
        "/api/v1/billing/invoices": [
            {"limit": "100"},
            {"cursor": encode_cursor(start + timedelta(days=365 * 100), uuid.UUID(int=2**128 - 1))},
        ],
        "/api/v1/audit": [{"limit": "500"}, {"format": "csv", "limit": "500"}],
    }
    for route in routes_of(world.app):
        if not route.scoped or route.method != "GET":
            continue
        if any(p not in own_ids for p in route.params):
            continue  # an id only the victim has: the foreign-id test covers it
        tally.routes.add(route.key)
        for role, who in world.attackers.items():
            for params in queries.get(route.path, [{}]):
                url = _fill(route.path, own_ids)
                answer = await world.api.get(url, params=params, headers=who.headers)
                tally.cases += 1
                _judge(tally, f"GET {url} {params} as {role.value}", answer, markers, [])
    report(request, tally.line("tenant attacks, own reads"))
    assert not tally.failures, "\n".join(tally.failures)
