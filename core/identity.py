"""Identity writes: users, tenants, memberships and sessions (the API's one allowed write path).

Functions here never commit; the request or command boundary does.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core import audit
from core.passwords import hash_password
from core.security import Principal, issue_access_token
from core.settings import Settings
from models.base import utcnow
from models.identity import AuthSession, RefreshToken
from models.tenant import Tenant, TenantStatus
from models.user import Membership, Role, User

PLATFORM_SLUG = "platform"


def normalize_email(email: str) -> str:
    return email.strip().lower()


def token_digest(token: str) -> str:
    """SHA-256 hex of an opaque token: what the database stores instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


async def platform_tenant(session: AsyncSession) -> Tenant:
    """The tenant platform staff belong to, created on first use."""
    tenant = await session.scalar(select(Tenant).where(Tenant.slug == PLATFORM_SLUG))
    if tenant is None:
        tenant = Tenant(name="BizOSaaS platform", slug=PLATFORM_SLUG, status=TenantStatus.ACTIVE)
        session.add(tenant)
        await session.flush()
    return tenant


async def membership_of(session: AsyncSession, user_id: uuid.UUID) -> Membership | None:
    """A user's membership (each user belongs to one tenant)."""
    return await session.scalar(select(Membership).where(Membership.user_id == user_id))


async def ensure_super_admin(session: AsyncSession, email: str, password: str) -> tuple[User, bool]:
    """Create a ``super_admin`` unless one with this e-mail exists; ``True`` when created.

    An existing user keeps its password; it is given the ``super_admin`` role on the
    platform tenant if it lacks it.
    """
    email = normalize_email(email)
    tenant = await platform_tenant(session)
    user = await session.scalar(select(User).where(User.email == email))
    created = user is None
    if user is None:
        user = User(
            email=email,
            full_name="Platform administrator",
            password_hash=await hash_password(password),
        )
        session.add(user)
        await session.flush()
    membership = await membership_of(session, user.id)
    if membership is None:
        session.add(Membership(user_id=user.id, tenant_id=tenant.id, role=Role.SUPER_ADMIN))
    elif membership.role != Role.SUPER_ADMIN or membership.tenant_id != tenant.id:
        membership.role, membership.tenant_id = Role.SUPER_ADMIN, tenant.id
    else:
        return user, created
    await audit.append(
        session,
        "user.role_changed",
        tenant_id=tenant.id,
        data={"user_id": str(user.id), "role": Role.SUPER_ADMIN.value},
    )
    return user, created


def new_refresh_token(session_id: uuid.UUID) -> tuple[str, RefreshToken]:
    token = secrets.token_urlsafe(32)
    return token, RefreshToken(session_id=session_id, token_hash=token_digest(token))


def access_token_for(settings: Settings, membership: Membership, auth: AuthSession) -> str:
    """An access token for ``membership`` in session ``auth``, carrying how it authenticated."""
    principal = Principal(
        membership.user_id,
        membership.tenant_id,
        membership.role,
        auth.id,
        amr=tuple(auth.amr),
        auth_time=auth.mfa_at or auth.created_at,
    )
    ttl = timedelta(minutes=settings.access_token_minutes)
    return issue_access_token(principal, settings.jwt_signing_key(), ttl)


def token_pair(
    session: AsyncSession, settings: Settings, membership: Membership, auth: AuthSession
) -> TokenPair:
    """A fresh access token and a new refresh token (added to ``auth``'s family)."""
    refresh, row = new_refresh_token(auth.id)
    session.add(row)
    return TokenPair(
        access_token_for(settings, membership, auth), refresh, settings.access_token_minutes * 60
    )


async def open_session(
    session: AsyncSession,
    membership: Membership,
    settings: Settings,
    actor: audit.Actor,
    *,
    method: str = "pwd",
    mfa: bool = False,
) -> TokenPair:
    """Start a sign-in session and return its first token pair.

    ``method`` is how the user signed in (``pwd`` or ``sso``); ``mfa`` that a second factor was
    checked too, which marks the session for actions that need MFA (see ``api.deps.require_mfa``).
    """
    now = utcnow()
    auth = AuthSession(
        id=uuid.uuid4(),
        user_id=membership.user_id,
        tenant_id=membership.tenant_id,
        ip=actor.ip,
        user_agent=actor.user_agent,
        created_at=now,
        last_used_at=now,
        expires_at=now + timedelta(days=settings.refresh_token_days),
        method=method,
        mfa_at=now if mfa else None,
    )
    session.add(auth)
    tokens = token_pair(session, settings, membership, auth)
    await session.flush()
    return tokens


async def revoke_session(
    session: AsyncSession, session_id: uuid.UUID, reason: str, now: datetime | None = None
) -> None:
    """Revoke one session (and so every refresh token of its family)."""
    await session.execute(
        update(AuthSession)
        .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=now or utcnow(), revoked_reason=reason)
    )


async def revoke_all_sessions(
    session: AsyncSession, user_id: uuid.UUID, reason: str, tenant_id: uuid.UUID | None = None
) -> int:
    """Revoke every live session of a user (in ``tenant_id`` only, when given); returns how
    many were revoked."""
    query = update(AuthSession).where(
        AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None)
    )
    if tenant_id is not None:
        query = query.where(AuthSession.tenant_id == tenant_id)
    result = await session.execute(query.values(revoked_at=utcnow(), revoked_reason=reason))
    return int(getattr(result, "rowcount", 0) or 0)


async def live_session(session: AsyncSession, session_id: uuid.UUID) -> AuthSession | None:
    """The session if it is neither revoked nor expired."""
    auth = await session.get(AuthSession, session_id)
    if auth is None or auth.revoked_at is not None or auth.expires_at <= utcnow():
        return None
    return auth


class LiveSession(NamedTuple):
    """What every request checks of its session: whose it is, and the member's current role."""

    user_id: uuid.UUID
    tenant_id: uuid.UUID
    role: Role | None  # None: no longer a member of the tenant


_sessions, _members = AuthSession.__table__.c, Membership.__table__.c
# Built once: every authenticated request runs it, and building a statement (and its cache
# key) costs more than running this one. Plain table columns: no ORM objects to load.
_SESSION_AND_ROLE = (
    select(
        _sessions.user_id,
        _sessions.tenant_id,
        _sessions.revoked_at,
        _sessions.expires_at,
        _members.role,
    )
    .select_from(AuthSession.__table__)
    .outerjoin(
        Membership.__table__,
        and_(_members.user_id == _sessions.user_id, _members.tenant_id == _sessions.tenant_id),
    )
    .where(_sessions.id == bindparam("session_id"))
)


async def live_session_and_role(
    db: AsyncEngine | AsyncSession, session_id: uuid.UUID
) -> LiveSession | None:
    """The live session's user and tenant and its member's current role, in one round trip
    (``None`` when the session is unknown, revoked or expired): every request checks both.

    Given the engine, it reads on a connection of its own that goes back to the pool at once.
    """
    parameters = {"session_id": session_id}
    if isinstance(db, AsyncEngine):
        async with db.connect() as connection:
            row = (await connection.execute(_SESSION_AND_ROLE, parameters)).first()
    else:
        row = (await db.execute(_SESSION_AND_ROLE, parameters)).first()
    if row is None or row.revoked_at is not None or row.expires_at <= utcnow():
        return None
    return LiveSession(row.user_id, row.tenant_id, row.role)


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]
    return slug or "tenant"


async def _free_slug(session: AsyncSession, name: str) -> str:
    base = slugify(name)
    taken = set(
        (await session.scalars(select(Tenant.slug).where(Tenant.slug.like(f"{base}%")))).all()
    )
    if base not in taken and base != PLATFORM_SLUG:
        return base
    return next(f"{base}-{n}" for n in range(2, len(taken) + 3) if f"{base}-{n}" not in taken)


async def create_tenant_with_admin(
    session: AsyncSession,
    *,
    email: str,
    full_name: str,
    company_name: str,
    password_hash: str | None,
) -> Membership:
    """A new tenant in ``onboarding`` and its first user as ``tenant_admin``.

    The caller owns the transaction; a taken e-mail surfaces as an ``IntegrityError`` at flush.
    """
    tenant = Tenant(name=company_name.strip(), slug=await _free_slug(session, company_name))
    user = User(
        email=normalize_email(email), full_name=full_name.strip(), password_hash=password_hash
    )
    session.add_all([tenant, user])
    await session.flush()
    membership = Membership(user_id=user.id, tenant_id=tenant.id, role=Role.TENANT_ADMIN)
    session.add(membership)
    await session.flush()
    return membership
