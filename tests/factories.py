"""Test data written straight to the database, and tokens minted for it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from core.db import SessionFactory, transaction
from core.security import Principal, issue_access_token
from core.settings import Settings
from models.tenant import Tenant, TenantStatus
from models.user import Membership, Role, User


@dataclass(frozen=True)
class Member:
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    role: Role

    def token(self, settings: Settings) -> str:
        principal = Principal(self.user_id, self.tenant_id, self.role, uuid.uuid4())
        return issue_access_token(principal, settings.jwt_signing_key(), timedelta(minutes=5))

    def headers(self, settings: Settings) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(settings)}"}


async def member(
    sessions: SessionFactory,
    role: Role = Role.TENANT_ADMIN,
    *,
    tenant_id: uuid.UUID | None = None,
    status: TenantStatus = TenantStatus.ACTIVE,
) -> Member:
    """A user with ``role`` in a new tenant, or in ``tenant_id`` when given."""
    suffix = uuid.uuid4().hex[:10]
    async with transaction(sessions) as session:
        if tenant_id is None:
            tenant = Tenant(name=f"Tenant {suffix}", slug=f"tenant-{suffix}", status=status)
            session.add(tenant)
            await session.flush()
            tenant_id = tenant.id
        user = User(email=f"user-{suffix}@example.com", full_name="Test User", password_hash=None)
        session.add(user)
        await session.flush()
        session.add(Membership(user_id=user.id, tenant_id=tenant_id, role=role))
    return Member(tenant_id=tenant_id, user_id=user.id, role=role)
