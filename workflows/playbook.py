"""Playbook: one run of a playbook document, step by step (``playbook:{run_id}``); see
:mod:`models.playbooks` for the document."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError
from temporalio.workflow import ChildWorkflowHandle, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    # Activities by name: their module reaches the tenant's systems.
    from core.search import BIZ_PROCESS, BIZ_STATUS, TENANT_ID
    from models.agents import AGENTS, AgentRunStart, AgentRunState, AgentRunStatus
    from models.approval import ApprovalKind, ApprovalOutcome, ApprovalRequest, ApprovalStatus
    from models.content import (
        ContentFields,
        ContentItemState,
        ContentStatus,
        PublishStart,
        ReviewPolicy,
        Submission,
    )
    from models.playbooks import (
        END,
        ActionStep,
        AgentStep,
        ApprovalStep,
        BranchStep,
        PlaybookAction,
        PlaybookControl,
        PlaybookRunRow,
        PlaybookStart,
        PlaybookState,
        PlaybookStatus,
        PublishStep,
        Step,
        StepRecord,
        TemplateError,
        WaitStep,
        resolve,
    )
    from workflows import agent_run, approval, metering, publish

PROCESS = "playbook"
#: Refusal type of the control updates (the API maps it to a 409).
NOT_RUNNING = "PlaybookNotRunning"
_STORE_TIMEOUT = timedelta(seconds=30)
_ACTION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1)
)


def workflow_id(run_id: uuid.UUID) -> str:
    return f"playbook:{run_id}"


def action_key(run_id: uuid.UUID, step_id: str) -> str:
    """The idempotency key of a run's action step (kept with what the action creates)."""
    return f"playbook-{run_id.hex}-{step_id}"


class StepFailed(Exception):
    """The run stops at a step: the reason names it."""


@workflow.defn
class PlaybookWorkflow:
    """One run of a playbook: its steps in order, or where a step goes.

    - ``agent`` steps are ``AgentRunWorkflow`` children with the tenant's configuration of
      the agent (its review rules included); a failed run fails the playbook.
    - ``action`` steps are the ``playbook_action`` activity, each with a key fixed here.
    - ``approval`` steps are ``ApprovalWorkflow`` children (kind ``playbook_step``).
    - ``branch`` steps choose the next step; ``wait`` steps are durable timers.
    - ``publish`` steps start the item's ``PublishWorkflow`` (a child that outlives the run,
      as every item's does) submitted at once, and wait until it is published.
    - **pause** / **resume** (updates) hold the run before its next step; **cancel** ends it
      at once, cancelling a wait or a pending approval.

    The run counts one workflow run as it starts; its child runs are part of it.
    """

    @workflow.init
    def __init__(self, start: PlaybookStart) -> None:
        self._start = start
        self._document = start.document
        self._state = PlaybookState(run_id=start.run_id, playbook_id=start.document.id)
        self._shown = self._state
        self._paused = False
        self._cancelled = False
        self._listed = False
        self._child: ChildWorkflowHandle[Any, Any] | None = None

    @workflow.run
    async def run(self, start: PlaybookStart) -> PlaybookState:
        """The steps, until the end, a failure or a cancel."""
        await self._record()
        await metering.count_run(start.tenant_id)
        step_id = self._document.steps[0].id
        failure: StepFailed | None = None
        try:
            while step_id != END:
                await workflow.wait_condition(lambda: not self._paused or self._cancelled)
                if self._cancelled:
                    break
                step_id = await self._run(self._document.step(step_id))
        except StepFailed as err:
            failure = err
        self._shown = self._state.model_copy(deep=True)  # until the end is recorded
        if failure is not None:
            self._state.status = PlaybookStatus.FAILED
            self._state.error = str(failure)
        elif self._cancelled:
            self._state.status = PlaybookStatus.CANCELLED
        else:
            self._state.status = PlaybookStatus.COMPLETED
        self._state.current = None
        self._state.finished_at = workflow.now()
        await self._record()
        self._shown = self._state
        return self._state

    # --- Control ----------------------------------------------------------------------

    @workflow.update
    async def listed(self) -> PlaybookState:
        """The run once its listing row is written (the API starts runs with it)."""
        await workflow.wait_condition(lambda: self._listed)
        return self._state

    @workflow.update
    async def pause(self, command: PlaybookControl) -> PlaybookState:
        """Hold the run before its next step (a step under way finishes)."""
        self._control("paused", command)
        self._paused = True
        self._state.status = PlaybookStatus.PAUSED
        await self._record()
        return self._state

    @pause.validator
    def _check_pause(self, command: PlaybookControl) -> None:
        """Only a running run."""
        self._require(PlaybookStatus.RUNNING)

    @workflow.update
    async def resume(self, command: PlaybookControl) -> PlaybookState:
        """Go on from where the run was held."""
        self._control("resumed", command)
        self._paused = False
        self._state.status = PlaybookStatus.RUNNING
        await self._record()
        return self._state

    @resume.validator
    def _check_resume(self, command: PlaybookControl) -> None:
        """Only a paused run."""
        self._require(PlaybookStatus.PAUSED)

    @workflow.update
    async def cancel(self, command: PlaybookControl) -> PlaybookState:
        """End the run: a wait or a pending approval is cancelled; nothing more runs."""
        self._control("cancelled", command)
        self._cancelled = True
        if self._child is not None:
            self._child.cancel()
        await workflow.wait_condition(lambda: self._state.finished_at is not None)
        return self._state

    @cancel.validator
    def _check_cancel(self, command: PlaybookControl) -> None:
        """Only a run that has not ended."""
        self._require(PlaybookStatus.RUNNING, PlaybookStatus.PAUSED)

    @workflow.query
    def state(self) -> PlaybookState:
        """The run: status, the current step, the steps gone through and their results (its
        end once the runs' listing has it)."""
        return self._shown

    def _control(self, what: str, command: PlaybookControl) -> None:
        self._state.controls.append(
            f"{what} by {command.by} at {workflow.now():%Y-%m-%d %H:%M} UTC"
        )

    def _require(self, *statuses: PlaybookStatus) -> None:
        if self._state.status not in statuses or self._cancelled:
            raise ApplicationError(f"The run is {self._state.status.value}.", type=NOT_RUNNING)

    # --- Steps ------------------------------------------------------------------------

    async def _run(self, step: Step) -> str:
        """Run one step; where to go next."""
        record = StepRecord(step_id=step.id, kind=step.kind, started_at=workflow.now())
        self._state.steps.append(record)
        self._state.current = step.id
        await self._record()
        context = {"input": self._start.input, "steps": self._state.results}
        try:
            following = await self._step(step, context)
        except TemplateError as err:
            record.ok, record.detail = False, str(err)
            raise StepFailed(f"step {step.id}: {err}") from err
        except StepFailed as failure:
            record.ok, record.detail = False, str(failure)
            raise
        finally:
            record.finished_at = workflow.now()
        record.detail = following if following != END else "end"
        return following

    async def _step(self, step: Step, context: dict[str, Any]) -> str:
        if isinstance(step, AgentStep):
            self._state.results[step.id] = await self._agent(step, context)
        elif isinstance(step, ActionStep):
            self._state.results[step.id] = await self._action(step, context)
        elif isinstance(step, ApprovalStep):
            decision = await self._approval(step, context)
            self._state.results[step.id] = decision
            if decision["decision"] != ApprovalStatus.APPROVED.value:
                return step.on_reject
        elif isinstance(step, BranchStep):
            holds = step.when.holds(resolve(step.when.value, context))
            self._state.results[step.id] = {"holds": holds}
            return step.then if holds else step.otherwise
        elif isinstance(step, WaitStep):
            await self._wait(step.duration)
        else:
            assert isinstance(step, PublishStep)
            self._state.results[step.id] = await self._publish(step, context)
        return self._document.after(step)

    async def _agent(self, step: AgentStep, context: dict[str, Any]) -> dict[str, Any]:
        spec = AGENTS[step.agent_id]
        try:
            given = spec.input_model.model_validate(resolve(step.input, context))
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in error["loc"])
            raise StepFailed(f"step {step.id}: input {where}: {error['msg']}") from None
        run_id = workflow.uuid4()
        result: AgentRunState = await self._child_run(
            agent_run.AgentRunWorkflow.run,
            AgentRunStart(
                run_id=run_id,
                tenant_id=self._start.tenant_id,
                agent_id=spec.id,
                started_by=self._start.started_by,
                created_at=workflow.now(),
                input=given.model_dump(mode="json"),
                config=self._start.agents[spec.id],
            ),
            agent_run.workflow_id(run_id),
            agent_run.PROCESS,
            f"Agent run {spec.id} {run_id} of playbook {self._start.run_id}",
        )
        if result.status is AgentRunStatus.FAILED:
            raise StepFailed(f"step {step.id}: the agent failed: {result.error}")
        outcome = result.result
        return {
            "run_id": str(run_id),
            "outcome": result.outcome.value if result.outcome else None,
            "confidence": outcome.confidence if outcome else None,
            "output": outcome.output.model_dump(mode="json") if outcome else None,
        }

    async def _action(self, step: ActionStep, context: dict[str, Any]) -> dict[str, Any]:
        try:
            answer: dict[str, Any] = await workflow.execute_activity(
                "playbook_action",
                PlaybookAction(
                    tenant_id=self._start.tenant_id,
                    started_by=self._start.started_by,
                    action=step.action,
                    args=resolve(step.args, context),
                    key=action_key(self._start.run_id, step.id),
                ),
                result_type=dict,
                start_to_close_timeout=timedelta(seconds=60),
                schedule_to_close_timeout=timedelta(minutes=10),
                retry_policy=_ACTION_RETRY,
                summary=f"{step.id}: {step.action.value}",
            )
        except ActivityError as err:
            raise StepFailed(f"step {step.id}: {_reason(err)}") from err
        return answer

    async def _approval(self, step: ApprovalStep, context: dict[str, Any]) -> dict[str, Any]:
        approval_id = workflow.uuid4()
        facts = {k: str(v)[:2000] for k, v in resolve(step.facts, context).items()}
        request = ApprovalRequest(
            approval_id=approval_id,
            kind=ApprovalKind.PLAYBOOK_STEP,
            tenant_id=self._start.tenant_id,
            subject=str(resolve(step.subject, context))[:300],
            decider_role=self._start.approver,
            facts={"playbook": self._document.name, "step": step.id, **facts},
        )
        outcome: ApprovalOutcome | None = await self._child_run(
            approval.ApprovalWorkflow.run,
            request,
            approval.workflow_id(approval_id),
            approval.PROCESS,
            f"Playbook step review {approval_id}",
            status=ApprovalStatus.PENDING.value,
        )
        if outcome is None:  # cancelled with the run
            return {"approval_id": str(approval_id), "decision": "cancelled"}
        return {
            "approval_id": str(approval_id),
            "decision": outcome.status.value,
            "reason": outcome.reason,
        }

    async def _wait(self, duration: timedelta) -> None:
        try:
            await workflow.wait_condition(lambda: self._cancelled, timeout=duration)
        except TimeoutError:
            return

    async def _publish(self, step: PublishStep, context: dict[str, Any]) -> dict[str, Any]:
        content_id = workflow.uuid4()
        try:
            fields = ContentFields(
                title=str(resolve(step.title, context)),
                body=str(resolve(step.body, context)),
                excerpt=str(resolve(step.excerpt, context)),
                meta_description=resolve(step.meta_description, context),
            )
            connection_id = uuid.UUID(str(resolve(step.connection_id, context)))
        except (ValidationError, ValueError) as exc:
            raise StepFailed(f"step {step.id}: the item is invalid: {exc}") from None
        item = ContentItemState(
            content_id=content_id,
            tenant_id=self._start.tenant_id,
            connection_id=connection_id,
            created_by=self._start.started_by,
            created_at=workflow.now(),
            fields=fields,
        )
        await workflow.start_child_workflow(
            publish.PublishWorkflow.run,
            PublishStart(
                item=item,
                review=ReviewPolicy(required=False),
                submission=Submission(submitted_by=self._start.started_by),
            ),
            id=publish.workflow_id(content_id),
            parent_close_policy=ParentClosePolicy.ABANDON,
            static_summary=f"Content item {content_id} of playbook {self._start.run_id}",
            search_attributes=self._attributes(publish.PROCESS, ContentStatus.DRAFT.value),
        )
        try:
            published: dict[str, Any] = await workflow.execute_activity(
                "await_publication",
                content_id,
                result_type=dict,
                start_to_close_timeout=timedelta(minutes=30),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=_ACTION_RETRY,
                summary=f"{step.id}: wait for the post",
            )
        except ActivityError as err:
            raise StepFailed(f"step {step.id}: {_reason(err)}") from err
        return published

    async def _child_run(
        self,
        run: Any,
        argument: Any,
        child_id: str,
        process: str,
        summary: str,
        status: str = "running",
    ) -> Any:
        """A child the run waits for; ``None`` when the run's cancel cancelled it."""
        self._child = await workflow.start_child_workflow(
            run,
            argument,
            id=child_id,
            parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
            static_summary=summary,
            search_attributes=self._attributes(process, status),
        )
        try:
            return await self._child
        except ChildWorkflowError as err:
            if self._cancelled:
                return None
            raise StepFailed(f"{summary}: {_reason(err)}") from err
        finally:
            self._child = None

    def _attributes(self, process: str, status: str) -> TypedSearchAttributes:
        return TypedSearchAttributes(
            [
                SearchAttributePair(TENANT_ID, str(self._start.tenant_id)),
                SearchAttributePair(BIZ_PROCESS, process),
                SearchAttributePair(BIZ_STATUS, status),
            ]
        )

    async def _record(self) -> None:
        state = self._state
        workflow.upsert_search_attributes([BIZ_STATUS.value_set(state.status.value)])
        await workflow.execute_activity(
            "record_playbook_run",
            PlaybookRunRow(
                run_id=state.run_id,
                tenant_id=self._start.tenant_id,
                playbook_id=state.playbook_id,
                started_by=self._start.started_by,
                created_at=self._start.created_at,
                status=state.status,
                current=state.current,
                error=state.error,
                finished_at=state.finished_at,
            ),
            start_to_close_timeout=_STORE_TIMEOUT,
            summary=f"record the run: {state.status.value}",
        )
        self._listed = True


def _reason(err: ActivityError | ChildWorkflowError) -> str:
    cause = err.cause
    while isinstance(cause, ActivityError | ChildWorkflowError) and cause.cause is not None:
        cause = cause.cause
    return cause.message if isinstance(cause, ApplicationError) else str(cause)
