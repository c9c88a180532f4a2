"""Tenant onboarding through HTTP on the dev server, with documents on a real S3 (moto) and
e-mail received by a real SMTP server."""

from __future__ import annotations

import asyncio
import uuid

import boto3
import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from core.db import SessionFactory, transaction
from core.search import BIZ_PROCESS, BIZ_STATUS
from core.settings import Settings
from models.audit import AuditEntry
from models.tenant import Tenant
from models.user import Role
from tests.api.flows import (
    PDF,
    PNG,
    applicant,
    decide,
    fill_wizard,
    get_url,
    onboarding,
    onboarding_until,
    pending_approval,
    put_object,
    register,
    staff,
    submit,
    tenant_status,
    upload_document,
    wizard,
)
from tests.conftest import SmtpSink
from tests.factories import Member, member
from workers.main import build_worker


def _company() -> str:
    return f"Example Trading {uuid.uuid4().hex[:8]} GmbH"


async def _audit_actions(sessions: SessionFactory, tenant_id: uuid.UUID) -> list[str]:
    async with sessions() as session:
        rows = await session.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.tenant_id == tenant_id)
            .order_by(AuditEntry.seq)
        )
        return list(rows)


async def test_register_to_active_tenant(
    flow_api: httpx.AsyncClient,
    s3_settings: Settings,
    sessions: SessionFactory,
    temporal_client: Client,
    smtp_sink: SmtpSink,
) -> None:
    api, company = flow_api, _company()
    admin = await register(api, company)
    approver = await staff(sessions, s3_settings)

    fresh = await onboarding(api, admin)
    assert fresh["status"] == "in_progress"
    assert fresh["editable"] is True
    assert fresh["current_step"] == "company"
    assert fresh["missing"] == ["company", "goals", "presence", "plan"]
    assert fresh["workflow_id"] == f"onboarding:{admin.tenant_id}"

    filled = await fill_wizard(api, admin, company)
    assert filled["missing"] == []
    assert filled["current_step"] is None
    assert filled["steps"]["company"]["legal_name"] == company
    completed = await upload_document(api, admin, PDF)
    assert completed.status_code == 200, completed.text
    [document] = completed.json()["documents"]
    assert document["stored"] is True
    assert document["size"] == len(PDF)

    await submit(api, admin)
    item = await pending_approval(api, approver, admin.tenant_id)
    assert item["kind"] == "tenant_onboarding"
    assert item["status"] == "pending"
    assert company in item["subject"]
    assert await tenant_status(api, admin) == "pending_approval"

    detail = (
        await api.get(f"/api/v1/approvals/{item['approval_id']}", headers=approver.headers)
    ).json()
    assert detail["facts"]["plan"] == "professional"
    assert detail["facts"]["similar_tenants"] == "none"
    assert [e["event"] for e in detail["history"]] == ["requested"]
    [listed] = detail["documents"]
    link = await api.get(
        f"/api/v1/approvals/{item['approval_id']}/documents/{listed['document_id']}",
        headers=approver.headers,
    )
    assert link.status_code == 200, link.text
    downloaded = await get_url(api, link.json()["url"])
    assert downloaded.status_code == 200
    assert downloaded.content == PDF

    decided = await decide(api, approver, item["approval_id"], "approve")
    assert decided.status_code == 200, decided.text
    assert decided.json() == {"approval_id": item["approval_id"], "status": "approved"}

    done = await onboarding_until(api, admin, "approved")
    assert done["approval"]["status"] == "approved"
    assert done["editable"] is False
    tenant = (await api.get("/api/v1/tenant", headers=admin.headers)).json()
    assert (tenant["status"], tenant["plan"]) == ("active", "professional")
    [welcome] = smtp_sink.to(admin.email)
    assert "is active" in welcome["Subject"]
    actions = await _audit_actions(sessions, admin.tenant_id)
    assert actions.count("onboarding.submitted") == 1
    assert actions.count("tenant.activated") == 1

    again = await decide(api, approver, item["approval_id"], "reject", "Too late.")
    assert again.status_code == 409
    assert await _biz_statuses(temporal_client, admin.tenant_id) == {
        ("onboarding", "approved"),
        ("approval", "approved"),
    }


async def _biz_statuses(client: Client, tenant_id: uuid.UUID) -> set[tuple[str, str]]:
    """What an operator finds in the Temporal UI by ``TenantId`` (visibility lags a little)."""
    found: set[tuple[str, str]] = set()
    for _ in range(100):
        found = {
            (w.typed_search_attributes[BIZ_PROCESS], w.typed_search_attributes[BIZ_STATUS])
            async for w in client.list_workflows(f"TenantId = '{tenant_id}'")
        }
        if found == {("onboarding", "approved"), ("approval", "approved")}:
            break
        await asyncio.sleep(0.1)
    return found


async def test_wizard_refuses_bad_input_and_stores_nothing(
    flow_api: httpx.AsyncClient,
    s3_settings: Settings,
    sessions: SessionFactory,
    temporal_client: Client,
) -> None:
    api = flow_api
    admin = await applicant(sessions, s3_settings, temporal_client)

    unknown = await api.put("/api/v1/onboarding/steps/billing", json={}, headers=admin.headers)
    assert unknown.status_code == 404

    bad = dict(wizard("X")["company"], country="Germany", surprise="field")
    refused = await api.put("/api/v1/onboarding/steps/company", json=bad, headers=admin.headers)
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    fields = {tuple(error["loc"]) for error in refused.json()["errors"]}
    assert fields == {("body", "legal_name"), ("body", "country"), ("body", "surprise")}

    budget = dict(wizard("X")["goals"], monthly_budget="-5", primary_goal="fame")
    refused = await api.put("/api/v1/onboarding/steps/goals", json=budget, headers=admin.headers)
    assert refused.status_code == 422
    assert {e["loc"][-1] for e in refused.json()["errors"]} == {"monthly_budget", "primary_goal"}

    state = await onboarding(api, admin)
    assert state["steps"] == {}
    assert state["status"] == "in_progress"

    incomplete = await api.post("/api/v1/onboarding/submit", headers=admin.headers)
    assert incomplete.status_code == 409
    assert incomplete.json()["missing"] == ["company", "goals", "presence", "plan"]

    reader = await member(sessions, s3_settings, tenant_id=admin.tenant_id, role=Role.READONLY)
    forbidden = await api.put(
        "/api/v1/onboarding/steps/plan", json={"plan_id": "starter"}, headers=reader.headers
    )
    assert forbidden.status_code == 403


async def test_documents_failing_the_checks_are_removed(
    flow_api: httpx.AsyncClient,
    s3_settings: Settings,
    sessions: SessionFactory,
    temporal_client: Client,
    engine: AsyncEngine,
) -> None:
    small = s3_settings.model_copy(update={"document_max_bytes": 1024})
    app = create_app(small, temporal_client, engine)  # the flow_api's worker runs the workflow
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as api:
        admin = await applicant(sessions, small, temporal_client)

        not_a_pdf = await upload_document(api, admin, b"just some text, not a PDF")
        assert not_a_pdf.status_code == 422
        assert "not a PDF, PNG or JPEG" in not_a_pdf.json()["detail"]

        mislabelled = await upload_document(api, admin, PNG)  # announced as a PDF
        assert mislabelled.status_code == 422
        assert "image/png" in mislabelled.json()["detail"]

        too_big = await api.post(
            "/api/v1/onboarding/documents",
            json={"filename": "big.pdf", "content_type": "application/pdf", "size": 5000},
            headers=admin.headers,
        )
        assert too_big.status_code == 422

        # moto does not enforce the signed length: the completion check does.
        ticket = await api.post(
            "/api/v1/onboarding/documents",
            json={"filename": "small.pdf", "content_type": "application/pdf", "size": 1000},
            headers=admin.headers,
        )
        assert ticket.status_code == 201
        body = ticket.json()
        oversized = PDF + b"0" * 2000
        await put_object(api, body["upload_url"], oversized, body["headers"])
        completed = await api.post(
            f"/api/v1/onboarding/documents/{body['document_id']}/complete", headers=admin.headers
        )
        assert completed.status_code == 422
        assert "at most 1024" in completed.json()["detail"]

        gif = await api.post(
            "/api/v1/onboarding/documents",
            json={"filename": "a.gif", "content_type": "image/gif", "size": 10},
            headers=admin.headers,
        )
        assert gif.status_code == 422

        assert (await onboarding(api, admin))["documents"] == []
    s3 = boto3.client(
        "s3",
        endpoint_url=small.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    assert s3.list_objects_v2(Bucket=small.s3_bucket).get("KeyCount") == 0


async def test_local_store_when_no_bucket_is_configured(
    api: httpx.AsyncClient, settings: Settings, sessions: SessionFactory, temporal_client: Client
) -> None:
    admin = await applicant(sessions, settings, temporal_client)
    approver = await staff(sessions, settings)
    ticket = await api.post(
        "/api/v1/onboarding/documents",
        json={"filename": "logo.png", "content_type": "image/png", "size": len(PNG)},
        headers=admin.headers,
    )
    assert ticket.status_code == 201
    body = ticket.json()
    assert body["upload_url"].startswith(settings.public_api_url + "/api/v1/storage/")

    wrong_type = await put_object(api, body["upload_url"], PNG, {"Content-Type": "image/jpeg"})
    assert wrong_type.status_code == 403
    forged = await put_object(api, body["upload_url"] + "x", PNG, body["headers"])
    assert forged.status_code == 403
    too_long = await put_object(api, body["upload_url"], PNG + b"!", body["headers"])
    assert too_long.status_code == 413
    stored = await put_object(api, body["upload_url"], PNG, body["headers"])
    assert stored.status_code == 200
    assert (settings.data_dir / "objects" / "tenants" / str(admin.tenant_id)).is_dir()

    completed = await api.post(
        f"/api/v1/onboarding/documents/{body['document_id']}/complete", headers=admin.headers
    )
    assert completed.status_code == 200, completed.text
    refused = await upload_document(api, admin, b"GIF89a, not a PDF", filename="fake.pdf")
    assert refused.status_code == 422
    objects = settings.data_dir / "objects" / "tenants" / str(admin.tenant_id) / "onboarding"
    assert [path.name for path in objects.iterdir()] == ["checked"]
    assert [path.name for path in (objects / "checked").iterdir()] == [body["document_id"]]

    # The upload URL still answers, but what it stores is never what the approver reads.
    swapped = await put_object(api, body["upload_url"], PNG[:-1] + b"!", body["headers"])
    assert swapped.status_code == 200

    await fill_wizard(api, admin, _company())
    await submit(api, admin)
    item = await pending_approval(api, approver, admin.tenant_id)
    link = await api.get(
        f"/api/v1/approvals/{item['approval_id']}/documents/{body['document_id']}",
        headers=approver.headers,
    )
    assert link.status_code == 200
    downloaded = await get_url(api, link.json()["url"])
    assert downloaded.status_code == 200
    assert downloaded.content == PNG
    assert downloaded.headers["content-type"] == "image/png"
    assert (await get_url(api, body["upload_url"])).status_code == 403  # an upload URL


async def test_reject(
    flow_api: httpx.AsyncClient,
    s3_settings: Settings,
    sessions: SessionFactory,
    temporal_client: Client,
    smtp_sink: SmtpSink,
) -> None:
    api = flow_api
    admin = await applicant(sessions, s3_settings, temporal_client)
    approver = await staff(sessions, s3_settings)
    await fill_wizard(api, admin, _company())
    await submit(api, admin)
    item = await pending_approval(api, approver, admin.tenant_id)

    no_reason = await decide(api, approver, item["approval_id"], "reject")
    assert no_reason.status_code == 422
    rejected = await decide(api, approver, item["approval_id"], "reject", "Not a real business.")
    assert rejected.status_code == 200
    assert rejected.json()["status"] == "rejected"

    state = await onboarding_until(api, admin, "rejected")
    assert state["approval"]["reason"] == "Not a real business."
    assert await tenant_status(api, admin) == "rejected"
    late = await api.put(
        "/api/v1/onboarding/steps/plan", json={"plan_id": "starter"}, headers=admin.headers
    )
    assert late.status_code == 409
    assert smtp_sink.to(admin.email) == []
    assert (await _audit_actions(sessions, admin.tenant_id)).count("onboarding.rejected") == 1


async def test_request_changes_then_resubmit(
    flow_api: httpx.AsyncClient,
    s3_settings: Settings,
    sessions: SessionFactory,
    temporal_client: Client,
    smtp_sink: SmtpSink,
) -> None:
    api, company = flow_api, _company()
    existing = await member(sessions, s3_settings)
    async with transaction(sessions) as session:
        tenant = await session.get(Tenant, existing.tenant_id)
        assert tenant is not None
        tenant.name = company.upper().replace("GMBH", "Ltd.")  # the same company, written apart
    admin = await applicant(sessions, s3_settings, temporal_client)
    approver = await staff(sessions, s3_settings)
    await fill_wizard(api, admin, company)
    await submit(api, admin)

    while_pending = await api.put(
        "/api/v1/onboarding/steps/plan", json={"plan_id": "starter"}, headers=admin.headers
    )
    assert while_pending.status_code == 409
    first = await pending_approval(api, approver, admin.tenant_id)
    facts = (
        await api.get(f"/api/v1/approvals/{first['approval_id']}", headers=approver.headers)
    ).json()["facts"]
    assert str(existing.tenant_id) in facts["similar_tenants"]

    asked = await decide(
        api, approver, first["approval_id"], "request_changes", "Use the legal form."
    )
    assert asked.status_code == 200

    reopened = await onboarding_until(api, admin, "changes_requested")
    assert reopened["editable"] is True
    assert reopened["approval"] == {
        "approval_id": first["approval_id"],
        "status": "changes_requested",
        "reason": "Use the legal form.",
        "decided_at": reopened["approval"]["decided_at"],
    }
    assert await tenant_status(api, admin) == "onboarding"
    changed = await api.put(
        "/api/v1/onboarding/steps/plan", json={"plan_id": "business"}, headers=admin.headers
    )
    assert changed.status_code == 200

    await submit(api, admin)
    second = await pending_approval(api, approver, admin.tenant_id)
    assert second["approval_id"] != first["approval_id"]
    assert (await decide(api, approver, second["approval_id"], "approve")).status_code == 200
    await onboarding_until(api, admin, "approved")
    tenant_view = (await api.get("/api/v1/tenant", headers=admin.headers)).json()
    assert (tenant_view["status"], tenant_view["plan"]) == ("active", "business")
    assert len(smtp_sink.to(admin.email)) == 1
    actions = await _audit_actions(sessions, admin.tenant_id)
    assert actions.count("onboarding.submitted") == 2
    assert actions.count("onboarding.changes_requested") == 1
    assert actions.count("tenant.activated") == 1


async def test_a_checked_document_cannot_be_swapped_on_s3(
    flow_api: httpx.AsyncClient,
    s3_settings: Settings,
    sessions: SessionFactory,
    temporal_client: Client,
) -> None:
    api = flow_api
    admin = await applicant(sessions, s3_settings, temporal_client)
    approver = await staff(sessions, s3_settings)
    ticket = (
        await api.post(
            "/api/v1/onboarding/documents",
            json={"filename": "r.pdf", "content_type": "application/pdf", "size": len(PDF)},
            headers=admin.headers,
        )
    ).json()
    await put_object(api, ticket["upload_url"], PDF, ticket["headers"])
    path = f"/api/v1/onboarding/documents/{ticket['document_id']}/complete"
    completed = await api.post(path, headers=admin.headers)
    assert completed.status_code == 200, completed.text
    again = await api.post(path, headers=admin.headers)  # a retried completion changes nothing
    assert again.status_code == 200
    assert again.json()["documents"] == completed.json()["documents"]

    evil = b"%PDF-1.7 something else entirely, unchecked\n%%EOF\n"
    await put_object(api, ticket["upload_url"], evil, ticket["headers"])

    await fill_wizard(api, admin, _company())
    await submit(api, admin)
    item = await pending_approval(api, approver, admin.tenant_id)
    link = await api.get(
        f"/api/v1/approvals/{item['approval_id']}/documents/{ticket['document_id']}",
        headers=approver.headers,
    )
    assert (await get_url(api, link.json()["url"])).content == PDF


async def test_an_unused_announcement_frees_its_slot(
    api: httpx.AsyncClient,
    settings: Settings,
    sessions: SessionFactory,
    temporal_client: Client,
    engine: AsyncEngine,
) -> None:
    short = settings.model_copy(update={"document_url_seconds": 1, "max_documents": 1})
    app = create_app(short, temporal_client, engine)  # the api fixture's worker runs the workflow
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as short_api:
        await _slot_freed(short_api, await applicant(sessions, short, temporal_client))


async def _slot_freed(api: httpx.AsyncClient, admin: Member) -> None:
    body = {"filename": "a.pdf", "content_type": "application/pdf", "size": len(PDF)}
    first = await api.post("/api/v1/onboarding/documents", json=body, headers=admin.headers)
    assert first.status_code == 201
    full = await api.post("/api/v1/onboarding/documents", json=body, headers=admin.headers)
    assert full.status_code == 422  # the one slot is held while its upload URL lives

    await asyncio.sleep(1.2)
    expired = await api.post(
        f"/api/v1/onboarding/documents/{first.json()['document_id']}/complete",
        headers=admin.headers,
    )
    assert expired.status_code == 422
    assert "window has passed" in expired.json()["detail"]
    assert (await onboarding(api, admin))["documents"] == []
    second = await api.post("/api/v1/onboarding/documents", json=body, headers=admin.headers)
    assert second.status_code == 201, second.text


async def test_a_plan_sold_monthly_only_is_refused_by_the_year(
    settings: Settings,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    sessions: SessionFactory,
) -> None:
    plans = [plan.model_copy(update={"annual_amount": None}) for plan in settings.billing_plans]
    monthly_only = settings.model_copy(update={"billing_plans": plans})
    app = create_app(monthly_only, temporal_env.client, engine)
    transport = httpx.ASGITransport(app=app)
    async with (
        build_worker(temporal_env.client, sessions, monthly_only),
        httpx.AsyncClient(transport=transport, base_url="http://t") as api,
    ):
        admin = await register(api, _company())
        url = "/api/v1/onboarding/steps/plan"
        yearly = await api.put(
            url, json={"plan_id": "starter", "interval": "year"}, headers=admin.headers
        )
        assert yearly.status_code == 422, yearly.text
        assert "not sold by the year" in yearly.json()["detail"]
        monthly = await api.put(
            url, json={"plan_id": "starter", "interval": "month"}, headers=admin.headers
        )
        assert monthly.status_code == 200, monthly.text
        unknown = await api.put(
            url, json={"plan_id": "starter", "interval": "fortnight"}, headers=admin.headers
        )
        assert unknown.status_code == 422
