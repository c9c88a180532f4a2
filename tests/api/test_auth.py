"""Sign-in through HTTP: login, lockout, rate limits, refresh rotation, logout, TOTP, bad tokens."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pyotp
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from core.db import SessionFactory
from core.settings import Settings
from models.audit import AuditEntry
from models.user import Role, User
from tests.factories import Member, member

PASSWORD = "orbit-velvet-canyon-42"
PROBLEM = "application/problem+json"


async def _user(sessions: SessionFactory, settings: Settings) -> Member:
    return await member(sessions, settings, Role.TENANT_ADMIN, password=PASSWORD)


async def _login(
    api: httpx.AsyncClient, email: str, password: str = PASSWORD, **extra: str
) -> httpx.Response:
    return await api.post(
        "/api/v1/auth/login", json={"email": email, "password": password, **extra}
    )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _actions(sessions: SessionFactory, tenant_id: uuid.UUID) -> list[str]:
    async with sessions() as session:
        rows = await session.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.tenant_id == tenant_id)
            .order_by(AuditEntry.seq)
        )
        return list(rows)


async def test_login_and_me(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    user = await _user(sessions, settings)
    response = await _login(api, user.email.upper())
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == settings.access_token_minutes * 60
    me = await api.get("/api/v1/auth/me", headers=_bearer(tokens["access_token"]))
    assert me.json() == {
        "user_id": str(user.user_id),
        "email": user.email,
        "full_name": "Test User",
        "tenant_id": str(user.tenant_id),
        "role": "tenant_admin",
        "mfa_enabled": False,
    }
    assert "user.login" in await _actions(sessions, user.tenant_id)


async def test_wrong_password_and_unknown_email_look_the_same(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    user = await _user(sessions, settings)
    wrong = await _login(api, user.email, "not-the-password-at-all")
    unknown = await _login(api, f"nobody-{uuid.uuid4().hex}@example.com")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"]
    assert wrong.headers["content-type"] == PROBLEM
    assert "user.login_failed" in await _actions(sessions, user.tenant_id)


async def test_five_failures_lock_the_account(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    user = await _user(sessions, settings)
    statuses = [(await _login(api, user.email, "wrong-password-123")).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 401, 423]
    locked = await _login(api, user.email)  # even the right password
    assert locked.status_code == 423
    assert locked.json()["type"].endswith("account-locked")
    assert "user.locked_out" in await _actions(sessions, user.tenant_id)


@pytest.fixture
async def strict_api(
    settings: Settings, temporal_env: WorkflowEnvironment, engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    """An API whose per-account login limit is three a minute."""
    strict = settings.model_copy(update={"login_rate_per_account": "3/minute"})
    app = create_app(strict, temporal_env.client, engine)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        yield client


async def test_per_account_rate_limit(
    strict_api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    user = await _user(sessions, settings)
    statuses = [(await _login(strict_api, user.email)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_refresh_rotates_and_reuse_revokes_the_family(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    user = await _user(sessions, settings)
    first = (await _login(api, user.email)).json()
    second = await api.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    pair = second.json()
    assert pair["refresh_token"] != first["refresh_token"]
    assert (
        await api.get("/api/v1/auth/me", headers=_bearer(pair["access_token"]))
    ).status_code == 200

    reused = await api.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401
    # The whole session is gone: the newest pair stops working too.
    assert (
        await api.get("/api/v1/auth/me", headers=_bearer(pair["access_token"]))
    ).status_code == 401
    latest = await api.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert latest.status_code == 401
    assert "session.refresh_reuse" in await _actions(sessions, user.tenant_id)


async def test_logout_ends_the_session(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    user = await _user(sessions, settings)
    tokens = (await _login(api, user.email)).json()
    assert (
        await api.post("/api/v1/auth/logout", headers=_bearer(tokens["access_token"]))
    ).status_code == 204
    assert (
        await api.get("/api/v1/auth/me", headers=_bearer(tokens["access_token"]))
    ).status_code == 401
    again = await api.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert again.status_code == 401


async def _enrol(api: httpx.AsyncClient, user: Member) -> tuple[pyotp.TOTP, list[str]]:
    setup = (await api.post("/api/v1/auth/mfa/totp/setup", headers=user.headers)).json()
    assert setup["otpauth_uri"].startswith("otpauth://totp/BizOSaaS:")
    totp = pyotp.TOTP(setup["secret"])
    # An older step than the current one: login's own current code stays fresh.
    code = totp.at(datetime.now(UTC) - timedelta(seconds=30))
    confirmed = await api.post(
        "/api/v1/auth/mfa/totp/confirm", json={"code": code}, headers=user.headers
    )
    assert confirmed.status_code == 200, confirmed.text
    return totp, confirmed.json()["recovery_codes"]


async def test_totp_login_and_replay_guard(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    user = await _user(sessions, settings)
    totp, codes = await _enrol(api, user)
    assert len(codes) == len(set(codes)) == 10
    async with sessions() as session:
        stored = await session.get(User, user.user_id)
        assert stored is not None
        assert stored.mfa_enabled
        assert stored.mfa_secret is not None
        assert totp.secret not in stored.mfa_secret  # encrypted at rest

    needs_code = await _login(api, user.email)
    assert needs_code.status_code == 401
    assert needs_code.json()["type"].endswith("mfa-required")

    code = totp.now()
    assert (await _login(api, user.email, totp_code=code)).status_code == 200
    replay = await _login(api, user.email, totp_code=code)
    assert replay.status_code == 401
    assert "already used" in replay.json()["detail"]


async def test_recovery_code_works_once(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    user = await _user(sessions, settings)
    _, codes = await _enrol(api, user)
    assert (await _login(api, user.email, totp_code=codes[0])).status_code == 200
    assert (await _login(api, user.email, totp_code=codes[0])).status_code == 401
    assert (await _login(api, user.email, totp_code=codes[1].upper())).status_code == 200


async def test_confirm_with_a_wrong_code_changes_nothing(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    user = await _user(sessions, settings)
    await api.post("/api/v1/auth/mfa/totp/setup", headers=user.headers)
    refused = await api.post(
        "/api/v1/auth/mfa/totp/confirm", json={"code": "000000"}, headers=user.headers
    )
    assert refused.status_code == 422
    me = await api.get("/api/v1/auth/me", headers=user.headers)
    assert me.json()["mfa_enabled"] is False


async def test_disable_totp_needs_a_code(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    user = await _user(sessions, settings)
    totp, _ = await _enrol(api, user)
    wrong = await api.post(
        "/api/v1/auth/mfa/totp/disable", json={"code": "123456"}, headers=user.headers
    )
    assert wrong.status_code == 422
    ok = await api.post(
        "/api/v1/auth/mfa/totp/disable", json={"code": totp.now()}, headers=user.headers
    )
    assert ok.status_code == 204
    assert (await _login(api, user.email)).status_code == 200
    actions = await _actions(sessions, user.tenant_id)
    assert {"user.mfa_enabled", "user.mfa_disabled"} <= set(actions)


def _forged(settings: Settings, user: Member, **changes: object) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": str(user.user_id), "tenant_id": str(user.tenant_id), "role": "super_admin",
        "sid": str(uuid.uuid4()), "iat": now, "exp": now + timedelta(minutes=5), "jti": "x",
    } | changes  # fmt: skip
    return jwt.encode(claims, settings.jwt_signing_key(), algorithm="HS256")


async def test_bad_tokens_are_401_problems(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    user = await _user(sessions, settings)
    header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    payload = jwt.utils.base64url_encode(
        f'{{"sub":"{user.user_id}","tenant_id":"{user.tenant_id}","role":"super_admin"}}'.encode()
    ).decode()
    expired_claims = {"exp": datetime.now(UTC) - timedelta(minutes=1)}
    tokens = {
        "malformed": "not.a.jwt",
        "alg none": f"{header}.{payload}.",
        "wrong key": jwt.encode({"sub": "x"}, "another-key-of-sufficient-length-0123456789"),
        "expired": _forged(settings, user, **expired_claims),
        "unknown session": _forged(settings, user),
    }
    for name, token in tokens.items():
        response = await api.get("/api/v1/auth/me", headers=_bearer(token))
        assert response.status_code == 401, name
        assert response.headers["content-type"] == PROBLEM, name
        assert "Traceback" not in response.text


async def test_unknown_fields_and_oversized_bodies_are_refused(
    api: httpx.AsyncClient, sessions: SessionFactory
) -> None:
    async with sessions() as session:
        before = await session.scalar(select(func.count()).select_from(AuditEntry))
    unknown = await api.post(
        "/api/v1/auth/login", json={"email": "a@example.com", "password": "x", "admin": True}
    )
    assert unknown.status_code == 422
    huge = await api.post("/api/v1/auth/login", content=b'{"email":"' + b"a" * 2_000_000 + b'"}')
    assert huge.status_code == 413
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(AuditEntry)) == before


async def test_audit_log_is_tenant_scoped_with_csv_export(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    mine = await _user(sessions, settings)
    theirs = await _user(sessions, settings)
    await _login(api, mine.email)
    await _login(api, theirs.email, "wrong-password-123")
    page = (await api.get("/api/v1/audit", params={"limit": 1}, headers=mine.headers)).json()
    assert [item["action"] for item in page["items"]] == ["user.login"]
    assert page["next_cursor"] is None
    csv_export = await api.get("/api/v1/audit", params={"format": "csv"}, headers=mine.headers)
    assert csv_export.headers["content-type"].startswith("text/csv")
    assert csv_export.text.splitlines()[0] == "seq,created_at,action,actor_id,ip,user_agent,data"
    assert "login_failed" not in csv_export.text  # the other tenant's event
    reader = await member(sessions, settings, Role.USER, tenant_id=mine.tenant_id)
    assert (await api.get("/api/v1/audit", headers=reader.headers)).status_code == 403
