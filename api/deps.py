"""Dependencies as types: what a route needs is in its signature."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from temporalio.client import Client

from connectors.storage import ObjectStorage
from core import logging as log_context
from core.db import SessionFactory
from core.errors import Forbidden, MfaEnrolmentRequired, MfaStepUpRequired, Unauthorized
from core.identity import live_session_and_role
from core.security import InvalidToken, Principal, read_access_token
from core.settings import Settings
from models.base import utcnow
from models.identity import AuthSession
from models.user import Role, User

# No body of this API nests deeper; deeper documents only cost (and overflow serializers).
MAX_JSON_DEPTH = 32
_UNSAFE = re.compile("[\x00\ud800-\udfff]")


class _NotJson(str):
    """``NaN``, ``Infinity`` or ``-Infinity``: Python's parser accepts them, JSON does not."""


def _printable(loc: list[str]) -> list[str]:
    return [part.encode("utf-8", "backslashreplace").decode() for part in loc]


def json_body_problems(document: Any) -> Iterator[dict[str, Any]]:
    """Field errors for what no JSON body may hold: nesting deeper than ``MAX_JSON_DEPTH``,
    ``NaN`` and infinities (not JSON at all), and strings (keys included) with NUL characters or
    lone surrogates.

    JSON can spell both (``"\\u0000"``, ``"\\ud800"``), but neither can be encoded as UTF-8
    for a workflow payload, nor stored by PostgreSQL. Walked without recursion.
    """
    stack: list[tuple[Any, list[str]]] = [(document, ["body"])]
    while stack:
        value, loc = stack.pop()
        if isinstance(value, dict | list) and len(loc) > MAX_JSON_DEPTH:
            yield {
                "loc": _printable(loc),
                "msg": f"nested deeper than {MAX_JSON_DEPTH} levels",
                "type": "too_deep",
            }
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, loc))
                stack.append((item, [*loc, str(key)]))
        elif isinstance(value, list):
            stack.extend((item, [*loc, str(index)]) for index, item in enumerate(value))
        elif isinstance(value, _NotJson):
            yield {
                "loc": _printable(loc),
                "msg": f"{value} is not a JSON number",
                "type": "json_invalid",
            }
        elif isinstance(value, str) and _UNSAFE.search(value):
            yield {
                "loc": _printable(loc),
                "msg": "text must not contain NUL characters or unpaired surrogates",
                "type": "string_unsafe_characters",
            }


async def check_json_body(request: Request) -> None:
    """App-wide: a JSON body too deep, with ``NaN`` or an infinity, or with a NUL or a lone
    surrogate anywhere, is a 422 before any route runs.

    FastAPI has already parsed (and refused malformed) JSON for routes with a body model; this
    looks at the same bytes again. Raw-body routes (webhooks, uploads) check their own bodies.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or route.body_field is None:
        return
    content_type = request.headers.get("content-type", "application/json").lower()
    if "json" not in content_type:
        return
    raw = await request.body()
    if not raw:
        return
    try:
        document = json.loads(raw, parse_constant=_NotJson)
    except (ValueError, RecursionError):
        return  # FastAPI answered malformed JSON already
    errors = [error for _, error in zip(range(20), json_body_problems(document), strict=False)]
    if errors:
        raise RequestValidationError(errors)


# The dependencies that only read app state are coroutines: FastAPI runs a plain ``def``
# dependency in its thread pool, a thread hand-off (and back) per dependency per request.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_sessions(request: Request) -> SessionFactory:
    sessions: SessionFactory = request.app.state.sessions
    return sessions


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request; routes that write commit at their boundary."""
    sessions: SessionFactory = request.app.state.sessions
    async with sessions() as session:
        yield session


async def get_temporal(request: Request) -> Client:
    client: Client = request.app.state.temporal
    return client


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
TemporalDep = Annotated[Client, Depends(get_temporal)]


async def get_storage(request: Request) -> ObjectStorage:
    storage: ObjectStorage = request.app.state.storage
    return storage


StorageDep = Annotated[ObjectStorage, Depends(get_storage)]

bearer = HTTPBearer(auto_error=False)
_local_signing_keys: dict[Path, str] = {}


def signing_key(settings: Settings) -> str:
    """The key access tokens are verified with: ``BIZ_JWT_SECRET``, else the local secret
    store's, read once per data directory (it never changes there; reading its file on every
    request would block the event loop)."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value()
    key = _local_signing_keys.get(settings.data_dir)
    if key is None:
        key = _local_signing_keys[settings.data_dir] = settings.jwt_signing_key()
    return key


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
        principal = read_access_token(credentials.credentials, signing_key(settings))
    except InvalidToken as exc:
        raise Unauthorized(str(exc)) from None
    # Read on a connection of its own, back in the pool at once: the request's session takes
    # one only when the route uses it, so no connection sits idle through a workflow call.
    bind = session.bind
    found = await live_session_and_role(
        bind if isinstance(bind, AsyncEngine) else session, principal.session_id
    )
    if found is None or (found.user_id, found.tenant_id) != (
        principal.user_id,
        principal.tenant_id,
    ):
        raise Unauthorized("The session has ended; sign in again.")
    if found.role != principal.role:
        # A role change takes effect at once: the client refreshes to get the new role.
        raise Unauthorized("Your access has changed; refresh the token or sign in again.")
    log_context.tenant_id.set(str(principal.tenant_id))
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_role(*roles: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that admits only the given roles (403 for the others)."""

    async def check(principal: CurrentPrincipal) -> Principal:
        if principal.role not in roles:
            raise Forbidden(f"This action needs one of the roles: {', '.join(roles)}.")
        return principal

    return check


async def require_mfa(
    principal: CurrentPrincipal, session: SessionDep, settings: SettingsDep
) -> Principal:
    """Step-up: the caller's *session* passed MFA within ``BIZ_MFA_MAX_AGE`` (approvers deciding).

    Enrolment alone is not enough: a session opened with the password before TOTP was enabled,
    or one whose MFA is older than the window, gets 401 ``mfa-step-up-required`` with RFC 9470's
    challenge and steps up with ``POST /api/v1/auth/mfa/step-up``. 401 rather than 403 because
    authenticating again (more strongly) is what fixes it; a user without TOTP gets 403
    ``mfa-enrolment-required``, which no sign-in fixes until they enrol.
    """
    user = await session.get(User, principal.user_id)
    if user is None or not user.mfa_enabled:
        raise MfaEnrolmentRequired("Enable two-factor authentication to perform this action.")
    auth = await session.get(AuthSession, principal.session_id)
    max_age = int(settings.mfa_max_age.total_seconds())
    if auth is None or auth.mfa_at is None or auth.mfa_at < utcnow() - settings.mfa_max_age:
        raise MfaStepUpRequired(
            "Confirm this action with a code from your authenticator app "
            "(POST /api/v1/auth/mfa/step-up), then retry with the new access token.",
            headers={
                "WWW-Authenticate": 'Bearer error="insufficient_user_authentication", '
                f'error_description="A recent second factor is required", max_age={max_age}'
            },
            max_age=max_age,
        )
    return principal


MfaPrincipal = Annotated[Principal, Depends(require_mfa)]
