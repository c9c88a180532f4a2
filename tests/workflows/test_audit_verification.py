"""Audit verification through the whole path: API → Temporal → worker → database."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import select, update
from temporalio.client import Client

from core import audit
from core.db import SessionFactory, transaction
from core.settings import Settings
from models.audit import AuditEntry
from models.user import Role
from tests.factories import Member, member


async def _verify(api: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    started = await api.post("/api/v1/audit/verifications", headers=headers)
    assert started.status_code == 202, started.text
    for _ in range(100):
        latest: dict[str, Any] = (
            await api.get("/api/v1/audit/verifications/latest", headers=headers)
        ).json()
        if latest["status"] != "running":
            return latest
        await asyncio.sleep(0.05)
    raise AssertionError("verification did not finish")


async def _admin_with_history(sessions: SessionFactory, settings: Settings) -> Member:
    admin = await member(sessions, settings, Role.TENANT_ADMIN)
    for n in range(3):
        async with transaction(sessions) as session:
            await audit.append(session, "user.login", tenant_id=admin.tenant_id, data={"n": n})
    return admin


async def test_intact_chain(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings, temporal_client: Client
) -> None:
    admin = await _admin_with_history(sessions, settings)
    result = await _verify(api, admin.headers)
    assert result["status"] == "completed"
    assert result["report"] == {"rows": 3, "first_broken_seq": None}

    query = f"TenantId = '{admin.tenant_id}' AND BizProcess = 'audit_verification'"
    for _ in range(50):  # visibility is eventually consistent
        found = [w async for w in temporal_client.list_workflows(query)]
        if found and found[0].search_attributes.get("BizStatus") == ["intact"]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"no intact verification visible for {query}")


async def test_tampered_chain_is_reported_once(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await _admin_with_history(sessions, settings)
    async with transaction(sessions) as session:
        await session.execute(
            update(AuditEntry)
            .where(AuditEntry.tenant_id == admin.tenant_id, AuditEntry.seq == 2)
            .values(action="user.logout")
        )
    result = await _verify(api, admin.headers)
    assert result["report"] == {"rows": 2, "first_broken_seq": 2}
    async with sessions() as session:
        findings = (
            await session.scalars(
                select(AuditEntry).where(
                    AuditEntry.action == "audit.tamper_detected",
                    AuditEntry.tenant_id.is_(None),
                )
            )
        ).all()
    mine = [f for f in findings if f.data["tenant_id"] == str(admin.tenant_id)]
    assert len(mine) == 1
    assert mine[0].data["first_broken_seq"] == 2


async def test_roles_and_authentication(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    reader = await member(sessions, settings, Role.READONLY)
    refused = await api.post("/api/v1/audit/verifications", headers=reader.headers)
    assert refused.status_code == 403
    anonymous = await api.post("/api/v1/audit/verifications")
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"


async def test_no_run_yet_is_404(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings, Role.TENANT_ADMIN)
    response = await api.get("/api/v1/audit/verifications/latest", headers=admin.headers)
    assert response.status_code == 404
