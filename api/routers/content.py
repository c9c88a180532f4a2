"""Content publishing over HTTP: a tenant's content items, their review, schedule and publishing
to the tenant's CMS, and the tenant's publishing settings.

Each item is a ``PublishWorkflow`` (``publish:{content_id}``): edits and actions are its updates
(refusals become 404 / 409 / 422 and change nothing), one item is its query, and the listing
reads the ``content_items`` projection its activities write. Review decisions go through the
approvals queue (``/api/v1/approvals``, kind ``content_review``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select, tuple_
from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowHandle,
)
from temporalio.exceptions import ApplicationError

from api import workflow_calls
from api.billing_guard import read_only_guard
from api.deps import (
    CurrentPrincipal,
    SessionDep,
    SettingsDep,
    StorageDep,
    TemporalDep,
    require_role,
)
from api.pagination import decode_cursor, encode_cursor
from api.tenancy import owned, scoped
from api.workflow_calls import (
    Entity,
    IdempotencyKey,
    entity_dependency,
    update_id,
)
from connectors import registry
from connectors.storage import upload_problem
from core.errors import Conflict, NotFound, Unprocessable
from core.render import body_html
from core.search import start_options
from core.security import Principal
from models.approval import DeadlinePolicy
from models.connection import Connection, ConnectionStatus
from models.content import (
    Actor,
    ContentEdit,
    ContentFields,
    ContentItem,
    ContentItemState,
    ContentPolicy,
    ContentStatus,
    EditCommand,
    ImageCheck,
    ImageUpload,
    PublishStart,
    Reschedule,
    ReviewerRole,
    ReviewPolicy,
    Submission,
    UnpublishMode,
    UnpublishRequest,
)
from models.onboarding import sealed_key
from models.user import Role
from workflows.publish import (
    INVALID_CONTENT,
    NOT_NOW,
    PROCESS,
    UNKNOWN_UPLOAD,
    PublishWorkflow,
    workflow_id,
)

router = APIRouter(prefix="/api/v1/content", tags=["content"], dependencies=[read_only_guard])
Author = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN, Role.USER))]
TenantAdmin = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN))]
Item = WorkflowHandle[PublishWorkflow, ContentStatus]


class ContentRequest(ContentFields):
    """A new item and the CMS connection it is published to (one of your tenant's)."""

    connection_id: uuid.UUID
    featured_image: None = Field(default=None, description="set through /featured-image")


class ContentView(ContentItemState):
    """The item with its body rendered and sanitised as it will be published (the
    reviewers' preview)."""

    html: str
    live: bool = Field(description="the item's post is published at the CMS")

    @classmethod
    def of(cls, state: ContentItemState) -> ContentView:
        live = state.post is not None and state.post.status == "published"
        return cls(**state.model_dump(), html=body_html(state.fields), live=live)


class ContentListItem(BaseModel):
    content_id: uuid.UUID
    connection_id: uuid.UUID
    title: str
    status: ContentStatus
    revision: int
    publish_at: datetime | None
    post_id: str | None
    url: str | None
    slug: str | None
    published_at: datetime | None
    approval_id: uuid.UUID | None
    error: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: ContentItem) -> ContentListItem:
        return cls(
            content_id=row.id,
            connection_id=row.connection_id,
            title=row.title,
            status=row.status,
            revision=row.revision,
            publish_at=row.publish_at,
            post_id=row.post_id,
            url=row.url,
            slug=row.slug,
            published_at=row.published_at,
            approval_id=row.approval_id,
            error=row.error,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class ContentPage(BaseModel):
    items: list[ContentListItem]
    next_cursor: str | None


class PublishTime(BaseModel):
    """A publish time, in the future (with a time zone). Omitted: publish now."""

    publish_at: datetime | None = None

    @model_validator(mode="after")
    def _future(self) -> PublishTime:
        at = self.publish_at
        if at is not None:
            if at.tzinfo is None:
                raise ValueError("publish_at needs a time zone (e.g. 2027-01-01T09:00:00Z)")
            if at <= datetime.now(UTC):
                raise ValueError("publish_at is in the past: omit it to publish now")
        return self


class Schedule(PublishTime):
    publish_at: datetime


class UnpublishBody(BaseModel):
    mode: UnpublishMode = UnpublishMode.DRAFT


class ImageRequest(BaseModel):
    filename: str = Field(min_length=1, max_length=200, pattern=r"^[^/\\\r\n\"]+$")
    content_type: Literal["image/png", "image/jpeg"]
    size: int = Field(gt=0)
    alt_text: str = Field(default="", max_length=500)


class ImageTicket(BaseModel):
    upload_id: uuid.UUID
    upload_url: str
    method: Literal["PUT"]
    headers: dict[str, str]


class PolicyView(BaseModel):
    """Whether items are reviewed before they are published, which role decides the reviews
    (``tenant_admin``, or ``user`` for members named as reviewers), and the review's deadlines
    (hours from the submit)."""

    review_required: bool = False
    reviewer_role: ReviewerRole = Field(
        default="tenant_admin",
        description="who decides reviews: tenant_admin, or user (read-only members, agents "
        "and service accounts never review)",
    )
    remind_after_hours: int = Field(default=24, ge=1, le=24 * 30)
    escalate_after_hours: int = Field(default=48, ge=1, le=24 * 60)
    expire_after_hours: int = Field(default=168, ge=1, le=24 * 90)

    @model_validator(mode="after")
    def _in_order(self) -> PolicyView:
        if not self.remind_after_hours < self.escalate_after_hours < self.expire_after_hours:
            raise ValueError("the deadlines must grow: remind < escalate < expire")
        return self

    def review_policy(self) -> ReviewPolicy:
        return ReviewPolicy(
            required=self.review_required,
            deadlines=DeadlinePolicy(
                remind_after=timedelta(hours=self.remind_after_hours),
                escalate_after=timedelta(hours=self.escalate_after_hours),
                expire_after=timedelta(hours=self.expire_after_hours),
            ),
            reviewer_role=Role(self.reviewer_role),
        )


# --- Settings ---------------------------------------------------------------------------


@router.get("/settings", summary="Your tenant's publishing settings")
async def get_policy(principal: CurrentPrincipal, session: SessionDep) -> PolicyView:
    """Defaults (no review) until a tenant admin sets them."""
    row = await session.get(ContentPolicy, principal.tenant_id)
    return _policy_view(row)


@router.put("/settings", summary="Change your tenant's publishing settings")
async def put_policy(body: PolicyView, principal: TenantAdmin, session: SessionDep) -> PolicyView:
    """Items created from now on follow them (an item keeps the settings it started with)."""
    row = await session.get(ContentPolicy, principal.tenant_id)
    if row is None:
        row = ContentPolicy(tenant_id=principal.tenant_id)
        session.add(row)
    policy = body.review_policy()
    row.review_required = policy.required
    row.remind_after = policy.deadlines.remind_after
    row.escalate_after = policy.deadlines.escalate_after
    row.expire_after = policy.deadlines.expire_after
    row.reviewer_role = policy.reviewer_role
    await session.commit()
    return _policy_view(row)


def _policy_view(row: ContentPolicy | None) -> PolicyView:
    if row is None:
        return PolicyView()
    return PolicyView(
        review_required=row.review_required,
        reviewer_role="user" if row.reviewer_role is Role.USER else "tenant_admin",
        remind_after_hours=int(row.remind_after.total_seconds() // 3600),
        escalate_after_hours=int(row.escalate_after.total_seconds() // 3600),
        expire_after_hours=int(row.expire_after.total_seconds() // 3600),
    )


# --- Items ------------------------------------------------------------------------------


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a content item")
async def create_content(
    body: ContentRequest,
    principal: Author,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
    key: IdempotencyKey,
) -> ContentView:
    """A draft published later to ``connection_id`` (a connected CMS of your tenant: 404 for
    another tenant's, 422 for one that is not a connected CMS). A retry with the same
    ``Idempotency-Key`` answers with the same item."""
    connection = await owned(session, Connection, body.connection_id, principal)
    if registry.get_spec(connection.connector_id).kind != "cms":
        raise Unprocessable(f"The connection ({connection.connector_id}) is not a CMS.")
    if connection.status is not ConnectionStatus.CONNECTED:
        raise Unprocessable("The connection is disconnected; reconnect it first.")
    policy = _policy_view(await session.get(ContentPolicy, principal.tenant_id))
    uid = update_id("create_content", principal, key)
    content_id = uuid.uuid5(uuid.NAMESPACE_URL, uid) if uid else uuid.uuid4()
    start = PublishStart(
        item=ContentItemState(
            content_id=content_id,
            tenant_id=principal.tenant_id,
            connection_id=connection.id,
            created_by=principal.user_id,
            created_at=datetime.now(UTC),
            fields=ContentFields.model_validate(body.model_dump(exclude={"connection_id"})),
        ),
        review=policy.review_policy(),
        reconnect_wait=settings.content_reconnect_wait,
    )
    options = start_options(
        settings,
        workflow_id=workflow_id(content_id),
        tenant_id=principal.tenant_id,
        process=PROCESS,
        status=ContentStatus.DRAFT.value,
        summary=f"Content item {content_id}",
    )
    operation = WithStartWorkflowOperation(PublishWorkflow.run, start, **options)
    async with workflow_calls.deadline(settings):
        state: ContentItemState = await client.execute_update_with_start_workflow(
            PublishWorkflow.listed, start_workflow_operation=operation, id=uid
        )
    return ContentView.of(state)


@router.get("", summary="Your tenant's content items")
async def list_content(
    principal: CurrentPrincipal,
    session: SessionDep,
    status: ContentStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ContentPage:
    """Most recently changed first, optionally of one ``status``. Pass ``next_cursor`` back
    as ``cursor`` for the next page."""
    query = scoped(select(ContentItem), ContentItem, principal)
    if status is not None:
        query = query.where(ContentItem.status == status)
    if cursor is not None:
        query = query.where(
            tuple_(ContentItem.updated_at, ContentItem.id) < tuple_(*decode_cursor(cursor))
        )
    order = (ContentItem.updated_at.desc(), ContentItem.id.desc())
    rows = list(await session.scalars(query.order_by(*order).limit(limit + 1)))
    page = rows[:limit]
    more = len(rows) > limit
    return ContentPage(
        items=[ContentListItem.of(row) for row in page],
        next_cursor=encode_cursor(page[-1].updated_at, page[-1].id) if more else None,
    )


ItemsDep = Annotated[
    Entity[ContentView],
    Depends(
        entity_dependency(
            ContentItem,
            workflow_id=workflow_id,
            state_query=PublishWorkflow.state,
            refuse=lambda cause: _refuse(cause),  # defined below, with the routes
            view=ContentView.of,
        )
    ),
]


@router.get("/{content_id}", summary="One content item, with its rendered preview")
async def get_content(content_id: uuid.UUID, items: ItemsDep) -> ContentView:
    """Fields, rendered HTML (as it will be published), status, review, schedule, the post
    at the CMS (id, URL, final slug) and the item's history."""
    return await items.state(content_id)


@router.patch("/{content_id}", summary="Edit a content item")
async def edit_content(
    content_id: uuid.UUID, body: ContentEdit, principal: Author, items: ItemsDep
) -> ContentView:
    """Only the fields given change. 409 while the item is in review, scheduled or being
    written (cancel first). A published item's post stays live until the new revision is
    submitted and published (through review again when review is required)."""
    if "title" in body.model_fields_set and body.title is None:
        raise Unprocessable("The title cannot be removed.")
    changes = body.model_dump(mode="json", include=body.model_fields_set)
    command = EditCommand(changes=changes, by=principal.user_id)
    return await items.update(content_id, PublishWorkflow.edit, command)


@router.post(
    "/{content_id}/submit",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Submit a content item for publishing",
)
async def submit_content(
    content_id: uuid.UUID, principal: Author, items: ItemsDep, body: PublishTime | None = None
) -> ContentView:
    """Publish now, or at ``publish_at`` (a time in the past is refused with 422: omit it to
    publish now). When your tenant requires review, its reviewer role (a tenant admin unless
    the settings name ``user``) decides first (``in_review``); changes requested or a rejection
    bring the item back to ``draft``."""
    publish_at = body.publish_at if body is not None else None
    submission = Submission(submitted_by=principal.user_id, publish_at=publish_at)
    return await items.update(content_id, PublishWorkflow.submit, submission)


@router.post("/{content_id}/schedule", summary="Move a content item's publish time")
async def reschedule_content(
    content_id: uuid.UUID, body: Schedule, principal: Author, items: ItemsDep
) -> ContentView:
    """While the item is in review or scheduled; 422 for a time in the past."""
    request = Reschedule(publish_at=body.publish_at, by=principal.user_id)
    return await items.update(content_id, PublishWorkflow.reschedule, request)


@router.post(
    "/{content_id}/publish",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Publish a content item now",
)
async def publish_content(content_id: uuid.UUID, principal: Author, items: ItemsDep) -> ContentView:
    """A scheduled item is published without waiting for its time; a draft is submitted to
    be published now (through review when required)."""
    state = await items.state(content_id)
    if state.status is ContentStatus.SCHEDULED:
        actor = Actor(by=principal.user_id)
        return await items.update(content_id, PublishWorkflow.publish_now, actor)
    submission = Submission(submitted_by=principal.user_id)
    return await items.update(content_id, PublishWorkflow.submit, submission)


@router.post("/{content_id}/cancel", summary="Withdraw a review or cancel a scheduled publish")
async def cancel_content(content_id: uuid.UUID, principal: Author, items: ItemsDep) -> ContentView:
    """The item becomes a draft again; 409 when there is nothing to cancel."""
    return await items.update(content_id, PublishWorkflow.cancel, Actor(by=principal.user_id))


@router.post(
    "/{content_id}/unpublish",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Take a content item's post down",
)
async def unpublish_content(
    content_id: uuid.UUID, principal: Author, items: ItemsDep, body: UnpublishBody | None = None
) -> ContentView:
    """``mode: draft`` (default) turns the post back into a draft at the CMS; ``trash`` moves
    it to the CMS's trash (publishing the item again makes a new post). 409 without a live
    post."""
    mode = body.mode if body is not None else UnpublishMode.DRAFT
    request = UnpublishRequest(mode=mode, by=principal.user_id)
    return await items.update(content_id, PublishWorkflow.unpublish, request)


# --- Featured image -----------------------------------------------------------------------


@router.post(
    "/{content_id}/featured-image",
    status_code=status.HTTP_201_CREATED,
    summary="Ask for a featured image's upload URL",
)
async def request_image_upload(
    content_id: uuid.UUID,
    body: ImageRequest,
    principal: Author,
    items: ItemsDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> ImageTicket:
    """A PNG or JPEG of at most ``content_image_max_bytes`` (422 otherwise). Upload it to the
    URL, then complete it."""
    limit = settings.content_image_max_bytes
    if body.size > limit:
        raise Unprocessable(f"The image has {body.size} bytes; at most {limit} are allowed.")
    uid = update_id("expect_image", principal, items.key)
    upload_id = uuid.uuid5(uuid.NAMESPACE_URL, uid) if uid else uuid.uuid4()
    upload = ImageUpload(
        upload_id=upload_id,
        storage_key=f"tenants/{principal.tenant_id}/content/{content_id}/{upload_id}",
        **body.model_dump(),
    )
    await items.update(content_id, PublishWorkflow.expect_image, upload)
    target = await storage.upload_target(upload.storage_key, body.content_type, body.size)
    return ImageTicket(
        upload_id=upload_id, upload_url=target.url, method="PUT", headers=target.headers
    )


@router.post(
    "/{content_id}/featured-image/{upload_id}/complete",
    summary="Check an uploaded featured image and use it",
)
async def complete_image_upload(
    content_id: uuid.UUID,
    upload_id: uuid.UUID,
    principal: Author,
    items: ItemsDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> ContentView:
    """The image becomes the item's featured image (a new revision). One that is empty, too
    large, or not the PNG or JPEG announced is removed: 422."""
    state = await items.state(content_id)
    pending = state.pending_image
    if pending is None or pending.upload_id != upload_id:
        raise NotFound(f"No image upload {upload_id} for this item.")
    sealed = sealed_key(pending.storage_key)
    stored = await storage.seal(pending.storage_key, sealed)
    if stored is None:
        raise Unprocessable("Nothing has been uploaded for this image yet.")
    problem = upload_problem(pending.content_type, stored, settings.content_image_max_bytes)
    if problem is not None:
        await storage.delete(sealed)
        refused = ImageCheck(upload_id=upload_id, accepted=False)
        await items.update(content_id, PublishWorkflow.settle_image, refused)
        raise Unprocessable(problem)
    check = ImageCheck(upload_id=upload_id, accepted=True, sealed_key=sealed, size=stored.size)
    return await items.update(content_id, PublishWorkflow.settle_image, check)


@router.delete("/{content_id}/featured-image", summary="Remove the featured image")
async def remove_image(content_id: uuid.UUID, principal: Author, items: ItemsDep) -> ContentView:
    """A new revision without a featured image."""
    actor = Actor(by=principal.user_id)
    return await items.update(content_id, PublishWorkflow.remove_image, actor)


def _refuse(cause: ApplicationError) -> None:
    """Translate the workflow's refusal types (see ``workflows/publish.py``)."""
    if cause.type == NOT_NOW:
        raise Conflict(cause.message)
    if cause.type == INVALID_CONTENT:
        raise Unprocessable(cause.message)
    if cause.type == UNKNOWN_UPLOAD:
        raise NotFound(cause.message)
