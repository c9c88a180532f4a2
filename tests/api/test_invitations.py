"""Invitations: a tenant admin adds a member within the plan, who sets a password by e-mail."""

from __future__ import annotations

import re
import uuid

import httpx
from sqlalchemy import select

from core.db import SessionFactory, transaction
from core.settings import Settings
from models.audit import AuditEntry
from models.tenant import Tenant
from models.user import Role
from tests.conftest import SmtpSink
from tests.factories import Member, member

INVITE_LINK = re.compile(r"/accept-invitation\?token=([0-9a-f]{32}\.[A-Za-z0-9_-]{43}\.i)")
PASSWORD = "harbor-quilt-meadow-81"


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
