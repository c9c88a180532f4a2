"""Pacing against the real database, on a clock the test moves: calls spaced to the limit
(never more than the limit in any window), shared by two pacers as by two processes."""

from __future__ import annotations

import pytest

from connectors.pacing import DatabasePacer
from connectors.registry import RateLimit
from core.db import SessionFactory
from core.settings import Settings
from tests.factories import hubspot_connection, member

LIMIT = RateLimit(requests=5, per_seconds=1)


async def test_calls_are_spaced_to_the_limit_shared_by_every_process(
    sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    connection_id = await hubspot_connection(sessions, settings, admin.tenant_id)
    now = [1_000_000.0]
    api = DatabasePacer(sessions, clock=lambda: now[0])
    worker = DatabasePacer(sessions, clock=lambda: now[0])

    delays = [await (api, worker)[i % 2].reserve(connection_id, LIMIT) for i in range(8)]
    # One every 0.2 s, whoever asks: no second holds more than five.
    assert delays == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4])

    now[0] += 0.5  # half a second on: the queue has moved up by that much
    assert await worker.reserve(connection_id, LIMIT) == pytest.approx(1.1)
    now[0] += 10  # an idle connection: the next call goes at once
    assert await api.reserve(connection_id, LIMIT) == 0

    other = await hubspot_connection(sessions, settings, admin.tenant_id)
    assert await api.reserve(other, LIMIT) == 0  # each connection has its own limit


async def test_waiting_sleeps_the_delay(sessions: SessionFactory, settings: Settings) -> None:
    admin = await member(sessions, settings)
    connection_id = await hubspot_connection(sessions, settings, admin.tenant_id)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    pacer = DatabasePacer(sessions, clock=lambda: 5_000.0, sleep=sleep)
    one_a_second = RateLimit(requests=1, per_seconds=1)
    waited = [await pacer.wait(connection_id, one_a_second) for _ in range(3)]
    assert waited == pytest.approx([0, 1, 2])
    assert slept == pytest.approx([1, 2])


async def test_a_busy_process_reserves_slots_in_blocks(
    sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    connection_id = await hubspot_connection(sessions, settings, admin.tenant_id)
    now = [2_000_000.0]
    busy = DatabasePacer(sessions, clock=lambda: now[0])
    other = DatabasePacer(sessions, clock=lambda: now[0])
    fast = RateLimit(requests=100, per_seconds=1)

    delays = [await busy.reserve(connection_id, fast) for _ in range(101)]
    assert delays == pytest.approx([n * 0.01 for n in range(101)])
    # Eleven blocks of ten (a tenth of the limit): the slots it holds count for everyone.
    assert await other.reserve(connection_id, fast) == pytest.approx(1.10)
    now[0] += 5  # a held slot unused for a whole window is dropped, not spent in a burst
    assert await busy.reserve(connection_id, fast) == pytest.approx(0, abs=1e-6)


async def test_slots_gone_by_unused_are_not_spent_in_a_burst(
    sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    connection_id = await hubspot_connection(sessions, settings, admin.tenant_id)
    now = [3_000_000.0]
    pacer = DatabasePacer(sessions, clock=lambda: now[0])
    fast = RateLimit(requests=100, per_seconds=1)  # blocks of ten slots, 10 ms apart

    assert await pacer.reserve(connection_id, fast) == 0
    now[0] += 0.05  # a pause (a page ends, the next starts): five slots went by unused
    delays = [await pacer.reserve(connection_id, fast) for _ in range(3)]
    # One goes at once; the rest keep the spacing, as if the pause had not been reserved.
    assert delays == pytest.approx([0, 0.01, 0.02], abs=1e-6)


async def test_under_a_very_high_limit_a_block_lasts_a_while(
    sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    connection_id = await hubspot_connection(sessions, settings, admin.tenant_id)
    now = [4_000_000.0]
    busy = DatabasePacer(sessions, clock=lambda: now[0])
    other = DatabasePacer(sessions, clock=lambda: now[0])
    high = RateLimit(requests=100_000, per_seconds=1)  # 64 slots would last 0.64 ms

    assert await busy.reserve(connection_id, high) == 0
    now[0] += 0.001
    assert await busy.reserve(connection_id, high) == 0  # from the block it holds: no write
    # The block covers 50 ms of the limit: another process's calls come after it.
    assert await other.reserve(connection_id, high) == pytest.approx(0.049, abs=1e-6)
