"""Task activities: business-hours deadlines, routing to the least busy eligible member, the
``tasks`` projection, and the e-mails tasks send."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity

from connectors.mail import Mailer
from core.business_hours import add_business_minutes, business_minutes_between
from core.db import SessionFactory, transaction
from core.settings import Settings
from models.agents import AGENTS, AgentConfig, AgentRunConfig, AgentRunStart
from models.email import EmailMessage
from models.tasks import (
    DEFAULT_SLA,
    TERMINAL,
    Assignee,
    BusinessCalendar,
    Priority,
    Project,
    RouteAnswer,
    RouteRequest,
    SlaPlan,
    SlaPlanRequest,
    SlaTarget,
    SlaUsage,
    Task,
    TaskNotice,
    TaskPolicy,
    TaskRow,
    TenantCalendar,
)
from models.user import Membership, Role, User

#: An agent's concurrency limit until the tenant configures it (``agent_configs``).
_DEFAULT_CONCURRENCY = 3

_NOTICES = {
    "assigned": ("Task for you: {title}", "You are asked to take this task. Accept it at {link}"),
    "sla_warning": (
        "Due soon: {title}",
        "80 % of the task's {detail} time in business hours has passed. See {link}",
    ),
    "sla_breached": (
        "SLA breached: {title}",
        "The task's {detail} deadline has passed. See {link}",
    ),
    "escalated": (
        "Nobody took this task: {title}",
        "The task found no assignee ({detail}). Assign it at {link}",
    ),
}


class TaskActivities:
    """Activities bound to the database and the mail port."""

    def __init__(self, sessions: SessionFactory, mailer: Mailer, settings: Settings) -> None:
        self._sessions = sessions
        self._mailer = mailer
        self._settings = settings

    @activity.defn
    async def plan_sla(self, request: SlaPlanRequest) -> SlaPlan:
        """The deadline (and the 80 % warning) so many business minutes from ``start``."""
        due = add_business_minutes(request.calendar, request.start, request.remaining_minutes)
        warn = None
        if request.warn_remaining_minutes is not None:
            warn = add_business_minutes(
                request.calendar, request.start, request.warn_remaining_minutes
            )
        return SlaPlan(due_at=due, warn_at=warn)

    @activity.defn
    async def sla_used(self, usage: SlaUsage) -> float:
        """Business minutes between two moments."""
        return business_minutes_between(usage.calendar, usage.start, usage.end)

    @activity.defn
    async def route_task(self, request: RouteRequest) -> uuid.UUID | None:
        """The person routing picks (tasks started before agents could take routed tasks)."""
        answer = await self.route_task_to(request.model_copy(update={"agent_input": None}))
        return answer.assignee.id if answer.assignee is not None else None

    @activity.defn
    async def route_task_to(self, request: RouteRequest) -> RouteAnswer:
        """The eligible project member with the least open work: a person (with the task's
        skill, not tried yet, still active) or an agent (with the skill, not tried, enabled for
        the tenant, below its concurrency limit, and able to take the task's ``agent_input``),
        ties in the project's member order; for an agent, the run it will make."""
        async with self._sessions() as session:
            project = await session.get(Project, request.project_id)
            if project is None:
                return RouteAnswer()
            members = [
                m
                for m in project.members
                if request.skill is None or request.skill in m.get("skills", [])
            ]
            people = [
                uuid.UUID(str(m["user_id"]))
                for m in members
                if m.get("user_id") and uuid.UUID(str(m["user_id"])) not in request.exclude
            ]
            candidates: list[tuple[int, int, Assignee | str]] = [
                (load, members.index(m), person)
                for person, load, m in await self._people(session, project, people, members)
            ]
            for index, member in enumerate(members):
                agent_id = member.get("agent_id")
                if agent_id and agent_id not in request.exclude_agents:
                    load = await self._agent_load(session, project.tenant_id, agent_id, request)
                    if load is not None:
                        candidates.append((load, index, agent_id))
        if not candidates:
            return RouteAnswer()
        _, _, picked = min(candidates, key=lambda c: (c[0], c[1]))
        if isinstance(picked, Assignee):
            return RouteAnswer(assignee=picked)
        return await self._agent_answer(project.tenant_id, picked, request)

    async def _people(
        self,
        session: Any,
        project: Project,
        people: list[uuid.UUID],
        members: list[dict[str, Any]],
    ) -> list[tuple[Assignee, int, dict[str, Any]]]:
        """The active people among ``people`` with their open tasks."""
        if not people:
            return []
        active = set(
            await session.scalars(
                select(Membership.user_id)
                .join(User, User.id == Membership.user_id)
                .where(
                    Membership.tenant_id == project.tenant_id,
                    Membership.user_id.in_(people),
                    Membership.role.in_([Role.TENANT_ADMIN, Role.USER]),
                    User.is_active,
                )
            )
        )
        loads = dict(
            (
                await session.execute(
                    select(Task.assignee_id, func.count())
                    .where(
                        Task.tenant_id == project.tenant_id,
                        Task.assignee_id.in_(active),
                        Task.status.not_in(TERMINAL),
                    )
                    .group_by(Task.assignee_id)
                )
            ).all()
        )
        by_id = {str(m.get("user_id")): m for m in members if m.get("user_id")}
        return [
            (Assignee(id=person), loads.get(person, 0), by_id[str(person)])
            for person in people
            if person in active
        ]

    async def _agent_load(
        self, session: Any, tenant_id: uuid.UUID, agent_id: str, request: RouteRequest
    ) -> int | None:
        """The agent's open tasks, or None when it cannot take this one."""
        spec = AGENTS.get(agent_id)
        if spec is None or request.agent_input is None:
            return None
        try:
            spec.input_model.model_validate(request.agent_input)
        except ValidationError:
            return None
        config = await session.get(AgentConfig, (tenant_id, agent_id))
        if config is not None and not config.enabled:
            return None
        load = int(
            await session.scalar(
                select(func.count()).where(
                    Task.tenant_id == tenant_id,
                    Task.assignee_agent_id == agent_id,
                    Task.status.not_in(TERMINAL),
                )
            )
            or 0
        )
        limit = config.concurrency_limit if config is not None else _DEFAULT_CONCURRENCY
        return load if load < limit else None

    async def _agent_answer(
        self, tenant_id: uuid.UUID, agent_id: str, request: RouteRequest
    ) -> RouteAnswer:
        async with self._sessions() as session:
            config = await session.get(AgentConfig, (tenant_id, agent_id))
        spec = AGENTS[agent_id]
        tries = len(request.exclude) + len(request.exclude_agents)
        run_id = uuid.uuid5(request.task_id, f"{agent_id}:{tries}")
        run = AgentRunStart(
            run_id=run_id,
            tenant_id=tenant_id,
            agent_id=agent_id,
            started_by=request.created_by,
            created_at=datetime.now(UTC),
            input=spec.input_model.model_validate(request.agent_input).model_dump(mode="json"),
            config=AgentRunConfig(
                confidence_threshold=config.confidence_threshold
                if config
                else self._settings.agent_confidence_threshold,
                allowed_tools=config.allowed_tools
                if config and config.allowed_tools is not None
                else list(spec.tools),
                always_review=config.always_review if config else False,
                max_steps=config.max_steps if config else self._settings.agent_max_steps,
            ),
        )
        return RouteAnswer(
            assignee=Assignee(kind="agent", id=run_id, agent_id=agent_id), agent_run=run
        )

    @activity.defn
    async def record_task(self, row: TaskRow) -> None:
        """Write the task's projection row (an upsert)."""
        async with transaction(self._sessions) as session:
            task = await session.get(Task, row.task_id)
            if task is None:
                task = Task(id=row.task_id)
                session.add(task)
            for name, value in row.model_dump(exclude={"task_id"}).items():
                setattr(task, name, value)
            task.updated_at = datetime.now(UTC)

    @activity.defn
    async def notify_task(self, notice: TaskNotice) -> int:
        """E-mail the assignee (the person the notice names) or the tenant admins, once per
        recipient under the key."""
        async with self._sessions() as session:
            task = await session.get(Task, notice.task_id)
            if task is None:
                return 0
            query = select(User.id, User.email).where(User.is_active)
            if notice.to == "assignee":
                query = query.where(User.id == (notice.assignee_id or task.assignee_id))
            else:
                query = query.join(Membership, Membership.user_id == User.id).where(
                    Membership.tenant_id == task.tenant_id,
                    Membership.role == Role.TENANT_ADMIN,
                )
            recipients = (await session.execute(query)).all()
        subject, body = _NOTICES[notice.kind]
        link = f"{self._settings.public_app_url.rstrip('/')}/tasks/{task.id}"
        values = {"title": task.title, "detail": notice.detail, "link": link}
        for user_id, address in recipients:
            await self._mailer.send(
                EmailMessage(
                    idempotency_key=f"{notice.idempotency_key}:{user_id}",
                    to=address,
                    subject=subject.format(**values)[:200],
                    body=body.format(**values) + "\n",
                    tenant_id=task.tenant_id,
                )
            )
        return len(recipients)


async def tenant_calendar(session: AsyncSession, tenant_id: uuid.UUID) -> BusinessCalendar:
    """The tenant's business calendar (Monday to Friday, 9:00 to 17:00 UTC until set)."""
    row = await session.get(TenantCalendar, tenant_id)
    return BusinessCalendar.model_validate(row.calendar) if row else BusinessCalendar()


async def task_policy(session: AsyncSession, settings: Settings, project: Project) -> TaskPolicy:
    """How a new task of the project runs: its SLA targets, the tenant's calendar, how long
    an assignee has to accept and how often it is offered."""
    return TaskPolicy(
        sla={**DEFAULT_SLA, **{Priority(k): SlaTarget(**v) for k, v in project.sla.items()}},
        calendar=await tenant_calendar(session, project.tenant_id),
        accept_within=settings.task_accept_within,
        max_attempts=settings.task_max_attempts,
    )
