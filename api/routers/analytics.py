"""The tenant's dashboard numbers: the days of an analytics property that a ``daily_report ->
daily_aggregate`` sync profile keeps (the only numbers BizOSaaS stores of a tenant's systems)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import select

from api.deps import CurrentPrincipal, SessionDep
from api.tenancy import owned
from core.errors import Unprocessable
from models.connection import Connection
from models.sync import AnalyticsDay

router = APIRouter(prefix="/api/v1/analytics", tags=["analytics"])
MAX_DAYS = 400


class DayView(BaseModel):
    day: date
    metrics: dict[str, float]


class DaysView(BaseModel):
    """The connection's kept days from ``start`` to ``end``, oldest first; days not synced (or
    without data at the vendor) are absent."""

    connection_id: uuid.UUID
    start: date
    end: date
    days: list[DayView]


@router.get("/days", summary="An analytics connection's daily numbers")
async def list_days(
    principal: CurrentPrincipal,
    session: SessionDep,
    connection_id: uuid.UUID,
    start: Annotated[date | None, Query()] = None,
    end: Annotated[date | None, Query()] = None,
) -> DaysView:
    """From ``start`` (default: 30 days before ``end``) to ``end`` (default: yesterday), at
    most 400 days. 404 for a connection not in your tenant; 422 for a range that ends before
    it starts or is longer."""
    connection = await owned(session, Connection, connection_id, principal)
    end = end or datetime.now(UTC).date() - timedelta(days=1)
    start = start or end - timedelta(days=29)
    if not timedelta(0) <= end - start < timedelta(days=MAX_DAYS):
        raise Unprocessable(
            f"The range must run forwards, over at most {MAX_DAYS} days.",
            errors=[{"loc": ["query", "start"], "msg": "out of range", "type": "value_error"}],
        )
    rows = await session.scalars(
        select(AnalyticsDay)
        .where(
            AnalyticsDay.connection_id == connection.id,
            AnalyticsDay.day >= start,
            AnalyticsDay.day <= end,
        )
        .order_by(AnalyticsDay.day)
    )
    return DaysView(
        connection_id=connection.id,
        start=start,
        end=end,
        days=[DayView(day=row.day, metrics=row.metrics) for row in rows],
    )
