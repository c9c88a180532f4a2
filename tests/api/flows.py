"""The onboarding flow through HTTP, step by step, as the frontend and an approver drive it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
from temporalio.client import Client

from api.routers.onboarding import start_onboarding
from connectors.storage import LocalStorage
from core.db import SessionFactory
from core.settings import Settings
from models.tenant import TenantStatus
from models.user import Role
from tests.factories import Member, member

PDF = b"%PDF-1.7\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def wizard(legal_name: str) -> dict[str, dict[str, Any]]:
    """Valid data for every step."""
    return {
        "company": {
            "legal_name": legal_name,
            "industry": "Retail",
            "website": "https://example.com",
            "country": "DE",
        },
        "goals": {"primary_goal": "lead_gen", "monthly_budget": "2500.00", "currency": "EUR"},
        "presence": {"cms_type": "wordpress"},
        "plan": {"plan_id": "professional"},
    }


async def applicant(sessions: SessionFactory, settings: Settings, client: Client) -> Member:
    """A tenant admin right after registration: tenant ``onboarding``, its workflow started."""
    admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
    await start_onboarding(client, settings, admin.tenant_id)
    return admin


async def register(api: httpx.AsyncClient, company_name: str) -> Member:
    """Sign up through the API (which starts the onboarding) and sign in."""
    email = f"owner-{uuid.uuid4().hex[:8]}@example.com"
    password = "orbit-velvet-canyon-42"
    body = {"email": email, "password": password, "full_name": "Ada Owner"}
    created = await api.post("/api/v1/auth/register", json=body | {"company_name": company_name})
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


async def staff(sessions: SessionFactory, settings: Settings) -> Member:
    """Platform staff with two-factor authentication, as deciding requires."""
    return await member(sessions, settings, Role.SUPER_ADMIN, mfa_enabled=True)


async def fill_wizard(api: httpx.AsyncClient, who: Member, legal_name: str) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for step, data in wizard(legal_name).items():
        response = await api.put(f"/api/v1/onboarding/steps/{step}", json=data, headers=who.headers)
        assert response.status_code == 200, response.text
        state = response.json()
    return state


async def upload_document(
    api: httpx.AsyncClient,
    who: Member,
    content: bytes,
    content_type: str = "application/pdf",
    filename: str = "registration.pdf",
) -> httpx.Response:
    """Ask for an upload URL, upload to it (S3 or the local store), then complete."""
    ticket = await api.post(
        "/api/v1/onboarding/documents",
        json={"filename": filename, "content_type": content_type, "size": len(content)},
        headers=who.headers,
    )
    assert ticket.status_code == 201, ticket.text
    body = ticket.json()
    assert body["method"] == "PUT"
    uploaded = await put_object(api, body["upload_url"], content, body["headers"])
    assert uploaded.status_code == 200, uploaded.text
    return await api.post(
        f"/api/v1/onboarding/documents/{body['document_id']}/complete", headers=who.headers
    )


async def put_object(
    api: httpx.AsyncClient, url: str, content: bytes, headers: dict[str, str]
) -> httpx.Response:
    """Upload as a browser would: to S3 over the network, or to this API's local store."""
    local = _on_this_api(url)
    if local is not None:
        return await api.put(local, content=content, headers=headers)
    async with httpx.AsyncClient() as outside:
        return await outside.put(url, content=content, headers=headers)


async def get_url(api: httpx.AsyncClient, url: str) -> httpx.Response:
    local = _on_this_api(url)
    if local is not None:
        return await api.get(local)
    async with httpx.AsyncClient() as outside:
        return await outside.get(url)


def _on_this_api(url: str) -> str | None:
    """The path of a local-store URL (served by the in-process API), else ``None``."""
    path = urlsplit(url).path
    return path if path.startswith(LocalStorage.URL_PATH) else None


async def submit(api: httpx.AsyncClient, who: Member) -> dict[str, Any]:
    response = await api.post("/api/v1/onboarding/submit", headers=who.headers)
    assert response.status_code == 202, response.text
    state: dict[str, Any] = response.json()
    assert state["status"] == "pending_approval"
    return state


async def onboarding(api: httpx.AsyncClient, who: Member) -> dict[str, Any]:
    response = await api.get("/api/v1/onboarding", headers=who.headers)
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


async def onboarding_until(api: httpx.AsyncClient, who: Member, status: str) -> dict[str, Any]:
    """Poll the onboarding state until it reaches ``status`` (provisioning runs after the
    decision)."""
    state: dict[str, Any] = {}
    for _ in range(200):
        state = await onboarding(api, who)
        if state["status"] == status:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"onboarding stayed {state.get('status')}, expected {status}")


async def pending_approval(
    api: httpx.AsyncClient, approver: Member, tenant_id: uuid.UUID
) -> dict[str, Any]:
    """The tenant's item in the approver's pending queue (written by the approval workflow)."""
    for _ in range(200):
        cursor: str | None = None
        while True:
            params = {"status": "pending", "limit": "200", **({"cursor": cursor} if cursor else {})}
            page = await api.get("/api/v1/approvals", params=params, headers=approver.headers)
            assert page.status_code == 200, page.text
            body = page.json()
            for item in body["items"]:
                if item["tenant_id"] == str(tenant_id):
                    found: dict[str, Any] = item
                    return found
            cursor = body["next_cursor"]
            if cursor is None:
                break
        await asyncio.sleep(0.05)
    raise AssertionError(f"no pending approval for tenant {tenant_id}")


async def decide(
    api: httpx.AsyncClient,
    approver: Member,
    approval_id: str,
    decision: str,
    reason: str | None = None,
) -> httpx.Response:
    return await api.post(
        f"/api/v1/approvals/{approval_id}/decision",
        json={"decision": decision, "reason": reason},
        headers=approver.headers,
    )


async def tenant_status(api: httpx.AsyncClient, who: Member) -> str:
    response = await api.get("/api/v1/tenant", headers=who.headers)
    assert response.status_code == 200, response.text
    status: str = response.json()["status"]
    return status
