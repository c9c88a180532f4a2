"""The async SQLAlchemy engine and sessions (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

import collections
import functools
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
from sqlalchemy import event
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import EMPTY_DICT

SessionFactory = async_sessionmaker[AsyncSession]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


_Ran = tuple[Any, int, int | None, list[Any]]  # description, rowcount, lastrowid, rows


def _run(connection: sqlite3.Connection, operation: str, parameters: Any, many: bool) -> _Ran:
    """On the connection's thread: the whole statement, from cursor to close."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        rows = cursor.fetchall() if cursor.description else []
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class _OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A statement's cursor, execution, rows and close in one trip to the aiosqlite
    connection's thread, where aiosqlite's own cursor makes four (each trip is a thread hand-off
    and back, about 0.1 ms of CPU). Server-side cursors stay aiosqlite's: they stream."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]  # none is opened until a statement runs
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount: int = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]

    async def _async_soft_close(self) -> None:
        return  # closed on the thread already

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        return await self._trip(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        return await self._trip(operation, seq_of_parameters, many=True)

    async def _trip(self, operation: str, parameters: Any, *, many: bool) -> None:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        on_thread = functools.partial(_run, connection._conn, operation, parameters, many)
        async with self._adapt_connection._execute_mutex:
            # aiosqlite's queue to its thread, as SQLAlchemy's own adapter uses it
            ran: _Ran = await connection._execute(on_thread)  # type: ignore[no-untyped-call]
        self._description, self._rowcount, self._lastrowid, rows = ran
        self._rows = collections.deque(rows)


class _OneTripConnection(AsyncAdapt_aiosqlite_connection):
    """Statements in one trip each; no trip for a rollback with no transaction open (a pool
    resets every connection it takes back, most of them only read)."""

    __slots__ = ()
    _cursor_cls = _OneTripCursor  # type: ignore[assignment]  # a subclass of the base's

    def rollback(self) -> None:
        driver: sqlite3.Connection | None = self._connection._connection
        if driver is not None and driver.in_transaction:
            super().rollback()


class _OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite DBAPI adapter whose connections use :class:`_OneTripCursor`."""

    def connect(self, *arg: Any, **kw: Any) -> _OneTripConnection:
        adapted = super().connect(*arg, **kw)
        return _OneTripConnection(self, adapted._connection)


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An engine for ``url``; SQLite gets foreign keys, WAL and a busy timeout.

    Bound parameters (e-mail addresses, password hashes, tokens) are kept out of error messages
    and the echo log: an error raised in an activity ends up in workflow history and logs.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, echo=echo, hide_parameters=True, module=_OneTripDBAPI(aiosqlite, sqlite3)
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, echo=echo, hide_parameters=True, pool_pre_ping=True)


def session_factory(engine: AsyncEngine) -> SessionFactory:
    """Sessions that keep loaded objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(sessions: SessionFactory) -> AsyncIterator[AsyncSession]:
    """One unit of work: commits on success, rolls back on error."""
    async with sessions() as session, session.begin():
        yield session
