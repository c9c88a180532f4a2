"""Password reset over HTTP: the request starts (or renews) the workflow, confirm updates it."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response, status
from pydantic import EmailStr, Field
from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api import workflow_calls
from api.deps import SessionDep, SettingsDep, TemporalDep, get_sessions
from api.ratelimit import RateLimits
from api.routers.auth import Body, rate_limits, request_actor
from core import audit, password_policy, search
from core.db import SessionFactory, transaction
from core.errors import Problem, Unprocessable
from core.identity import normalize_email, token_digest
from core.passwords import hash_password
from core.settings import Settings
from models.password_reset import (
    PasswordResetInput,
    ResetConfirmation,
    reset_token_user,
    token_purpose,
)
from models.tenant import Tenant
from models.user import Membership, User
from workflows.password_reset import (
    INVALID_RESET_TOKEN,
    PROCESS,
    PasswordResetWorkflow,
    workflow_id,
)

router = APIRouter(prefix="/api/v1/auth/password-reset", tags=["identity"])
SessionsDep = Annotated[SessionFactory, Depends(get_sessions)]


# One answer for every token that cannot be used: which reason applies is nobody's business.
INVALID_LINK = "This link is not valid, has expired or was already used."


class InvalidResetToken(Problem):
    status, slug, title = 400, "invalid-reset-token", "Invalid reset link"


class ResetRequestBody(Body):
    email: EmailStr = Field(max_length=320)


class ResetConfirmBody(Body):
    token: str = Field(min_length=1, max_length=200)
    new_password: str = Field(max_length=password_policy.MAX_LENGTH)


async def _active_account(
    session: AsyncSession, criterion: ColumnElement[bool]
) -> tuple[User, Membership] | None:
    """An active user matching ``criterion``, with the membership that names its tenant."""
    row = (
        await session.execute(
            select(User, Membership)
            .join(Membership, Membership.user_id == User.id)
            .where(criterion, User.is_active.is_(True))
        )
    ).first()
    return (row[0], row[1]) if row else None


async def start_password_link(
    client: Client, settings: Settings, membership: Membership, request: PasswordResetInput
) -> WorkflowHandle[Any, Any]:
    """Start the user's password-link run for the request's purpose, or renew the running one
    (its new link replaces the old; a confirmation in progress is never cut short)."""
    async with workflow_calls.deadline(settings):
        return await client.start_workflow(
            PasswordResetWorkflow.run,
            request,
            id=workflow_id(membership.user_id, request.purpose),
            task_queue=settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            start_signal="renew",
            start_signal_args=[request],
            static_summary=f"Password {request.purpose.value} link for user {membership.user_id}",
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(search.TENANT_ID, str(membership.tenant_id)),
                    SearchAttributePair(search.BIZ_PROCESS, PROCESS),
                ]
            ),
        )


async def _start_reset(
    client: Client,
    sessions: SessionFactory,
    settings: Settings,
    membership: Membership,
    actor: audit.Actor,
) -> None:
    """Start the user's reset run and audit the request."""
    ttl = timedelta(minutes=settings.password_reset_minutes)
    handle = await start_password_link(
        client, settings, membership, PasswordResetInput(user_id=membership.user_id, token_ttl=ttl)
    )
    async with transaction(sessions) as session:
        await audit.append(
            session,
            "user.password_reset_requested",
            tenant_id=membership.tenant_id,
            actor=actor,
            data={
                "user_id": str(membership.user_id),
                "workflow_id": handle.id,
                "run_id": handle.result_run_id,
            },
        )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_class=Response,
    summary="E-mail a password-reset link",
)
async def request_password_reset(
    body: ResetRequestBody,
    request: Request,
    session: SessionDep,
    sessions: SessionsDep,
    client: TemporalDep,
    settings: SettingsDep,
    background: BackgroundTasks,
    limits: Annotated[RateLimits, Depends(rate_limits)],
) -> Response:
    """Always 202, whether or not the e-mail belongs to an account (429 past the rate limits,
    which count unknown addresses alike).

    Both cases do the same lookup before answering; for an active account the reset starts
    after the response is sent, so neither the answer nor its timing tells them apart.
    """
    actor = request_actor(request)
    await limits.reset_request(actor.ip or "unknown", normalize_email(str(body.email)))
    account = await _active_account(session, User.email == normalize_email(str(body.email)))
    if account is not None:
        _, membership = account
        background.add_task(_start_reset, client, sessions, settings, membership, actor)
    return Response(status_code=status.HTTP_202_ACCEPTED)


async def _refuse_weak_password(
    session: AsyncSession, password: str, user: User, membership: Membership
) -> None:
    """422 with the policy's reasons, before anything reaches the workflow."""
    tenant = await session.get(Tenant, membership.tenant_id)
    names = (user.full_name, tenant.name if tenant else "")
    found = password_policy.problems(password, email=user.email, names=names)
    if found:
        raise Unprocessable(
            "The new password is not acceptable.",
            errors=[
                {
                    "loc": ["body", "new_password"],
                    "msg": "password " + "; ".join(found),
                    "type": "value_error",
                }
            ],
        )


async def _link_open(client: Client, settings: Settings, token: str) -> bool:
    """Whether the token's link workflow is waiting for a confirmation: a token naming an
    account without one is refused before anything about the account (its password policy)
    is revealed."""
    user_id = reset_token_user(token)
    assert user_id is not None
    handle = client.get_workflow_handle(workflow_id(user_id, token_purpose(token)))
    try:
        async with workflow_calls.deadline(settings):
            described = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return described.status == WorkflowExecutionStatus.RUNNING


async def _send_confirmation(
    client: Client, settings: Settings, token: str, confirmation: ResetConfirmation
) -> None:
    user_id = reset_token_user(token)
    assert user_id is not None
    handle = client.get_workflow_handle_for(
        PasswordResetWorkflow.run, workflow_id(user_id, token_purpose(token))
    )
    try:
        await workflow_calls.execute_update(
            handle, PasswordResetWorkflow.confirm, confirmation, settings=settings
        )
    except WorkflowUpdateFailedError as err:
        if isinstance(err.cause, ApplicationError) and err.cause.type == INVALID_RESET_TOKEN:
            raise InvalidResetToken(INVALID_LINK) from None
        raise
    except RPCError as err:
        # No run for this user, or the run has ended (used, expired or replaced).
        if err.status == RPCStatusCode.NOT_FOUND:
            raise InvalidResetToken(INVALID_LINK) from None
        raise


@router.post(
    "/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Choose a new password with the e-mailed token",
)
async def confirm_password_reset(
    body: ResetConfirmBody, session: SessionDep, client: TemporalDep, settings: SettingsDep
) -> Response:
    """204 and every session signed out; 400 for a malformed, wrong, expired or used token;
    422 for a weak password (the token stays usable)."""
    user_id = reset_token_user(body.token)
    account = await _active_account(session, User.id == user_id) if user_id else None
    if user_id is None or account is None or not await _link_open(client, settings, body.token):
        raise InvalidResetToken(INVALID_LINK)
    await _refuse_weak_password(session, body.new_password, *account)
    confirmation = ResetConfirmation(
        token_digest=token_digest(body.token),
        password_hash=await hash_password(body.new_password),
    )
    await _send_confirmation(client, settings, body.token, confirmation)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
