"""Tenant members and their roles (identity writes, tenant-scoped)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select

from api.billing_guard import read_only_guard
from api.deps import SessionDep, require_role
from api.routers.auth import request_actor
from api.tenancy import scoped
from core import audit
from core.errors import Conflict, Forbidden, NotFound
from core.security import Principal
from models.user import Membership, Role, User

router = APIRouter(prefix="/api/v1/users", tags=["users"], dependencies=[read_only_guard])
TenantAdmin = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN, Role.SUPER_ADMIN))]
_GRANTABLE = frozenset(Role) - {Role.SUPER_ADMIN}


class UserItem(BaseModel):
    user_id: uuid.UUID
    email: str
    full_name: str
    tenant_id: uuid.UUID
    role: Role
    mfa_enabled: bool


class RoleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role


def _item(user: User, membership: Membership) -> UserItem:
    return UserItem(
        user_id=user.id,
        email=user.email,
        full_name=user.full_name,
        tenant_id=membership.tenant_id,
        role=membership.role,
        mfa_enabled=user.mfa_enabled,
    )


@router.get("", summary="Members of the caller's tenant")
async def list_users(principal: TenantAdmin, session: SessionDep) -> list[UserItem]:
    """Every member of the caller's own tenant, by e-mail."""
    rows = await session.execute(
        select(User, Membership)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.tenant_id == principal.tenant_id)
        .order_by(User.email)
    )
    return [_item(user, membership) for user, membership in rows]


@router.put("/{user_id}/role", summary="Change a member's role")
async def change_role(
    user_id: uuid.UUID,
    body: RoleBody,
    principal: TenantAdmin,
    request: Request,
    session: SessionDep,
) -> UserItem:
    """Tenant admins manage their own tenant; ``super_admin`` is granted only from the CLI."""
    if body.role not in _GRANTABLE:
        raise Forbidden("The super_admin role is granted with `bizosaas users create-admin`.")
    query = scoped(select(Membership).where(Membership.user_id == user_id), Membership, principal)
    membership = await session.scalar(query)
    user = await session.get(User, user_id) if membership else None
    if membership is None or user is None:
        raise NotFound(f"No user {user_id} in your tenant.")
    if membership.role == Role.SUPER_ADMIN:
        raise Forbidden("Platform administrators are managed from the command line.")
    if membership.role == Role.TENANT_ADMIN and body.role != Role.TENANT_ADMIN:
        await _keep_one_admin(session, membership.tenant_id)
    previous, membership.role = membership.role, body.role
    await audit.append(
        session,
        "user.role_changed",
        tenant_id=membership.tenant_id,
        actor=request_actor(request, principal),
        data={"user_id": str(user_id), "from": previous.value, "to": body.role.value},
    )
    await session.commit()
    return _item(user, membership)


async def _keep_one_admin(session: SessionDep, tenant_id: uuid.UUID) -> None:
    admins = await session.scalar(
        select(func.count())
        .select_from(Membership)
        .where(Membership.tenant_id == tenant_id, Membership.role == Role.TENANT_ADMIN)
    )
    if (admins or 0) <= 1:
        raise Conflict("A tenant keeps at least one tenant_admin.")
