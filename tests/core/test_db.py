"""The SQLite engine: each statement makes one trip to the connection's thread, and behaves as
the driver's own cursor would (rows, counts, ids, errors, transactions, streaming)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import create_engine


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}")
    async with engine.begin() as connection:
        await connection.execute(
            text("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)")
        )
    yield engine
    await engine.dispose()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The calls sent to aiosqlite connections' threads, by name."""
    sent: list[str] = []
    send = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(getattr(getattr(fn, "func", fn), "__name__", repr(fn)))
        return await send(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return sent


async def test_a_read_is_one_trip_and_its_pool_return_none(
    sqlite: AsyncEngine, trips: list[str]
) -> None:
    async with sqlite.connect() as connection:
        await connection.execute(text("SELECT 1"))  # the pooled connection is open
    trips.clear()
    async with sqlite.connect() as connection:
        rows = (await connection.execute(text("SELECT :n + 1"), {"n": 41})).all()
    assert rows == [(42,)]
    assert trips == ["_run"]


async def test_rows_counts_and_ids_are_the_drivers(sqlite: AsyncEngine) -> None:
    async with sqlite.begin() as connection:
        inserted = await connection.execute(
            text("INSERT INTO item (name) VALUES (:name)"), {"name": "first"}
        )
        assert inserted.lastrowid == 1
        await connection.execute(
            text("INSERT INTO item (name) VALUES (:name)"), [{"name": "b"}, {"name": "c"}]
        )
        renamed = await connection.execute(text("UPDATE item SET name = name || '!'"))
        assert renamed.rowcount == 3
        names = (await connection.execute(text("SELECT name FROM item ORDER BY id"))).scalars()
        assert names.all() == ["first!", "b!", "c!"]


async def test_an_error_is_the_drivers_and_a_rollback_undoes_the_writes(
    sqlite: AsyncEngine,
) -> None:
    async with sqlite.begin() as connection:
        await connection.execute(text("INSERT INTO item (name) VALUES ('twice')"))
        with pytest.raises(IntegrityError):
            await connection.execute(text("INSERT INTO item (name) VALUES ('twice')"))
        await connection.rollback()
    async with sqlite.begin() as connection:
        await connection.execute(text("INSERT INTO item (name) VALUES ('undone')"))
        await connection.rollback()
    async with sqlite.connect() as connection:
        count = (await connection.execute(text("SELECT count(*) FROM item"))).scalar_one()
    assert count == 0


async def test_a_streamed_result_still_streams(sqlite: AsyncEngine) -> None:
    async with sqlite.begin() as connection:
        await connection.execute(
            text("INSERT INTO item (name) VALUES (:name)"),
            [{"name": f"n{i}"} for i in range(500)],
        )
    async with sqlite.connect() as connection:
        streamed = await connection.stream(text("SELECT name FROM item ORDER BY id"))
        names = [row.name async for row in streamed]
    assert len(names) == 500
    assert names[:2] == ["n0", "n1"]
