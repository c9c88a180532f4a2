"""PublishWorkflow: days of schedule, review and reconnect deadlines on the time-skipping server
(the CMS calls replaced there by recording activities); at the real WordPress, exactly one post
when the worker is killed right after its create call, and a post that does not read back as
written (the item fails and keeps it)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.approval import ApprovalActivities
from activities.billing import BillingActivities
from activities.publishing import MISMATCH, PublishingActivities
from connectors.mail import mailer_from_settings
from connectors.secrets import connection_path, secret_store_from_settings
from connectors.storage import storage_from_settings
from core.db import SessionFactory
from core.settings import Settings
from models.approval import Approval, ApprovalStatus, DeadlinePolicy
from models.billing import UsageEvent, UsageMetric
from models.content import (
    CmsTarget,
    ContentFields,
    ContentItem,
    ContentItemState,
    ContentStatus,
    PostWrite,
    PublishedPost,
    PublishStart,
    Reschedule,
    ReviewPolicy,
    Submission,
    TermIds,
    TermNames,
    Unpublish,
)
from tests.factories import Member, cms_connection, member
from tests.peers.wordpress import WordPressSite
from tests.processes import worker_process
from workflows.approval import ApprovalWorkflow
from workflows.publish import PublishWorkflow, post_marker, workflow_id

pytestmark = pytest.mark.one_database
pytest_plugins = ["tests.peers.wordpress"]
Item = WorkflowHandle[PublishWorkflow, ContentStatus]


@dataclass
class FakeCms:
    """The CMS activities, recording what they were asked (the real ones run against the
    real WordPress in tests/api/test_content.py)."""

    writes: list[PostWrite] = field(default_factory=list)
    unpublished: list[str] = field(default_factory=list)
    refuse: bool = False
    # The post reads back with another title (a plugin on the site rewrote it).
    rewritten: bool = False

    @activity.defn(name="write_post")
    async def write_post(self, write: PostWrite) -> PublishedPost:
        if self.refuse:
            raise ApplicationError(
                "WordPress refused the credentials.", type="AuthFailed", non_retryable=True
            )
        self.writes.append(write)
        return PublishedPost(
            post_id="41", url="https://blog.example.com/p41", slug="p41", status="published"
        )

    @activity.defn(name="verify_post")
    async def verify_post(self, write: PostWrite, post: PublishedPost) -> PublishedPost:
        if self.rewritten:
            raise ApplicationError(
                "The published post does not match the item: the title differs.",
                type=MISMATCH,
                non_retryable=True,
            )
        return post.model_copy(
            update={"published_at": activity.info().current_attempt_scheduled_time}
        )

    @activity.defn(name="resolve_terms")
    async def resolve_terms(self, names: TermNames) -> TermIds:
        return TermIds(category_ids=[], tag_ids=[])

    @activity.defn(name="unpublish_post")
    async def unpublish_post(self, request: Unpublish) -> None:
        self.unpublished.append(request.post_id)

    @activity.defn(name="check_connection")
    async def check_connection(self, target: CmsTarget) -> None:
        return None


def fake_cms_worker(
    client: Client, sessions: SessionFactory, settings: Settings, cms: FakeCms
) -> Worker:
    """PublishWorkflow and its review on ``client``: the CMS calls recorded by ``cms``, the
    database ones real."""
    mailer = mailer_from_settings(settings, sessions)
    approvals = ApprovalActivities(sessions, mailer, settings)
    publishing = PublishingActivities(
        sessions, settings, secret_store_from_settings(settings), storage_from_settings(settings)
    )
    billing = BillingActivities(sessions, mailer, settings, None)  # no Stripe: usage only
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[PublishWorkflow, ApprovalWorkflow],
        activities=[
            cms.write_post,
            cms.verify_post,
            cms.resolve_terms,
            cms.check_connection,
            cms.unpublish_post,
            publishing.record_content,
            approvals.record_approval,
            approvals.notify_approvers,
            billing.record_usage,
        ],
    )


@pytest.fixture
async def ts(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> AsyncIterator[tuple[Client, FakeCms]]:
    cms = FakeCms()
    async with fake_cms_worker(time_skipping_env.client, sessions, settings, cms):
        yield time_skipping_env.client, cms


async def wordpress_connection(
    sessions: SessionFactory, settings: Settings, site: WordPressSite, tenant_id: uuid.UUID
) -> uuid.UUID:
    """A connection of the tenant to the real WordPress, its credentials in the store."""
    connection_id = await cms_connection(sessions, tenant_id, site.url)
    await secret_store_from_settings(settings).put(
        connection_path(tenant_id, connection_id),
        {"username": site.username, "application_password": site.application_password},
    )
    return connection_id


async def start_item(
    client: Client,
    settings: Settings,
    admin: Member,
    connection_id: uuid.UUID,
    *,
    review: bool = False,
    now: datetime,
    history_limit: int = 5_000,
) -> Item:
    item = ContentItemState(
        content_id=uuid.uuid4(),
        tenant_id=admin.tenant_id,
        connection_id=connection_id,
        created_by=admin.user_id,
        created_at=now,
        fields=ContentFields(title=f"Post {uuid.uuid4().hex[:6]}", body="<p>Hi.</p>"),
    )
    policy = ReviewPolicy(
        required=review,
        deadlines=DeadlinePolicy(
            remind_after=timedelta(hours=1),
            escalate_after=timedelta(hours=2),
            expire_after=timedelta(days=2),
        ),
    )
    return await client.start_workflow(
        PublishWorkflow.run,
        PublishStart(
            item=item,
            review=policy,
            reconnect_wait=timedelta(days=3),
            history_limit=history_limit,
        ),
        id=workflow_id(item.content_id),
        task_queue=settings.temporal_task_queue,
    )


async def item_status(handle: Item, status: ContentStatus) -> ContentItemState:
    """The item's state once it has ``status``; a query the server gives up on (sent to a
    worker that was killed, before its replacement takes the workflow) is asked again."""
    async with asyncio.timeout(60):
        while True:
            try:
                state = await handle.query(PublishWorkflow.state, rpc_timeout=timedelta(seconds=5))
            except RPCError as refused:
                if refused.status not in (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED):
                    raise
            else:
                if state.status is status:
                    return state
            await asyncio.sleep(0.05)


async def test_a_publish_days_ahead_waits_rescheduled_then_publishes_once(
    ts: tuple[Client, FakeCms],
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
) -> None:
    client, cms = ts
    admin = await member(sessions, settings)
    now = await time_skipping_env.get_current_time()
    handle = await start_item(
        client,
        settings,
        admin,
        await cms_connection(sessions, admin.tenant_id, "https://x.example.com"),
        now=now,
    )
    at = now + timedelta(days=3)
    await handle.execute_update(
        PublishWorkflow.submit, Submission(submitted_by=admin.user_id, publish_at=at)
    )
    later = now + timedelta(days=5)
    await handle.execute_update(
        PublishWorkflow.reschedule, Reschedule(publish_at=later, by=admin.user_id)
    )
    await time_skipping_env.sleep(timedelta(days=4))
    assert (await handle.query(PublishWorkflow.state)).status is ContentStatus.SCHEDULED
    assert cms.writes == []
    await time_skipping_env.sleep(timedelta(days=2))
    published = await item_status(handle, ContentStatus.PUBLISHED)
    assert published.post is not None
    assert published.post.published_at is not None
    assert published.post.published_at >= later
    assert [w.marker for w in cms.writes] == [post_marker(published.content_id, 1)]
    async with sessions() as session:
        row = await session.get(ContentItem, published.content_id)
        usage = list(
            await session.scalars(select(UsageEvent).where(UsageEvent.tenant_id == admin.tenant_id))
        )
    assert row is not None
    assert row.status is ContentStatus.PUBLISHED
    assert row.post_id == "41"
    # Published once; the item's process is one workflow run.
    assert sorted((u.metric, u.quantity) for u in usage) == [
        (UsageMetric.CONTENT_PUBLISHED, 1),
        (UsageMetric.WORKFLOW_RUNS, 1),
    ]


async def test_an_unanswered_review_expires_back_to_draft(
    ts: tuple[Client, FakeCms],
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
) -> None:
    client, cms = ts
    admin = await member(sessions, settings)
    now = await time_skipping_env.get_current_time()
    connection_id = await cms_connection(sessions, admin.tenant_id, "https://x.example.com")
    handle = await start_item(client, settings, admin, connection_id, review=True, now=now)
    await handle.execute_update(PublishWorkflow.submit, Submission(submitted_by=admin.user_id))
    await item_status(handle, ContentStatus.IN_REVIEW)
    await time_skipping_env.sleep(timedelta(days=3))
    draft = await item_status(handle, ContentStatus.DRAFT)
    assert draft.review is not None
    assert draft.review.status is ApprovalStatus.EXPIRED
    assert draft.events[-1].event == "review_expired"
    assert cms.writes == []
    async with sessions() as session:
        approval = await session.get(Approval, draft.review.approval_id)
    assert approval is not None
    assert approval.status is ApprovalStatus.EXPIRED


async def test_refused_credentials_not_reconnected_in_time_fail_with_a_reason(
    ts: tuple[Client, FakeCms],
    time_skipping_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
) -> None:
    client, cms = ts
    cms.refuse = True
    admin = await member(sessions, settings)
    now = await time_skipping_env.get_current_time()
    connection_id = await cms_connection(sessions, admin.tenant_id, "https://x.example.com")
    handle = await start_item(client, settings, admin, connection_id, now=now)
    await handle.execute_update(PublishWorkflow.submit, Submission(submitted_by=admin.user_id))
    await item_status(handle, ContentStatus.WAITING_FOR_CONNECTION)
    await time_skipping_env.sleep(timedelta(days=4))
    failed = await item_status(handle, ContentStatus.FAILED)
    assert failed.error is not None
    assert "not reconnected" in failed.error
    async with sessions() as session:
        row = await session.get(ContentItem, failed.content_id)
    assert row is not None
    assert row.error == failed.error


async def test_a_worker_killed_right_after_the_create_leaves_one_post(
    wordpress_site: WordPressSite,
    temporal_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
    tmp_path: Path,
) -> None:
    peered = settings.model_copy(update={"connector_allow_private_urls": True})
    admin = await member(sessions, peered)
    connection_id = await wordpress_connection(sessions, peered, wordpress_site, admin.tenant_id)
    client = temporal_env.client
    address = client.service_client.config.target_host
    env = {"BIZ_CONNECTOR_ALLOW_PRIVATE_URLS": "true"}
    worker = worker_process(peered, address, tmp_path / "worker-1.log", env)
    try:
        handle = await start_item(
            client, peered, admin, connection_id, now=datetime.now().astimezone()
        )
        # The marker search goes through; the create is carried out, then not answered.
        wordpress_site.queue_fault()
        wordpress_site.queue_fault(hang_after=15)
        await handle.execute_update(PublishWorkflow.submit, Submission(submitted_by=admin.user_id))
        marker = post_marker(handle_content_id(handle), 1)
        async with asyncio.timeout(60):
            while True:  # the create is done when the post shows at the site
                if _marked(wordpress_site, marker):
                    break
                await asyncio.sleep(0.2)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        worker = worker_process(peered, address, tmp_path / "worker-2.log", env)
        published = await item_status(handle, ContentStatus.PUBLISHED)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        wordpress_site.clear_faults()
    assert published.post is not None
    assert [str(p["id"]) for p in _marked(wordpress_site, marker)] == [published.post.post_id]


async def test_a_post_that_does_not_read_back_as_written_fails_and_stays_recorded(
    wordpress_site: WordPressSite,
    temporal_env: WorkflowEnvironment,
    sessions: SessionFactory,
    settings: Settings,
) -> None:
    peered = settings.model_copy(update={"connector_allow_private_urls": True})
    admin = await member(sessions, peered)
    connection_id = await wordpress_connection(sessions, peered, wordpress_site, admin.tenant_id)
    publishing = PublishingActivities(
        sessions, peered, secret_store_from_settings(peered), storage_from_settings(peered)
    )
    billing = BillingActivities(sessions, mailer_from_settings(peered, sessions), peered, None)
    rewrites = ["Rewritten by a plugin"]

    @activity.defn(name="write_post")
    async def write_post(write: PostWrite) -> PublishedPost:
        """The real write; the first time, a plugin on the site then rewrites the title."""
        written = await publishing.write_post(write)
        if rewrites:
            change = {"title": rewrites.pop()}
            await asyncio.to_thread(
                wordpress_site.rest, "POST", f"wp/v2/posts/{written.post_id}", json=change
            )
        return written

    client = temporal_env.client
    async with Worker(
        client,
        task_queue=peered.temporal_task_queue,
        workflows=[PublishWorkflow],
        activities=[
            write_post,
            publishing.verify_post,
            publishing.record_content,
            billing.record_usage,
        ],
    ):
        handle = await start_item(
            client, peered, admin, connection_id, now=datetime.now().astimezone()
        )
        await handle.execute_update(PublishWorkflow.submit, Submission(submitted_by=admin.user_id))
        failed = await item_status(handle, ContentStatus.FAILED)
        assert failed.error == (
            "Publishing failed: The published post does not match the item: the title differs."
        )
        # The post exists at the site all the same: the item shows it to whoever looks.
        post = failed.post
        assert post is not None
        assert not post.verified
        [live] = _marked(wordpress_site, post_marker(failed.content_id, 1))
        assert (post.post_id, post.url) == (str(live["id"]), live["link"])
        row = await listed(sessions, failed.content_id, ContentStatus.FAILED)
        assert (row.post_id, row.url, row.error) == (post.post_id, post.url, failed.error)

        # Submitted again: the same post is written over and this time reads back right.
        await handle.execute_update(PublishWorkflow.submit, Submission(submitted_by=admin.user_id))
        published = await item_status(handle, ContentStatus.PUBLISHED)
        # Its first verified publish is the one counted (after the item shows as published).
        async with asyncio.timeout(10):
            while True:
                usage = await _usage(sessions, admin.tenant_id)
                if usage:
                    break
                await asyncio.sleep(0.1)
    assert [u.quantity for u in usage] == [1]
    assert published.post is not None
    assert (published.post.post_id, published.post.verified) == (post.post_id, True)
    assert wp_title(wordpress_site, post.post_id) == failed.fields.title
    assert [e.event for e in published.events][-4:] == [
        "submitted",
        "failed",
        "submitted",
        "published",
    ]


async def listed(
    sessions: SessionFactory, content_id: uuid.UUID, status: ContentStatus
) -> ContentItem:
    """The item's listing row once it shows ``status`` (an activity writes it after the
    workflow's state changes)."""
    async with asyncio.timeout(10):
        while True:
            async with sessions() as session:
                row = await session.get(ContentItem, content_id)
            if row is not None and row.status is status:
                return row
            await asyncio.sleep(0.1)


async def _usage(sessions: SessionFactory, tenant_id: uuid.UUID) -> list[UsageEvent]:
    """The tenant's published items counted as usage."""
    async with sessions() as session:
        return list(
            await session.scalars(
                select(UsageEvent).where(
                    UsageEvent.tenant_id == tenant_id,
                    UsageEvent.metric == UsageMetric.CONTENT_PUBLISHED,
                )
            )
        )


def wp_title(site: WordPressSite, post_id: str) -> str:
    post = site.rest("GET", f"wp/v2/posts/{post_id}", params={"context": "edit"})
    title: str = post["title"]["raw"]
    return title


def handle_content_id(handle: Item) -> uuid.UUID:
    return uuid.UUID(handle.id.removeprefix("publish:"))


def _marked(site: WordPressSite, marker: str) -> list[dict[str, object]]:
    """The posts carrying ``marker``, in any status but the trash."""
    found: list[dict[str, object]] = site.rest(
        "GET",
        "wp/v2/posts",
        params={"search": marker, "status": "publish,draft", "context": "edit"},
    )
    return found
