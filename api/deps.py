"""Dependencies as types: what a route needs is in its signature."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from api.problems import Forbidden, Unauthorized
from core.db import SessionFactory
from core.security import InvalidToken, Principal, read_access_token
from core.settings import Settings
from models.user import Role


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_sessions(request: Request) -> SessionFactory:
    sessions: SessionFactory = request.app.state.sessions
    return sessions


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request; routes that write commit at their boundary."""
    async with get_sessions(request)() as session:
        yield session


def get_temporal(request: Request) -> Client:
    client: Client = request.app.state.temporal
    return client


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
TemporalDep = Annotated[Client, Depends(get_temporal)]

_bearer = HTTPBearer(auto_error=False)


async def current_principal(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller from a valid bearer access token; 401 otherwise."""
    if credentials is None:
        raise Unauthorized("A bearer access token is required.")
    try:
        return read_access_token(credentials.credentials, settings.jwt_signing_key())
    except InvalidToken as exc:
        raise Unauthorized(str(exc)) from None


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_role(*roles: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that admits only the given roles (403 for the others)."""

    async def check(principal: CurrentPrincipal) -> Principal:
        if principal.role not in roles:
            raise Forbidden(f"This action needs one of the roles: {', '.join(roles)}.")
        return principal

    return check
