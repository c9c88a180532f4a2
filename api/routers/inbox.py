"""One inbox: every pending human step the caller can act on, across processes, ordered by
deadline. The approver's and the worker's home screen."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import ColumnElement, and_, case, func, literal, or_, select, tuple_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from api.deps import CurrentPrincipal, SessionDep, SettingsDep
from api.pagination import decode_cursor, encode_cursor
from api.tenancy import scoped
from models.approval import Approval, ApprovalKind, ApprovalStatus
from models.base import UTCDateTime
from models.tasks import TERMINAL, Task, TaskStatus
from models.user import Role

router = APIRouter(prefix="/api/v1", tags=["inbox"])

_NEVER = datetime.max.replace(tzinfo=UTC)

#: ``task_escalated`` (nobody holds it) and ``task_review`` (an agent's result to check) reach
#: the tenant admins.
InboxKind = Literal[
    "approval", "content_review", "task_acceptance", "task", "task_escalated", "task_review"
]


class InboxItem(BaseModel):
    kind: InboxKind
    id: uuid.UUID
    title: str
    deadline: datetime | None
    link: str


class InboxPage(BaseModel):
    items: list[InboxItem]
    next_cursor: str | None


@router.get("/inbox", summary="Everything waiting for you, soonest deadline first")
async def inbox(
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> InboxPage:
    """Approvals you can decide (tenant onboarding for platform staff, content reviews for
    the tenant's reviewer role, never your own submissions among peers), tasks waiting for
    your acceptance and tasks assigned to you, and for tenant admins the tasks nobody holds
    (escalated) and the agents' results waiting in ``review``; each with its deadline (the
    acceptance window, else the earliest SLA or due date) and a link to act."""
    after = decode_cursor(cursor) if cursor is not None else None
    app = settings.public_app_url.rstrip("/")
    items = [
        *await _approvals(session, principal, after, limit, app),
        *await _tasks(session, principal, after, limit, app),
    ]
    items.sort(key=_key)
    if after is not None:
        items = [item for item in items if _key(item) > after]
    page = items[:limit]
    more = len(items) > limit
    last = page[-1] if page else None
    return InboxPage(
        items=page,
        next_cursor=encode_cursor(*_key(last)) if more and last is not None else None,
    )


def _key(item: InboxItem) -> tuple[datetime, uuid.UUID]:
    return (item.deadline or _NEVER, item.id)


async def _approvals(
    session: SessionDep,
    principal: CurrentPrincipal,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
    app: str,
) -> list[InboxItem]:
    # Members decide only the content reviews of tenants whose reviewer role is ``user``.
    if principal.role not in (Role.SUPER_ADMIN, Role.TENANT_ADMIN, Role.USER):
        return []
    query = scoped(select(Approval), Approval, principal).where(
        Approval.status == ApprovalStatus.PENDING, Approval.decider_role == principal.role
    )
    if principal.role is Role.USER:
        # Four eyes among peers: not the reviews of items the caller submitted.
        submitter = Approval.facts["submitted_by"].as_string()
        query = query.where(or_(submitter.is_(None), submitter != str(principal.user_id)))
    if after is not None:
        query = query.where(Approval.due_at >= after[0])
    rows = await session.scalars(query.order_by(Approval.due_at, Approval.id).limit(limit + 1))
    return [
        InboxItem(
            kind="content_review" if row.kind is ApprovalKind.CONTENT_REVIEW else "approval",
            id=row.id,
            title=row.subject,
            deadline=row.due_at,
            link=_approval_link(app, row),
        )
        for row in rows
    ]


def _approval_link(app: str, row: Approval) -> str:
    """Where to act: a content review on its item (the rendered preview), else the approval."""
    content_id = row.facts.get("content_id")
    if row.kind is ApprovalKind.CONTENT_REVIEW and content_id:
        return f"{app}/content/{content_id}"
    return f"{app}/approvals/{row.id}"


async def _tasks(
    session: SessionDep,
    principal: CurrentPrincipal,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
    app: str,
) -> list[InboxItem]:
    """The caller's open tasks; for a tenant admin also the tasks nobody holds (escalated)
    and the agents' results waiting in ``review``: soonest deadline first, one page."""
    mine = Task.assignee_id == principal.user_id
    if principal.role is Role.TENANT_ADMIN:
        escalated = and_(Task.escalated, Task.assignee_id.is_(None))
        review = and_(Task.status == TaskStatus.REVIEW, Task.assignee_agent_id.is_not(None))
        mine = or_(mine, escalated, review)
    deadline = _task_deadline_sql()
    query = select(Task).where(
        Task.tenant_id == principal.tenant_id, Task.status.not_in(TERMINAL), mine
    )
    if after is not None:
        query = query.where(tuple_(deadline, Task.id) > tuple_(_at(after[0]), after[1]))
    rows = await session.scalars(query.order_by(deadline, Task.id).limit(limit + 1))
    return [
        InboxItem(
            kind=_task_kind(row, principal),
            id=row.id,
            title=row.title,
            deadline=_task_deadline(row),
            link=f"{app}/tasks/{row.id}",
        )
        for row in rows
    ]


def _task_kind(row: Task, principal: CurrentPrincipal) -> InboxKind:
    if row.assignee_id == principal.user_id:
        return "task" if row.accepted else "task_acceptance"
    return "task_review" if row.assignee_agent_id is not None else "task_escalated"


def _task_deadline(row: Task) -> datetime | None:
    if not row.accepted and row.accept_due is not None:
        return row.accept_due
    found = [d for d in (row.response_due, row.resolution_due, row.due_at) if d is not None]
    return min(found) if found else None


def _at(moment: datetime) -> ColumnElement[datetime]:
    return literal(moment, UTCDateTime())


def _task_deadline_sql() -> ColumnElement[datetime]:
    """``_task_deadline`` in SQL (``_NEVER`` for none), to order and cut the page there."""
    earliest = Earliest(*(func.coalesce(d, _at(_NEVER)) for d in _TASK_DUES))
    return case(
        (and_(~Task.accepted, Task.accept_due.is_not(None)), Task.accept_due),
        else_=earliest,
    )


_TASK_DUES = (Task.response_due, Task.resolution_due, Task.due_at)


class Earliest(FunctionElement[datetime]):
    """The earliest of its arguments: ``least`` on PostgreSQL, ``min`` on SQLite (which
    answers NULL when one is: coalesce them first)."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(Earliest)
def _least(element: Earliest, compiler: SQLCompiler, **kw: Any) -> str:
    return f"least({compiler.process(element.clauses, **kw)})"


@compiles(Earliest, "sqlite")
def _min(element: Earliest, compiler: SQLCompiler, **kw: Any) -> str:
    return f"min({compiler.process(element.clauses, **kw)})"
