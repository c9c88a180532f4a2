"""Process-wide telemetry: the Temporal runtime (SDK metrics) and OpenTelemetry tracing.

Every process that holds a Temporal client (the API, the worker) gets its runtime and client
interceptors from here, through ``core.temporal.connect``.
"""

from __future__ import annotations

import socket
import threading

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from temporalio.client import Interceptor
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from core.settings import Settings

_lock = threading.Lock()
_runtime: Runtime | None = None
_sdk_metrics_url: str | None = None
_provider: TracerProvider | None = None


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def runtime() -> Runtime:
    """The process's one Temporal runtime, created on first use.

    A runtime owns its Prometheus listener, so a second one in the same process would fight
    over the port. Its exporter listens on a private loopback port: ``core.metrics`` reads it at
    scrape time and serves the SDK's metrics together with the process's own, so operators
    scrape one endpoint per process. Counters get the ``_total`` suffix and durations are in
    seconds, as Prometheus names them.
    """
    global _runtime, _sdk_metrics_url
    with _lock:
        if _runtime is None:
            address = f"127.0.0.1:{_free_loopback_port()}"
            _runtime = Runtime(
                telemetry=TelemetryConfig(
                    metrics=PrometheusConfig(
                        bind_address=address,
                        counters_total_suffix=True,
                        durations_as_seconds=True,
                    )
                )
            )
            _sdk_metrics_url = f"http://{address}/metrics"
        return _runtime


def sdk_metrics_url() -> str | None:
    """Where the runtime's Prometheus exporter answers; ``None`` before a client connected."""
    return _sdk_metrics_url


def client_interceptors() -> list[Interceptor]:
    """The tracing interceptor; a worker built on the client inherits it.

    It is always installed: without a configured tracer provider its spans are no-ops, and
    with one (``BIZ_OTLP_ENDPOINT``) a span started by an HTTP request continues through the
    workflow into its activities, carried in Temporal headers.
    """
    return [TracingInterceptor()]


def tracer_provider(settings: Settings, service_name: str) -> TracerProvider | None:
    """A provider exporting spans over OTLP/gRPC to ``BIZ_OTLP_ENDPOINT``; ``None`` when unset."""
    if settings.otlp_endpoint is None:
        return None
    # Imported here: the gRPC exporter is only loaded by processes that export.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
    )
    return provider


def configure_tracing(settings: Settings, service_name: str) -> None:
    """Make the process export its spans when ``BIZ_OTLP_ENDPOINT`` is set; otherwise do nothing
    (the API's and the SDK's spans stay no-ops)."""
    global _provider
    if _provider is not None:
        return
    provider = tracer_provider(settings, service_name)
    if provider is not None:
        trace.set_tracer_provider(provider)
        _provider = provider


def shutdown_tracing() -> None:
    """Flush spans still batched; the processes end without interpreter teardown (core.cli)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None
