"""Roles: tenant admins manage their own tenant only; every change is audited."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from core.db import SessionFactory
from core.settings import Settings
from models.audit import AuditEntry
from models.tenant import TenantStatus
from models.user import Role
from tests.factories import member


async def test_admin_changes_a_role_in_its_tenant(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings, Role.TENANT_ADMIN)
    worker = await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    changed = await api.put(
        f"/api/v1/users/{worker.user_id}/role", json={"role": "readonly"}, headers=admin.headers
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["role"] == "readonly"
    listed = (await api.get("/api/v1/users", headers=admin.headers)).json()
    assert {u["email"]: u["role"] for u in listed} == {
        admin.email: "tenant_admin",
        worker.email: "readonly",
    }
    async with sessions() as session:
        entry = await session.scalar(
            select(AuditEntry).where(
                AuditEntry.tenant_id == admin.tenant_id, AuditEntry.action == "user.role_changed"
            )
        )
    assert entry is not None
    assert entry.data == {"user_id": str(worker.user_id), "from": "user", "to": "readonly"}


async def test_refusals(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings, Role.TENANT_ADMIN)
    worker = await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    stranger = await member(sessions, settings, Role.USER)

    def put(user_id: object, role: str, headers: dict[str, str]):
        return api.put(f"/api/v1/users/{user_id}/role", json={"role": role}, headers=headers)

    assert (await put(stranger.user_id, "readonly", admin.headers)).status_code == 404
    assert (await put(worker.user_id, "super_admin", admin.headers)).status_code == 403
    assert (await put(admin.user_id, "user", worker.headers)).status_code == 403
    assert (await put(admin.user_id, "user", admin.headers)).status_code == 409  # last admin
    assert (await put(worker.user_id, "owner", admin.headers)).status_code == 422
    assert (await api.get("/api/v1/users", headers=worker.headers)).status_code == 403


async def test_a_suspended_tenant_lists_but_cannot_change_roles(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings, Role.TENANT_ADMIN, status=TenantStatus.SUSPENDED)
    worker = await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    assert (await api.get("/api/v1/users", headers=admin.headers)).status_code == 200
    refused = await api.put(
        f"/api/v1/users/{worker.user_id}/role", json={"role": "readonly"}, headers=admin.headers
    )
    assert refused.status_code == 403
    assert refused.json()["type"].endswith("tenant-suspended")


async def test_a_role_change_takes_effect_at_once(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings, Role.TENANT_ADMIN)
    deputy = await member(sessions, settings, Role.TENANT_ADMIN, tenant_id=admin.tenant_id)
    assert (await api.get("/api/v1/users", headers=deputy.headers)).status_code == 200
    demoted = await api.put(
        f"/api/v1/users/{deputy.user_id}/role", json={"role": "user"}, headers=admin.headers
    )
    assert demoted.status_code == 200
    stale = await api.get("/api/v1/users", headers=deputy.headers)
    assert stale.status_code == 401
    refreshed = await api.post("/api/v1/auth/refresh", json={"refresh_token": deputy.refresh_token})
    fresh = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}
    assert (await api.get("/api/v1/auth/me", headers=fresh)).json()["role"] == "user"
    assert (await api.get("/api/v1/users", headers=fresh)).status_code == 403
