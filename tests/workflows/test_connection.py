"""The connection workflow's consent deadline, on the time-skipping server."""

from __future__ import annotations

import uuid
from datetime import timedelta

from temporalio.testing import WorkflowEnvironment

from connectors.secrets import secret_store_from_settings, staged_path
from core.db import SessionFactory
from core.settings import Settings
from models.connection import ConnectionAction, ConnectionCommand, ConnectionOutcome
from tests.factories import member
from workers.main import build_worker
from workflows.connection import ConnectionWorkflow, workflow_id


async def test_consent_that_never_comes_back_expires(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    command = ConnectionCommand(
        action=ConnectionAction.CONNECT,
        connection_id=uuid.uuid4(),
        tenant_id=admin.tenant_id,
        requested_by=admin.user_id,
        connector_id="hubspot",
        auth_kind="oauth2_authorization_code",
        label="CRM",
        consent_timeout=timedelta(minutes=15),
    )
    store = secret_store_from_settings(settings)
    # A code staged by a callback whose signal never arrived is forgotten with the attempt.
    await store.put(
        staged_path(admin.tenant_id, command.connection_id), {"authorization_code": "x"}
    )
    client = time_skipping_env.client
    async with build_worker(client, sessions, settings):
        handle = await client.start_workflow(
            ConnectionWorkflow.run,
            command,
            id=workflow_id(command.connection_id),
            task_queue=settings.temporal_task_queue,
        )
        await time_skipping_env.sleep(timedelta(minutes=16))
        outcome: ConnectionOutcome = await handle.result()
    assert outcome.consent_expired
    assert outcome.connection is None
    assert await store.get(staged_path(admin.tenant_id, command.connection_id)) is None
