"""Content publishing: a tenant's content item, its review, its schedule and its post in the
tenant's CMS.

The item itself (title, body...) lives in its ``PublishWorkflow`` and, once published, in the
tenant's CMS. BizOSaaS keeps only the ``content_items`` projection for listing: metadata, the
external post's id, URL and slug, and the status.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.approval import ApprovalStatus, DeadlinePolicy
from models.base import Base, Timestamped, str_enum
from models.user import Role

#: Bodies are carried by the workflow: keep them well inside a history event.
MAX_BODY_CHARS = 200_000
#: Images a content item can feature (their magic bytes are checked on upload).
IMAGE_TYPES = frozenset({"image/png", "image/jpeg"})
SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
#: A category or tag name.
Term = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
#: The roles that may decide a tenant's content reviews: its admins, or its members with the
#: ``user`` role (never read-only members, agents or machines).
ReviewerRole = Literal["tenant_admin", "user"]


class ContentStatus(StrEnum):
    """Where an item is in its life; ``published`` and ``unpublished`` are about its post."""

    DRAFT = "draft"  # editable; a published item being edited keeps its post live meanwhile
    IN_REVIEW = "in_review"  # waiting for a reviewer (an Approval child)
    SCHEDULED = "scheduled"  # approved (or needing no review), waiting for its publish time
    PUBLISHING = "publishing"  # being written to the CMS
    WAITING_FOR_CONNECTION = "waiting_for_connection"  # the CMS refused the credentials
    PUBLISHED = "published"
    UNPUBLISHING = "unpublishing"
    UNPUBLISHED = "unpublished"
    FAILED = "failed"  # the last publish failed; the reason is kept, submitting again retries


class BodyFormat(StrEnum):
    HTML = "html"
    MARKDOWN = "markdown"


class UnpublishMode(StrEnum):
    DRAFT = "draft"  # the post goes back to a draft at the CMS
    TRASH = "trash"  # the post is moved to the CMS's trash; publishing again makes a new one


class FeaturedImage(BaseModel):
    """A checked image in object storage, uploaded to the CMS when the item is published."""

    upload_id: uuid.UUID
    storage_key: str
    filename: str
    content_type: str
    size: int
    alt_text: str = ""


class ImageUpload(BaseModel):
    """An image upload the workflow expects (one at a time)."""

    upload_id: uuid.UUID
    storage_key: str
    filename: str = Field(min_length=1, max_length=200, pattern=r"^[^/\\\r\n\"]+$")
    content_type: str
    size: int = Field(gt=0)
    alt_text: str = Field(default="", max_length=500)


class ContentFields(BaseModel):
    """What an author writes. ``body`` is HTML or Markdown (``body_format``); either is
    rendered and sanitised before it leaves BizOSaaS."""

    title: str = Field(min_length=1, max_length=300)
    body: str = Field(default="", max_length=MAX_BODY_CHARS)
    body_format: BodyFormat = BodyFormat.HTML
    excerpt: str = Field(default="", max_length=1000)
    slug: str | None = Field(default=None, max_length=190, pattern=SLUG_PATTERN)
    categories: list[Term] = Field(default_factory=list, max_length=20)
    tags: list[Term] = Field(default_factory=list, max_length=20)
    seo_title: str | None = Field(default=None, max_length=300)
    meta_description: str | None = Field(default=None, max_length=500)
    featured_image: FeaturedImage | None = None


class ContentEdit(BaseModel):
    """Changes to an item: only the fields given change (``slug: null`` lets the CMS pick)."""

    title: str | None = Field(default=None, min_length=1, max_length=300)
    body: str | None = Field(default=None, max_length=MAX_BODY_CHARS)
    body_format: BodyFormat | None = None
    excerpt: str | None = Field(default=None, max_length=1000)
    slug: str | None = Field(default=None, max_length=190, pattern=SLUG_PATTERN)
    categories: list[Term] | None = Field(default=None, max_length=20)
    tags: list[Term] | None = Field(default=None, max_length=20)
    seo_title: str | None = Field(default=None, max_length=300)
    meta_description: str | None = Field(default=None, max_length=500)


class EditCommand(BaseModel):
    """The fields an edit gives (a :class:`ContentEdit`'s set fields: payloads carry every
    field, so the ones not given are left out here)."""

    changes: dict[str, Any]
    by: uuid.UUID


class Reschedule(BaseModel):
    publish_at: datetime
    by: uuid.UUID


class Actor(BaseModel):
    """Who asks for an action without arguments (cancel, publish now, remove the image)."""

    by: uuid.UUID


class UnpublishRequest(BaseModel):
    mode: UnpublishMode = UnpublishMode.DRAFT
    by: uuid.UUID


class ImageCheck(BaseModel):
    """What the API found in an uploaded image: accepted (moved to ``sealed_key``) or not."""

    upload_id: uuid.UUID
    accepted: bool
    sealed_key: str | None = None
    size: int = 0


class ReviewPolicy(BaseModel):
    """The tenant's review setting, fixed into an item's workflow when it starts: whether
    items are reviewed, by which role (a :data:`ReviewerRole`), and the deadlines."""

    required: bool = False
    deadlines: DeadlinePolicy = DeadlinePolicy()
    reviewer_role: Role = Role.TENANT_ADMIN


class Submission(BaseModel):
    """Publish (after review when required) now, or at ``publish_at``."""

    submitted_by: uuid.UUID
    publish_at: datetime | None = None


class ReviewView(BaseModel):
    approval_id: uuid.UUID
    status: ApprovalStatus
    reason: str | None = None
    decided_at: datetime | None = None


class PublishedPost(BaseModel):
    """The item's post at the CMS, as last written and verified.

    ``verified`` false: the post was written but did not read back as written (the item
    failed with the reason); it exists at the CMS all the same, and the next publish writes
    over it. ``revision``: the item's revision last verified in it (0: none yet)."""

    post_id: str
    url: str | None = None
    slug: str
    status: str
    media_id: str | None = None
    # The storage key of the image ``media_id`` was uploaded from.
    media_key: str | None = None
    published_at: datetime | None = None
    revision: int = 0
    verified: bool = True


ContentEventName = Literal[
    "created",
    "edited",
    "submitted",
    "approved",
    "changes_requested",
    "rejected",
    "review_expired",
    "review_withdrawn",
    "scheduled",
    "rescheduled",
    "cancelled",
    "published",
    "updated",
    "waiting_for_connection",
    "reconnected",
    "failed",
    "unpublished",
]


class ContentEvent(BaseModel):
    at: datetime
    event: ContentEventName
    by: uuid.UUID | None = None
    detail: str | None = None


class ContentItemState(BaseModel):
    """The whole item: what the workflow's ``state`` query returns, and what it carries across
    continue-as-new."""

    content_id: uuid.UUID
    tenant_id: uuid.UUID
    connection_id: uuid.UUID
    created_by: uuid.UUID
    created_at: datetime
    status: ContentStatus = ContentStatus.DRAFT
    fields: ContentFields
    revision: int = 1
    publish_at: datetime | None = None
    review: ReviewView | None = None
    post: PublishedPost | None = None
    error: str | None = None
    pending_image: ImageUpload | None = None
    # Posts moved to the trash are never reused: publishing again makes post ``generation``.
    post_generation: int = 1
    waiting_until: datetime | None = None
    events: list[ContentEvent] = Field(default_factory=list)


class PublishStart(BaseModel):
    """A new item's workflow input (``item`` set on continue-as-new)."""

    item: ContentItemState
    review: ReviewPolicy = ReviewPolicy()
    reconnect_wait: timedelta = timedelta(days=3)
    # Submitted as it starts (a playbook publishing a draft it wrote); dropped at continue-as-new.
    submission: Submission | None = None
    # Continue-as-new once the history is this long (tests lower it).
    history_limit: int = 5_000


# --- Activity payloads ------------------------------------------------------------------


class CmsTarget(BaseModel):
    """Which connection an activity writes through (its credentials stay in the store)."""

    tenant_id: uuid.UUID
    connection_id: uuid.UUID
    content_id: uuid.UUID


class PostWrite(BaseModel):
    """Create (or find by ``marker``) or update the item's post, published."""

    target: CmsTarget
    marker: str
    post_id: str | None
    fields: ContentFields
    category_ids: list[str] = Field(default_factory=list)
    tag_ids: list[str] = Field(default_factory=list)
    media_id: str | None = None


class TermNames(BaseModel):
    target: CmsTarget
    categories: list[str]
    tags: list[str]


class TermIds(BaseModel):
    category_ids: list[str]
    tag_ids: list[str]


class ImagePush(BaseModel):
    target: CmsTarget
    image: FeaturedImage
    marker: str


class Unpublish(BaseModel):
    target: CmsTarget
    post_id: str
    mode: UnpublishMode


class ContentRow(BaseModel):
    """What the listing projection keeps of an item (never its body), and the change of its
    post to audit, if any (``published``, ``updated``, ``unpublished``)."""

    content_id: uuid.UUID
    tenant_id: uuid.UUID
    connection_id: uuid.UUID
    created_by: uuid.UUID
    created_at: datetime
    title: str
    status: ContentStatus
    revision: int
    publish_at: datetime | None = None
    approval_id: uuid.UUID | None = None
    post: PublishedPost | None = None
    error: str | None = None
    audit: Literal["published", "updated", "unpublished"] | None = None
    # Fixed by the workflow: a retried write audits once.
    audit_key: uuid.UUID | None = None
    actor: uuid.UUID | None = None


# --- Tables -------------------------------------------------------------------------------


class ContentItem(Timestamped, Base):
    """The listing projection: one row per item, written only by its workflow's activities."""

    __tablename__ = "content_items"
    __table_args__ = (
        # Newest first within a tenant (and status), keyset-paginated on (updated_at, id).
        Index("ix_content_items_listing", "tenant_id", "updated_at", "id"),
        Index("ix_content_items_status_listing", "tenant_id", "status", "updated_at", "id"),
        Index("ix_content_items_connection", "connection_id", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    connection_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE")
    )
    created_by: Mapped[uuid.UUID]
    title: Mapped[str] = mapped_column(String(300))
    status: Mapped[ContentStatus] = mapped_column(str_enum(ContentStatus))
    revision: Mapped[int]
    publish_at: Mapped[datetime | None]
    post_id: Mapped[str | None] = mapped_column(String(64))
    url: Mapped[str | None] = mapped_column(String(2000))
    slug: Mapped[str | None] = mapped_column(String(200))
    published_at: Mapped[datetime | None]
    approval_id: Mapped[uuid.UUID | None]
    error: Mapped[str | None] = mapped_column(Text)


class ContentPolicy(Timestamped, Base):
    """A tenant's publishing settings (defaults when it has no row)."""

    __tablename__ = "content_policies"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    review_required: Mapped[bool]
    remind_after: Mapped[timedelta]
    escalate_after: Mapped[timedelta]
    expire_after: Mapped[timedelta]
    # Who decides the reviews (a ReviewerRole).
    reviewer_role: Mapped[Role] = mapped_column(
        str_enum(Role), default=Role.TENANT_ADMIN, server_default=Role.TENANT_ADMIN.value
    )

    def review_policy(self) -> ReviewPolicy:
        return ReviewPolicy(
            required=self.review_required,
            deadlines=DeadlinePolicy(
                remind_after=self.remind_after,
                escalate_after=self.escalate_after,
                expire_after=self.expire_after,
            ),
            reviewer_role=self.reviewer_role,
        )
