"""The analytics anomaly agent over HTTP on the dev server: a GA4 connection (a service account
the GA4 peer knows), a run that reads the property's daily sessions from the peer and flags the
days that depart from the week before them, and the connections it refuses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from connectors.analytics import ga4
from connectors.crm import hubspot
from core.db import SessionFactory
from core.settings import Settings
from tests.api.test_agents import DONE, crm, start, until
from tests.factories import Member, member
from tests.peers.ga4 import GA4Peer
from tests.peers.hubspot import HubSpotPeer
from workers.main import build_worker

pytest_plugins = ["tests.peers.hubspot", "tests.peers.ga4"]
# Agents' SQL is the same on both backends: PostgreSQL by default, SQLite too with --slow.
pytestmark = pytest.mark.one_database
PROPERTY = "123456789"
REPORTS = f"/v1beta/properties/{PROPERTY}:runReport"
#: Four weeks of sessions with a weekly rhythm, an outage on the 12th and a spike on the 24th.
WEEK = [412, 398, 430, 405, 377, 251, 236]
END = date(2026, 11, 28)


@pytest.fixture
def agent_settings(settings: Settings, hubspot_peer: HubSpotPeer, ga4_peer: GA4Peer) -> Settings:
    # The peers listen on loopback, which production settings refuse (SSRF).
    return settings.model_copy(
        update={
            "connector_allow_private_urls": True,
            "connector_vendor_origins": {
                hubspot.API_BASE: hubspot_peer.url,
                ga4.API_BASE: ga4_peer.url,
                "https://oauth2.googleapis.com": ga4_peer.url,
            },
        }
    )


@pytest.fixture
async def api(
    agent_settings: Settings,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    sessions: SessionFactory,
) -> AsyncIterator[httpx.AsyncClient]:
    async with build_worker(temporal_env.client, sessions, agent_settings):
        app = create_app(agent_settings, temporal_env.client, engine)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def analytics(api: httpx.AsyncClient, admin: Member, peer: GA4Peer) -> str:
    """A GA4 connection through a service account the property is shared with."""
    account = peer.service_account()
    peer.grant(PROPERTY, account.email)
    created = await api.post(
        "/api/v1/connections",
        json={
            "connector_id": "ga4",
            "label": "Web analytics",
            "auth_kind": "service_account",
            "form": {"property_id": PROPERTY, "service_account_json": json.dumps(account.info)},
        },
        headers=admin.headers,
    )
    assert created.status_code == 201, created.text
    connection_id: str = created.json()["connection_id"]
    return connection_id


async def test_anomalies_in_a_ga4_propertys_daily_sessions(
    api: httpx.AsyncClient,
    ga4_peer: GA4Peer,
    sessions: SessionFactory,
    agent_settings: Settings,
) -> None:
    admin = await member(sessions, agent_settings)
    connection_id = await analytics(api, admin, ga4_peer)
    days = [END - timedelta(days=27 - n) for n in range(28)]
    ga4_peer.seed_daily("sessions", dict(zip(days, WEEK * 4, strict=True)))
    ga4_peer.seed_daily("sessions", {date(2026, 11, 12): 35, date(2026, 11, 24): 1210})

    run = await start(
        api, admin, "analytics-anomaly", {"connection_id": connection_id, "end": str(END)}
    )
    done = await until(api, admin, run["run_id"], DONE)
    assert (done["status"], done["outcome"], done["steps"]) == ("completed", "no_action", 3), done
    assert [t["name"] for t in done["trace"] if t["kind"] == "tool"] == ["analytics.daily_metric"]
    result = done["result"]
    assert result["output"] == {
        "kind": "analytics_anomalies",
        "metric": "sessions",
        "start": "2026-11-01",
        "end": "2026-11-28",
        "days_scanned": 28,
        "baseline_days": 7,
        "threshold": 3.0,
        "anomalies": [
            {
                "date": "2026-11-12",
                "value": 35.0,
                "baseline_mean": 358.43,
                "z_score": -4.03,
                "direction": "down",
            },
            {
                "date": "2026-11-24",
                "value": 1210.0,
                "baseline_mean": 358.43,
                "z_score": 10.62,
                "direction": "up",
            },
        ],
    }
    assert (result["confidence"], result["writes"]) == (1.0, [])
    assert result["rationale"].endswith(
        "2 anomalies: 2026-11-12 down (z -4.03), 2026-11-24 up (z +10.62)."
    )
    # One report of sessions by day over the four weeks (after the connection's own check).
    sent = [json.loads(body) for *_, body in ga4_peer.seen("POST", REPORTS)]
    asked = [b for b in sent if b["metrics"] == [{"name": "sessions"}]]
    assert [(b["dateRanges"], b["dimensions"]) for b in asked] == [
        ([{"startDate": "2026-11-01", "endDate": "2026-11-28"}], [{"name": "date"}])
    ]
    log = await api.get(
        "/api/v1/agents/decisions?agent_id=analytics-anomaly", headers=admin.headers
    )
    [decision] = log.json()["items"]
    assert (decision["output"], decision["outcome"]) == (result["output"], "no_action")

    # Today is not over: its count would look like a drop, so the tool refuses it.
    today = datetime.now(UTC).date()
    early = await start(
        api, admin, "analytics-anomaly", {"connection_id": connection_id, "end": str(today)}
    )
    failed = await until(api, admin, early["run_id"], DONE)
    assert failed["status"] == "failed"
    assert failed["error"] == (
        "read sessions per day over 28 days: The last day read must be before today: today is "
        "not over yet."
    )

    # A CRM is no analytics system, and another tenant's connection is not found.
    refused = await api.post(
        "/api/v1/agents/analytics-anomaly/runs",
        json={"input": {"connection_id": await crm(api, admin)}},
        headers=admin.headers,
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"] == "The connection (hubspot) is not an analytics system."
    stranger = await member(sessions, agent_settings)
    foreign = await api.post(
        "/api/v1/agents/analytics-anomaly/runs",
        json={"input": {"connection_id": connection_id}},
        headers=stranger.headers,
    )
    assert foreign.status_code == 404
