"""The worker process: polls the task queue until SIGTERM or SIGINT, then drains and exits."""

from __future__ import annotations

import asyncio
import logging
import signal

from temporalio.client import Client
from temporalio.worker import Worker

from core.db import SessionFactory, create_engine, session_factory
from core.settings import Settings
from core.temporal import connect
from workers import registry

log = logging.getLogger(__name__)


def build_worker(client: Client, sessions: SessionFactory, settings: Settings) -> Worker:
    """A worker for the settings' task queue with every workflow and activity registered."""
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=registry.WORKFLOWS,
        activities=registry.activities(sessions, settings),
    )


async def run(settings: Settings) -> None:
    """Run until a stop signal; in-flight activities finish before exit."""
    client = await connect(settings)
    engine = create_engine(settings.database_url, echo=settings.database_echo)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = build_worker(client, session_factory(engine), settings)
    try:
        async with worker:
            log.info("worker polling task queue %s", settings.temporal_task_queue)
            await stop.wait()
            log.info("worker stopping")
    finally:
        await engine.dispose()
