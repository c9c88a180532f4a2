"""The API never waits on a workflow without a deadline, answers outages with 503 and makes
retried requests safe with ``Idempotency-Key``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from core.db import SessionFactory
from core.settings import Settings
from models.audit import AuditEntry
from models.tenant import TenantStatus
from models.user import Role
from tests.api.flows import (
    applicant,
    fill_wizard,
    pending_approval,
    submit,
    wizard,
)
from tests.factories import Member, member
from tests.polling import eventually
from workflows.onboarding import workflow_id

PROBLEM = "application/problem+json"
COMPANY = {"legal_name": "Retry Safe Ltd", "industry": "Software", "country": "DE"}


@pytest.fixture
async def offline_api(
    settings: Settings, engine: AsyncEngine, temporal_client: Client
) -> AsyncIterator[httpx.AsyncClient]:
    """The API with a Temporal client that cannot reach any server."""
    unreachable = await Client.connect(
        "127.0.0.1:1", lazy=True, data_converter=temporal_client.data_converter
    )
    app = create_app(settings, unreachable, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


@pytest.fixture
async def workerless_api(
    settings: Settings, engine: AsyncEngine, temporal_env: WorkflowEnvironment
) -> AsyncIterator[httpx.AsyncClient]:
    """The API on the dev server with nobody polling its task queue: workflows never answer."""
    quick = settings.model_copy(update={"workflow_call_timeout": timedelta(seconds=1)})
    app = create_app(quick, temporal_env.client, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == PROBLEM
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["type"].endswith("service-unavailable")


async def test_every_workflow_route_answers_503_while_temporal_is_unreachable(
    offline_api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
    decider = await member(sessions, settings, Role.SUPER_ADMIN, mfa_enabled=True)
    calls = [
        ("GET", "/api/v1/onboarding", None, admin),
        ("PUT", "/api/v1/onboarding/steps/company", COMPANY, admin),
        ("POST", "/api/v1/onboarding/submit", None, admin),
        ("POST", "/api/v1/audit/verifications", None, admin),
        ("GET", "/api/v1/audit/verifications/latest", None, admin),
    ]
    for method, path, body, who in calls:
        response = await offline_api.request(method, path, json=body, headers=who.headers)
        _assert_unavailable(response)
    confirm = await offline_api.post(
        "/api/v1/auth/password-reset/confirm",
        json={"token": f"{uuid.uuid4().hex}.{'A' * 43}", "new_password": "x"},
    )
    assert confirm.status_code in (400, 422)  # refused before Temporal is needed
    assert (await offline_api.get("/api/v1/approvals", headers=decider.headers)).status_code == 200


async def test_database_outage_answers_503(
    settings: Settings, temporal_client: Client, sessions: SessionFactory
) -> None:
    from core.db import create_engine

    admin = await member(sessions, settings)
    dead = create_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    app = create_app(settings, temporal_client, dead)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/api/v1/tenant", headers=admin.headers)
    finally:
        await dead.dispose()
    _assert_unavailable(response)


async def test_a_workflow_that_does_not_answer_is_a_504(
    workerless_api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
    response = await workerless_api.put(
        "/api/v1/onboarding/steps/company", json=COMPANY, headers=admin.headers
    )
    assert response.status_code == 504, response.text
    assert response.headers["content-type"] == PROBLEM
    assert "Idempotency-Key" in response.json()["detail"]


async def test_wizard_updates_start_an_onboarding_that_never_started(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings, temporal_client: Client
) -> None:
    """Registration could not reach Temporal: the first wizard step starts the onboarding."""
    admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
    response = await api.put(
        "/api/v1/onboarding/steps/company", json=COMPANY, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["steps"]["company"]["legal_name"] == COMPANY["legal_name"]
    handle = temporal_client.get_workflow_handle(workflow_id(admin.tenant_id))
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING


async def test_a_retried_document_request_announces_one_document(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings, temporal_client: Client
) -> None:
    admin = await applicant(sessions, settings, temporal_client)
    body = {"filename": "register.pdf", "content_type": "application/pdf", "size": 2048}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first, second = [
        await api.post("/api/v1/onboarding/documents", json=body, headers=admin.headers | key)
        for _ in range(2)
    ]
    assert first.status_code == second.status_code == 201, second.text
    assert first.json()["document_id"] == second.json()["document_id"]
    state = (await api.get("/api/v1/onboarding", headers=admin.headers)).json()
    assert [d["document_id"] for d in state["documents"]] == [first.json()["document_id"]]
    other = await api.post(
        "/api/v1/onboarding/documents",
        json=body,
        headers=admin.headers | {"Idempotency-Key": uuid.uuid4().hex},
    )
    assert other.json()["document_id"] != first.json()["document_id"]


async def test_a_retried_submit_gets_the_first_answer(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings, temporal_client: Client
) -> None:
    admin = await applicant(sessions, settings, temporal_client)
    await fill_wizard(api, admin, "Retry Safe Ltd")
    key = {"Idempotency-Key": "submit-" + uuid.uuid4().hex}
    first = await api.post("/api/v1/onboarding/submit", headers=admin.headers | key)
    again = await api.post("/api/v1/onboarding/submit", headers=admin.headers | key)
    assert first.status_code == again.status_code == 202, again.text
    assert first.json() == again.json()
    without_key = await api.post("/api/v1/onboarding/submit", headers=admin.headers)
    assert without_key.status_code == 409


async def test_a_retried_decision_gets_the_first_answer(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings, temporal_client: Client
) -> None:
    admin = await applicant(sessions, settings, temporal_client)
    await fill_wizard(api, admin, f"Decided Once {uuid.uuid4().hex[:6]} BV")
    await submit(api, admin)
    decider = await member(sessions, settings, Role.SUPER_ADMIN, mfa_enabled=True)
    item = await pending_approval(api, decider, admin.tenant_id)
    path = f"/api/v1/approvals/{item['approval_id']}/decision"
    body = {"decision": "reject", "reason": "Not a fit."}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    answers = [await api.post(path, json=body, headers=decider.headers | key) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200], answers[-1].text
    assert {a.json()["status"] for a in answers} == {"rejected"}
    other = await api.post(path, json={"decision": "approve"}, headers=decider.headers | key)
    assert other.status_code == 409
    # The workflow audits the decision after it answers.
    assert await eventually(lambda: _rejections(sessions, admin), lambda n: n > 0) == 1


async def _rejections(sessions: SessionFactory, admin: Member) -> int:
    async with sessions() as session:
        rows = await session.scalars(
            select(AuditEntry).where(
                AuditEntry.tenant_id == admin.tenant_id,
                AuditEntry.action == "onboarding.rejected",
            )
        )
        return len(list(rows))


async def test_a_malformed_idempotency_key_is_422(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings, temporal_client: Client
) -> None:
    admin: Member = await applicant(sessions, settings, temporal_client)
    for bad in ("", "x" * 256, "with space"):
        response = await api.put(
            "/api/v1/onboarding/steps/company",
            json=wizard("Key Check Ltd")["company"],
            headers=admin.headers | {"Idempotency-Key": bad},
        )
        assert response.status_code == 422, (bad, response.text)
