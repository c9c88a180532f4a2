"""Crashes: onboardings in flight survive SIGKILLed workers and a killed Temporal server.

N tenants (30 on PostgreSQL; with ``--slow`` 120, on SQLite too) go through the wizard, submit
and are approved over HTTP while real ``bizosaas worker`` processes (two, on the test's own
task queue, database and codec keys) are killed with SIGKILL at random moments and started
again, and the test's own Temporal dev server is killed once and started again on its sqlite
file. The HTTP client acts as the frontend does: it retries a 503 / 504 with the same
``Idempotency-Key``.

At the end every onboarding has finished approved, and each tenant has exactly one activation,
one welcome e-mail (outbox row) and one audit row of each kind. The randomness is seeded
(``BIZ_CHAOS_SEED`` to repeat a run) and the seed is printed with the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.converter import DataConverter
from temporalio.service import RPCError

from api.app import create_app
from core.db import SessionFactory
from core.devserver import DevServerConfig, temporal_binary
from core.net import wait_for_port
from core.settings import Settings
from models.approval import Approval, ApprovalStatus
from models.audit import AuditEntry, chain_of
from models.email import OutboundEmail
from models.onboarding import OnboardingStatus
from models.tenant import Tenant, TenantStatus
from models.user import Role
from tests.api.flows import wizard
from tests.conftest import free_port
from tests.factories import Member, member
from workflows.onboarding import workflow_id

WORKERS = 2
RETRIED = {502, 503, 504}
# Every tenant's audit chain must hold these, once each (and no action twice).
ONCE_EACH = {"onboarding.submitted", "tenant.activated"}


@dataclass
class Figures:
    seed: int
    tenants: int
    worker_kills: int = 0
    worker_restarts: int = 0
    server_restarts: int = 0
    retried_requests: int = 0
    restarted_unreachable: int = 0  # workers that exited finding no Temporal at start
    driven: int = 0  # onboardings driven to the decision so far
    in_flight_at_server_kill: int = 0
    unexpected: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        return (
            f"crashes (seed {self.seed}): {self.tenants} tenants, {self.worker_kills} worker "
            f"kills (SIGKILL), {self.worker_restarts} worker restarts, {self.server_restarts} "
            f"Temporal server kill+restart (with {self.in_flight_at_server_kill} onboardings in "
            f"flight), {self.restarted_unreachable} workers restarted after "
            "finding no server at start, "
            f"{self.retried_requests} requests retried, "
            f"{time.monotonic() - self.started:.1f} s"
        )


def report(request: pytest.FixtureRequest, line: str) -> None:
    """Print a figure line on the terminal, past output capture, so it can be quoted."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}", flush=True)


# --- Processes this test starts and kills -------------------------------------------------


class DevServer:
    """The test's own Temporal dev server, persisted in a sqlite file so it can be restarted."""

    def __init__(self, workdir: Path) -> None:
        self.config = DevServerConfig(
            port=free_port(),
            ui_port=free_port(),
            db_filename=workdir / "temporal.db",
            log_level="error",
        )
        self.log = workdir / "temporal.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.config.ip}:{self.config.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.config.command(temporal_binary()), "--headless"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self.process
        wait_for_port(
            self.config.ip, self.config.port, timeout=30, alive=lambda: process.poll() is None
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class WorkerProcess:
    """One ``bizosaas worker`` subprocess; stderr kept for a failure's report."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "core.cli", "worker"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Stack:
    server: DevServer
    workers: list[WorkerProcess]
    client: Client
    api: httpx.AsyncClient
    settings: Settings


@pytest.fixture
def chaos_seed() -> int:
    return int(os.environ.get("BIZ_CHAOS_SEED") or random.SystemRandom().randrange(2**32))


@pytest.fixture
async def stack(
    settings: Settings,
    codec_spec: str,
    converter: DataConverter,
    engine: AsyncEngine,
    tmp_path: Path,
) -> AsyncIterator[Stack]:
    server = DevServer(tmp_path)
    server.start()
    settings = settings.model_copy(
        update={
            "temporal_address": server.address,
            # A killed worker cannot answer an update: the frontend gets 504 and retries.
            "workflow_call_timeout": timedelta(seconds=5),
        }
    )
    assert settings.jwt_secret is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIZ_")} | {
        "BIZ_DATA_DIR": str(settings.data_dir),
        "BIZ_DATABASE_URL": settings.database_url,
        "BIZ_CODEC_KEYS": codec_spec,
        "BIZ_JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "BIZ_TEMPORAL_ADDRESS": server.address,
        "BIZ_TEMPORAL_TASK_QUEUE": settings.temporal_task_queue,
        "BIZ_WORKER_METRICS_PORT": "0",
        "BIZ_LOG_LEVEL": "WARNING",
    }
    workers = [WorkerProcess(env, tmp_path / f"worker-{n}.log") for n in range(WORKERS)]
    for worker in workers:
        worker.start()
    client = await Client.connect(server.address, data_converter=converter)
    app = create_app(settings, client, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as api:
            yield Stack(server, workers, client, api, settings)
    finally:
        for worker in workers:
            worker.kill()
        server.kill()


# --- The frontend, retrying as it should --------------------------------------------------


async def call(
    stack: Stack,
    figures: Figures,
    method: str,
    url: str,
    who: Member,
    *,
    key: str,
    json: Any = None,
    deadline: float,
) -> httpx.Response:
    """Send a request, retrying 502/503/504 with the same ``Idempotency-Key`` until it is
    answered; any other 5xx is noted (and retried, so the durability checks still run)."""
    headers = who.headers | {"Idempotency-Key": key}
    while True:
        response = await stack.api.request(method, url, json=json, headers=headers)
        if response.status_code < 500:
            return response
        if response.status_code not in RETRIED:
            figures.unexpected.append(f"{method} {url}: {response.status_code} {response.text}")
        assert time.monotonic() < deadline, f"{method} {url} never answered: {response.text}"
        figures.retried_requests += 1
        await asyncio.sleep(0.3)


async def onboard(
    stack: Stack,
    figures: Figures,
    sessions: SessionFactory,
    applicant: Member,
    approver: Member,
    delay: float,
    deadline: float,
) -> None:
    """One tenant's onboarding through HTTP, to approval."""
    await asyncio.sleep(delay)
    tag = applicant.tenant_id.hex[:8]
    for step, data in wizard(f"Crashproof Ventures {tag}").items():
        saved = await call(
            stack, figures, "PUT", f"/api/v1/onboarding/steps/{step}", applicant,
            key=f"{tag}-{step}", json=data, deadline=deadline,
        )  # fmt: skip
        assert saved.status_code == 200, saved.text
    submitted = await call(
        stack, figures, "POST", "/api/v1/onboarding/submit", applicant,
        key=f"{tag}-submit", deadline=deadline,
    )  # fmt: skip
    assert submitted.status_code == 202, submitted.text
    approval_id = await _pending_approval(sessions, applicant.tenant_id, deadline)
    decided = await call(
        stack, figures, "POST", f"/api/v1/approvals/{approval_id}/decision", approver,
        key=f"{tag}-decide", json={"decision": "approve"}, deadline=deadline,
    )  # fmt: skip
    assert decided.status_code == 200, decided.text
    figures.driven += 1


async def _pending_approval(
    sessions: SessionFactory, tenant_id: uuid.UUID, deadline: float
) -> uuid.UUID:
    """The tenant's pending approval, once the approval workflow has written its row."""
    while time.monotonic() < deadline:
        async with sessions() as session:
            found = await session.scalar(
                select(Approval.id).where(
                    Approval.tenant_id == tenant_id, Approval.status == ApprovalStatus.PENDING
                )
            )
        if found is not None:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"no pending approval for tenant {tenant_id}")


async def chaos(
    stack: Stack, figures: Figures, rng: random.Random, kills: int, done: asyncio.Event
) -> None:
    """SIGKILL a random worker at random moments, restart it after a random pause; kill the
    dev server once, in the middle, and start it again on its sqlite file. Meanwhile act as
    the process supervisor does (``bizosaas dev``, or a container platform): start again a
    worker that exited by itself."""
    server_after = rng.randrange(1, kills)
    killed = 0
    next_kill = time.monotonic() + rng.uniform(0.5, 2.0)
    while not done.is_set():
        tend(stack, figures)
        if killed < kills and time.monotonic() >= next_kill:
            worker = rng.choice(stack.workers)
            worker.kill()
            figures.worker_kills += 1
            await asyncio.sleep(rng.uniform(0.0, 1.0))
            if killed == server_after:
                figures.in_flight_at_server_kill = figures.tenants - figures.driven
                stack.server.kill()
                await asyncio.sleep(rng.uniform(0.5, 1.5))
                await asyncio.to_thread(stack.server.start)
                figures.server_restarts += 1
            worker.start()
            figures.worker_restarts += 1
            killed += 1
            next_kill = time.monotonic() + rng.uniform(0.5, 2.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.2)
    tend(stack, figures)


def tend(stack: Stack, figures: Figures) -> None:
    """Restart workers that exited by themselves. One that could not reach Temporal at its
    start (``bizosaas worker`` exits then, by design) is expected while the server restarts;
    any other exit is noted as unexpected."""
    for worker in stack.workers:
        if worker.alive:
            continue
        last = (worker.log.read_text(errors="replace").strip().splitlines() or [""])[-1]
        if "cannot reach Temporal" in last:
            figures.restarted_unreachable += 1
        else:
            figures.unexpected.append(
                f"{worker.log.name} exited by itself ({worker.exit_code()}): {last[:500]}"
            )
        worker.start()


async def _finished(client: Client, tenant_id: uuid.UUID, deadline: float) -> Any:
    """The onboarding's result, asked again while the server is still coming back."""
    handle = client.get_workflow_handle(workflow_id(tenant_id))
    while True:
        try:
            return await asyncio.wait_for(handle.result(), max(1.0, deadline - time.monotonic()))
        except RPCError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.3)


# --- The test -----------------------------------------------------------------------------


# PostgreSQL is what production runs on; SQLite (the embedded default, shared here by three
# processes) too with --slow.
@pytest.mark.parametrize(
    "database_url", ["postgresql", pytest.param("sqlite", marks=pytest.mark.slow)], indirect=True
)
async def test_onboardings_survive_killed_workers_and_server(
    stack: Stack,
    sessions: SessionFactory,
    chaos_seed: int,
    request: pytest.FixtureRequest,
) -> None:
    slow = bool(request.config.getoption("--slow"))
    tenants, kills = (120, 10) if slow else (30, 4)
    rng = random.Random(chaos_seed)
    figures = Figures(seed=chaos_seed, tenants=tenants)
    deadline = time.monotonic() + (600 if slow else 150)
    settings = stack.settings
    approver = await member(sessions, settings, Role.SUPER_ADMIN, mfa_enabled=True)
    applicants = [
        await member(sessions, settings, status=TenantStatus.ONBOARDING) for _ in range(tenants)
    ]

    done = asyncio.Event()
    chaos_task = asyncio.create_task(chaos(stack, figures, rng, kills, done))
    try:
        drivers = [
            onboard(stack, figures, sessions, applicant, approver, rng.uniform(0, 3), deadline)
            for applicant in applicants
        ]
        await asyncio.gather(*drivers)
        results = await asyncio.gather(
            *(_finished(stack.client, a.tenant_id, deadline) for a in applicants)
        )
    finally:
        done.set()
        await chaos_task
        # Shown with a failure (captured output): what the workers and the server said last.
        for log in [w.log for w in stack.workers] + [stack.server.log]:
            lines = log.read_text(errors="replace").splitlines()
            print(f"--- {log.name}", *[line[:500] for line in lines if "ERROR" in line or
                  "WARNING" not in line][-40:], sep="\n")  # fmt: skip
    report(request, figures.line())

    assert results == [OnboardingStatus.APPROVED] * tenants
    assert figures.worker_kills >= 3, "the onboardings finished before the chaos was done"
    assert figures.server_restarts == 1
    assert figures.in_flight_at_server_kill > 0, "the server was killed after the work was done"
    async with sessions() as session:
        approvals = list(
            await session.scalars(
                select(Approval.workflow_id).where(
                    Approval.tenant_id.in_([a.tenant_id for a in applicants])
                )
            )
        )
    ids = [workflow_id(a.tenant_id) for a in applicants] + approvals
    for run in ids:
        described = await stack.client.get_workflow_handle(run).describe()
        assert described.status == WorkflowExecutionStatus.COMPLETED, run
    await _exactly_once(sessions, [a.tenant_id for a in applicants])
    assert not figures.unexpected, "\n".join(figures.unexpected)


async def _exactly_once(sessions: SessionFactory, tenant_ids: list[uuid.UUID]) -> None:
    """Per tenant: active, one approved approval, one welcome e-mail, one audit row of each
    kind."""
    problems = []
    async with sessions() as session:
        for tenant_id in tenant_ids:
            tenant = await session.get(Tenant, tenant_id)
            assert tenant is not None
            approvals = list(
                await session.scalars(
                    select(Approval.status).where(Approval.tenant_id == tenant_id)
                )
            )
            welcomes = await session.scalar(
                select(func.count())
                .select_from(OutboundEmail)
                .where(
                    OutboundEmail.tenant_id == tenant_id,
                    OutboundEmail.subject.startswith("Welcome"),
                )
            )
            actions = Counter(
                await session.scalars(
                    select(AuditEntry.action).where(AuditEntry.chain == chain_of(tenant_id))
                )
            )
            twice = {action: n for action, n in actions.items() if n != 1}
            if tenant.status is not TenantStatus.ACTIVE:
                problems.append(f"{tenant_id}: tenant {tenant.status.value}")
            if approvals != [ApprovalStatus.APPROVED]:
                problems.append(f"{tenant_id}: approvals {approvals}")
            if welcomes != 1:
                problems.append(f"{tenant_id}: {welcomes} welcome e-mails")
            if twice or not set(actions) >= ONCE_EACH:
                problems.append(f"{tenant_id}: audit rows {dict(actions)}")
    assert not problems, "\n".join(problems)
