"""Rate limits on sign-in routes: in memory by default, shared through Redis when configured."""

from __future__ import annotations

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from redis.asyncio import ConnectionPool

from core.errors import TooManyRequests
from core.settings import Settings


class RateLimits:
    """Named limits checked with a moving window.

    Counters live in Redis (shared by every API process) when ``BIZ_REDIS_URL`` is set,
    else in this process's memory.
    """

    def __init__(self, settings: Settings) -> None:
        self._pool: ConnectionPool | None = None
        if settings.redis_url:
            self._pool = ConnectionPool.from_url(settings.redis_url)
            url = settings.redis_url.replace("redis://", "async+redis://", 1)
            # limits hands the pool to redis-py (its type hints for options are too narrow).
            storage = storage_from_string(
                url,
                implementation="redispy",
                connection_pool=self._pool,  # type: ignore[arg-type]
            )
        else:
            storage = storage_from_string("async+memory://")
        assert isinstance(storage, Storage)
        self._limiter = MovingWindowRateLimiter(storage)
        self._login = (parse(settings.login_rate_per_ip), parse(settings.login_rate_per_account))
        self._reset = (parse(settings.reset_rate_per_ip), parse(settings.reset_rate_per_account))

    async def login_attempt(self, ip: str, account: str) -> None:
        """Count one sign-in attempt against the IP and the account; 429 past either limit."""
        if not await self._hit("login", self._login, ip, account):
            raise TooManyRequests("Too many sign-in attempts; wait a minute and try again.")

    async def reset_request(self, ip: str, account: str) -> None:
        """Count one password-reset request (known e-mail or not); 429 past either limit."""
        if not await self._hit("reset", self._reset, ip, account):
            raise TooManyRequests("Too many reset requests; try again later.")

    async def _hit(
        self, name: str, limits: tuple[RateLimitItem, RateLimitItem], ip: str, account: str
    ) -> bool:
        per_ip, per_account = limits
        by_ip = await self._limiter.hit(per_ip, f"{name}-ip", ip)
        by_account = await self._limiter.hit(per_account, f"{name}-account", account)
        return by_ip and by_account

    async def aclose(self) -> None:
        """Close the Redis connections, if any."""
        if self._pool is not None:
            await self._pool.disconnect()
