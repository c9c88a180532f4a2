"""WordPress through its REST API (``wp/v2``), signed in with an application password.

- Auth: HTTP Basic with the user's name and an application password
  (https://developer.wordpress.org/rest-api/using-the-rest-api/authentication/). Credentials are
  checked with ``GET /wp/v2/users/me``: public routes answer anonymous callers too, so only an
  authenticated route tells a wrong password apart.
- Reads use ``context=edit`` so content comes raw (as stored), not rendered.
- Lists are paged by ``page``/``per_page`` in id order (posts, pages and media newest first,
  terms oldest first): ids are unique, dates are not, and offset pages over ties overlap. The
  cursor carries the page and the listing's filters; a page past the end (records deleted
  meanwhile) ends the listing.
- Markers (exactly-once publishing): WordPress drops unregistered post meta silently, so the
  marker travels inside the content as an HTML comment (``<!-- bizosaas:marker=KEY -->``),
  invisible on the site, kept by the editor, and found again through the search parameter.
  :attr:`Post.content` never shows it; updates keep it.
- Creating a category or tag that exists (``term_exists``) returns the existing one.
- Site users (a CRM's contacts synced to the site) are found again by their login name,
  ``bz-`` and a hash of the record's marker (:func:`user_login`), or by e-mail; their password
  is random and never kept.
- Revoking deletes this application password (found with ``.../application-passwords/introspect``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime
from typing import Any

import httpx
from pydantic import BaseModel, Field, field_validator

from connectors.cms import (
    ContentStatus,
    Media,
    MediaUpload,
    Post,
    PostDraft,
    PostQuery,
    PostUpdate,
    SitePage,
    SitePageDraft,
    SitePageUpdate,
    SiteUser,
    SiteUserDraft,
    SiteUserUpdate,
    Term,
    TermDraft,
)
from connectors.http import (
    AuthFailed,
    ConnectorError,
    VendorNotFound,
    VendorRejected,
    base_url_form,
    check_base_url,
    json_body,
    parse_as,
    parse_list,
    utc,
)
from connectors.ports import AccountInfo, ListQuery, Page, decode_cursor, encode_cursor
from connectors.registry import (
    ApplicationPasswordCredentials,
    ConnectionSettings,
    ConnectorContext,
    ConnectorSpec,
    RateLimit,
)
from connectors.wprest import WPRest

VENDOR = "WordPress"

_STATUS_TO_WP: dict[ContentStatus, str] = {
    "draft": "draft",
    "pending": "pending",
    "scheduled": "future",
    "published": "publish",
    "private": "private",
}
_STATUS_FROM_WP: dict[str, ContentStatus] = {v: k for k, v in _STATUS_TO_WP.items()}
_ALL_STATUSES = ",".join(_STATUS_TO_WP.values())

_MARKER = re.compile(r"\s*<!-- bizosaas:marker=([A-Za-z0-9_-]{8,100}) -->\s*$")


class WordPressSettings(ConnectionSettings):
    site_url: str = Field(
        title="Site URL",
        description="The site's address, e.g. https://blog.example.com",
        max_length=500,
    )

    @field_validator("site_url")
    @classmethod
    def _url_form(cls, value: str) -> str:
        return base_url_form(value)


class WordPressCredentials(ApplicationPasswordCredentials):
    pass


# --- The vendor's shapes (context=edit) -----------------------------------------------------


class _Text(BaseModel):
    raw: str


class _WPPost(BaseModel):
    id: int
    date_gmt: datetime | None = None
    modified_gmt: datetime | None = None
    slug: str
    status: str
    link: str | None = None
    title: _Text
    content: _Text
    excerpt: _Text | None = None
    author: int | None = None
    featured_media: int | None = None
    categories: list[int] = []
    tags: list[int] = []
    parent: int | None = None
    menu_order: int | None = None


class _WPMedia(BaseModel):
    id: int
    date_gmt: datetime | None = None
    title: _Text
    description: _Text | None = None
    source_url: str
    mime_type: str
    alt_text: str = ""


class _WPTerm(BaseModel):
    id: int
    name: str
    slug: str
    description: str = ""
    parent: int | None = None
    count: int = 0


class _WPUser(BaseModel):
    id: int
    name: str
    username: str | None = None
    email: str | None = None
    first_name: str = ""
    last_name: str = ""
    registered_date: datetime | None = None


class _WPSite(BaseModel):
    name: str
    url: str | None = None


class WordPress:
    """:class:`~connectors.cms.CMSPort` over one site's REST API."""

    def __init__(
        self,
        settings: WordPressSettings,
        credentials: ApplicationPasswordCredentials,
        http: httpx.AsyncClient,
        context: ConnectorContext,
    ) -> None:
        site_url = check_base_url(settings.site_url, allow_private=context.allow_private_urls)
        self._rest = WPRest(
            http,
            site_url=site_url,
            username=credentials.username,
            password=credentials.application_password.get_secret_value(),
            vendor=VENDOR,
            max_bytes=context.max_response_bytes,
        )

    # --- Connection ---------------------------------------------------------------------

    async def verify(self) -> AccountInfo:
        me = parse_as(
            _WPUser, await self._rest.get_json("wp/v2/users/me", context="edit"), vendor=VENDOR
        )
        site = parse_as(
            _WPSite,
            json_body(
                await self._rest.call("GET", "", params={"_fields": "name,url"}), vendor=VENDOR
            ),
            vendor=VENDOR,
        )
        return AccountInfo(
            account_id=str(me.id),
            name=me.name,
            detail={"site": site.name, "username": me.username or ""},
        )

    async def revoke(self) -> bool:
        introspect = await self._rest.get_json("wp/v2/users/me/application-passwords/introspect")
        uuid = introspect.get("uuid") if isinstance(introspect, dict) else None
        if not isinstance(uuid, str):
            return False
        await self._rest.call("DELETE", f"wp/v2/users/me/application-passwords/{uuid}")
        return True

    # --- Posts --------------------------------------------------------------------------

    async def list_posts(self, query: PostQuery) -> Page[Post]:
        state = self._state(query.cursor) or {
            "status": ",".join(_STATUS_TO_WP[s] for s in query.status)
            if query.status
            else _ALL_STATUSES,
            "search": query.search,
        }
        try:
            items, next_cursor = await self._page(
                "wp/v2/posts", state, query.limit, status=state["status"], search=state["search"]
            )
        except VendorRejected as exc:
            raise _anonymous(exc) from None
        return Page(
            items=[_post(p) for p in parse_list(_WPPost, items, vendor=VENDOR)],
            next_cursor=next_cursor,
        )

    async def get_post(self, post_id: str) -> Post:
        return _post(await self._get_post(post_id))

    async def create_post(self, draft: PostDraft) -> Post:
        body = _post_body(draft.model_dump(exclude_unset=True, exclude={"marker"}))
        content = draft.content
        if draft.marker is not None:
            content = _with_marker(content, draft.marker)
        body["content"] = content
        # Without a slug, drafts keep an empty one until published: send one always.
        body.setdefault("slug", _slugify(draft.title))
        body.setdefault("status", _STATUS_TO_WP[draft.status])
        created = await self._rest.call(
            "POST", "wp/v2/posts", params={"context": "edit"}, json=body
        )
        return _post(parse_as(_WPPost, json_body(created, vendor=VENDOR), vendor=VENDOR))

    async def update_post(self, post_id: str, update: PostUpdate) -> Post:
        changes = update.model_dump(exclude_unset=True)
        body = _post_body(changes)
        if "content" in changes:
            marker = _marker_of((await self._get_post(post_id)).content.raw)
            content = update.content or ""
            body["content"] = _with_marker(content, marker) if marker else content
        updated = await self._rest.call(
            "POST", f"wp/v2/posts/{_int_id(post_id)}", params={"context": "edit"}, json=body
        )
        return _post(parse_as(_WPPost, json_body(updated, vendor=VENDOR), vendor=VENDOR))

    async def find_post_by_marker(self, marker: str) -> Post | None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{8,100}", marker):
            raise ValueError("not a marker")
        try:
            found = await self._rest.get_json(
                "wp/v2/posts", context="edit", status=_ALL_STATUSES, search=marker, per_page=10
            )
        except VendorRejected as exc:
            raise _anonymous(exc) from None
        for post in parse_list(_WPPost, found, vendor=VENDOR):
            # Search matches words anywhere; only the marker comment itself counts.
            if _marker_of(post.content.raw) == marker:
                return _post(post)
        return None

    async def trash_post(self, post_id: str) -> None:
        # Without ``force`` WordPress moves the post to its trash (restorable for 30 days).
        await self._rest.call("DELETE", f"wp/v2/posts/{_int_id(post_id)}")

    async def _get_post(self, post_id: str) -> _WPPost:
        data = await self._rest.get_json(f"wp/v2/posts/{_int_id(post_id)}", context="edit")
        return parse_as(_WPPost, data, vendor=VENDOR)

    # --- Pages --------------------------------------------------------------------------

    async def list_pages(self, query: ListQuery) -> Page[SitePage]:
        state = self._state(query.cursor) or {}
        items, next_cursor = await self._page(
            "wp/v2/pages", state, query.limit, status=_ALL_STATUSES
        )
        return Page(
            items=[_page(p) for p in parse_list(_WPPost, items, vendor=VENDOR)],
            next_cursor=next_cursor,
        )

    async def get_page(self, page_id: str) -> SitePage:
        data = await self._rest.get_json(f"wp/v2/pages/{_int_id(page_id)}", context="edit")
        return _page(parse_as(_WPPost, data, vendor=VENDOR))

    async def create_page(self, draft: SitePageDraft) -> SitePage:
        body = _page_body(draft.model_dump())
        body.setdefault("slug", _slugify(draft.title))
        created = await self._rest.call(
            "POST", "wp/v2/pages", params={"context": "edit"}, json=body
        )
        return _page(parse_as(_WPPost, json_body(created, vendor=VENDOR), vendor=VENDOR))

    async def update_page(self, page_id: str, update: SitePageUpdate) -> SitePage:
        body = _page_body(update.model_dump(exclude_unset=True))
        updated = await self._rest.call(
            "POST", f"wp/v2/pages/{_int_id(page_id)}", params={"context": "edit"}, json=body
        )
        return _page(parse_as(_WPPost, json_body(updated, vendor=VENDOR), vendor=VENDOR))

    # --- Media --------------------------------------------------------------------------

    async def list_media(self, query: ListQuery) -> Page[Media]:
        state = self._state(query.cursor) or {}
        items, next_cursor = await self._page("wp/v2/media", state, query.limit)
        return Page(
            items=[_media(m) for m in parse_list(_WPMedia, items, vendor=VENDOR)],
            next_cursor=next_cursor,
        )

    async def get_media(self, media_id: str) -> Media:
        data = await self._rest.get_json(f"wp/v2/media/{_int_id(media_id)}", context="edit")
        return _media(parse_as(_WPMedia, data, vendor=VENDOR))

    async def upload_media(self, upload: MediaUpload) -> Media:
        fields = {"alt_text": upload.alt_text}
        if upload.title is not None:
            fields["title"] = upload.title
        if upload.marker is not None:
            fields["description"] = _with_marker("", upload.marker).strip()
        created = await self._rest.call(
            "POST",
            "wp/v2/media",
            params={"context": "edit"},
            files={"file": (upload.filename, upload.data, upload.content_type)},
            data=fields,
        )
        return _media(parse_as(_WPMedia, json_body(created, vendor=VENDOR), vendor=VENDOR))

    async def find_media_by_marker(self, marker: str) -> Media | None:
        # Files carry the marker as their description (the attachment's content), which the
        # search parameter covers like a post's.
        if not re.fullmatch(r"[A-Za-z0-9_-]{8,100}", marker):
            raise ValueError("not a marker")
        found = await self._rest.get_json("wp/v2/media", context="edit", search=marker, per_page=10)
        for media in parse_list(_WPMedia, found, vendor=VENDOR):
            if media.description is not None and _marker_of(media.description.raw) == marker:
                return _media(media)
        return None

    # --- Terms --------------------------------------------------------------------------

    async def list_categories(self, query: ListQuery) -> Page[Term]:
        return await self._list_terms("wp/v2/categories", query)

    async def create_category(self, draft: TermDraft) -> Term:
        return await self._create_term("wp/v2/categories", draft)

    async def list_tags(self, query: ListQuery) -> Page[Term]:
        return await self._list_terms("wp/v2/tags", query)

    async def create_tag(self, draft: TermDraft) -> Term:
        return await self._create_term("wp/v2/tags", draft.model_copy(update={"parent_id": None}))

    # --- Users --------------------------------------------------------------------------

    async def create_user(self, draft: SiteUserDraft) -> SiteUser:
        login = user_login(draft.external_id)
        body = {
            "username": login,
            "slug": login,
            "email": draft.email,
            # Required by WordPress; never kept or shown: the person sets their own through
            # the site's lost-password page.
            "password": secrets.token_urlsafe(24),
            **_user_names(draft.first_name, draft.last_name),
        }
        created = await self._rest.call(
            "POST", "wp/v2/users", params={"context": "edit"}, json=body
        )
        return _user(parse_as(_WPUser, json_body(created, vendor=VENDOR), vendor=VENDOR))

    async def update_user(self, user_id: str, update: SiteUserUpdate) -> SiteUser:
        changes = update.model_dump(exclude_unset=True)
        body: dict[str, Any] = {"email": changes["email"]} if changes.get("email") else {}
        if "first_name" in changes or "last_name" in changes:
            # The display name is made of both: the one not given is the user's current one.
            current = parse_as(
                _WPUser,
                await self._rest.get_json(f"wp/v2/users/{_int_id(user_id)}", context="edit"),
                vendor=VENDOR,
            )
            body.update(
                _user_names(
                    changes.get("first_name", current.first_name),
                    changes.get("last_name", current.last_name),
                )
            )
        updated = await self._rest.call(
            "POST", f"wp/v2/users/{_int_id(user_id)}", params={"context": "edit"}, json=body
        )
        return _user(parse_as(_WPUser, json_body(updated, vendor=VENDOR), vendor=VENDOR))

    async def find_user_by_external_id(self, external_id: str) -> SiteUser | None:
        login = user_login(external_id)
        found = await self._rest.get_json("wp/v2/users", context="edit", slug=login)
        users = [u for u in parse_list(_WPUser, found, vendor=VENDOR) if u.username == login]
        return _user(users[0]) if users else None

    async def find_user_by_email(self, email: str) -> SiteUser | None:
        # WordPress searches the e-mail column for a term with an "@", with wildcards around
        # it: only an exact (case-insensitive) address counts.
        found = await self._rest.get_json("wp/v2/users", context="edit", search=email)
        wanted = email.casefold()
        for user in parse_list(_WPUser, found, vendor=VENDOR):
            if (user.email or "").casefold() == wanted:
                return _user(user)
        return None

    async def _list_terms(self, route: str, query: ListQuery) -> Page[Term]:
        state = self._state(query.cursor) or {}
        items, next_cursor = await self._page(route, state, query.limit, order="asc")
        return Page(
            items=[_term(t) for t in parse_list(_WPTerm, items, vendor=VENDOR)],
            next_cursor=next_cursor,
        )

    async def _create_term(self, route: str, draft: TermDraft) -> Term:
        body: dict[str, Any] = {"name": draft.name, "description": draft.description}
        if draft.slug:
            body["slug"] = draft.slug
        if draft.parent_id is not None:
            body["parent"] = _int_id(draft.parent_id)
        try:
            created = await self._rest.call("POST", route, params={"context": "edit"}, json=body)
        except VendorRejected as exc:
            term_id = exc.data.get("term_id") if exc.code == "term_exists" else None
            if not isinstance(term_id, int):
                raise
            existing = await self._rest.get_json(f"{route}/{term_id}", context="edit")
            return _term(parse_as(_WPTerm, existing, vendor=VENDOR))
        return _term(parse_as(_WPTerm, json_body(created, vendor=VENDOR), vendor=VENDOR))

    # --- Paging -------------------------------------------------------------------------

    def _state(self, cursor: str | None) -> dict[str, Any] | None:
        return None if cursor is None else decode_cursor(cursor, vendor=VENDOR)

    async def _page(
        self, route: str, state: dict[str, Any], limit: int, **params: Any
    ) -> tuple[Any, str | None]:
        page = int(state.get("page", 1))
        per_page = int(state.get("per_page", limit))
        # Pages are offsets: only a unique sort key keeps them from overlapping. By date, posts
        # saved in the same second come back in any order, so one can repeat and another vanish.
        params.setdefault("orderby", "id")
        params.setdefault("order", "desc")
        try:
            items, pages = await self._rest.page(
                route, page=page, per_page=per_page, context="edit", **params
            )
        except VendorRejected as exc:
            # Records deleted since the previous page can leave this page past the end.
            if exc.code in ("rest_post_invalid_page_number", "rest_invalid_page_number"):
                return [], None
            raise
        more = page < pages
        next_cursor = encode_cursor({**state, "page": page + 1, "per_page": per_page})
        return items, next_cursor if more else None


# --- Mapping --------------------------------------------------------------------------------


def _anonymous(exc: VendorRejected) -> ConnectorError:
    """Credentials WordPress does not accept can make it answer as to an anonymous visitor,
    who may not ask for unpublished statuses: that refusal is an authentication failure."""
    params = exc.data.get("params")
    if exc.code == "rest_invalid_param" and isinstance(params, dict) and "status" in params:
        return AuthFailed(
            "WordPress answered as to an anonymous visitor: the credentials are not accepted.",
            vendor=VENDOR,
            status=exc.status,
        )
    return exc


def user_login(external_id: str) -> str:
    """The login name (and slug) of the user made from the record ``external_id`` names: the
    marker a user is found by again, within WordPress's 50 characters for a slug."""
    return "bz-" + hashlib.sha256(external_id.encode()).hexdigest()[:24]


def _user_names(first: str | None, last: str | None) -> dict[str, str]:
    names = {"first_name": first or "", "last_name": last or ""}
    display = " ".join(n for n in (first, last) if n)
    return names | ({"name": display, "nickname": display} if display else {})


def _user(user: _WPUser) -> SiteUser:
    return SiteUser(
        id=str(user.id),
        username=user.username or "",
        email=user.email,
        first_name=user.first_name,
        last_name=user.last_name,
        registered_at=utc(user.registered_date) if user.registered_date else None,
    )


def _int_id(value: str) -> int:
    if not value.isdigit():
        raise VendorNotFound(f"{VENDOR} ids are numbers, not {value!r}", vendor=VENDOR, status=404)
    return int(value)


def _slugify(title: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return slug[:190] or "post"


def _with_marker(content: str, marker: str) -> str:
    return f"{content}\n<!-- bizosaas:marker={marker} -->"


def _marker_of(raw: str) -> str | None:
    match = _MARKER.search(raw)
    return match.group(1) if match else None


def _without_marker(raw: str) -> str:
    return _MARKER.sub("", raw)


def _status(value: str) -> ContentStatus:
    # "trash", "auto-draft" and plugin statuses read as drafts: not public.
    return _STATUS_FROM_WP.get(value, "draft")


def _post(post: _WPPost) -> Post:
    published = post.date_gmt if post.status in ("publish", "future", "private") else None
    return Post(
        id=str(post.id),
        title=post.title.raw,
        content=_without_marker(post.content.raw),
        excerpt=post.excerpt.raw if post.excerpt else "",
        slug=post.slug,
        status=_status(post.status),
        url=post.link,
        author_id=str(post.author) if post.author else None,
        category_ids=[str(c) for c in post.categories],
        tag_ids=[str(t) for t in post.tags],
        featured_media_id=str(post.featured_media) if post.featured_media else None,
        published_at=utc(published) if published else None,
        modified_at=utc(post.modified_gmt) if post.modified_gmt else None,
        marker=_marker_of(post.content.raw),
    )


def _page(page: _WPPost) -> SitePage:
    return SitePage(
        id=str(page.id),
        title=page.title.raw,
        content=page.content.raw,
        slug=page.slug,
        status=_status(page.status),
        url=page.link,
        parent_id=str(page.parent) if page.parent else None,
        menu_order=page.menu_order or 0,
        modified_at=utc(page.modified_gmt) if page.modified_gmt else None,
    )


def _media(media: _WPMedia) -> Media:
    return Media(
        id=str(media.id),
        title=media.title.raw,
        url=media.source_url,
        mime_type=media.mime_type,
        alt_text=media.alt_text,
        created_at=utc(media.date_gmt) if media.date_gmt else None,
        marker=_marker_of(media.description.raw) if media.description else None,
    )


def _term(term: _WPTerm) -> Term:
    return Term(
        id=str(term.id),
        name=term.name,
        slug=term.slug,
        description=term.description,
        parent_id=str(term.parent) if term.parent else None,
        count=term.count,
    )


def _post_body(changes: dict[str, Any]) -> dict[str, Any]:
    """The wp/v2 fields for the port's post fields present in ``changes``."""
    body: dict[str, Any] = {}
    for name in ("title", "content", "excerpt", "slug"):
        if changes.get(name) is not None:
            body[name] = changes[name]
    if changes.get("status") is not None:
        body["status"] = _STATUS_TO_WP[changes["status"]]
    if changes.get("category_ids") is not None:
        body["categories"] = [_int_id(c) for c in changes["category_ids"]]
    if changes.get("tag_ids") is not None:
        body["tags"] = [_int_id(t) for t in changes["tag_ids"]]
    if "featured_media_id" in changes:
        media = changes["featured_media_id"]
        body["featured_media"] = _int_id(media) if media else 0
    if changes.get("publish_at") is not None:
        body["date_gmt"] = utc(changes["publish_at"]).replace(tzinfo=None).isoformat()
    return body


def _page_body(changes: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in ("title", "content", "slug", "menu_order"):
        if changes.get(name) is not None:
            body[name] = changes[name]
    if changes.get("status") is not None:
        body["status"] = _STATUS_TO_WP[changes["status"]]
    if "parent_id" in changes:
        parent = changes["parent_id"]
        body["parent"] = _int_id(parent) if parent else 0
    return body


def _open(
    settings: WordPressSettings,
    credentials: ApplicationPasswordCredentials,
    http: httpx.AsyncClient,
    context: ConnectorContext,
) -> WordPress:
    return WordPress(settings, credentials, http, context)


SPEC = ConnectorSpec(
    id="wordpress",
    kind="cms",
    display_name="WordPress",
    description="Posts, pages, media, categories and tags of a WordPress site (REST API).",
    docs_url="https://developer.wordpress.org/rest-api/",
    settings_model=WordPressSettings,
    auth={"application_password": WordPressCredentials},
    factory=_open,
    # WordPress sets no limit itself; hosts do. Stay polite to shared hosting.
    rate_limit=RateLimit(requests=5, per_seconds=1, concurrency=2),
)
