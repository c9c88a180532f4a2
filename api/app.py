"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from api import problems
from api.middleware import BodyLimitMiddleware, RequestIdMiddleware, UnhandledErrorMiddleware
from api.ratelimit import RateLimits
from api.routers import audit, auth, health, password_reset
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
        title="BizOSaaS Flow",
        version="0.1.0",
        summary="Starts, signals and reads the platform's business workflows.",
    )
    app.state.settings = settings
    app.state.temporal = temporal
    app.state.sessions = session_factory(engine)
    app.state.rate_limits = rate_limits

    problems.install(app)
    # Outermost last: request id, then the catch-all 500, then the body cap.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(RequestIdMiddleware)
    for module in (health, auth, password_reset, audit):
        app.include_router(module.router)
    Instrumentator(registry=CollectorRegistry()).instrument(app).expose(
        app, include_in_schema=False
    )
    return app
