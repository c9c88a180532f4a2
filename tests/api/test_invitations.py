"""Invitations: a tenant admin adds a member within the plan, who sets a password by e-mail."""

from __future__ import annotations

import asyncio
import re
import uuid

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import SessionFactory, transaction
from core.settings import Settings
from models.audit import AuditEntry
from models.tenant import Tenant
from models.user import Membership, Role, User
from tests.conftest import SmtpSink
from tests.factories import Member, member

INVITE_LINK = re.compile(r"/accept-invitation\?token=([0-9a-f]{32}\.[A-Za-z0-9_-]{43}\.i)")
PASSWORD = "harbor-quilt-meadow-81"
NEW_PASSWORD = "lantern-orchid-pebble-27"


async def _invite(api: httpx.AsyncClient, admin: Member, **changes: str) -> httpx.Response:
    body = {"email": f"new-{uuid.uuid4().hex[:8]}@example.com", "full_name": "New Member"}
    return await api.post("/api/v1/users", json=body | changes, headers=admin.headers)


async def _on_plan(sessions: SessionFactory, tenant_id: uuid.UUID, plan: str) -> None:
    async with transaction(sessions) as session:
        tenant = await session.get(Tenant, tenant_id)
        assert tenant is not None
        tenant.plan = plan


async def test_invited_member_sets_a_password_and_signs_in(
    flow_api: httpx.AsyncClient,
    s3_settings: Settings,
    sessions: SessionFactory,
    smtp_sink: SmtpSink,
) -> None:
    admin = await member(sessions, s3_settings)
    response = await _invite(flow_api, admin, role="readonly")
    assert response.status_code == 201, response.text
    invited = response.json()
    assert invited["role"] == "readonly"
    assert invited["tenant_id"] == str(admin.tenant_id)

    [message] = await smtp_sink.wait_for(invited["email"])
    assert message["Subject"].startswith("You are invited to Tenant ")
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    [token] = INVITE_LINK.findall(body.decode())
    confirmed = await flow_api.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "new_password": PASSWORD}
    )
    assert confirmed.status_code == 204, confirmed.text
    login = await flow_api.post(
        "/api/v1/auth/login", json={"email": invited["email"], "password": PASSWORD}
    )
    assert login.status_code == 200
    async with sessions() as session:
        actions = set(
            await session.scalars(
                select(AuditEntry.action).where(AuditEntry.tenant_id == admin.tenant_id)
            )
        )
    assert {"user.invited", "user.password_reset"} <= actions


async def test_the_plan_limits_members(
    flow_api: httpx.AsyncClient, s3_settings: Settings, sessions: SessionFactory
) -> None:
    admin = await member(sessions, s3_settings)
    await _on_plan(sessions, admin.tenant_id, "starter")  # three users
    assert (await _invite(flow_api, admin)).status_code == 201
    assert (await _invite(flow_api, admin)).status_code == 201
    refused = await _invite(flow_api, admin)
    assert refused.status_code == 403
    body = refused.json()
    assert body["type"].endswith("plan-limit-reached")
    assert (body["limit"], body["allowed"], body["used"]) == ("users", 3, 3)


async def test_refusals_write_nothing(
    flow_api: httpx.AsyncClient, s3_settings: Settings, sessions: SessionFactory
) -> None:
    admin = await member(sessions, s3_settings)
    reader = await member(sessions, s3_settings, Role.READONLY, tenant_id=admin.tenant_id)
    assert (await _invite(flow_api, reader)).status_code == 403
    assert (await _invite(flow_api, admin, role="super_admin")).status_code == 403
    assert (await _invite(flow_api, admin, email=reader.email.upper())).status_code == 409
    assert (await _invite(flow_api, admin, email="not-an-email")).status_code == 422
    listed = (await flow_api.get("/api/v1/users", headers=admin.headers)).json()
    assert {u["email"] for u in listed} == {admin.email, reader.email}


async def test_a_reset_request_for_the_invitee_leaves_the_invitation_alone(
    flow_api: httpx.AsyncClient,
    s3_settings: Settings,
    sessions: SessionFactory,
    smtp_sink: SmtpSink,
) -> None:
    """Anyone may ask for a reset of any address: that must not cancel a pending invitation."""
    admin = await member(sessions, s3_settings)
    invited = (await _invite(flow_api, admin)).json()
    [message] = await smtp_sink.wait_for(invited["email"])
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    [token] = INVITE_LINK.findall(body.decode())

    reset = await flow_api.post("/api/v1/auth/password-reset", json={"email": invited["email"]})
    assert reset.status_code == 202
    await smtp_sink.wait_for(invited["email"], count=2)  # the reset's own link

    confirmed = await flow_api.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "new_password": PASSWORD}
    )
    assert confirmed.status_code == 204, confirmed.text


async def _link(smtp_sink: SmtpSink, address: str, count: int = 1) -> str:
    """The token of the latest invitation link e-mailed to ``address``."""
    body = (await smtp_sink.wait_for(address, count=count))[-1].get_payload(decode=True)
    assert isinstance(body, bytes)
    [token] = INVITE_LINK.findall(body.decode())
    assert isinstance(token, str)
    return token


async def _accept(api: httpx.AsyncClient, token: str, password: str) -> None:
    accepted = await api.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "new_password": password}
    )
    assert accepted.status_code == 204, accepted.text


async def _login(api: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await api.post("/api/v1/auth/login", json={"email": email, "password": password})


async def _invitations(sessions: SessionFactory, tenant_id: uuid.UUID) -> list[AuditEntry]:
    async with sessions() as session:
        rows = await session.scalars(
            select(AuditEntry)
            .where(AuditEntry.tenant_id == tenant_id, AuditEntry.action == "user.invited")
            .order_by(AuditEntry.id)
        )
        return list(rows)


async def test_a_removed_member_is_invited_back(
    flow_api: httpx.AsyncClient,
    s3_settings: Settings,
    sessions: SessionFactory,
    smtp_sink: SmtpSink,
) -> None:
    """The same account comes back with the role asked for, once the new invitation is
    accepted; until then neither the old password nor the old sessions let it in."""
    api, admin = flow_api, await member(sessions, s3_settings)
    invited = (await _invite(api, admin)).json()
    email, user_id = invited["email"], invited["user_id"]
    await _accept(api, await _link(smtp_sink, email), PASSWORD)
    signed_in = (await _login(api, email, PASSWORD)).json()
    removed = await api.delete(f"/api/v1/users/{user_id}", headers=admin.headers)
    assert removed.status_code == 204, removed.text

    again = await _invite(api, admin, email=email.upper(), role="tenant_admin")
    assert again.status_code == 201, again.text
    assert (again.json()["user_id"], again.json()["role"]) == (user_id, "tenant_admin")
    listed = (await api.get("/api/v1/users", headers=admin.headers)).json()
    assert {u["email"] for u in listed} == {admin.email, email}

    # Pending: the old password signs nothing in, the old session stays revoked.
    assert (await _login(api, email, PASSWORD)).status_code == 401
    old_refresh = {"refresh_token": signed_in["refresh_token"]}
    assert (await api.post("/api/v1/auth/refresh", json=old_refresh)).status_code == 401
    old_access = {"Authorization": f"Bearer {signed_in['access_token']}"}
    assert (await api.get("/api/v1/auth/me", headers=old_access)).status_code == 401

    await _accept(api, await _link(smtp_sink, email, count=2), NEW_PASSWORD)
    login = await _login(api, email, NEW_PASSWORD)
    assert login.status_code == 200, login.text
    me = await api.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {login.json()['access_token']}"}
    )
    assert (me.json()["tenant_id"], me.json()["role"]) == (str(admin.tenant_id), "tenant_admin")
    assert (await api.post("/api/v1/auth/refresh", json=old_refresh)).status_code == 401
    audited = [entry.data for entry in await _invitations(sessions, admin.tenant_id)]
    assert audited == [
        {"user_id": user_id, "role": "user"},
        {"user_id": user_id, "role": "tenant_admin", "returning": True},
    ]


async def test_a_returning_member_needs_a_seat_like_anyone(
    flow_api: httpx.AsyncClient, s3_settings: Settings, sessions: SessionFactory
) -> None:
    admin = await member(sessions, s3_settings)
    await _on_plan(sessions, admin.tenant_id, "starter")  # three users
    leaving = (await _invite(flow_api, admin)).json()
    staying = (await _invite(flow_api, admin)).json()
    gone = await flow_api.delete(f"/api/v1/users/{leaving['user_id']}", headers=admin.headers)
    assert gone.status_code == 204
    assert (await _invite(flow_api, admin)).status_code == 201  # the seat is taken again

    refused = await _invite(flow_api, admin, email=leaving["email"])
    assert refused.status_code == 403, refused.text
    assert refused.json()["type"].endswith("plan-limit-reached")
    assert len(await _invitations(sessions, admin.tenant_id)) == 3

    out = await flow_api.delete(f"/api/v1/users/{staying['user_id']}", headers=admin.headers)
    assert out.status_code == 204
    back = await _invite(flow_api, admin, email=leaving["email"])
    assert back.status_code == 201, back.text


async def test_a_member_of_another_tenant_stays_where_they_are(
    flow_api: httpx.AsyncClient, s3_settings: Settings, sessions: SessionFactory
) -> None:
    """An account belongs to one tenant: inviting a member of another one, or a deactivated
    account, is refused and changes nothing."""
    admin = await member(sessions, s3_settings)
    elsewhere = await member(sessions, s3_settings, Role.USER, password=PASSWORD)
    refused = await _invite(flow_api, admin, email=elsewhere.email)
    assert refused.status_code == 409, refused.text
    assert (await _login(flow_api, elsewhere.email, PASSWORD)).status_code == 200
    me = (await flow_api.get("/api/v1/auth/me", headers=elsewhere.headers)).json()
    assert (me["tenant_id"], me["role"]) == (str(elsewhere.tenant_id), "user")

    deactivated = await member(sessions, s3_settings, Role.USER, tenant_id=admin.tenant_id)
    gone = await flow_api.delete(f"/api/v1/users/{deactivated.user_id}", headers=admin.headers)
    assert gone.status_code == 204
    async with transaction(sessions) as session:
        user = await session.get(User, deactivated.user_id)
        assert user is not None
        user.is_active = False
    refused = await _invite(flow_api, admin, email=deactivated.email)
    assert refused.status_code == 409, refused.text
    listed = (await flow_api.get("/api/v1/users", headers=admin.headers)).json()
    assert {u["email"] for u in listed} == {admin.email}
    assert await _invitations(sessions, admin.tenant_id) == []


async def test_two_tenants_inviting_a_removed_member_at_once_get_one_answer_each(
    flow_api: httpx.AsyncClient,
    s3_settings: Settings,
    sessions: SessionFactory,
    engine: AsyncEngine,
) -> None:
    """The account joins one tenant; the other invitation is refused as for any member."""
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite has no row locks: invitations take turns on PostgreSQL")
    admin, other = await member(sessions, s3_settings), await member(sessions, s3_settings)
    leaving = await member(sessions, s3_settings, Role.USER, tenant_id=admin.tenant_id)
    gone = await flow_api.delete(f"/api/v1/users/{leaving.user_id}", headers=admin.headers)
    assert gone.status_code == 204
    answers = await asyncio.gather(
        *(_invite(flow_api, by, email=leaving.email) for by in (admin, other))
    )
    assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
    async with sessions() as session:
        memberships = await session.scalars(
            select(Membership).where(Membership.user_id == leaving.user_id)
        )
        assert len(list(memberships)) == 1
