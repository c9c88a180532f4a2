"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from api import problems
from api.middleware import BodyLimitMiddleware, RequestIdMiddleware, UnhandledErrorMiddleware
from api.ratelimit import RateLimits
from api.routers import (
    approvals,
    audit,
    auth,
    billing,
    codec,
    health,
    onboarding,
    password_reset,
    sso,
    storage,
    users,
)
from connectors.storage import LocalStorage, storage_from_settings
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
    app.state.storage = storage_from_settings(settings)
    app.state.rate_limits = rate_limits

    problems.install(app)
    # Outermost last: request id, then the catch-all 500, then the body cap.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        own_limits=(LocalStorage.URL_PATH,),
    )
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(RequestIdMiddleware)
    if settings.codec_server_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.codec_server_origins,
            allow_methods=["POST"],
            allow_headers=["authorization", "content-type", "x-namespace"],
        )
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
        storage,
        codec,
    ):
        app.include_router(module.router)
    Instrumentator(registry=CollectorRegistry()).instrument(app).expose(
        app, include_in_schema=False
    )
    return app
