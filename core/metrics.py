"""Prometheus metrics, declared once: business counters and the Temporal SDK's own.

Each process serves one endpoint: the API at ``/metrics`` (HTTP metrics, Stripe webhooks,
approvals pending, its SDK client metrics), the worker at ``BIZ_WORKER_METRICS_HOST:PORT``
(e-mails, SDK worker metrics such as ``temporal_workflow_failed_total{workflow_type=...}``, which
is the count of failed workflows by type). The SDK's metrics come from the process's Temporal
runtime (``core.telemetry.runtime``) and are read from its exporter at scrape time.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response

from core import telemetry
from core.db import SessionFactory

if TYPE_CHECKING:  # the worker imports this module too: it needs no web framework
    from fastapi import FastAPI

log = logging.getLogger(__name__)

# Labels stay low-cardinality: outcomes only, never tenants or addresses.
EMAILS = Counter(
    "bizosaas_emails",
    "E-mails handed to the transport, by outcome (sent, failed).",
    ["outcome"],
    registry=None,
)
STRIPE_WEBHOOKS = Counter(
    "bizosaas_stripe_webhooks",
    "Stripe webhook requests by outcome (delivered, ignored, unmatched, received, duplicate, "
    "rejected).",
    ["outcome"],
    registry=None,
)
# HTTP traffic by the route template matched (``none`` when no route matched), never the raw
# path; statuses by class (2xx, 4xx, ...).
HTTP_REQUESTS = Counter(
    "http_requests",
    "HTTP requests by method, route template and status class.",
    ["method", "handler", "status"],
    registry=None,
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route template.",
    ["method", "handler"],
    registry=None,
)
# Billing reconciliation with Stripe: tenants by outcome, and drifts by kind (see
# models/billing_reconciliation.py).
RECONCILED_SUBSCRIPTIONS = Counter(
    "bizosaas_billing_reconciled_subscriptions",
    "Tenants' subscriptions reconciled with Stripe, by outcome (checked, drifted, repaired, "
    "unrepaired, failed).",
    ["outcome"],
    registry=None,
)
SUBSCRIPTION_DRIFT = Counter(
    "bizosaas_billing_subscription_drift",
    "Differences between the subscriptions projection and Stripe found by reconciliation, by "
    "kind (status, plan, period_end, cancel_at_period_end, trial_end, gone, "
    "unknown_subscription).",
    ["kind"],
    registry=None,
)


class SdkMetrics(Collector):
    """The Temporal SDK's metrics, read from the runtime's loopback exporter at scrape time."""

    def collect(self) -> Iterator[Metric]:
        url = telemetry.sdk_metrics_url()
        if url is None:  # no Temporal client in this process yet
            return
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our loopback URL)
                text = response.read().decode()
        except OSError as exc:
            log.warning("the Temporal SDK's metrics could not be read from %s: %s", url, exc)
            return
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as exc:  # the rest of the scrape still answers
            log.warning("the Temporal SDK's metrics could not be parsed: %s", exc)
            return
        yield from families


SDK = SdkMetrics()


class ApprovalsPending(Collector):
    """Pending approvals by kind, counted in the ``approvals`` projection at scrape time.

    Every API process reports the same database-wide figure: aggregate with ``max``.
    """

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions
        self._counts: dict[str, int] | None = None

    async def refresh(self) -> None:
        # Imported here: the models pull in the whole table registry, which the worker's
        # metrics endpoint does not need.
        from models.approval import Approval, ApprovalStatus

        try:
            async with self._sessions() as session:
                rows = await session.execute(
                    select(Approval.kind, func.count())
                    .where(Approval.status == ApprovalStatus.PENDING)
                    .group_by(Approval.kind)
                )
                self._counts = {str(kind): int(count) for kind, count in rows}
        except SQLAlchemyError as exc:
            # A scrape must not fail with the database: the gauge is left out until it answers.
            log.warning("approvals pending could not be counted: %s", exc)
            self._counts = None

    def collect(self) -> Iterator[Metric]:
        if self._counts is None:
            return
        gauge = GaugeMetricFamily(
            "bizosaas_approvals_pending",
            "Approvals waiting for a decision, by kind.",
            labels=["kind"],
        )
        for kind, count in sorted(self._counts.items()):
            gauge.add_metric([kind], count)
        yield gauge


def api_registry() -> CollectorRegistry:
    """A registry per app (tests build many apps in one process) with the API's metrics."""
    registry = CollectorRegistry()
    registry.register(HTTP_REQUESTS)
    registry.register(HTTP_DURATION)
    registry.register(STRIPE_WEBHOOKS)
    registry.register(SDK)
    return registry


def expose(app: FastAPI, registry: CollectorRegistry, sessions: SessionFactory) -> None:
    """Serve ``registry`` and the approvals gauge at ``/metrics``."""
    pending = ApprovalsPending(sessions)
    registry.register(pending)

    async def metrics() -> Response:
        await pending.refresh()
        # Reading the SDK exporter blocks briefly: off the event loop.
        body = await asyncio.to_thread(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)


def worker_registry() -> CollectorRegistry:
    """The worker process's metrics: e-mails, billing reconciliation and the SDK's worker
    metrics."""
    registry = CollectorRegistry()
    registry.register(EMAILS)
    registry.register(RECONCILED_SUBSCRIPTIONS)
    registry.register(SUBSCRIPTION_DRIFT)
    registry.register(SDK)
    return registry


def serve(host: str, port: int, registry: CollectorRegistry) -> WSGIServer:
    """Serve ``registry`` on ``host:port`` from a daemon thread; ``shutdown()`` stops it."""
    server, _thread = _start_http_server(port, addr=host, registry=registry)
    return server
