"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Scope
from temporalio.client import Client

from api import openapi, problems
from api.deps import check_json_body
from api.middleware import (
    BodyLimitMiddleware,
    HttpMetricsMiddleware,
    RequestIdMiddleware,
    UnhandledErrorMiddleware,
)
from api.ratelimit import RateLimits
from api.routers import (
    agent_chats,
    agents,
    analytics,
    approvals,
    audit,
    auth,
    billing,
    codec,
    connection_reads,
    connections,
    content,
    health,
    inbox,
    onboarding,
    password_reset,
    playbooks,
    sso,
    storage,
    sync,
    tasks,
    users,
)
from connectors.storage import LocalStorage, storage_from_settings
from core import metrics
from core.db import session_factory
from core.settings import Settings


def create_app(settings: Settings, temporal: Client, engine: AsyncEngine) -> FastAPI:
    """An app bound to a Temporal client and a database engine that its caller owns."""
    rate_limits = RateLimits(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await rate_limits.aclose()

    app = FastAPI(
        lifespan=lifespan,
        # One trace per request (FastAPI's own OpenTelemetry spans, named by the route it
        # matched), continued into workflows by the Temporal client's interceptor; nothing is
        # done per request while no tracer provider is configured. Metrics are Prometheus's.
        telemetry={
            "exclude": _untraced,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
        },
        title="BizOSaaS Flow",
        version="0.1.0",
        summary="Starts, signals and reads the platform's business workflows.",
        # No JSON body may nest too deeply or carry text that cannot be stored or encoded
        # (NUL, lone surrogates): 422 before any route runs.
        dependencies=[Depends(check_json_body)],
    )
    app.state.settings = settings
    app.state.temporal = temporal
    app.state.sessions = session_factory(engine)
    app.state.storage = storage_from_settings(settings)
    app.state.rate_limits = rate_limits

    problems.install(app)
    # Outermost last: request id, metrics, then the catch-all 500, then the body cap.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        own_limits=(LocalStorage.URL_PATH,),
    )
    app.add_middleware(UnhandledErrorMiddleware)
    # Inside the request id, so an access line carries it and the tenant.
    app.add_middleware(HttpMetricsMiddleware, access_log=settings.api_access_log)
    app.add_middleware(RequestIdMiddleware)
    if settings.codec_server_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.codec_server_origins,
            allow_methods=["POST"],
            allow_headers=["authorization", "content-type", "x-namespace"],
        )
    # First: the live reads' /connections/{id}/{resource} would shadow it.
    app.include_router(connections.callback_router)
    for module in (
        health,
        auth,
        password_reset,
        sso,
        users,
        audit,
        onboarding,
        approvals,
        billing,
        connections,
        connection_reads,
        storage,
        codec,
        sync,
        content,
        tasks,
        inbox,
        agents,
        agent_chats,
        playbooks,
        analytics,
    ):
        app.include_router(module.router)
    # The served document declares every error each route answers (api/openapi.py).
    openapi.install(app)
    metrics.expose(app, metrics.api_registry(), app.state.sessions)
    return app


def _untraced(scope: Scope) -> bool:
    """Probes and scrapes make no spans."""
    return scope.get("path") in ("/healthz", "/metrics")
