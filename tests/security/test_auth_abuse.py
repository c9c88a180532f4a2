"""Auth abuse: brute force, code and token replay, forged tokens, MFA step-up, rate limits.

Everything goes through HTTP against the API in process (real worker, dev server, database and
SMTP peer); each test prints how many attempts it made and how many were refused.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pyotp
import pytest
from jwt.utils import base64url_encode
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from core.db import SessionFactory
from core.settings import Settings
from models.identity import AuthSession
from models.user import Role
from tests.api.flows import applicant, decide, fill_wizard, pending_approval, submit
from tests.conftest import SmtpSink
from tests.factories import Member, member
from tests.security.conftest import Figures, Served
from workers.main import build_worker

PASSWORD = "orbit-velvet-canyon-42"
NEW_PASSWORD = "granite-harbor-lantern-77"
PROBLEM = "application/problem+json"
TOKEN_IN_LINK = re.compile(r"/reset-password\?token=([0-9a-f]{32}\.[A-Za-z0-9_-]{43})")
DECIDE = "/api/v1/approvals/{}/decision"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _call(
    figures: Figures, client: httpx.AsyncClient, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    response = await client.request(method, path, **kwargs)
    figures.count(response.status_code)
    return response


async def _login(
    figures: Figures, client: httpx.AsyncClient, email: str, password: str = PASSWORD, **more: str
) -> httpx.Response:
    body = {"email": email, "password": password, **more}
    return await _call(figures, client, "POST", "/api/v1/auth/login", json=body)


class Enrolled(pyotp.TOTP):
    """The authenticator app's view of an enrolment, with the recovery codes shown once."""

    recovery_codes: list[str]


async def _enable_totp(figures: Figures, client: httpx.AsyncClient, token: str) -> Enrolled:
    setup = await _call(
        figures, client, "POST", "/api/v1/auth/mfa/totp/setup", headers=_bearer(token)
    )
    assert setup.status_code == 200, setup.text
    totp = Enrolled(setup.json()["secret"])
    confirmed = await _call(
        figures,
        client,
        "POST",
        "/api/v1/auth/mfa/totp/confirm",
        headers=_bearer(token),
        json={"code": totp.now()},
    )
    assert confirmed.status_code == 200, confirmed.text
    totp.recovery_codes = confirmed.json()["recovery_codes"]
    return totp


def _code_at(totp: pyotp.TOTP, steps_ahead: int) -> str:
    return totp.at(datetime.now(UTC) + timedelta(seconds=30 * steps_ahead))


# --- brute force ----------------------------------------------------------------------------


async def test_brute_force_meets_lockout_then_rate_limit(
    served: Served, sessions: SessionFactory, settings: Settings, figures: Figures
) -> None:
    victim = await member(sessions, settings, password=PASSWORD)
    answers = [
        (
            await _login(figures, served.client, victim.email, f"guess-{n}-wrong-password")
        ).status_code
        for n in range(12)
    ]
    threshold = settings.lockout_threshold
    assert answers[: threshold - 1] == [401] * (threshold - 1)
    assert answers[threshold - 1] == 423  # the fifth failure locks the account
    assert 429 in answers  # the per-account rate limit (10/minute) answers past it
    assert set(answers[threshold:]) <= {423, 429}
    # Locked: even the right password is refused now.
    assert (await _login(figures, served.client, victim.email)).status_code in {423, 429}

    # Spraying many accounts from one client meets the per-client limit.
    sprayed = [
        (await _login(figures, served.client, f"spray-{n}@example.com")).status_code
        for n in range(35)
    ]
    assert sprayed[-1] == 429
    limited = await _login(figures, served.client, "spray-last@example.com")
    assert limited.status_code == 429
    assert limited.headers["content-type"] == PROBLEM
    assert int(limited.headers["retry-after"]) > 0
    figures.refused = sum(1 for code in answers + sprayed if code >= 400)


# --- second factor ----------------------------------------------------------------------------


async def test_a_totp_code_works_once(
    served: Served, sessions: SessionFactory, settings: Settings, figures: Figures
) -> None:
    user = await member(sessions, settings, password=PASSWORD)
    totp = await _enable_totp(figures, served.client, user.access_token)
    # The confirming code was spent at enrolment.
    replay = await _login(figures, served.client, user.email, totp_code=totp.now())
    assert replay.status_code == 401, replay.text
    fresh = _code_at(totp, 1)
    assert (await _login(figures, served.client, user.email, totp_code=fresh)).status_code == 200
    again = await _login(figures, served.client, user.email, totp_code=fresh)
    assert again.status_code == 401
    assert "already used" in again.json()["detail"]


async def test_deciding_needs_a_session_that_passed_mfa_recently(
    served: Served, sessions: SessionFactory, settings: Settings, figures: Figures
) -> None:
    """Defect: a password-only session opened before TOTP was enabled could decide."""
    approver = await member(sessions, settings, Role.SUPER_ADMIN, password=PASSWORD)
    unknown = DECIDE.format(uuid.uuid4())
    decision = {"decision": "approve", "reason": None}
    # Signed in with the password alone, before TOTP: enrolment is missing (403).
    before = await _login(figures, served.client, approver.email)
    old_access = before.json()["access_token"]
    refused = await _call(
        figures, served.client, "POST", unknown, json=decision, headers=_bearer(old_access)
    )
    assert refused.status_code == 403
    assert refused.json()["type"].endswith("mfa-enrolment-required")

    totp = await _enable_totp(figures, served.client, old_access)
    # Enrolled now, but this session never passed MFA: a step-up challenge (RFC 9470).
    challenged = await _call(
        figures, served.client, "POST", unknown, json=decision, headers=_bearer(old_access)
    )
    assert challenged.status_code == 401, challenged.text
    assert challenged.json()["type"].endswith("mfa-step-up-required")
    assert challenged.json()["max_age"] == int(settings.mfa_max_age.total_seconds())
    assert 'error="insufficient_user_authentication"' in challenged.headers["www-authenticate"]
    claims = jwt.decode(old_access, options={"verify_signature": False})
    assert claims["amr"] == ["pwd"]

    # A refresh keeps the session's strength: still challenged.
    refreshed = await _call(
        figures,
        served.client,
        "POST",
        "/api/v1/auth/refresh",
        json={"refresh_token": before.json()["refresh_token"]},
    )
    still = await _call(
        figures,
        served.client,
        "POST",
        unknown,
        json=decision,
        headers=_bearer(refreshed.json()["access_token"]),
    )
    assert still.status_code == 401

    # Wrong and replayed codes are refused; a fresh one marks the session.
    step_up = "/api/v1/auth/mfa/step-up"
    session_token = _bearer(refreshed.json()["access_token"])
    wrong = await _call(
        figures, served.client, "POST", step_up, json={"code": "000000"}, headers=session_token
    )
    assert wrong.status_code == 422
    code = _code_at(totp, 1)
    stepped = await _call(
        figures, served.client, "POST", step_up, json={"code": code}, headers=session_token
    )
    assert stepped.status_code == 200, stepped.text
    replayed = await _call(
        figures, served.client, "POST", step_up, json={"code": code}, headers=session_token
    )
    assert replayed.status_code == 422
    tokens = stepped.json()
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["amr"] == ["pwd", "otp", "mfa"]
    assert abs(claims["auth_time"] - datetime.now(UTC).timestamp()) < 60
    passed = await _call(
        figures,
        served.client,
        "POST",
        unknown,
        json=decision,
        headers=_bearer(tokens["access_token"]),
    )
    assert passed.status_code == 404  # past the MFA gate: the approval does not exist
    # Outside the window the session must step up again.
    async with sessions() as session:
        sid = uuid.UUID(claims["sid"])
        stale = datetime.now(UTC) - settings.mfa_max_age - timedelta(minutes=1)
        await session.execute(update(AuthSession).where(AuthSession.id == sid).values(mfa_at=stale))
        await session.commit()
    expired = await _call(
        figures,
        served.client,
        "POST",
        unknown,
        json=decision,
        headers=_bearer(tokens["access_token"]),
    )
    assert expired.status_code == 401
    assert expired.json()["type"].endswith("mfa-step-up-required")

    # The refresh token handed out before the step-up is spent: presenting it is reuse.
    spent = await _call(
        figures,
        served.client,
        "POST",
        "/api/v1/auth/refresh",
        json={"refresh_token": refreshed.json()["refresh_token"]},
    )
    assert spent.status_code == 401

    # Signing in with password and a second factor (a recovery code here: the TOTP steps of
    # this minute are spent) opens a session that may decide at once.
    recovery = totp.recovery_codes[0]
    login = await _login(figures, served.client, approver.email, totp_code=recovery)
    assert login.status_code == 200, login.text
    decided = await _call(
        figures,
        served.client,
        "POST",
        unknown,
        json=decision,
        headers=_bearer(login.json()["access_token"]),
    )
    assert decided.status_code == 404

    # Turning TOTP off (with a recovery code) and on again leaves no session vouched for.
    strong = _bearer(login.json()["access_token"])
    disabled = await _call(
        figures,
        served.client,
        "POST",
        "/api/v1/auth/mfa/totp/disable",
        json={"code": totp.recovery_codes[1]},
        headers=strong,
    )
    assert disabled.status_code == 204, disabled.text
    await _enable_totp(figures, served.client, login.json()["access_token"])
    again = await _call(figures, served.client, "POST", unknown, json=decision, headers=strong)
    assert again.status_code == 401
    assert again.json()["type"].endswith("mfa-step-up-required")


# --- tokens ------------------------------------------------------------------------------------


async def test_refresh_reuse_revokes_the_family(
    served: Served, sessions: SessionFactory, settings: Settings, figures: Figures
) -> None:
    user = await member(sessions, settings, password=PASSWORD)
    first = (await _login(figures, served.client, user.email)).json()
    second = await _call(
        figures,
        served.client,
        "POST",
        "/api/v1/auth/refresh",
        json={"refresh_token": first["refresh_token"]},
    )
    assert second.status_code == 200
    reuse = await _call(
        figures,
        served.client,
        "POST",
        "/api/v1/auth/refresh",
        json={"refresh_token": first["refresh_token"]},
    )
    assert reuse.status_code == 401
    for token in (second.json()["refresh_token"],):
        dead = await _call(
            figures, served.client, "POST", "/api/v1/auth/refresh", json={"refresh_token": token}
        )
        assert dead.status_code == 401
    me = await _call(
        figures,
        served.client,
        "GET",
        "/api/v1/auth/me",
        headers=_bearer(second.json()["access_token"]),
    )
    assert me.status_code == 401


def _forgeries(token: str, key: str) -> dict[str, str]:
    header, payload, signature = token.split(".")
    claims = jwt.decode(token, key, algorithms=["HS256"])
    now = datetime.now(UTC)

    def signed(changes: dict[str, Any], with_key: str = key, algorithm: str = "HS256") -> str:
        return jwt.encode(claims | changes, with_key, algorithm=algorithm)

    # The role claim raised, the original signature kept.
    edited = base64url_encode(json.dumps(claims | {"role": "super_admin"}).encode()).decode()
    unsigned = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    return {
        "another key": signed({}, with_key="another-signing-key-" + "y" * 32),
        "alg none": f"{unsigned}.{payload}.",
        "alg none, no signature part": f"{unsigned}.{payload}",
        "expired": signed({"exp": now - timedelta(seconds=1), "iat": now - timedelta(hours=1)}),
        "edited claims": f"{header}.{edited}.{signature}",
        "role raised and re-signed": signed({"role": "super_admin"}),
        "another session": signed({"sid": str(uuid.uuid4())}),
        "another tenant": signed({"tenant_id": str(uuid.uuid4())}),
        "missing claim": jwt.encode(
            {k: v for k, v in claims.items() if k != "sid"}, key, algorithm="HS256"
        ),
        "garbage": "not-a-token",
    }


async def test_forged_tokens_are_refused(
    served: Served, sessions: SessionFactory, settings: Settings, figures: Figures
) -> None:
    user = await member(sessions, settings, password=PASSWORD)
    genuine = await _call(figures, served.client, "GET", "/api/v1/auth/me", headers=user.headers)
    assert genuine.status_code == 200
    for name, forged in _forgeries(user.access_token, settings.jwt_signing_key()).items():
        answer = await _call(
            figures, served.client, "GET", "/api/v1/auth/me", headers=_bearer(forged)
        )
        if answer.status_code != 401:
            figures.failures.append(f"{name}: {answer.status_code} {answer.text}")
    assert figures.failures == []


# --- reset links -----------------------------------------------------------------------------


@pytest.fixture
async def mailing(
    smtp_settings: Settings,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    sessions: SessionFactory,
) -> AsyncIterator[httpx.AsyncClient]:
    """The API and a worker sending e-mail to the SMTP sink."""
    async with build_worker(temporal_env.client, sessions, smtp_settings):
        app = create_app(smtp_settings, temporal_env.client, engine)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_a_reset_link_works_once(
    mailing: httpx.AsyncClient,
    smtp_sink: SmtpSink,
    sessions: SessionFactory,
    smtp_settings: Settings,
    figures: Figures,
) -> None:
    user = await member(sessions, smtp_settings, password=PASSWORD)
    asked = await _call(
        figures, mailing, "POST", "/api/v1/auth/password-reset", json={"email": user.email}
    )
    assert asked.status_code == 202
    [message] = await smtp_sink.wait_for(user.email)
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    found = TOKEN_IN_LINK.search(payload.decode())
    assert found is not None
    confirm = {"token": found.group(1), "new_password": NEW_PASSWORD}
    used = await _call(
        figures, mailing, "POST", "/api/v1/auth/password-reset/confirm", json=confirm
    )
    assert used.status_code == 204, used.text
    again = await _call(
        figures,
        mailing,
        "POST",
        "/api/v1/auth/password-reset/confirm",
        json=confirm | {"new_password": "another-" + NEW_PASSWORD},
    )
    assert again.status_code == 400
    assert (await _login(figures, mailing, user.email, NEW_PASSWORD)).status_code == 200
    assert (await _login(figures, mailing, user.email)).status_code == 401


# --- rate limits on sign-up and single sign-on -----------------------------------------------


def _registration(n: int) -> dict[str, str]:
    return {
        "email": f"signup-{uuid.uuid4().hex[:8]}-{n}@example.com",
        "password": PASSWORD,
        "full_name": "Ada Owner",
        "company_name": f"Signup {n}",
    }


async def test_sign_up_is_limited_per_client_and_globally(
    settings: Settings,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    worker: object,
    figures: Figures,
) -> None:
    limited = settings.model_copy(
        update={"register_rate_per_ip": "2/hour", "register_rate_global": "3/hour"}
    )
    app = create_app(limited, temporal_env.client, engine)
    answers: dict[str, list[int]] = {}
    for ip in ("192.0.2.1", "192.0.2.2"):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(ip, 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answers[ip] = [
                (
                    await _call(
                        figures, client, "POST", "/api/v1/auth/register", json=_registration(n)
                    )
                ).status_code
                for n in range(3)
            ]
    assert answers["192.0.2.1"] == [201, 201, 429]  # per client
    assert answers["192.0.2.2"] == [201, 429, 429]  # the global budget is spent


async def test_sso_routes_are_rate_limited(
    settings: Settings,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    figures: Figures,
) -> None:
    limited = settings.model_copy(update={"sso_rate_per_ip": "3/minute"})
    app = create_app(limited, temporal_env.client, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("192.0.2.9", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        answers = [
            (await _call(figures, client, "GET", f"/api/v1/auth/sso/google/{route}")).status_code
            for route in ("login", "callback", "login", "callback", "login")
        ]
    # Google is not configured here (404) until the limit answers first.
    assert answers == [404, 404, 404, 429, 429]


async def test_a_password_only_session_cannot_approve_a_real_application(
    served: Served,
    sessions: SessionFactory,
    settings: Settings,
    temporal_client: Client,
    figures: Figures,
) -> None:
    """End to end: the pending approval stays pending until the approver's session steps up."""
    admin = await applicant(sessions, settings, temporal_client)
    await fill_wizard(served.client, admin, f"Step Up {uuid.uuid4().hex[:8]}")
    await submit(served.client, admin)
    approver = await member(sessions, settings, Role.SUPER_ADMIN, password=PASSWORD)
    signed_in = (await _login(figures, served.client, approver.email)).json()
    totp = await _enable_totp(figures, served.client, signed_in["access_token"])
    session = Member(
        approver.tenant_id,
        approver.user_id,
        approver.role,
        approver.email,
        signed_in["access_token"],
        signed_in["refresh_token"],
    )
    item = await pending_approval(served.client, session, admin.tenant_id)

    refused = await decide(served.client, session, item["approval_id"], "approve")
    figures.count(refused.status_code)
    assert refused.status_code == 401, refused.text
    assert refused.json()["type"].endswith("mfa-step-up-required")
    assert (await pending_approval(served.client, session, admin.tenant_id))["status"] == "pending"

    stepped = await _call(
        figures,
        served.client,
        "POST",
        "/api/v1/auth/mfa/step-up",
        json={"code": _code_at(totp, 1)},
        headers=session.headers,
    )
    assert stepped.status_code == 200, stepped.text
    strong = Member(
        approver.tenant_id,
        approver.user_id,
        approver.role,
        approver.email,
        stepped.json()["access_token"],
        stepped.json()["refresh_token"],
    )
    approved = await decide(served.client, strong, item["approval_id"], "approve")
    figures.count(approved.status_code)
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"
