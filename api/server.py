"""``bizosaas api``: connect to Temporal and the database, then serve until a stop signal."""

from __future__ import annotations

import uvicorn
from sqlalchemy import text

from api.app import create_app
from core import logging as biz_logging
from core.db import create_engine
from core.errors import Fatal
from core.heap import freeze_startup_objects
from core.net import ensure_port_free
from core.settings import Settings
from core.temporal import TemporalUnavailable, connect


async def serve(settings: Settings) -> None:
    """Fail fast with one clear line on a taken port or an unreachable dependency."""
    biz_logging.configure(settings.log_level, settings.log_format)
    ensure_port_free(settings.api_host, settings.api_port, what="API", change_with="BIZ_API_PORT")
    try:
        client = await connect(settings)
    except TemporalUnavailable as exc:
        raise Fatal(str(exc)) from None
    engine = create_engine(settings.database_url, echo=settings.database_echo)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        await engine.dispose()
        raise Fatal(f"cannot reach the database (BIZ_DATABASE_URL): {exc}") from None
    app = create_app(settings, client, engine)
    freeze_startup_objects()
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        # uvicorn's own line holds the raw URL (an OAuth code, a signed storage grant):
        # the API's access line names the route instead (BIZ_API_ACCESS_LOG).
        access_log=False,
        proxy_headers=True,
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        await engine.dispose()
