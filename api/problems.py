"""RFC 9457 problem details: error classes that carry their status, translated once."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError, RPCStatusCode

from core.errors import Problem
from core.logging import request_id

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:bizosaas:problem:"


def problem_response(
    status: int,
    slug: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {"type": TYPE_PREFIX + slug, "title": title, "status": status, "detail": detail}
    body.update(extra)
    headers = dict(headers or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _slug(status: int) -> str:
    return HTTPStatus(status).phrase.lower().replace(" ", "-").replace("'", "")


async def _on_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(
        exc.status, exc.slug, exc.title, exc.detail, headers=exc.headers, **exc.extra
    )


async def _on_http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if isinstance(exc.detail, str) else phrase
    # Keep the exception's headers: a 405 names the allowed methods in ``Allow``.
    return problem_response(
        exc.status_code, _slug(exc.status_code), phrase, detail, headers=dict(exc.headers or {})
    )


def _printable(part: object) -> str:
    # A field name from the client may hold a lone surrogate, which UTF-8 cannot carry.
    return str(part).encode("utf-8", "backslashreplace").decode()


async def _on_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [_printable(part) for part in error["loc"]],
            "msg": error["msg"],
            "type": error["type"],
        }
        for error in exc.errors()
    ]
    return problem_response(
        422, "validation-error", "Invalid request", "The request has invalid fields.", errors=errors
    )


def internal_error_response() -> JSONResponse:
    """The 500 a client sees: no internals, only the request id to quote."""
    return problem_response(
        500,
        "internal-error",
        "Internal server error",
        f"An unexpected error occurred; quote request id {request_id.get()}.",
    )


# Temporal answers these while it cannot serve (down, overloaded, shedding load).
_TEMPORAL_OUTAGE = frozenset(
    {RPCStatusCode.UNAVAILABLE, RPCStatusCode.RESOURCE_EXHAUSTED, RPCStatusCode.DEADLINE_EXCEEDED}
)


def _unavailable(request: Request, dependency: str) -> JSONResponse:
    seconds = request.app.state.settings.retry_after_seconds
    log.warning("%s unreachable on %s %s", dependency, request.method, request.url.path)
    return problem_response(
        503,
        "service-unavailable",
        "Service unavailable",
        f"The {dependency} is unreachable; try again in {seconds} s.",
        headers={"Retry-After": str(seconds)},
    )


async def _on_temporal_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RPCError)
    if exc.status not in _TEMPORAL_OUTAGE:
        raise exc
    return _unavailable(request, "workflow engine")


async def _on_runtime_error(request: Request, exc: Exception) -> JSONResponse:
    # A lazily connected client that cannot reach Temporal raises a bare RuntimeError.
    if not str(exc).startswith("Failed client connect"):
        raise exc
    return _unavailable(request, "workflow engine")


async def _on_database_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    if not (exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)):
        raise exc
    return _unavailable(request, "database")


async def _on_connection_error(request: Request, exc: Exception) -> JSONResponse:
    # The database or Redis refused the connection before any driver could wrap the error.
    return _unavailable(request, "backing service")


def install(app: FastAPI) -> None:
    """Register the handlers that turn every expected error into problem+json.

    Temporal or the database being unreachable is a 503 with ``Retry-After``, never a 500.
    Unexpected exceptions are answered by :class:`api.middleware.UnhandledErrorMiddleware`.
    """
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(RPCError, _on_temporal_error)
    app.add_exception_handler(RuntimeError, _on_runtime_error)
    app.add_exception_handler(DBAPIError, _on_database_error)
    app.add_exception_handler(ConnectionError, _on_connection_error)
