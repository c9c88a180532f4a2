"""Tenant members and their roles (identity writes, tenant-scoped)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel, ConfigDict, EmailStr, Field
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from temporalio.client import Client

from activities.billing import count_seats_again
from api import workflow_calls
from api.billing_guard import read_only_guard
from api.deps import SessionDep, SettingsDep, TemporalDep, require_role
from api.routers.auth import request_actor
from api.routers.password_reset import start_password_link
from api.tenancy import scoped
from core import audit
from core.errors import Conflict, Forbidden, NotFound
from core.identity import membership_of, normalize_email, revoke_all_sessions
from core.plans import ensure_room_for_user, take_turn
from core.security import Principal
from core.settings import Settings
from models.password_reset import LinkPurpose, PasswordResetInput
from models.tasks import TERMINAL, ReleaseCommand, Task
from models.user import Membership, Role, User
from workflows.task import TaskWorkflow
from workflows.task import workflow_id as task_workflow_id

router = APIRouter(prefix="/api/v1/users", tags=["users"], dependencies=[read_only_guard])
TenantAdmin = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN, Role.SUPER_ADMIN))]
_GRANTABLE = frozenset(Role) - {Role.SUPER_ADMIN}
_TAKEN = "An account with this e-mail already exists."


class UserItem(BaseModel):
    user_id: uuid.UUID
    email: str
    full_name: str
    tenant_id: uuid.UUID
    role: Role
    mfa_enabled: bool


class InviteBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    email: EmailStr = Field(max_length=320)
    full_name: str = Field(min_length=1, max_length=200)
    role: Role = Role.USER


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


@router.post("", status_code=status.HTTP_201_CREATED, summary="Invite a member")
async def invite_user(
    body: InviteBody,
    principal: TenantAdmin,
    request: Request,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
) -> UserItem:
    """Add a member to the caller's tenant, within the plan's user limit, and e-mail a link
    to choose a password (valid ``BIZ_INVITATION_DAYS``); they sign in once they have chosen
    it. Someone who was removed (from this tenant or another) is invited back to their own
    account; an account that belongs to a tenant is not invited (409: each has one)."""
    if body.role not in _GRANTABLE:
        raise Forbidden("The super_admin role is granted with `bizosaas users create-admin`.")
    await take_turn(session, principal.tenant_id)
    await ensure_room_for_user(session, settings.billing_plans, principal.tenant_id)
    user, returning = await _invitee(session, body)
    membership = Membership(user_id=user.id, tenant_id=principal.tenant_id, role=body.role)
    session.add(membership)
    data: dict[str, Any] = {"user_id": str(user.id), "role": body.role.value}
    if returning:
        data["returning"] = True
    await audit.append(
        session,
        "user.invited",
        tenant_id=principal.tenant_id,
        actor=request_actor(request, principal),
        data=data,
    )
    await _seats_changed(client, settings, principal.tenant_id)
    await session.commit()
    ttl = timedelta(days=settings.invitation_days)
    await start_password_link(
        client,
        settings,
        membership,
        PasswordResetInput(user_id=user.id, token_ttl=ttl, purpose=LinkPurpose.INVITATION),
    )
    return _item(user, membership)


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
    membership = await _member(session, principal, user_id)
    await take_turn(session, membership.tenant_id)
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound(f"No user {user_id} in your tenant.")
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


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove a member")
async def remove_member(
    user_id: uuid.UUID,
    principal: TenantAdmin,
    request: Request,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
) -> None:
    """Take a member out of the caller's tenant: their sessions there end at once, the open
    tasks they hold go to the next eligible person (or escalate), and their seat is free.
    The account stays (audit entries name it; it can be invited again). 409 for the last
    tenant_admin; platform administrators are managed from the command line (403)."""
    membership = await _member(session, principal, user_id)
    await take_turn(session, membership.tenant_id)
    if membership.role == Role.TENANT_ADMIN:
        await _keep_one_admin(session, membership.tenant_id)
    await session.delete(membership)
    await revoke_all_sessions(session, user_id, "membership_removed", membership.tenant_id)
    await audit.append(
        session,
        "user.removed",
        tenant_id=membership.tenant_id,
        actor=request_actor(request, principal),
        data={"user_id": str(user_id), "role": membership.role.value},
    )
    # Before the commit: a release that reached a task is harmless should the commit fail
    # (the task is routed again); a member gone whose tasks still wait on them is not.
    await _release_tasks(session, client, settings, membership.tenant_id, user_id, principal)
    await _seats_changed(client, settings, membership.tenant_id)
    await session.commit()


async def _invitee(session: SessionDep, body: InviteBody) -> tuple[User, bool]:
    """The account to invite and whether it existed: a new one, or that of someone who
    belongs to no tenant any more, locked so that no other invitation takes it meanwhile.
    Like any invitee's, it has no password until the invitation is accepted (the old one
    must not let them in before). 409 for an account in a tenant, or deactivated."""
    email = normalize_email(str(body.email))
    user = await session.scalar(select(User).where(User.email == email).with_for_update())
    if user is None:
        user = User(email=email, full_name=body.full_name, password_hash=None)
        session.add(user)
        try:
            await session.flush()
        except IntegrityError:
            await session.rollback()
            raise Conflict(_TAKEN) from None
        return user, False
    if not user.is_active or await membership_of(session, user.id) is not None:
        raise Conflict(_TAKEN)
    user.password_hash = None
    return user, True


async def _member(session: SessionDep, principal: Principal, user_id: uuid.UUID) -> Membership:
    """The caller's tenant's membership of ``user_id`` (404), never a platform admin's (403)."""
    query = scoped(select(Membership).where(Membership.user_id == user_id), Membership, principal)
    membership = await session.scalar(query)
    if membership is None:
        raise NotFound(f"No user {user_id} in your tenant.")
    if membership.role == Role.SUPER_ADMIN:
        raise Forbidden("Platform administrators are managed from the command line.")
    return membership


async def _release_tasks(
    session: SessionDep,
    client: Client,
    settings: Settings,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    principal: Principal,
) -> None:
    """Tell each open task the member holds to let go of them."""
    task_ids = await session.scalars(
        select(Task.id).where(
            Task.tenant_id == tenant_id,
            Task.assignee_id == user_id,
            Task.status.not_in(TERMINAL),
        )
    )
    release = ReleaseCommand(user_id=user_id, by=principal.user_id)
    async with workflow_calls.deadline(settings):
        for task_id in task_ids.all():
            handle = client.get_workflow_handle_for(TaskWorkflow.run, task_workflow_id(task_id))
            await handle.signal(TaskWorkflow.release, release)


async def _seats_changed(client: Client, settings: Settings, tenant_id: uuid.UUID) -> None:
    """Before the commit: billing counts the members a little later (a plan priced per user
    bills them), and finds no change should the commit fail."""
    async with workflow_calls.deadline(settings):
        await count_seats_again(client, tenant_id)


async def _keep_one_admin(session: SessionDep, tenant_id: uuid.UUID) -> None:
    admins = await session.scalar(
        select(func.count())
        .select_from(Membership)
        .where(Membership.tenant_id == tenant_id, Membership.role == Role.TENANT_ADMIN)
    )
    if (admins or 0) <= 1:
        raise Conflict("A tenant keeps at least one tenant_admin.")
