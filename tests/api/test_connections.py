"""Connections over HTTP on the dev server, against a real WordPress with a real application
password: connect, refuse bad credentials (keeping nothing), test, reconnect, disconnect."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from connectors.crm.hubspot import API_BASE
from connectors.secrets import connection_path, secret_store_from_settings, staged_path
from core.db import SessionFactory, transaction
from core.settings import OAuthClientConfig, Settings
from models.audit import AuditEntry
from models.connection import Connection, ConnectionHealth, ConnectionStatus
from models.email import OutboundEmail
from models.tenant import Tenant
from models.user import Role
from tests.factories import Member, member
from tests.history import decoded_history
from tests.peers.hubspot import CLIENT_ID, CLIENT_SECRET, PRIVATE_APP_TOKEN, HubSpotPeer
from tests.peers.wordpress import WordPressSite
from workers.main import build_worker
from workflows.connection import workflow_id

pytest_plugins = ["tests.peers.wordpress", "tests.peers.hubspot"]


@pytest.fixture
def connect_settings(settings: Settings) -> Settings:
    # The WordPress peer listens on loopback, which production settings refuse (SSRF); live
    # reads meet WordPress's default rate limit.
    return settings.model_copy(
        update={"connector_allow_private_urls": True, "connector_rate_limits": {}}
    )


@pytest.fixture
async def connections_api(
    connect_settings: Settings,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    sessions: SessionFactory,
) -> AsyncIterator[httpx.AsyncClient]:
    async with build_worker(temporal_env.client, sessions, connect_settings):
        app = create_app(connect_settings, temporal_env.client, engine)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


def _form(site: WordPressSite, password: str | None = None) -> dict[str, Any]:
    return {
        "site_url": site.url,
        "username": site.username,
        "application_password": password or site.application_password,
    }


async def _connect(
    api: httpx.AsyncClient, who: Member, site: WordPressSite, password: str | None = None
) -> httpx.Response:
    body = {"connector_id": "wordpress", "label": "Main site", "form": _form(site, password)}
    return await api.post("/api/v1/connections", json=body, headers=who.headers)


# Long on both backends: PostgreSQL by default (SQLite when it does not answer), both with
# --slow.
pytestmark = pytest.mark.one_database


async def test_the_registry_describes_every_connector(
    connections_api: httpx.AsyncClient, sessions: SessionFactory, connect_settings: Settings
) -> None:
    someone = await member(sessions, connect_settings, Role.READONLY)
    listed = await connections_api.get("/api/v1/connectors", headers=someone.headers)
    assert listed.status_code == 200
    wordpress = next(c for c in listed.json() if c["id"] == "wordpress")
    form = wordpress["forms"]["application_password"]
    assert form["properties"]["application_password"]["writeOnly"] is True
    missing = await connections_api.get("/api/v1/connectors/nope", headers=someone.headers)
    assert missing.status_code == 404


async def _own_password(site: WordPressSite) -> str:
    """A fresh application password (disconnecting revokes the one the connection holds)."""
    async with httpx.AsyncClient(auth=(site.username, site.application_password)) as wp:
        created = await wp.post(
            f"{site.url}/wp-json/wp/v2/users/me/application-passwords",
            json={"name": f"connection-{uuid.uuid4().hex[:6]}"},
        )
    assert created.status_code == 201, created.text
    password: str = created.json()["password"]
    return password


async def test_connect_test_reconnect_disconnect(
    connections_api: httpx.AsyncClient,
    wordpress_site: WordPressSite,
    sessions: SessionFactory,
    connect_settings: Settings,
    temporal_client: Client,
) -> None:
    api, admin = connections_api, await member(sessions, connect_settings)
    own_password = await _own_password(wordpress_site)
    created = await _connect(api, admin, wordpress_site, own_password)
    assert created.status_code == 201, created.text
    view = created.json()
    assert view["status"] == "connected"
    assert view["health"] == "healthy"
    assert view["account"]["name"]
    assert own_password not in created.text
    connection_id = uuid.UUID(view["connection_id"])

    store = secret_store_from_settings(connect_settings)
    stored = await store.get(connection_path(admin.tenant_id, connection_id))
    assert stored is not None
    assert stored["application_password"] == own_password
    assert await store.get(staged_path(admin.tenant_id, connection_id)) is None
    history = await decoded_history(temporal_client, workflow_id(connection_id), "")
    assert own_password.encode() not in history

    tested = await api.post(f"/api/v1/connections/{connection_id}/test", headers=admin.headers)
    assert tested.status_code == 200, tested.text
    assert tested.json()["checked_at"] is not None

    # New credentials the vendor refuses: 422, and the old ones stay.
    refused = await api.put(
        f"/api/v1/connections/{connection_id}/credentials",
        json={"form": _form(wordpress_site, "wrong wrong wrong wrong")},
        headers=admin.headers,
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["type"].endswith("credentials-rejected")
    assert await store.get(connection_path(admin.tenant_id, connection_id)) == stored

    listed = await api.get("/api/v1/connections", headers=admin.headers)
    assert [c["connection_id"] for c in listed.json()["items"]] == [str(connection_id)]

    gone = await api.delete(f"/api/v1/connections/{connection_id}", headers=admin.headers)
    assert gone.status_code == 204
    assert await store.get(connection_path(admin.tenant_id, connection_id)) is None
    revoked = await _connect(api, admin, wordpress_site, own_password)
    assert revoked.status_code == 422  # revoked at WordPress too
    after = await api.get(f"/api/v1/connections/{connection_id}", headers=admin.headers)
    assert after.json()["status"] == "disconnected"
    async with sessions() as session:
        actions = list(
            await session.scalars(
                select(AuditEntry.action).where(AuditEntry.tenant_id == admin.tenant_id)
            )
        )
    assert actions.count("connection.connected") == 1
    assert actions.count("connection.disconnected") == 1


async def test_refused_credentials_keep_nothing(
    connections_api: httpx.AsyncClient,
    wordpress_site: WordPressSite,
    sessions: SessionFactory,
    connect_settings: Settings,
) -> None:
    admin = await member(sessions, connect_settings)
    refused = await _connect(connections_api, admin, wordpress_site, "not the password at all")
    assert refused.status_code == 422, refused.text
    assert refused.json()["type"].endswith("credentials-rejected")
    async with sessions() as session:
        rows = await session.scalars(
            select(Connection).where(Connection.tenant_id == admin.tenant_id)
        )
        assert list(rows) == []
    folder = connect_settings.data_dir / "secrets" / "vault" / "tenants" / str(admin.tenant_id)
    assert not any(path.is_file() for path in folder.rglob("*"))


async def test_bad_forms_and_foreign_connections_are_refused(
    connections_api: httpx.AsyncClient,
    wordpress_site: WordPressSite,
    sessions: SessionFactory,
    connect_settings: Settings,
) -> None:
    api, admin = connections_api, await member(sessions, connect_settings)
    unknown = await api.post(
        "/api/v1/connections",
        json={"connector_id": "nope", "label": "x", "form": {}},
        headers=admin.headers,
    )
    assert unknown.status_code == 404
    incomplete = await api.post(
        "/api/v1/connections",
        json={"connector_id": "wordpress", "label": "x", "form": {"site_url": "http://x"}},
        headers=admin.headers,
    )
    assert incomplete.status_code == 422
    assert incomplete.json()["errors"]

    connected = await _connect(api, admin, wordpress_site)
    assert connected.status_code == 201, connected.text
    created = connected.json()
    path = f"/api/v1/connections/{created['connection_id']}"
    stranger = await member(sessions, connect_settings)
    for method, suffix in (("GET", ""), ("POST", "/test"), ("DELETE", "")):
        response = await api.request(method, path + suffix, headers=stranger.headers)
        assert response.status_code == 404, (method, suffix, response.text)
        assert wordpress_site.url not in response.text
    reader = await member(sessions, connect_settings, Role.READONLY, tenant_id=admin.tenant_id)
    assert (await api.get(path, headers=reader.headers)).status_code == 200
    assert (await api.delete(path, headers=reader.headers)).status_code == 403
    assert (await _connect(api, reader, wordpress_site)).status_code == 403


async def test_the_plan_limits_connections(
    connections_api: httpx.AsyncClient,
    wordpress_site: WordPressSite,
    sessions: SessionFactory,
    connect_settings: Settings,
) -> None:
    admin = await member(sessions, connect_settings)
    await _on_starter_with(sessions, admin.tenant_id, connections=5)
    limited = await _connect(connections_api, admin, wordpress_site)
    assert limited.status_code == 403
    assert limited.json()["limit"] == "connectors"


async def _on_starter_with(
    sessions: SessionFactory, tenant_id: uuid.UUID, connections: int
) -> None:
    """Put the tenant on the starter plan (five connections) with ``connections`` of them."""
    async with transaction(sessions) as session:
        tenant = await session.get(Tenant, tenant_id)
        assert tenant is not None
        tenant.plan = "starter"
        for n in range(connections):
            session.add(
                Connection(
                    id=uuid.uuid4(),
                    tenant_id=tenant_id,
                    connector_id="wordpress",
                    auth_kind="application_password",
                    label=f"site {n}",
                    settings={},
                    account={},
                    status=ConnectionStatus.CONNECTED,
                    health=ConnectionHealth.HEALTHY,
                )
            )


async def _counted(sessions: SessionFactory, tenant_id: uuid.UUID) -> int:
    """The tenant's connections that are not disconnected."""
    async with sessions() as session:
        rows = await session.scalars(
            select(Connection).where(
                Connection.tenant_id == tenant_id,
                Connection.status != ConnectionStatus.DISCONNECTED,
            )
        )
        return len(list(rows))


async def test_live_reads_come_from_the_tenants_own_system(
    connections_api: httpx.AsyncClient,
    wordpress_site: WordPressSite,
    sessions: SessionFactory,
    connect_settings: Settings,
) -> None:
    api, admin = connections_api, await member(sessions, connect_settings)
    title = f"Live {uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(
        auth=(wordpress_site.username, wordpress_site.application_password)
    ) as wp:
        for n in range(2):
            made = await wp.post(
                f"{wordpress_site.url}/wp-json/wp/v2/posts",
                json={"title": f"{title} {n}", "status": "publish", "slug": f"{title}-{n}"},
            )
            assert made.status_code == 201, made.text
    created = (await _connect(api, admin, wordpress_site)).json()
    base = f"/api/v1/connections/{created['connection_id']}"

    first = await api.get(f"{base}/posts", params={"limit": 1}, headers=admin.headers)
    assert first.status_code == 200, first.text
    assert len(first.json()["items"]) == 1
    cursor = first.json()["next_cursor"]
    assert cursor
    second = await api.get(
        f"{base}/posts", params={"limit": 1, "cursor": cursor}, headers=admin.headers
    )
    titles = [p["title"] for p in first.json()["items"] + second.json()["items"]]
    assert titles == [f"{title} 1", f"{title} 0"]  # newest first, as WordPress lists them

    assert (await api.get(f"{base}/contacts", headers=admin.headers)).status_code == 404
    bad_cursor = await api.get(f"{base}/posts", params={"cursor": "x"}, headers=admin.headers)
    assert bad_cursor.status_code == 422
    stranger = await member(sessions, connect_settings)
    assert (await api.get(f"{base}/posts", headers=stranger.headers)).status_code == 404

    # WordPress allows five calls a second per connection (the cache answers repeats): of 30
    # different reads at once, those whose turn comes within two seconds wait for it (one
    # every 0.2 s), and the rest are told to retry before they reach WordPress.
    answers = await asyncio.gather(
        *(api.get(f"{base}/tags", params={"limit": n}, headers=admin.headers) for n in range(1, 31))
    )
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) >= 10, statuses
    refused = [a for a in answers if a.status_code == 429]
    assert refused, statuses
    assert all(int(a.headers["retry-after"]) >= 2 for a in refused)


@pytest.fixture
async def hubspot_api(
    settings: Settings,
    hubspot_peer: HubSpotPeer,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    sessions: SessionFactory,
) -> AsyncIterator[httpx.AsyncClient]:
    """The API and a worker whose HubSpot is the peer, with this platform's OAuth app there."""
    peered = settings.model_copy(
        update={
            "connector_allow_private_urls": True,
            "connector_vendor_origins": {API_BASE: hubspot_peer.url},
            "oauth_clients": {
                "hubspot": OAuthClientConfig(
                    client_id=CLIENT_ID, client_secret=SecretStr(CLIENT_SECRET)
                )
            },
        }
    )
    async with build_worker(temporal_env.client, sessions, peered):
        app = create_app(peered, temporal_env.client, engine)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def test_oauth_consent_connects_and_tokens_refresh_into_the_store(
    hubspot_api: httpx.AsyncClient,
    hubspot_peer: HubSpotPeer,
    sessions: SessionFactory,
    settings: Settings,
) -> None:
    api, admin = hubspot_api, await member(sessions, settings)
    started = await api.post(
        "/api/v1/connections/oauth",
        json={"connector_id": "hubspot", "label": "CRM", "form": {}},
        headers=admin.headers,
    )
    assert started.status_code == 202, started.text
    query = parse_qs(urlsplit(started.json()["authorize_url"]).query)
    assert query["client_id"] == [CLIENT_ID]
    assert query["redirect_uri"] == [settings.public_api_url + "/api/v1/connections/oauth/callback"]
    state = query["state"][0]

    # The tenant admin consents; HubSpot sends the browser back with a code.
    hubspot_peer.authorization_codes.add("consent-code-1")
    callback = "/api/v1/connections/oauth/callback"
    back = await api.get(callback, params={"state": state, "code": "consent-code-1"})
    assert back.status_code == 200, back.text
    assert back.json()["health"] == "healthy"
    connection_id = uuid.UUID(back.json()["connection_id"])
    stored = await secret_store_from_settings(settings).get(
        connection_path(admin.tenant_id, connection_id)
    )
    assert stored is not None
    assert stored["access_token"] in hubspot_peer.access_tokens
    assert stored["refresh_token"] in hubspot_peer.refresh_tokens

    replayed = await api.get(callback, params={"state": state, "code": "consent-code-1"})
    assert replayed.status_code == 400
    forged = await api.get(callback, params={"state": state[:-2] + "xx", "code": "c"})
    assert forged.status_code == 400

    # An expired access token is refreshed by the connector and written back to the store.
    hubspot_peer.expire(stored["access_token"])
    contacts = await api.get(f"/api/v1/connections/{connection_id}/contacts", headers=admin.headers)
    assert contacts.status_code == 200, contacts.text
    refreshed = await secret_store_from_settings(settings).get(
        connection_path(admin.tenant_id, connection_id)
    )
    assert refreshed is not None
    assert refreshed["access_token"] != stored["access_token"]


async def test_a_denied_or_unknown_code_keeps_nothing(
    hubspot_api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    api, admin = hubspot_api, await member(sessions, settings)
    for params in ({"error": "access_denied"}, {"code": "never-issued"}):
        started = await api.post(
            "/api/v1/connections/oauth",
            json={"connector_id": "hubspot", "label": "CRM", "form": {}},
            headers=admin.headers,
        )
        state = parse_qs(urlsplit(started.json()["authorize_url"]).query)["state"][0]
        back = await api.get(
            "/api/v1/connections/oauth/callback", params={"state": state, **params}
        )
        assert back.status_code == 422, back.text
    async with sessions() as session:
        rows = await session.scalars(
            select(Connection).where(Connection.tenant_id == admin.tenant_id)
        )
        assert list(rows) == []


async def _outbox(sessions: SessionFactory, tenant_id: uuid.UUID, subject: str) -> int:
    async with sessions() as session:
        rows = await session.scalars(
            select(OutboundEmail).where(
                OutboundEmail.tenant_id == tenant_id, OutboundEmail.subject.startswith(subject)
            )
        )
        return len(list(rows))


def _hubspot_connect(
    api: httpx.AsyncClient, admin: Member, label: str, token: str = PRIVATE_APP_TOKEN
) -> Awaitable[httpx.Response]:
    """Connect HubSpot by private app token."""
    return api.post(
        "/api/v1/connections",
        json={
            "connector_id": "hubspot",
            "label": label,
            "auth_kind": "api_key",
            "form": {"api_key": token},
        },
        headers=admin.headers,
    )


async def _hubspot_connection(api: httpx.AsyncClient, admin: Member, label: str) -> str:
    """A HubSpot connection by private app token; its path."""
    created = await _hubspot_connect(api, admin, label)
    assert created.status_code == 201, created.text
    return f"/api/v1/connections/{created.json()['connection_id']}"


async def test_connects_at_once_never_pass_the_plan(
    hubspot_api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    """One connection below the limit, two connects at once: one connects, the other is
    refused, however the two interleave."""
    admin = await member(sessions, settings)
    await _on_starter_with(sessions, admin.tenant_id, connections=4)
    answers = await asyncio.gather(
        *(_hubspot_connect(hubspot_api, admin, f"CRM {n}") for n in range(2))
    )
    assert sorted(a.status_code for a in answers) == [201, 403], [a.text for a in answers]
    refused = next(a for a in answers if a.status_code == 403).json()
    assert (refused["limit"], refused["allowed"], refused["used"]) == ("connectors", 5, 5)
    assert await _counted(sessions, admin.tenant_id) == 5


async def test_a_connect_under_way_holds_its_slot_until_it_ends(
    hubspot_api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    """A consent being given holds the last slot; a refused or denied connect frees it."""
    api, admin = hubspot_api, await member(sessions, settings)
    await _on_starter_with(sessions, admin.tenant_id, connections=4)
    refused = await _hubspot_connect(api, admin, "CRM", token="pat-na1-not-a-token")
    assert refused.status_code == 422, refused.text

    started = await api.post(
        "/api/v1/connections/oauth",
        json={"connector_id": "hubspot", "label": "CRM", "form": {}},
        headers=admin.headers,
    )
    assert started.status_code == 202, started.text
    meanwhile = await _hubspot_connect(api, admin, "Other CRM")
    assert meanwhile.status_code == 403, meanwhile.text
    again = await api.post(
        "/api/v1/connections/oauth",
        json={"connector_id": "hubspot", "label": "CRM", "form": {}},
        headers=admin.headers,
    )
    assert again.status_code == 403, again.text

    state = parse_qs(urlsplit(started.json()["authorize_url"]).query)["state"][0]
    denied = await api.get(
        "/api/v1/connections/oauth/callback", params={"state": state, "error": "access_denied"}
    )
    assert denied.status_code == 422, denied.text
    assert (await _hubspot_connect(api, admin, "CRM")).status_code == 201
    assert await _counted(sessions, admin.tenant_id) == 5


async def test_revoked_credentials_mark_the_connection_and_tell_the_admins_once(
    hubspot_api: httpx.AsyncClient,
    hubspot_peer: HubSpotPeer,
    sessions: SessionFactory,
    settings: Settings,
) -> None:
    api, admin = hubspot_api, await member(sessions, settings)
    base = await _hubspot_connection(api, admin, "Main CRM")
    assert (await api.get(f"{base}/contacts", headers=admin.headers)).status_code == 200

    del hubspot_peer.access_tokens[PRIVATE_APP_TOKEN]  # the account's owner revokes the app
    read = await api.get(f"{base}/companies", headers=admin.headers)
    assert read.status_code == 409, read.text
    assert read.json()["reason"] == "auth_failed"
    for _ in range(100):  # the check that the failed read started runs in the background
        view = (await api.get(base, headers=admin.headers)).json()
        if view["health"] == "auth_failed":
            break
        await asyncio.sleep(0.05)
    assert view["health"] == "auth_failed"
    assert view["last_error"]
    for _ in range(100):  # 409 while the background check is still running
        again = await api.post(f"{base}/test", headers=admin.headers)
        if again.status_code != 409:
            break
        await asyncio.sleep(0.05)
    assert again.status_code == 200, again.text
    assert again.json()["health"] == "auth_failed"
    assert await _outbox(sessions, admin.tenant_id, "Reconnect Main CRM") == 1


async def test_a_record_is_created_once_however_often_the_request_is_retried(
    hubspot_api: httpx.AsyncClient,
    hubspot_peer: HubSpotPeer,
    sessions: SessionFactory,
    settings: Settings,
) -> None:
    api, admin = hubspot_api, await member(sessions, settings)
    path = f"{await _hubspot_connection(api, admin, 'CRM')}/contacts"
    contact = {"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace"}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = await api.post(path, json=contact, headers=admin.headers | key)
    assert first.status_code == 201, first.text
    assert first.json()["created"] is True
    again = await api.post(path, json=contact, headers=admin.headers | key)
    assert again.status_code == 201, again.text
    assert again.json()["record_id"] == first.json()["record_id"]
    listed = await api.get(path, headers=admin.headers)
    assert [c["email"] for c in listed.json()["items"]] == ["ada@example.com"]

    bad = await api.post(path, json={"email": "not an address"}, headers=admin.headers)
    assert bad.status_code == 422
    reader = await member(sessions, settings, Role.READONLY, tenant_id=admin.tenant_id)
    assert (await api.post(path, json=contact, headers=reader.headers)).status_code == 403
    async with sessions() as session:
        audited = await session.scalars(
            select(AuditEntry).where(
                AuditEntry.tenant_id == admin.tenant_id,
                AuditEntry.action == "connection.contact_created",
            )
        )
        assert len(list(audited)) == 1
