"""Small workflows for the telemetry and logging tests (a module: the sandbox re-imports it)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError


@activity.defn(name="telemetry_probe")
async def probe(name: str) -> str:
    """Logs through the SDK's activity logger."""
    activity.logger.info("probe activity for %s", name)
    return name


@workflow.defn
class LoggingWorkflow:
    """Logs from workflow code and from its one activity."""

    @workflow.run
    async def run(self, name: str) -> str:
        """Log, run the probe, return its answer."""
        workflow.logger.info("workflow for %s", name)
        return await workflow.execute_activity(
            probe, name, start_to_close_timeout=timedelta(seconds=10)
        )


@workflow.defn
class FailingWorkflow:
    """Fails at once, so the SDK's failure counter has something to count."""

    @workflow.run
    async def run(self) -> None:
        """Fail without retry."""
        raise ApplicationError("failing on purpose", non_retryable=True)
