"""Identity writes: users, tenants and memberships (the API's one allowed write path)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit
from core.passwords import hash_password
from models.tenant import Tenant, TenantStatus
from models.user import Membership, Role, User

PLATFORM_SLUG = "platform"


def normalize_email(email: str) -> str:
    return email.strip().lower()


async def platform_tenant(session: AsyncSession) -> Tenant:
    """The tenant platform staff belong to, created on first use."""
    tenant = await session.scalar(select(Tenant).where(Tenant.slug == PLATFORM_SLUG))
    if tenant is None:
        tenant = Tenant(name="BizOSaaS platform", slug=PLATFORM_SLUG, status=TenantStatus.ACTIVE)
        session.add(tenant)
        await session.flush()
    return tenant


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
    membership = await session.scalar(
        select(Membership).where(Membership.user_id == user.id, Membership.tenant_id == tenant.id)
    )
    if membership is None:
        session.add(Membership(user_id=user.id, tenant_id=tenant.id, role=Role.SUPER_ADMIN))
    elif membership.role is not Role.SUPER_ADMIN:
        membership.role = Role.SUPER_ADMIN
    else:
        return user, created
    await audit.append(
        session,
        "user.role_granted",
        tenant_id=tenant.id,
        data={"user_id": str(user.id), "role": Role.SUPER_ADMIN.value},
    )
    return user, created
