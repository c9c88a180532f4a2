"""Pacing: a connection's calls to its vendor spaced to the connection's rate limit, shared by
every workflow, activity and live read that uses the connection, in every API and worker
process.

The algorithm is GCRA (the generic cell rate algorithm: a token bucket kept as one number per
connection, its *theoretical arrival time*) without a burst allowance: with ``requests`` per
``per_seconds``, calls go ``T = per_seconds / requests`` apart, so no window of
``per_seconds`` ever holds more than the limit (a burst on top of the rate would break a
vendor's rolling window, as HubSpot's ten seconds). A call at ``now`` reserves
``max(TAT, now) + T`` and goes at ``max(TAT, now)``; reserving is one atomic
``UPDATE ... RETURNING`` of the ``connection_pacing`` row, so concurrent callers in any process
queue up in the order they reserved and none waits on another's lock.

Vendors' own signals (429 with ``Retry-After``, HubSpot's interval headers) still apply on top:
pacing keeps a connection under its limit, the connectors' error handling copes when it is not.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from sqlalchemy import case, insert, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from connectors.http import RateLimited
from connectors.registry import RateLimit
from models.connection import ConnectionPacing


class Pacer(Protocol):
    async def wait(
        self, connection_id: uuid.UUID, limit: RateLimit, max_wait: float | None = None
    ) -> float:
        """Wait for the connection's next slot; how long it waited (seconds). A slot further
        off than ``max_wait`` is :class:`~connectors.http.RateLimited` instead (a person
        waiting on a live read is told to retry rather than held behind a sync)."""
        ...


class DatabasePacer:
    """:class:`Pacer` over the ``connection_pacing`` table (any process sharing the database
    shares the limit). ``sessions`` opens the session it writes with; ``clock`` and ``sleep``
    are the wall clock and ``asyncio.sleep``.

    A busy process reserves ``block`` slots in one write, or ``span`` seconds' worth where
    that is more (a tenth of the limit at most), and hands them out in order: the database is
    written once per block, not per call. A
    slot left unused past its time is dropped (its share of the limit is not spent late, in a
    burst). Keep one pacer per process: the slots it holds are its own."""

    def __init__(
        self,
        sessions: Callable[[], AbstractAsyncContextManager[AsyncSession]],
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        block: int = 64,
        span: float = 0.05,
    ) -> None:
        self._session = sessions
        self._clock = clock
        self._sleep = sleep
        self._block = block
        # At least ``span`` seconds of slots per block: under a very high limit, 64 slots last
        # under a millisecond, and a process below the limit would write for nearly every call.
        self._span = span
        # Per connection: the reserved slots' times (from which each may go).
        self._held: dict[uuid.UUID, deque[float]] = defaultdict(deque)
        self._locks: dict[uuid.UUID, asyncio.Lock] = defaultdict(asyncio.Lock)

    @classmethod
    def lent(cls, session: AsyncSession) -> DatabasePacer:
        """A pacer writing with a request's own session rather than taking a second
        connection while the request holds one (it commits the session: use it in reads)."""

        @asynccontextmanager
        async def borrowed() -> AsyncIterator[AsyncSession]:
            yield session

        return cls(borrowed, block=1, span=0)

    async def wait(
        self, connection_id: uuid.UUID, limit: RateLimit, max_wait: float | None = None
    ) -> float:
        delay = await self.reserve(connection_id, limit)
        if max_wait is not None and delay > max_wait:
            raise RateLimited(
                "This connection's rate limit is taken up for now; try again shortly.",
                retry_after=delay,
            )
        if delay > 0:
            await self._sleep(delay)
        return delay

    async def reserve(self, connection_id: uuid.UUID, limit: RateLimit) -> float:
        """Take the connection's next slot; the delay until it (0: go now)."""
        async with self._locks[connection_id]:
            now = self._clock()
            held = self._held[connection_id]
            # Slots gone by unused: that time has passed, and spent now they would add a burst
            # to the vendor's window (its 429s cost far more than the slots).
            while held and held[0] < now:
                held.popleft()
            if not held:
                held.extend(await self._slots(connection_id, limit, now))
            return max(0.0, held.popleft() - now)

    async def _slots(self, connection_id: uuid.UUID, limit: RateLimit, now: float) -> list[float]:
        """Reserve a block of slots: the times from which each may go."""
        spacing = limit.per_seconds / limit.requests
        wanted = max(self._block, math.ceil(self._span / spacing))
        count = max(1, min(wanted, limit.requests // 10))
        arrival = await self._advance(connection_id, now, spacing * count)
        first = arrival - count * spacing  # max(TAT, now) before this reservation
        return [first + index * spacing for index in range(count)]

    async def _advance(self, connection_id: uuid.UUID, now: float, spacing: float) -> float:
        """The new theoretical arrival time, ``max(TAT, now) + spacing``, stored atomically."""
        row = ConnectionPacing.__table__.c
        advance = (
            update(ConnectionPacing)
            .where(row.connection_id == connection_id)
            .values(arrival=case((row.arrival > now, row.arrival), else_=now) + spacing)
            .returning(row.arrival)
        )
        for _ in range(2):
            async with self._session() as session:
                # A read under way ends first: SQLite cannot turn it into a write after others.
                await session.commit()
                try:
                    if session.get_bind().dialect.name == "postgresql":
                        # A pacing row lost in a crash costs a burst, not data: no fsync wait.
                        await session.execute(text("SET LOCAL synchronous_commit = off"))
                    arrival = await session.scalar(advance)
                    if arrival is None:  # the connection's first paced call
                        arrival = now + spacing
                        await session.execute(
                            insert(ConnectionPacing).values(
                                connection_id=connection_id, arrival=arrival
                            )
                        )
                    await session.commit()
                except IntegrityError:
                    await session.rollback()
                    continue  # another caller inserted it first: advance that row
                except BaseException:
                    await session.rollback()
                    raise
                return float(arrival)
        raise RuntimeError("the pacing row could be neither advanced nor created")
