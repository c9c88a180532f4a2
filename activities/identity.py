"""Identity activities: the password reset's e-mail and the change it confirms."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from connectors.mail import Mailer
from core import audit
from core.db import SessionFactory, transaction
from core.identity import membership_of, revoke_all_sessions, token_digest
from core.settings import Settings
from models.audit import AuditEntry
from models.email import EmailMessage
from models.password_reset import LinkPurpose, PasswordChange, ResetEmail, compose_reset_token
from models.tenant import Tenant
from models.user import User

ACCOUNT_UNAVAILABLE = "AccountUnavailable"


def _invitation_email(link: str, tenant: str, days: int) -> tuple[str, str]:
    body = (
        f"You have been invited to join {tenant} on BizOSaaS.\n\n"
        f"To accept, choose your password with this link within {days} days:\n\n"
        f"{link}\n\n"
        "The link works once. If you do not know why you got this, ignore this e-mail.\n"
    )
    return f"You are invited to {tenant} on BizOSaaS", body


def _reset_email_body(link: str, minutes: int) -> str:
    return (
        "Someone asked to reset the password of your BizOSaaS account.\n\n"
        f"To choose a new password, open this link within {minutes} minutes:\n\n"
        f"{link}\n\n"
        "The link works once. Setting a new password signs you out everywhere.\n"
        "If you did not ask for this, ignore this e-mail: your password stays as it is.\n"
    )


async def _active_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None or not user.is_active:
        # Retrying cannot bring the account back.
        raise ApplicationError(
            f"user {user_id} does not exist or is deactivated",
            type=ACCOUNT_UNAVAILABLE,
            non_retryable=True,
        )
    return user


class PasswordResetActivities:
    """Activities bound to the database, the settings (signing key, app URL) and the mailer."""

    def __init__(self, sessions: SessionFactory, settings: Settings, mailer: Mailer) -> None:
        self._sessions = sessions
        self._settings = settings
        self._mailer = mailer

    @activity.defn
    async def send_password_reset_email(self, request: ResetEmail) -> str:
        """E-mail the reset (or invitation) link, once per run; return only the token's SHA-256
        digest."""
        async with self._sessions() as session:
            user = await _active_user(session, request.user_id)
            membership = await membership_of(session, user.id)
        token = compose_reset_token(
            self._settings.jwt_signing_key(), request.user_id, request.run_id, request.token_purpose
        )
        base = self._settings.public_app_url.rstrip("/")
        if request.purpose is LinkPurpose.INVITATION:
            async with self._sessions() as session:
                tenant = await session.get(Tenant, membership.tenant_id) if membership else None
            link = f"{base}/accept-invitation?token={token}"
            days = max(1, round(request.token_ttl.total_seconds() / 86_400))
            subject, body = _invitation_email(link, tenant.name if tenant else "a team", days)
        else:
            link = f"{base}/reset-password?token={token}"
            minutes = int(request.token_ttl.total_seconds() // 60)
            subject, body = "Reset your BizOSaaS password", _reset_email_body(link, minutes)
        await self._mailer.send(
            EmailMessage(
                idempotency_key=f"password-reset:{request.run_id}",
                to=user.email,
                subject=subject,
                body=body,
                tenant_id=membership.tenant_id if membership else None,
            )
        )
        return token_digest(token)

    @activity.defn
    async def apply_password_reset(self, change: PasswordChange) -> None:
        """Set the new hash, clear the lockout, revoke every session and audit it, in one
        transaction; a retry after that transaction committed changes nothing."""
        idempotency_key = f"password-reset:{change.run_id}"
        async with transaction(self._sessions) as session:
            done = await session.scalar(
                select(AuditEntry.id).where(AuditEntry.idempotency_key == idempotency_key)
            )
            if done is not None:
                # Revoking again would end sessions opened with the new password.
                return
            user = await _active_user(session, change.user_id)
            user.password_hash = change.password_hash
            user.failed_logins = 0
            user.locked_until = None
            revoked = await revoke_all_sessions(session, user.id, "password_reset")
            membership = await membership_of(session, user.id)
            await audit.append(
                session,
                "user.password_reset",
                tenant_id=membership.tenant_id if membership else None,
                actor=audit.Actor(user_id=user.id),
                data={"sessions_revoked": revoked, "workflow_id": change.workflow_id},
                idempotency_key=idempotency_key,
            )
