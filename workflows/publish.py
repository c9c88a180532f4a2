"""Content publishing: one content item from draft, through review and its schedule, to a post
in the tenant's CMS, written exactly once, and kept in step with later edits (``publish:{id}``).
The item's content lives here; its post lives in the CMS; the listing projection holds neither."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError
from temporalio.workflow import ChildWorkflowHandle, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    # Activities by name: their module reaches the CMS over HTTP, which no workflow imports.
    from core.search import BIZ_PROCESS, BIZ_STATUS, TENANT_ID
    from models.approval import (
        ApprovalKind,
        ApprovalOutcome,
        ApprovalRequest,
        ApprovalStatus,
    )
    from models.billing import UsageMetric
    from models.content import (
        Actor,
        CmsTarget,
        ContentEdit,
        ContentEvent,
        ContentEventName,
        ContentFields,
        ContentItemState,
        ContentRow,
        ContentStatus,
        EditCommand,
        FeaturedImage,
        ImageCheck,
        ImagePush,
        ImageUpload,
        PostWrite,
        PublishedPost,
        PublishStart,
        Reschedule,
        ReviewView,
        Submission,
        TermIds,
        TermNames,
        Unpublish,
        UnpublishMode,
        UnpublishRequest,
    )
    from workflows import approval, metering

PROCESS = "publish"
# Error types of refused updates; the API maps each to its HTTP status.
NOT_NOW = "ContentActionNotAllowed"  # 409: the item's status does not allow the action
INVALID_CONTENT = "InvalidContent"  # 422
UNKNOWN_UPLOAD = "UnknownUpload"  # 404
#: Kept in step with ``activities.publishing.MISMATCH`` and the connectors' ``AuthFailed``.
AUTH_FAILED = "AuthFailed"

EDITABLE = frozenset(
    {ContentStatus.DRAFT, ContentStatus.PUBLISHED, ContentStatus.UNPUBLISHED, ContentStatus.FAILED}
)
SUBMITTABLE = frozenset({ContentStatus.DRAFT, ContentStatus.UNPUBLISHED, ContentStatus.FAILED})
CANCELLABLE = frozenset(
    {
        ContentStatus.IN_REVIEW,
        ContentStatus.SCHEDULED,
        ContentStatus.WAITING_FOR_CONNECTION,
    }
)
_STORE_TIMEOUT = timedelta(seconds=30)
# A CMS that keeps failing (5xx, timeouts) is retried with backoff this long, then the publish
# fails with its reason (the author may submit again).
_CMS_WINDOW = timedelta(minutes=30)
_CMS_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=5)
)
_EVENTS_KEPT = 100
#: Patch: a post written but not verified stays on the item (runs before it kept no post).
KEEP_UNVERIFIED_POST = "keep-unverified-post"
T = TypeVar("T")


def workflow_id(content_id: uuid.UUID) -> str:
    return f"publish:{content_id}"


def post_marker(content_id: uuid.UUID, generation: int) -> str:
    """The idempotency key the item's post carries at the CMS (see ``connectors.cms``)."""
    return f"publish-{content_id.hex}-{generation}"


@workflow.defn
class PublishWorkflow:
    """One content item, for as long as it exists.

    - **Edit** (an update) while ``draft``, ``published``, ``unpublished`` or ``failed``: a
      published item being edited keeps its post live until the new revision is published.
    - **Submit**: when the tenant requires review, an :class:`~workflows.approval.ApprovalWorkflow`
      child asks the tenant's reviewer role (``tenant_admin`` unless the settings name
      ``user``); ``request_changes`` or ``reject`` bring the item back to ``draft`` with the
      reason, expiry too. Approved (or needing no review), it is ``scheduled`` until
      ``publish_at`` (a durable timer; reschedule, publish now and cancel are updates) or
      published at once.
    - **Publish**: the featured image first (found again by its marker on a retry), the
      categories and tags, then the post: created with a marker derived from the item's id, so
      a retry after a timeout finds the post it created; later revisions update the same post.
      The post is read back and checked; a mismatch fails the publish with the reason, and the
      item keeps the post (unverified: it exists at the CMS) for the next publish to write over.
      Published, the item is audited and counted as usage. The item's process counts one
      workflow run as it starts (none when a playbook's run started it).
    - Credentials the CMS refuses: the connection is checked (marked ``auth_failed``, the
      admins told) and the item waits ``reconnect_wait`` for the reconnect signal, then fails.
    - **Unpublish**: back to a draft at the CMS, or into its trash.

    ``BizStatus`` and the ``content_items`` projection follow the status.
    """

    @workflow.init
    def __init__(self, start: PublishStart) -> None:
        self._start = start
        self._item = start.item
        self._changed = False
        self._cancel = False
        self._publish_now = False
        self._restored = False
        self._unpublish_mode = UnpublishMode.DRAFT
        self._actor: uuid.UUID | None = start.item.created_by
        self._outcome: ApprovalOutcome | None = None
        self._review_ended = False
        self._listed = False

    @workflow.run
    async def run(self, start: PublishStart) -> ContentStatus:
        """Serve the item: review, schedule, publish and unpublish as asked; never ends by
        itself (it continues as new when its history grows long)."""
        await self._record()
        await metering.count_run(self._item.tenant_id)
        if start.submission is not None:
            self._submit(start.submission)
        while True:
            status = self._item.status
            if status is ContentStatus.IN_REVIEW:
                await self._review()
            elif status is ContentStatus.SCHEDULED:
                await self._wait_for_publish_time()
            elif status is ContentStatus.PUBLISHING:
                await self._publish()
            elif status is ContentStatus.WAITING_FOR_CONNECTION:
                await self._wait_for_connection()
            elif status is ContentStatus.UNPUBLISHING:
                await self._take_down()
            else:
                await self._idle(status)

    # --- Updates ----------------------------------------------------------------------

    @workflow.update
    async def listed(self) -> ContentItemState:
        """The item once its listing row is written (the API creates items with it)."""
        await workflow.wait_condition(lambda: self._listed)
        return self._item

    @workflow.update
    def edit(self, command: EditCommand) -> ContentItemState:
        """Change the item's fields (only those given); a new revision."""
        self._item.fields = self._merged(command.changes)
        self._revise(command.by, "edited")
        return self._item

    @edit.validator
    def _check_edit(self, command: EditCommand) -> None:
        """Edits while the item is not under review, scheduled or being written."""
        self._require(EDITABLE, "edit")
        try:
            self._merged(command.changes)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise ApplicationError(
                f"The edit is invalid: {where}: {error['msg']}", type=INVALID_CONTENT
            ) from None

    def _merged(self, changes: dict[str, Any]) -> ContentFields:
        """The fields with ``changes`` applied (checked as an edit, then as a whole)."""
        edit = ContentEdit.model_validate(changes).model_dump(include=set(changes))
        return ContentFields.model_validate({**self._item.fields.model_dump(), **edit})

    @workflow.update
    def submit(self, submission: Submission) -> ContentItemState:
        """Publish the current revision: through review when the tenant requires it, then at
        ``publish_at`` or at once."""
        self._submit(submission)
        return self._item

    def _submit(self, submission: Submission) -> None:
        self._actor = submission.submitted_by
        self._item.publish_at = submission.publish_at
        self._item.error = None
        self._event("submitted", submission.submitted_by)
        if self._start.review.required:
            self._set(ContentStatus.IN_REVIEW)
        else:
            self._schedule_or_publish()

    @submit.validator
    def _check_submit(self, submission: Submission) -> None:
        """Only a draft (or an unpublished or failed item), and not into the past."""
        self._require(SUBMITTABLE, "submit")
        self._check_time(submission.publish_at)

    @workflow.update
    def reschedule(self, request: Reschedule) -> ContentItemState:
        """Move the publish time of an item in review or scheduled."""
        self._item.publish_at = request.publish_at
        self._event("rescheduled", request.by, f"{request.publish_at:%Y-%m-%d %H:%M} UTC")
        self._changed = True
        return self._item

    @reschedule.validator
    def _check_reschedule(self, request: Reschedule) -> None:
        """Only while in review or scheduled, and not into the past."""
        self._require(frozenset({ContentStatus.IN_REVIEW, ContentStatus.SCHEDULED}), "reschedule")
        self._check_time(request.publish_at)

    @workflow.update
    def publish_now(self, actor: Actor) -> ContentItemState:
        """Publish a scheduled item without waiting for its time."""
        self._actor = actor.by
        self._publish_now = True
        return self._item

    @publish_now.validator
    def _check_publish_now(self, actor: Actor) -> None:
        """Only a scheduled item (anything else is submitted)."""
        self._require(frozenset({ContentStatus.SCHEDULED}), "publish now")

    @workflow.update
    def cancel(self, actor: Actor) -> ContentItemState:
        """Withdraw the review, cancel the scheduled publish or stop waiting for the
        connection: the item is a draft again."""
        self._event("cancelled", actor.by)
        self._publish_now = False
        if self._item.status is ContentStatus.IN_REVIEW:
            self._cancel = True
        else:
            self._item.publish_at = None
            self._set(ContentStatus.DRAFT)
        return self._item

    @cancel.validator
    def _check_cancel(self, actor: Actor) -> None:
        """Only while in review, scheduled or waiting for the connection."""
        self._require(CANCELLABLE, "cancel")

    @workflow.update
    def unpublish(self, request: UnpublishRequest) -> ContentItemState:
        """Take the live post down (to a draft, or into the trash)."""
        self._actor = request.by
        self._unpublish_mode = request.mode
        self._set(ContentStatus.UNPUBLISHING)
        return self._item

    @unpublish.validator
    def _check_unpublish(self, request: UnpublishRequest) -> None:
        """Only an item with a live post, not while it is being written."""
        post = self._item.post
        if post is None or post.status != "published":
            raise ApplicationError("The item has no published post.", type=NOT_NOW)
        self._require(EDITABLE, "unpublish")

    @workflow.update
    def expect_image(self, upload: ImageUpload) -> ContentItemState:
        """Hold a slot for an image upload (the last one asked for counts)."""
        self._item.pending_image = upload
        return self._item

    @expect_image.validator
    def _check_expect_image(self, upload: ImageUpload) -> None:
        """Images are edits."""
        self._require(EDITABLE, "change the image of")

    @workflow.update
    def settle_image(self, check: ImageCheck) -> ContentItemState:
        """The uploaded image passed the checks (it becomes the featured image) or not (the
        slot is freed)."""
        pending = self._item.pending_image
        assert pending is not None
        self._item.pending_image = None
        if check.accepted and check.sealed_key is not None:
            image = FeaturedImage(
                upload_id=pending.upload_id,
                storage_key=check.sealed_key,
                filename=pending.filename,
                content_type=pending.content_type,
                size=check.size,
                alt_text=pending.alt_text,
            )
            self._item.fields = self._item.fields.model_copy(update={"featured_image": image})
            self._revise(self._item.created_by, "edited", "featured image")
        return self._item

    @settle_image.validator
    def _check_settle_image(self, check: ImageCheck) -> None:
        """Only the upload the item waits for."""
        pending = self._item.pending_image
        if pending is None or pending.upload_id != check.upload_id:
            raise ApplicationError(f"No image upload {check.upload_id}.", type=UNKNOWN_UPLOAD)
        if check.accepted:
            self._require(EDITABLE, "change the image of")

    @workflow.update
    def remove_image(self, actor: Actor) -> ContentItemState:
        """The item has no featured image any more."""
        self._item.fields = self._item.fields.model_copy(update={"featured_image": None})
        self._revise(actor.by, "edited", "featured image removed")
        return self._item

    @remove_image.validator
    def _check_remove_image(self, actor: Actor) -> None:
        """Images are edits."""
        self._require(EDITABLE, "change the image of")

    @workflow.signal
    def connection_restored(self) -> None:
        """The item's connection works again (sent when it is reconnected or tests healthy)."""
        if self._item.status is ContentStatus.WAITING_FOR_CONNECTION:
            self._restored = True

    @workflow.query
    def state(self) -> ContentItemState:
        """The whole item: fields, status, review, schedule, its post and its history."""
        return self._item

    # --- Steps ------------------------------------------------------------------------

    async def _idle(self, status: ContentStatus) -> None:
        """Wait for the next action; record edits; continue as new when the history is long."""
        await workflow.wait_condition(
            lambda: self._item.status is not status or self._changed or self._history_is_long()
        )
        if self._item.status is status and not self._changed:
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(
                self._start.model_copy(update={"item": self._item, "submission": None})
            )
        await self._record()

    async def _review(self) -> None:
        """Ask the tenant's reviewers; back to draft unless approved."""
        approval_id = workflow.uuid4()
        self._item.review = ReviewView(approval_id=approval_id, status=ApprovalStatus.PENDING)
        self._cancel, self._outcome, self._review_ended = False, None, False
        await self._record()
        workflow.set_current_details(f"waiting for review {approval_id}")
        child = await workflow.start_child_workflow(
            approval.ApprovalWorkflow.run,
            self._approval_request(approval_id),
            id=approval.workflow_id(approval_id),
            # An item whose workflow ends takes its pending review out of the queue.
            parent_close_policy=ParentClosePolicy.REQUEST_CANCEL,
            static_summary=f"Content review {approval_id}",
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(TENANT_ID, str(self._item.tenant_id)),
                    SearchAttributePair(BIZ_PROCESS, approval.PROCESS),
                    SearchAttributePair(BIZ_STATUS, ApprovalStatus.PENDING.value),
                ]
            ),
        )
        collector = asyncio.create_task(self._collect(child))
        await workflow.wait_condition(lambda: self._review_ended or self._cancel)
        if not self._review_ended:
            child.cancel()
            await collector
        outcome = self._outcome
        status = outcome.status if outcome is not None else ApprovalStatus.WITHDRAWN
        self._item.review = ReviewView(
            approval_id=approval_id,
            status=status,
            reason=outcome.reason if outcome else None,
            decided_at=outcome.decided_at if outcome else workflow.now(),
        )
        if status is ApprovalStatus.APPROVED:
            self._event("approved", outcome.decided_by if outcome else None)
            self._schedule_or_publish()
        else:
            self._event(_REVIEW_EVENTS[status], outcome.decided_by if outcome else None)
            self._item.publish_at = None
            self._set(ContentStatus.DRAFT)
        await self._record()

    async def _collect(
        self, child: ChildWorkflowHandle[approval.ApprovalWorkflow, ApprovalOutcome]
    ) -> None:
        try:
            self._outcome = await child
        except ChildWorkflowError:
            self._outcome = None  # withdrawn (cancelled)
        self._review_ended = True

    async def _wait_for_publish_time(self) -> None:
        """Sleep until ``publish_at``, waking for a reschedule, publish now or cancel."""
        at = self._item.publish_at
        assert at is not None
        await self._record()
        workflow.set_current_details(f"scheduled for {at:%Y-%m-%d %H:%M} UTC")
        remaining = at - workflow.now()
        if remaining > timedelta(0):
            with suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: (
                        self._item.status is not ContentStatus.SCHEDULED
                        or self._item.publish_at != at
                        or self._publish_now
                    ),
                    timeout=remaining,
                    timeout_summary="publish time",
                )
        if self._item.status is not ContentStatus.SCHEDULED:
            return  # cancelled
        if self._item.publish_at != at and not self._publish_now:
            return  # rescheduled: wait again for the new time
        self._publish_now = False  # consumed here (one sent while recording still counts)
        self._set(ContentStatus.PUBLISHING)

    async def _publish(self) -> None:
        """Write the post (image, terms, post), verify it, record it."""
        await self._record()
        workflow.set_current_details(f"publishing revision {self._item.revision}")
        post = self._item.post
        first = post is None or post.revision == 0  # never verified yet
        try:
            written = await self._write()
        except ActivityError as err:
            await self._failed_write(err)
            return
        self._item.post = written.model_copy(
            update={"revision": self._item.revision, "published_at": written.published_at}
        )
        self._item.publish_at, self._item.error = None, None
        self._set(ContentStatus.PUBLISHED)
        self._event("published" if first else "updated", self._actor, written.url)
        await self._record(audit="published" if first else "updated")
        if first:
            await self._count_usage()

    async def _write(self) -> PublishedPost:
        item = self._item
        target = self._target()
        media_id = await self._image(target)
        terms = TermIds(category_ids=[], tag_ids=[])
        if item.fields.categories or item.fields.tags:
            terms = await self._cms(
                "resolve_terms",
                TermNames(target=target, categories=item.fields.categories, tags=item.fields.tags),
                TermIds,
                "find or create the categories and tags",
            )
        write = PostWrite(
            target=target,
            marker=post_marker(item.content_id, item.post_generation),
            post_id=item.post.post_id if item.post else None,
            fields=item.fields,
            category_ids=terms.category_ids,
            tag_ids=terms.tag_ids,
            media_id=media_id,
        )
        written: PublishedPost = await self._cms(
            "write_post", write, PublishedPost, "create or update the post"
        )
        try:
            verified: PublishedPost = await workflow.execute_activity(
                "verify_post",
                args=[write, written],
                result_type=PublishedPost,
                start_to_close_timeout=timedelta(seconds=60),
                schedule_to_close_timeout=_CMS_WINDOW,
                retry_policy=_CMS_RETRY,
                summary="read the post back and check it",
            )
        except ActivityError:
            if workflow.patched(KEEP_UNVERIFIED_POST):
                # The post exists at the CMS whatever it reads back as: the item shows it (id,
                # URL) and the next publish writes over it instead of looking for it.
                last = item.post.revision if item.post is not None else 0
                item.post = written.model_copy(update={"revision": last, "verified": False})
            raise
        return verified

    async def _image(self, target: CmsTarget) -> str | None:
        """The CMS media id of the featured image, uploaded once per image."""
        image = self._item.fields.featured_image
        if image is None:
            return None
        post = self._item.post
        if post is not None and post.media_key == image.storage_key:
            return post.media_id
        push = ImagePush(target=target, image=image, marker=f"media-{image.upload_id.hex}")
        media_id: str = await self._cms(
            "push_featured_image", push, str, "upload the featured image"
        )
        return media_id

    async def _cms(self, activity: str, argument: object, result: type[T], summary: str) -> T:
        value: T = await workflow.execute_activity(
            activity,
            argument,
            result_type=result,
            start_to_close_timeout=timedelta(seconds=60),
            # Writes heartbeat while the CMS answers: a killed worker's write is retried soon.
            heartbeat_timeout=timedelta(seconds=10),
            schedule_to_close_timeout=_CMS_WINDOW,
            retry_policy=_CMS_RETRY,
            summary=summary,
        )
        return value

    async def _failed_write(self, err: ActivityError) -> None:
        """Refused credentials: wait for the reconnect. Anything else: the publish failed."""
        cause = err.cause
        reason = cause.message if isinstance(cause, ApplicationError) else str(cause)
        if isinstance(cause, ApplicationError) and cause.type == AUTH_FAILED:
            until = workflow.now() + self._start.reconnect_wait
            self._item.waiting_until, self._item.error = until, reason
            self._set(ContentStatus.WAITING_FOR_CONNECTION)
            self._event("waiting_for_connection", None, reason)
            await self._record()
            await workflow.execute_activity(
                "check_connection",
                self._target(),
                start_to_close_timeout=_STORE_TIMEOUT,
                summary="mark the connection and tell the admins",
            )
            return
        self._item.error = f"Publishing failed: {reason}"
        self._set(ContentStatus.FAILED)
        self._event("failed", None, reason)
        await self._record()

    async def _wait_for_connection(self) -> None:
        """Until the connection is restored (then publish again) or ``reconnect_wait`` passes."""
        until = self._item.waiting_until
        assert until is not None
        workflow.set_current_details(f"waiting for the connection until {until:%Y-%m-%d %H:%M} UTC")
        self._restored = False
        with suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: (
                    self._restored or self._item.status is not ContentStatus.WAITING_FOR_CONNECTION
                ),
                timeout=max(until - workflow.now(), timedelta(0)),
                timeout_summary="reconnect deadline",
            )
        self._item.waiting_until = None
        if self._item.status is not ContentStatus.WAITING_FOR_CONNECTION:
            await self._record()  # cancelled
            return
        if self._restored:
            self._event("reconnected")
            self._set(ContentStatus.PUBLISHING)
            return
        self._item.error = (
            "The CMS refused the connection's credentials and it was not reconnected by "
            f"{until:%Y-%m-%d %H:%M} UTC. Reconnect it, then submit the item again."
        )
        self._set(ContentStatus.FAILED)
        self._event("failed", None, "not reconnected in time")
        await self._record()

    async def _take_down(self) -> None:
        """Unpublish the post; a failure leaves it published with the reason."""
        post = self._item.post
        assert post is not None
        mode = self._unpublish_mode
        await self._record()
        try:
            await self._cms(
                "unpublish_post",
                Unpublish(target=self._target(), post_id=post.post_id, mode=mode),
                type(None),
                f"unpublish the post ({mode.value})",
            )
        except ActivityError as err:
            cause = err.cause
            self._item.error = f"Unpublishing failed: {getattr(cause, 'message', cause)}"
            self._set(ContentStatus.PUBLISHED)
            await self._record()
            return
        if mode is UnpublishMode.TRASH:
            self._item.post = None
            self._item.post_generation += 1
        else:
            self._item.post = post.model_copy(update={"status": "draft"})
        self._set(ContentStatus.UNPUBLISHED)
        self._event("unpublished", self._actor, mode.value)
        await self._record(audit="unpublished")

    async def _count_usage(self) -> None:
        await metering.record_usage(
            self._item.tenant_id,
            UsageMetric.CONTENT_PUBLISHED,
            1,
            f"{workflow_id(self._item.content_id)}:{self._item.post_generation}:published",
            "count the published item as usage",
        )

    # --- State ------------------------------------------------------------------------

    def _require(self, allowed: frozenset[ContentStatus], action: str) -> None:
        status = self._item.status
        if status not in allowed:
            names = ", ".join(sorted(s.value for s in allowed))
            raise ApplicationError(
                f"Cannot {action} an item that is {status.value} (only when {names}).",
                type=NOT_NOW,
            )

    def _check_time(self, publish_at: datetime | None) -> None:
        if publish_at is not None and publish_at <= workflow.now():
            raise ApplicationError("The publish time has passed.", type=INVALID_CONTENT)

    def _schedule_or_publish(self) -> None:
        at = self._item.publish_at
        if at is not None and at > workflow.now():
            self._event("scheduled", self._actor, f"{at:%Y-%m-%d %H:%M} UTC")
            self._set(ContentStatus.SCHEDULED)
        else:
            self._set(ContentStatus.PUBLISHING)

    def _revise(self, by: uuid.UUID, event: ContentEventName, detail: str | None = None) -> None:
        self._item.revision += 1
        self._item.error = None
        self._event(event, by, detail)
        self._set(ContentStatus.DRAFT)
        self._changed = True

    def _set(self, status: ContentStatus) -> None:
        self._item.status = status

    def _event(
        self, event: ContentEventName, by: uuid.UUID | None = None, detail: str | None = None
    ) -> None:
        events = self._item.events
        events.append(ContentEvent(at=workflow.now(), event=event, by=by, detail=detail))
        del events[:-_EVENTS_KEPT]

    def _history_is_long(self) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= self._start.history_limit
        )

    def _target(self) -> CmsTarget:
        return CmsTarget(
            tenant_id=self._item.tenant_id,
            connection_id=self._item.connection_id,
            content_id=self._item.content_id,
        )

    def _approval_request(self, approval_id: uuid.UUID) -> ApprovalRequest:
        item = self._item
        facts = {"content_id": str(item.content_id), "revision": str(item.revision)}
        if self._actor is not None:
            # Who submitted it: among peers (reviewer role ``user``) they may not decide it.
            facts["submitted_by"] = str(self._actor)
        if item.publish_at is not None:
            facts["publish_at"] = item.publish_at.isoformat()
        return ApprovalRequest(
            approval_id=approval_id,
            kind=ApprovalKind.CONTENT_REVIEW,
            tenant_id=item.tenant_id,
            subject=f"Publish: {item.fields.title}"[:300],
            decider_role=self._start.review.reviewer_role,
            policy=self._start.review.deadlines,
            facts=facts,
        )

    async def _record(
        self, audit: Literal["published", "updated", "unpublished"] | None = None
    ) -> None:
        """Write the projection row and ``BizStatus`` for the current state."""
        self._changed = False
        item = self._item
        workflow.upsert_search_attributes([BIZ_STATUS.value_set(item.status.value)])
        row = ContentRow(
            content_id=item.content_id,
            tenant_id=item.tenant_id,
            connection_id=item.connection_id,
            created_by=item.created_by,
            created_at=item.created_at,
            title=item.fields.title,
            status=item.status,
            revision=item.revision,
            publish_at=item.publish_at,
            approval_id=item.review.approval_id if item.review else None,
            post=item.post,
            error=item.error,
            audit=audit,
            audit_key=workflow.uuid4() if audit else None,
            actor=self._actor,
        )
        await workflow.execute_activity(
            "record_content",
            row,
            start_to_close_timeout=_STORE_TIMEOUT,
            summary=f"record the item: {item.status.value}",
        )
        self._listed = True


_REVIEW_EVENTS: dict[ApprovalStatus, ContentEventName] = {
    ApprovalStatus.CHANGES_REQUESTED: "changes_requested",
    ApprovalStatus.REJECTED: "rejected",
    ApprovalStatus.EXPIRED: "review_expired",
    ApprovalStatus.WITHDRAWN: "review_withdrawn",
}
