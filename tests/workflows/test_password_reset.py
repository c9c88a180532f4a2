"""The password reset workflow on the time-skipping server, with its activities on the database."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.identity import PasswordResetActivities
from connectors.mail import mailer_from_settings
from core import audit
from core.db import SessionFactory, transaction
from core.identity import live_session, membership_of, open_session, token_digest
from core.settings import Settings
from models.audit import AuditEntry
from models.email import OutboundEmail
from models.identity import AuthSession
from models.password_reset import (
    PasswordChange,
    PasswordResetInput,
    ResetConfirmation,
    ResetEmail,
    ResetStatus,
)
from models.user import User
from tests.factories import Member, member
from workers.main import build_worker
from workflows.password_reset import INVALID_RESET_TOKEN, PasswordResetWorkflow, workflow_id

TOKEN_IN_LINK = re.compile(r"/reset-password\?token=([0-9a-f]{32}\.[A-Za-z0-9_-]{43})")
NEW_HASH = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$bmV3LWhhc2gtZm9yLXRlc3Rz"


@pytest.fixture
async def ts_worker(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> AsyncIterator[Worker]:
    async with build_worker(time_skipping_env.client, sessions, settings) as worker:
        yield worker


async def _start(
    env: WorkflowEnvironment, settings: Settings, user_id: uuid.UUID
) -> WorkflowHandle[PasswordResetWorkflow, ResetStatus]:
    return await env.client.start_workflow(
        PasswordResetWorkflow.run,
        PasswordResetInput(
            user_id=user_id, token_ttl=timedelta(minutes=settings.password_reset_minutes)
        ),
        id=workflow_id(user_id),
        task_queue=settings.temporal_task_queue,
    )


async def _emailed_token(sessions: SessionFactory, run_id: str) -> str:
    """The token in the outbox e-mail of one run (the default mail port records it)."""
    key = f"password-reset:{run_id}"
    for _ in range(200):
        async with sessions() as session:
            body = await session.scalar(
                select(OutboundEmail.body).where(OutboundEmail.idempotency_key == key)
            )
        if body is not None:
            found = TOKEN_IN_LINK.search(body)
            assert found, body
            return found.group(1)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no reset e-mail for run {run_id}")


async def _user(sessions: SessionFactory, user_id: uuid.UUID) -> User:
    async with sessions() as session:
        user = await session.get(User, user_id)
    assert user is not None
    return user


async def _session_is_live(sessions: SessionFactory, someone: Member) -> bool:
    async with sessions() as session:
        latest = await session.scalar(
            select(AuthSession.id)
            .where(AuthSession.user_id == someone.user_id)
            .order_by(AuthSession.created_at.desc())
            .limit(1)
        )
        assert latest is not None
        return await live_session(session, latest) is not None


def _confirmation(token: str) -> ResetConfirmation:
    return ResetConfirmation(token_digest=token_digest(token), password_hash=NEW_HASH)


@pytest.mark.usefixtures("ts_worker")
async def test_link_expires_after_its_lifetime(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    someone = await member(sessions, settings)
    handle = await _start(time_skipping_env, settings, someone.user_id)
    token = await _emailed_token(sessions, handle.result_run_id or "")

    assert await handle.result() == ResetStatus.EXPIRED
    description = await handle.describe()
    assert description.close_time is not None
    assert description.close_time - description.start_time >= timedelta(minutes=30)
    assert await handle.query(PasswordResetWorkflow.status) == ResetStatus.EXPIRED

    with pytest.raises(RPCError) as refused:
        await handle.execute_update(PasswordResetWorkflow.confirm, _confirmation(token))
    assert refused.value.status == RPCStatusCode.NOT_FOUND
    assert (await _user(sessions, someone.user_id)).password_hash is None
    assert await _session_is_live(sessions, someone)


@pytest.mark.usefixtures("ts_worker")
async def test_confirm_within_lifetime_resets_once(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    someone = await member(sessions, settings)
    handle = await _start(time_skipping_env, settings, someone.user_id)
    token = await _emailed_token(sessions, handle.result_run_id or "")
    await time_skipping_env.sleep(timedelta(minutes=29))
    assert await handle.query(PasswordResetWorkflow.status) == ResetStatus.PENDING

    other_run_token = token.split(".")[0] + "." + "A" * 43
    with pytest.raises(WorkflowUpdateFailedError) as wrong:
        await handle.execute_update(PasswordResetWorkflow.confirm, _confirmation(other_run_token))
    assert isinstance(wrong.value.cause, ApplicationError)
    assert wrong.value.cause.type == INVALID_RESET_TOKEN

    await handle.execute_update(PasswordResetWorkflow.confirm, _confirmation(token))
    assert await handle.result() == ResetStatus.COMPLETED
    user = await _user(sessions, someone.user_id)
    assert user.password_hash == NEW_HASH
    assert not await _session_is_live(sessions, someone)
    with pytest.raises(RPCError):
        await handle.execute_update(PasswordResetWorkflow.confirm, _confirmation(token))


async def test_email_retry_resends_the_same_token(
    sessions: SessionFactory, settings: Settings
) -> None:
    someone = await member(sessions, settings)
    reset = PasswordResetActivities(sessions, settings, mailer_from_settings(settings, sessions))
    run, next_run = uuid.uuid4().hex, uuid.uuid4().hex

    async def send(run_id: str) -> str:
        email = ResetEmail(user_id=someone.user_id, run_id=run_id, token_ttl=timedelta(minutes=30))
        return await reset.send_password_reset_email(email)

    first = await send(run)
    assert await send(run) == first
    assert await send(next_run) != first
    async with sessions() as session:
        sent = await session.scalar(
            select(func.count())
            .select_from(OutboundEmail)
            .where(OutboundEmail.recipient == someone.email)
        )
    assert sent == 2  # one per run, whatever the retries


async def test_retried_change_keeps_sessions_opened_after_it(
    sessions: SessionFactory, settings: Settings
) -> None:
    someone = await member(sessions, settings)
    reset = PasswordResetActivities(sessions, settings, mailer_from_settings(settings, sessions))
    change = PasswordChange(
        user_id=someone.user_id,
        password_hash=NEW_HASH,
        workflow_id=workflow_id(someone.user_id),
        run_id=uuid.uuid4().hex,
    )
    async with transaction(sessions) as session:
        user = await session.get(User, someone.user_id)
        assert user is not None
        user.failed_logins, user.locked_until = 5, user.created_at + timedelta(days=1)

    await reset.apply_password_reset(change)
    assert not await _session_is_live(sessions, someone)
    async with transaction(sessions) as session:
        membership = await membership_of(session, someone.user_id)
        assert membership is not None
        await open_session(session, membership, settings, audit.Actor())
    await reset.apply_password_reset(change)  # a retry after the first one committed

    assert await _session_is_live(sessions, someone)
    user = await _user(sessions, someone.user_id)
    assert (user.password_hash, user.failed_logins, user.locked_until) == (NEW_HASH, 0, None)
    async with sessions() as session:
        rows = (
            await session.scalars(
                select(AuditEntry).where(
                    AuditEntry.tenant_id == someone.tenant_id,
                    AuditEntry.action == "user.password_reset",
                )
            )
        ).all()
    assert [(r.actor_id, r.data["sessions_revoked"]) for r in rows] == [(someone.user_id, 1)]
