"""Sync profiles over HTTP: created, triggered and backfilled through their Temporal Schedule
against the WooCommerce and HubSpot peers, paused, resumed and deleted; other tenants
refused; a two-way profile between the HubSpot and Zoho peers and its conflicts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.sync import schedule_id
from api.app import create_app
from connectors.crm.hubspot import API_BASE
from core.db import SessionFactory, transaction
from core.settings import Settings
from models.sync import SyncProfile
from models.user import Role
from tests.factories import Member, member
from tests.peers.hubspot import HubSpotPeer
from tests.peers.woocommerce import WooCommercePeer
from tests.peers.zoho import ZohoPeer
from tests.workflows.test_sync import (
    T0,
    _hubspot_edit,
    _zoho_edit,
    connect_crms,
    connect_pair,
    with_zoho,
)
from workers.main import build_worker

pytest_plugins = ["tests.peers.woocommerce", "tests.peers.hubspot", "tests.peers.zoho"]


@pytest.fixture
async def sync_api(
    peered: Settings,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    sessions: SessionFactory,
) -> AsyncIterator[httpx.AsyncClient]:
    async with build_worker(temporal_env.client, sessions, peered):
        app = create_app(peered, temporal_env.client, engine)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


@pytest.fixture
def peered(settings: Settings, hubspot_peer: HubSpotPeer) -> Settings:
    return settings.model_copy(
        update={
            "connector_allow_private_urls": True,
            "connector_vendor_origins": {API_BASE: hubspot_peer.url},
        }
    )


async def _profile(
    api: httpx.AsyncClient, who: Member, shop: uuid.UUID, crm: uuid.UUID, **extra: Any
) -> httpx.Response:
    body = {
        "source_connection_id": str(shop),
        "target_connection_id": str(crm),
        "source_resource": "customers",
        "target_resource": "contacts",
        **extra,
    }
    return await api.post("/api/v1/sync/profiles", json=body, headers=who.headers)


# Long on both backends: PostgreSQL by default (SQLite when it does not answer), both with
# --slow.
pytestmark = pytest.mark.one_database


async def _finished_run(api: httpx.AsyncClient, who: Member, path: str) -> dict[str, Any]:
    for _ in range(600):
        view = (await api.get(path, headers=who.headers)).json()
        run = view["last_run"]
        if run is not None and run["outcome"] is not None:
            return dict(run)
        await asyncio.sleep(0.1)
    pytest.fail("the run did not finish")


async def test_a_profile_is_triggered_paused_resumed_and_deleted(
    sync_api: httpx.AsyncClient,
    peered: Settings,
    sessions: SessionFactory,
    woocommerce_peer: WooCommercePeer,
    hubspot_peer: HubSpotPeer,
    temporal_client: Client,
) -> None:
    api, admin = sync_api, await member(sessions, peered)
    shop, crm = await connect_pair(sessions, peered, admin.tenant_id, woocommerce_peer.url)
    hubspot_peer.interval_max = 10_000
    for n in range(30):
        woocommerce_peer.add_customer(f"buyer{n}@example.com", modified=T0 + timedelta(minutes=n))
    created = await _profile(api, admin, shop, crm, interval_minutes=1440)
    assert created.status_code == 201, created.text
    view = created.json()
    assert view["status"] == "active"
    assert view["field_mapping"]["email"] == "email"
    path = f"/api/v1/sync/profiles/{view['profile_id']}"
    schedule = temporal_client.get_schedule_handle(schedule_id(uuid.UUID(view["profile_id"])))
    assert not (await schedule.describe()).schedule.state.paused

    triggered = await api.post(f"{path}/trigger", headers=admin.headers)
    assert triggered.status_code == 202, triggered.text
    run = await _finished_run(api, admin, path)
    assert run["outcome"] == "completed"
    assert (run["read"], run["created"], run["updated"]) == (30, 30, 0)
    assert len(hubspot_peer.records["contacts"]) == 30
    runs = (await api.get(f"{path}/runs", headers=admin.headers)).json()
    assert [r["run_id"] for r in runs["items"]] == [run["run_id"]]
    assert (await api.get(path, headers=admin.headers)).json()["cursor"] is not None

    paused = await api.post(f"{path}/pause", headers=admin.headers)
    assert paused.json()["status"] == "paused"
    assert (await schedule.describe()).schedule.state.paused
    assert (await api.post(f"{path}/trigger", headers=admin.headers)).status_code == 409
    resumed = await api.post(f"{path}/resume", headers=admin.headers)
    assert resumed.json()["status"] == "active"
    assert not (await schedule.describe()).schedule.state.paused

    listed = (await api.get("/api/v1/sync/profiles", headers=admin.headers)).json()
    assert [p["profile_id"] for p in listed["items"]] == [view["profile_id"]]
    deleted = await api.delete(path, headers=admin.headers)
    assert deleted.status_code == 204
    assert (await api.get(path, headers=admin.headers)).status_code == 404
    assert not [s async for s in await temporal_client.list_schedules() if s.id == schedule.id]


async def test_profiles_are_validated_and_other_tenants_refused(
    sync_api: httpx.AsyncClient,
    peered: Settings,
    sessions: SessionFactory,
    woocommerce_peer: WooCommercePeer,
) -> None:
    api, admin = sync_api, await member(sessions, peered)
    shop, crm = await connect_pair(sessions, peered, admin.tenant_id, woocommerce_peer.url)
    stranger = await member(sessions, peered)
    their_shop, their_crm = await connect_pair(
        sessions, peered, stranger.tenant_id, woocommerce_peer.url
    )

    # Another tenant's connection on either side: 404, as if it did not exist.
    assert (await _profile(api, admin, their_shop, crm)).status_code == 404
    assert (await _profile(api, admin, shop, their_crm)).status_code == 404
    # Connectors that do not hold the resources, an unknown pair, unknown fields: 422.
    assert (await _profile(api, admin, crm, shop)).status_code == 422
    unknown_pair = await _profile(api, admin, shop, crm, target_resource="deals")
    assert unknown_pair.status_code == 422
    # Customers to contacts is not its own reverse: one way only.
    two_way = await _profile(api, admin, shop, crm, direction="two_way")
    assert two_way.status_code == 422
    assert two_way.json()["errors"][0]["loc"] == ["body", "direction"]
    assert (await _profile(api, admin, shop, crm, direction="both")).status_code == 422
    # Orders to deals: a deal needs a stage, so a mapping without one is refused.
    stageless = await _profile(
        api,
        admin,
        shop,
        crm,
        source_resource="orders",
        target_resource="deals",
        field_mapping={"name": "number", "amount": "total"},
    )
    assert stageless.status_code == 422
    assert stageless.json()["errors"][0]["loc"] == ["body", "field_mapping", "stage"]
    orders = await _profile(
        api, admin, shop, crm, source_resource="orders", target_resource="deals"
    )
    assert orders.status_code == 201, orders.text
    assert orders.json()["field_mapping"]["stage"] == "status"
    bad_mapping = await _profile(
        api, admin, shop, crm, field_mapping={"email": "email", "first_name": "nickname"}
    )
    assert bad_mapping.status_code == 422
    assert bad_mapping.json()["errors"][0]["loc"] == ["body", "field_mapping", "first_name"]
    # Only tenant admins write.
    reader = await member(sessions, peered, Role.READONLY, tenant_id=admin.tenant_id)
    assert (await _profile(api, reader, shop, crm)).status_code == 403

    created = await _profile(api, admin, shop, crm)
    assert created.status_code == 201, created.text
    assert created.json()["direction"] == "one_way"
    path = f"/api/v1/sync/profiles/{created.json()['profile_id']}"
    assert (await api.get(path, headers=reader.headers)).status_code == 200
    assert (await api.post(f"{path}/pause", headers=reader.headers)).status_code == 403
    assert (await api.post(f"{path}/backfill", headers=reader.headers)).status_code == 403
    for method, suffix in (
        ("GET", ""),
        ("GET", "/runs"),
        ("POST", "/pause"),
        ("POST", "/resume"),
        ("POST", "/trigger"),
        ("POST", "/backfill"),
        ("DELETE", ""),
    ):
        answer = await api.request(method, f"{path}{suffix}", headers=stranger.headers)
        assert answer.status_code == 404, (method, suffix)
    theirs = (await api.get("/api/v1/sync/profiles", headers=stranger.headers)).json()
    assert theirs["items"] == []


async def _runs(api: httpx.AsyncClient, who: Member, path: str, count: int) -> list[dict[str, Any]]:
    """The profile's runs, newest first, once ``count`` of them have finished."""
    for _ in range(600):
        runs = (await api.get(f"{path}/runs", headers=who.headers)).json()["items"]
        if len(runs) >= count and all(r["outcome"] is not None for r in runs):
            return list(runs)
        await asyncio.sleep(0.1)
    pytest.fail(f"{count} runs did not finish")


async def test_a_backfill_reads_the_source_again_and_runs_now(
    sync_api: httpx.AsyncClient,
    peered: Settings,
    sessions: SessionFactory,
    woocommerce_peer: WooCommercePeer,
    hubspot_peer: HubSpotPeer,
) -> None:
    api, admin = sync_api, await member(sessions, peered)
    shop, crm = await connect_pair(sessions, peered, admin.tenant_id, woocommerce_peer.url)
    hubspot_peer.interval_max = 10_000
    for n in range(12):
        woocommerce_peer.add_customer(f"again{n}@example.com", modified=T0 + timedelta(days=n))
    created = await _profile(api, admin, shop, crm, interval_minutes=1440)
    assert created.status_code == 201, created.text
    path = f"/api/v1/sync/profiles/{created.json()['profile_id']}"

    assert (await api.post(f"{path}/trigger", headers=admin.headers)).status_code == 202
    (first,) = await _runs(api, admin, path, 1)
    assert (first["read"], first["created"], first["cursor_restarts"]) == (12, 12, 0)
    assert (await api.get(path, headers=admin.headers)).json()["cursor"].startswith("2026-03-12")

    # Bad input first: a moment in the future, unknown fields: 422, nothing changed.
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    refused = await api.post(f"{path}/backfill", json={"since": future}, headers=admin.headers)
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("application/problem+json")
    unknown = await api.post(f"{path}/backfill", json={"from": future}, headers=admin.headers)
    assert unknown.status_code == 422
    assert not (await api.get(path, headers=admin.headers)).json()["backfill_pending"]

    # From a moment: the records changed since then are read again and updated, none created.
    since = (T0 + timedelta(days=8)).isoformat()
    accepted = await api.post(f"{path}/backfill", json={"since": since}, headers=admin.headers)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["backfill_pending"]
    second, _ = await _runs(api, admin, path, 2)
    assert (second["read"], second["created"], second["updated"]) == (4, 0, 4)
    # Without a body: everything again.
    assert (await api.post(f"{path}/backfill", headers=admin.headers)).status_code == 202
    third, _, _ = await _runs(api, admin, path, 3)
    assert (third["read"], third["created"], third["updated"]) == (12, 0, 12)
    view = (await api.get(path, headers=admin.headers)).json()
    assert not view["backfill_pending"]
    assert view["cursor"].startswith("2026-03-12")
    assert len(hubspot_peer.records["contacts"]) == 12

    # A run that meets a cursor the source refuses shows the restart in its statistics.
    async with transaction(sessions) as session:
        profile = await session.get(SyncProfile, uuid.UUID(view["profile_id"]))
        assert profile is not None
        profile.page_cursor = "stale-cursor-from-an-older-release"
    assert (await api.post(f"{path}/trigger", headers=admin.headers)).status_code == 202
    fourth = (await _runs(api, admin, path, 4))[0]
    assert (fourth["cursor_restarts"], fourth["outcome"]) == (1, "completed")

    # A paused profile is not backfilled.
    await api.post(f"{path}/pause", headers=admin.headers)
    assert (await api.post(f"{path}/backfill", headers=admin.headers)).status_code == 409


@pytest.fixture
def crm_settings(peered: Settings, zoho_peer: ZohoPeer) -> Settings:
    return with_zoho(peered, zoho_peer)


@pytest.fixture
async def crm_api(
    crm_settings: Settings,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    sessions: SessionFactory,
) -> AsyncIterator[httpx.AsyncClient]:
    async with build_worker(temporal_env.client, sessions, crm_settings):
        app = create_app(crm_settings, temporal_env.client, engine)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def test_a_two_way_profile_shows_its_direction_and_its_runs_conflicts(
    crm_api: httpx.AsyncClient,
    crm_settings: Settings,
    sessions: SessionFactory,
    hubspot_peer: HubSpotPeer,
    zoho_peer: ZohoPeer,
) -> None:
    api, admin = crm_api, await member(sessions, crm_settings)
    hubspot, zoho = await connect_crms(sessions, crm_settings, admin.tenant_id, zoho_peer)
    contacts = {"source_resource": "contacts", "target_resource": "contacts"}
    # Contacts to contacts within one CRM would copy each contact onto itself.
    itself = await _profile(api, admin, hubspot, hubspot, **contacts)
    assert itself.status_code == 422
    assert itself.json()["errors"][0]["loc"] == ["body", "target_connection_id"]
    # A two-way mapping must read back: two target fields from one source field do not.
    doubled = await _profile(
        api,
        admin,
        hubspot,
        zoho,
        **contacts,
        direction="two_way",
        field_mapping={"email": "email", "last_name": "email"},
    )
    assert doubled.status_code == 422
    assert doubled.json()["errors"][0]["loc"] == ["body", "field_mapping"]

    created = await _profile(
        api, admin, hubspot, zoho, **contacts, direction="two_way", interval_minutes=1440
    )
    assert created.status_code == 201, created.text
    assert created.json()["direction"] == "two_way"
    path = f"/api/v1/sync/profiles/{created.json()['profile_id']}"
    assert (await api.get(path, headers=admin.headers)).json()["direction"] == "two_way"

    contact = hubspot_peer.seed(
        "contacts",
        {"email": "ada@example.com", "firstname": "Ada", "lastname": "Byron"},
        at=datetime.now(UTC) - timedelta(minutes=10),
    )
    assert (await api.post(f"{path}/trigger", headers=admin.headers)).status_code == 202
    (first,) = await _runs(api, admin, path, 1)
    # Created at Zoho, then read back from Zoho as our own write: unchanged.
    assert (first["read"], first["created"], first["unchanged"], first["conflicts"]) == (2, 1, 1, 0)
    assert first["conflict_sample"] == []
    (copy,) = zoho_peer.records["Contacts"].values()

    # Both sides change the contact; Zoho's change is the later one.
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    _hubspot_edit(contact, soon, lastname="Lovelace")
    _zoho_edit(copy, soon + timedelta(minutes=1), Last_Name="King")
    assert (await api.post(f"{path}/trigger", headers=admin.headers)).status_code == 202
    second, _ = await _runs(api, admin, path, 2)
    assert (second["conflicts"], second["updated"], second["outcome"]) == (1, 1, "completed")
    (loser,) = second["conflict_sample"]
    assert (loser["side"], loser["record_id"], loser["winner"]) == (
        "source",
        contact["id"],
        "target",
    )
    assert datetime.fromisoformat(loser["source_updated_at"]) == soon
    assert datetime.fromisoformat(loser["target_updated_at"]) == soon + timedelta(minutes=1)
    assert contact["properties"]["lastname"] == copy["Last_Name"] == "King"
    view = (await api.get(path, headers=admin.headers)).json()
    assert view["last_run"]["conflicts"] == 1
