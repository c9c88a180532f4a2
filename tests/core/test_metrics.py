"""The worker's metrics endpoint, scraped over HTTP: e-mails by outcome, SLA breaches."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import timedelta

import aiosmtplib
import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from connectors.mail import Mailer, SmtpTransport
from core import metrics
from core.db import SessionFactory
from core.settings import Settings
from core.temporal import connect
from models.email import EmailMessage
from models.tasks import BusinessCalendar, Priority, SlaTarget, TaskPolicy
from tests.conftest import SmtpSink, free_port
from tests.factories import member
from tests.workflows.test_task import _project as task_project
from tests.workflows.test_task import _start as start_task
from tests.workflows.test_task import _state as task_state
from workers.main import build_worker


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


def _breaches(endpoint: str, task_queue: str, sla: str) -> float:
    """The worker's SLA breach counter for one clock kind, from this test's task queue."""
    text = httpx.get(endpoint).text
    found = [
        line
        for line in text.splitlines()
        if line.startswith("bizosaas_sla_breaches_total{")
        and f'task_queue="{task_queue}"' in line
        and f'sla="{sla}"' in line
    ]
    return float(found[0].rsplit(" ", 1)[1]) if found else 0.0


async def test_sla_breaches_are_counted(
    endpoint: str,
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
) -> None:
    # The worker's client is made as the worker process makes it: on the process's runtime,
    # whose SDK metrics (the workflows' own counters among them) the endpoint serves.
    target = time_skipping_env.client.service_client.config.target_host
    client = await connect(settings.model_copy(update={"temporal_address": target}))
    queue = settings.temporal_task_queue
    assert _breaches(endpoint, queue, "response") == 0
    admin = await member(sessions, settings)
    project_id = await task_project(sessions, admin)
    policy = TaskPolicy(
        calendar=BusinessCalendar(work_days=[0, 1, 2, 3, 4, 5, 6], start="00:00", end="23:59"),
        sla={Priority.NORMAL: SlaTarget(response_minutes=60, resolution_minutes=120)},
        accept_within=timedelta(days=1),
    )
    async with build_worker(client, sessions, settings):
        now = await time_skipping_env.get_current_time()
        task = await start_task(client, settings, admin, project_id, now, policy, admin)
        await time_skipping_env.sleep(timedelta(minutes=90))
        await task_state(task, lambda s: any(c.breached for c in s.clocks))
        await time_skipping_env.sleep(timedelta(minutes=60))
        await task_state(task, lambda s: all(c.breached for c in s.clocks))
    async with asyncio.timeout(10):
        while True:  # the SDK's exporter shows the counter on a later scrape
            counted = [_breaches(endpoint, queue, sla) for sla in ("response", "resolution")]
            if counted != [0, 0]:
                break
            await asyncio.sleep(0.1)
    assert counted == [1, 1]
