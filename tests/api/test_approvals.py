"""The pending queue through HTTP: who sees what, who may decide, and keyset pagination."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from temporalio.client import Client

from core.db import SessionFactory, transaction
from core.settings import Settings
from models.approval import Approval, ApprovalKind, ApprovalStatus
from models.tenant import Tenant, TenantStatus
from models.user import Role
from tests.api.flows import (
    applicant,
    decide,
    fill_wizard,
    pending_approval,
    staff,
    submit,
)
from tests.factories import Member, member


async def _submitted(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings, client: Client
) -> tuple[Member, Member, str]:
    """An applicant who submitted, platform staff, and the pending approval's id."""
    admin = await applicant(sessions, settings, client)
    approver = await staff(sessions, settings)
    await fill_wizard(api, admin, f"Queue Test {uuid.uuid4().hex[:8]}")
    await submit(api, admin)
    item = await pending_approval(api, approver, admin.tenant_id)
    return admin, approver, item["approval_id"]


async def test_only_the_deciding_role_of_the_right_tenant_decides(
    flow_api: httpx.AsyncClient,
    s3_settings: Settings,
    sessions: SessionFactory,
    temporal_client: Client,
) -> None:
    api = flow_api
    admin, approver, approval_id = await _submitted(api, sessions, s3_settings, temporal_client)
    url = f"/api/v1/approvals/{approval_id}"

    # The applicant's own admin sees its tenant's approval, but may not decide it.
    own = await api.get("/api/v1/approvals", headers=admin.headers)
    assert [i["approval_id"] for i in own.json()["items"]] == [approval_id]
    colleague = await member(
        sessions, s3_settings, Role.TENANT_ADMIN, tenant_id=admin.tenant_id, mfa_enabled=True
    )
    assert (await decide(api, colleague, approval_id, "approve")).status_code == 403

    # Another tenant's admin sees nothing of it.
    stranger = await member(sessions, s3_settings, Role.TENANT_ADMIN, mfa_enabled=True)
    listed = await api.get("/api/v1/approvals", headers=stranger.headers)
    assert listed.status_code == 200
    assert listed.json()["items"] == []
    assert (await api.get(url, headers=stranger.headers)).status_code == 404
    assert (await decide(api, stranger, approval_id, "approve")).status_code == 404

    # Roles outside the queue, and staff without two-factor authentication.
    for role in (Role.USER, Role.READONLY, Role.AGENT, Role.SERVICE_ACCOUNT):
        other = await member(sessions, s3_settings, role, tenant_id=admin.tenant_id)
        assert (await api.get("/api/v1/approvals", headers=other.headers)).status_code == 403
    no_mfa = await member(sessions, s3_settings, Role.SUPER_ADMIN)
    refused = await decide(api, no_mfa, approval_id, "approve")
    assert refused.status_code == 403
    assert refused.json()["type"].endswith("mfa-enrolment-required")

    # Bad decisions are refused before the workflow hears of them.
    assert (await decide(api, approver, approval_id, "maybe")).status_code == 422
    missing_reason = await decide(api, approver, approval_id, "request_changes", "  ")
    assert missing_reason.status_code == 422
    history = (await api.get(url, headers=approver.headers)).json()["history"]
    assert [event["event"] for event in history] == ["requested"]

    assert (await decide(api, approver, approval_id, "approve")).status_code == 200
    decided = (await api.get(url, headers=approver.headers)).json()
    assert decided["status"] == "approved"
    assert decided["decided_by"] == str(approver.user_id)
    assert decided["history"][-1]["role"] == "super_admin"
    second = await decide(api, approver, approval_id, "reject", "Second thoughts.")
    assert second.status_code == 409


async def test_racing_decisions_one_wins(
    flow_api: httpx.AsyncClient,
    s3_settings: Settings,
    sessions: SessionFactory,
    temporal_client: Client,
) -> None:
    api = flow_api
    _, approver, approval_id = await _submitted(api, sessions, s3_settings, temporal_client)
    other = await staff(sessions, s3_settings)
    results = await asyncio.gather(
        decide(api, approver, approval_id, "approve"),
        decide(api, other, approval_id, "reject", "No."),
    )
    assert sorted(r.status_code for r in results) == [200, 409]


async def test_keyset_pagination_and_filters(
    flow_api: httpx.AsyncClient, s3_settings: Settings, sessions: SessionFactory
) -> None:
    api = flow_api
    admin = await member(sessions, s3_settings, status=TenantStatus.PENDING_APPROVAL)
    start = datetime.now(UTC) - timedelta(days=1)
    async with transaction(sessions) as session:  # a projection as the workflows leave it
        for n in range(7):
            session.add(
                Approval(
                    id=uuid.uuid4(),
                    workflow_id=f"approval:{n}",
                    tenant_id=admin.tenant_id,
                    kind=ApprovalKind.TENANT_ONBOARDING,
                    subject=f"item {n}",
                    decider_role=Role.TENANT_ADMIN,
                    status=ApprovalStatus.APPROVED if n == 3 else ApprovalStatus.PENDING,
                    # Two rows share a timestamp: the id breaks the tie.
                    requested_at=start + timedelta(minutes=min(n, 5)),
                    due_at=start + timedelta(days=7),
                )
            )

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/api/v1/approvals", params=params, headers=admin.headers)).json()
        seen += [item["subject"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen[:4]) == seen[:4] == ["item 0", "item 1", "item 2", "item 4"]
    assert sorted(seen[4:]) == ["item 5", "item 6"]
    assert pages == 3

    approved = await api.get(
        "/api/v1/approvals", params={"status": "approved"}, headers=admin.headers
    )
    assert [item["subject"] for item in approved.json()["items"]] == ["item 3"]
    by_kind = await api.get(
        "/api/v1/approvals",
        params={"kind": "tenant_onboarding", "limit": "200"},
        headers=admin.headers,
    )
    assert len(by_kind.json()["items"]) == 6
    unknown_kind = await api.get("/api/v1/approvals", params={"kind": "x"}, headers=admin.headers)
    assert unknown_kind.status_code == 422
    bad_cursor = await api.get(
        "/api/v1/approvals", params={"cursor": "not-a-cursor"}, headers=admin.headers
    )
    assert bad_cursor.status_code == 422


async def test_the_applicant_sees_neither_other_tenants_nor_staff(
    flow_api: httpx.AsyncClient,
    s3_settings: Settings,
    sessions: SessionFactory,
    temporal_client: Client,
) -> None:
    """The duplicate check's findings name other tenants: they are for platform staff only."""
    api, name = flow_api, f"Lookalike {uuid.uuid4().hex[:8]} GmbH"
    existing = await member(sessions, s3_settings, status=TenantStatus.SUSPENDED)
    async with transaction(sessions) as session:
        tenant = await session.get(Tenant, existing.tenant_id)
        assert tenant is not None
        tenant.name = name
    admin = await applicant(sessions, s3_settings, temporal_client)
    approver = await staff(sessions, s3_settings)
    await fill_wizard(api, admin, name.upper())
    await submit(api, admin)
    approval_id = (await pending_approval(api, approver, admin.tenant_id))["approval_id"]
    url = f"/api/v1/approvals/{approval_id}"

    seen_by_staff = (await api.get(url, headers=approver.headers)).json()
    assert str(existing.tenant_id) in seen_by_staff["facts"]["similar_tenants"]
    assert "suspended" in seen_by_staff["facts"]["similar_tenants"]

    assert (
        await decide(api, approver, approval_id, "request_changes", "Proof?")
    ).status_code == 200
    response = await api.get(url, headers=admin.headers)
    assert response.status_code == 200
    assert "similar_tenants" not in response.json()["facts"]
    assert str(existing.tenant_id) not in response.text
    assert "suspended" not in response.text
    assert str(approver.user_id) not in response.text
    assert response.json()["decided_by"] is None
    assert response.json()["history"][-1]["event"] == "changes_requested"
