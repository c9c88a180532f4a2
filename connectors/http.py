"""What every vendor connector shares: one httpx client, typed errors, bounded reads, SSRF guard.

Errors
------
Every failure a connector reports is a :class:`ConnectorError`:

- :class:`AuthFailed` (401/403): the credentials are wrong, expired or lack a scope.
- :class:`VendorRejected` (other 4xx): the vendor refused the request; ``reason`` is its words.
  :class:`VendorNotFound` is its 404.
- :class:`RateLimited` (429, or a vendor's own throttle signal): ``retry_after`` seconds.
- :class:`VendorUnavailable` (5xx, timeouts, connection errors).
- :class:`SchemaMismatch`: the answer does not have the expected shape; ``field`` names the path.
- :class:`ResponseTooLarge`, :class:`UnsafeURL`, :class:`InvalidCursor`, :class:`Unsupported`.

``retryable`` says whether trying again later can help.

In activities
-------------
An activity lets these errors reach Temporal as ``ApplicationError`` through
:func:`as_application_error` (``raise as_application_error(exc) from exc``):

- ``AuthFailed``, ``VendorRejected``, ``SchemaMismatch`` and the other non-retryable errors
  become ``ApplicationError(non_retryable=True)``: retrying cannot fix credentials, a refused
  payload or a changed API; the workflow decides (mark the connection ``auth_failed``, say).
- ``RateLimited`` becomes a retryable ``ApplicationError`` with ``next_retry_delay`` set from
  ``retry_after``, so the activity's next attempt waits as long as the vendor asked instead of
  the retry policy's backoff.
- ``VendorUnavailable`` is retryable with the policy's backoff (or ``Retry-After`` when a 503
  sent one).

The error ``type`` is the class name, so a retry policy's ``non_retryable_error_types`` and a
workflow's ``except ActivityError`` can tell them apart. Messages never contain credentials.

Tenant-supplied URLs
--------------------
Base URLs come from tenants (their WordPress, their shop), so a connector must not become a way
to reach this deployment's own network. The client from :func:`connector_client` resolves every
host itself and refuses loopback, private, link-local, shared, multicast and reserved addresses
*after* DNS resolution, then connects to the address it checked (a second lookup cannot swap in
another one). Only ``BIZ_CONNECTOR_ALLOW_PRIVATE_URLS`` (tests and local development) lifts this.
"""

from __future__ import annotations

import email.utils
import functools
import ipaddress
import json
import math
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx
import pydantic
from temporalio.exceptions import ApplicationError

#: Default cap on one response body; a connector may lower it. A page of 100 rich posts is
#: ~1-2 MiB; beyond this a vendor is misbehaving or the page size is wrong.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024

#: Explicit timeouts: connecting must be quick; a vendor may take a while to build a big page.
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=5.0)

USER_AGENT = "BizOSaaS-Connector/1"

_REASON_LIMIT = 500


# --- Errors ---------------------------------------------------------------------------------


class ConnectorError(Exception):
    """A vendor call failed; ``retryable`` says whether a later attempt can succeed."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, vendor: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.vendor = vendor
        self.status = status


class AuthFailed(ConnectorError):
    """401/403: wrong, expired or revoked credentials, or a missing scope."""


class VendorRejected(ConnectorError):
    """Another 4xx: the vendor refused this request. ``reason`` is the vendor's explanation and
    ``code`` its machine-readable code when it sends one (``term_exists``, ``INVALID``...)."""

    def __init__(
        self,
        message: str,
        *,
        vendor: str = "",
        status: int | None = None,
        reason: str = "",
        code: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, vendor=vendor, status=status)
        self.reason = reason
        self.code = code
        self.data: Mapping[str, Any] = data or {}


class VendorNotFound(VendorRejected):
    """404: the record (or the API itself, at a wrong base URL) does not exist at the vendor."""


class RateLimited(ConnectorError):
    """429 or a vendor throttle: try again after ``retry_after`` seconds (None: not said).

    ``daily``: the account's allowance for the day is spent; it comes back at midnight in the
    vendor account's time zone, which the caller knows from the connection's account."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        vendor: str = "",
        status: int | None = 429,
        retry_after: float | None = None,
        daily: bool = False,
    ) -> None:
        super().__init__(message, vendor=vendor, status=status)
        self.retry_after = retry_after
        self.daily = daily


class VendorUnavailable(ConnectorError):
    """5xx, a timeout or a network failure; ``retry_after`` when a 503 said how long."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        vendor: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, vendor=vendor, status=status)
        self.retry_after = retry_after


class SchemaMismatch(ConnectorError):
    """The vendor's answer does not have the shape the connector expects; ``field`` is the path
    of the first offending field (``items[3].title.rendered``; ``$`` for the whole body)."""

    def __init__(self, message: str, *, vendor: str = "", field: str = "$") -> None:
        super().__init__(message, vendor=vendor)
        self.field = field


class ResponseTooLarge(ConnectorError):
    """The answer is larger than the connector accepts; it was not read to the end."""

    def __init__(self, message: str, *, vendor: str = "", limit: int = 0) -> None:
        super().__init__(message, vendor=vendor)
        self.limit = limit


class UnsafeURL(ConnectorError):
    """A tenant-supplied URL is malformed or points at an address this service must not call."""


class InvalidCursor(ConnectorError):
    """A listing cursor was not issued by this connector (or was altered)."""


class Unsupported(ConnectorError):
    """The vendor offers no way to do this (the connector's capabilities do not list it)."""


def as_application_error(exc: ConnectorError) -> ApplicationError:
    """The Temporal error an activity raises for ``exc`` (see the module docstring)."""
    delay: float | None = None
    if isinstance(exc, RateLimited | VendorUnavailable):
        delay = exc.retry_after
    return ApplicationError(
        str(exc),
        {"vendor": exc.vendor, "status": exc.status, **_error_details(exc)},
        type=type(exc).__name__,
        non_retryable=not exc.retryable,
        next_retry_delay=None if delay is None else _seconds(delay),
    )


def _error_details(exc: ConnectorError) -> dict[str, Any]:
    if isinstance(exc, VendorRejected):
        return {"reason": exc.reason, "code": exc.code}
    if isinstance(exc, SchemaMismatch):
        return {"field": exc.field}
    if isinstance(exc, RateLimited | VendorUnavailable):
        return {"retry_after": exc.retry_after}
    return {}


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=max(0.0, value))


# --- Responses ------------------------------------------------------------------------------


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait, from ``Retry-After`` (seconds or an HTTP date) or, failing that, the
    common vendor headers (``RateLimit-Reset``, ``X-RateLimit-Reset``: a delay, or an epoch
    timestamp when the number is that large)."""
    now = time.time() if now is None else now
    value = headers.get("retry-after")
    if value is not None:
        seconds = _number(value)
        if seconds is not None:
            return max(0.0, seconds)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return max(0.0, when.timestamp() - now)
    for name in ("ratelimit-reset", "x-ratelimit-reset", "x-rate-limit-reset"):
        raw = headers.get(name)
        seconds = _number(raw) if raw is not None else None
        if seconds is None:
            continue
        # Some vendors send the reset moment as a Unix timestamp rather than a delay.
        return max(0.0, seconds - now) if seconds > 1_000_000_000 else max(0.0, seconds)
    return None


def _number(value: str) -> float | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def error_for_status(
    response: httpx.Response, *, vendor: str, reason: str | None = None, code: str | None = None
) -> ConnectorError | None:
    """The typed error for a non-2xx ``response`` (None for 2xx).

    ``reason``/``code`` are the vendor's explanation when the caller parsed its error body;
    otherwise a bounded excerpt of the body is used, so the message stays readable and short.
    Connectors follow no redirects (one could lead to an internal address), so a 3xx is a
    :class:`VendorRejected` naming where it points: the base URL needs correcting.
    """
    status = response.status_code
    if status < 300:
        return None
    if status < 400:
        location = response.headers.get("location", "")
        return VendorRejected(
            f"{vendor} redirects to {location[:200]!r}; use that address as the base URL",
            vendor=vendor,
            status=status,
            reason="redirected",
            code="redirect",
        )
    if reason is None:
        reason = _excerpt(response)
    where = f"{vendor} answered {status}"
    message = f"{where}: {reason}" if reason else where
    if status in (401, 403):
        return AuthFailed(message, vendor=vendor, status=status)
    if status == 429:
        return RateLimited(
            message, vendor=vendor, status=status, retry_after=parse_retry_after(response.headers)
        )
    if status >= 500:
        return VendorUnavailable(
            message,
            vendor=vendor,
            status=status,
            retry_after=parse_retry_after(response.headers),
        )
    rejected = VendorNotFound if status == 404 else VendorRejected
    return rejected(message, vendor=vendor, status=status, reason=reason or "", code=code)


def raise_for_status(
    response: httpx.Response, *, vendor: str, reason: str | None = None, code: str | None = None
) -> None:
    """Raise :func:`error_for_status`'s error when there is one."""
    error = error_for_status(response, vendor=vendor, reason=reason, code=code)
    if error is not None:
        raise error


def _excerpt(response: httpx.Response) -> str:
    try:
        text = response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return ""
    text = " ".join(text.split())
    return text[:_REASON_LIMIT]


def json_body(response: httpx.Response, *, vendor: str) -> Any:
    """The response's JSON; a body that is not JSON is a :class:`SchemaMismatch` at ``$``."""
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SchemaMismatch(
            f"{vendor} answered {response.status_code} with a body that is not JSON",
            vendor=vendor,
        ) from exc


M = TypeVar("M", bound=pydantic.BaseModel)


def parse_as(model: type[M], data: Any, *, vendor: str, path: str = "$") -> M:
    """Validate vendor data into ``model``; a mismatch names the first bad field's path."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = field_path(path, first["loc"])
        raise SchemaMismatch(
            f"{vendor} sent an unexpected {model.__name__}: {field}: {first['msg']}",
            vendor=vendor,
            field=field,
        ) from None


def parse_list(model: type[M], data: Any, *, vendor: str, path: str = "$") -> list[M]:
    """Validate a JSON array of ``model``; a mismatch names the item (``$[3].title``)."""
    if not isinstance(data, list):
        raise SchemaMismatch(
            f"{vendor} sent {type(data).__name__} instead of a list", vendor=vendor, field=path
        )
    return [
        parse_as(model, item, vendor=vendor, path=f"{path}[{index}]")
        for index, item in enumerate(data)
    ]


class Unreadable(pydantic.BaseModel):
    """A record of a listing that did not parse: its vendor id (``""`` when it has none that
    reads) and why, as a field path and an error type: never the record's values."""

    source_id: str
    reason: str


def parse_records(
    model: type[M], data: Any, *, vendor: str, path: str = "$", id_key: str = "id"
) -> tuple[list[M], list[Unreadable]]:
    """Validate a JSON array of ``model`` record by record, for listings a sync reads: the
    records that parse, and the others as :class:`Unreadable` (one bad record does not hide a
    page of good ones). A body that is not a list, or a page where not one record parses (the
    API changed shape), is still a :class:`SchemaMismatch` naming the first bad field."""
    if not isinstance(data, list):
        raise SchemaMismatch(
            f"{vendor} sent {type(data).__name__} instead of a list", vendor=vendor, field=path
        )
    parsed: list[M] = []
    unreadable: list[Unreadable] = []
    for item in data:
        try:
            parsed.append(model.model_validate(item))
        except pydantic.ValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            raw_id = item.get(id_key) if isinstance(item, dict) else None
            source_id = str(raw_id)[:100] if isinstance(raw_id, str | int) else ""
            where = field_path("", first["loc"]).lstrip(".") or "$"
            unreadable.append(Unreadable(source_id=source_id, reason=f"{where}: {first['type']}"))
    if data and not parsed:
        # Not one record reads: the vendor's API changed shape, which no skipping can fix.
        parse_as(model, data[0], vendor=vendor, path=f"{path}[0]")
    return parsed, unreadable


def field_path(prefix: str, loc: Sequence[int | str]) -> str:
    """``("items", 3, "title")`` under ``$`` becomes ``$.items[3].title``."""
    parts = [prefix]
    for item in loc:
        parts.append(f"[{item}]" if isinstance(item, int) else f".{item}")
    return "".join(parts)


async def send(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    vendor: str,
    max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> httpx.Response:
    """Send ``request`` and read its body, at most ``max_bytes`` of it.

    Network failures and timeouts become :class:`VendorUnavailable`; a body larger than the
    limit (announced by ``Content-Length`` or found while reading) :class:`ResponseTooLarge`,
    without buffering the rest. The status is not checked: see :func:`raise_for_status`.
    """
    try:
        response = await client.send(request, stream=True)
    except httpx.TimeoutException as exc:
        raise VendorUnavailable(
            f"{vendor} did not answer in time ({type(exc).__name__})", vendor=vendor
        ) from exc
    except httpx.TransportError as exc:
        raise VendorUnavailable(
            f"{vendor} is unreachable ({type(exc).__name__})", vendor=vendor
        ) from exc
    try:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise _too_large(vendor, max_bytes)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(vendor, max_bytes)
            chunks.append(chunk)
    except httpx.TimeoutException as exc:
        raise VendorUnavailable(f"{vendor} stopped sending its answer", vendor=vendor) from exc
    except httpx.TransportError as exc:
        raise VendorUnavailable(f"{vendor} broke off its answer", vendor=vendor) from exc
    finally:
        await response.aclose()
    # A response built from the bytes read, so .content/.json()/.text work as usual.
    return httpx.Response(
        response.status_code,
        headers=_decoded_headers(response.headers),
        content=b"".join(chunks),
        request=request,
    )


def _decoded_headers(headers: httpx.Headers) -> list[tuple[str, str]]:
    # aiter_bytes already undid the content encoding; keeping the header would decode twice.
    return [(k, v) for k, v in headers.multi_items() if k.lower() != "content-encoding"]


def _too_large(vendor: str, limit: int) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"{vendor} sent more than {limit} bytes in one answer; ask for smaller pages",
        vendor=vendor,
        limit=limit,
    )


# --- Tenant-supplied URLs -------------------------------------------------------------------


def blocked_reason(address: str) -> str | None:
    """Why ``address`` (an IP literal) must not be called, or None when it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4 carried inside IPv6 reaches the IPv4 host: judge that one.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return blocked_reason(str(embedded))
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private or not ip.is_global:
        return "private"
    return None


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def check_base_url(url: str, *, allow_private: bool) -> str:
    """Validate a tenant-supplied base URL's form; return it without a trailing slash.

    https only (credentials travel with every call); plain http and literal private addresses
    only when private URLs are allowed. Host names are checked again, after resolution, by the
    client's transport on every connection.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        raise UnsafeURL(f"not a valid URL: {url!r}") from exc
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UnsafeURL(f"not an http(s) URL: {url!r}")
    if parts.username or parts.password:
        raise UnsafeURL("a base URL must not carry credentials")
    if parts.query or parts.fragment:
        raise UnsafeURL("a base URL must not have a query or fragment")
    if not allow_private:
        if parts.scheme != "https":
            raise UnsafeURL(f"only https URLs are allowed: {url!r}")
        try:
            reason = blocked_reason(parts.hostname)
        except ValueError:
            reason = None  # a host name: checked after resolution
        if reason is not None or parts.hostname.lower().rstrip(".") == "localhost":
            raise UnsafeURL(f"{parts.hostname} is a {reason or 'loopback'} address")
    return url.rstrip("/")


def base_url_form(value: str) -> str:
    """A settings-model validator: :func:`check_base_url`'s form checks as a ``ValueError``
    (so pydantic reports it). Whether the address may be called is decided when connecting."""
    try:
        return check_base_url(value, allow_private=True)
    except UnsafeURL as exc:
        raise ValueError(exc.message) from None


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves the host itself, refuses non-public addresses, connects to a checked one."""

    def __init__(
        self, inner: httpcore.AsyncNetworkBackend, policy: Callable[[str], str | None]
    ) -> None:
        self._inner = inner
        self._policy = policy

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port, timeout)
        refused = [(a, r) for a in addresses if (r := self._policy(a)) is not None]
        if refused:
            # One bad answer is enough: a name that resolves to an internal address at all
            # is either misconfigured or an attempt to reach one.
            address, reason = refused[0]
            raise UnsafeURL(f"{host} resolves to a {reason} address ({address}); refused")
        last: Exception | None = None
        for address in addresses:
            try:
                # TLS still verifies (and sends SNI for) the original host name: httpcore
                # starts TLS with the origin's host, not with this address.
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def _resolve(self, host: str, port: int, limit: float | None) -> list[str]:
        try:
            with anyio.fail_after(limit):
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        seen: dict[str, None] = {}
        for _family, _type, _proto, _name, sockaddr in infos:
            seen.setdefault(str(sockaddr[0]), None)
        if not seen:
            raise httpcore.ConnectError(f"{host} has no address")
        return list(seen)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UnsafeURL("unix sockets are not reachable through connectors")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(
        self,
        *,
        limits: httpx.Limits,
        policy: Callable[[str], str | None],
        ssl_context: ssl.SSLContext,
    ) -> None:
        super().__init__(trust_env=False, limits=limits)
        # The same pool httpx builds, with the guarded network backend (httpx has no public
        # parameter for it); env proxies are off so every connection passes the guard.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(httpcore.AnyIOBackend(), policy),
        )


@functools.cache
def _public_cas() -> ssl.SSLContext:
    """certifi's public CAs as a TLS context, built once per process: building one reads the
    whole bundle (about 28 ms), and a context serves any number of clients and connections."""
    return httpx.create_ssl_context(trust_env=False)


def connector_client(
    *,
    allow_private: bool,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    limits: httpx.Limits | None = None,
    address_policy: Callable[[str], str | None] = blocked_reason,
    ssl_context: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """The one HTTP client connectors use: explicit timeouts, no redirects followed (a
    redirect could lead to an internal address or drop the method), no environment proxies,
    and, unless ``allow_private`` (``BIZ_CONNECTOR_ALLOW_PRIVATE_URLS``), the SSRF guard on
    every connection. Close it with ``aclose()`` (or use it as an async context manager).

    ``address_policy`` says why an address is refused (None: allowed); it is
    :func:`blocked_reason` except in tests of the guard itself. ``ssl_context`` replaces the
    default trust store (certifi's public CAs), for a private CA."""
    limits = limits or httpx.Limits(max_connections=20, max_keepalive_connections=10)
    context = ssl_context or _public_cas()
    transport: httpx.AsyncBaseTransport = (
        httpx.AsyncHTTPTransport(verify=context, trust_env=False, limits=limits)
        if allow_private
        else _GuardedTransport(limits=limits, policy=address_policy, ssl_context=context)
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": USER_AGENT},
    )


def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (naive values are taken as UTC, as vendors mean)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
