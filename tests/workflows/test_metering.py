"""Usage recorded where it happens: a tenant's sync runs on the dev server against the
WooCommerce and HubSpot peers (records written, one workflow run however often the run
continues as new, nothing twice when an activity is repeated, the usage view over HTTP), and on
the time-skipping server one workflow run per playbook, task, agent run, chat and content item,
none for the child runs a process starts."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from api.app import create_app
from connectors.crm.hubspot import API_BASE
from core.db import SessionFactory, transaction
from core.settings import Settings
from models.agents import AgentRunConfig, AgentRunStart
from models.billing import UsageEvent, UsageMetric, UsageRecord
from models.content import ContentStatus, EditCommand
from models.playbooks import PlaybookStart, PlaybookStatus, parse_document
from models.sync import PageCommit, SyncCounts, SyncProfile, SyncRunState, SyncStatus
from models.tasks import TaskPolicy, TaskStatus
from tests.factories import Member, cms_connection, member
from tests.peers.chat_model import ChatModelPeer
from tests.peers.hubspot import HubSpotPeer
from tests.peers.woocommerce import WooCommercePeer
from tests.polling import eventually
from tests.workflows.test_agent_chat import _chat
from tests.workflows.test_publish import FakeCms, fake_cms_worker, start_item
from tests.workflows.test_sync import T0, add_profile, connect_pair
from tests.workflows.test_task import _project as task_project
from tests.workflows.test_task import _start as start_task
from workers import registry
from workers.main import build_worker
from workflows.agent_run import AgentRunWorkflow
from workflows.agent_run import workflow_id as agent_run_workflow_id
from workflows.playbook import PlaybookWorkflow
from workflows.playbook import workflow_id as playbook_workflow_id
from workflows.publish import PublishWorkflow
from workflows.sync import SyncWorkflow

pytestmark = pytest.mark.one_database
pytest_plugins = ["tests.peers.woocommerce", "tests.peers.hubspot", "tests.peers.chat_model"]

RUNS, SYNCED = UsageMetric.WORKFLOW_RUNS, UsageMetric.RECORDS_SYNCED


async def _usage(
    sessions: SessionFactory, tenant_id: uuid.UUID, metric: UsageMetric
) -> list[tuple[int, str]]:
    """The tenant's events of ``metric``: (quantity, idempotency key), oldest first."""
    async with sessions() as session:
        rows = await session.execute(
            select(UsageEvent.quantity, UsageEvent.idempotency_key)
            .where(UsageEvent.tenant_id == tenant_id, UsageEvent.metric == metric)
            .order_by(UsageEvent.occurred_at, UsageEvent.id)
        )
    return [(quantity, key) for quantity, key in rows.all()]


def _activity(sessions: SessionFactory, settings: Settings, name: str) -> Any:
    """The worker's activity of that name, as production registers it."""
    return next(f for f in registry.activities(sessions, settings) if f.__name__ == name)


# --- Sync (dev server, peers) ----------------------------------------------------------------


@pytest.fixture
def peered(settings: Settings, hubspot_peer: HubSpotPeer) -> Settings:
    return settings.model_copy(
        update={
            "connector_allow_private_urls": True,
            "connector_vendor_origins": {API_BASE: hubspot_peer.url},
        }
    )


async def _sync_profile(
    sessions: SessionFactory, settings: Settings, admin: Member, shop_url: str
) -> uuid.UUID:
    shop, crm = await connect_pair(sessions, settings, admin.tenant_id, shop_url)
    return await add_profile(sessions, admin.tenant_id, shop, crm)


async def _sync(
    client: Client, settings: Settings, profile_id: uuid.UUID, **options: int
) -> tuple[str, SyncCounts]:
    """One run to its end: the id of its first workflow run, and its counts."""
    handle = await client.start_workflow(
        SyncWorkflow.run,
        SyncRunState(profile_id=profile_id, **options),
        id=f"sync:{profile_id}",
        task_queue=settings.temporal_task_queue,
    )
    counts = await handle.result()
    assert handle.first_execution_run_id is not None
    return handle.first_execution_run_id, counts


async def test_a_sync_run_is_one_workflow_run_and_its_written_records_however_it_continues(
    peered: Settings,
    sessions: SessionFactory,
    woocommerce_peer: WooCommercePeer,
    hubspot_peer: HubSpotPeer,
    temporal_env: WorkflowEnvironment,
) -> None:
    admin = await member(sessions, peered)
    profile_id = await _sync_profile(sessions, peered, admin, woocommerce_peer.url)
    client = temporal_env.client
    async with build_worker(client, sessions, peered):
        # Nothing at the shop yet: the run counts, no record was written.
        empty, _ = await _sync(client, peered, profile_id)
        assert await _usage(sessions, admin.tenant_id, RUNS) == [
            (1, f"sync:{profile_id}:{empty}:run")
        ]
        assert await _usage(sessions, admin.tenant_id, SYNCED) == []

        for n in range(7):
            woocommerce_peer.add_customer(
                f"buyer{n}@example.com", modified=T0 + timedelta(minutes=n)
            )
        hubspot_peer.seed("contacts", {"email": "buyer3@example.com"})  # matched: updated
        # Pages of two, one page per workflow run: the run continues as new three times.
        paged, counts = await _sync(client, peered, profile_id, page_size=2, pages_per_run=1)
        assert counts.created + counts.updated == 7
        assert [key for _, key in await _usage(sessions, admin.tenant_id, RUNS)] == [
            f"sync:{profile_id}:{empty}:run",
            f"sync:{profile_id}:{paged}:run",
        ]
        synced = await _usage(sessions, admin.tenant_id, SYNCED)
        assert sum(quantity for quantity, _ in synced) == 7
        assert all(key.startswith(f"sync:{paged}:") for _, key in synced)

        # The last page's commit repeated (a retry after it succeeded) adds nothing.
        async with sessions() as session:
            profile = await session.get(SyncProfile, profile_id)
        assert profile is not None
        commit = _activity(sessions, peered, "commit_sync_page")
        repeated = PageCommit(
            profile_id=profile_id,
            workflow_run_id=paged,
            counts=counts,
            page_cursor=profile.page_cursor,
            pending_cursor=profile.pending_cursor,
        )
        await ActivityEnvironment().run(commit, repeated)
        assert await _usage(sessions, admin.tenant_id, SYNCED) == synced
        # The run's own record of its run, repeated, is refused by its key.
        record = _activity(sessions, peered, "record_usage")
        again = UsageRecord(
            tenant_id=admin.tenant_id,
            metric=RUNS,
            quantity=1,
            occurred_at=datetime.now(UTC),
            idempotency_key=f"sync:{profile_id}:{paged}:run",
        )
        assert await ActivityEnvironment().run(record, again) is False
        assert len(await _usage(sessions, admin.tenant_id, RUNS)) == 2

        # A paused profile's run does nothing, and counts nothing.
        async with transaction(sessions) as session:
            await session.execute(
                update(SyncProfile)
                .where(SyncProfile.id == profile_id)
                .values(status=SyncStatus.PAUSED)
            )
        await _sync(client, peered, profile_id)
        assert len(await _usage(sessions, admin.tenant_id, RUNS)) == 2
        assert await _usage(sessions, admin.tenant_id, SYNCED) == synced


async def test_the_usage_view_shows_a_triggered_syncs_run_and_records(
    peered: Settings,
    sessions: SessionFactory,
    engine: AsyncEngine,
    woocommerce_peer: WooCommercePeer,
    temporal_env: WorkflowEnvironment,
) -> None:
    admin = await member(sessions, peered)
    for n in range(5):
        woocommerce_peer.add_customer(f"shopper{n}@example.com", modified=T0 + timedelta(minutes=n))
    shop, crm = await connect_pair(sessions, peered, admin.tenant_id, woocommerce_peer.url)
    app = create_app(peered, temporal_env.client, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        build_worker(temporal_env.client, sessions, peered),
        httpx.AsyncClient(transport=transport, base_url="http://t") as api,
    ):
        body = {
            "source_connection_id": str(shop),
            "target_connection_id": str(crm),
            "source_resource": "customers",
            "target_resource": "contacts",
            "interval_minutes": 1440,
        }
        created = await api.post("/api/v1/sync/profiles", json=body, headers=admin.headers)
        assert created.status_code == 201, created.text
        path = f"/api/v1/sync/profiles/{created.json()['profile_id']}"
        triggered = await api.post(f"{path}/trigger", headers=admin.headers)
        assert triggered.status_code == 202, triggered.text

        async def usage() -> dict[str, int]:
            got = await api.get("/api/v1/billing/usage", headers=admin.headers)
            assert got.status_code == 200, got.text
            shown: dict[str, int] = got.json()["usage"]
            return shown

        shown = await eventually(usage, lambda u: u["records_synced"] == 5, seconds=60)
    assert shown["workflow_runs"] == 1


# --- One run per business process (time-skipping server) ------------------------------------


@pytest.fixture
async def ts_client(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> AsyncIterator[Client]:
    peered = settings.model_copy(update={"connector_allow_private_urls": True})
    async with build_worker(time_skipping_env.client, sessions, peered):
        yield time_skipping_env.client


def _audit(admin: Member, run_id: uuid.UUID, now: datetime) -> AgentRunStart:
    """An SEO audit of a page (no tools, no model)."""
    return AgentRunStart(
        run_id=run_id,
        tenant_id=admin.tenant_id,
        agent_id="seo-audit",
        started_by=admin.user_id,
        created_at=now,
        input={"html": "<h1>Pricing</h1><p>Plans.</p>"},
        config=AgentRunConfig(allowed_tools=[]),
    )


async def _minutes(sessions: SessionFactory, tenant_id: uuid.UUID) -> list[tuple[int, str]]:
    return await eventually(
        lambda: _usage(sessions, tenant_id, UsageMetric.AGENT_MINUTES), lambda found: bool(found)
    )


async def test_an_agent_run_is_one_workflow_run(
    ts_client: Client,
    sessions: SessionFactory,
    settings: Settings,
    time_skipping_env: WorkflowEnvironment,
) -> None:
    admin = await member(sessions, settings)
    run_id = uuid.uuid4()
    now = await time_skipping_env.get_current_time()
    handle = await ts_client.start_workflow(
        AgentRunWorkflow.run,
        _audit(admin, run_id, now),
        id=agent_run_workflow_id(run_id),
        task_queue=settings.temporal_task_queue,
    )
    await handle.result()
    assert await _usage(sessions, admin.tenant_id, RUNS) == [
        (1, f"{handle.id}:{handle.first_execution_run_id}:run")
    ]


async def test_a_task_given_to_an_agent_is_one_workflow_run_its_agents_run_part_of_it(
    ts_client: Client,
    sessions: SessionFactory,
    settings: Settings,
    time_skipping_env: WorkflowEnvironment,
) -> None:
    admin = await member(sessions, settings)
    project_id = await task_project(sessions, admin)
    now = await time_skipping_env.get_current_time()
    run = _audit(admin, uuid.uuid4(), now)
    task = await start_task(ts_client, settings, admin, project_id, now, TaskPolicy(), None, run)
    assert await task.result() is TaskStatus.DONE
    assert len(await _minutes(sessions, admin.tenant_id)) == 1  # the agent's run happened
    assert await _usage(sessions, admin.tenant_id, RUNS) == [
        (1, f"{task.id}:{task.first_execution_run_id}:run")
    ]


async def test_a_playbook_run_is_one_workflow_run_its_agent_steps_part_of_it(
    ts_client: Client,
    sessions: SessionFactory,
    settings: Settings,
    time_skipping_env: WorkflowEnvironment,
) -> None:
    admin = await member(sessions, settings)
    document = parse_document(
        {
            "id": "audit-twice",
            "name": "Audit twice",
            "steps": [
                {
                    "id": step,
                    "kind": "agent",
                    "agent_id": "seo-audit",
                    "input": {"html": "<h1>A</h1>"},
                }
                for step in ("first", "second")
            ],
        }
    )
    run_id = uuid.uuid4()
    start = PlaybookStart(
        run_id=run_id,
        tenant_id=admin.tenant_id,
        started_by=admin.user_id,
        created_at=await time_skipping_env.get_current_time(),
        document=document,
        input={},
        agents={"seo-audit": AgentRunConfig(allowed_tools=[])},
    )
    handle = await ts_client.start_workflow(
        PlaybookWorkflow.run,
        start,
        id=playbook_workflow_id(run_id),
        task_queue=settings.temporal_task_queue,
    )
    assert (await handle.result()).status is PlaybookStatus.COMPLETED
    assert len(await _usage(sessions, admin.tenant_id, UsageMetric.AGENT_MINUTES)) == 2
    assert await _usage(sessions, admin.tenant_id, RUNS) == [
        (1, f"{handle.id}:{handle.first_execution_run_id}:run")
    ]


async def test_a_chat_continued_as_new_is_one_workflow_run(
    ts_client: Client,
    sessions: SessionFactory,
    settings: Settings,
    chat_model_peer: ChatModelPeer,
) -> None:
    from models.agent_chat import ChatMessage
    from workflows.agent_chat import AgentChatWorkflow

    person = await member(sessions, settings)
    handle = await _chat(ts_client, settings, chat_model_peer, person)
    first_run = (await handle.describe()).run_id
    for number in range(17):  # past the 30 entries this session's run holds
        chat_model_peer.reply_text(f"Reply {number}", tokens=(1, 1))
        await handle.execute_update(
            AgentChatWorkflow.say, ChatMessage(text=f"Message {number}", by=person.user_id)
        )
    assert (await handle.describe()).run_id != first_run
    assert await _usage(sessions, person.tenant_id, RUNS) == [(1, f"{handle.id}:{first_run}:run")]


async def test_a_content_item_continued_as_new_is_one_workflow_run(
    time_skipping_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    client = time_skipping_env.client
    admin = await member(sessions, settings)
    connection_id = await cms_connection(sessions, admin.tenant_id, "https://x.example.com")
    async with fake_cms_worker(client, sessions, settings, FakeCms()):
        now = await time_skipping_env.get_current_time()
        item = await start_item(client, settings, admin, connection_id, now=now, history_limit=30)
        for n in range(8):
            await item.execute_update(
                PublishWorkflow.edit, EditCommand(changes={"excerpt": f"e{n}"}, by=admin.user_id)
            )
        await eventually(
            lambda: item.describe(), lambda found: found.run_id != item.first_execution_run_id
        )
        state = await item.query(PublishWorkflow.state)
        assert state.status is ContentStatus.DRAFT
        await item.terminate("done")
    assert await _usage(sessions, admin.tenant_id, RUNS) == [
        (1, f"{item.id}:{item.first_execution_run_id}:run")
    ]
