"""The worker process: polls the task queue until SIGTERM or SIGINT, then drains and exits.

On a stop signal the worker stops polling and lets in-flight activities finish for
``BIZ_WORKER_GRACEFUL_SHUTDOWN_SECONDS`` (30) before cancelling them; an activity cancelled
then is retried by another worker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.service import RPCError
from temporalio.worker import PollerBehaviorAutoscaling, Worker

from activities.billing_reconciliation import ensure_reconciliation_schedule
from core import metrics, search
from core.db import SessionFactory, create_engine, session_factory
from core.errors import Fatal
from core.heap import freeze_startup_objects
from core.logging import TenantLogContext
from core.net import ensure_port_free
from core.settings import Settings
from core.temporal import TemporalUnavailable, connect
from workers import registry

log = logging.getLogger(__name__)


def activity_slots(settings: Settings, sessions: SessionFactory) -> int:
    """How many activities run at once: ``BIZ_WORKER_MAX_CONCURRENT_ACTIVITIES``, else the pool.

    Almost every activity holds one database connection while it runs, so the database pool
    is the resource that runs out first: a slot beyond pool size + overflow would only wait
    for a connection (and time out after 30 s) while the server counts its timeouts. A
    resource-based tuner watches CPU and memory, which these I/O-bound activities barely use,
    so it would admit more work than the pool serves. To run more, raise both together.
    """
    if settings.worker_max_concurrent_activities is not None:
        return settings.worker_max_concurrent_activities
    engine = sessions.kw.get("bind")
    pool = engine.pool if isinstance(engine, AsyncEngine) else None
    if isinstance(pool, QueuePool):
        return max(1, pool.size() + max(0, pool._max_overflow))
    # Pools without a fixed size (SQLite in memory, NullPool): the SDK's own default.
    return 100


def build_worker(client: Client, sessions: SessionFactory, settings: Settings) -> Worker:
    """A worker for the settings' task queue with every workflow and activity registered."""
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=registry.WORKFLOWS,
        activities=registry.activities(sessions, settings),
        max_concurrent_activities=activity_slots(settings, sessions),
        # Activity log lines name the tenant of their workflow (the client adds tracing).
        interceptors=[TenantLogContext()],
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_graceful_shutdown_seconds),
        # Each cached workflow keeps its sandbox in memory; past the cache a task replays the
        # history, which long-lived billing workflows keep short by continuing as new.
        max_cached_workflows=settings.worker_max_cached_workflows,
        # Pollers scale with the backlog the server reports, instead of a fixed five that
        # idle on a quiet queue and starve a busy one.
        workflow_task_poller_behavior=PollerBehaviorAutoscaling(
            maximum=settings.worker_max_task_pollers
        ),
        activity_task_poller_behavior=PollerBehaviorAutoscaling(
            maximum=settings.worker_max_task_pollers
        ),
    )


async def ensure_search_attributes(client: Client, *, may_register: bool) -> list[str]:
    """Make sure the namespace has the project's search attributes; return those registered.

    Without them a workflow that sets one fails its task over and over. A self-hosted or dev
    server lets the worker register missing ones; Temporal Cloud does not (``may_register``
    is false with an API key), and neither does a server at its attribute limit: then the
    worker stops with one line naming what to create.
    """
    namespace = client.namespace
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
    except RPCError as exc:
        raise Fatal(
            f"cannot list the search attributes of namespace {namespace!r} ({exc.message}); "
            f"it needs {_spec(search.ALL)}"
        ) from None
    wrong = [
        f"{key.name} is {IndexedValueType.Name(listed.custom_attributes[key.name])}, but must be "
        f"{search.type_name(key)}"
        for key in search.ALL
        if key.name in listed.custom_attributes
        and listed.custom_attributes[key.name] != search.indexed_type(key)
    ]
    if wrong:
        raise Fatal(f"namespace {namespace!r}: {'; '.join(wrong)}")
    missing = [key for key in search.ALL if key.name not in listed.custom_attributes]
    if not missing:
        return []
    create = f"create the search attributes {_spec(missing)} in namespace {namespace!r}"
    if not may_register:
        raise Fatal(
            f"{create} (Temporal Cloud: tcld namespace search-attributes add, or the Cloud UI)"
        )
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=namespace,
                search_attributes={key.name: search.indexed_type(key) for key in missing},
            )
        )
    except RPCError as exc:
        raise Fatal(f"{create}: the server refused to register them ({exc.message})") from None
    names = [key.name for key in missing]
    log.info("registered search attributes %s in namespace %s", ", ".join(names), namespace)
    return names


def _spec(keys: Sequence[SearchAttributeKey[Any]]) -> str:
    return ", ".join(f"{key.name} ({search.type_name(key)})" for key in keys)


async def run(settings: Settings) -> None:
    """Run until a stop signal; in-flight activities finish before exit. Makes sure of the
    search attributes and of the billing reconciliation Schedule first."""
    try:
        client = await connect(settings)
    except TemporalUnavailable as exc:
        raise Fatal(str(exc)) from None
    await ensure_search_attributes(client, may_register=settings.temporal_api_key is None)
    try:
        await ensure_reconciliation_schedule(client, settings)
    except RPCError as exc:  # the worker still serves; the next start tries again
        log.error("the billing reconciliation Schedule could not be made: %s", exc.message)
    engine = create_engine(settings.database_url, echo=settings.database_echo)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sessions = session_factory(engine)
    worker = build_worker(client, sessions, settings)
    freeze_startup_objects()
    metrics_server = None
    if settings.worker_metrics_port:
        ensure_port_free(
            settings.worker_metrics_host,
            settings.worker_metrics_port,
            what="worker metrics",
            change_with="BIZ_WORKER_METRICS_PORT (0 turns it off)",
        )
        metrics_server = metrics.serve(
            settings.worker_metrics_host, settings.worker_metrics_port, metrics.worker_registry()
        )
    try:
        async with worker:
            log.info(
                "worker polling task queue %s (%d activity slots; metrics on %s)",
                settings.temporal_task_queue,
                activity_slots(settings, sessions),
                f"http://{settings.worker_metrics_host}:{settings.worker_metrics_port}/metrics"
                if metrics_server
                else "no port",
            )
            await stop.wait()
            log.info(
                "worker stopping; in-flight activities get %g s to finish",
                settings.worker_graceful_shutdown_seconds,
            )
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        await engine.dispose()
