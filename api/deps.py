"""Dependencies as types: what a route needs is in its signature."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from connectors.storage import ObjectStorage
from core.db import SessionFactory
from core.errors import Forbidden, MfaEnrolmentRequired, Unauthorized
from core.identity import live_session
from core.security import InvalidToken, Principal, read_access_token
from core.settings import Settings
from models.user import Membership, Role, User


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


def get_storage(request: Request) -> ObjectStorage:
    storage: ObjectStorage = request.app.state.storage
    return storage


StorageDep = Annotated[ObjectStorage, Depends(get_storage)]

bearer = HTTPBearer(auto_error=False)


async def current_principal(
    settings: SettingsDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller from a valid bearer access token of a live session; 401 otherwise.

    The session and the role are checked on every request, so logout, revocation and role
    changes take effect at once.
    """
    if credentials is None:
        raise Unauthorized("A bearer access token is required.")
    try:
        principal = read_access_token(credentials.credentials, settings.jwt_signing_key())
    except InvalidToken as exc:
        raise Unauthorized(str(exc)) from None
    auth = await live_session(session, principal.session_id)
    if auth is None or (auth.user_id, auth.tenant_id) != (principal.user_id, principal.tenant_id):
        raise Unauthorized("The session has ended; sign in again.")
    role = await session.scalar(
        select(Membership.role).where(
            Membership.user_id == principal.user_id, Membership.tenant_id == principal.tenant_id
        )
    )
    if role != principal.role:
        # A role change takes effect at once: the client refreshes to get the new role.
        raise Unauthorized("Your access has changed; refresh the token or sign in again.")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_role(*roles: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that admits only the given roles (403 for the others)."""

    async def check(principal: CurrentPrincipal) -> Principal:
        if principal.role not in roles:
            raise Forbidden(f"This action needs one of the roles: {', '.join(roles)}.")
        return principal

    return check


async def require_mfa(principal: CurrentPrincipal, session: SessionDep) -> Principal:
    """Step-up: the caller must have TOTP enabled (approvers deciding, for one)."""
    user = await session.get(User, principal.user_id)
    if user is None or not user.mfa_enabled:
        raise MfaEnrolmentRequired("Enable two-factor authentication to perform this action.")
    return principal


MfaPrincipal = Annotated[Principal, Depends(require_mfa)]
