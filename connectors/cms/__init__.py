"""The CMS port: a tenant's website content (posts, pages, media, categories, tags).

Vendor modules (``connectors/cms/<vendor>.py``) implement :class:`CMSPort`. Identifiers are the
vendor's, as strings. Statuses are the port's own vocabulary; each connector maps its vendor's.

Exactly-once publishing: a post (or a file) created with a ``marker`` (an idempotency key
chosen by the caller, e.g. the publishing workflow's id) can be found again with
:meth:`CMSPort.find_post_by_marker` (:meth:`CMSPort.find_media_by_marker`), so a retried
"create" first looks for what an earlier attempt may already have made.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from connectors.ports import Connector, ListQuery, Page

ContentStatus = Literal["draft", "pending", "scheduled", "published", "private"]

#: A marker is an idempotency key: letters, digits, ``-`` and ``_``.
MARKER_PATTERN = r"^[A-Za-z0-9_-]{8,100}$"


class Post(BaseModel):
    """A blog post as the site holds it."""

    id: str
    title: str
    content: str = Field(description="HTML as stored (not rendered)")
    excerpt: str = ""
    slug: str
    status: ContentStatus
    url: str | None = None
    author_id: str | None = None
    category_ids: list[str] = []
    tag_ids: list[str] = []
    featured_media_id: str | None = None
    published_at: datetime | None = None
    modified_at: datetime | None = None
    marker: str | None = None


class PostDraft(BaseModel):
    """A post to create. ``publish_at`` with status ``scheduled`` schedules it."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=500)
    content: str = ""
    excerpt: str = ""
    slug: str | None = Field(default=None, max_length=200)
    status: ContentStatus = "draft"
    category_ids: list[str] = []
    tag_ids: list[str] = []
    featured_media_id: str | None = None
    publish_at: datetime | None = None
    marker: str | None = Field(default=None, pattern=MARKER_PATTERN)


class PostUpdate(BaseModel):
    """Changes to a post: only the fields given are changed."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, min_length=1, max_length=500)
    content: str | None = None
    excerpt: str | None = None
    slug: str | None = Field(default=None, max_length=200)
    status: ContentStatus | None = None
    category_ids: list[str] | None = None
    tag_ids: list[str] | None = None
    featured_media_id: str | None = None
    publish_at: datetime | None = None


class PostQuery(ListQuery):
    """Which posts to list; no ``status`` lists every status the credentials can see."""

    status: list[ContentStatus] | None = None
    search: str | None = Field(default=None, max_length=200)


class SitePage(BaseModel):
    """A static page (About, Contact...): pages nest under a parent and have no terms."""

    id: str
    title: str
    content: str
    slug: str
    status: ContentStatus
    url: str | None = None
    parent_id: str | None = None
    menu_order: int = 0
    modified_at: datetime | None = None


class SitePageDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=500)
    content: str = ""
    slug: str | None = Field(default=None, max_length=200)
    status: ContentStatus = "draft"
    parent_id: str | None = None
    menu_order: int = 0


class SitePageUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, min_length=1, max_length=500)
    content: str | None = None
    slug: str | None = Field(default=None, max_length=200)
    status: ContentStatus | None = None
    parent_id: str | None = None
    menu_order: int | None = None


class Media(BaseModel):
    """An uploaded file (an image, mostly)."""

    id: str
    title: str
    url: str
    mime_type: str
    alt_text: str = ""
    created_at: datetime | None = None
    marker: str | None = None


class MediaUpload(BaseModel):
    """A file to upload; the bytes travel in the model, so keep it to images and documents."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, max_length=200, pattern=r"^[^/\\\r\n\"]+$")
    content_type: str = Field(pattern=r"^[\w.+-]+/[\w.+-]+$")
    data: bytes
    title: str | None = None
    alt_text: str = ""
    marker: str | None = Field(default=None, pattern=MARKER_PATTERN)


class Term(BaseModel):
    """A category or a tag."""

    id: str
    name: str
    slug: str
    description: str = ""
    parent_id: str | None = None
    count: int = 0


class TermDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    slug: str | None = Field(default=None, max_length=200)
    description: str = ""
    parent_id: str | None = Field(default=None, description="categories only")


class SiteUser(BaseModel):
    """A person registered on the site (a subscriber to its newsletter or members' area)."""

    id: str
    username: str
    email: str | None = None
    first_name: str = ""
    last_name: str = ""
    registered_at: datetime | None = None


class SiteUserDraft(BaseModel):
    """A new site user. ``external_id`` is this platform's marker of the record the user comes
    from: the site finds the user by it again (:meth:`CMSPort.find_user_by_external_id`)."""

    model_config = ConfigDict(extra="forbid")

    email: EmailStr
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    external_id: str = Field(min_length=1, max_length=200)


class SiteUserUpdate(BaseModel):
    """Changes to a site user: only the fields given are changed."""

    model_config = ConfigDict(extra="forbid")

    email: EmailStr | None = None
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)


class CMSPort(Connector, Protocol):
    """A website's content. Creating a category or tag that exists returns the existing one."""

    async def list_posts(self, query: PostQuery) -> Page[Post]: ...

    async def get_post(self, post_id: str) -> Post: ...

    async def create_post(self, draft: PostDraft) -> Post: ...

    async def update_post(self, post_id: str, update: PostUpdate) -> Post: ...

    async def find_post_by_marker(self, marker: str) -> Post | None:
        """The post created with ``marker``, in any status but trashed; None if none."""
        ...

    async def trash_post(self, post_id: str) -> None:
        """Move the post to the site's trash (restorable there; no marker finds it)."""
        ...

    async def list_pages(self, query: ListQuery) -> Page[SitePage]: ...

    async def get_page(self, page_id: str) -> SitePage: ...

    async def create_page(self, draft: SitePageDraft) -> SitePage: ...

    async def update_page(self, page_id: str, update: SitePageUpdate) -> SitePage: ...

    async def list_media(self, query: ListQuery) -> Page[Media]: ...

    async def get_media(self, media_id: str) -> Media: ...

    async def upload_media(self, upload: MediaUpload) -> Media: ...

    async def find_media_by_marker(self, marker: str) -> Media | None:
        """The file uploaded with ``marker``; None if none."""
        ...

    async def list_categories(self, query: ListQuery) -> Page[Term]: ...

    async def create_category(self, draft: TermDraft) -> Term: ...

    async def list_tags(self, query: ListQuery) -> Page[Term]: ...

    async def create_tag(self, draft: TermDraft) -> Term: ...

    async def create_user(self, draft: SiteUserDraft) -> SiteUser:
        """A user with the site's default role and a password nobody knows (they set their own
        through the site's lost-password page)."""
        ...

    async def update_user(self, user_id: str, update: SiteUserUpdate) -> SiteUser: ...

    async def find_user_by_external_id(self, external_id: str) -> SiteUser | None: ...

    async def find_user_by_email(self, email: str) -> SiteUser | None: ...


__all__ = [
    "CMSPort",
    "ContentStatus",
    "Media",
    "MediaUpload",
    "Post",
    "PostDraft",
    "PostQuery",
    "PostUpdate",
    "SitePage",
    "SitePageDraft",
    "SitePageUpdate",
    "SiteUser",
    "SiteUserDraft",
    "SiteUserUpdate",
    "Term",
    "TermDraft",
]
