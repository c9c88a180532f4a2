"""The OpenAPI document as the contract: every error a route can answer, as problem+json.

FastAPI documents a route's success and a ``HTTPValidationError`` 422 that this API never sends.
:func:`install` post-processes the generated document once, over the app's routes:

- the problem schema (RFC 9457, with ``errors`` for field problems) is declared once;
- each operation gets the statuses it can really answer, derived from what it depends on (a
  bearer token: 401; a role or MFA check: 403; the database or Temporal: 503; Temporal: 504; a
  rate limit: 429; a body: 400, 422; any request: 413; path parameters: 404) and from the
  problem classes its endpoint and dependencies reach (``raise NotFound(...)`` in a helper it
  calls: 404);
- error responses a route declares itself (``responses={409: {...}}``) get the problem schema.

Routes therefore change little: only a status that no dependency or problem class reveals needs
a ``responses=`` entry on the route.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute

from api import deps
from api.problems import MEDIA_TYPE
from api.ratelimit import RateLimits
from core.errors import Problem

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; further members may carry context.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "urn:bizosaas:problem:<slug>"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "Field problems (validation errors).",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {"type": "array", "items": {"type": "string"}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
    "additionalProperties": True,
}

_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "Bearer; on a step-up challenge, RFC 9470's "
            "insufficient_user_authentication with max_age.",
            "schema": {"type": "string"},
        }
    },
    429: {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}},
    503: {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}},
}

# Module prefixes whose functions are followed when looking for the problems a route reaches.
_OWN = ("api.", "core.", "connectors.", "models.")
_DEPTH = 4


def _problem_classes() -> dict[str, type[Problem]]:
    found: dict[str, type[Problem]] = {}
    pending: list[type[Problem]] = [Problem]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    # The base class is named in type checks (``isinstance(outcome, Problem)``), never raised.
    del found[Problem.__name__]
    return found


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _own(obj: object) -> bool:
    module = getattr(obj, "__module__", None)
    return isinstance(module, str) and module.startswith(_OWN)


def _reached(fn: Callable[..., Any], classes: dict[str, type[Problem]]) -> set[int]:
    """Statuses of the problem classes named by ``fn`` and the project functions it calls."""
    statuses: set[int] = set()
    seen: set[int] = set()
    pending: list[tuple[Any, int]] = [(fn, 0)]
    while pending:
        obj, depth = pending.pop()
        target = inspect.unwrap(getattr(obj, "__func__", obj))
        code = getattr(target, "__code__", None)
        if code is None or id(code) in seen:
            continue
        seen.add(id(code))
        names = {name for c in _codes(code) for name in c.co_names}
        statuses |= {classes[name].status for name in names if name in classes}
        if depth >= _DEPTH:
            continue
        scope: dict[str, Any] = getattr(target, "__globals__", {})
        modules = [value for value in scope.values() if isinstance(value, types.ModuleType)]
        for name in names:
            candidates = [scope.get(name)] + [getattr(m, name, None) for m in modules]
            for candidate in candidates:
                if candidate is None or isinstance(candidate, types.ModuleType):
                    continue
                if not _own(candidate):
                    continue
                if isinstance(candidate, type):
                    # A class the code builds or calls (a dependency's helper object): its
                    # methods may raise on the route's behalf.
                    if not issubclass(candidate, Problem | BaseException):
                        pending.extend(
                            (member, depth + 1)
                            for member in vars(candidate).values()
                            if inspect.isfunction(member)
                        )
                elif callable(candidate):
                    pending.append((candidate, depth + 1))
    return statuses


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _dependants(sub)


def route_statuses(route: Any, classes: dict[str, type[Problem]] | None = None) -> set[int]:
    """Every error status ``route`` can answer, from its dependencies and the problems it
    reaches."""
    classes = classes if classes is not None else _problem_classes()
    statuses: set[int] = set()
    calls = [d.call for d in _dependants(route.dependant) if d.call is not None]
    for call in calls:
        if call is deps.current_principal:
            statuses.add(401)
        if call is deps.get_session or call is deps.get_sessions:
            statuses.add(503)
        if call is deps.get_temporal:
            statuses |= {503, 504}
        if _returns(call, RateLimits):
            statuses.add(429)
        statuses |= _reached(call, classes)
    if route.body_field is not None:
        statuses |= {400, 422}
    # The body cap (api/middleware.BodyLimitMiddleware) answers any request, a GET too.
    statuses.add(413)
    if route.dependant.path_params:
        statuses |= {404, 422}
    if route.dependant.query_params or route.dependant.header_params:
        statuses.add(422)
    return {status for status in statuses if status >= 400}


def _returns(call: Callable[..., Any], kind: type) -> bool:
    try:
        hints = inspect.get_annotations(call, eval_str=True)
    except (NameError, TypeError):
        return False
    return hints.get("return") is kind


def _problem_response(status: int, description: str | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description or HTTPStatus(status).phrase,
        "content": {MEDIA_TYPE: {"schema": PROBLEM_REF}},
    }
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response


def _operations(document: dict[str, Any], route: Any) -> Iterable[dict[str, Any]]:
    item = document.get("paths", {}).get(route.path_format, {})
    for method in route.methods or ():
        operation = item.get(method.lower())
        if operation is not None:
            yield operation


def api_routes(routes: Sequence[BaseRoute]) -> Iterator[Any]:
    """Every API route as served: full path, and the dependencies of the app and its routers."""
    for context in iter_route_contexts(routes):
        if isinstance(context.original_route, APIRoute):
            yield context


def document_errors(document: dict[str, Any], routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """Attach the problem responses to every operation of ``routes`` in ``document``."""
    classes = _problem_classes()
    document.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    for route in api_routes(routes):
        if not route.include_in_schema:
            continue
        statuses = route_statuses(route, classes)
        for operation in _operations(document, route):
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for code, declared in list(responses.items()):
                if not code.isdigit() or int(code) < 400:
                    continue
                content = declared.get("content", {})
                if code == "422" or not content or MEDIA_TYPE in content:
                    # FastAPI's HTTPValidationError, or an entry with no body of its own: the
                    # body is a problem; the route's description stays.
                    responses[code] = _problem_response(int(code), declared.get("description"))
            for status in sorted(statuses):
                responses.setdefault(str(status), _problem_response(status))
    schemas = document["components"]["schemas"]
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json``) declare every error response."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(generate(), app.routes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
