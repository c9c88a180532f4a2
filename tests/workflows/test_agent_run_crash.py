"""A model-backed agent run whose worker process is killed (SIGKILL) while the model thinks:
the next worker asks the model again for that step only, never for a step already answered."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from connectors.crm.hubspot import API_BASE
from connectors.secrets import model_provider_path, secret_store_from_settings
from core.db import SessionFactory
from core.settings import Settings
from models.agents import AgentRunConfig, AgentRunStart, AgentRunStatus, ModelChoice
from tests.factories import hubspot_connection, member
from tests.peers.chat_model import ChatModelPeer
from tests.peers.hubspot import HubSpotPeer
from tests.processes import worker_process
from workflows.agent_run import AgentRunWorkflow, workflow_id

pytest_plugins = ["tests.peers.hubspot", "tests.peers.chat_model"]
pytestmark = pytest.mark.one_database


async def test_a_worker_killed_mid_step_never_repeats_an_answered_model_call(
    sessions: SessionFactory,
    settings: Settings,
    hubspot_peer: HubSpotPeer,
    chat_model_peer: ChatModelPeer,
    temporal_env: WorkflowEnvironment,
    tmp_path: Path,
) -> None:
    peered = settings.model_copy(update={"connector_allow_private_urls": True})
    admin = await member(sessions, peered)
    connection_id = await hubspot_connection(sessions, peered, admin.tenant_id)
    await secret_store_from_settings(peered).put(
        model_provider_path(admin.tenant_id),
        {"base_url": chat_model_peer.url, "model": "m", "api_key": chat_model_peer.api_key},
    )
    contact = hubspot_peer.seed("contacts", {"email": "ada@acme.io", "firstname": "Ada"})
    draft = {"contact_id": contact["id"], "subject": "Hi", "body": "Hello."}
    chat_model_peer.reply_tool_calls(("crm__get_contact", {"contact_id": contact["id"]}))
    chat_model_peer.reply_slow(60)  # the second step: the worker dies while it waits
    chat_model_peer.reply_text("never seen")
    chat_model_peer.reply_text(
        json.dumps({"output": draft, "confidence": 0.9, "rationale": "From the CRM."})
    )
    address = temporal_env.client.service_client.config.target_host
    env = {
        "BIZ_CONNECTOR_ALLOW_PRIVATE_URLS": "true",
        "BIZ_CONNECTOR_VENDOR_ORIGINS": json.dumps({API_BASE: hubspot_peer.url}),
    }
    worker = worker_process(peered, address, tmp_path / "worker-1.log", env)
    try:
        run_id = uuid.uuid4()
        handle = await temporal_env.client.start_workflow(
            AgentRunWorkflow.run,
            AgentRunStart(
                run_id=run_id,
                tenant_id=admin.tenant_id,
                agent_id="email-draft",
                started_by=admin.user_id,
                created_at=datetime.now(UTC),
                input={"connection_id": str(connection_id), "contact_id": contact["id"]}
                | {"purpose": "hello"},
                config=AgentRunConfig(
                    allowed_tools=["crm.get_contact"], model=ModelChoice(model="m")
                ),
            ),
            id=workflow_id(run_id),
            task_queue=peered.temporal_task_queue,
        )
        for _ in range(1200):  # until the second step's model call is under way
            if len(chat_model_peer.requests) >= 2:
                break
            await asyncio.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        worker = worker_process(peered, address, tmp_path / "worker-2.log", env)
        async with asyncio.timeout(60):
            done = await handle.result()
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
    assert done.status is AgentRunStatus.COMPLETED, done.error
    assert done.result is not None
    assert done.result.output.model_dump()["subject"] == "Hi"
    first, killed, again = chat_model_peer.requests
    # The answered first step was not asked again; the killed one was, with the same messages.
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert again["messages"] == killed["messages"]
    assert chat_model_peer.failures == []
