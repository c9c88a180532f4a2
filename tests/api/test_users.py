"""Roles: tenant admins manage their own tenant only; every change is audited."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import httpx
from sqlalchemy import select

from core.db import SessionFactory
from core.settings import Settings
from models.audit import AuditEntry
from models.tenant import TenantStatus
from models.user import Role
from tests.api.test_tasks import listed, project, task
from tests.factories import Member, member
from tests.polling import eventually


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


async def test_a_removed_member_is_out_at_once_and_their_tasks_move_on(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings, Role.TENANT_ADMIN)
    leaving = await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    staying = await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    stranger = await member(sessions, settings, Role.TENANT_ADMIN)
    project_id = await project(api, admin, leaving, staying)
    task_id = (await task(api, admin, project_id))["task_id"]  # routed to the first, leaving
    await eventually(
        lambda: listed(api, admin, f"assignee_id={leaving.user_id}"), lambda items: bool(items)
    )
    accepted = await api.post(f"/api/v1/tasks/{task_id}/accept", headers=leaving.headers)
    assert accepted.status_code == 200, accepted.text

    def delete(user: Member, by: Member) -> Awaitable[httpx.Response]:
        return api.delete(f"/api/v1/users/{user.user_id}", headers=by.headers)

    assert (await delete(staying, leaving)).status_code == 403
    assert (await delete(stranger, admin)).status_code == 404
    assert (await delete(admin, admin)).status_code == 409  # the last tenant_admin
    removed = await delete(leaving, admin)
    assert removed.status_code == 204, removed.text
    assert (await delete(leaving, admin)).status_code == 404

    # Out at once: the access token and the refresh token no longer work here.
    assert (await api.get("/api/v1/tasks", headers=leaving.headers)).status_code == 401
    refresh = {"refresh_token": leaving.refresh_token}
    assert (await api.post("/api/v1/auth/refresh", json=refresh)).status_code == 401
    listed_users = (await api.get("/api/v1/users", headers=admin.headers)).json()
    assert {u["email"] for u in listed_users} == {admin.email, staying.email}
    # The task they held goes to the next eligible person.
    state = await eventually(
        lambda: _task_state(api, admin, task_id),
        lambda state: state["assignee"] is not None,
    )
    assert state["assignee"]["id"] == str(staying.user_id)
    released = [e for e in state["events"] if e["event"] == "released"]
    assert [e["by"] for e in released] == [str(admin.user_id)]
    async with sessions() as session:
        entry = await session.scalar(
            select(AuditEntry).where(
                AuditEntry.tenant_id == admin.tenant_id, AuditEntry.action == "user.removed"
            )
        )
    assert entry is not None
    assert entry.data == {"user_id": str(leaving.user_id), "role": "user"}


async def _task_state(api: httpx.AsyncClient, who: Member, task_id: str) -> dict[str, Any]:
    got = await api.get(f"/api/v1/tasks/{task_id}", headers=who.headers)
    assert got.status_code == 200, got.text
    state: dict[str, Any] = got.json()
    return state
