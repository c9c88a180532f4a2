"""The WordPress connector against a real WordPress (tests/peers/wordpress.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from connectors.cms import (
    CMSPort,
    MediaUpload,
    PostDraft,
    PostQuery,
    PostUpdate,
    SitePageDraft,
    SitePageUpdate,
    SiteUserDraft,
    SiteUserUpdate,
    TermDraft,
)
from connectors.cms.wordpress import user_login
from connectors.http import (
    AuthFailed,
    InvalidCursor,
    RateLimited,
    ResponseTooLarge,
    SchemaMismatch,
    UnsafeURL,
    VendorNotFound,
    VendorRejected,
    VendorUnavailable,
    as_application_error,
    connector_client,
)
from connectors.ports import ListQuery
from connectors.registry import ConnectorContext, open_cms
from tests.peers.wordpress import WordPressSite

pytest_plugins = ["tests.peers.wordpress"]

# A 1x1 PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d4944415478da63f8ffff3f0005fe02fea7d6a4a00000000049454e44ae426082"
)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with connector_client(allow_private=True) as client:
        yield client


def _open(
    site: WordPressSite,
    http: httpx.AsyncClient,
    *,
    password: str | None = None,
    max_bytes: int = 8 * 1024 * 1024,
) -> CMSPort:
    return open_cms(
        "wordpress",
        {"site_url": site.url},
        {
            "username": site.username,
            "application_password": password or site.application_password,
        },
        http,
        ConnectorContext(allow_private_urls=True, max_response_bytes=max_bytes),
    )


@pytest.fixture
def cms(wordpress_site: WordPressSite, http: httpx.AsyncClient) -> CMSPort:
    wordpress_site.clear_faults()
    return _open(wordpress_site, http)


def _key() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def test_verify_names_the_account(cms: CMSPort) -> None:
    account = await cms.verify()
    assert account.name == "admin"
    assert account.detail["site"] == "Peer site"


async def test_wrong_application_password_is_auth_failed(
    wordpress_site: WordPressSite, http: httpx.AsyncClient
) -> None:
    cms = _open(wordpress_site, http, password="abcd efgh ijkl mnop qrst uvwx")
    with pytest.raises(AuthFailed) as caught:
        await cms.verify()
    assert caught.value.status == 401
    assert "abcd" not in str(caught.value)
    error = as_application_error(caught.value)
    assert error.non_retryable
    assert error.type == "AuthFailed"


async def test_create_update_and_list_posts_with_pagination(cms: CMSPort) -> None:
    key = _key()
    created = [
        await cms.create_post(PostDraft(title=f"{key} post {i}", content=f"<p>Body {i}</p>"))
        for i in range(5)
    ]
    assert created[0].status == "draft"
    assert created[0].slug == f"{key}-post-0"  # sent explicitly: drafts get none otherwise

    updated = await cms.update_post(
        created[0].id, PostUpdate(title=f"{key} renamed", status="published")
    )
    assert updated.title == f"{key} renamed"
    assert updated.status == "published"
    assert updated.published_at is not None
    assert updated.content == "<p>Body 0</p>"

    seen: list[str] = []
    query = PostQuery(search=key, limit=2)
    pages = 0
    while True:
        page = await cms.list_posts(query)
        pages += 1
        assert len(page.items) <= 2
        seen.extend(post.id for post in page.items)
        if page.next_cursor is None:
            break
        query = PostQuery(cursor=page.next_cursor, limit=2)
    assert pages == 3
    # Newest first and no repeats, though all were saved within the same second or two.
    assert seen == [post.id for post in reversed(created)]

    drafts = await cms.list_posts(PostQuery(search=key, status=["draft"], limit=10))
    assert {p.id for p in drafts.items} == {p.id for p in created[1:]}


async def test_scheduled_post_keeps_its_date(cms: CMSPort) -> None:
    from datetime import UTC, datetime, timedelta

    when = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    post = await cms.create_post(
        PostDraft(title=f"{_key()} later", status="scheduled", publish_at=when)
    )
    assert post.status == "scheduled"
    assert post.published_at == when


async def test_find_post_by_marker_survives_content_updates(cms: CMSPort) -> None:
    marker = f"publish-{uuid.uuid4().hex}"
    assert await cms.find_post_by_marker(marker) is None
    post = await cms.create_post(PostDraft(title="Launch", content="<p>v1</p>", marker=marker))
    assert post.marker == marker
    assert post.content == "<p>v1</p>"  # the marker never shows in the content
    await cms.update_post(post.id, PostUpdate(content="<p>v2</p>"))
    found = await cms.find_post_by_marker(marker)
    assert found is not None
    assert found.id == post.id
    assert found.content == "<p>v2</p>"
    # A post that merely mentions the marker in its text is not the one.
    other = f"publish-{uuid.uuid4().hex}"
    await cms.create_post(PostDraft(title="Mention", content=f"<p>{other}</p>"))
    assert await cms.find_post_by_marker(other) is None


async def test_pages(cms: CMSPort) -> None:
    key = _key()
    parent = await cms.create_page(SitePageDraft(title=f"{key} About", status="published"))
    child = await cms.create_page(SitePageDraft(title=f"{key} Team", parent_id=parent.id))
    assert child.parent_id == parent.id
    moved = await cms.update_page(child.id, SitePageUpdate(parent_id=None, menu_order=3))
    assert moved.parent_id is None
    assert moved.menu_order == 3
    assert (await cms.get_page(parent.id)).status == "published"
    listed = await cms.list_pages(ListQuery(limit=100))
    assert {parent.id, child.id} <= {p.id for p in listed.items}


async def test_media_upload_and_read(cms: CMSPort) -> None:
    media = await cms.upload_media(
        MediaUpload(
            filename="pixel.png", content_type="image/png", data=PNG, title="Pixel", alt_text="dot"
        )
    )
    assert media.mime_type == "image/png"
    assert media.alt_text == "dot"
    assert media.title == "Pixel"
    fetched = await cms.get_media(media.id)
    assert fetched.url == media.url
    listed = await cms.list_media(ListQuery(limit=100))
    assert media.id in {m.id for m in listed.items}


async def test_existing_terms_are_returned_not_duplicated(cms: CMSPort) -> None:
    name = f"Topic {_key()}"
    category = await cms.create_category(TermDraft(name=name))
    again = await cms.create_category(TermDraft(name=name))
    assert again.id == category.id
    tag = await cms.create_tag(TermDraft(name=name))
    assert (await cms.create_tag(TermDraft(name=name))).id == tag.id
    post = await cms.create_post(
        PostDraft(title=f"{name} post", category_ids=[category.id], tag_ids=[tag.id])
    )
    assert post.category_ids == [category.id]
    assert post.tag_ids == [tag.id]
    tags = await cms.list_tags(ListQuery(limit=100))
    assert tag.id in {t.id for t in tags.items}
    categories = await cms.list_categories(ListQuery(limit=100))
    assert category.id in {c.id for c in categories.items}


async def test_site_users_are_made_found_again_and_updated(cms: CMSPort) -> None:
    marker = f"{uuid.uuid4()}:{_key()}"
    address = f"{_key()}@example.com"
    created = await cms.create_user(
        SiteUserDraft(email=address, first_name="Ada", last_name="Byron", external_id=marker)
    )
    assert (created.email, created.first_name, created.last_name) == (address, "Ada", "Byron")
    assert created.username == user_login(marker)
    assert created.registered_at is not None

    assert await cms.find_user_by_external_id(marker) == created
    assert await cms.find_user_by_external_id(f"{marker}-other") is None
    # E-mail matching is exact: a longer address holding this one is not it.
    assert await cms.find_user_by_email(address.upper()) == created
    assert await cms.find_user_by_email(f"x{address}") is None

    renamed = await cms.update_user(created.id, SiteUserUpdate(last_name="Lovelace"))
    assert (renamed.first_name, renamed.last_name, renamed.email) == ("Ada", "Lovelace", address)
    # WordPress refuses a second user with the same e-mail.
    with pytest.raises(VendorRejected) as refused:
        await cms.create_user(SiteUserDraft(email=address, external_id=f"{marker}-2"))
    assert refused.value.code == "existing_user_email"


async def test_missing_post_is_not_found(cms: CMSPort) -> None:
    with pytest.raises(VendorNotFound) as caught:
        await cms.get_post("999999")
    assert caught.value.code == "rest_post_invalid_id"
    assert as_application_error(caught.value).non_retryable


async def test_a_foreign_cursor_is_refused(cms: CMSPort) -> None:
    with pytest.raises(InvalidCursor):
        await cms.list_posts(PostQuery(cursor="not-a-cursor!"))


async def test_rate_limit_429_carries_retry_after(
    cms: CMSPort, wordpress_site: WordPressSite
) -> None:
    wordpress_site.queue_fault(
        status=429,
        headers={"Retry-After": "7"},
        body={"code": "too_many_requests", "message": "Slow down"},
    )
    with pytest.raises(RateLimited) as caught:
        await cms.list_posts(PostQuery())
    assert caught.value.retry_after == 7
    error = as_application_error(caught.value)
    assert not error.non_retryable
    assert error.next_retry_delay is not None
    assert error.next_retry_delay.total_seconds() == 7
    # The limit passed: the next call goes through.
    await cms.list_posts(PostQuery(limit=1))


async def test_maintenance_mode_is_retryable_unavailability(
    cms: CMSPort, wordpress_site: WordPressSite
) -> None:
    with wordpress_site.maintenance(), pytest.raises(VendorUnavailable) as caught:
        await cms.get_post("1")
    assert caught.value.status == 503
    assert caught.value.retry_after == 600  # WordPress's wp_maintenance() says so
    assert caught.value.retryable


async def test_a_changed_response_shape_names_the_field(
    cms: CMSPort, wordpress_site: WordPressSite
) -> None:
    post = await cms.create_post(PostDraft(title=f"{_key()} shape"))
    wordpress_site.queue_fault(drop_field="title")
    with pytest.raises(SchemaMismatch) as caught:
        await cms.get_post(post.id)
    assert caught.value.field == "$.title"
    assert as_application_error(caught.value).non_retryable


async def test_a_huge_page_is_refused_not_buffered(
    wordpress_site: WordPressSite, http: httpx.AsyncClient
) -> None:
    cms = _open(wordpress_site, http, max_bytes=256 * 1024)
    key = _key()
    for i in range(4):
        await cms.create_post(PostDraft(title=f"{key} big {i}", content="<p>" + "x" * 50_000))
    with pytest.raises(ResponseTooLarge) as caught:
        await cms.list_posts(PostQuery(search=key, limit=4))
    assert caught.value.limit == 256 * 1024
    # Smaller pages fit (each post comes raw and rendered: ~100 kB).
    page = await cms.list_posts(PostQuery(search=key, limit=1))
    assert len(page.items) == 1


async def test_loopback_site_is_refused_without_the_setting(
    wordpress_site: WordPressSite,
) -> None:
    settings = {"site_url": wordpress_site.url}
    credentials = {"username": "admin", "application_password": "x"}
    async with connector_client(allow_private=False) as guarded:
        with pytest.raises(UnsafeURL):
            open_cms("wordpress", settings, credentials, guarded, ConnectorContext())
        # Even when the form check is passed (a host name that resolves to loopback), the
        # client's transport refuses the connection after resolving it.
        port = wordpress_site.url.rsplit(":", 1)[1]
        cms = open_cms(
            "wordpress",
            {"site_url": f"https://localhost:{port}"},
            credentials,
            guarded,
            ConnectorContext(allow_private_urls=True),
        )
        with pytest.raises(UnsafeURL, match="loopback"):
            await cms.verify()


async def test_revoke_deletes_the_application_password(
    wordpress_site: WordPressSite, http: httpx.AsyncClient
) -> None:
    # A second application password, so the session's own stays valid.
    admin = _open(wordpress_site, http)
    created = await http.post(
        f"{wordpress_site.url}/wp-json/wp/v2/users/me/application-passwords",
        json={"name": f"revoke-{_key()}"},
        auth=(wordpress_site.username, wordpress_site.application_password),
    )
    assert created.status_code == 201, created.text
    cms = _open(wordpress_site, http, password=created.json()["password"])
    assert (await cms.verify()).name == "admin"
    assert await cms.revoke() is True
    with pytest.raises(AuthFailed):
        await cms.verify()
    assert (await admin.verify()).name == "admin"
