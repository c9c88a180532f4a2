"""SyncWorkflow on the dev server: shop customers and orders at the WooCommerce peer become
contacts and deals at the HubSpot peer, page by page, crash-safe and without duplicates; bad
records, refused cursors and failing runs are met by the failure policy. HubSpot and Zoho
contacts sync two ways: nothing echoed back, conflicts won by the later change."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from subprocess import Popen
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from activities.sync import PAIRS, create_schedule, daily_window_reopens, schedule_id
from connectors.crm.hubspot import API_BASE, EXTERNAL_ID
from connectors.crm.zoho import EXTERNAL_ID as ZOHO_EXTERNAL_ID
from connectors.registry import OAuth2Credentials, dump_credentials
from connectors.secrets import connection_path, secret_store_from_settings
from core.db import SessionFactory, transaction
from core.settings import OAuthClientConfig, Settings
from models.billing import UsageEvent, UsageMetric
from models.connection import Connection, ConnectionHealth, ConnectionStatus
from models.email import OutboundEmail
from models.sync import (
    MatchRule,
    SyncCounts,
    SyncDirection,
    SyncMapping,
    SyncProfile,
    SyncRun,
    SyncRunState,
    SyncStatus,
)
from tests.factories import hubspot_connection, member
from tests.peers.hubspot import PRIVATE_APP_TOKEN, Fault, HubSpotPeer
from tests.peers.woocommerce import CONSUMER_KEY, CONSUMER_SECRET, WooCommercePeer
from tests.peers.woocommerce import Fault as ShopFault
from tests.peers.wordpress import WordPressSite
from tests.peers.zoho import CLIENT_ID as ZOHO_CLIENT_ID
from tests.peers.zoho import CLIENT_SECRET as ZOHO_CLIENT_SECRET
from tests.peers.zoho import ZohoPeer
from tests.processes import worker_process
from workers.main import build_worker
from workflows.sync import SyncWorkflow

pytestmark = pytest.mark.one_database
pytest_plugins = [
    "tests.peers.woocommerce",
    "tests.peers.hubspot",
    "tests.peers.wordpress",
    "tests.peers.zoho",
]

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Setup:
    settings: Settings
    tenant_id: uuid.UUID
    shop_id: uuid.UUID
    crm_id: uuid.UUID
    profile_id: uuid.UUID


@pytest.fixture
def inline_wait() -> float:
    """The longest vendor wait a page activity sits out itself (a test parametrizes it)."""
    return 60.0


@pytest.fixture
def peered(settings: Settings, hubspot_peer: HubSpotPeer, inline_wait: float) -> Settings:
    return settings.model_copy(
        update={
            "connector_allow_private_urls": True,
            "connector_vendor_origins": {API_BASE: hubspot_peer.url},
            "sync_inline_wait_seconds": inline_wait,
        }
    )


async def connect_pair(
    sessions: SessionFactory,
    settings: Settings,
    tenant_id: uuid.UUID,
    shop_url: str,
    *,
    shop_secret: str = CONSUMER_SECRET,
) -> tuple[uuid.UUID, uuid.UUID]:
    """A WooCommerce and a HubSpot connection of the tenant, their credentials stored."""
    store = secret_store_from_settings(settings)
    shop_id, crm_id = uuid.uuid4(), uuid.uuid4()
    await store.put(
        connection_path(tenant_id, shop_id), {"api_key": CONSUMER_KEY, "api_secret": shop_secret}
    )
    await store.put(connection_path(tenant_id, crm_id), {"api_key": PRIVATE_APP_TOKEN})
    async with transaction(sessions) as session:
        for connection_id, connector, settings_ in (
            (shop_id, "woocommerce", {"store_url": shop_url}),
            (crm_id, "hubspot", {}),
        ):
            session.add(
                Connection(
                    id=connection_id,
                    tenant_id=tenant_id,
                    connector_id=connector,
                    auth_kind="api_key",
                    label=connector,
                    settings=settings_,
                    account={},
                    status=ConnectionStatus.CONNECTED,
                    health=ConnectionHealth.HEALTHY,
                )
            )
    return shop_id, crm_id


CONTACT_MAPPING = {"email": "email", "first_name": "first_name", "last_name": "last_name"}


async def add_profile(
    sessions: SessionFactory,
    tenant_id: uuid.UUID,
    shop_id: uuid.UUID,
    crm_id: uuid.UUID,
    *,
    resources: tuple[str, str] = ("customers", "contacts"),
    direction: SyncDirection = SyncDirection.ONE_WAY,
) -> uuid.UUID:
    """An active profile between the two connections: customers to contacts unless
    ``resources`` names another pair (with that pair's default mapping), one way unless
    ``direction`` says two."""
    profile_id = uuid.uuid4()
    mapping = (
        CONTACT_MAPPING
        if resources == ("customers", "contacts")
        else PAIRS[resources].default_mapping
    )
    async with transaction(sessions) as session:
        session.add(
            SyncProfile(
                id=profile_id,
                tenant_id=tenant_id,
                source_connection_id=shop_id,
                target_connection_id=crm_id,
                source_resource=resources[0],
                target_resource=resources[1],
                field_mapping=mapping,
                match_rule=MatchRule.EXTERNAL_ID_THEN_EMAIL,
                direction=direction,
                interval=timedelta(hours=1),
                status=SyncStatus.ACTIVE,
                failed_runs=0,
            )
        )
    return profile_id


@pytest.fixture
async def setup(
    peered: Settings,
    sessions: SessionFactory,
    woocommerce_peer: WooCommercePeer,
    temporal_env: WorkflowEnvironment,
) -> AsyncIterator[Setup]:
    admin = await member(sessions, peered)
    shop_id, crm_id = await connect_pair(sessions, peered, admin.tenant_id, woocommerce_peer.url)
    profile_id = await add_profile(sessions, admin.tenant_id, shop_id, crm_id)
    async with build_worker(temporal_env.client, sessions, peered):
        yield Setup(peered, admin.tenant_id, shop_id, crm_id, profile_id)


def _customers(peer: WooCommercePeer, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        peer.add_customer(
            f"customer{n}@example.com", modified=T0 + timedelta(minutes=n), first_name=f"C{n}"
        )


async def _sync(client: Client, setup: Setup, **options: int) -> str:
    """One run to its end; the id of its first workflow run (the statistics' key)."""
    handle = await client.start_workflow(
        SyncWorkflow.run,
        SyncRunState(profile_id=setup.profile_id, **options),
        id=f"sync:{setup.profile_id}",
        task_queue=setup.settings.temporal_task_queue,
    )
    await handle.result()
    assert handle.first_execution_run_id is not None
    return handle.first_execution_run_id


def _contacts(peer: HubSpotPeer) -> list[dict[str, str]]:
    return [r["properties"] for r in peer.records["contacts"].values()]


async def _run_row(sessions: SessionFactory, run_id: str) -> SyncRun:
    async with sessions() as session:
        row = await session.scalar(select(SyncRun).where(SyncRun.workflow_run_id == run_id))
    assert row is not None
    return row


async def test_customers_become_contacts_and_a_second_run_only_updates_changes(
    setup: Setup,
    woocommerce_peer: WooCommercePeer,
    hubspot_peer: HubSpotPeer,
    temporal_client: Client,
    sessions: SessionFactory,
) -> None:
    _customers(woocommerce_peer, 260)
    # The account's ten-second limit is raised here; the next test meets it.
    hubspot_peer.interval_max = 10_000
    # Already in the CRM by e-mail: matched, not created again.
    hubspot_peer.seed("contacts", {"email": "customer7@example.com", "firstname": "Old"})
    # Pages of 50 and two pages per workflow run: the run continues as new twice.
    run_id = await _sync(temporal_client, setup, page_size=50, pages_per_run=2)

    contacts = _contacts(hubspot_peer)
    assert len(contacts) == 260
    assert len({c["email"] for c in contacts}) == 260
    matched = next(c for c in contacts if c["email"] == "customer7@example.com")
    assert matched["firstname"] == "C7"
    # Every contact the sync created carries its source record's marker.
    created = [c for c in contacts if c is not matched]
    assert all(c[EXTERNAL_ID].startswith(f"{setup.shop_id}:") for c in created)
    first = await _run_row(sessions, run_id)
    assert (first.read, first.created, first.updated, first.skipped, first.failed) == (
        260,
        259,
        1,
        0,
        0,
    )
    assert first.outcome == "completed"
    assert first.finished_at is not None
    async with sessions() as session:
        profile = await session.get(SyncProfile, setup.profile_id)
        assert profile is not None
        assert profile.cursor == T0 + timedelta(minutes=259)
        assert profile.page_cursor is None
        mapped = await session.scalar(
            select(func.count()).where(SyncMapping.profile_id == setup.profile_id)
        )
    assert mapped == 260

    # Two customers change and one is new: the next run reads only those (and the newest one
    # it read before, at its watermark), creates one contact and updates the rest.
    for record in list(woocommerce_peer.records["customers"].values())[:2]:
        record["first_name"] = "Changed"
        record["date_modified_gmt"] = (T0 + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    woocommerce_peer.add_customer(
        "late@example.com", modified=T0 + timedelta(days=1), first_name="Late"
    )
    second = await _run_row(sessions, await _sync(temporal_client, setup))
    assert (second.read, second.created, second.updated, second.failed) == (4, 1, 3, 0)
    contacts = _contacts(hubspot_peer)
    assert len(contacts) == 261
    assert sum(1 for c in contacts if c["firstname"] == "Changed") == 2
    # Every record written is usage for billing, counted once per commit.
    async with sessions() as session:
        synced = await session.scalar(
            select(func.sum(UsageEvent.quantity)).where(
                UsageEvent.tenant_id == setup.tenant_id,
                UsageEvent.metric == UsageMetric.RECORDS_SYNCED,
            )
        )
    assert synced == 260 + 4


async def test_a_page_failing_after_its_writes_and_a_429_storm_write_nothing_twice(
    setup: Setup,
    woocommerce_peer: WooCommercePeer,
    hubspot_peer: HubSpotPeer,
    temporal_client: Client,
    sessions: SessionFactory,
) -> None:
    _customers(woocommerce_peer, 120)
    # A storm of 429s first: each ends the page attempt, retried after the vendor's wait.
    hubspot_peer.fail(
        "/crm/v3/objects/contacts", *[Fault.rate_limited(retry_after=1) for _ in range(4)]
    )
    handle = await temporal_client.start_workflow(
        SyncWorkflow.run,
        SyncRunState(profile_id=setup.profile_id, page_size=60),
        id=f"sync:{setup.profile_id}",
        task_queue=setup.settings.temporal_task_queue,
    )
    # Then HubSpot fails mid-page, after some of the page's contacts were created: the page
    # is retried and finds what it wrote.
    for _ in range(400):
        if len(hubspot_peer.records["contacts"]) >= 10:
            break
        await asyncio.sleep(0.02)
    hubspot_peer.fail(
        "/crm/v3/objects/contacts", Fault.error(500, "INTERNAL_ERROR", "Internal error")
    )
    await handle.result()
    assert handle.first_execution_run_id is not None
    contacts = _contacts(hubspot_peer)
    assert len(contacts) == 120
    assert len({c[EXTERNAL_ID] for c in contacts}) == 120
    assert len(hubspot_peer.seen("POST", "/crm/v3/objects/contacts/search")) > 0
    row = await _run_row(sessions, handle.first_execution_run_id)
    assert row.read == 120
    # Records the failed attempt wrote count as updated by the attempt that succeeded.
    assert row.created + row.updated == 120
    assert row.updated >= 10
    assert row.failed == 0


async def test_a_run_ended_mid_way_resumes_from_its_committed_page(
    setup: Setup,
    woocommerce_peer: WooCommercePeer,
    hubspot_peer: HubSpotPeer,
    temporal_client: Client,
    sessions: SessionFactory,
) -> None:
    _customers(woocommerce_peer, 150)
    hubspot_peer.interval_max = 10_000
    # The vendor stays down after the first page: the run is terminated (as a crashed or
    # cancelled run would be) with one page committed.
    handle = await temporal_client.start_workflow(
        SyncWorkflow.run,
        SyncRunState(profile_id=setup.profile_id, page_size=50),
        id=f"sync:{setup.profile_id}",
        task_queue=setup.settings.temporal_task_queue,
    )
    for _ in range(1200):
        async with sessions() as session:
            profile = await session.get(SyncProfile, setup.profile_id)
            assert profile is not None
            if profile.page_cursor is not None:
                break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("no page was committed")
    await handle.terminate("worker lost")
    assert (await handle.describe()).status is WorkflowExecutionStatus.TERMINATED
    assert 50 <= len(hubspot_peer.records["contacts"]) < 150

    run_id = await _sync(temporal_client, setup, page_size=50)
    contacts = _contacts(hubspot_peer)
    assert len(contacts) == 150
    assert len({c["email"] for c in contacts}) == 150
    row = await _run_row(sessions, run_id)
    # The resumed run starts after the committed page: it reads the two pages after it, and
    # what the lost run had written of them is found, not created again.
    assert row.read == 100
    assert row.created + row.updated == 100
    assert row.outcome == "completed"


async def test_invalid_records_are_skipped_and_counted_without_their_data(
    setup: Setup,
    woocommerce_peer: WooCommercePeer,
    hubspot_peer: HubSpotPeer,
    temporal_client: Client,
    sessions: SessionFactory,
) -> None:
    _customers(woocommerce_peer, 5)
    bad = woocommerce_peer.add_customer("not-an-address", modified=T0 + timedelta(hours=1))
    row = await _run_row(sessions, await _sync(temporal_client, setup))
    assert (row.read, row.created, row.skipped) == (6, 5, 1)
    assert row.failures == [{"source_id": str(bad["id"]), "reason": "invalid email: value_error"}]
    assert "not-an-address" not in str(row.failures)
    assert len(hubspot_peer.records["contacts"]) == 5


async def test_refused_credentials_pause_the_profile_and_mark_the_connection(
    setup: Setup,
    woocommerce_peer: WooCommercePeer,
    temporal_client: Client,
    sessions: SessionFactory,
) -> None:
    _customers(woocommerce_peer, 3)
    await secret_store_from_settings(setup.settings).put(
        connection_path(setup.tenant_id, setup.shop_id),
        {"api_key": CONSUMER_KEY, "api_secret": "cs_wrong"},
    )
    run_id = await _sync(temporal_client, setup)
    row = await _run_row(sessions, run_id)
    assert row.outcome == "auth_failed"
    check = temporal_client.get_workflow_handle(f"connection:{setup.shop_id}")
    await check.result()
    async with sessions() as session:
        profile = await session.get(SyncProfile, setup.profile_id)
        connection = await session.get(Connection, setup.shop_id)
    assert profile is not None
    assert profile.status is SyncStatus.PAUSED
    assert connection is not None
    assert connection.health is ConnectionHealth.AUTH_FAILED
    # The tenant's admin is told once, by the connection's check.
    async with sessions() as session:
        notices = list(
            await session.scalars(
                select(OutboundEmail.subject).where(OutboundEmail.tenant_id == setup.tenant_id)
            )
        )
    assert notices == ["Reconnect woocommerce: its credentials stopped working"]
    # A paused profile's next run does nothing: no read, no statistics row.
    requests = len(woocommerce_peer.requests)
    paused_run = await _sync(temporal_client, setup)
    assert len(woocommerce_peer.requests) == requests
    async with sessions() as session:
        assert (
            await session.scalar(select(SyncRun).where(SyncRun.workflow_run_id == paused_run))
            is None
        )


@pytest.mark.parametrize("inline_wait", [0.5])
async def test_a_long_vendor_limit_is_slept_out_in_the_workflow(
    setup: Setup,
    woocommerce_peer: WooCommercePeer,
    hubspot_peer: HubSpotPeer,
    temporal_client: Client,
    sessions: SessionFactory,
) -> None:
    _customers(woocommerce_peer, 3)
    # The shop's host asks for a wait longer than a page activity sits out itself.
    woocommerce_peer.fail(ShopFault(status=429, headers={"Retry-After": "2"}))
    started = time.monotonic()
    run_id = await _sync(temporal_client, setup)
    assert time.monotonic() - started >= 2
    history = await temporal_client.get_workflow_handle(
        f"sync:{setup.profile_id}", run_id=run_id
    ).fetch_history()
    timers = [e for e in history.events if e.HasField("timer_started_event_attributes")]
    assert [t.timer_started_event_attributes.start_to_fire_timeout.seconds for t in timers] == [2]
    row = await _run_row(sessions, run_id)
    assert (row.outcome, row.created) == ("completed", 3)
    assert len(hubspot_peer.records["contacts"]) == 3


async def test_a_spent_daily_allowance_parks_the_run_until_the_account_s_midnight(
    peered: Settings,
    sessions: SessionFactory,
    woocommerce_peer: WooCommercePeer,
    hubspot_peer: HubSpotPeer,
    time_skipping_env: WorkflowEnvironment,
) -> None:
    admin = await member(sessions, peered)
    shop_id, crm_id = await connect_pair(sessions, peered, admin.tenant_id, woocommerce_peer.url)
    async with transaction(sessions) as session:
        crm = await session.get(Connection, crm_id)
        assert crm is not None
        # As the connection's check recorded it from HubSpot's account details.
        crm.account = {"account_id": "1", "name": "x", "detail": {"time_zone": "Europe/Berlin"}}
    profile_id = await add_profile(sessions, admin.tenant_id, shop_id, crm_id)
    _customers(woocommerce_peer, 3)
    hubspot_peer.daily_used = hubspot_peer.daily_max
    client = time_skipping_env.client
    async with build_worker(client, sessions, peered):
        handle = await client.start_workflow(
            SyncWorkflow.run,
            SyncRunState(profile_id=profile_id),
            id=f"sync:{profile_id}",
            task_queue=peered.temporal_task_queue,
        )
        timer = None
        for _ in range(400):
            events = (await handle.fetch_history()).events
            timer = next((e for e in events if e.HasField("timer_started_event_attributes")), None)
            if timer is not None:
                break
            await asyncio.sleep(0.05)
        assert timer is not None, "the run did not park"
        parked = timer.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
        berlin = datetime.now(ZoneInfo("Europe/Berlin"))
        midnight = datetime.combine(berlin.date() + timedelta(days=1), dt_time(), berlin.tzinfo)
        assert abs(parked - (midnight - berlin + timedelta(minutes=1))) < timedelta(seconds=30)
        assert hubspot_peer.records["contacts"] == {}
        # The allowance comes back at midnight; the run wakes and completes.
        hubspot_peer.daily_used = 0
        counts = await handle.result()
    assert (counts.read, counts.created) == (3, 3)
    assert len(hubspot_peer.records["contacts"]) == 3


def test_a_daily_allowance_reopens_at_the_account_s_midnight_across_a_clock_change() -> None:
    def row(zone: str | None) -> Connection:
        return Connection(account={"detail": {"time_zone": zone}} if zone else {})

    # New York's clocks go back on 2026-11-01: that day has 25 hours.
    before = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # midnight in New York
    assert daily_window_reopens(row("America/New_York"), before) == 25 * 3600 + 60
    assert daily_window_reopens(row(None), before) == 20 * 3600 + 60
    assert daily_window_reopens(row("Not/AZone"), before) == 20 * 3600 + 60


def _modified(record: dict[str, object], moment: datetime) -> None:
    record["date_modified_gmt"] = moment.strftime("%Y-%m-%dT%H:%M:%S")


async def _profile_row(sessions: SessionFactory, profile_id: uuid.UUID) -> SyncProfile:
    async with sessions() as session:
        profile = await session.get(SyncProfile, profile_id)
    assert profile is not None
    return profile


async def test_orders_become_deals_in_the_stage_of_their_status(
    setup: Setup,
    woocommerce_peer: WooCommercePeer,
    hubspot_peer: HubSpotPeer,
    temporal_client: Client,
    sessions: SessionFactory,
) -> None:
    hubspot_peer.interval_max = 10_000
    paid = woocommerce_peer.add_order(modified=T0, items=[("mug", 2, "12.50")])
    pending = woocommerce_peer.add_order(
        modified=T0 + timedelta(minutes=1), status="pending", items=[("tee", 1, "20")]
    )
    cancelled = woocommerce_peer.add_order(
        modified=T0 + timedelta(minutes=2),
        status="cancelled",
        items=[("cap", 3, "5")],
        currency="USD",
    )
    orders = replace(
        setup,
        profile_id=await add_profile(
            sessions, setup.tenant_id, setup.shop_id, setup.crm_id, resources=("orders", "deals")
        ),
    )
    first = await _run_row(sessions, await _sync(temporal_client, orders))
    assert (first.read, first.created, first.updated, first.skipped, first.outcome) == (
        3,
        3,
        0,
        0,
        "completed",
    )

    def deals() -> dict[str, dict[str, str]]:
        found = [r["properties"] for r in hubspot_peer.records["deals"].values()]
        return {d[EXTERNAL_ID].split(":", 1)[1]: d for d in found}

    by_order = deals()
    expected = {
        "dealname": f"Order #{paid['number']}",
        "amount": "25.00",
        "deal_currency_code": "EUR",
        "pipeline": "default",
        "dealstage": "closedwon",
    }
    assert expected.items() <= by_order[str(paid["id"])].items()
    assert by_order[str(pending["id"])]["dealstage"] == "appointmentscheduled"
    assert by_order[str(cancelled["id"])]["dealstage"] == "closedlost"
    assert by_order[str(cancelled["id"])]["amount"] == "15.00"
    assert by_order[str(cancelled["id"])]["deal_currency_code"] == "USD"

    # The paid order is refunded; the mapping table is lost meanwhile, so the deal is found
    # again by the marker it carries, and moved rather than duplicated.
    _modified(woocommerce_peer.records["orders"][paid["id"]], T0 + timedelta(days=1))
    woocommerce_peer.records["orders"][paid["id"]]["status"] = "refunded"
    async with transaction(sessions) as session:
        for mapping in await session.scalars(
            select(SyncMapping).where(SyncMapping.profile_id == orders.profile_id)
        ):
            await session.delete(mapping)
    second = await _run_row(sessions, await _sync(temporal_client, orders))
    # The refunded order, and the newest one at the watermark, read again.
    assert (second.read, second.created, second.updated, second.failed) == (2, 0, 2, 0)
    by_order = deals()
    assert len(by_order) == 3
    assert by_order[str(paid["id"])]["dealstage"] == "closedlost"


async def test_records_the_shop_cannot_read_are_skipped_and_the_run_goes_on(
    setup: Setup,
    woocommerce_peer: WooCommercePeer,
    hubspot_peer: HubSpotPeer,
    temporal_client: Client,
    sessions: SessionFactory,
) -> None:
    _customers(woocommerce_peer, 4)
    no_email = woocommerce_peer.add_customer("gone@example.com", modified=T0 + timedelta(hours=1))
    no_email["email"] = None
    bad_date = woocommerce_peer.add_customer("when@example.com", modified=T0 + timedelta(hours=2))
    bad_date["date_modified_gmt"] = "last tuesday"
    _customers(woocommerce_peer, 2, start=10)
    # Pages of three: each bad record shares its page with good ones.
    row = await _run_row(sessions, await _sync(temporal_client, setup, page_size=3))
    assert (row.read, row.created, row.skipped, row.failed, row.outcome) == (
        8,
        6,
        2,
        0,
        "completed",
    )
    assert sorted(row.failures, key=lambda f: f["source_id"]) == [
        {"source_id": str(no_email["id"]), "reason": "unreadable email: string_type"},
        {
            "source_id": str(bad_date["id"]),
            "reason": "unreadable date_modified_gmt: datetime_from_date_parsing",
        },
    ]
    assert "example.com" not in str(row.failures)
    assert len(hubspot_peer.records["contacts"]) == 6


async def test_a_cursor_the_source_refuses_restarts_the_listing_and_is_recorded(
    setup: Setup,
    woocommerce_peer: WooCommercePeer,
    hubspot_peer: HubSpotPeer,
    temporal_client: Client,
    sessions: SessionFactory,
) -> None:
    _customers(woocommerce_peer, 30)
    # An interrupted run left a cursor the connector no longer reads (one issued by an
    # older release, or expired at the vendor).
    async with transaction(sessions) as session:
        profile = await session.get(SyncProfile, setup.profile_id)
        assert profile is not None
        profile.page_cursor = "stale-cursor-from-an-older-release"
    row = await _run_row(sessions, await _sync(temporal_client, setup, page_size=20))
    assert (row.read, row.created, row.cursor_restarts, row.outcome) == (30, 30, 1, "completed")
    assert len(hubspot_peer.records["contacts"]) == 30


async def test_failed_runs_in_a_row_pause_the_schedule_and_tell_the_admins_once(
    setup: Setup,
    woocommerce_peer: WooCommercePeer,
    temporal_client: Client,
    sessions: SessionFactory,
) -> None:
    _customers(woocommerce_peer, 2)
    await create_schedule(
        temporal_client,
        setup.settings,
        profile_id=setup.profile_id,
        tenant_id=setup.tenant_id,
        every=timedelta(days=1),
    )
    schedule = temporal_client.get_schedule_handle(schedule_id(setup.profile_id))

    async def failing_run() -> None:
        # The shop refuses the listing for good (a 400): the page, and so the run, fails.
        woocommerce_peer.fail(
            ShopFault(status=400, body={"code": "rest_invalid_param", "message": "Invalid"})
        )
        with pytest.raises(WorkflowFailureError):
            await _sync(temporal_client, setup)

    try:
        await failing_run()
        assert (await _profile_row(sessions, setup.profile_id)).failed_runs == 1
        await _sync(temporal_client, setup)  # a completed run starts the count again
        assert (await _profile_row(sessions, setup.profile_id)).failed_runs == 0
        for _ in range(3):  # the default limit
            await failing_run()
        profile = await _profile_row(sessions, setup.profile_id)
        assert (profile.status, profile.failed_runs) == (SyncStatus.PAUSED, 3)
        described = await schedule.describe()
        assert described.schedule.state.paused
        assert described.schedule.state.note == "paused: 3 runs in a row failed"
        async with sessions() as session:
            notices = list(
                await session.scalars(
                    select(OutboundEmail.subject).where(OutboundEmail.tenant_id == setup.tenant_id)
                )
            )
        assert notices == ["Sync of customers to contacts paused after 3 failed runs"]
        # Paused: the next run reads nothing, fails nothing, tells nobody again.
        requests = len(woocommerce_peer.requests)
        await _sync(temporal_client, setup)
        assert len(woocommerce_peer.requests) == requests
    finally:
        await schedule.delete()


def _worker_process(settings: Settings, address: str, hubspot_url: str, log: Path) -> Popen[bytes]:
    """A ``bizosaas worker`` process reaching the HubSpot peer."""
    return worker_process(
        settings,
        address,
        log,
        {
            "BIZ_CONNECTOR_ALLOW_PRIVATE_URLS": "true",
            "BIZ_CONNECTOR_VENDOR_ORIGINS": json.dumps({API_BASE: hubspot_url}),
        },
    )


async def test_a_worker_killed_mid_run_resumes_without_duplicates(
    peered: Settings,
    sessions: SessionFactory,
    woocommerce_peer: WooCommercePeer,
    hubspot_peer: HubSpotPeer,
    temporal_env: WorkflowEnvironment,
    tmp_path: Path,
) -> None:
    admin = await member(sessions, peered)
    shop, crm = await connect_pair(sessions, peered, admin.tenant_id, woocommerce_peer.url)
    profile_id = await add_profile(sessions, admin.tenant_id, shop, crm)
    hubspot_peer.interval_max = 10_000
    _customers(woocommerce_peer, 200)
    address = temporal_env.client.service_client.config.target_host
    worker = _worker_process(peered, address, hubspot_peer.url, tmp_path / "worker-1.log")
    try:
        handle = await temporal_env.client.start_workflow(
            SyncWorkflow.run,
            SyncRunState(profile_id=profile_id, page_size=40),
            id=f"sync:{profile_id}",
            task_queue=peered.temporal_task_queue,
        )
        # SIGKILL in the middle of the run (some pages written, some not).
        for _ in range(1200):
            if len(hubspot_peer.records["contacts"]) >= 60:
                break
            await asyncio.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        written = len(hubspot_peer.records["contacts"])
        assert 60 <= written < 200, written
        worker = _worker_process(peered, address, hubspot_peer.url, tmp_path / "worker-2.log")
        async with asyncio.timeout(120):
            counts = await handle.result()
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
    contacts = _contacts(hubspot_peer)
    assert len(contacts) == 200
    assert len({c[EXTERNAL_ID] for c in contacts}) == 200
    # What the killed attempt wrote of its page is found again, not created twice.
    assert counts.read == 200
    assert counts.created + counts.updated == 200
    assert counts.failed == 0
    run = await _run_row(sessions, handle.first_execution_run_id or "")
    assert run.outcome == "completed"


async def test_crm_contacts_become_site_users_and_changes_follow(
    peered: Settings,
    sessions: SessionFactory,
    hubspot_peer: HubSpotPeer,
    wordpress_site: WordPressSite,
    temporal_env: WorkflowEnvironment,
) -> None:
    admin = await member(sessions, peered)
    crm_id, site_id = uuid.uuid4(), uuid.uuid4()
    store = secret_store_from_settings(peered)
    await store.put(connection_path(admin.tenant_id, crm_id), {"api_key": PRIVATE_APP_TOKEN})
    await store.put(
        connection_path(admin.tenant_id, site_id),
        {
            "username": wordpress_site.username,
            "application_password": wordpress_site.application_password,
        },
    )
    async with transaction(sessions) as session:
        for connection_id, connector, auth, settings_ in (
            (crm_id, "hubspot", "api_key", {}),
            (site_id, "wordpress", "application_password", {"site_url": wordpress_site.url}),
        ):
            session.add(
                Connection(
                    id=connection_id,
                    tenant_id=admin.tenant_id,
                    connector_id=connector,
                    auth_kind=auth,
                    label=connector,
                    settings=settings_,
                    account={},
                    status=ConnectionStatus.CONNECTED,
                    health=ConnectionHealth.HEALTHY,
                )
            )
    profile_id = await add_profile(
        sessions, admin.tenant_id, crm_id, site_id, resources=("contacts", "users")
    )
    tag = uuid.uuid4().hex[:8]
    start = datetime.now(UTC) - timedelta(minutes=10)
    people = [
        hubspot_peer.seed(
            "contacts",
            {"email": f"reader{n}-{tag}@example.com", "firstname": f"R{n}", "lastname": "Doe"},
            at=start + timedelta(seconds=n),
        )
        for n in range(5)
    ]
    nameless = hubspot_peer.seed(
        "contacts", {"firstname": "No", "lastname": "Address"}, at=start + timedelta(seconds=5)
    )
    async with build_worker(temporal_env.client, sessions, peered):
        first = await _run_profile(temporal_env.client, peered, profile_id)
        assert (first.read, first.created, first.skipped) == (6, 5, 1)
        assert first.failures[0].source_id == nameless["id"]
        site = await _site_users(wordpress_site, tag)
        assert sorted(u["email"] for u in site) == sorted(p["properties"]["email"] for p in people)
        assert {u["first_name"] for u in site} == {f"R{n}" for n in range(5)}

        # One contact changes at the CRM: the next run reads it alone and updates its user.
        changed = people[2]
        changed["properties"]["lastname"] = "Lovelace"
        later = datetime.now(UTC) + timedelta(seconds=2)
        stamp = later.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        changed["properties"]["lastmodifieddate"] = changed["updatedAt"] = stamp
        second = await _run_profile(temporal_env.client, peered, profile_id)
    # It reads the changed one (and the newest it read before, at its watermark: the nameless
    # one, skipped again).
    assert (second.read, second.created, second.updated, second.skipped) == (2, 0, 1, 1)
    site = await _site_users(wordpress_site, tag)
    assert len(site) == 5
    updated = next(u for u in site if u["email"] == changed["properties"]["email"])
    assert updated["last_name"] == "Lovelace"


async def _run_profile(client: Client, settings: Settings, profile_id: uuid.UUID) -> SyncCounts:
    return await client.execute_workflow(
        SyncWorkflow.run,
        SyncRunState(profile_id=profile_id),
        id=f"sync:{profile_id}",
        task_queue=settings.temporal_task_queue,
    )


async def _site_users(site: WordPressSite, tag: str) -> list[dict[str, str]]:
    """The site's users whose address holds ``tag``, as its REST API shows them (past any
    fault queued for the code under test)."""
    params = {"context": "edit", "search": tag, "per_page": 100}
    users = await asyncio.to_thread(site.rest, "GET", "wp/v2/users", params=params)
    return [u for u in users if tag in u["email"]]


# --- Two-way: HubSpot contacts <-> Zoho contacts -------------------------------------------

ZOHO_ACCOUNTS = "https://accounts.zoho.eu"
ZOHO_API = "https://www.zohoapis.eu"


def with_zoho(settings: Settings, zoho: ZohoPeer) -> Settings:
    """``settings`` with Zoho's EU data centre at the Zoho peer, and our OAuth app there."""
    origins = {
        **settings.connector_vendor_origins,
        ZOHO_ACCOUNTS: zoho.accounts_url,
        ZOHO_API: zoho.api_url,
    }
    client = OAuthClientConfig(
        client_id=ZOHO_CLIENT_ID, client_secret=SecretStr(ZOHO_CLIENT_SECRET)
    )
    return settings.model_copy(
        update={"connector_vendor_origins": origins, "oauth_clients": {"zoho_crm": client}}
    )


@pytest.fixture
def crm_peered(peered: Settings, zoho_peer: ZohoPeer) -> Settings:
    return with_zoho(peered, zoho_peer)


async def connect_crms(
    sessions: SessionFactory, settings: Settings, tenant_id: uuid.UUID, zoho: ZohoPeer
) -> tuple[uuid.UUID, uuid.UUID]:
    """A HubSpot and a Zoho CRM connection of the tenant (Zoho's tokens as a consent leaves
    them)."""
    hubspot_id, zoho_id = await hubspot_connection(sessions, settings, tenant_id), uuid.uuid4()
    access = f"1000.{uuid.uuid4().hex}"
    zoho.access_tokens[access] = time.time() + 3600
    credentials = OAuth2Credentials(
        access_token=SecretStr(access),
        refresh_token=SecretStr(zoho.grant()),
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        extra={"api_domain": zoho.api_domain},
    )
    await secret_store_from_settings(settings).put(
        connection_path(tenant_id, zoho_id), dump_credentials(credentials)
    )
    async with transaction(sessions) as session:
        session.add(
            Connection(
                id=zoho_id,
                tenant_id=tenant_id,
                connector_id="zoho_crm",
                auth_kind="oauth2_authorization_code",
                label="zoho",
                settings={"accounts_server": ZOHO_ACCOUNTS},
                account={},
                status=ConnectionStatus.CONNECTED,
                health=ConnectionHealth.HEALTHY,
            )
        )
    return hubspot_id, zoho_id


@dataclass
class CrmPair:
    settings: Settings
    hubspot_id: uuid.UUID
    zoho_id: uuid.UUID
    profile_id: uuid.UUID


@pytest.fixture
async def crm_pair(
    crm_peered: Settings,
    sessions: SessionFactory,
    zoho_peer: ZohoPeer,
    hubspot_peer: HubSpotPeer,
    temporal_env: WorkflowEnvironment,
) -> AsyncIterator[CrmPair]:
    """A two-way profile from HubSpot contacts (the source) to Zoho contacts, and a worker."""
    admin = await member(sessions, crm_peered)
    hubspot_id, zoho_id = await connect_crms(sessions, crm_peered, admin.tenant_id, zoho_peer)
    profile_id = await add_profile(
        sessions,
        admin.tenant_id,
        hubspot_id,
        zoho_id,
        resources=("contacts", "contacts"),
        direction=SyncDirection.TWO_WAY,
    )
    hubspot_peer.interval_max = 10_000
    async with build_worker(temporal_env.client, sessions, crm_peered):
        yield CrmPair(crm_peered, hubspot_id, zoho_id, profile_id)


async def _two_way_run(client: Client, sessions: SessionFactory, pair: CrmPair) -> SyncRun:
    handle = await client.start_workflow(
        SyncWorkflow.run,
        SyncRunState(profile_id=pair.profile_id),
        id=f"sync:{pair.profile_id}",
        task_queue=pair.settings.temporal_task_queue,
    )
    counts = await handle.result()
    row = await _run_row(sessions, handle.first_execution_run_id or "")
    # The query and the statistics agree.
    assert (row.unchanged, row.conflicts) == (counts.unchanged, counts.conflicts)
    return row


def _seed_both(hubspot: HubSpotPeer, zoho: ZohoPeer, count: int) -> None:
    """``count`` contacts on each side, changed ten minutes ago."""
    start = datetime.now(UTC) - timedelta(minutes=10)
    for n in range(count):
        at = start + timedelta(seconds=n)
        hubspot.seed(
            "contacts",
            {"email": f"hub{n}@example.com", "firstname": f"H{n}", "lastname": f"Hubbard{n}"},
            at=at,
        )
        zoho.seed(
            "Contacts",
            {"Email": f"zed{n}@example.com", "First_Name": f"Z{n}", "Last_Name": f"Zedd{n}"},
            at=at,
        )


def _hubspot_edit(record: dict[str, Any], at: datetime | None = None, **changes: str) -> None:
    """A change made at HubSpot (at ``at``, else now), as HubSpot stamps it."""
    stamp = (at or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    record["properties"].update(changes)
    record["properties"]["lastmodifieddate"] = record["properties"]["hs_lastmodifieddate"] = stamp
    record["updatedAt"] = stamp


def _zoho_edit(record: dict[str, Any], at: datetime | None = None, **changes: str) -> None:
    """A change made at Zoho (at ``at``, else now), as Zoho stamps it: to the second."""
    record.update(changes)
    record["Modified_Time"] = (at or datetime.now(UTC)).astimezone().isoformat(timespec="seconds")


def _by_email(records: dict[str, dict[str, Any]], field: str = "email") -> dict[str, Any]:
    found = {}
    for record in records.values():
        values = record.get("properties", record)
        found[values[field]] = record
    return found


async def test_contacts_sync_two_ways_without_echoes(
    crm_pair: CrmPair,
    hubspot_peer: HubSpotPeer,
    zoho_peer: ZohoPeer,
    temporal_client: Client,
    sessions: SessionFactory,
) -> None:
    _seed_both(hubspot_peer, zoho_peer, 2)
    hubspot_seeded = dict(hubspot_peer.records["contacts"])
    zoho_seeded = dict(zoho_peer.records["Contacts"])

    # Each side's contacts appear on the other with the marker of where they came from; the
    # backward leg reads the forward leg's writes back as unchanged (our own echo).
    first = await _two_way_run(temporal_client, sessions, crm_pair)
    assert (first.read, first.created, first.updated, first.unchanged, first.conflicts) == (
        6,
        4,
        0,
        2,
        0,
    )
    assert (first.skipped, first.failed, first.outcome) == (0, 0, "completed")
    zoho = _by_email(zoho_peer.records["Contacts"], "Email")
    hubspot = _by_email(hubspot_peer.records["contacts"])
    assert len(zoho) == len(hubspot) == 4
    for record in hubspot_seeded.values():
        copy = zoho[record["properties"]["email"]]
        assert copy[ZOHO_EXTERNAL_ID] == f"{crm_pair.hubspot_id}:{record['id']}"
        assert copy["Last_Name"] == record["properties"]["lastname"]
    for record in zoho_seeded.values():
        copy = hubspot[record["Email"]]["properties"]
        assert copy[EXTERNAL_ID] == f"{crm_pair.zoho_id}:{record['id']}"
        assert copy["firstname"] == record["First_Name"]

    # Nothing changed: both legs read and write nothing.
    writes = len(hubspot_peer.seen("PATCH", "/crm/v3/objects/contacts")) + len(
        zoho_peer.seen("PUT", "/crm/v5/Contacts")
    )
    second = await _two_way_run(temporal_client, sessions, crm_pair)
    assert (second.created, second.updated, second.conflicts, second.outcome) == (
        0,
        0,
        0,
        "completed",
    )
    assert second.unchanged == second.read > 0
    assert writes == len(hubspot_peer.seen("PATCH", "/crm/v3/objects/contacts")) + len(
        zoho_peer.seen("PUT", "/crm/v5/Contacts")
    )

    # A change on either side flows to the other.
    zoho_native = next(iter(zoho_seeded.values()))
    _zoho_edit(zoho_native, Last_Name="Lovelace")
    hubspot_native = next(iter(hubspot_seeded.values()))
    _hubspot_edit(hubspot_native, firstname="Grace")
    third = await _two_way_run(temporal_client, sessions, crm_pair)
    assert (third.created, third.updated, third.conflicts, third.failed) == (0, 2, 0, 0)
    hubspot = _by_email(hubspot_peer.records["contacts"])
    assert hubspot[zoho_native["Email"]]["properties"]["lastname"] == "Lovelace"
    zoho = _by_email(zoho_peer.records["Contacts"], "Email")
    assert zoho[hubspot_native["properties"]["email"]]["First_Name"] == "Grace"
    # And only once.
    fourth = await _two_way_run(temporal_client, sessions, crm_pair)
    assert (fourth.created, fourth.updated, fourth.conflicts) == (0, 0, 0)
    async with sessions() as session:
        versions = list(
            await session.execute(
                select(SyncMapping.source_version, SyncMapping.target_version).where(
                    SyncMapping.profile_id == crm_pair.profile_id
                )
            )
        )
    assert len(versions) == 4
    assert all(source is not None and target is not None for source, target in versions)


async def test_a_record_changed_on_both_sides_goes_to_the_later_change(
    crm_pair: CrmPair,
    hubspot_peer: HubSpotPeer,
    zoho_peer: ZohoPeer,
    temporal_client: Client,
    sessions: SessionFactory,
) -> None:
    _seed_both(hubspot_peer, zoho_peer, 3)
    await _two_way_run(temporal_client, sessions, crm_pair)
    zoho = _by_email(zoho_peer.records["Contacts"], "Email")
    hubspot = _by_email(hubspot_peer.records["contacts"])
    pairs = [(hubspot[f"hub{n}@example.com"], zoho[f"hub{n}@example.com"]) for n in range(3)]
    # Both sides change each pair after the sync (the stamps ahead of the clock, so that no
    # two moments fall in the same second, Zoho's precision).
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    (h0, z0), (h1, z1), (h2, z2) = pairs
    _hubspot_edit(h0, soon, lastname="Earlier")  # Zoho's change is later: Zoho wins
    _zoho_edit(z0, soon + timedelta(minutes=1), Last_Name="Later")
    _hubspot_edit(h1, soon + timedelta(minutes=2), lastname="Later")  # HubSpot's is later
    _zoho_edit(z1, soon, Last_Name="Earlier")
    _hubspot_edit(h2, soon + timedelta(minutes=3), lastname="Tied")  # a tie: the source wins
    _zoho_edit(z2, soon + timedelta(minutes=3), Last_Name="Tie lost")

    run = await _two_way_run(temporal_client, sessions, crm_pair)
    # Each conflict counted once, its winner written once (the forward leg writes HubSpot's
    # winners to Zoho, the backward leg Zoho's winner to HubSpot).
    assert (run.conflicts, run.updated, run.created, run.failed) == (3, 3, 0, 0)
    assert h0["properties"]["lastname"] == z0["Last_Name"] == "Later"
    assert h1["properties"]["lastname"] == z1["Last_Name"] == "Later"
    assert h2["properties"]["lastname"] == z2["Last_Name"] == "Tied"
    # The losers, by ids and timestamps only.
    losers = sorted((dict(c) for c in run.conflict_sample), key=lambda c: c["source_updated_at"])
    moments = [
        {
            "source_updated_at": datetime.fromisoformat(c.pop("source_updated_at")),
            "target_updated_at": datetime.fromisoformat(c.pop("target_updated_at")),
        }
        for c in losers
    ]
    assert losers == [
        {"side": "source", "record_id": h0["id"], "winner": "target"},
        {"side": "target", "record_id": z1["id"], "winner": "source"},
        {"side": "target", "record_id": z2["id"], "winner": "source"},
    ]
    assert moments == [
        {"source_updated_at": soon, "target_updated_at": soon + timedelta(minutes=1)},
        {"source_updated_at": soon + timedelta(minutes=2), "target_updated_at": soon},
        {
            "source_updated_at": soon + timedelta(minutes=3),
            "target_updated_at": soon + timedelta(minutes=3),
        },
    ]
    sample = json.dumps(run.conflict_sample)
    for personal in ("example.com", "Later", "Earlier", "Tie", "Hubbard", "H0"):
        assert personal not in sample

    # Settled: the next run writes nothing and finds no conflict.
    settled = await _two_way_run(temporal_client, sessions, crm_pair)
    assert (settled.created, settled.updated, settled.conflicts) == (0, 0, 0)


async def test_a_two_way_run_pages_both_legs_across_continue_as_new(
    crm_pair: CrmPair,
    hubspot_peer: HubSpotPeer,
    zoho_peer: ZohoPeer,
    temporal_client: Client,
    sessions: SessionFactory,
) -> None:
    _seed_both(hubspot_peer, zoho_peer, 3)
    # Pages of two, two per workflow run: the forward leg's last page turns the run around
    # and it continues as new in the backward leg.
    handle = await temporal_client.start_workflow(
        SyncWorkflow.run,
        SyncRunState(profile_id=crm_pair.profile_id, page_size=2, pages_per_run=2),
        id=f"sync:{crm_pair.profile_id}",
        task_queue=crm_pair.settings.temporal_task_queue,
    )
    counts = await handle.result()
    latest = await temporal_client.get_workflow_handle(handle.id).describe()
    assert latest.run_id != handle.first_execution_run_id
    assert (counts.read, counts.created, counts.unchanged, counts.failed) == (9, 6, 3, 0)
    assert len(hubspot_peer.records["contacts"]) == len(zoho_peer.records["Contacts"]) == 6
    profile = await _profile_row(sessions, crm_pair.profile_id)
    assert profile.cursor is not None
    assert profile.back_cursor is not None
    assert (profile.page_cursor, profile.pending_cursor) == (None, None)
    assert (profile.back_page_cursor, profile.back_pending_cursor) == (None, None)
    run = await _run_row(sessions, handle.first_execution_run_id or "")
    assert (run.outcome, run.created, run.unchanged) == ("completed", 6, 3)


@pytest.mark.slow
async def test_three_thousand_customers_reach_the_crm_once(
    setup: Setup,
    woocommerce_peer: WooCommercePeer,
    hubspot_peer: HubSpotPeer,
    temporal_client: Client,
    sessions: SessionFactory,
) -> None:
    """A few thousand records across two connectors, in pages of 100 over continue-as-new;
    the second run finds nothing new to write."""
    hubspot_peer.interval_max = 100_000
    _customers(woocommerce_peer, 3000)
    run_id = await _sync(temporal_client, setup, page_size=100, pages_per_run=10)
    row = await _run_row(sessions, run_id)
    assert (row.outcome, row.read, row.created, row.failed) == ("completed", 3000, 3000, 0)
    contacts = _contacts(hubspot_peer)
    assert len(contacts) == 3000
    assert len({c[EXTERNAL_ID] for c in contacts}) == len({c["email"] for c in contacts}) == 3000
    async with sessions() as session:
        mapped = await session.scalar(
            select(func.count()).where(SyncMapping.profile_id == setup.profile_id)
        )
    assert mapped == 3000
    again = await _run_row(sessions, await _sync(temporal_client, setup))
    # Only the newest customer, at the watermark, is read again.
    assert (again.read, again.created, again.updated) == (1, 0, 1)
    assert len(hubspot_peer.records["contacts"]) == 3000
