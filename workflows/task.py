"""A task: assignment with an acceptance deadline, status changes and comments, and its SLA
clocks in the tenant's business hours (``task:{task_id}``)."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import suppress
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError
from temporalio.workflow import ChildWorkflowHandle, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.tasks import TaskActivities
    from core.search import BIZ_PROCESS, BIZ_STATUS, SLA_DEADLINE, TENANT_ID
    from models.agents import AgentRunStart, AgentRunState, AgentRunStatus, DecisionOutcome
    from models.onboarding import Document, DocumentCheck, DocumentUpload
    from models.tasks import (
        MAX_ATTACHMENTS,
        MAX_COMMENTS,
        TERMINAL,
        TRANSITIONS,
        AcceptCommand,
        AssignCommand,
        Assignee,
        Comment,
        CommentCommand,
        NoticeKind,
        PriorityChange,
        Recipients,
        ReleaseCommand,
        RouteAnswer,
        RouteRequest,
        SlaClock,
        SlaKind,
        SlaPlanRequest,
        SlaUsage,
        StatusChange,
        TaskEdit,
        TaskEvent,
        TaskEventName,
        TaskNotice,
        TaskRow,
        TaskStart,
        TaskState,
        TaskStatus,
    )
    from workflows import agent_run, metering

PROCESS = "task"
# Error types of refused updates; the API maps each to its HTTP status.
ILLEGAL_TRANSITION = "IllegalTransition"  # 409, details: the allowed statuses
TASK_CLOSED = "TaskClosed"  # 409
NOT_ASSIGNEE = "NotTheAssignee"  # 403
TOO_MANY_COMMENTS = "TooManyComments"  # 422 (comments or attachments)
UNKNOWN_ATTACHMENT = "UnknownAttachment"  # 404

_STORE_TIMEOUT = timedelta(seconds=30)
_NOTICE_WINDOW = timedelta(hours=1)
_PLAN_TIMEOUT = timedelta(seconds=10)
_WARN_AT = 0.8


def workflow_id(task_id: uuid.UUID) -> str:
    return f"task:{task_id}"


@workflow.defn
class TaskWorkflow:
    """One task from creation to ``done`` or ``cancelled``.

    - **Assignment**: to the person named at creation, else to an eligible project member
      with the least open work (routing). The assignee accepts within ``accept_within``;
      one who declines or lets it pass is skipped and the next one tried; after
      ``max_attempts`` the task escalates to the tenant admins (unassigned, ``escalated``).
    - **Agent assignees**: an agent's run starting *is* its acceptance. The run is started on
      the next turn of the loop after the assignment, so ``agent_accept_within`` (5 min) only
      bounds that moment (``accept_due`` until the start); it never waits for the agent to
      answer. A run that cannot start moves the task on, as a refusal would.
    - **Status changes** are validated updates (illegal moves refused, naming the allowed
      ones); comments are updates too.
    - **SLA**: a response clock (to the first action: accepting, moving the task or
      commenting as its assignee) and a resolution clock (to ``done``), in business minutes
      of the tenant's calendar, from the project's targets for the task's priority. Each
      warns at 80 % (e-mail to the assignee; to the tenant admins while no person holds the
      task), breaches at 100 % (``breached``, e-mail to the tenant admins, counted in
      metrics). Both pause while the task is ``waiting`` and resume after, the deadlines
      moved by the paused time; a priority change recomputes them from the time already
      used (while ``waiting``, only their budgets: they stay paused).

    ``BizStatus`` follows the status (``breached`` while an open task is past a deadline),
    ``SlaDeadline`` the earliest deadline not yet met, and the ``tasks`` projection both. The
    task counts one workflow run as it is created (its agent's run is part of it).
    """

    @workflow.init
    def __init__(self, start: TaskStart) -> None:
        self._start = start
        self._task = start.state
        self._policy = start.policy
        self._dirty = False
        self._routing = False
        self._notice_due = False
        self._escalate_due = False
        self._listed = False
        self._agent_start: AgentRunStart | None = None
        self._agent_done: AgentRunState | None = None
        self._agent_failed: str | None = None
        self._agent_running = False
        self._collector: asyncio.Task[None] | None = None
        self._breaches = workflow.metric_meter().create_counter(
            "bizosaas_sla_breaches", "SLA clocks that passed their deadline"
        )

    @workflow.run
    async def run(self, start: TaskStart) -> TaskStatus:
        """Serve the task until it is done or cancelled."""
        if not self._task.clocks:  # a new task (a continued one carries its clocks)
            self._event("created", self._task.created_by)
            await self._start_clocks()
            if start.assignee is not None:
                self._assign(start.assignee, self._task.created_by, start.agent_run)
            else:
                self._routing = True
        await self._record()
        await metering.count_run(self._task.tenant_id)
        while self._task.status not in TERMINAL:
            if self._routing:
                await self._route()
            await self._notify_pending()
            if self._agent_start is not None:
                await self._start_agent()
            await self._next_moment()
            await self._agent_answered()
            await self._apply_deadlines()
            await self._record()
            if self._history_is_long() and not self._agent_running:
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    self._start.model_copy(update={"state": self._task, "assignee": None})
                )
        await self._stop_clocks()
        await self._record()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._task.status

    # --- Updates ----------------------------------------------------------------------

    @workflow.update
    async def listed(self) -> TaskState:
        """The task once its projection row is written (the API creates tasks with it)."""
        await workflow.wait_condition(lambda: self._listed)
        return self._task

    @workflow.update
    async def change_status(self, change: StatusChange) -> TaskState:
        """Move the task; ``waiting`` pauses the SLA clocks, leaving it resumes them."""
        before = self._task.status
        self._task.status = change.status
        self._event("status_changed", change.by, f"{before.value} -> {change.status.value}")
        if change.status is not TaskStatus.CANCELLED and self._is_assignee(change.by):
            self._first_action()
        if change.status is TaskStatus.WAITING:
            await self._pause_clocks()
        elif before is TaskStatus.WAITING:
            await self._resume_clocks()
        if change.status is TaskStatus.DONE:
            self._meet("resolution")
        self._dirty = True
        return self._task

    @change_status.validator
    def _check_status(self, change: StatusChange) -> None:
        """Only the moves ``TRANSITIONS`` allows from the current status."""
        allowed = TRANSITIONS[self._task.status]
        if change.status not in allowed:
            names = sorted(status.value for status in allowed)
            raise ApplicationError(
                f"A {self._task.status.value} task cannot become {change.status.value}"
                + (f" (allowed: {', '.join(names)})." if names else ": it is closed."),
                names,
                type=ILLEGAL_TRANSITION,
            )

    @workflow.update
    def assign(self, command: AssignCommand) -> TaskState:
        """Give the task to a person (the API checked they are the tenant's); they have
        ``accept_within`` to accept."""
        self._routing = False
        self._assign(command.assignee, command.by, command.agent_run)
        self._dirty = True
        return self._task

    @assign.validator
    def _check_assign(self, command: AssignCommand) -> None:
        """Not once the task is closed."""
        self._require_open()

    @workflow.update
    def accept(self, answer: AcceptCommand) -> TaskState:
        """The assignee accepts (the response clock's first action) or declines (the next
        eligible person is tried)."""
        if answer.accept:
            self._task.accepted, self._task.accept_due = True, None
            self._event("accepted", answer.by)
            self._first_action()
        else:
            self._event("declined", answer.by)
            self._skip_assignee()
        self._dirty = True
        return self._task

    @accept.validator
    def _check_accept(self, answer: AcceptCommand) -> None:
        """Only the assignee, once, while the task is open."""
        self._require_open()
        if not self._is_assignee(answer.by):
            raise ApplicationError("Only the task's assignee can answer.", type=NOT_ASSIGNEE)
        if self._task.accepted:
            raise ApplicationError("The task is accepted already.", type=TASK_CLOSED)

    @workflow.signal
    def release(self, command: ReleaseCommand) -> None:
        """Someone removed from the tenant lets go of the task: the next eligible person is
        tried (or it escalates). Nothing happens when they do not hold it, or it is closed."""
        if self._task.status in TERMINAL or not self._is_assignee(command.user_id):
            return
        self._event("released", command.by, f"{command.user_id} left the tenant")
        self._skip_assignee()
        self._dirty = True

    @workflow.update
    async def change_priority(self, change: PriorityChange) -> TaskState:
        """A new priority: the SLA targets are the project's for it, from the time used. While
        the task is ``waiting`` only the budgets change; the clocks stay paused until it is not."""
        before = self._task.fields.priority
        self._task.fields = self._task.fields.model_copy(update={"priority": change.priority})
        self._event("priority_changed", change.by, f"{before.value} -> {change.priority.value}")
        target = self._policy.sla[change.priority]
        for clock in self._task.clocks:
            budget = (
                target.response_minutes if clock.kind == "response" else target.resolution_minutes
            )
            clock.budget_minutes = budget
        if self._task.status is TaskStatus.WAITING and workflow.patched(
            "task-priority-while-waiting"
        ):
            # Paused clocks stay paused: leaving ``waiting`` plans them on the new budgets.
            # (Runs before the patch restarted them here, counting the rest of the wait.)
            self._dirty = True
            return self._task
        await self._pause_clocks(record=False)
        await self._resume_clocks(record=False)
        self._dirty = True
        return self._task

    @change_priority.validator
    def _check_priority(self, change: PriorityChange) -> None:
        """Not once the task is closed."""
        self._require_open()

    @workflow.update
    def edit(self, edit: TaskEdit) -> TaskState:
        """Change the title, description, labels or due date; the timeline names the fields
        changed (not their values)."""
        given = {
            "title": edit.title,
            "description": edit.description,
            "labels": edit.labels,
            "due_at": None if edit.clear_due_at else edit.due_at,
        }
        changes = {
            name: value
            for name, value in given.items()
            if (value is not None or (name == "due_at" and edit.clear_due_at))
            and getattr(self._task.fields, name) != value
        }
        if changes:
            self._task.fields = self._task.fields.model_copy(update=changes)
            self._event("edited", edit.by, ", ".join(sorted(changes)))
            self._dirty = True
        return self._task

    @edit.validator
    def _check_edit(self, edit: TaskEdit) -> None:
        """Not once the task is closed."""
        self._require_open()

    @workflow.update
    def comment(self, command: CommentCommand) -> TaskState:
        """Add a comment (the assignee's first one is a first action)."""
        self._task.comments.append(
            Comment(
                comment_id=command.comment_id,
                author=command.by,
                at=workflow.now(),
                body=command.body,
            )
        )
        self._event("commented", command.by)
        if self._is_assignee(command.by):
            self._first_action()
        self._dirty = True
        return self._task

    @comment.validator
    def _check_comment(self, command: CommentCommand) -> None:
        """At most ``MAX_COMMENTS`` per task, and none once it is closed."""
        self._require_open()
        if len(self._task.comments) >= MAX_COMMENTS:
            raise ApplicationError(
                f"A task holds at most {MAX_COMMENTS} comments.", type=TOO_MANY_COMMENTS
            )

    @workflow.update
    def expect_attachment(self, upload: DocumentUpload) -> TaskState:
        """Hold a slot for a file being uploaded (the API checks it before it counts)."""
        self._task.attachments.append(Document(**upload.model_dump(), announced_at=workflow.now()))
        return self._task

    @expect_attachment.validator
    def _check_expect_attachment(self, upload: DocumentUpload) -> None:
        """At most ``MAX_ATTACHMENTS`` per task, none once it is closed."""
        self._require_open()
        if len(self._task.attachments) >= MAX_ATTACHMENTS:
            raise ApplicationError(
                f"A task holds at most {MAX_ATTACHMENTS} attachments.", type=TOO_MANY_COMMENTS
            )

    @workflow.update
    def settle_attachment(self, check: DocumentCheck) -> TaskState:
        """The uploaded file passed the checks (kept where no upload URL reaches) or not
        (its slot is freed)."""
        found = next(a for a in self._task.attachments if a.document_id == check.document_id)
        if not check.accepted or check.sealed_key is None:
            self._task.attachments.remove(found)
            return self._task
        found.stored, found.size, found.storage_key = True, check.size or 0, check.sealed_key
        self._event("attached", None, found.filename)
        self._dirty = True
        return self._task

    @settle_attachment.validator
    def _check_settle_attachment(self, check: DocumentCheck) -> None:
        """Only a file the task waits for."""
        if not any(a.document_id == check.document_id for a in self._task.attachments):
            raise ApplicationError(
                f"No attachment {check.document_id} on this task.", type=UNKNOWN_ATTACHMENT
            )

    @workflow.query
    def state(self) -> TaskState:
        """The task with its comments, SLA clocks and record of events."""
        return self._task

    # --- Assignment -------------------------------------------------------------------

    def _assign(self, assignee: Assignee, by: uuid.UUID, run: AgentRunStart | None = None) -> None:
        self._task.assignee = assignee
        self._task.accepted = False
        if workflow.patched("task-record-assignment"):
            self._dirty = True  # the projection (and the inbox) show the assignee at once
        if assignee.kind == "agent":
            self._task.accept_due = workflow.now() + self._policy.agent_accept_within
            self._agent_start = run
            self._event("assigned", by, f"agent {assignee.agent_id}")
            return
        self._task.accept_due = workflow.now() + self._policy.accept_within
        self._event("assigned", by, str(assignee.id))
        self._notice_due = True

    # --- Agent assignees --------------------------------------------------------------

    async def _start_agent(self) -> None:
        """Start the agent's run (its acceptance); its answer lands on the task later."""
        run, self._agent_start = self._agent_start, None
        assert run is not None
        try:
            child = await workflow.start_child_workflow(
                agent_run.AgentRunWorkflow.run,
                run,
                id=agent_run.workflow_id(run.run_id),
                # A task that closes takes its agent's run with it.
                parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
                static_summary=f"Agent run {run.agent_id} for task {self._task.task_id}",
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(TENANT_ID, str(self._task.tenant_id)),
                        SearchAttributePair(BIZ_PROCESS, agent_run.PROCESS),
                        SearchAttributePair(BIZ_STATUS, AgentRunStatus.RUNNING.value),
                    ]
                ),
            )
        except ApplicationError as err:  # the run could not start: the next assignee
            self._agent_failed = err.message
            return
        self._task.accepted, self._task.accept_due = True, None
        if self._task.assignee is not None:
            self._task.assignee.confidence_threshold = run.config.confidence_threshold
        self._agent_running = True
        if workflow.patched("task-record-assignment"):
            self._dirty = True
        self._event("accepted", None, f"agent {run.agent_id}")
        self._first_action()
        if self._task.status is TaskStatus.TODO:
            self._task.status = TaskStatus.IN_PROGRESS
            self._event("status_changed", None, "todo -> in_progress")
        self._collector = asyncio.create_task(self._collect(child))

    async def _collect(
        self, child: ChildWorkflowHandle[agent_run.AgentRunWorkflow, AgentRunState]
    ) -> None:
        try:
            self._agent_done = await child
        except ChildWorkflowError as err:
            self._agent_failed = str(err.cause or err)
        self._agent_running = False
        self._dirty = True

    async def _agent_answered(self) -> None:
        """The agent's result lands on the task as a comment: confident enough and applied,
        the task is done; otherwise a person reviews it. A failed run moves the task on."""
        state, failure = self._agent_done, self._agent_failed
        self._agent_done = self._agent_failed = None
        if failure is not None or (state is not None and state.status is AgentRunStatus.FAILED):
            reason = failure or (state.error if state else None) or "the run failed"
            self._event("agent_failed", None, reason)
            self._skip_assignee()
            return
        if state is None or state.result is None:
            return
        result = state.result
        self._task.comments.append(
            Comment(
                comment_id=state.run_id,
                author=state.run_id,
                agent_id=state.agent_id,
                at=workflow.now(),
                body=f"{result.rationale} (confidence {result.confidence:.0%}; "
                f"{state.outcome.value if state.outcome else 'no outcome'})",
            )
        )
        self._event("agent_finished", None, f"confidence {result.confidence:.2f}")
        if self._task.status is not TaskStatus.IN_PROGRESS:
            return  # a person moved the task meanwhile: the comment is theirs to weigh
        assignee = self._task.assignee
        threshold = assignee.confidence_threshold if assignee else None
        trusted = (
            threshold is not None and result.confidence >= threshold and state.outcome in _SETTLED
        )
        self._task.status = TaskStatus.DONE if trusted else TaskStatus.REVIEW
        self._event("status_changed", None, f"in_progress -> {self._task.status.value}")
        if trusted:
            self._meet("resolution")

    def _skip_assignee(self) -> None:
        assignee = self._task.assignee
        if assignee is not None and assignee.kind == "agent" and assignee.agent_id:
            self._task.tried_agents.append(assignee.agent_id)
        elif assignee is not None:
            self._task.tried.append(assignee.id)
        self._task.assignee, self._task.accepted, self._task.accept_due = None, False, None
        if len(self._task.tried) + len(self._task.tried_agents) >= self._policy.max_attempts:
            self._escalate_due = True
        else:
            self._routing = True

    async def _route(self) -> None:
        """Pick the next eligible person or agent, or escalate when nobody is left."""
        self._routing = False
        if workflow.patched("task-agent-routing"):
            answer: RouteAnswer = await workflow.execute_activity_method(
                TaskActivities.route_task_to,
                RouteRequest(
                    task_id=self._task.task_id,
                    project_id=self._task.project_id,
                    skill=self._task.fields.skill,
                    exclude=self._task.tried,
                    exclude_agents=self._task.tried_agents,
                    agent_input=self._task.fields.agent_input,
                    created_by=self._task.created_by,
                ),
                start_to_close_timeout=_STORE_TIMEOUT,
                summary="pick the next eligible assignee",
            )
            if answer.assignee is None:
                self._escalate_due = True
                return
            self._assign(answer.assignee, self._task.created_by, answer.agent_run)
            return
        picked: uuid.UUID | None = await workflow.execute_activity_method(
            TaskActivities.route_task,
            RouteRequest(
                task_id=self._task.task_id,
                project_id=self._task.project_id,
                skill=self._task.fields.skill,
                exclude=self._task.tried,
            ),
            start_to_close_timeout=_STORE_TIMEOUT,
            summary="pick the next eligible assignee",
        )
        if picked is None:
            self._escalate_due = True
            return
        self._assign(Assignee(id=picked), self._task.created_by)

    async def _notify_pending(self) -> None:
        """Send what the last changes call for: the new assignee, or the escalation."""
        if self._notice_due and self._task.assignee is not None:
            self._notice_due = False
            await self._notify("assigned", "assignee", f"{self._task.assignee.id}")
        if self._escalate_due:
            self._escalate_due = False
            self._task.escalated = True
            self._event("escalated", None, f"{len(self._task.tried)} assignees tried")
            await self._record()
            await self._notify("escalated", "admins", "no assignee accepted the task")

    # --- Time -------------------------------------------------------------------------

    async def _next_moment(self) -> None:
        """Wait for a change or the next deadline (acceptance, SLA warning or breach). A change
        made while the loop was busy (recording, e-mailing) counts: it is consumed only here."""
        deadlines = [d for d in self._deadlines() if d is not None]
        timeout = max(min(deadlines) - workflow.now(), timedelta(0)) if deadlines else None
        with suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: self._dirty or self._routing or self._history_is_long(),
                timeout=timeout,
                timeout_summary="next task deadline",
            )
        self._dirty = False

    def _deadlines(self) -> list[datetime | None]:
        found: list[datetime | None] = [self._task.accept_due]
        for clock in self._task.clocks:
            if clock.met_at is None and clock.running_since is not None:
                found += [
                    None if clock.warned else clock.warn_at,
                    None if clock.breached else clock.due_at,
                ]
        return found

    async def _apply_deadlines(self) -> None:
        now = workflow.now()
        if self._task.accept_due is not None and now >= self._task.accept_due:
            self._event(
                "acceptance_expired",
                None,
                str(self._task.assignee.id if self._task.assignee else ""),
            )
            self._skip_assignee()
        for clock in self._task.clocks:
            if clock.met_at is not None or clock.running_since is None:
                continue
            if not clock.breached and clock.due_at is not None and now >= clock.due_at:
                clock.breached = clock.warned = True
                self._breaches.add(1, {"sla": clock.kind})
                self._event("sla_breached", None, clock.kind)
                await self._notify("sla_breached", "admins", clock.kind)
            elif not clock.warned and clock.warn_at is not None and now >= clock.warn_at:
                clock.warned = True
                self._event("sla_warning", None, clock.kind)
                await self._notify("sla_warning", self._warning_recipients(), clock.kind)

    async def _start_clocks(self) -> None:
        target = self._policy.sla[self._task.fields.priority]
        self._task.clocks = [
            SlaClock(kind="response", budget_minutes=target.response_minutes),
            SlaClock(kind="resolution", budget_minutes=target.resolution_minutes),
        ]
        await self._resume_clocks(record=False)

    async def _pause_clocks(self, *, record: bool = True) -> None:
        now = workflow.now()
        for clock in self._running():
            assert clock.running_since is not None
            clock.used_minutes += await self._used(clock.running_since, now)
            clock.running_since = clock.warn_at = clock.due_at = None
        if record:
            self._event("sla_paused")

    async def _resume_clocks(self, *, record: bool = True) -> None:
        now = workflow.now()
        for clock in self._task.clocks:
            if clock.met_at is not None or clock.running_since is not None:
                continue
            clock.running_since = now
            remaining = clock.budget_minutes - clock.used_minutes
            warn = clock.budget_minutes * _WARN_AT - clock.used_minutes
            plan = await workflow.execute_local_activity_method(
                TaskActivities.plan_sla,
                SlaPlanRequest(
                    calendar=self._policy.calendar,
                    start=now,
                    remaining_minutes=remaining,
                    warn_remaining_minutes=None if clock.warned else max(warn, 0.0),
                ),
                start_to_close_timeout=_PLAN_TIMEOUT,
                summary=f"{clock.kind} deadline in business hours",
            )
            clock.due_at, clock.warn_at = plan.due_at, plan.warn_at
        if record:
            self._event("sla_resumed")

    async def _stop_clocks(self) -> None:
        if self._task.status is TaskStatus.DONE:
            self._meet("resolution")
        await self._pause_clocks(record=False)

    def _running(self) -> list[SlaClock]:
        return [c for c in self._task.clocks if c.met_at is None and c.running_since is not None]

    async def _used(self, start: datetime, end: datetime) -> float:
        used: float = await workflow.execute_local_activity_method(
            TaskActivities.sla_used,
            SlaUsage(calendar=self._policy.calendar, start=start, end=end),
            start_to_close_timeout=_PLAN_TIMEOUT,
            summary="business minutes used",
        )
        return used

    def _first_action(self) -> None:
        self._meet("response")

    def _meet(self, kind: SlaKind) -> None:
        for clock in self._task.clocks:
            if clock.kind == kind and clock.met_at is None:
                clock.met_at = workflow.now()

    # --- State ------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._task.status in TERMINAL:
            raise ApplicationError(
                f"The task is {self._task.status.value}: it cannot change.", type=TASK_CLOSED
            )

    def _is_assignee(self, user_id: uuid.UUID) -> bool:
        return self._task.assignee is not None and self._task.assignee.id == user_id

    def _event(
        self, event: TaskEventName, by: uuid.UUID | None = None, detail: str | None = None
    ) -> None:
        self._task.events.append(TaskEvent(at=workflow.now(), event=event, by=by, detail=detail))

    def _history_is_long(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self._policy.history_limit
        )

    def _warning_recipients(self) -> Recipients:
        """Who hears of a deadline coming: the person holding the task; the tenant admins
        while nobody does (unassigned, escalated) or an agent does."""
        assignee = self._task.assignee
        return "assignee" if assignee is not None and assignee.kind == "user" else "admins"

    async def _notify(self, kind: NoticeKind, to: Recipients, detail: str) -> None:
        assignee = self._task.assignee
        notice = TaskNotice(
            task_id=self._task.task_id,
            kind=kind,
            to=to,
            idempotency_key=f"{workflow.info().workflow_id}:{kind}:{len(self._task.events)}",
            detail=detail,
            # By name: the projection is written after the notice, so it may not show them.
            assignee_id=assignee.id if to == "assignee" and assignee is not None else None,
        )
        try:
            await workflow.execute_activity_method(
                TaskActivities.notify_task,
                notice,
                start_to_close_timeout=timedelta(seconds=60),
                schedule_to_close_timeout=_NOTICE_WINDOW,
                summary=f"e-mail: {kind}",
            )
        except ActivityError as err:  # a mail outage is logged, never fatal
            workflow.logger.warning("the %s notice could not be sent: %s", kind, err.cause)

    def _biz_status(self) -> str:
        """The status, or ``breached`` while an open task is past an SLA deadline."""
        if self._task.status not in TERMINAL and any(c.breached for c in self._task.clocks):
            return "breached"
        return self._task.status.value

    def _sla_deadline(self) -> datetime | None:
        """The earliest deadline of a clock not yet met (a breached one's is in the past, so
        ``SlaDeadline < now`` finds breached tasks); none while paused or once met."""
        due = [c.due_at for c in self._running() if c.due_at is not None]
        return min(due) if due else None

    async def _record(self) -> None:
        """Write the projection row, ``BizStatus`` and ``SlaDeadline``."""
        task = self._task
        clocks = {clock.kind: clock for clock in task.clocks}
        deadline = self._sla_deadline()
        workflow.upsert_search_attributes(
            [
                BIZ_STATUS.value_set(self._biz_status()),
                SLA_DEADLINE.value_set(deadline) if deadline else SLA_DEADLINE.value_unset(),
            ]
        )
        await workflow.execute_activity_method(
            TaskActivities.record_task,
            TaskRow(
                task_id=task.task_id,
                tenant_id=task.tenant_id,
                project_id=task.project_id,
                created_by=task.created_by,
                created_at=task.created_at,
                title=task.fields.title,
                status=task.status,
                priority=task.fields.priority,
                due_at=task.fields.due_at,
                labels=task.fields.labels,
                assignee_id=task.assignee.id if task.assignee else None,
                assignee_agent_id=task.assignee.agent_id if task.assignee else None,
                accepted=task.accepted,
                accept_due=task.accept_due,
                response_due=_due(clocks.get("response")),
                resolution_due=_due(clocks.get("resolution")),
                breached=any(c.breached for c in task.clocks),
                escalated=task.escalated,
            ),
            start_to_close_timeout=_STORE_TIMEOUT,
            summary=f"record the task: {task.status.value}",
        )
        self._listed = True


#: Agent outcomes after which nothing is left to decide.
_SETTLED = frozenset({DecisionOutcome.NO_ACTION, DecisionOutcome.APPLIED, DecisionOutcome.APPROVED})


def _due(clock: SlaClock | None) -> datetime | None:
    return clock.due_at if clock is not None and clock.met_at is None else None
