"""Metrics and traces of the API and worker, scraped and exported for real.

The Temporal client comes from ``core.temporal.connect`` (the process runtime with its
Prometheus exporter, and the tracing interceptor); the app is the real one over ASGI.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from core import audit, telemetry
from core.db import SessionFactory, transaction
from core.settings import Settings
from core.temporal import connect
from models.approval import Approval, ApprovalKind, ApprovalStatus
from models.base import utcnow
from models.user import Role
from tests.core.telemetry_workflows import FailingWorkflow
from tests.factories import member
from tests.peers_stripe import WEBHOOK_SECRET, signed, stripe_event
from workers.main import build_worker
from workflows.audit_verification import workflow_id


@dataclass
class Stack:
    api: httpx.AsyncClient
    client: Client
    settings: Settings


@pytest.fixture
async def stack(
    settings: Settings,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    sessions: SessionFactory,
) -> AsyncIterator[Stack]:
    """The API and a worker on a client made by ``connect``, as the processes make theirs."""
    settings = settings.model_copy(
        update={
            "temporal_address": temporal_env.client.service_client.config.target_host,
            "stripe_webhook_secret": SecretStr(WEBHOOK_SECRET),
        }
    )
    client = await connect(settings)
    app = create_app(settings, client, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        build_worker(client, sessions, settings),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as api,
    ):
        yield Stack(api, client, settings)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans of this test, kept in memory (the process's tracer provider can be set only once)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # later spans are dropped, not kept for the rest of the run


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of the one sample of ``name`` whose labels include ``labels``."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    found = [
        line
        for line in text.splitlines()
        if line.startswith(name + "{") and all(label in line for label in wanted)
    ]
    assert len(found) == 1, f"{name} {labels}: {found}"
    return float(found[0].rsplit(" ", 1)[1])


async def _scrape(api: httpx.AsyncClient) -> str:
    response = await api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_one_trace_from_the_request_to_the_activities(
    stack: Stack, sessions: SessionFactory, spans: InMemorySpanExporter
) -> None:
    admin = await member(sessions, stack.settings, Role.TENANT_ADMIN)
    async with transaction(sessions) as session:
        await audit.append(session, "user.login", tenant_id=admin.tenant_id, data={})
    response = await stack.api.post("/api/v1/audit/verifications", headers=admin.headers)
    assert response.status_code == 202, response.text
    await stack.client.get_workflow_handle(workflow_id(admin.tenant_id)).result()

    finished = _wait_for_spans(spans, "RunActivity:verify_audit_chain")
    [http] = [
        s
        for s in finished
        if s.kind is SpanKind.SERVER and s.name == "POST /api/v1/audit/verifications"
    ]
    assert http.context is not None
    trace_id = http.context.trace_id
    in_trace = {
        s.context.span_id: s for s in finished if s.context and s.context.trace_id == trace_id
    }

    def chain(span: ReadableSpan) -> list[str]:
        names = [span.name]
        while span.parent is not None and span.parent.span_id in in_trace:
            span = in_trace[span.parent.span_id]
            names.append(span.name)
        return names

    # The SDK parents a workflow's outbound calls on the span that started it; RunWorkflow
    # (the workflow task) is their sibling under that same span.
    [activity] = [s for s in in_trace.values() if s.name == "RunActivity:verify_audit_chain"]
    assert chain(activity) == [
        "RunActivity:verify_audit_chain",
        "StartActivity:verify_audit_chain",
        "StartWorkflow:AuditVerificationWorkflow",
        "POST /api/v1/audit/verifications",
    ]
    [run] = [s for s in in_trace.values() if s.name == "RunWorkflow:AuditVerificationWorkflow"]
    assert chain(run) == [
        "RunWorkflow:AuditVerificationWorkflow",
        "StartWorkflow:AuditVerificationWorkflow",
        "POST /api/v1/audit/verifications",
    ]


def _wait_for_spans(exporter: InMemorySpanExporter, name: str) -> tuple[ReadableSpan, ...]:
    deadline = time.monotonic() + 10
    while not any(s.name == name for s in exporter.get_finished_spans()):
        assert time.monotonic() < deadline, [s.name for s in exporter.get_finished_spans()]
        time.sleep(0.05)
    return exporter.get_finished_spans()


async def test_api_metrics_carry_business_and_sdk_metrics(
    stack: Stack, sessions: SessionFactory, task_queue: str
) -> None:
    before = await _scrape(stack.api)

    # Approvals pending: read from the projection at scrape time.
    admin = await member(sessions, stack.settings, Role.TENANT_ADMIN)
    async with transaction(sessions) as session:
        for status in (ApprovalStatus.PENDING, ApprovalStatus.PENDING, ApprovalStatus.APPROVED):
            session.add(
                Approval(
                    id=uuid.uuid4(),
                    workflow_id=f"approval:{uuid.uuid4()}",
                    tenant_id=admin.tenant_id,
                    kind=ApprovalKind.TENANT_ONBOARDING,
                    subject="Tenant onboarding",
                    decider_role=Role.SUPER_ADMIN,
                    status=status,
                    requested_at=utcnow(),
                    due_at=utcnow(),
                )
            )

    # Stripe webhooks by outcome: one ignored event, one with a bad signature.
    event = stripe_event("charge.captured", {"id": "ch_1"}, int(time.time()))
    body, headers = signed(event)
    webhook = "/api/v1/billing/webhooks/stripe"
    assert (await stack.api.post(webhook, content=body, headers=headers)).status_code == 200
    forged = headers | {"Stripe-Signature": headers["Stripe-Signature"][:-4] + "0000"}
    assert (await stack.api.post(webhook, content=body, headers=forged)).status_code == 400

    # Workflow failures by type: the SDK's own counter, from a worker on the same runtime.
    async with Worker(stack.client, task_queue=f"{task_queue}-f", workflows=[FailingWorkflow]):
        with pytest.raises(Exception, match="Workflow execution failed"):
            await stack.client.execute_workflow(
                # By name: the typed form of a parameterless run makes a fresh whole-tree mypy
                # run mis-infer other modules' typed handles (seen with mypy 2.4).
                "FailingWorkflow",
                id=f"failing-{uuid.uuid4()}",
                task_queue=f"{task_queue}-f",
            )

    after = await _scrape(stack.api)
    pending_before = _pending(before)
    assert _sample(after, "bizosaas_approvals_pending", kind="tenant_onboarding") == (
        pending_before + 2
    )
    for outcome in ("ignored", "rejected"):
        assert _counter(after, "bizosaas_stripe_webhooks_total", outcome=outcome) == (
            _counter(before, "bizosaas_stripe_webhooks_total", outcome=outcome) + 1
        )
    failed = {"workflow_type": "FailingWorkflow", "task_queue": f"{task_queue}-f"}
    assert _counter(after, "temporal_workflow_failed_total", **failed) == 1
    # The client's own SDK metrics: requests by operation, with latencies in seconds.
    started = {"operation": "StartWorkflowExecution", "task_queue": f"{task_queue}-f"}
    assert _sample(after, "temporal_request_total", **started) == 1
    assert "temporal_request_latency_bucket{" in after
    # The API's HTTP metrics are there too.
    assert "http_requests_total{" in after


def _pending(text: str) -> float:
    if 'bizosaas_approvals_pending{kind="tenant_onboarding"}' not in text:
        return 0
    return _sample(text, "bizosaas_approvals_pending", kind="tenant_onboarding")


def _counter(text: str, name: str, **labels: str) -> float:
    """A counter's value; a labelled counter not yet incremented has no sample."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    if not any(
        line.startswith(name + "{") and all(w in line for w in wanted) for line in text.splitlines()
    ):
        return 0
    return _sample(text, name, **labels)


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace endpoint on loopback that keeps what it receives."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(  # the protocol's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[OtlpReceiver, int]]:
    receiver = OtlpReceiver()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, port
    server.stop(grace=None)


def test_spans_go_to_the_otlp_endpoint_only_when_one_is_set(
    settings: Settings, otlp_receiver: tuple[OtlpReceiver, int]
) -> None:
    assert settings.otlp_endpoint is None
    assert telemetry.tracer_provider(settings, "bizosaas-api") is None

    receiver, port = otlp_receiver
    configured = settings.model_copy(update={"otlp_endpoint": f"http://127.0.0.1:{port}"})
    provider = telemetry.tracer_provider(configured, "bizosaas-api")
    assert provider is not None
    with provider.get_tracer(__name__).start_as_current_span("approve tenant"):
        pass
    assert provider.force_flush(timeout_millis=10_000)
    provider.shutdown()
    [request] = receiver.requests
    [resource_spans] = request.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "bizosaas-api"
    assert [span.name for scope in resource_spans.scope_spans for span in scope.spans] == [
        "approve tenant"
    ]
