"""Worker processes as they run in production: real ``bizosaas worker`` subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from core import migrate
from tests.conftest import _create_postgres_database, _drop_postgres_database, free_port
from workflows.audit_verification import AuditVerificationWorkflow

BIZOSAAS = [sys.executable, "-m", "core.cli"]
WORKFLOWS = 24


class WorkerProcess:
    """One ``bizosaas worker`` with its own metrics port; stderr (not a terminal) holds JSON."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.metrics_port = free_port()
        self.env, self.log = env, log
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(
                [*BIZOSAAS, "worker"],
                env=env | {"BIZ_WORKER_METRICS_PORT": str(self.metrics_port)},
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    @property
    def identity_prefix(self) -> str:
        return f"{self.process.pid}@"

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics").text

    def log_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def wait_until_polling(self) -> None:
        deadline = time.monotonic() + 30
        while not any("polling" in str(line["message"]) for line in self.log_lines()):
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)


def _env(
    temporal_env: WorkflowEnvironment, codec_spec: str, task_queue: str, tmp_path: Path, url: str
) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BIZ_")} | {
        "BIZ_DATA_DIR": str(tmp_path / ".data"),
        "BIZ_DATABASE_URL": url,
        "BIZ_CODEC_KEYS": codec_spec,
        "BIZ_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "BIZ_TEMPORAL_TASK_QUEUE": task_queue,
    }


def _stop(started: list[WorkerProcess]) -> None:
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


@pytest.fixture
async def workers(
    temporal_env: WorkflowEnvironment, codec_spec: str, task_queue: str, tmp_path: Path
) -> AsyncIterator[list[WorkerProcess]]:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'bizosaas.db'}"
    await migrate.upgrade(database_url)
    env = _env(temporal_env, codec_spec, task_queue, tmp_path, database_url)
    started = [WorkerProcess(env, tmp_path / f"worker-{n}.log") for n in range(2)]
    yield started
    _stop(started)


async def _identities(client: Client, workflow_id: str) -> set[str]:
    """Which workers completed the workflow's tasks and ran its activities."""
    found = set()
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            found.add(event.workflow_task_completed_event_attributes.identity)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            found.add(event.activity_task_started_event_attributes.identity)
    return found


async def test_two_workers_on_one_queue_both_take_work(
    workers: list[WorkerProcess], temporal_client: Client, task_queue: str
) -> None:
    for worker in workers:
        await asyncio.to_thread(worker.wait_until_polling)

    ids = [f"audit-verify:{uuid.uuid4()}" for _ in range(WORKFLOWS)]
    handles = await asyncio.gather(
        *(
            temporal_client.start_workflow(
                AuditVerificationWorkflow.run, uuid.uuid4(), id=workflow_id, task_queue=task_queue
            )
            for workflow_id in ids
        )
    )
    reports = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), timeout=60)
    assert all(report.intact for report in reports)

    identities = set().union(*[await _identities(temporal_client, i) for i in ids])
    by_worker = {
        worker.identity_prefix: {i for i in identities if i.startswith(worker.identity_prefix)}
        for worker in workers
    }
    assert all(by_worker.values()), f"a worker took no task: {identities}"
    assert identities == set().union(*by_worker.values())

    # Each worker's own endpoint counts the workflows it completed and the activities it ran.
    completed = 0
    for worker in workers:
        text = await asyncio.to_thread(worker.metrics)
        [line] = [
            line
            for line in text.splitlines()
            if line.startswith("temporal_workflow_completed_total{")
            and 'workflow_type="AuditVerificationWorkflow"' in line
        ]
        completed += int(float(line.rsplit(" ", 1)[1]))
        assert 'activity_type="verify_audit_chain"' in text
    assert completed == WORKFLOWS

    # SIGTERM: both drain and exit cleanly, and say so in JSON lines.
    for worker in workers:
        worker.process.send_signal(signal.SIGTERM)
    for worker in workers:
        assert await asyncio.to_thread(worker.process.wait, 30) == 0
        messages = [str(line["message"]) for line in worker.log_lines()]
        assert any(m.startswith("worker stopping; in-flight activities get 30 s") for m in messages)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    url = await _create_postgres_database()
    await migrate.upgrade(url)
    yield url
    await _drop_postgres_database(url)


async def test_sigterm_lets_the_running_activity_finish(
    temporal_env: WorkflowEnvironment,
    codec_spec: str,
    task_queue: str,
    tmp_path: Path,
    postgres_url: str,
) -> None:
    worker = WorkerProcess(
        _env(temporal_env, codec_spec, task_queue, tmp_path, postgres_url), tmp_path / "w.log"
    )
    try:
        await asyncio.to_thread(worker.wait_until_polling)
        # Hold the audit table: the verification activity blocks on it while the worker stops.
        blocker = await asyncpg.connect(
            make_url(postgres_url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        lock = blocker.transaction()
        await lock.start()
        await blocker.execute("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE")
        handle = await temporal_env.client.start_workflow(
            AuditVerificationWorkflow.run,
            uuid.uuid4(),
            id=f"audit-verify:{uuid.uuid4()}",
            task_queue=task_queue,
        )
        for _ in range(200):
            pending = (await handle.describe()).raw_description.pending_activities
            if pending and pending[0].state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the activity never started")

        worker.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(1.5)
        assert worker.process.poll() is None, "the worker left before its activity finished"
        await lock.rollback()
        await blocker.close()

        assert await asyncio.to_thread(worker.process.wait, 30) == 0
        events = [event async for event in handle.fetch_history_events()]
        activity_events = [
            EventType.Name(event.event_type)
            for event in events
            if "ACTIVITY" in EventType.Name(event.event_type)
        ]
        # Finished by the stopping worker: not cancelled, not timed out, not retried.
        assert activity_events == [
            "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED",
            "EVENT_TYPE_ACTIVITY_TASK_STARTED",
            "EVENT_TYPE_ACTIVITY_TASK_COMPLETED",
        ]
        [started] = [
            e for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        ]
        assert started.activity_task_started_event_attributes.attempt == 1
        assert started.activity_task_started_event_attributes.identity.startswith(
            worker.identity_prefix
        )

        # The next worker to come up finishes the workflow.
        successor = WorkerProcess(worker.env, tmp_path / "w2.log")
        try:
            report = await asyncio.wait_for(handle.result(), timeout=30)
        finally:
            _stop([successor])
        assert report.intact
    finally:
        _stop([worker])
