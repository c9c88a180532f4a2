"""Sign-in: password + TOTP with lockout, refresh rotation with reuse detection, MFA enrolment.

Functions that can fail after writing (a failed login is counted, a reused refresh token revokes
its session) return the :class:`Problem` instead of raising it, so the caller commits the writes
first and reports the problem after.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core import audit, mfa
from core.errors import (
    Conflict,
    Forbidden,
    Locked,
    MfaEnrolmentRequired,
    MfaRequired,
    Problem,
    Unauthorized,
    Unprocessable,
)
from core.identity import (
    TokenPair,
    membership_of,
    normalize_email,
    open_session,
    revoke_session,
    token_digest,
    token_pair,
)
from core.passwords import hash_password, verify_password
from core.security import Principal
from core.settings import Settings
from models.base import utcnow
from models.identity import AuthSession, RecoveryCode, RefreshToken
from models.user import User

_BAD_CREDENTIALS = "The e-mail or password is wrong."
# Verified against when the e-mail is unknown, so both paths cost one hash.
_DUMMY_HASH: list[str] = []


async def _dummy_hash() -> str:
    if not _DUMMY_HASH:
        _DUMMY_HASH.append(await hash_password("not-a-real-password-for-timing"))
    return _DUMMY_HASH[0]


async def login(
    session: AsyncSession,
    settings: Settings,
    *,
    email: str,
    password: str,
    totp_code: str | None,
    actor: audit.Actor,
) -> TokenPair | Problem:
    """Check password, lockout and second factor; open a session on success."""
    user = await session.scalar(select(User).where(User.email == normalize_email(email)))
    if user is None or user.password_hash is None:
        await verify_password(password, await _dummy_hash())
        return Unauthorized(_BAD_CREDENTIALS)
    membership = await membership_of(session, user.id)
    tenant_id = membership.tenant_id if membership else None
    who = audit.Actor(user.id, actor.ip, actor.user_agent)
    now = utcnow()
    if user.locked_until is not None and user.locked_until > now:
        return Locked(
            "Too many failed sign-ins; try again later.", locked_until=str(user.locked_until)
        )
    valid, new_hash = await verify_password(password, user.password_hash)
    if not valid:
        return await _failed(session, settings, user, tenant_id, who, "password")
    if not user.is_active or membership is None:
        return Forbidden("This account is deactivated.")
    if user.mfa_enabled:
        if not totp_code:
            return MfaRequired("Enter the code from your authenticator app or a recovery code.")
        if not await _second_factor_ok(session, settings, user, totp_code):
            return await _failed(session, settings, user, tenant_id, who, "mfa")
    if new_hash is not None:
        user.password_hash = new_hash
    user.failed_logins, user.locked_until = 0, None
    # The session records whether a second factor was checked, for actions that need one.
    tokens = await open_session(session, membership, settings, actor, mfa=user.mfa_enabled)
    await audit.append(
        session, "user.login", tenant_id=tenant_id, actor=who, data={"method": "password"}
    )
    return tokens


async def _failed(
    session: AsyncSession,
    settings: Settings,
    user: User,
    tenant_id: uuid.UUID | None,
    who: audit.Actor,
    factor: str,
) -> Problem:
    """Count a failed attempt; lock the account at the threshold."""
    user.failed_logins += 1
    await audit.append(
        session, "user.login_failed", tenant_id=tenant_id, actor=who,
        data={"factor": factor, "attempt": user.failed_logins},
    )  # fmt: skip
    if user.failed_logins >= settings.lockout_threshold:
        user.locked_until = utcnow() + timedelta(minutes=settings.lockout_minutes)
        user.failed_logins = 0
        await audit.append(session, "user.locked_out", tenant_id=tenant_id, actor=who)
        return Locked(
            "Too many failed sign-ins; try again later.", locked_until=str(user.locked_until)
        )
    if factor == "mfa":
        return Unauthorized("The one-time code is wrong or was already used.")
    return Unauthorized(_BAD_CREDENTIALS)


async def _second_factor_ok(
    session: AsyncSession, settings: Settings, user: User, code: str
) -> bool:
    """A fresh TOTP code (its step is recorded) or an unused recovery code (it is spent)."""
    if user.mfa_secret is not None:
        secret = settings.field_cipher().decrypt(user.mfa_secret)
        step = mfa.accepted_step(secret, code.strip(), user.mfa_last_step)
        if step is not None:
            user.mfa_last_step = step
            return True
    spent = await session.execute(
        update(RecoveryCode)
        .where(
            RecoveryCode.user_id == user.id,
            RecoveryCode.code_hash == mfa.recovery_digest(code),
            RecoveryCode.used_at.is_(None),
        )
        .values(used_at=utcnow())
    )
    return bool(getattr(spent, "rowcount", 0))


async def refresh(
    session: AsyncSession, settings: Settings, token: str, actor: audit.Actor
) -> TokenPair | Problem:
    """Rotate a refresh token; presenting a spent one revokes its whole session."""
    row = await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == token_digest(token))
    )
    auth = await session.get(AuthSession, row.session_id) if row else None
    now = utcnow()
    if row is None or auth is None or auth.revoked_at is not None or auth.expires_at <= now:
        return Unauthorized("The refresh token is not valid; sign in again.")
    claimed = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == row.id, RefreshToken.rotated_at.is_(None))
        .values(rotated_at=now)
    )
    membership = await membership_of(session, auth.user_id)
    who = audit.Actor(auth.user_id, actor.ip, actor.user_agent)
    if not getattr(claimed, "rowcount", 0):
        await revoke_session(session, auth.id, "refresh_token_reuse", now)
        await audit.append(
            session, "session.refresh_reuse", tenant_id=auth.tenant_id, actor=who,
            data={"session_id": str(auth.id)},
        )  # fmt: skip
        return Unauthorized("The refresh token was already used; the session is revoked.")
    if membership is None:
        return Unauthorized("The account no longer has access; sign in again.")
    auth.last_used_at, auth.ip, auth.user_agent = now, actor.ip, actor.user_agent
    return token_pair(session, settings, membership, auth)


async def logout(session: AsyncSession, principal: Principal, actor: audit.Actor) -> None:
    await revoke_session(session, principal.session_id, "logout")
    await audit.append(session, "user.logout", tenant_id=principal.tenant_id, actor=actor)


async def _user(session: AsyncSession, principal: Principal) -> User:
    user = await session.get(User, principal.user_id)
    assert user is not None  # a live session implies the user exists (cascade)
    return user


async def begin_totp(
    session: AsyncSession, settings: Settings, principal: Principal
) -> tuple[str, str]:
    """A new secret (stored encrypted, not yet enabled) and its otpauth URI."""
    user = await _user(session, principal)
    if user.mfa_enabled:
        raise Conflict("Two-factor authentication is already enabled.")
    secret = mfa.new_secret()
    user.mfa_secret, user.mfa_last_step = settings.field_cipher().encrypt(secret), None
    return secret, mfa.provisioning_uri(secret, user.email)


async def confirm_totp(
    session: AsyncSession, settings: Settings, principal: Principal, code: str, actor: audit.Actor
) -> list[str]:
    """Enable TOTP with a valid code; return ten fresh single-use recovery codes."""
    user = await _user(session, principal)
    if user.mfa_enabled:
        raise Conflict("Two-factor authentication is already enabled.")
    if user.mfa_secret is None:
        raise Conflict("Start with POST /api/v1/auth/mfa/totp/setup.")
    step = mfa.accepted_step(settings.field_cipher().decrypt(user.mfa_secret), code.strip(), None)
    if step is None:
        raise Unprocessable("The code is not valid for this secret.", errors=[
            {"loc": ["body", "code"], "msg": "invalid code", "type": "value_error"}])  # fmt: skip
    user.mfa_enabled, user.mfa_last_step = True, step
    codes = mfa.new_recovery_codes()
    await session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    session.add_all(RecoveryCode(user_id=user.id, code_hash=mfa.recovery_digest(c)) for c in codes)
    await audit.append(session, "user.mfa_enabled", tenant_id=principal.tenant_id, actor=actor)
    return codes


async def disable_totp(
    session: AsyncSession, settings: Settings, principal: Principal, code: str, actor: audit.Actor
) -> None:
    """Turn TOTP off; needs a current code or a recovery code."""
    user = await _user(session, principal)
    if not user.mfa_enabled:
        raise Conflict("Two-factor authentication is not enabled.")
    if not await _second_factor_ok(session, settings, user, code):
        raise Unprocessable("The code is wrong or was already used.", errors=[
            {"loc": ["body", "code"], "msg": "invalid code", "type": "value_error"}])  # fmt: skip
    user.mfa_enabled, user.mfa_secret, user.mfa_last_step = False, None, None
    await session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    # A factor that no longer exists vouches for no session (nor for one after re-enrolment).
    await session.execute(
        update(AuthSession).where(AuthSession.user_id == user.id).values(mfa_at=None)
    )
    await audit.append(session, "user.mfa_disabled", tenant_id=principal.tenant_id, actor=actor)


async def step_up(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    code: str,
    actor: audit.Actor,
) -> TokenPair | Problem:
    """Mark the caller's session as having passed MFA now, with a TOTP or recovery code.

    Returns a fresh token pair of the same session (its ``amr`` says ``mfa``); the refresh tokens
    handed out before are spent. A wrong code counts towards the lockout like a failed sign-in.
    """
    user = await _user(session, principal)
    auth = await session.get(AuthSession, principal.session_id)
    membership = await membership_of(session, user.id)
    assert auth is not None  # the principal comes from a live session
    assert membership is not None
    if not user.mfa_enabled:
        return MfaEnrolmentRequired("Enable two-factor authentication first.")
    now = utcnow()
    if user.locked_until is not None and user.locked_until > now:
        return Locked(
            "Too many failed sign-ins; try again later.", locked_until=str(user.locked_until)
        )
    if not await _second_factor_ok(session, settings, user, code):
        failed = await _failed(session, settings, user, principal.tenant_id, actor, "mfa")
        if isinstance(failed, Locked):
            return failed
        return Unprocessable("The code is wrong or was already used.", errors=[
            {"loc": ["body", "code"], "msg": "invalid code", "type": "value_error"}])  # fmt: skip
    user.failed_logins = 0
    auth.mfa_at = auth.last_used_at = now
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.session_id == auth.id, RefreshToken.rotated_at.is_(None))
        .values(rotated_at=now)
    )
    await audit.append(
        session, "user.mfa_step_up", tenant_id=principal.tenant_id, actor=actor,
        data={"session_id": str(auth.id)},
    )  # fmt: skip
    return token_pair(session, settings, membership, auth)
