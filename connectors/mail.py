"""The mail port: every e-mail is recorded once in the outbox, then delivered.

The embedded default delivers by logging (the outbox row is the message); production sets
``BIZ_SMTP_HOST`` and the same row guards SMTP delivery against duplicates.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage as MimeMessage
from email.utils import make_msgid
from typing import Protocol

import aiosmtplib
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core import metrics
from core.db import SessionFactory, transaction
from core.settings import Settings
from models.base import utcnow
from models.email import EmailMessage, OutboundEmail

log = logging.getLogger(__name__)


class Transport(Protocol):
    """Delivers one recorded message."""

    # Whether the outbox row keeps the body: only where the row is the delivery, since
    # bodies can carry single-use links (password reset) that must not rest in the database.
    keeps_body: bool

    async def deliver(self, message: EmailMessage, sender: str) -> None: ...


class LogTransport:
    """The embedded default: the outbox row is the delivery; a log line says so."""

    keeps_body = True

    async def deliver(self, message: EmailMessage, sender: str) -> None:
        log.info("e-mail %s recorded in the outbox (no SMTP host set)", message.idempotency_key)


class SmtpTransport:
    """SMTP through aiosmtplib, with a Message-ID derived from the idempotency key."""

    keeps_body = False

    def __init__(self, settings: Settings) -> None:
        assert settings.smtp_host is not None
        self._host, self._port = settings.smtp_host, settings.smtp_port
        self._username = settings.smtp_username
        self._password = settings.smtp_password
        self._starttls = settings.smtp_starttls

    async def deliver(self, message: EmailMessage, sender: str) -> None:
        mime = MimeMessage()
        mime["From"], mime["To"], mime["Subject"] = sender, message.to, message.subject
        # Receivers can drop a duplicate left by a crash between delivery and bookkeeping.
        mime["Message-ID"] = make_msgid(idstring=message.idempotency_key.replace(":", "."))
        mime.set_content(message.body)
        await aiosmtplib.send(
            mime,
            hostname=self._host,
            port=self._port,
            username=self._username,
            password=self._password.get_secret_value() if self._password else None,
            start_tls=self._starttls,
            timeout=30,
        )


class Mailer:
    """Sends each message at most once per idempotency key (once, unless a crash lands
    between SMTP delivery and marking the row sent)."""

    def __init__(self, sessions: SessionFactory, transport: Transport, sender: str) -> None:
        self._sessions = sessions
        self._transport = transport
        self._sender = sender

    async def send(self, message: EmailMessage) -> bool:
        """Deliver ``message``; ``False`` when it was already sent under its key."""
        row = await self._record(message)
        if row.sent_at is not None:
            return False
        try:
            await self._transport.deliver(message, self._sender)
        except Exception:
            metrics.EMAILS.labels("failed").inc()
            raise
        metrics.EMAILS.labels("sent").inc()
        async with transaction(self._sessions) as session:
            stored = await session.get(OutboundEmail, row.id)
            assert stored is not None
            stored.sent_at = utcnow()
        return True

    async def _record(self, message: EmailMessage) -> OutboundEmail:
        try:
            async with transaction(self._sessions) as session:
                row = OutboundEmail(
                    idempotency_key=message.idempotency_key,
                    tenant_id=message.tenant_id,
                    recipient=str(message.to),
                    subject=message.subject,
                    body=message.body if self._transport.keeps_body else "",
                )
                session.add(row)
            return row
        except IntegrityError:
            async with self._sessions() as session:
                existing = await session.scalar(
                    select(OutboundEmail).where(
                        OutboundEmail.idempotency_key == message.idempotency_key
                    )
                )
            assert existing is not None
            return existing


def mailer_from_settings(settings: Settings, sessions: SessionFactory) -> Mailer:
    """SMTP when ``BIZ_SMTP_HOST`` is set, else the outbox with a log line."""
    transport: Transport = SmtpTransport(settings) if settings.smtp_host else LogTransport()
    return Mailer(sessions, transport, settings.mail_from)
