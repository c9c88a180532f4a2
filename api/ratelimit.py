"""Rate limits on sign-in, sign-up and SSO routes and on live reads through a connection: in
memory, or shared through Redis."""

from __future__ import annotations

from typing import TYPE_CHECKING

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from core.errors import TooManyRequests
from core.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool

# The key of limits that count every client together.
_EVERYONE = "*"


class RateLimits:
    """Named limits checked with a moving window.

    Counters live in Redis (shared by every API process) when ``BIZ_REDIS_URL`` is set,
    else in this process's memory.
    """

    def __init__(self, settings: Settings) -> None:
        self._pool: ConnectionPool | None = None
        if settings.redis_url:
            from redis.asyncio import ConnectionPool  # only when Redis is configured

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
        self._register = (
            parse(settings.register_rate_per_ip),
            parse(settings.register_rate_global),
        )
        self._sso = (parse(settings.sso_rate_per_ip), parse(settings.sso_rate_global))

    async def login_attempt(self, ip: str, account: str) -> None:
        """Count one sign-in attempt against the IP and the account; 429 past either limit."""
        await self._check(
            "login",
            self._login,
            ip,
            account,
            "Too many sign-in attempts; wait a minute and try again.",
        )

    async def reset_request(self, ip: str, account: str) -> None:
        """Count one password-reset request (known e-mail or not); 429 past either limit."""
        await self._check(
            "reset", self._reset, ip, account, "Too many reset requests; try again later."
        )

    async def registration(self, ip: str) -> None:
        """Count one sign-up (password or a new SSO account) per client and for the whole API.

        The global limit bounds how fast tenants (and their workflows) can be created at all,
        whatever the number of clients; 429 past either.
        """
        await self._check(
            "register", self._register, ip, _EVERYONE, "Too many sign-ups; try again later."
        )

    async def sso(self, ip: str) -> None:
        """Count one single sign-on request (redirect or callback); 429 past either limit."""
        await self._check(
            "sso",
            self._sso,
            ip,
            _EVERYONE,
            "Too many single sign-on attempts; wait a minute and try again.",
        )

    async def _check(
        self,
        name: str,
        limits: tuple[RateLimitItem, RateLimitItem],
        ip: str,
        account: str,
        message: str,
    ) -> None:
        per_ip, per_account = limits
        # A client over its own limit is not counted against the account or everyone else.
        for item, scope, key in ((per_ip, "ip", ip), (per_account, "account", account)):
            if not await self._limiter.hit(item, f"{name}-{scope}", key):
                raise TooManyRequests(message, headers={"Retry-After": str(item.get_expiry())})

    async def aclose(self) -> None:
        """Close the Redis connections, if any."""
        if self._pool is not None:
            await self._pool.disconnect()
