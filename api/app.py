"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from api import problems
from api.middleware import BodyLimitMiddleware, RequestIdMiddleware, UnhandledErrorMiddleware
from api.routers import audit, health
from core.db import session_factory
from core.settings import Settings


def create_app(settings: Settings, temporal: Client, engine: AsyncEngine) -> FastAPI:
    """An app bound to a Temporal client and a database engine that its caller owns."""
    app = FastAPI(
        title="BizOSaaS Flow",
        version="0.1.0",
        summary="Starts, signals and reads the platform's business workflows.",
    )
    app.state.settings = settings
    app.state.temporal = temporal
    app.state.sessions = session_factory(engine)

    problems.install(app)
    # Outermost last: request id, then the catch-all 500, then the body cap.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(RequestIdMiddleware)
    for module in (health, audit):
        app.include_router(module.router)
    Instrumentator(registry=CollectorRegistry()).instrument(app).expose(
        app, include_in_schema=False
    )
    return app
