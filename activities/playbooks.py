"""Playbook activities: a step's action on the tenant's systems (once per key), waiting for a
content item a playbook published, and the runs' listing projection."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any, cast

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.agents import note_once, tenant_connection
from activities.tasks import task_policy
from connectors.crm import CRMPort, DealDraft
from connectors.pacing import DatabasePacer
from connectors.secrets import SecretStore
from core.db import SessionFactory, transaction
from core.search import start_options
from core.settings import Settings
from models.agents import NoteArgs
from models.content import ContentItemState, ContentStatus
from models.playbooks import (
    ACTION_ARGS,
    DealArgs,
    NoteActionArgs,
    PlaybookAction,
    PlaybookRun,
    PlaybookRunRow,
    TaskArgs,
)
from models.tasks import (
    ASSIGNABLE,
    Assignee,
    Project,
    TaskFields,
    TaskStart,
    TaskState,
    TaskStatus,
)
from models.user import Membership, User

#: Error type of an action the playbook may not take (bad arguments, another tenant's rows).
ACTION_REFUSED = "PlaybookActionRefused"
_POLL_SECONDS = 1.0


class PlaybookActivities:
    """Activities bound to the database, the secret store and the settings."""

    def __init__(self, sessions: SessionFactory, settings: Settings, secrets: SecretStore) -> None:
        self._sessions = sessions
        self._settings = settings
        self._secrets = secrets
        self._pacer = DatabasePacer(sessions)

    @activity.defn
    async def playbook_action(self, call: PlaybookAction) -> dict[str, Any]:
        """Run one action step; its ``key`` goes with what it creates, so a retry finds it."""
        try:
            args = ACTION_ARGS[call.action].model_validate(call.args)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in error["loc"])
            raise _refused(f"{call.action.value}: {where}: {error['msg']}") from None
        if isinstance(args, TaskArgs):
            return await self._task(call, args)
        assert isinstance(args, DealArgs | NoteActionArgs)
        async with tenant_connection(
            self._sessions,
            self._settings,
            self._secrets,
            tenant_id=call.tenant_id,
            connection_id=args.connection_id,
            kind="crm",
            refuse=_refused,
            pacer=self._pacer,
        ) as port:
            crm = cast(CRMPort, port)
            if isinstance(args, NoteActionArgs):
                note = NoteArgs.model_validate(args.model_dump(exclude={"connection_id"}))
                return await note_once(crm, note, call.key)
            return await _deal_once(crm, args, call.key)

    @activity.defn
    async def await_publication(self, content_id: uuid.UUID) -> dict[str, Any]:
        """Wait (heartbeating) until the item's workflow has published it; its post, or the
        reason it failed."""
        handle = activity.client().get_workflow_handle(f"publish:{content_id}")
        while True:
            item = await handle.query("state", result_type=ContentItemState)
            if item.status is ContentStatus.PUBLISHED and item.post is not None:
                return {
                    "content_id": str(item.content_id),
                    "post_id": item.post.post_id,
                    "url": item.post.url,
                }
            if item.status is ContentStatus.FAILED:
                raise ApplicationError(
                    f"Publishing failed: {item.error}", type="PublishFailed", non_retryable=True
                )
            activity.heartbeat(item.status.value)
            await asyncio.sleep(_POLL_SECONDS)

    @activity.defn
    async def record_playbook_run(self, row: PlaybookRunRow) -> None:
        """Upsert the run's listing row."""
        async with transaction(self._sessions) as session:
            run = await session.get(PlaybookRun, row.run_id)
            if run is None:
                run = PlaybookRun(id=row.run_id, created_at=row.created_at)
                session.add(run)
            run.tenant_id, run.playbook_id, run.started_by = (
                row.tenant_id,
                row.playbook_id,
                row.started_by,
            )
            run.status, run.current, run.error = row.status, row.current, row.error
            run.finished_at, run.updated_at = row.finished_at, datetime.now(UTC)

    async def _task(self, call: PlaybookAction, args: TaskArgs) -> dict[str, Any]:
        """Start the task's workflow (the same task however often retried)."""
        async with self._sessions() as session:
            project = await session.get(Project, args.project_id)
            if project is None or project.tenant_id != call.tenant_id:
                raise _refused("task.create: no such project in the tenant.")
            if args.assignee_id is not None:
                await _check_person(session, call.tenant_id, args.assignee_id)
            policy = await task_policy(session, self._settings, project)
        task_id = uuid.uuid5(uuid.NAMESPACE_URL, call.key)
        start = TaskStart(
            state=TaskState(
                task_id=task_id,
                tenant_id=call.tenant_id,
                project_id=project.id,
                created_by=call.started_by,
                created_at=datetime.now(UTC),
                fields=TaskFields.model_validate(
                    args.model_dump(include={"title", "description", "priority"})
                ),
            ),
            policy=policy,
            assignee=Assignee(id=args.assignee_id) if args.assignee_id else None,
        )
        await activity.client().start_workflow(
            "TaskWorkflow",
            start,
            **start_options(
                self._settings,
                workflow_id=f"task:{task_id}",
                tenant_id=call.tenant_id,
                process="task",
                status=TaskStatus.TODO.value,
                summary=f"Task {task_id}",
            ),
        )
        return {"task_id": str(task_id)}


async def _deal_once(crm: CRMPort, args: DealArgs, key: str) -> dict[str, Any]:
    """The deal, unless an earlier attempt made it (found by its external id, the key)."""
    found = await crm.find_deal_by_external_id(key)
    if found is not None:
        return {"deal_id": found.id, "created": False}
    pipeline_id, stage_id = None, args.stage_id
    if stage_id is None:
        pipelines = await crm.list_pipelines()
        if not pipelines or not pipelines[0].stages:
            raise _refused("crm.create_deal: the CRM has no deal pipeline.")
        pipeline_id, stage_id = pipelines[0].id, pipelines[0].stages[0].id
    deal = await crm.create_deal(
        DealDraft(
            name=args.name,
            amount=args.amount,
            pipeline_id=pipeline_id,
            stage_id=stage_id,
            company_id=args.company_id,
            contact_ids=[args.contact_id] if args.contact_id else [],
            external_id=key,
        )
    )
    return {"deal_id": deal.id, "created": True}


async def _check_person(session: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """An active person of the tenant who can take tasks."""
    found = await session.scalar(
        select(Membership.user_id)
        .join(User, User.id == Membership.user_id)
        .where(
            Membership.tenant_id == tenant_id,
            Membership.user_id == user_id,
            Membership.role.in_(ASSIGNABLE),
            User.is_active,
        )
    )
    if found is None:
        raise _refused("task.create: the assignee is no person of the tenant.")


def _refused(message: str) -> ApplicationError:
    return ApplicationError(message, type=ACTION_REFUSED, non_retryable=True)
