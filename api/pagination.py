"""Keyset pagination cursors: an opaque token for (time, id) of the last row of a page."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from core.errors import Unprocessable

Row = TypeVar("Row")


def encode_cursor(at: datetime, row_id: uuid.UUID) -> str:
    raw = f"{at.astimezone(UTC).isoformat()}|{row_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (time, id) a cursor stands for; 422 for one this API did not hand out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, row_id = raw.split("|")
        moment = datetime.fromisoformat(at)
        if moment.tzinfo is None:
            raise ValueError("naive time")
        return moment, uuid.UUID(row_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Unprocessable(
            "The cursor is not one this API handed out.",
            errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "value_error"}],
        ) from None


async def newest_first(
    session: AsyncSession,
    query: Select[Row],
    at: InstrumentedAttribute[datetime],
    key: InstrumentedAttribute[uuid.UUID],
    limit: int,
    cursor: str | None,
) -> tuple[list[Row], str | None]:
    """One page of ``query``'s rows, newest first by (``at``, ``key``), after ``cursor``; and
    the cursor of the next page (``None`` on the last)."""
    if cursor is not None:
        query = query.where(tuple_(at, key) < tuple_(*decode_cursor(cursor)))
    found = list(await session.scalars(query.order_by(at.desc(), key.desc()).limit(limit + 1)))
    page = found[:limit]
    if len(found) <= limit:
        return page, None
    last = page[-1]
    return page, encode_cursor(getattr(last, at.key), getattr(last, key.key))
