"""Log lines as a collector reads them: JSON with the request, tenant, workflow and run ids."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity, workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from core import logging as biz_logging
from core import search
from core.settings import Settings
from tests.core.telemetry_workflows import LoggingWorkflow, probe


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    on_message = (
        workflow.logger.workflow_info_on_message,
        activity.logger.activity_info_on_message,
    )
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    workflow.logger.workflow_info_on_message, activity.logger.activity_info_on_message = on_message


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_off_a_terminal_carry_the_request_id() -> None:
    stream = io.StringIO()
    biz_logging.configure("INFO", stream=stream)
    token = biz_logging.request_id.set("req-42")
    tenant = biz_logging.tenant_id.set("7d1c0f7e-0000-4000-8000-000000000001")
    try:
        logging.getLogger("api.test").warning("refused %s", "twice")
    finally:
        biz_logging.tenant_id.reset(tenant)
        biz_logging.request_id.reset(token)
    try:
        raise ValueError("broken")
    except ValueError:
        logging.getLogger("api.test").exception("failed")

    first, second = _lines(stream)
    assert first.pop("time").endswith("+00:00")
    assert first == {
        "level": "WARNING",
        "logger": "api.test",
        "message": "refused twice",
        "request_id": "req-42",
        "tenant_id": "7d1c0f7e-0000-4000-8000-000000000001",
    }
    assert second["message"] == "failed"
    assert "request_id" not in second
    assert second["exception"].splitlines()[-1] == "ValueError: broken"


@pytest.mark.usefixtures("restore_logging")
def test_plain_lines_on_a_terminal() -> None:
    stream = Terminal()
    biz_logging.configure("INFO", stream=stream)
    logging.getLogger("core.test").info("hello")
    [line] = stream.getvalue().splitlines()
    assert line.endswith(" INFO core.test [-] hello")


@pytest.mark.usefixtures("restore_logging")
async def test_workflow_and_activity_lines_carry_their_ids(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    stream = io.StringIO()
    biz_logging.configure("INFO", stream=stream)
    tenant = str(uuid.uuid4())
    async with Worker(
        temporal_env.client,
        task_queue=task_queue,
        workflows=[LoggingWorkflow],
        activities=[probe],
        interceptors=[biz_logging.TenantLogContext()],
    ):
        handle = await temporal_env.client.start_workflow(
            LoggingWorkflow.run,
            "acme",
            id=f"logging-{uuid.uuid4()}",
            task_queue=task_queue,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(search.TENANT_ID, tenant)]
            ),
        )
        assert await handle.result() == "acme"

    lines = {line["message"]: line for line in _lines(stream)}
    in_workflow = lines["workflow for acme"]
    assert in_workflow["logger"] == "temporalio.workflow"
    assert {k: in_workflow[k] for k in ("workflow_id", "run_id", "workflow_type", "tenant_id")} == {
        "workflow_id": handle.id,
        "run_id": handle.result_run_id,
        "workflow_type": "LoggingWorkflow",
        "tenant_id": tenant,
    }
    in_activity = lines["probe activity for acme"]
    assert in_activity["logger"] == "temporalio.activity"
    assert {k: in_activity[k] for k in ("workflow_id", "run_id", "activity_type", "tenant_id")} == {
        "workflow_id": handle.id,
        "run_id": handle.result_run_id,
        "activity_type": "telemetry_probe",
        "tenant_id": tenant,
    }


@pytest.mark.usefixtures("restore_logging")
async def test_the_access_line_names_the_route_never_the_url(
    settings: Settings, engine: AsyncEngine
) -> None:
    stream = io.StringIO()
    biz_logging.configure("INFO", "json", stream=stream)
    lines = settings.model_copy(update={"api_access_log": True})
    for chosen in (settings, lines):
        app = create_app(chosen, None, engine)  # type: ignore[arg-type]  # no workflow is called
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as http:
            answer = await http.get(
                "/api/v1/connections/oauth/callback", params={"state": "s", "code": "secret"}
            )
        assert answer.status_code == 400
    [line] = [line for line in _lines(stream) if line["logger"] == "api.access"]
    assert line["message"].startswith("GET /api/v1/connections/oauth/callback 400 ")
    assert line["request_id"] == answer.headers["x-request-id"]
    logged = [line for line in _lines(stream) if line["logger"] != "httpx"]  # this test's client
    assert "secret" not in json.dumps(logged)
