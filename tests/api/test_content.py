"""Content publishing over HTTP on the dev server, against a real WordPress: publish now and at a
time, review (by tenant admins or a named reviewer role), reschedule and cancel, edits and
unpublishing, the featured image, 5xx retried, refused credentials and the reconnect, and bad
input."""

from __future__ import annotations

import asyncio
import struct
import uuid
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from core.db import SessionFactory
from core.settings import Settings
from models.audit import AuditEntry
from models.billing import UsageEvent, UsageMetric
from models.user import Role
from tests.factories import Member, member
from tests.history import decoded_history
from tests.peers.wordpress import WordPressSite
from workers.main import build_worker

pytest_plugins = ["tests.peers.wordpress"]


@pytest.fixture
def content_settings(settings: Settings) -> Settings:
    # The WordPress peer listens on loopback, which production settings refuse (SSRF).
    return settings.model_copy(update={"connector_allow_private_urls": True})


@pytest.fixture
async def api(
    content_settings: Settings,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    sessions: SessionFactory,
) -> AsyncIterator[httpx.AsyncClient]:
    async with build_worker(temporal_env.client, sessions, content_settings):
        app = create_app(content_settings, temporal_env.client, engine)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def connect(
    api: httpx.AsyncClient, who: Member, site: WordPressSite, password: str | None = None
) -> str:
    body = {"connector_id": "wordpress", "label": "Blog", "form": site.form(password)}
    created = await api.post("/api/v1/connections", json=body, headers=who.headers)
    assert created.status_code == 201, created.text
    connection_id: str = created.json()["connection_id"]
    return connection_id


async def create(
    api: httpx.AsyncClient, who: Member, connection_id: str, **fields: Any
) -> dict[str, Any]:
    body = {"title": f"Post {uuid.uuid4().hex[:8]}", "body": "<p>Hello.</p>", **fields}
    created = await api.post(
        "/api/v1/content", json={**body, "connection_id": connection_id}, headers=who.headers
    )
    assert created.status_code == 201, created.text
    item: dict[str, Any] = created.json()
    return item


# Long on both backends: PostgreSQL by default (SQLite when it does not answer), both with
# --slow.
pytestmark = pytest.mark.one_database


async def until(
    api: httpx.AsyncClient, who: Member, content_id: str, status: str
) -> dict[str, Any]:
    """The item once it reaches ``status``."""
    async with asyncio.timeout(30):
        while True:
            got = await api.get(f"/api/v1/content/{content_id}", headers=who.headers)
            assert got.status_code == 200, got.text
            item: dict[str, Any] = got.json()
            if item["status"] == status:
                return item
            await asyncio.sleep(0.1)


async def listing(api: httpx.AsyncClient, who: Member, status: str) -> list[dict[str, Any]]:
    """The listing of ``status`` once it holds an item (the projection follows the workflow's
    state by an activity)."""
    async with asyncio.timeout(10):
        while True:
            listed = await api.get(f"/api/v1/content?status={status}", headers=who.headers)
            items: list[dict[str, Any]] = listed.json()["items"]
            if items:
                return items
            await asyncio.sleep(0.1)


def wp_post(site: WordPressSite, post_id: str) -> dict[str, Any]:
    post: dict[str, Any] = site.rest("GET", f"wp/v2/posts/{post_id}", params={"context": "edit"})
    return post


def marked_posts(site: WordPressSite, content_id: str) -> list[dict[str, Any]]:
    """Every post of the item at the site, in any status but the trash."""
    found: list[dict[str, Any]] = site.rest(
        "GET",
        "wp/v2/posts",
        params={
            "search": f"publish-{uuid.UUID(content_id).hex}",
            "status": "publish,draft,future,pending,private",
            "context": "edit",
        },
    )
    return found


async def test_publish_now_update_and_unpublish(
    api: httpx.AsyncClient,
    wordpress_site: WordPressSite,
    sessions: SessionFactory,
    content_settings: Settings,
    temporal_client: Client,
) -> None:
    admin = await member(sessions, content_settings)
    connection_id = await connect(api, admin, wordpress_site)
    item = await create(
        api,
        admin,
        connection_id,
        body="# Launch\n\nWe *launched*. <script>alert('x')</script>[site](javascript:alert(1))",
        body_format="markdown",
        excerpt="The launch.",
        categories=["News"],
        tags=["launch", "product"],
        seo_title="Launch | Acme",
        meta_description="We launched.",
    )
    content_id = item["content_id"]
    assert item["status"] == "draft"
    assert "<script" not in item["html"]
    assert "<h1>Launch</h1>" in item["html"]

    submitted = await api.post(f"/api/v1/content/{content_id}/submit", headers=admin.headers)
    assert submitted.status_code == 202, submitted.text
    published = await until(api, admin, content_id, "published")
    post = published["post"]
    live = wp_post(wordpress_site, post["post_id"])
    assert live["status"] == "publish"
    assert "<script" not in live["content"]["raw"]
    assert 'href="javascript' not in live["content"]["raw"]
    assert "<em>launched</em>" in live["content"]["raw"]
    assert len(live["categories"]) == 1
    assert len(live["tags"]) == 2
    assert post["url"] == live["link"]
    assert post["slug"] == live["slug"]

    [row] = await listing(api, admin, "published")
    assert row["content_id"] == content_id
    assert row["url"] == live["link"]

    # An edit keeps the post live until the new revision is published: the same post.
    edited = await api.patch(
        f"/api/v1/content/{content_id}", json={"title": "Launch, updated"}, headers=admin.headers
    )
    assert edited.status_code == 200, edited.text
    assert (edited.json()["status"], edited.json()["live"]) == ("draft", True)
    await api.post(f"/api/v1/content/{content_id}/publish", headers=admin.headers)
    updated = await until(api, admin, content_id, "published")
    assert updated["post"]["post_id"] == post["post_id"]
    assert wp_post(wordpress_site, post["post_id"])["title"]["raw"] == "Launch, updated"

    down = await api.post(f"/api/v1/content/{content_id}/unpublish", headers=admin.headers)
    assert down.status_code == 202, down.text
    await until(api, admin, content_id, "unpublished")
    assert wp_post(wordpress_site, post["post_id"])["status"] == "draft"
    again = await api.post(f"/api/v1/content/{content_id}/unpublish", headers=admin.headers)
    assert again.status_code == 409

    await api.post(f"/api/v1/content/{content_id}/submit", headers=admin.headers)
    await until(api, admin, content_id, "published")
    trashed = await api.post(
        f"/api/v1/content/{content_id}/unpublish", json={"mode": "trash"}, headers=admin.headers
    )
    assert trashed.status_code == 202
    final = await until(api, admin, content_id, "unpublished")
    assert final["post"] is None
    assert marked_posts(wordpress_site, content_id) == []
    await listing(api, admin, "unpublished")  # written with its audit row

    async with sessions() as session:
        actions = list(
            await session.scalars(
                select(AuditEntry.action).where(AuditEntry.tenant_id == admin.tenant_id)
            )
        )
        usage = list(
            await session.scalars(
                select(UsageEvent).where(
                    UsageEvent.tenant_id == admin.tenant_id,
                    UsageEvent.metric == UsageMetric.CONTENT_PUBLISHED,
                )
            )
        )
    assert actions.count("content.published") == 1
    assert actions.count("content.updated") == 2
    assert actions.count("content.unpublished") == 2
    assert len(usage) == 1
    # The body travels encrypted: the history holds no word of it in plain text.
    history = await decoded_history(temporal_client, f"publish:{content_id}", "")
    assert b"launched" in history
    raw = await temporal_client.get_workflow_handle(f"publish:{content_id}").fetch_history()
    assert b"launched" not in raw.to_json().encode()


async def test_publish_at_a_time_reschedule_and_cancel(
    api: httpx.AsyncClient,
    wordpress_site: WordPressSite,
    sessions: SessionFactory,
    content_settings: Settings,
) -> None:
    author = await member(sessions, content_settings, Role.USER)
    admin = await member(sessions, content_settings, tenant_id=author.tenant_id)
    connection_id = await connect(api, admin, wordpress_site)
    item = await create(api, author, connection_id)
    content_id = item["content_id"]

    later = datetime.now(UTC) + timedelta(hours=1)
    scheduled = await api.post(
        f"/api/v1/content/{content_id}/submit",
        json={"publish_at": later.isoformat()},
        headers=author.headers,
    )
    assert scheduled.status_code == 202, scheduled.text
    await until(api, author, content_id, "scheduled")
    edit = await api.patch(
        f"/api/v1/content/{content_id}", json={"title": "Too late"}, headers=author.headers
    )
    assert edit.status_code == 409
    assert "scheduled" in edit.json()["detail"]

    cancelled = await api.post(f"/api/v1/content/{content_id}/cancel", headers=author.headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "draft"
    assert marked_posts(wordpress_site, content_id) == []
    nothing = await api.post(f"/api/v1/content/{content_id}/cancel", headers=author.headers)
    assert nothing.status_code == 409

    await api.post(
        f"/api/v1/content/{content_id}/submit",
        json={"publish_at": later.isoformat()},
        headers=author.headers,
    )
    await until(api, author, content_id, "scheduled")
    past = await api.post(
        f"/api/v1/content/{content_id}/schedule",
        json={"publish_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat()},
        headers=author.headers,
    )
    assert past.status_code == 422, past.text
    assert "past" in past.text
    still = await api.get(f"/api/v1/content/{content_id}", headers=author.headers)
    assert still.json()["status"] == "scheduled"
    assert datetime.fromisoformat(still.json()["publish_at"]) == later
    soon = datetime.now(UTC) + timedelta(seconds=2)
    moved = await api.post(
        f"/api/v1/content/{content_id}/schedule",
        json={"publish_at": soon.isoformat()},
        headers=author.headers,
    )
    assert moved.status_code == 200, moved.text
    assert marked_posts(wordpress_site, content_id) == []
    published = await until(api, author, content_id, "published")
    assert datetime.fromisoformat(published["post"]["published_at"]) >= soon - timedelta(seconds=1)
    assert len(marked_posts(wordpress_site, content_id)) == 1
    events = [e["event"] for e in published["events"]]
    assert events[-4:] == ["submitted", "scheduled", "rescheduled", "published"]


async def test_review_request_changes_then_approve(
    api: httpx.AsyncClient,
    wordpress_site: WordPressSite,
    sessions: SessionFactory,
    content_settings: Settings,
) -> None:
    reviewer = await member(sessions, content_settings, mfa_enabled=True)
    author = await member(sessions, content_settings, Role.USER, tenant_id=reviewer.tenant_id)
    connection_id = await connect(api, reviewer, wordpress_site)
    policy = await api.put(
        "/api/v1/content/settings", json={"review_required": True}, headers=reviewer.headers
    )
    assert policy.status_code == 200, policy.text
    refused = await api.put(
        "/api/v1/content/settings", json={"review_required": False}, headers=author.headers
    )
    assert refused.status_code == 403
    item = await create(api, author, connection_id, body="<p>Draft one.</p>")
    content_id = item["content_id"]

    # Cancelled while in review: the review is withdrawn and can no longer be decided.
    await api.post(f"/api/v1/content/{content_id}/submit", headers=author.headers)
    withdrawn = await _pending_review(api, reviewer)
    cancelled = await api.post(f"/api/v1/content/{content_id}/cancel", headers=author.headers)
    assert cancelled.status_code == 200, cancelled.text
    draft = await until(api, author, content_id, "draft")
    assert draft["review"]["status"] == "withdrawn"
    assert draft["events"][-1]["event"] == "review_withdrawn"
    late = await _decide(api, reviewer, withdrawn, "approve")
    assert late.status_code == 409, late.text
    assert marked_posts(wordpress_site, content_id) == []

    await api.post(f"/api/v1/content/{content_id}/submit", headers=author.headers)
    first = await _pending_review(api, reviewer, after=withdrawn)
    # The reviewer sees the rendered preview.
    preview = await api.get(f"/api/v1/content/{content_id}", headers=reviewer.headers)
    assert preview.json()["html"] == "<p>Draft one.</p>"
    changes = await api.post(
        f"/api/v1/approvals/{first}/decision",
        json={"decision": "request_changes", "reason": "Say more."},
        headers=reviewer.headers,
    )
    assert changes.status_code == 200, changes.text
    draft = await until(api, author, content_id, "draft")
    assert draft["review"]["status"] == "changes_requested"
    assert draft["review"]["reason"] == "Say more."
    assert marked_posts(wordpress_site, content_id) == []

    await api.patch(
        f"/api/v1/content/{content_id}", json={"body": "<p>Draft two.</p>"}, headers=author.headers
    )
    await api.post(f"/api/v1/content/{content_id}/submit", headers=author.headers)
    second = await _pending_review(api, reviewer, after=first)
    approved = await api.post(
        f"/api/v1/approvals/{second}/decision",
        json={"decision": "approve"},
        headers=reviewer.headers,
    )
    assert approved.status_code == 200, approved.text
    published = await until(api, author, content_id, "published")
    assert wp_post(wordpress_site, published["post"]["post_id"])["content"]["raw"].startswith(
        "<p>Draft two.</p>"
    )


async def _pending_review(
    api: httpx.AsyncClient, reviewer: Member, after: str | None = None
) -> str:
    """The pending content review in the tenant admin's queue (another than ``after``)."""
    async with asyncio.timeout(20):
        while True:
            queue = await api.get("/api/v1/approvals?kind=content_review", headers=reviewer.headers)
            assert queue.status_code == 200, queue.text
            found = [i["approval_id"] for i in queue.json()["items"] if i["approval_id"] != after]
            if found:
                approval_id: str = found[0]
                return approval_id
            await asyncio.sleep(0.1)


async def _review_on_item(api: httpx.AsyncClient, who: Member, content_id: str) -> str:
    """The item's pending review, once the item has started it."""
    async with asyncio.timeout(20):
        while True:
            item = (await api.get(f"/api/v1/content/{content_id}", headers=who.headers)).json()
            review = item["review"]
            if item["status"] == "in_review" and review and review["status"] == "pending":
                approval_id: str = review["approval_id"]
                return approval_id
            await asyncio.sleep(0.1)


async def _decide(
    api: httpx.AsyncClient, who: Member, approval_id: str, decision: str
) -> httpx.Response:
    """``who``'s decision once the approval is in the queue (its row follows the review's
    start by an activity)."""
    async with asyncio.timeout(20):
        while True:
            answer = await api.post(
                f"/api/v1/approvals/{approval_id}/decision",
                json={"decision": decision},
                headers=who.headers,
            )
            if answer.status_code != 404:
                return answer
            await asyncio.sleep(0.1)


async def _inbox(api: httpx.AsyncClient, who: Member) -> list[dict[str, Any]]:
    """``who``'s inbox once it holds something (the approvals row follows a review's start)."""
    for _ in range(400):
        items: list[dict[str, Any]] = (await api.get("/api/v1/inbox", headers=who.headers)).json()[
            "items"
        ]
        if items:
            return items
        await asyncio.sleep(0.05)
    pytest.fail(f"nothing reached the inbox of {who.role}")


async def test_a_named_reviewer_role_decides_the_review(
    api: httpx.AsyncClient,
    wordpress_site: WordPressSite,
    sessions: SessionFactory,
    content_settings: Settings,
) -> None:
    admin = await member(sessions, content_settings, mfa_enabled=True)
    tenant_id = admin.tenant_id
    reviewer = await member(
        sessions, content_settings, Role.USER, tenant_id=tenant_id, mfa_enabled=True
    )
    reader = await member(
        sessions, content_settings, Role.READONLY, tenant_id=tenant_id, mfa_enabled=True
    )
    author = await member(
        sessions, content_settings, Role.USER, tenant_id=tenant_id, mfa_enabled=True
    )
    connection_id = await connect(api, admin, wordpress_site)
    default = await api.get("/api/v1/content/settings", headers=author.headers)
    assert default.json()["reviewer_role"] == "tenant_admin"
    for role in ("readonly", "agent", "service_account", "super_admin", "editor"):
        refused = await api.put(
            "/api/v1/content/settings",
            json={"review_required": True, "reviewer_role": role},
            headers=admin.headers,
        )
        assert refused.status_code == 422, (role, refused.text)
    policy = await api.put(
        "/api/v1/content/settings",
        json={"review_required": True, "reviewer_role": "user"},
        headers=admin.headers,
    )
    assert policy.status_code == 200, policy.text
    seen = await api.get("/api/v1/content/settings", headers=author.headers)
    assert seen.json()["reviewer_role"] == "user"

    content_id = (await create(api, author, connection_id))["content_id"]
    await api.post(f"/api/v1/content/{content_id}/submit", headers=author.headers)
    # A member reviewer finds the review on the item and in their inbox, linked to the item
    # (the approvals queue lists for admins); its author does not: four eyes among peers.
    approval_id = await _review_on_item(api, reviewer, content_id)
    inbox = await _inbox(api, reviewer)
    assert [(i["kind"], i["id"]) for i in inbox] == [("content_review", approval_id)]
    assert inbox[0]["link"].endswith(f"/content/{content_id}")
    assert (await api.get("/api/v1/inbox", headers=author.headers)).json()["items"] == []
    # Only the named role decides: not a read-only member, nor (here) a tenant admin, nor
    # the member who submitted it.
    for other in (reader, admin, author):
        refused = await _decide(api, other, approval_id, "approve")
        assert refused.status_code == 403, (other.role, refused.text)
    assert "another reviewer" in refused.json()["detail"]
    approved = await _decide(api, reviewer, approval_id, "approve")
    assert approved.status_code == 200, approved.text
    published = await until(api, author, content_id, "published")
    assert published["review"]["status"] == "approved"
    approved_event = next(e for e in published["events"] if e["event"] == "approved")
    assert approved_event["by"] == str(reviewer.user_id)
    assert len(marked_posts(wordpress_site, content_id)) == 1


async def test_editing_a_published_item_is_reviewed_again_and_updates_the_same_post(
    api: httpx.AsyncClient,
    wordpress_site: WordPressSite,
    sessions: SessionFactory,
    content_settings: Settings,
) -> None:
    reviewer = await member(sessions, content_settings, mfa_enabled=True)
    author = await member(sessions, content_settings, Role.USER, tenant_id=reviewer.tenant_id)
    connection_id = await connect(api, reviewer, wordpress_site)
    await api.put(
        "/api/v1/content/settings", json={"review_required": True}, headers=reviewer.headers
    )
    content_id = (await create(api, author, connection_id, title="First title"))["content_id"]
    await api.post(f"/api/v1/content/{content_id}/submit", headers=author.headers)
    first = await _pending_review(api, reviewer)
    assert (await _decide(api, reviewer, first, "approve")).status_code == 200
    post_id = (await until(api, author, content_id, "published"))["post"]["post_id"]

    edited = await api.patch(
        f"/api/v1/content/{content_id}", json={"title": "Second title"}, headers=author.headers
    )
    assert (edited.json()["status"], edited.json()["live"]) == ("draft", True)
    await api.post(f"/api/v1/content/{content_id}/submit", headers=author.headers)
    in_review = await until(api, author, content_id, "in_review")
    # Under review again, the live post still shows the approved revision.
    assert in_review["live"] is True
    assert wp_post(wordpress_site, post_id)["title"]["raw"] == "First title"
    second = await _pending_review(api, reviewer, after=first)
    assert (await _decide(api, reviewer, second, "approve")).status_code == 200
    updated = await until(api, author, content_id, "published")
    assert updated["post"]["post_id"] == post_id
    assert updated["review"]["approval_id"] == second
    assert wp_post(wordpress_site, post_id)["title"]["raw"] == "Second title"
    assert [p["id"] for p in marked_posts(wordpress_site, content_id)] == [int(post_id)]
    assert [e["event"] for e in updated["events"]][-3:] == ["submitted", "approved", "updated"]


def png(width: int = 2, height: int = 2) -> bytes:
    """A real PNG image (red pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


async def upload_image(
    api: httpx.AsyncClient, who: Member, content_id: str, data: bytes, **declared: Any
) -> httpx.Response:
    body = {"filename": "cover.png", "content_type": "image/png", "size": len(data), **declared}
    ticket = await api.post(
        f"/api/v1/content/{content_id}/featured-image", json=body, headers=who.headers
    )
    assert ticket.status_code == 201, ticket.text
    upload = ticket.json()
    put = await api.put(
        httpx.URL(upload["upload_url"]).raw_path.decode(), content=data, headers=upload["headers"]
    )
    assert put.status_code == 200, put.text
    return await api.post(
        f"/api/v1/content/{content_id}/featured-image/{upload['upload_id']}/complete",
        headers=who.headers,
    )


async def test_featured_image_is_uploaded_once_and_checked(
    api: httpx.AsyncClient,
    wordpress_site: WordPressSite,
    sessions: SessionFactory,
    content_settings: Settings,
) -> None:
    admin = await member(sessions, content_settings)
    connection_id = await connect(api, admin, wordpress_site)
    content_id = (await create(api, admin, connection_id))["content_id"]

    # Not the PNG announced, too large, or not an image at all: 422 and nothing kept.
    fake = await upload_image(api, admin, content_id, b"%PDF-1.4 not an image")
    assert fake.status_code == 422, fake.text
    big = await api.post(
        f"/api/v1/content/{content_id}/featured-image",
        json={"filename": "big.png", "content_type": "image/png", "size": 50 * 1024 * 1024},
        headers=admin.headers,
    )
    assert big.status_code == 422
    gif = await api.post(
        f"/api/v1/content/{content_id}/featured-image",
        json={"filename": "a.gif", "content_type": "image/gif", "size": 10},
        headers=admin.headers,
    )
    assert gif.status_code == 422

    done = await upload_image(api, admin, content_id, png(), alt_text="A red square")
    assert done.status_code == 200, done.text
    assert done.json()["fields"]["featured_image"]["alt_text"] == "A red square"
    await api.post(f"/api/v1/content/{content_id}/submit", headers=admin.headers)
    published = await until(api, admin, content_id, "published")
    live = wp_post(wordpress_site, published["post"]["post_id"])
    media = wordpress_site.rest("GET", f"wp/v2/media/{live['featured_media']}")
    assert media["mime_type"] == "image/png"
    assert media["alt_text"] == "A red square"

    # A new revision without a new image reuses the uploaded one.
    await api.patch(f"/api/v1/content/{content_id}", json={"excerpt": "x"}, headers=admin.headers)
    await api.post(f"/api/v1/content/{content_id}/submit", headers=admin.headers)
    again = await until(api, admin, content_id, "published")
    assert wp_post(wordpress_site, again["post"]["post_id"])["featured_media"] == media["id"]
    found = wordpress_site.rest("GET", "wp/v2/media", params={"search": "media-"})
    assert len([m for m in found if m["id"] == media["id"]]) == 1


async def test_an_image_over_the_limit_found_after_the_upload_is_refused(
    api: httpx.AsyncClient,
    wordpress_site: WordPressSite,
    sessions: SessionFactory,
    content_settings: Settings,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
) -> None:
    admin = await member(sessions, content_settings)
    connection_id = await connect(api, admin, wordpress_site)
    content_id = (await create(api, admin, connection_id))["content_id"]
    image = png(64, 64)
    ticket = await api.post(
        f"/api/v1/content/{content_id}/featured-image",
        json={"filename": "cover.png", "content_type": "image/png", "size": len(image)},
        headers=admin.headers,
    )
    assert ticket.status_code == 201, ticket.text
    upload = ticket.json()
    put = await api.put(
        httpx.URL(upload["upload_url"]).raw_path.decode(), content=image, headers=upload["headers"]
    )
    assert put.status_code == 200, put.text

    # The limit is lowered (BIZ_CONTENT_IMAGE_MAX_BYTES) before the upload is completed: the
    # bytes stored are what is checked, whatever was announced.
    lowered = content_settings.model_copy(update={"content_image_max_bytes": len(image) - 1})
    app = create_app(lowered, temporal_env.client, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as strict:
        completed = await strict.post(
            f"/api/v1/content/{content_id}/featured-image/{upload['upload_id']}/complete",
            headers=admin.headers,
        )
    assert completed.status_code == 422, completed.text
    assert f"at most {len(image) - 1}" in completed.json()["detail"]
    item = (await api.get(f"/api/v1/content/{content_id}", headers=admin.headers)).json()
    assert item["fields"]["featured_image"] is None
    assert item["pending_image"] is None
    assert item["revision"] == 1
    again = await api.post(
        f"/api/v1/content/{content_id}/featured-image/{upload['upload_id']}/complete",
        headers=admin.headers,
    )
    assert again.status_code == 404, again.text


async def test_a_wordpress_5xx_on_the_create_is_retried_into_one_post(
    api: httpx.AsyncClient,
    wordpress_site: WordPressSite,
    sessions: SessionFactory,
    content_settings: Settings,
    temporal_client: Client,
) -> None:
    admin = await member(sessions, content_settings)
    connection_id = await connect(api, admin, wordpress_site)
    content_id = (await create(api, admin, connection_id))["content_id"]
    # Each attempt looks for the post by its marker, then creates it: the create answers
    # 503 twice (a host's overloaded upstream), then gets through.
    unavailable = {"code": "upstream_unavailable", "message": "Service Unavailable"}
    try:
        for _ in range(2):
            wordpress_site.queue_fault()
            wordpress_site.queue_fault(status=503, body=unavailable)
        await api.post(f"/api/v1/content/{content_id}/submit", headers=admin.headers)
        published = await until(api, admin, content_id, "published")
    finally:
        wordpress_site.clear_faults()
    assert published["error"] is None
    [post] = marked_posts(wordpress_site, content_id)
    assert str(post["id"]) == published["post"]["post_id"]
    assert post["status"] == "publish"
    # One write, carried out by its third attempt (the policy's backoff in between).
    history = await temporal_client.get_workflow_handle(f"publish:{content_id}").fetch_history()
    scheduled = {
        event.event_id: event.activity_task_scheduled_event_attributes.activity_type.name
        for event in history.events
        if event.HasField("activity_task_scheduled_event_attributes")
    }
    attempts = [
        event.activity_task_started_event_attributes.attempt
        for event in history.events
        if event.HasField("activity_task_started_event_attributes")
        and scheduled[event.activity_task_started_event_attributes.scheduled_event_id]
        == "write_post"
    ]
    assert attempts == [3]


async def test_refused_credentials_wait_for_the_reconnect(
    api: httpx.AsyncClient,
    wordpress_site: WordPressSite,
    sessions: SessionFactory,
    content_settings: Settings,
) -> None:
    admin = await member(sessions, content_settings)
    password, password_id = wordpress_site.new_application_password()
    connection_id = await connect(api, admin, wordpress_site, password)
    content_id = (await create(api, admin, connection_id))["content_id"]
    wordpress_site.revoke_application_password(password_id)

    await api.post(f"/api/v1/content/{content_id}/submit", headers=admin.headers)
    waiting = await until(api, admin, content_id, "waiting_for_connection")
    assert waiting["error"]
    async with asyncio.timeout(20):
        while True:
            connection = await api.get(
                f"/api/v1/connections/{connection_id}", headers=admin.headers
            )
            if connection.json()["health"] == "auth_failed":
                break
            await asyncio.sleep(0.1)

    fresh, _ = wordpress_site.new_application_password()
    async with asyncio.timeout(20):
        while True:  # 409 while the check that marked it is still telling the admins
            reconnected = await api.put(
                f"/api/v1/connections/{connection_id}/credentials",
                json={"form": wordpress_site.form(fresh)},
                headers=admin.headers,
            )
            if reconnected.status_code != 409:
                break
            await asyncio.sleep(0.2)
    assert reconnected.status_code == 200, reconnected.text
    published = await until(api, admin, content_id, "published")
    assert published["error"] is None
    assert [e["event"] for e in published["events"]][-3:] == [
        "waiting_for_connection",
        "reconnected",
        "published",
    ]
    assert len(marked_posts(wordpress_site, content_id)) == 1


async def test_bad_input_is_refused_and_other_tenants_see_nothing(
    api: httpx.AsyncClient,
    wordpress_site: WordPressSite,
    sessions: SessionFactory,
    content_settings: Settings,
) -> None:
    admin = await member(sessions, content_settings)
    connection_id = await connect(api, admin, wordpress_site)
    base = {"title": "A title", "connection_id": connection_id}
    for bad in (
        {**base, "title": ""},
        {**base, "slug": "Not A Slug"},
        {**base, "body_format": "rtf"},
        {**base, "tags": ["x"] * 21},
    ):
        refused = await api.post("/api/v1/content", json=bad, headers=admin.headers)
        assert refused.status_code == 422, (bad, refused.text)
    listed = await api.get("/api/v1/content", headers=admin.headers)
    assert listed.json()["items"] == []

    # Another tenant's connection, and another tenant's item: 404.
    other = await member(sessions, content_settings)
    foreign = await api.post("/api/v1/content", json=base, headers=other.headers)
    assert foreign.status_code == 404
    content_id = (await create(api, admin, connection_id))["content_id"]
    for method, path in (
        ("GET", ""),
        ("PATCH", ""),
        ("POST", "/submit"),
        ("POST", "/cancel"),
        ("POST", "/unpublish"),
    ):
        response = await api.request(
            method, f"/api/v1/content/{content_id}{path}", json={}, headers=other.headers
        )
        assert response.status_code == 404, (method, path, response.text)
    reader = await member(sessions, content_settings, Role.READONLY, tenant_id=admin.tenant_id)
    forbidden = await api.post(f"/api/v1/content/{content_id}/submit", headers=reader.headers)
    assert forbidden.status_code == 403

    # A publish time in the past is refused (omit it to publish now); so is removing the title.
    past = datetime.now(UTC) - timedelta(minutes=1)
    late = await api.post(
        f"/api/v1/content/{content_id}/submit",
        json={"publish_at": past.isoformat()},
        headers=admin.headers,
    )
    assert late.status_code == 422
    assert "past" in late.text
    untitled = await api.patch(
        f"/api/v1/content/{content_id}", json={"title": None}, headers=admin.headers
    )
    assert untitled.status_code == 422

    # A slug another post holds: WordPress picks another, and the item reports the final one.
    taken = wordpress_site.rest(
        "POST", "wp/v2/posts", json={"title": "Holder", "slug": "taken-slug", "status": "publish"}
    )
    await api.patch(
        f"/api/v1/content/{content_id}",
        json={"slug": taken["slug"], "body": "<p>ok</p><script>x()</script>"},
        headers=admin.headers,
    )
    await api.post(f"/api/v1/content/{content_id}/submit", headers=admin.headers)
    published = await until(api, admin, content_id, "published")
    assert published["post"]["slug"].startswith("taken-slug-")
    assert "<script" not in wp_post(wordpress_site, published["post"]["post_id"])["content"]["raw"]
