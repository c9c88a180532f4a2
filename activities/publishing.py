"""Publishing activities: write a content item's post to the tenant's CMS exactly once, verify
it, take it down, and keep the ``content_items`` projection. Credentials are read from the
secret store here (by the connection's id), never carried by the workflow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import cast

from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.connections import open_row, start_connection_check
from connectors.cms import CMSPort, MediaUpload, Post, PostDraft, PostUpdate, TermDraft
from connectors.http import ConnectorError, VendorNotFound, as_application_error
from connectors.pacing import DatabasePacer
from connectors.secrets import SecretStore
from connectors.storage import ObjectStorage
from core import audit
from core.db import SessionFactory, transaction
from core.render import body_html, plain_text
from core.settings import Settings
from models.connection import Connection
from models.content import (
    CmsTarget,
    ContentItem,
    ContentRow,
    ImagePush,
    PostWrite,
    PublishedPost,
    TermIds,
    TermNames,
    Unpublish,
    UnpublishMode,
)

#: Error type of a post that does not read back as written; the workflow fails the publish.
MISMATCH = "PublishedPostMismatch"


class PublishingActivities:
    """Activities bound to the database, the secret store, object storage and the registry."""

    def __init__(
        self,
        sessions: SessionFactory,
        settings: Settings,
        secrets: SecretStore,
        storage: ObjectStorage,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._secrets = secrets
        self._storage = storage
        self._pacer = DatabasePacer(sessions)

    @activity.defn
    async def push_featured_image(self, push: ImagePush) -> str:
        """Upload the item's image to the CMS once (found again by its marker); its media id."""
        data = await self._storage.read(push.image.storage_key)
        if data is None:
            raise ApplicationError("The featured image is no longer stored.", non_retryable=True)
        async with self._cms(push.target) as cms:
            found = await cms.find_media_by_marker(push.marker)
            media = found or await cms.upload_media(
                MediaUpload(
                    filename=push.image.filename,
                    content_type=push.image.content_type,
                    data=data,
                    alt_text=push.image.alt_text,
                    marker=push.marker,
                )
            )
        return media.id

    @activity.defn
    async def resolve_terms(self, names: TermNames) -> TermIds:
        """The CMS ids of the item's categories and tags, created where missing."""
        async with self._cms(names.target) as cms:
            categories = [
                (await cms.create_category(TermDraft(name=n))).id for n in names.categories
            ]
            tags = [(await cms.create_tag(TermDraft(name=n))).id for n in names.tags]
        return TermIds(category_ids=categories, tag_ids=tags)

    @activity.defn
    async def write_post(self, write: PostWrite) -> PublishedPost:
        """Publish the item's post: update the known post, else the one an earlier attempt
        created (found by the marker), else create it. Nothing is ever created twice."""
        async with self._cms(write.target) as cms:
            post_id = write.post_id
            if post_id is None:
                found = await cms.find_post_by_marker(write.marker)
                post_id = found.id if found is not None else None
            if post_id is None:
                post = await cms.create_post(_draft(write))
            else:
                post = await cms.update_post(post_id, _update(write))
        return _published(post, write)

    @activity.defn
    async def verify_post(self, write: PostWrite, post: PublishedPost) -> PublishedPost:
        """Read the post back: live, with the title, body, terms and image just written.
        A mismatch (a plugin rewriting content, a site refusing to publish) fails the publish
        with the reason."""
        async with self._cms(write.target) as cms:
            live = await cms.get_post(post.post_id)
        problems = _differences(live, write)
        if problems:
            raise ApplicationError(
                f"The published post does not match the item: {', '.join(problems)}.",
                type=MISMATCH,
                non_retryable=True,
            )
        return _published(live, write)

    @activity.defn
    async def unpublish_post(self, request: Unpublish) -> None:
        """Take the post down: back to a draft, or into the trash. Gone already is fine."""
        async with self._cms(request.target) as cms:
            try:
                if request.mode is UnpublishMode.TRASH:
                    await cms.trash_post(request.post_id)
                else:
                    await cms.update_post(request.post_id, PostUpdate(status="draft"))
            except VendorNotFound:
                return

    @activity.defn
    async def check_connection(self, target: CmsTarget) -> None:
        """The CMS refused the credentials: start the connection's check, which marks it
        ``auth_failed`` and tells the tenant admins once."""
        async with self._sessions() as session:
            connection = await session.get(Connection, target.connection_id)
        if connection is not None:
            await start_connection_check(activity.client(), self._settings, connection)

    @activity.defn
    async def record_content(self, row: ContentRow) -> None:
        """Write the item's projection row (an upsert) and audit a change of its post once."""
        async with transaction(self._sessions) as session:
            item = await session.get(ContentItem, row.content_id)
            if item is None:
                item = ContentItem(id=row.content_id, created_at=row.created_at)
                session.add(item)
            item.tenant_id, item.connection_id = row.tenant_id, row.connection_id
            item.created_by, item.title, item.status = row.created_by, row.title, row.status
            item.revision, item.publish_at, item.error = row.revision, row.publish_at, row.error
            item.approval_id = row.approval_id
            item.updated_at = datetime.now(UTC)
            post = row.post
            item.post_id = post.post_id if post else None
            item.url, item.slug = (post.url, post.slug) if post else (None, None)
            item.published_at = post.published_at if post else None
            if row.audit is not None:
                await audit.append(
                    session,
                    f"content.{row.audit}",
                    tenant_id=row.tenant_id,
                    actor=audit.Actor(user_id=row.actor),
                    data={
                        "content_id": str(row.content_id),
                        "revision": row.revision,
                        "post_id": post.post_id if post else None,
                        "url": post.url if post else None,
                    },
                    idempotency_key=f"publish:{row.content_id}:{row.audit_key}",
                )

    @asynccontextmanager
    async def _cms(self, target: CmsTarget) -> AsyncIterator[CMSPort]:
        """The connection's CMS port, heartbeating while in use; vendor errors become
        Temporal's (refused credentials: ``AuthFailed``, non-retryable; 5xx and 429: retried
        with the vendor's delay)."""
        async with self._sessions() as session:
            row = await session.get(Connection, target.connection_id)
        if row is None or row.tenant_id != target.tenant_id:
            raise ApplicationError("The item's connection is gone.", non_retryable=True)
        try:
            async with (
                open_row(self._settings, self._secrets, row, self._pacer) as port,
                _heartbeating(),
            ):
                yield cast(CMSPort, port)
        except ConnectorError as exc:
            raise as_application_error(exc) from None
        except ValidationError as exc:  # content the CMS port refuses (e.g. a bad slug)
            raise ApplicationError(
                f"The CMS cannot take this item: {exc.errors()[0]['msg']}", non_retryable=True
            ) from None


@asynccontextmanager
async def _heartbeating(every: float = 2.0) -> AsyncIterator[None]:
    """Heartbeat while the block waits on the CMS: the workflow sets a heartbeat timeout on
    its CMS calls, so a worker killed mid-write has the write retried within seconds."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(every)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


def _draft(write: PostWrite) -> PostDraft:
    fields = write.fields
    return PostDraft(
        title=plain_text(fields.title),
        content=body_html(fields),
        excerpt=plain_text(fields.excerpt),
        slug=fields.slug,
        status="published",
        category_ids=write.category_ids,
        tag_ids=write.tag_ids,
        featured_media_id=write.media_id,
        marker=write.marker,
    )


def _update(write: PostWrite) -> PostUpdate:
    draft = _draft(write)
    return PostUpdate(
        title=draft.title,
        content=draft.content,
        excerpt=draft.excerpt,
        slug=draft.slug,
        status="published",
        category_ids=draft.category_ids,
        tag_ids=draft.tag_ids,
        featured_media_id=draft.featured_media_id,
    )


def _differences(live: Post, write: PostWrite) -> list[str]:
    expected = _draft(write)
    checks = (
        ("the status is " + live.status, live.status == "published"),
        ("the title differs", live.title.strip() == expected.title),
        ("the body differs", live.content.strip() == expected.content.strip()),
        ("the categories differ", set(live.category_ids) >= set(expected.category_ids)),
        ("the tags differ", set(live.tag_ids) >= set(expected.tag_ids)),
        ("the featured image differs", live.featured_media_id == expected.featured_media_id),
    )
    return [problem for problem, ok in checks if not ok]


def _published(post: Post, write: PostWrite) -> PublishedPost:
    return PublishedPost(
        post_id=post.id,
        url=post.url,
        slug=post.slug,
        status=post.status,
        media_id=write.media_id,
        media_key=write.fields.featured_image.storage_key if write.fields.featured_image else None,
        published_at=post.published_at,
    )
