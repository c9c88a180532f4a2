"""Liveness of the API and its dependencies."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from api.deps import SessionDep, TemporalDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    """``ok``, or ``unavailable`` with the failing dependency's check ``failing``."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, Literal["ok", "failing"]]


log = logging.getLogger(__name__)
_TIMEOUT = 2.0


async def _database_ok(session: SessionDep) -> bool:
    try:
        await asyncio.wait_for(session.execute(text("SELECT 1")), _TIMEOUT)
    except Exception:
        log.warning("health: database check failed", exc_info=True)
        return False
    return True


async def _temporal_ok(client: TemporalDep) -> bool:
    try:
        return await client.service_client.check_health(timeout=timedelta(seconds=_TIMEOUT))
    except Exception:
        log.warning("health: temporal check failed", exc_info=True)
        return False


@router.get(
    "/healthz",
    summary="Health of the API, its database and Temporal",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is failing"}},
)
async def healthz(session: SessionDep, client: TemporalDep) -> JSONResponse:
    """200 when every dependency answers; 503 naming the failing ones otherwise."""
    database, temporal = await asyncio.gather(_database_ok(session), _temporal_ok(client))
    checks = {
        "database": "ok" if database else "failing",
        "temporal": "ok" if temporal else "failing",
    }
    healthy = database and temporal
    return JSONResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status_code=200 if healthy else 503,
    )
