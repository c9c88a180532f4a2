"""Logging: JSON lines for log collectors, plain lines for people at a terminal.

Each record carries what is known where it was logged: the request id (API), the tenant id,
and the workflow id and run id (the SDK's ``workflow.logger`` and ``activity.logger`` put
``temporal_workflow`` / ``temporal_activity`` dicts in the record), and the trace id when a span
is active.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from opentelemetry import trace
from temporalio import activity, workflow
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from core.search import TENANT_ID

request_id: ContextVar[str] = ContextVar("request_id", default="-")
# Set where the caller's tenant becomes known (an authenticated request, an activity).
tenant_id: ContextVar[str | None] = ContextVar("tenant_id", default=None)

_TENANT_HEADER = "bizosaas-tenant-id"


def _workflow_tenant() -> str | None:
    """The running workflow's ``TenantId`` search attribute, when logged from workflow code."""
    if not workflow.in_workflow():
        return None
    return workflow.info().typed_search_attributes.get(TENANT_ID)


class TenantLogContext(Interceptor):
    """Carries a workflow's ``TenantId`` to its activities, whose log lines then name it.

    The workflow side adds a header to each activity it schedules (headers are not part of
    the commands replay compares); the activity side sets :data:`tenant_id` while it runs.
    """

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityTenant(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        return _WorkflowTenant


class _WorkflowTenant(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_ActivityHeader(outbound))


class _ActivityHeader(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        tenant = workflow.info().typed_search_attributes.get(TENANT_ID)
        if tenant is not None:
            header = workflow.payload_converter().to_payload(tenant)
            input.headers = {**input.headers, _TENANT_HEADER: header}
        return super().start_activity(input)


class _ActivityTenant(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        header = input.headers.get(_TENANT_HEADER)
        if header is None:
            return await super().execute_activity(input)
        token = tenant_id.set(activity.payload_converter().from_payload(header, str))
        try:
            return await super().execute_activity(input)
        finally:
            tenant_id.reset(token)


class _Context(logging.Filter):
    """Copies the request, tenant, workflow and trace ids onto every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        workflow_info: dict[str, Any] = getattr(record, "temporal_workflow", None) or {}
        activity_info: dict[str, Any] = getattr(record, "temporal_activity", None) or {}
        record.workflow_id = workflow_info.get("workflow_id") or activity_info.get("workflow_id")
        record.run_id = workflow_info.get("run_id") or activity_info.get("workflow_run_id")
        record.workflow_type = workflow_info.get("workflow_type") or activity_info.get(
            "workflow_type"
        )
        record.activity_type = activity_info.get("activity_type")
        tenant = tenant_id.get()
        if tenant is None and workflow_info:
            tenant = _workflow_tenant()
        record.tenant_id = tenant
        span = trace.get_current_span().get_span_context()
        record.trace_id = format(span.trace_id, "032x") if span.is_valid else None
        return True


_FIELDS = (
    "request_id",
    "tenant_id",
    "workflow_id",
    "run_id",
    "workflow_type",
    "activity_type",
    "trace_id",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; fields without a value are left out."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value not in (None, "-"):
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(
    level: str,
    log_format: Literal["auto", "json", "plain"] = "auto",
    stream: TextIO | None = None,
) -> None:
    """Log to ``stream`` (stderr): JSON lines, or plain ones on a terminal or when asked."""
    stream = stream if stream is not None else sys.stderr
    as_json = log_format == "json" or (log_format == "auto" and not stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.addFilter(_Context())
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    # The SDK appends its context dict to workflow and activity messages; JSON lines carry
    # those ids as fields instead.
    workflow.logger.workflow_info_on_message = not as_json
    activity.logger.activity_info_on_message = not as_json
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
