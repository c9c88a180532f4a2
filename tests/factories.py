"""Test data written straight to the database, with a signed-in session for it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from connectors.secrets import connection_path, secret_store_from_settings
from core import audit
from core.db import SessionFactory, transaction
from core.identity import open_session
from core.passwords import hash_password
from core.settings import Settings
from models.connection import Connection, ConnectionHealth, ConnectionStatus
from models.tenant import Tenant, TenantStatus
from models.user import Membership, Role, User
from tests.peers.hubspot import PRIVATE_APP_TOKEN


@dataclass(frozen=True)
class Member:
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    role: Role
    email: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def member(
    sessions: SessionFactory,
    settings: Settings,
    role: Role = Role.TENANT_ADMIN,
    *,
    tenant_id: uuid.UUID | None = None,
    status: TenantStatus = TenantStatus.ACTIVE,
    mfa_enabled: bool = False,
    password: str | None = None,
) -> Member:
    """A signed-in user with ``role`` in a new tenant, or in ``tenant_id`` when given."""
    suffix = uuid.uuid4().hex[:10]
    async with transaction(sessions) as session:
        if tenant_id is None:
            tenant = Tenant(name=f"Tenant {suffix}", slug=f"tenant-{suffix}", status=status)
            session.add(tenant)
            await session.flush()
            tenant_id = tenant.id
        user = User(
            email=f"user-{suffix}@example.com",
            full_name="Test User",
            password_hash=await hash_password(password) if password else None,
            mfa_enabled=mfa_enabled,
        )
        session.add(user)
        await session.flush()
        membership = Membership(user_id=user.id, tenant_id=tenant_id, role=role)
        session.add(membership)
        await session.flush()
        # A member with TOTP on signed in with it: the session passed MFA (see require_mfa).
        tokens = await open_session(session, membership, settings, audit.Actor(), mfa=mfa_enabled)
    return Member(tenant_id, user.id, role, user.email, tokens.access_token, tokens.refresh_token)


async def hubspot_connection(
    sessions: SessionFactory, settings: Settings, tenant_id: uuid.UUID
) -> uuid.UUID:
    """A connected HubSpot connection of the tenant (the peer's private app token)."""
    connection_id = uuid.uuid4()
    async with transaction(sessions) as session:
        session.add(
            Connection(
                id=connection_id,
                tenant_id=tenant_id,
                connector_id="hubspot",
                auth_kind="api_key",
                label="CRM",
                settings={},
                account={},
                status=ConnectionStatus.CONNECTED,
                health=ConnectionHealth.HEALTHY,
            )
        )
    await secret_store_from_settings(settings).put(
        connection_path(tenant_id, connection_id), {"api_key": PRIVATE_APP_TOKEN}
    )
    return connection_id


async def cms_connection(sessions: SessionFactory, tenant_id: uuid.UUID, url: str) -> uuid.UUID:
    """A connected WordPress connection of the tenant at ``url`` (no secret: a test that
    reaches the site stores its own)."""
    connection_id = uuid.uuid4()
    async with transaction(sessions) as session:
        session.add(
            Connection(
                id=connection_id,
                tenant_id=tenant_id,
                connector_id="wordpress",
                auth_kind="application_password",
                label="Blog",
                settings={"site_url": url},
                account={},
                status=ConnectionStatus.CONNECTED,
                health=ConnectionHealth.HEALTHY,
            )
        )
    return connection_id
