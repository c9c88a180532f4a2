"""RFC 9457 problem details: error classes that carry their status, translated once."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import Problem
from core.logging import request_id

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:bizosaas:problem:"


def problem_response(status: int, slug: str, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": TYPE_PREFIX + slug, "title": title, "status": status, "detail": detail}
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _slug(status: int) -> str:
    return HTTPStatus(status).phrase.lower().replace(" ", "-").replace("'", "")


async def _on_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(exc.status, exc.slug, exc.title, exc.detail, **exc.extra)


async def _on_http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if isinstance(exc.detail, str) else phrase
    return problem_response(exc.status_code, _slug(exc.status_code), phrase, detail)


async def _on_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": [str(part) for part in error["loc"]], "msg": error["msg"], "type": error["type"]}
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


def install(app: FastAPI) -> None:
    """Register the handlers that turn every expected error into problem+json.

    Unexpected exceptions are answered by :class:`api.middleware.UnhandledErrorMiddleware`.
    """
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(RequestValidationError, _on_validation)
