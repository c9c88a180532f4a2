"""Many open, idle billing workflows on one worker (issue 16, P4).

Starts ``count`` (default 10,000) plain idle workflows (``bench.idle_workflows``, the baseline)
and then as many ``BillingWorkflow`` runs of active tenants, each set on a worker process of its
own with the project's tuning (the sandbox, the encrypting converter, ``BIZ_WORKER_MAX_CACHED_
WORKFLOWS`` and autoscaling pollers from the default settings), against one Temporal dev server.
For each it prints:

- the worker's RSS growth from polling with nothing open to all workflows started and settled;
- the worker's CPU while they all sit idle (no per-workflow polling: it should be ~0), and the
  timers and events of a sample of their histories;
- the latency from a signal's delivery (``WorkflowExecutionSignaled`` in history) to its
  application (the ``WorkflowTaskCompleted`` that ran the handler), both stamped by the server,
  for ``samples`` signals to random workflows one at a time. Most of them are out of the
  worker's cache, so the figure includes fetching and replaying the history. The billing signal
  is ``stripe_event`` with an event that needs no activity (one that carries no object); the
  activities an event triggers (database writes, Stripe reads) come on top.

``python -m bench.idle_billing [count] [samples]``: about 9 minutes on 2 busy cores at 10,000;
``make bench`` runs it at 500.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import PollerBehaviorAutoscaling, Worker

from bench.idle_workflows import IdleWorkflow
from bench.startup import Watched, clean_env, free_port, wait_for_port
from bench.timing import percentile
from core.codec import generate_key_spec, parse_keys
from core.devserver import DevServerConfig, temporal_binary
from core.settings import Settings
from core.temporal import data_converter
from models.billing import (
    BillingEvent,
    BillingInput,
    BillingState,
    BillingStatus,
    SubscriptionSnapshot,
)
from models.onboarding import PlanId
from workflows.billing import BillingWorkflow

TARGET_RSS = 300 * 2**20  # issue 16, P4: RSS growth
TARGET_P99 = 0.100  # and a webhook applied within 100 ms p99
STARTS_IN_FLIGHT = 100
KEY_ENV = "BIZ_BENCH_CODEC_KEYS"


async def serve_worker(kind: str, address: str, task_queue: str) -> None:
    """The worker process: one kind of workflow, the project's converter and tuning."""
    settings = Settings()
    client = await Client.connect(
        address, data_converter=data_converter(parse_keys(os.environ[KEY_ENV]))
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pollers = PollerBehaviorAutoscaling(maximum=settings.worker_max_task_pollers)
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[BillingWorkflow if kind == "billing" else IdleWorkflow],
        max_cached_workflows=settings.worker_max_cached_workflows,
        workflow_task_poller_behavior=pollers,
    ):
        print("worker polling", flush=True)
        await stop.wait()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no RSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def settle(pid: int, limit: float = 600.0) -> float:
    """Wait until the worker uses under 2% of a core over a second; returns the seconds waited."""
    started = time.perf_counter()
    before = cpu_seconds(pid)
    while time.perf_counter() - started < limit:
        await asyncio.sleep(1.0)
        after = cpu_seconds(pid)
        if after - before < 0.02:
            break
        before = after
    return time.perf_counter() - started


def active_tenant(tenant_id: uuid.UUID) -> BillingInput:
    """An active, paying tenant: no reminder, grace or retention timer pending."""
    now = datetime.now(UTC)
    subscription = SubscriptionSnapshot(
        subscription_id=f"sub_{tenant_id.hex[:14]}",
        customer_id=f"cus_{tenant_id.hex[:14]}",
        tenant_id=tenant_id,
        plan=PlanId.STARTER,
        stripe_status="active",
        current_period_start=now,
        current_period_end=now + timedelta(days=30),
        as_of=int(now.timestamp()),
    )
    state = BillingState(
        status=BillingStatus.ACTIVE,
        plan=PlanId.STARTER,
        customer_id=subscription.customer_id,
        subscription=subscription,
        usage_scheduled=True,
    )
    return BillingInput(tenant_id=tenant_id, state=state)


async def start_all(client: Client, kind: str, task_queue: str, count: int) -> list[str]:
    """Start ``count`` workflows, ``STARTS_IN_FLIGHT`` at a time; returns their ids."""
    gate = asyncio.Semaphore(STARTS_IN_FLIGHT)

    async def start(n: int) -> str:
        async with gate:
            if kind == "billing":
                tenant_id = uuid.uuid4()
                handle: WorkflowHandle[Any, Any] = await client.start_workflow(
                    BillingWorkflow.run,
                    active_tenant(tenant_id),
                    id=f"billing:{tenant_id}",
                    task_queue=task_queue,
                )
            else:
                handle = await client.start_workflow(
                    IdleWorkflow.run, id=f"idle:{n}", task_queue=task_queue
                )
            return handle.id

    return list(await asyncio.gather(*(start(n) for n in range(count))))


async def delivery_to_application(handle: WorkflowHandle[Any, Any]) -> float:
    """Server time from the last signal in history to the workflow task that handled it."""
    deadline = time.perf_counter() + 30.0
    while time.perf_counter() < deadline:
        events = [e async for e in handle.fetch_history_events()]
        signalled = max(
            (
                i
                for i, e in enumerate(events)
                if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
            ),
            default=None,
        )
        if signalled is not None:
            done = next(
                (
                    e
                    for e in events[signalled:]
                    if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
                ),
                None,
            )
            if done is not None:
                start = events[signalled].event_time.ToDatetime()
                return (done.event_time.ToDatetime() - start).total_seconds()
        await asyncio.sleep(0.02)
    raise RuntimeError(f"the signal to {handle.id} was not applied within 30 s")


async def signal_latencies(client: Client, kind: str, ids: list[str], samples: int) -> list[float]:
    rng = random.Random(11)
    seconds = []
    for n in range(samples):
        handle: WorkflowHandle[Any, Any] = client.get_workflow_handle(rng.choice(ids))
        if kind == "billing":
            event = BillingEvent(
                event_id=f"evt_bench_{n}",
                type="customer.updated",
                created=int(time.time()),
                customer_id="cus_bench",
            )
            await handle.signal("stripe_event", event)
        else:
            await handle.signal("poke", n + 1)
        seconds.append(await delivery_to_application(handle))
    return seconds


async def history_shape(client: Client, ids: list[str]) -> tuple[float, int]:
    """Mean events per history and the number of timers started, over 20 of the workflows."""
    lengths, timers = [], 0
    for workflow_id in random.Random(3).sample(ids, min(20, len(ids))):
        handle: WorkflowHandle[Any, Any] = client.get_workflow_handle(workflow_id)
        events = [e async for e in handle.fetch_history_events()]
        lengths.append(len(events))
        timers += sum(e.event_type == EventType.EVENT_TYPE_TIMER_STARTED for e in events)
    return statistics.mean(lengths), timers


async def measure(
    client: Client, kind: str, address: str, scratch: Path, count: int, samples: int
) -> dict[str, float]:
    task_queue = f"bench-idle-{kind}"
    args = [sys.executable, "-m", "bench.idle_billing", "--worker", kind, address, task_queue]
    env = clean_env(scratch) | {KEY_ENV: os.environ[KEY_ENV]}
    worker = Watched(args, env, Path.cwd())
    try:
        worker.wait_for("worker polling")
        pid = worker.process.pid
        await asyncio.sleep(2.0)
        rss_empty = rss(pid)
        started = time.perf_counter()
        ids = await start_all(client, kind, task_queue, count)
        start_seconds = time.perf_counter() - started
        await settle(pid)
        settled_seconds = time.perf_counter() - started
        rss_idle = rss(pid)
        cpu_before = cpu_seconds(pid)
        await asyncio.sleep(10.0)
        idle_cpu = (cpu_seconds(pid) - cpu_before) / 10.0
        events, timers = await history_shape(client, ids)
        latencies = await signal_latencies(client, kind, ids, samples)
        rss_after = rss(pid)
    finally:
        worker.stop()
    return {
        "starts": start_seconds,
        "settled": settled_seconds,
        "rss_empty": rss_empty,
        "growth": rss_idle - rss_empty,
        "growth_after": rss_after - rss_empty,
        "idle_cpu": idle_cpu,
        "events": events,
        "timers": timers,
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
    }


def line(kind: str, r: dict[str, float], count: int) -> str:
    mib = 2**20
    return (
        f"{kind}: {count:,} started in {r['starts']:.1f} s ({count / r['starts']:,.0f}/s), "
        f"settled after {r['settled']:.1f} s | RSS {r['rss_empty'] / mib:,.0f} MiB empty, "
        f"+{r['growth'] / mib:,.0f} MiB idle, +{r['growth_after'] / mib:,.0f} MiB after the "
        f"signals | idle CPU {r['idle_cpu'] * 100:.2f}% of a core | {r['events']:.0f} events "
        f"and {r['timers']:.0f} timers in 20 sampled histories | signal applied p50 "
        f"{r['p50'] * 1e3:.1f} ms p99 {r['p99'] * 1e3:.1f} ms max {r['max'] * 1e3:.1f} ms"
    )


async def main(count: int = 10_000, samples: int = 200) -> None:
    os.environ.setdefault(KEY_ENV, generate_key_spec())
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bizosaas-idle-") as directory:
        scratch = Path(directory)
        config = DevServerConfig(port=free_port())
        command = config.command(temporal_binary())
        # In memory (no --db-filename): the dev server's SQLite file caps starts at ~60/s here.
        at = command.index("--db-filename")
        del command[at : at + 2]
        temporal = Watched([*command, "--headless"], clean_env(scratch), scratch)
        address = f"127.0.0.1:{config.port}"
        try:
            wait_for_port(config.port)
            client = await Client.connect(
                address, data_converter=data_converter(parse_keys(os.environ[KEY_ENV]))
            )
            results = {
                kind: await measure(client, kind, address, scratch, count, samples)
                for kind in ("plain", "billing")
            }
        finally:
            temporal.stop()
    settings = Settings()
    print(
        f"{count:,} idle workflows per worker, cache {settings.worker_max_cached_workflows}, "
        f"{samples} signals one at a time; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after"
    )
    for kind, result in results.items():
        print(line(kind, result, count))
    plain, billing = results["plain"], results["billing"]
    print(
        f"billing vs plain: RSS growth {billing['growth'] / max(plain['growth'], 1):.2f}x, "
        f"signal p50 {billing['p50'] / plain['p50']:.2f}x, p99 {billing['p99'] / plain['p99']:.2f}x"
    )
    rss_ok = billing["growth_after"] <= TARGET_RSS
    p99_ok = billing["p99"] <= TARGET_P99
    print(
        f"billing: RSS growth {billing['growth_after'] / 2**20:,.0f} MiB "
        f"({'within' if rss_ok else 'OVER'} 300 MiB), signal p99 {billing['p99'] * 1e3:.1f} ms "
        f"({'within' if p99_ok else 'OVER'} 100 ms)"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        asyncio.run(serve_worker(*sys.argv[2:5]))
    else:
        numbers = [int(arg) for arg in sys.argv[1:3]]
        asyncio.run(main(*numbers))
