"""ASGI middleware: request ids, a cap on request body size and HTTP metrics."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import MEDIA_TYPE, TYPE_PREFIX, internal_error_response
from core.logging import request_id, tenant_id
from core.metrics import HTTP_DURATION, HTTP_REQUESTS

log = logging.getLogger(__name__)
access = logging.getLogger("api.access")
HEADER = b"x-request-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class RequestIdMiddleware:
    """Takes a sane ``X-Request-ID`` from the client or makes one; echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(HEADER, b"").decode("latin-1")
        rid = given if _VALID_ID.match(given) else uuid.uuid4().hex
        token, tenant = request_id.set(rid), tenant_id.set(None)  # the principal sets the tenant

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"].append((HEADER, rid.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
            tenant_id.reset(tenant)


class HttpMetricsMiddleware:
    """Counts and times each HTTP request by its method, the template of the route it matched
    (read from the scope once routing is done; ``none`` when no route matched) and its status
    class; with ``access_log``, also logs one line of them. The raw URL is never logged: it
    can hold a secret (an OAuth code in the query, a signed storage grant in the path)."""

    def __init__(self, app: ASGIApp, *, access_log: bool = False) -> None:
        self.app, self.access_log = app, access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before a response starts

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            took = time.perf_counter() - started
            handler = getattr(scope.get("route"), "path", None) or "none"
            method = scope["method"]
            HTTP_REQUESTS.labels(method, handler, f"{status // 100}xx").inc()
            HTTP_DURATION.labels(method, handler).observe(took)
            if self.access_log:
                access.info("%s %s %d %.1f ms", method, handler, status, took * 1000)


class UnhandledErrorMiddleware:
    """Logs an unexpected exception with its request id and answers a bare 500 problem.

    It sits inside :class:`RequestIdMiddleware`, so the response still carries the id.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:
                raise
            await internal_error_response()(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413, by header or while streaming.

    Paths under ``own_limits`` (signed uploads) enforce their own, larger limits.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, own_limits: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.own_limits = own_limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.own_limits):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        seen = 0

        async def counting_receive() -> Message:
            # A streamed body without Content-Length: the problem handler answers 413.
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._detail)
            return message

        await self.app(scope, counting_receive, send)

    @property
    def _detail(self) -> str:
        return f"The body exceeds {self.max_bytes} bytes."

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {
                "type": TYPE_PREFIX + "payload-too-large",
                "title": "Request body too large",
                "status": 413,
                "detail": self._detail,
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
