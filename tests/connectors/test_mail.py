"""The mail port against a real SMTP server, and the outbox default."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from connectors.mail import mailer_from_settings
from core.db import SessionFactory
from core.settings import Settings
from models.email import EmailMessage, OutboundEmail
from tests.conftest import SmtpSink


def _message(to: str) -> EmailMessage:
    return EmailMessage(
        idempotency_key=f"test:{uuid.uuid4()}", to=to, subject="Hello", body="Welcome aboard."
    )


async def test_smtp_delivers_once_per_key(
    smtp_settings: Settings, smtp_sink: SmtpSink, sessions: SessionFactory
) -> None:
    to = f"{uuid.uuid4().hex[:8]}@example.com"
    mailer = mailer_from_settings(smtp_settings, sessions)
    message = _message(to)
    assert await mailer.send(message) is True
    assert await mailer.send(message) is False
    [received] = smtp_sink.to(to)
    assert received["Subject"] == "Hello"
    assert str(received.get_payload()).strip() == "Welcome aboard."
    assert message.idempotency_key.replace(":", ".") in received["Message-ID"]
    async with sessions() as session:
        row = await session.scalar(
            select(OutboundEmail).where(OutboundEmail.idempotency_key == message.idempotency_key)
        )
    assert row is not None
    assert row.sent_at is not None
    assert row.body == ""  # delivered by SMTP: single-use links do not rest in the database


async def test_default_records_in_the_outbox(settings: Settings, sessions: SessionFactory) -> None:
    to = f"{uuid.uuid4().hex[:8]}@example.com"
    mailer = mailer_from_settings(settings, sessions)
    await mailer.send(_message(to))
    async with sessions() as session:
        [row] = (
            await session.scalars(select(OutboundEmail).where(OutboundEmail.recipient == to))
        ).all()
    assert row.sent_at is not None
    assert row.body == "Welcome aboard."
