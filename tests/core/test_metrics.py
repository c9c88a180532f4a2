"""The worker's metrics endpoint, scraped over HTTP: e-mails by outcome."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import aiosmtplib
import httpx
import pytest

from connectors.mail import Mailer, SmtpTransport
from core import metrics
from core.db import SessionFactory
from core.settings import Settings
from models.email import EmailMessage
from tests.conftest import SmtpSink, free_port


@pytest.fixture
def endpoint() -> Iterator[str]:
    port = free_port()
    server = metrics.serve("127.0.0.1", port, metrics.worker_registry())
    yield f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    server.server_close()


def _emails(endpoint: str, outcome: str) -> float:
    text = httpx.get(endpoint).text
    assert "# TYPE bizosaas_emails_total counter" in text
    prefix = f'bizosaas_emails_total{{outcome="{outcome}"}} '
    found = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(found[0].removeprefix(prefix)) if found else 0.0


def _message() -> EmailMessage:
    return EmailMessage(
        idempotency_key=f"test:{uuid.uuid4()}",
        to="someone@example.com",
        subject="Hello",
        body="Hello there",
    )


async def test_emails_sent_and_failed_are_counted(
    endpoint: str, sessions: SessionFactory, smtp_settings: Settings, smtp_sink: SmtpSink
) -> None:
    sent, failed = _emails(endpoint, "sent"), _emails(endpoint, "failed")

    delivering = Mailer(sessions, SmtpTransport(smtp_settings), smtp_settings.mail_from)
    message = _message()
    assert await delivering.send(message)
    assert not await delivering.send(message)  # already sent: not counted again
    assert _emails(endpoint, "sent") == sent + 1

    nobody_listens = smtp_settings.model_copy(update={"smtp_port": free_port()})
    refused = Mailer(sessions, SmtpTransport(nobody_listens), smtp_settings.mail_from)
    with pytest.raises(aiosmtplib.SMTPConnectError):
        await refused.send(_message())
    assert _emails(endpoint, "failed") == failed + 1
    assert _emails(endpoint, "sent") == sent + 1
