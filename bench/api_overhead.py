"""What the HTTP API adds to each process's workflow calls, one call at a time (issue 16, P2).

``python -m bench.api_overhead [runs] [--profile DIR]`` (default 200 of each call; ``DIR``: py-spy
of the API per call, whose sampling costs CPU: take figures from a run without it).

One run starts ``bizosaas dev`` (``make run``: the Temporal dev server, then the API under uvicorn
and the worker, each its own process, on the embedded defaults) in a scratch directory, as a new
user runs it. For each process the API drives, the same call goes to the same workflows through the
API (aiohttp over loopback, with the frontend's bearer token and ``Idempotency-Key``) and through a
raw Temporal client in this process with the API's data converter, the two taking turns call by
call so that a burst of other work falls on both:

- **onboarding**: the wizard's state (``GET /onboarding`` against the ``state`` query) and a
  step (``PUT /onboarding/steps/company`` against the ``save_step`` update);
- **tasks**: create (``POST /projects/{id}/tasks`` against update-with-start of the same
  ``TaskStart``), read (``GET /tasks/{id}`` against the ``state`` query) and edit (``PATCH
  /tasks/{id}`` against the ``edit`` update);
- **publishing**: the same three for content items (``POST /content``, ``GET`` and ``PATCH
  /content/{id}``), on a connected WordPress connection of the tenant (no call reaches
  WordPress: drafts are kept in the workflow);
- **approvals**: a review decided (``POST /approvals/{id}/decision`` by a tenant admin signed in
  with a second factor, against the ``decide`` update): content items submitted to a tenant that
  requires review, made before the clock, one pending approval for each call, rejected so that
  nothing is published.

Printed: p50 and p99 of each side, the API's overhead, and whether it is within P2's targets
(p50 at most 3 ms and p99 at most 5 ms above the raw client). The API's figure includes its
HTTP handling, authentication (the session and role read), the tenancy check (the item's
projection row) and what it renders (a content item's sanitised HTML); the client's own cost,
about 1 ms of CPU per request in aiohttp, is in it too.

Not here: billing's calls need Stripe (``bench.idle_billing`` covers its webhooks), agents
need a model, and connections and sync need vendors (``bench.sync``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from temporalio.client import Client, WithStartWorkflowOperation

from activities.tasks import task_policy
from api.routers.content import PolicyView
from api.routers.onboarding import start_onboarding
from bench.onboarding_load import gather_limited
from bench.profiling import Recording, summary
from bench.stack import Stack, running
from bench.timing import alternate, percentile
from core.db import SessionFactory, create_engine, session_factory
from core.search import start_options
from core.settings import Settings
from models.approval import Decision, Verdict
from models.content import ContentFields, ContentItemState, ContentStatus, EditCommand, PublishStart
from models.onboarding import OnboardingStep, StepData
from models.tasks import Project, TaskEdit, TaskFields, TaskStart, TaskState, TaskStatus
from models.tenant import TenantStatus
from models.user import Role
from tests.factories import Member, cms_connection, member
from tests.polling import eventually
from workflows import approval, publish, task
from workflows.approval import ApprovalWorkflow
from workflows.onboarding import OnboardingWorkflow
from workflows.onboarding import workflow_id as onboarding_id
from workflows.publish import PublishWorkflow
from workflows.task import TaskWorkflow

P50_TARGET, P99_TARGET = 0.003, 0.005  # P2: seconds above the raw client
COMPANY = {"legal_name": "Overhead Measuring GmbH", "industry": "Software", "country": "DE"}
Call = Callable[[], Awaitable[object]]


@dataclass
class Measured:
    """One call measured both ways."""

    process: str
    name: str
    raw: list[float] = field(default_factory=list)
    api: list[float] = field(default_factory=list)
    api_cpu: float = 0.0  # the API process's CPU seconds per request

    def line(self) -> str:
        r50, a50 = statistics.median(self.raw), statistics.median(self.api)
        r99, a99 = percentile(self.raw, 99), percentile(self.api, 99)
        within = a50 - r50 <= P50_TARGET and a99 - r99 <= P99_TARGET
        return (
            f"{self.process:<10} {self.name:<44} raw {r50 * 1e3:5.1f} / {r99 * 1e3:5.1f} ms | "
            f"API {a50 * 1e3:5.1f} / {a99 * 1e3:5.1f} ms | overhead {(a50 - r50) * 1e3:+5.1f} / "
            f"{(a99 - r99) * 1e3:+5.1f} ms | API CPU {self.api_cpu * 1e3:.1f} ms | "
            f"{'within' if within else 'OVER'}"
        )


class Frontend:
    """The API as the frontend calls it: one member's bearer token, a new ``Idempotency-Key``
    on every change."""

    def __init__(self, http: aiohttp.ClientSession, who: Member) -> None:
        self.http, self.who = http, who

    async def __call__(self, method: str, path: str, body: Any = None, expected: int = 200) -> Any:
        headers = self.who.headers
        if method != "GET":
            headers = headers | {"Idempotency-Key": uuid.uuid4().hex}
        async with self.http.request(method, path, json=body, headers=headers) as response:
            answer = await response.json(content_type=None)
        if response.status != expected:
            raise RuntimeError(f"{method} {path}: {response.status} {answer}")
        return answer

    async def status(self, method: str, path: str) -> int:
        """Only the status of a request (a read that may not find its row yet)."""
        async with self.http.request(method, path, headers=self.who.headers) as response:
            await response.read()
            return response.status


@dataclass
class Bench:
    """What every process's calls need: the stack's settings and database, the raw client and
    the frontend of one active tenant's admin."""

    settings: Settings
    sessions: SessionFactory
    client: Client
    http: aiohttp.ClientSession
    admin: Member
    runs: int
    profile: Callable[[str], contextlib.AbstractContextManager[object]]
    api_cpu: Callable[[], float]  # CPU seconds the API process has used so far

    @property
    def api(self) -> Frontend:
        return Frontend(self.http, self.admin)

    async def measure(self, process: str, name: str, raw: Call, api: Call) -> Measured:
        measured = Measured(process, name)
        with self.profile(f"{process}-{name.split(':')[0]}"):
            before = self.api_cpu()
            measured.raw, measured.api = await alternate(raw, api, self.runs)
            measured.api_cpu = (self.api_cpu() - before) / (self.runs + 1)  # and the warm-up
        return measured


async def onboarding(bench: Bench) -> list[Measured]:
    """The wizard of a tenant still onboarding: its state, and a step saved again."""
    applicant = await member(bench.sessions, bench.settings, status=TenantStatus.ONBOARDING)
    await start_onboarding(bench.client, bench.settings, applicant.tenant_id)
    handle = bench.client.get_workflow_handle_for(
        OnboardingWorkflow.run, onboarding_id(applicant.tenant_id)
    )
    api = Frontend(bench.http, applicant)
    step = StepData(step=OnboardingStep.COMPANY, data=COMPANY)
    return [
        await bench.measure(
            "onboarding",
            "state: GET /onboarding",
            lambda: handle.query(OnboardingWorkflow.state),
            lambda: api("GET", "/api/v1/onboarding"),
        ),
        await bench.measure(
            "onboarding",
            "step: PUT /onboarding/steps/company",
            lambda: handle.execute_update(OnboardingWorkflow.save_step, step),
            lambda: api("PUT", "/api/v1/onboarding/steps/company", COMPANY),
        ),
    ]


async def tasks(bench: Bench) -> list[Measured]:
    """Tasks of one project: created, read and edited."""
    tenant, user = bench.admin.tenant_id, bench.admin.user_id
    project = await bench.api("POST", "/api/v1/projects", {"name": "Overhead"}, 201)
    async with bench.sessions() as session:
        row = await session.get(Project, uuid.UUID(project["project_id"]))
        assert row is not None
        policy = await task_policy(session, bench.settings, row)
    path = f"/api/v1/projects/{row.id}/tasks"

    async def raw_create() -> str:
        task_id = uuid.uuid4()
        state = TaskState(
            task_id=task_id,
            tenant_id=tenant,
            project_id=row.id,
            created_by=user,
            created_at=datetime.now(UTC),
            fields=TaskFields(title="Measure the API"),
        )
        options = start_options(
            bench.settings,
            workflow_id=task.workflow_id(task_id),
            tenant_id=tenant,
            process=task.PROCESS,
            status=TaskStatus.TODO.value,
            summary=f"Task {task_id}",
        )
        start = WithStartWorkflowOperation(
            TaskWorkflow.run, TaskStart(state=state, policy=policy), **options
        )
        await bench.client.execute_update_with_start_workflow(
            TaskWorkflow.listed, start_workflow_operation=start
        )
        return task.workflow_id(task_id)

    one = await bench.api("POST", path, {"title": "Measure the API"}, 201)
    handle = bench.client.get_workflow_handle(task.workflow_id(uuid.UUID(one["task_id"])))
    item = f"/api/v1/tasks/{one['task_id']}"
    edit = TaskEdit(by=user, title="Measure the API again")
    return [
        await bench.measure(
            "tasks",
            "create: POST /projects/{id}/tasks",
            raw_create,
            lambda: bench.api("POST", path, {"title": "Measure the API"}, 201),
        ),
        await bench.measure(
            "tasks",
            "read: GET /tasks/{id}",
            lambda: handle.query(TaskWorkflow.state),
            lambda: bench.api("GET", item),
        ),
        await bench.measure(
            "tasks",
            "edit: PATCH /tasks/{id}",
            lambda: handle.execute_update(TaskWorkflow.edit, edit),
            lambda: bench.api("PATCH", item, {"title": "Measure the API again"}),
        ),
    ]


async def publishing(bench: Bench) -> list[Measured]:
    """Content items of a connected WordPress site: created, read and edited as drafts."""
    tenant, user = bench.admin.tenant_id, bench.admin.user_id
    connection = await cms_connection(bench.sessions, tenant, "https://blog.example.com")
    body = {"connection_id": str(connection), "title": "Overhead", "body": "<p>Measured.</p>"}

    async def raw_create() -> None:
        content_id = uuid.uuid4()
        start = PublishStart(
            item=ContentItemState(
                content_id=content_id,
                tenant_id=tenant,
                connection_id=connection,
                created_by=user,
                created_at=datetime.now(UTC),
                fields=ContentFields(title="Overhead", body="<p>Measured.</p>"),
            ),
            review=PolicyView().review_policy(),
            reconnect_wait=bench.settings.content_reconnect_wait,
        )
        options = start_options(
            bench.settings,
            workflow_id=publish.workflow_id(content_id),
            tenant_id=tenant,
            process=publish.PROCESS,
            status=ContentStatus.DRAFT.value,
            summary=f"Content item {content_id}",
        )
        operation = WithStartWorkflowOperation(PublishWorkflow.run, start, **options)
        await bench.client.execute_update_with_start_workflow(
            PublishWorkflow.listed, start_workflow_operation=operation
        )

    one = await bench.api("POST", "/api/v1/content", body, 201)
    handle = bench.client.get_workflow_handle(publish.workflow_id(uuid.UUID(one["content_id"])))
    item = f"/api/v1/content/{one['content_id']}"
    edit = EditCommand(changes={"title": "Overhead again"}, by=user)
    return [
        await bench.measure(
            "publishing",
            "create: POST /content",
            raw_create,
            lambda: bench.api("POST", "/api/v1/content", body, 201),
        ),
        await bench.measure(
            "publishing",
            "read: GET /content/{id}",
            lambda: handle.query(PublishWorkflow.state),
            lambda: bench.api("GET", item),
        ),
        await bench.measure(
            "publishing",
            "edit: PATCH /content/{id}",
            lambda: handle.execute_update(PublishWorkflow.edit, edit),
            lambda: bench.api("PATCH", item, {"title": "Overhead again"}),
        ),
    ]


async def approvals(bench: Bench) -> list[Measured]:
    """Content reviews decided by the tenant's admin (two-factor, as deciding requires): each
    call decides another pending approval, rejecting it so that nothing is published."""
    admin = await member(bench.sessions, bench.settings, mfa_enabled=True)
    api = Frontend(bench.http, admin)
    await api("PUT", "/api/v1/content/settings", {"review_required": True})
    connection = await cms_connection(bench.sessions, admin.tenant_id, "https://blog.example.com")
    body = {"connection_id": str(connection), "title": "Reviewed", "body": "<p>Measured.</p>"}

    async def pending() -> uuid.UUID:
        content_id = (await api("POST", "/api/v1/content", body, 201))["content_id"]
        await api("POST", f"/api/v1/content/{content_id}/submit", None, 202)
        handle = bench.client.get_workflow_handle(publish.workflow_id(uuid.UUID(content_id)))
        state: ContentItemState = await eventually(
            lambda: handle.query(PublishWorkflow.state), lambda s: s.review is not None
        )
        assert state.review is not None
        approval_id = state.review.approval_id
        await eventually(  # its queue row, which the API reads first
            lambda: api.status("GET", f"/api/v1/approvals/{approval_id}"), lambda s: s == 200
        )
        return approval_id

    count = bench.runs + 1  # and the warm-up
    raw_ids, api_ids = [iter(await gather_limited(10, [pending] * count)) for _ in ("raw", "api")]
    verdict = {"decision": "reject", "reason": "Measured"}
    decision = Decision(
        decision=Verdict.REJECT,
        reason="Measured",
        decided_by=admin.user_id,
        decider_role=Role.TENANT_ADMIN,
    )

    async def raw_decide() -> object:
        handle = bench.client.get_workflow_handle(approval.workflow_id(next(raw_ids)))
        return await handle.execute_update(ApprovalWorkflow.decide, decision)

    async def api_decide() -> object:
        return await api("POST", f"/api/v1/approvals/{next(api_ids)}/decision", verdict)

    return [
        await bench.measure(
            "approvals", "decide: POST /approvals/{id}/decision", raw_decide, api_decide
        )
    ]


async def measure(stack: Stack, runs: int, profile: Path | None) -> list[Measured]:
    def recorded(call: str) -> contextlib.AbstractContextManager[object]:
        """py-spy of the API while ``call`` is measured, when ``profile`` is given."""
        if profile is None:
            return contextlib.nullcontext()
        return Recording(stack.pids["api"], profile / f"{call}.txt")

    settings = stack.settings
    engine = create_engine(settings.database_url)
    try:
        sessions = session_factory(engine)
        async with aiohttp.ClientSession(stack.api_url) as http:
            bench = Bench(
                settings,
                sessions,
                await stack.raw_client(),
                http,
                await member(sessions, settings),
                runs,
                recorded,
                lambda: stack.cpu()["api"],
            )
            measured = []
            for process in (onboarding, tasks, publishing, approvals):
                measured += await process(bench)
            return measured
    finally:
        await engine.dispose()


async def main(runs: int = 200, profile: Path | None = None) -> None:
    async with running("bizosaas-overhead-") as stack:
        measured = await measure(stack, runs, profile)
    print(
        f"API overhead over the raw Temporal client, one call at a time, {runs} of each "
        "(p50 / p99; P2: at most +3 / +5 ms)"
    )
    for line in measured:
        print(line.line())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.api_overhead")
    parser.add_argument("runs", nargs="?", type=int, default=200)
    parser.add_argument("--profile", type=Path, help="record py-spy of the API here, per call")
    arguments = parser.parse_args()
    if arguments.profile is not None:
        arguments.profile.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(arguments.runs, arguments.profile))
    if arguments.profile is not None:
        for path in sorted(arguments.profile.glob("*.txt")):
            print(summary(path, 25))
