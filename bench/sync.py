"""Connector sync throughput: shop customers at the WooCommerce peer become contacts at the
HubSpot peer, through ``SyncWorkflow`` run by a ``bizosaas worker`` process.

``python -m bench.sync [records] [limit]`` (10,000 records and 100 requests/s by default, a run
of minutes; ``make bench`` runs 1,000). It starts its own dev server, a SQLite database
and the two peers, then measures in one run:

- **baseline**: the same reads and writes through the same ports (a page's records looked up
  at once, then each created), one record at a time in a plain loop, with neither Temporal nor
  the database (what the vendors and the connectors cost by themselves; the sync writes
  ``BIZ_SYNC_RECORD_CONCURRENCY`` records at once, so it may pass the baseline);
- **sync**: the profile's run, no rate limit at the CRM;
- **sync under a limit**: the CRM peer allows ``limit`` requests a second (its rolling
  ten-second window, answered with HubSpot's 429s past it) and the connection is configured
  with that limit (``BIZ_CONNECTOR_RATE_LIMITS``), so the run paces itself to it.

It prints records/s, the sync's ratio to the baseline, the share of the limit the limited run
used, and the worker's peak RSS (``VmHWM``). The peers run in this process's threads and search
their records linearly, as small test doubles do: the baseline pays that too, so the ratio is
what the workflow, the database and the worker add.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from subprocess import Popen
from typing import cast

from pydantic import SecretStr
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from connectors.access import open_connection
from connectors.commerce import CommercePort, SyncQuery
from connectors.crm import ContactDraft, CRMPort
from connectors.crm.hubspot import API_BASE
from connectors.secrets import secret_store_from_settings
from core import migrate, search
from core.codec import generate_key_spec, parse_keys
from core.db import SessionFactory, create_engine, session_factory
from core.devserver import temporal_binary
from core.settings import Settings
from core.temporal import data_converter
from models.sync import SyncRunState
from tests.conftest import UNPACED
from tests.factories import member
from tests.peers.asgi import Swappable, serve
from tests.peers.hubspot import HubSpotPeer
from tests.peers.hubspot import build_app as hubspot_app
from tests.peers.woocommerce import WooCommercePeer
from tests.peers.woocommerce import build_app as woocommerce_app
from tests.polling import eventually
from tests.processes import worker_process
from tests.workflows.test_sync import T0, add_profile, connect_pair
from workflows.sync import SyncWorkflow

PAGE = 100


async def _baseline(
    settings: Settings, sessions: SessionFactory, tenant_id: uuid.UUID, shop_url: str
) -> int:
    """The run's reads and writes through the ports in a plain loop; records written."""
    shop_id, crm_id = await connect_pair(sessions, settings, tenant_id, shop_url)
    store = secret_store_from_settings(settings)
    written = 0
    async with (
        open_connection(
            settings,
            store,
            tenant_id=tenant_id,
            connection_id=shop_id,
            connector_id="woocommerce",
            auth_kind="api_key",
            connection_settings={"store_url": shop_url},
        ) as source,
        open_connection(
            settings,
            store,
            tenant_id=tenant_id,
            connection_id=crm_id,
            connector_id="hubspot",
            auth_kind="api_key",
            connection_settings={},
        ) as target,
    ):
        shop, crm = cast(CommercePort, source), cast(CRMPort, target)
        query = SyncQuery(limit=PAGE)
        while True:
            page = await shop.list_customers(query)
            # What the sync asks of an empty CRM: the page's markers and e-mails looked up at
            # once, then a create for each record found by neither.
            markers = {f"{shop_id}:{c.id}": c for c in page.items}  # activities.sync.external_id
            emails = sorted({str(c.email) for c in page.items if c.email})
            found = await crm.find_contacts(list(markers), emails)
            known = {c.external_id for c in found} | {str(c.email).casefold() for c in found}
            for marker, customer in markers.items():
                if marker not in known and str(customer.email).casefold() not in known:
                    await crm.create_contact(
                        ContactDraft(
                            email=customer.email,
                            first_name=customer.first_name,
                            last_name=customer.last_name,
                            external_id=marker,
                        )
                    )
                written += 1
            if page.next_cursor is None:
                return written
            query = SyncQuery(cursor=page.next_cursor, limit=PAGE)


async def _sync(
    env: WorkflowEnvironment,
    settings: Settings,
    sessions: SessionFactory,
    tenant_id: uuid.UUID,
    shop_url: str,
) -> int:
    """One profile's run to its end; records written (created, or updated where a retried
    page found what its first attempt wrote)."""
    shop_id, crm_id = await connect_pair(sessions, settings, tenant_id, shop_url)
    profile_id = await add_profile(sessions, tenant_id, shop_id, crm_id)
    handle = await env.client.start_workflow(
        SyncWorkflow.run,
        SyncRunState(profile_id=profile_id, page_size=PAGE),
        id=f"sync:{profile_id}",
        task_queue=settings.temporal_task_queue,
    )
    counts = await handle.result()
    return counts.created + counts.updated


def _worker(
    settings: Settings, address: str, crm_url: str, log: Path, limit: int | None
) -> Popen[bytes]:
    """A ``bizosaas worker`` reaching the CRM peer, paced to ``limit`` requests a second (or,
    with none, far above the peers' limits)."""
    limits = (
        UNPACED
        if limit is None
        else UNPACED | {"hubspot": {"requests": limit * 10, "per_seconds": 10}}
    )
    return worker_process(
        settings,
        address,
        log,
        {
            "BIZ_CONNECTOR_ALLOW_PRIVATE_URLS": "true",
            "BIZ_CONNECTOR_VENDOR_ORIGINS": json.dumps({API_BASE: crm_url}),
            "BIZ_CONNECTOR_RATE_LIMITS": json.dumps(limits),
        },
    )


async def _polling(client: Client, task_queue: str) -> None:
    """Once a worker polls ``task_queue`` for activities: a run's clock starts with the
    worker up, not with its start-up (imports, connecting)."""
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
    )
    await eventually(
        lambda: client.workflow_service.describe_task_queue(request),
        lambda described: bool(described.pollers),
        seconds=60,
    )


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main(records: int = 10_000, limit: int = 100) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    spec = generate_key_spec()
    url = f"sqlite+aiosqlite:///{work / 'bench.db'}"
    await migrate.upgrade(url)
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=search.ALL,
        data_converter=data_converter(parse_keys(spec)),
    )
    engine = create_engine(url)
    sessions = session_factory(engine)
    shop = WooCommercePeer()
    crm_mount = Swappable()
    worker = None
    try:
        with serve(woocommerce_app(shop)) as shop_url, serve(crm_mount) as crm_url:
            shop.url = shop_url
            settings = Settings(
                _env_file=None,
                data_dir=work,
                database_url=url,
                codec_keys=SecretStr(spec),
                jwt_secret=SecretStr("bench-signing-key-" + "x" * 32),
                temporal_task_queue="bench-sync",
                connector_allow_private_urls=True,
                connector_vendor_origins={API_BASE: crm_url},
            )
            for n in range(records):
                shop.add_customer(f"customer{n}@example.com", modified=T0, first_name=f"C{n}")
            admin = await member(sessions, settings)

            def fresh_crm(requests_per_second: int | None) -> HubSpotPeer:
                peer = HubSpotPeer(url=crm_url)
                peer.interval_max = 10 * (requests_per_second or 1_000_000)
                crm_mount.app = hubspot_app(peer)
                return peer

            fresh_crm(None)
            started = time.perf_counter()
            written = await _baseline(settings, sessions, admin.tenant_id, shop_url)
            baseline = written / (time.perf_counter() - started)

            address = env.client.service_client.config.target_host
            worker = _worker(settings, address, crm_url, work / "worker.log", None)
            await _polling(env.client, settings.temporal_task_queue)
            crm = fresh_crm(None)
            started = time.perf_counter()
            created = await _sync(env, settings, sessions, admin.tenant_id, shop_url)
            free = created / (time.perf_counter() - started)
            per_record = len(crm.requests) / max(created, 1)

            free_peak = _peak_rss_mib(worker.pid)
            worker.kill()
            worker.wait()
            worker = _worker(settings, address, crm_url, work / "worker-limited.log", limit)
            await _polling(env.client, settings.temporal_task_queue)
            crm = fresh_crm(limit)
            started = time.perf_counter()
            created_limited = await _sync(env, settings, sessions, admin.tenant_id, shop_url)
            elapsed = time.perf_counter() - started
            limited = created_limited / elapsed
            # The peer counts the requests its window let through (its 429s not).
            used = crm.daily_used / elapsed / limit
            peak = max(free_peak, _peak_rss_mib(worker.pid))

        print(f"records: {records} (pages of {PAGE}), shop customers -> CRM contacts")
        print(f"baseline (ports in a loop, no Temporal, no database): {baseline:,.0f} records/s")
        print(
            f"sync, no rate limit: {free:,.0f} records/s ({created} written) | "
            f"ratio to baseline {free / baseline:.2f}x | {per_record:.1f} CRM requests/record"
        )
        print(
            f"sync, CRM limited to {limit} requests/s: {limited:,.0f} records/s "
            f"({created_limited} written) | {used:.0%} of the limit used | "
            f"ratio to the limit's ceiling {limited / (limit / per_record):.2f}x"
        )
        print(f"worker peak RSS: {peak:,.0f} MiB")
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        await engine.dispose()
        await env.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    asyncio.run(main(*args))
