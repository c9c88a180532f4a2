"""Rate-limit storage: in memory by default, shared through the real Redis when configured."""

from __future__ import annotations

import os
import uuid

import pytest
import redis.asyncio as aioredis

from api.ratelimit import RateLimits
from core.errors import TooManyRequests
from core.settings import Settings

REDIS_URL = os.environ.get("BIZ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _redis_or_skip() -> None:
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except OSError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_URL} is required in CI: {exc}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    finally:
        await client.aclose()


async def _exhaust(limits: RateLimits, account: str) -> None:
    for _ in range(2):
        await limits.login_attempt("10.0.0.1", account)
    with pytest.raises(TooManyRequests):
        await limits.login_attempt("10.0.0.1", account)


async def test_memory_limits_per_account(settings: Settings) -> None:
    strict = settings.model_copy(update={"login_rate_per_account": "2/minute"})
    await _exhaust(RateLimits(strict), f"{uuid.uuid4()}@example.com")


async def test_redis_counts_are_shared_between_processes(settings: Settings) -> None:
    await _redis_or_skip()
    strict = settings.model_copy(
        update={"login_rate_per_account": "2/minute", "redis_url": REDIS_URL}
    )
    account = f"{uuid.uuid4()}@example.com"
    # Two limiters on separate connections stand for two API processes.
    first, second = RateLimits(strict), RateLimits(strict)
    try:
        await first.login_attempt("10.0.0.1", account)
        await second.login_attempt("10.0.0.2", account)
        with pytest.raises(TooManyRequests):
            await first.login_attempt("10.0.0.3", account)
    finally:
        await first.aclose()
        await second.aclose()
