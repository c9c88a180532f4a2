"""TaskWorkflow on the time-skipping server: acceptance windows passing and escalation, and SLA
clocks in business hours across a weekend (warn, breach, pause, resume, priority change)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from core import search
from core.db import SessionFactory, transaction
from core.settings import Settings
from models.agents import AgentRunConfig, AgentRunStart, AgentRunState
from models.email import OutboundEmail
from models.tasks import (
    AcceptCommand,
    AssignCommand,
    Assignee,
    BusinessCalendar,
    Priority,
    PriorityChange,
    Project,
    SlaTarget,
    StatusChange,
    Task,
    TaskFields,
    TaskPolicy,
    TaskStart,
    TaskState,
    TaskStatus,
)
from models.user import Role
from tests.factories import Member, member
from workers import registry
from workers.main import build_worker
from workflows.task import TaskWorkflow, workflow_id

pytestmark = pytest.mark.one_database
Handle = WorkflowHandle[TaskWorkflow, TaskStatus]
BERLIN = ZoneInfo("Europe/Berlin")
CALENDAR = BusinessCalendar(time_zone="Europe/Berlin")  # Monday to Friday, 9:00 to 17:00


@pytest.fixture
async def client(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> AsyncIterator[Client]:
    async with build_worker(time_skipping_env.client, sessions, settings):
        yield time_skipping_env.client


async def _project(sessions: SessionFactory, admin: Member, *people: Member) -> uuid.UUID:
    project_id = uuid.uuid4()
    async with transaction(sessions) as session:
        session.add(
            Project(
                id=project_id,
                tenant_id=admin.tenant_id,
                name="Support",
                description="",
                members=[{"user_id": str(p.user_id), "skills": []} for p in people],
                sla={},
            )
        )
    return project_id


async def _start(
    client: Client,
    settings: Settings,
    admin: Member,
    project_id: uuid.UUID,
    now: datetime,
    policy: TaskPolicy,
    assignee: Member | None = None,
    agent_run: AgentRunStart | None = None,
    fields: TaskFields | None = None,
) -> Handle:
    task_id = uuid.uuid4()
    start = TaskStart(
        state=TaskState(
            task_id=task_id,
            tenant_id=admin.tenant_id,
            project_id=project_id,
            created_by=admin.user_id,
            created_at=now,
            fields=fields or TaskFields(title="Reply to the customer", priority=Priority.NORMAL),
        ),
        policy=policy,
        assignee=_assignee(assignee, agent_run),
        agent_run=agent_run,
    )
    return await client.start_workflow(
        TaskWorkflow.run, start, id=workflow_id(task_id), task_queue=settings.temporal_task_queue
    )


def _assignee(person: Member | None, run: AgentRunStart | None) -> Assignee | None:
    if run is not None:
        return Assignee(kind="agent", id=run.run_id, agent_id=run.agent_id)
    return None if person is None else Assignee(id=person.user_id)


async def _state(handle: Handle, check: object) -> TaskState:
    async with asyncio.timeout(20):
        while True:
            state = await handle.query(TaskWorkflow.state)
            if check(state):  # type: ignore[operator]
                return state
            await asyncio.sleep(0.05)


async def _mails(sessions: SessionFactory, tenant: Member, subject: str) -> list[str]:
    """Who of the tenant got e-mails whose subject starts with ``subject``."""
    async with sessions() as session:
        rows = await session.scalars(
            select(OutboundEmail.recipient).where(
                OutboundEmail.tenant_id == tenant.tenant_id,
                OutboundEmail.subject.startswith(subject),
            )
        )
        return sorted(rows)


async def test_unaccepted_assignments_move_on_then_escalate(
    client: Client,
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
) -> None:
    admin = await member(sessions, settings)
    people = [await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id) for _ in "abc"]
    project_id = await _project(sessions, admin, *people)
    now = await time_skipping_env.get_current_time()
    # SLA clocks a week long: twelve hours of windows never reach them, whatever the time of day.
    week = SlaTarget(response_minutes=5 * 8 * 60, resolution_minutes=10 * 8 * 60)
    policy = TaskPolicy(
        calendar=CALENDAR,
        sla={Priority.NORMAL: week},
        accept_within=timedelta(hours=4),
        max_attempts=3,
    )
    handle = await _start(client, settings, admin, project_id, now, policy)

    asked = []
    for person in people:
        state = await _state(
            handle, lambda s: s.assignee is not None and s.assignee.id not in asked
        )
        assert state.assignee is not None
        asked.append(state.assignee.id)
        assert state.assignee.id == person.user_id  # least busy, then in the project's order
        await time_skipping_env.sleep(timedelta(hours=4, minutes=1))
    escalated = await _state(handle, lambda s: s.escalated)
    assert escalated.assignee is None
    assert escalated.tried == [p.user_id for p in people]
    events = [e.event for e in escalated.events]
    assert events.count("acceptance_expired") == 3
    assert events[-1] == "escalated"
    assert await _mails(sessions, admin, "Nobody took this task") == [admin.email]
    # Each person routing picked was told, though the projection did not show them yet.
    assert await _mails(sessions, admin, "Task for you") == sorted(p.email for p in people)
    async with sessions() as session:
        row = await session.get(Task, escalated.task_id)
    assert row is not None
    assert row.escalated
    assert row.assignee_id is None

    # An admin assigns it by hand; the first person declines: the task moves on (none left).
    await handle.execute_update(
        TaskWorkflow.assign,
        AssignCommand(assignee=Assignee(id=people[0].user_id), by=admin.user_id),
    )
    await handle.execute_update(
        TaskWorkflow.accept, AcceptCommand(by=people[0].user_id, accept=False)
    )
    declined = await _state(handle, lambda s: s.assignee is None)
    assert declined.events[-1].event in ("declined", "escalated")


async def test_sla_clocks_count_business_hours_across_a_weekend(
    client: Client,
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
) -> None:
    admin = await member(sessions, settings)
    worker = await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    project_id = await _project(sessions, admin, worker)
    # Friday 16:00 in Berlin: an hour of the working week left.
    now = await time_skipping_env.get_current_time()
    friday = _next_friday_16(now)
    await time_skipping_env.sleep(friday - now)
    policy = TaskPolicy(
        calendar=CALENDAR,
        sla={
            Priority.NORMAL: SlaTarget(response_minutes=120, resolution_minutes=600),
            Priority.URGENT: SlaTarget(response_minutes=60, resolution_minutes=300),
        },
        accept_within=timedelta(days=30),
    )
    handle = await _start(client, settings, admin, project_id, friday, policy, assignee=worker)
    state = await _state(handle, lambda s: all(c.due_at for c in s.clocks))
    clocks = {c.kind: c for c in state.clocks}
    monday = friday + timedelta(days=3)
    # 60 minutes on Friday, the rest from Monday 9:00 (resolution: 8 hours on Monday, 1 on
    # Tuesday).
    assert _local(clocks["response"].due_at) == _at(monday, 10, 0)
    assert _local(clocks["response"].warn_at) == _at(monday, 9, 36)
    assert _local(clocks["resolution"].due_at) == _at(monday + timedelta(days=1), 10, 0)
    described = await handle.describe()
    deadline = described.typed_search_attributes.get(search.SLA_DEADLINE)
    response_due = clocks["response"].due_at
    assert deadline is not None
    assert response_due is not None
    assert abs(deadline - response_due) < timedelta(milliseconds=1)

    # The weekend passes without a word; Monday 9:40 warns the assignee, 10:00 breaches.
    await time_skipping_env.sleep(_at(monday, 9, 40) - friday)
    warned = await _state(handle, lambda s: any(c.warned for c in s.clocks))
    assert [e.event for e in warned.events if e.event.startswith("sla_")] == ["sla_warning"]
    assert await _mails(sessions, admin, "Due soon") == [worker.email]
    await time_skipping_env.sleep(timedelta(minutes=25))
    breached = await _state(handle, lambda s: any(c.breached for c in s.clocks))
    assert await _mails(sessions, admin, "SLA breached") == [admin.email]
    described = await handle.describe()
    assert described.typed_search_attributes.get(search.BIZ_STATUS) == "breached"
    async with sessions() as session:
        row = await session.get(Task, breached.task_id)
    assert row is not None
    assert row.breached

    # Monday 10:05: accepted and started, then waiting until Tuesday 10:05 (a business day
    # paused), then working again: the resolution deadline moves by the paused time.
    before = {c.kind: c for c in breached.clocks}["resolution"].due_at
    await handle.execute_update(TaskWorkflow.accept, AcceptCommand(by=worker.user_id))
    await handle.execute_update(
        TaskWorkflow.change_status, StatusChange(status=TaskStatus.IN_PROGRESS, by=worker.user_id)
    )
    await handle.execute_update(
        TaskWorkflow.change_status, StatusChange(status=TaskStatus.WAITING, by=worker.user_id)
    )
    paused = await handle.query(TaskWorkflow.state)
    assert {c.kind: c.due_at for c in paused.clocks}["resolution"] is None
    await time_skipping_env.sleep(timedelta(days=1))
    resumed_state = await handle.execute_update(
        TaskWorkflow.change_status, StatusChange(status=TaskStatus.IN_PROGRESS, by=worker.user_id)
    )
    after = {c.kind: c for c in resumed_state.clocks}["resolution"].due_at
    assert before is not None
    assert after is not None
    assert abs(after - before - timedelta(days=1)) < timedelta(seconds=1)

    # Urgent now: 300 business minutes in all, of which 125 are used (Friday 60, Monday 65).
    urgent = await handle.execute_update(
        TaskWorkflow.change_priority, PriorityChange(priority=Priority.URGENT, by=admin.user_id)
    )
    resolution = {c.kind: c for c in urgent.clocks}["resolution"]
    assert resolution.budget_minutes == 300
    assert round(resolution.used_minutes) == 125
    assert _local(resolution.due_at) == _at(monday + timedelta(days=1), 13, 0)


def _next_friday_16(now: datetime) -> datetime:
    local = now.astimezone(BERLIN)
    days = (4 - local.weekday()) % 7 or 7
    friday = (local + timedelta(days=days)).replace(hour=16, minute=0, second=0, microsecond=0)
    return friday.astimezone(UTC)


def _at(day: datetime, hour: int, minute: int) -> datetime:
    return day.astimezone(BERLIN).replace(hour=hour, minute=minute, second=0, microsecond=0)


def _local(moment: datetime | None) -> datetime | None:
    """The moment in Berlin, to the minute (the workflow starts a few ms after the test's
    moment)."""
    if moment is None:
        return None
    return moment.astimezone(BERLIN).replace(second=0, microsecond=0)


async def test_a_priority_change_while_waiting_keeps_the_clocks_paused(
    client: Client,
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
) -> None:
    admin = await member(sessions, settings)
    worker = await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    project_id = await _project(sessions, admin, worker)
    now = await time_skipping_env.get_current_time()
    friday = _next_friday_16(now)
    await time_skipping_env.sleep(friday - now)
    policy = TaskPolicy(
        calendar=CALENDAR,
        sla={
            Priority.NORMAL: SlaTarget(response_minutes=120, resolution_minutes=600),
            Priority.URGENT: SlaTarget(response_minutes=60, resolution_minutes=300),
        },
        accept_within=timedelta(days=30),
    )
    handle = await _start(client, settings, admin, project_id, friday, policy, assignee=worker)
    await _state(handle, lambda s: all(c.due_at for c in s.clocks))
    await handle.execute_update(TaskWorkflow.accept, AcceptCommand(by=worker.user_id))
    await handle.execute_update(
        TaskWorkflow.change_status, StatusChange(status=TaskStatus.IN_PROGRESS, by=worker.user_id)
    )
    # Friday 16:30: waiting on the customer, 30 business minutes used; then made urgent.
    await time_skipping_env.sleep(timedelta(minutes=30))
    await handle.execute_update(
        TaskWorkflow.change_status, StatusChange(status=TaskStatus.WAITING, by=worker.user_id)
    )
    urgent = await handle.execute_update(
        TaskWorkflow.change_priority, PriorityChange(priority=Priority.URGENT, by=admin.user_id)
    )
    resolution = {c.kind: c for c in urgent.clocks}["resolution"]
    assert resolution.budget_minutes == 300
    assert round(resolution.used_minutes) == 30
    assert (resolution.running_since, resolution.due_at, resolution.warn_at) == (None, None, None)

    # The whole of Monday passes while the task waits (more than the 270 minutes left): no
    # warning, no breach. Tuesday 9:00 it is worked again: the 270 minutes start then.
    tuesday = _at(friday + timedelta(days=4), 9, 0)
    await time_skipping_env.sleep(tuesday - (friday + timedelta(minutes=30)))
    resumed = await handle.execute_update(
        TaskWorkflow.change_status, StatusChange(status=TaskStatus.IN_PROGRESS, by=worker.user_id)
    )
    resolution = {c.kind: c for c in resumed.clocks}["resolution"]
    assert not resolution.warned
    assert not resolution.breached
    assert round(resolution.used_minutes) == 30
    assert _local(resolution.warn_at) == _at(tuesday, 12, 30)
    assert _local(resolution.due_at) == _at(tuesday, 13, 30)
    assert not [e.event for e in resumed.events if e.event in ("sla_warning", "sla_breached")]
    assert await _mails(sessions, admin, "SLA breached") == []


async def test_sla_notices_of_a_task_nobody_holds_go_to_the_tenant_admins(
    client: Client,
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
) -> None:
    admin = await member(sessions, settings)
    project_id = await _project(sessions, admin)  # nobody to route to: escalated at once
    now = await time_skipping_env.get_current_time()
    policy = TaskPolicy(
        calendar=BusinessCalendar(work_days=[0, 1, 2, 3, 4, 5, 6], start="00:00", end="23:59"),
        sla={Priority.NORMAL: SlaTarget(response_minutes=60, resolution_minutes=120)},
    )
    handle = await _start(client, settings, admin, project_id, now, policy)
    await _state(handle, lambda s: s.escalated)
    await time_skipping_env.sleep(timedelta(hours=3))
    done = await _state(handle, lambda s: all(c.breached for c in s.clocks))
    assert done.assignee is None
    # Both clocks' warnings and breaches reach the admins (a warning had nobody to go to).
    assert await _mails(sessions, admin, "Due soon") == [admin.email] * 2
    assert await _mails(sessions, admin, "SLA breached") == [admin.email] * 2


@workflow.defn(name="AgentRunWorkflow")
class ThinkingAgentRun:
    """An agent's run that has not answered yet: the agent holds its task all along."""

    @workflow.run
    async def run(self, start: AgentRunStart) -> AgentRunState:
        """Think for ever."""
        await workflow.wait_condition(lambda: False)
        raise AssertionError("unreachable")


async def test_sla_notices_of_a_task_an_agent_holds_go_to_the_tenant_admins(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    project_id = await _project(sessions, admin)
    now = await time_skipping_env.get_current_time()
    run = AgentRunStart(
        run_id=uuid.uuid4(),
        tenant_id=admin.tenant_id,
        agent_id="seo-audit",
        started_by=admin.user_id,
        created_at=now,
        input={"html": "<h1>Pricing</h1><p>Plans.</p>"},
        config=AgentRunConfig(allowed_tools=[]),
    )
    policy = TaskPolicy(
        calendar=BusinessCalendar(work_days=[0, 1, 2, 3, 4, 5, 6], start="00:00", end="23:59"),
        sla={Priority.NORMAL: SlaTarget(response_minutes=60, resolution_minutes=120)},
    )
    client = time_skipping_env.client
    thinking = Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[TaskWorkflow, ThinkingAgentRun],
        activities=registry.activities(sessions, settings),
        # The stand-in lives in this test module, which a sandbox would not re-import.
        workflow_runner=UnsandboxedWorkflowRunner(),
    )
    async with thinking:
        handle = await _start(client, settings, admin, project_id, now, policy, agent_run=run)
        await _state(handle, lambda s: s.accepted)  # the run started: the response is met
        await time_skipping_env.sleep(timedelta(hours=3))
        breached = await _state(handle, lambda s: any(c.breached for c in s.clocks))
        assert breached.assignee is not None
        assert breached.assignee.agent_id == "seo-audit"
        assert await _mails(sessions, admin, "Due soon") == [admin.email]
        assert await _mails(sessions, admin, "SLA breached") == [admin.email]
