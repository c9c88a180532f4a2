"""Content publishing over HTTP on the dev server, against a real WordPress: publish now and at a
time, review, reschedule and cancel, edits and unpublishing, the featured image, refused
credentials and the reconnect, and bad input."""

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

    await api.post(f"/api/v1/content/{content_id}/submit", headers=author.headers)
    first = await _pending_review(api, reviewer)
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
    second = await _pending_review(api, reviewer)
    assert second != first
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


async def _pending_review(api: httpx.AsyncClient, reviewer: Member) -> str:
    async with asyncio.timeout(20):
        while True:
            queue = await api.get("/api/v1/approvals?kind=content_review", headers=reviewer.headers)
            assert queue.status_code == 200, queue.text
            if queue.json()["items"]:
                approval_id: str = queue.json()["items"][0]["approval_id"]
                return approval_id
            await asyncio.sleep(0.1)


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
