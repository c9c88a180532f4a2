"""One inbox: every pending human step the caller can act on, across processes, ordered by
deadline. The approver's and the worker's home screen."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select

from api.deps import CurrentPrincipal, SessionDep, SettingsDep
from api.pagination import decode_cursor, encode_cursor
from api.tenancy import scoped
from models.approval import Approval, ApprovalKind, ApprovalStatus
from models.tasks import TERMINAL, Task
from models.user import Role

router = APIRouter(prefix="/api/v1", tags=["inbox"])

#: Open tasks of one person read for the inbox (a person with more has a bigger problem).
_TASKS_READ = 1000
_NEVER = datetime.max.replace(tzinfo=UTC)

InboxKind = Literal["approval", "content_review", "task_acceptance", "task"]


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
    tenant admins), tasks waiting for your acceptance and tasks assigned to you, each with its
    deadline (the acceptance window, else the earliest SLA or due date) and a link to act."""
    after = decode_cursor(cursor) if cursor is not None else None
    app = settings.public_app_url.rstrip("/")
    items = [
        *await _approvals(session, principal, after, limit, app),
        *await _tasks(session, principal, app),
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
    if principal.role not in (Role.SUPER_ADMIN, Role.TENANT_ADMIN):
        return []
    query = scoped(select(Approval), Approval, principal).where(
        Approval.status == ApprovalStatus.PENDING, Approval.decider_role == principal.role
    )
    if after is not None:
        query = query.where(Approval.due_at >= after[0])
    rows = await session.scalars(query.order_by(Approval.due_at, Approval.id).limit(limit + 1))
    return [
        InboxItem(
            kind="content_review" if row.kind is ApprovalKind.CONTENT_REVIEW else "approval",
            id=row.id,
            title=row.subject,
            deadline=row.due_at,
            link=f"{app}/approvals/{row.id}",
        )
        for row in rows
    ]


async def _tasks(session: SessionDep, principal: CurrentPrincipal, app: str) -> list[InboxItem]:
    rows = await session.scalars(
        select(Task)
        .where(
            Task.tenant_id == principal.tenant_id,
            Task.assignee_id == principal.user_id,
            Task.status.not_in(TERMINAL),
        )
        .limit(_TASKS_READ)
    )
    return [
        InboxItem(
            kind="task" if row.accepted else "task_acceptance",
            id=row.id,
            title=row.title,
            deadline=_task_deadline(row),
            link=f"{app}/tasks/{row.id}",
        )
        for row in rows
    ]


def _task_deadline(row: Task) -> datetime | None:
    if not row.accepted and row.accept_due is not None:
        return row.accept_due
    found = [d for d in (row.response_due, row.resolution_due, row.due_at) if d is not None]
    return min(found) if found else None
