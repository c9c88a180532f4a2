"""The GA4 daily aggregate over HTTP on the dev server: a ``daily_report -> daily_aggregate``
sync profile keeps a GA4 property's days (numbers only) from the GA4 peer, reads again the
days GA4 may still be completing, and the dashboard route serves them to the tenant alone."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from activities.sync import DAYS_PER_PAGE, FIRST_DAYS, LATE_DAYS
from core.db import SessionFactory
from core.settings import Settings
from models.sync import AnalyticsDay
from tests.api.test_analytics_agent import REPORTS, agent_settings, analytics, api
from tests.factories import Member, member
from tests.peers.ga4 import GA4Peer

pytest_plugins = ["tests.peers.hubspot", "tests.peers.ga4"]
pytestmark = pytest.mark.one_database
__all__ = ["agent_settings", "api"]  # fixtures


async def _days_profile(api: httpx.AsyncClient, admin: Member, connection_id: str) -> str:
    created = await api.post(
        "/api/v1/sync/profiles",
        json={
            "source_connection_id": connection_id,
            "source_resource": "daily_report",
            "target_resource": "daily_aggregate",
        },
        headers=admin.headers,
    )
    assert created.status_code == 201, created.text
    profile = created.json()
    assert profile["target_connection_id"] == connection_id
    return str(profile["profile_id"])


async def _run(api: httpx.AsyncClient, admin: Member, profile_id: str) -> dict[str, Any]:
    """Trigger a run and wait for its statistics."""
    path = f"/api/v1/sync/profiles/{profile_id}"
    before = len((await api.get(f"{path}/runs", headers=admin.headers)).json()["items"])
    assert (await api.post(f"{path}/trigger", headers=admin.headers)).status_code == 202
    for _ in range(600):
        runs = (await api.get(f"{path}/runs", headers=admin.headers)).json()["items"]
        if len(runs) > before and runs[0]["outcome"] is not None:
            return dict(runs[0])
        await asyncio.sleep(0.1)
    pytest.fail("the run did not finish")


async def test_a_ga4_property_s_days_are_kept_as_numbers_and_served_to_its_tenant(
    api: httpx.AsyncClient,
    ga4_peer: GA4Peer,
    sessions: SessionFactory,
    agent_settings: Settings,
) -> None:
    admin = await member(sessions, agent_settings)
    connection_id = await analytics(api, admin, ga4_peer)
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    ga4_peer.seed_daily("sessions", {yesterday: 410, yesterday - timedelta(days=1): 380})
    profile_id = await _days_profile(api, admin, connection_id)

    first = await _run(api, admin, profile_id)
    assert (first["outcome"], first["read"], first["created"]) == (
        "completed",
        FIRST_DAYS,
        FIRST_DAYS,
    )
    # One report of the seven metrics by day per page of days, up to yesterday (today is not
    # over), the pages' ranges following each other.
    sent = [json.loads(body) for *_, body in ga4_peer.seen("POST", REPORTS)]
    ranges = [
        (b["dateRanges"][0]["startDate"], b["dateRanges"][0]["endDate"])
        for b in sent
        if b.get("dimensions") == [{"name": "date"}] and len(b["metrics"]) == 7
    ]
    assert len(ranges) == -(-FIRST_DAYS // DAYS_PER_PAGE)
    assert ranges[0][0] == str(yesterday - timedelta(days=FIRST_DAYS - 1))
    assert ranges[-1][1] == str(yesterday)

    shown = await api.get(
        "/api/v1/analytics/days",
        params={"connection_id": connection_id, "start": str(yesterday - timedelta(days=6))},
        headers=admin.headers,
    )
    assert shown.status_code == 200, shown.text
    days = shown.json()["days"]
    assert [d["day"] for d in days] == [
        str(yesterday - timedelta(days=n)) for n in reversed(range(7))
    ]
    assert days[-1]["metrics"]["sessions"] == 410
    assert days[-2]["metrics"]["sessions"] == 380
    assert set(days[-1]["metrics"]) == {
        "users",
        "sessions",
        "page_views",
        "events",
        "bounce_rate",
        "average_session_seconds",
        "revenue",
    }

    # GA4 completes a day's numbers late: the next run reads the last days again and updates
    # them in place.
    ga4_peer.seed_daily("sessions", {yesterday: 455})
    second = await _run(api, admin, profile_id)
    assert (second["read"], second["created"], second["updated"]) == (
        LATE_DAYS + 1,
        0,
        LATE_DAYS + 1,
    )
    latest = await api.get(
        "/api/v1/analytics/days",
        params={"connection_id": connection_id, "start": str(yesterday)},
        headers=admin.headers,
    )
    assert latest.json()["days"][0]["metrics"]["sessions"] == 455
    async with sessions() as session:
        kept = await session.scalar(
            select(func.count()).where(AnalyticsDay.tenant_id == admin.tenant_id)
        )
    assert kept == FIRST_DAYS


async def test_days_are_refused_to_other_tenants_and_bad_profiles_and_ranges(
    api: httpx.AsyncClient,
    ga4_peer: GA4Peer,
    sessions: SessionFactory,
    agent_settings: Settings,
) -> None:
    admin = await member(sessions, agent_settings)
    other = await member(sessions, agent_settings)
    connection_id = await analytics(api, admin, ga4_peer)
    foreign = await api.get(
        "/api/v1/analytics/days", params={"connection_id": connection_id}, headers=other.headers
    )
    assert foreign.status_code == 404
    backwards = await api.get(
        "/api/v1/analytics/days",
        params={"connection_id": connection_id, "start": "2026-11-02", "end": "2026-11-01"},
        headers=admin.headers,
    )
    assert backwards.status_code == 422
    too_long = await api.get(
        "/api/v1/analytics/days",
        params={"connection_id": connection_id, "start": "2025-01-01", "end": "2026-11-01"},
        headers=admin.headers,
    )
    assert too_long.status_code == 422
    # The aggregate is kept by BizOSaaS: another target connection is refused (naming the
    # source itself is the same as leaving it out); so is a mapping naming a metric the pair
    # does not read.
    days = {
        "source_connection_id": connection_id,
        "source_resource": "daily_report",
        "target_resource": "daily_aggregate",
    }
    for extra, field in (
        ({"target_connection_id": str(uuid.uuid4())}, "target_connection_id"),
        ({"field_mapping": {"sessions": "purchases"}}, "sessions"),
    ):
        refused = await api.post("/api/v1/sync/profiles", json=days | extra, headers=admin.headers)
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["loc"][-1] == field
    named = await api.post(
        "/api/v1/sync/profiles",
        json=days | {"target_connection_id": connection_id},
        headers=admin.headers,
    )
    assert named.status_code == 201, named.text
    hubspot_like = await api.post(
        "/api/v1/sync/profiles",
        json={
            "source_connection_id": connection_id,
            "target_connection_id": connection_id,
            "source_resource": "customers",
            "target_resource": "contacts",
        },
        headers=admin.headers,
    )
    assert hubspot_like.status_code == 422
