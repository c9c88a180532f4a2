"""Password reset through HTTP, with e-mail delivered to a real SMTP server."""

from __future__ import annotations

import email.message
import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from core import search
from core.db import SessionFactory, transaction
from core.identity import token_digest
from core.passwords import verify_password
from core.settings import Settings
from models.audit import AuditEntry
from models.base import utcnow
from models.email import OutboundEmail
from models.password_reset import ResetStatus
from models.user import User
from tests.conftest import SmtpSink
from tests.factories import Member, member
from tests.history import decoded_history
from workers.main import build_worker
from workflows.password_reset import PasswordResetWorkflow, workflow_id

NEW_PASSWORD = "glacier-orbit-fennel-29"
PROBLEM = "application/problem+json"
TOKEN_IN_LINK = re.compile(r"/reset-password\?token=([0-9a-f]{32}\.[A-Za-z0-9_-]{43})")
# An authenticated route: 404 while the session lives (no verification has run), 401 after.
AUTHENTICATED = "/api/v1/audit/verifications/latest"


@pytest.fixture
async def api(
    smtp_settings: Settings,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    sessions: SessionFactory,
) -> AsyncIterator[httpx.AsyncClient]:
    """The API and a worker on the dev server, both sending e-mail to the SMTP sink."""
    async with build_worker(temporal_env.client, sessions, smtp_settings):
        app = create_app(smtp_settings, temporal_env.client, engine)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def _request(api: httpx.AsyncClient, address: str) -> None:
    response = await api.post("/api/v1/auth/password-reset", json={"email": address})
    assert response.status_code == 202, response.text
    assert response.content == b""


async def _confirm(
    api: httpx.AsyncClient, token: str, password: str = NEW_PASSWORD
) -> httpx.Response:
    return await api.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "new_password": password}
    )


def _body(message: email.message.Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


async def _tokens(sink: SmtpSink, address: str, count: int = 1) -> list[str]:
    """Tokens of the first ``count`` reset e-mails that reached ``address``."""
    messages = await sink.wait_for(address, count)
    tokens = []
    for message in messages:
        found = TOKEN_IN_LINK.search(_body(message))
        assert found, _body(message)
        tokens.append(found.group(1))
    return tokens


def _assert_invalid_token(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"].endswith("invalid-reset-token")


async def _password_hash(sessions: SessionFactory, user_id: uuid.UUID) -> str | None:
    async with sessions() as session:
        user = await session.get(User, user_id)
    assert user is not None
    return user.password_hash


async def _audit(sessions: SessionFactory, someone: Member, action: str) -> list[AuditEntry]:
    async with sessions() as session:
        rows = await session.scalars(
            select(AuditEntry)
            .where(AuditEntry.tenant_id == someone.tenant_id, AuditEntry.action == action)
            .order_by(AuditEntry.seq)
        )
        return list(rows)


async def test_reset_end_to_end(
    api: httpx.AsyncClient,
    smtp_sink: SmtpSink,
    sessions: SessionFactory,
    smtp_settings: Settings,
    temporal_client: Client,
) -> None:
    someone = await member(sessions, smtp_settings)
    async with transaction(sessions) as session:
        await session.execute(
            update(User)
            .where(User.id == someone.user_id)
            .values(failed_logins=5, locked_until=utcnow() + timedelta(minutes=15))
        )
    assert (await api.get(AUTHENTICATED, headers=someone.headers)).status_code == 404

    await _request(api, someone.email.upper())
    [token] = await _tokens(smtp_sink, someone.email)
    [message] = smtp_sink.to(someone.email)
    assert f"{smtp_settings.public_app_url}/reset-password?token={token}" in _body(message)

    confirmed = await _confirm(api, token)
    assert confirmed.status_code == 204, confirmed.text
    assert (await api.get(AUTHENTICATED, headers=someone.headers)).status_code == 401
    async with sessions() as session:
        user = await session.get(User, someone.user_id)
    assert user is not None
    assert user.password_hash is not None
    assert (await verify_password(NEW_PASSWORD, user.password_hash))[0]
    assert (user.failed_logins, user.locked_until) == (0, None)

    handle = temporal_client.get_workflow_handle_for(
        PasswordResetWorkflow.run, workflow_id(someone.user_id)
    )
    assert await handle.result() == ResetStatus.COMPLETED
    [requested] = await _audit(sessions, someone, "user.password_reset_requested")
    [reset] = await _audit(sessions, someone, "user.password_reset")
    assert requested.data["run_id"] == (await handle.describe()).run_id
    assert reset.actor_id == someone.user_id

    _assert_invalid_token(await _confirm(api, token))  # single use


async def test_no_secret_or_personal_data_in_workflow_history(
    api: httpx.AsyncClient,
    smtp_sink: SmtpSink,
    sessions: SessionFactory,
    smtp_settings: Settings,
    temporal_client: Client,
) -> None:
    someone = await member(sessions, smtp_settings)
    await _request(api, someone.email)
    [token] = await _tokens(smtp_sink, someone.email)
    assert (await _confirm(api, token)).status_code == 204

    workflow = workflow_id(someone.user_id)
    description = await temporal_client.get_workflow_handle(workflow).describe()
    ours = {key.name for key in search.ALL}
    attributes = {
        p.key.name: p.value for p in description.typed_search_attributes if p.key.name in ours
    }
    assert attributes == {
        "TenantId": str(someone.tenant_id),
        "BizProcess": "password_reset",
        "BizStatus": "completed",
    }
    history = await decoded_history(temporal_client, workflow, description.run_id)
    # The search sees decrypted data: the digest, which the workflow keeps, is there.
    assert token_digest(token).encode() in history
    for secret in (token, token.split(".")[1], NEW_PASSWORD, someone.email):
        assert secret.encode() not in history, secret


async def test_wrong_and_malformed_tokens_are_400(
    api: httpx.AsyncClient, smtp_sink: SmtpSink, sessions: SessionFactory, smtp_settings: Settings
) -> None:
    someone = await member(sessions, smtp_settings)
    await _request(api, someone.email)
    [token] = await _tokens(smtp_sink, someone.email)
    user_part = token.split(".")[0]

    for wrong in (
        f"{user_part}.{'A' * 43}",  # right user, wrong signature
        f"{uuid.uuid4().hex}.{token.split('.')[1]}",  # nobody's
        "not-a-token",
        token + "x",
    ):
        _assert_invalid_token(await _confirm(api, wrong))
    assert await _password_hash(sessions, someone.user_id) is None

    assert (await _confirm(api, token)).status_code == 204  # refusals did not use it up


async def test_weak_password_is_422_and_changes_nothing(
    api: httpx.AsyncClient,
    smtp_sink: SmtpSink,
    sessions: SessionFactory,
    smtp_settings: Settings,
    temporal_client: Client,
) -> None:
    someone = await member(sessions, smtp_settings)
    await _request(api, someone.email)
    [token] = await _tokens(smtp_sink, someone.email)

    weak = await _confirm(api, token, "Password123!")
    assert weak.status_code == 422, weak.text
    assert weak.headers["content-type"] == PROBLEM
    [error] = weak.json()["errors"]
    assert error["loc"] == ["body", "new_password"]
    assert "commonly used" in error["msg"]

    assert await _password_hash(sessions, someone.user_id) is None
    assert (await api.get(AUTHENTICATED, headers=someone.headers)).status_code == 404
    handle = temporal_client.get_workflow_handle_for(
        PasswordResetWorkflow.run, workflow_id(someone.user_id)
    )
    assert await handle.query(PasswordResetWorkflow.status) == ResetStatus.PENDING
    history = await handle.fetch_history()
    assert not [
        e
        for e in history.events
        if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]


async def test_unknown_email_is_202_and_sends_nothing(
    api: httpx.AsyncClient, smtp_sink: SmtpSink, sessions: SessionFactory, smtp_settings: Settings
) -> None:
    nobody = f"nobody-{uuid.uuid4().hex[:10]}@example.com"
    someone = await member(sessions, smtp_settings)
    await _request(api, nobody)
    await _request(api, someone.email)
    await _tokens(smtp_sink, someone.email)  # the known address got its e-mail meanwhile

    assert smtp_sink.to(nobody) == []
    async with sessions() as session:
        recorded = await session.scalar(
            select(OutboundEmail.id).where(OutboundEmail.recipient == nobody)
        )
    assert recorded is None


async def test_second_request_replaces_the_first_link(
    api: httpx.AsyncClient,
    smtp_sink: SmtpSink,
    sessions: SessionFactory,
    smtp_settings: Settings,
    temporal_client: Client,
) -> None:
    someone = await member(sessions, smtp_settings)
    await _request(api, someone.email)
    await _tokens(smtp_sink, someone.email)
    await _request(api, someone.email)
    first, second = await _tokens(smtp_sink, someone.email, count=2)
    assert first != second

    # One run renews its link: nothing is terminated, so no confirmation is ever cut short.
    requests = await _audit(sessions, someone, "user.password_reset_requested")
    assert requests[0].data["run_id"] == requests[1].data["run_id"]
    run = temporal_client.get_workflow_handle(workflow_id(someone.user_id))
    assert (await run.describe()).status == WorkflowExecutionStatus.RUNNING

    _assert_invalid_token(await _confirm(api, first))
    assert (await _confirm(api, second)).status_code == 204


async def test_unknown_fields_are_422(api: httpx.AsyncClient) -> None:
    extra = await api.post(
        "/api/v1/auth/password-reset", json={"email": "a@example.com", "admin": True}
    )
    assert extra.status_code == 422
    assert extra.headers["content-type"] == PROBLEM
    missing = await api.post("/api/v1/auth/password-reset/confirm", json={"token": "x"})
    assert missing.status_code == 422


async def test_reset_requests_are_rate_limited_alike_for_unknown_addresses(
    api: httpx.AsyncClient, sessions: SessionFactory, smtp_settings: Settings
) -> None:
    someone = await member(sessions, smtp_settings)
    for address in (someone.email, f"nobody-{uuid.uuid4().hex[:8]}@example.com"):
        statuses = [
            (await api.post("/api/v1/auth/password-reset", json={"email": address})).status_code
            for _ in range(4)
        ]
        assert statuses == [202, 202, 202, 429]
