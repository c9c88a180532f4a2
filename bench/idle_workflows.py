"""A plain workflow that waits for signals: the baseline of the worker benchmarks.

``python -m bench.idle_workflows ADDRESS TASK_QUEUE`` runs a sandboxed worker with only this
workflow, prints ``worker polling`` once it polls, and stops on SIGTERM (the start-up baseline
of ``bench.startup``). The workflow lives in its own module because the sandbox re-imports it.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker


@workflow.defn
class IdleWorkflow:
    """Waits, with no timer, until told to stop; each signal is applied to its state."""

    def __init__(self) -> None:
        self._applied = 0
        self._stopped = False

    @workflow.run
    async def run(self) -> int:
        """Wait for the stop signal; return how many signals were applied."""
        await workflow.wait_condition(lambda: self._stopped)
        return self._applied

    @workflow.signal
    def poke(self, sequence: int) -> None:
        """Apply one signal (the baseline of a billing event)."""
        self._applied = sequence

    @workflow.signal
    def stop(self) -> None:
        """End the workflow."""
        self._stopped = True

    @workflow.query
    def applied(self) -> int:
        """The sequence number of the last signal applied."""
        return self._applied


async def serve(address: str, task_queue: str) -> None:
    client = await Client.connect(address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Worker(client, task_queue=task_queue, workflows=[IdleWorkflow]):
        print("worker polling", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
