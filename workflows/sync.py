"""Sync: one run of a tenant's sync profile (``sync:{profile_id}``), started by the profile's
Temporal Schedule. Only ids, cursors and counts pass through here: the records themselves are
read and written by the page activity."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    # Activities by name: their module reaches vendors over HTTP, which no workflow imports.
    from core.search import BIZ_STATUS
    from models.sync import (
        PageCommit,
        PageOutcome,
        PageRequest,
        SyncCounts,
        SyncFinish,
        SyncLeg,
        SyncRunState,
        SyncStart,
    )
    from workflows import metering

PROCESS = "sync"
#: Kept in step with ``activities.sync.LONG_WAIT_ERROR``.
LONG_WAIT_ERROR = "SyncRateLimited"
_STORE_TIMEOUT = timedelta(seconds=30)
#: Runs started before this change neither read ``finish_sync_run``'s answer nor halt.
FAILURE_POLICY_PATCH = "sync-failed-runs-halt"


@workflow.defn
class SyncWorkflow:
    """Bring the profile's target up to date with its source, page by page.

    The run starts from the profile's committed position (an interrupted run's next page, or
    the watermark of the last completed run). Each page is one activity that upserts its
    records at the target (nothing written twice: the id mapping and the target's marker are
    looked up first) and returns its counts and the next cursor; the position is committed
    after each page. A vendor asking to wait long is waited for durably; refused credentials
    end the run, pause the profile's Schedule and start the connection's check. A page that
    fails for good fails the run; when that makes too many failed runs in a row, the profile's
    Schedule is paused and its admins told first. After ``pages_per_run`` pages the run
    continues as new. A two-way profile's run then reads the target back to the source the
    same way (the backward leg, from its own position) before it completes. ``BizStatus``:
    ``running``, then ``completed``, ``paused``, ``auth_failed`` or ``failed``. Usage: a run of an
    active profile counts one workflow run as it begins; each page's commit counts the records
    written since the last one.
    """

    def __init__(self) -> None:
        self._state: SyncRunState | None = None

    @workflow.run
    async def run(self, state: SyncRunState) -> SyncCounts:
        """Sync from the committed position to the end of the source; the run's counts."""
        self._state = state
        if not state.started:
            start: SyncStart = await workflow.execute_activity(
                "begin_sync_run",
                args=[state.profile_id, workflow.info().run_id],
                result_type=SyncStart,
                start_to_close_timeout=_STORE_TIMEOUT,
                summary="record the run's start and read the cursor",
            )
            if not start.active:
                self._publish("paused")
                return state.counts
            if start.tenant_id is not None:
                await metering.count_run(start.tenant_id)
            state.started = True
            state.workflow_run_id = workflow.info().run_id
            state.updated_since = start.updated_since
            state.page_cursor = start.page_cursor
            state.pending_cursor = start.pending_cursor
            state.two_way = start.two_way
            state.back_updated_since = start.back_updated_since
            state.back_page_cursor = start.back_page_cursor
            state.back_pending_cursor = start.back_pending_cursor
        self._publish("running")
        pages_this_run = 0
        while True:
            workflow.set_current_details(f"page {state.pages + 1}{_leg(state)}: {_tally(state)}")
            page = await self._page(state)
            if page is None:
                continue  # slept for the vendor's limit: the same page again
            if page.auth_failed_connection is not None:
                await self._finish(state, "auth_failed")
                await workflow.execute_activity(
                    "suspend_sync",
                    args=[state.profile_id, page.auth_failed_connection],
                    start_to_close_timeout=_STORE_TIMEOUT,
                    summary="pause the schedule and check the connection",
                )
                self._publish("auth_failed")
                return state.counts
            state.counts = state.counts.add(page.counts)
            if page.max_updated_at is not None and (
                state.pending_cursor is None or page.max_updated_at > state.pending_cursor
            ):
                state.pending_cursor = page.max_updated_at
            state.page_cursor = page.next_cursor
            state.pages += 1
            pages_this_run += 1
            turning = state.two_way and state.leg is SyncLeg.FORWARD and state.page_cursor is None
            await workflow.execute_activity(
                "commit_sync_page",
                PageCommit(
                    profile_id=state.profile_id,
                    workflow_run_id=self._run_id(state),
                    counts=state.counts,
                    page_cursor=state.page_cursor,
                    pending_cursor=state.pending_cursor,
                    leg=state.leg,
                    leg_done=turning,
                ),
                start_to_close_timeout=_STORE_TIMEOUT,
                summary=f"commit page {state.pages}{_leg(state)}",
            )
            if turning:
                # The source is read to its end: now the target back to the source.
                state.leg = SyncLeg.BACKWARD
                state.updated_since = state.back_updated_since
                state.page_cursor = state.back_page_cursor
                state.pending_cursor = state.back_pending_cursor
            elif state.page_cursor is None:
                break
            if pages_this_run >= state.pages_per_run:
                workflow.continue_as_new(state)
        await self._finish(state, "completed")
        self._publish("completed")
        workflow.set_current_details(f"completed: {_tally(state)}")
        return state.counts

    @workflow.query
    def progress(self) -> SyncCounts:
        """The run's counts so far (``unchanged`` and ``conflicts`` too, for a two-way
        profile)."""
        return self._state.counts if self._state is not None else SyncCounts()

    async def _page(self, state: SyncRunState) -> PageOutcome | None:
        """One page; None after sleeping out a long vendor limit. Other failures end the run
        (its committed position is kept for the next one)."""
        try:
            page: PageOutcome = await workflow.execute_activity(
                "sync_page",
                PageRequest(
                    profile_id=state.profile_id,
                    updated_since=state.updated_since,
                    page_cursor=state.page_cursor,
                    page_size=state.page_size,
                    leg=state.leg,
                ),
                result_type=PageOutcome,
                start_to_close_timeout=timedelta(minutes=10),
                # A killed worker's page is retried on another this soon.
                heartbeat_timeout=timedelta(seconds=15),
                retry_policy=RetryPolicy(
                    maximum_interval=timedelta(minutes=1), maximum_attempts=20
                ),
                summary=f"sync page {state.pages + 1}{_leg(state)}",
            )
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == LONG_WAIT_ERROR:
                details = cause.details[0] if cause.details else {}
                wait = timedelta(seconds=float(details.get("retry_after") or 60))
                workflow.set_current_details(f"rate limited: waiting {wait} for the vendor")
                await workflow.sleep(wait, summary="the vendor's rate limit")
                return None
            finished = await self._finish(state, "failed")
            if workflow.patched(FAILURE_POLICY_PATCH) and finished is not None and finished.halt:
                await workflow.execute_activity(
                    "halt_failing_sync",
                    args=[state.profile_id, finished.failed_runs],
                    start_to_close_timeout=_STORE_TIMEOUT,
                    summary=f"pause the schedule after {finished.failed_runs} failed runs",
                )
            self._publish("failed")
            raise
        return page

    async def _finish(self, state: SyncRunState, outcome: str) -> SyncFinish | None:
        """Record the run's outcome; None from runs recorded before the activity answered."""
        finished: SyncFinish | None = await workflow.execute_activity(
            "finish_sync_run",
            args=[state.profile_id, self._run_id(state), state.counts, outcome],
            result_type=SyncFinish,
            start_to_close_timeout=_STORE_TIMEOUT,
            summary=f"record the run: {outcome}",
        )
        return finished

    @staticmethod
    def _run_id(state: SyncRunState) -> str:
        return state.workflow_run_id or workflow.info().run_id

    def _publish(self, status: str) -> None:
        workflow.upsert_search_attributes([BIZ_STATUS.value_set(status)])


def _leg(state: SyncRunState) -> str:
    """How a two-way run's page reads in its details and summaries: which way it goes."""
    if not state.two_way:
        return ""
    return " (target to source)" if state.leg is SyncLeg.BACKWARD else " (source to target)"


def _tally(state: SyncRunState) -> str:
    counts = state.counts
    tally = (
        f"read {counts.read}, created {counts.created}, updated {counts.updated}, skipped "
        f"{counts.skipped}, failed {counts.failed}"
    )
    if state.two_way:
        tally += f", unchanged {counts.unchanged}, conflicts {counts.conflicts}"
    return tally
