"""Every dependency of every route is a coroutine: FastAPI runs a plain ``def`` dependency in
its thread pool, a thread hand-off and back on each request that uses it."""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from api.app import create_app
from core.settings import Settings


def _blocking(dependant: Dependant) -> set[str]:
    """The dependencies under ``dependant`` that FastAPI would run in its thread pool."""
    found: set[str] = set()
    for sub in dependant.dependencies:
        call: Any = sub.call
        function = call if inspect.isroutine(call) else type(call).__call__
        if not (inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)):
            found.add(getattr(call, "__qualname__", repr(call)))
        found |= _blocking(sub)
    return found


def test_no_route_waits_on_the_thread_pool_for_a_dependency(
    settings: Settings, temporal_client: Client, engine: AsyncEngine
) -> None:
    app: FastAPI = create_app(settings, temporal_client, engine)
    routes = [
        route
        for route in iter_route_contexts(app.routes)
        if isinstance(route.original_route, APIRoute)
    ]
    assert len(routes) > 40
    blocking = {name for route in routes for name in _blocking(route.dependant)}
    assert blocking == set()
