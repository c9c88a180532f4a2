"""Connections over HTTP: the connector registry, and a tenant's connections to its systems.

Every change runs as a ``ConnectionWorkflow`` (``connection:{id}``) and the route waits for it
(bounded). New credentials are the one thing the API writes itself: it stages them in the
secret store so that they never cross workflow history; the workflow keeps them only once the
vendor has accepted them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, cast

import jwt
from fastapi import APIRouter, Depends, Query, Response, status
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api import workflow_calls
from api.billing_guard import read_only_guard
from api.deps import CurrentPrincipal, SessionDep, SettingsDep, TemporalDep, require_role
from api.pagination import decode_cursor, encode_cursor
from api.tenancy import owned, scoped
from connectors import registry
from connectors.oauth import authorize_url, oauth_client
from connectors.secrets import secret_store_from_settings, staged_path
from core import search
from core.errors import Conflict, NotFound, Problem, Unprocessable
from core.plans import hold_connection, release_connection
from core.security import Principal
from core.settings import Settings
from models.connection import (
    Connection,
    ConnectionAction,
    ConnectionCommand,
    ConnectionHealth,
    ConnectionOutcome,
    ConnectionStatus,
    ConnectionView,
    OAuthStart,
)
from models.user import Role
from workflows.connection import PROCESS, ConnectionWorkflow, workflow_id

router = APIRouter(prefix="/api/v1", tags=["connections"], dependencies=[read_only_guard])
# The provider's redirect carries no bearer token: the signed state authenticates it.
callback_router = APIRouter(prefix="/api/v1", tags=["connections"])
TenantAdmin = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN))]


class CredentialsRejected(Problem):
    status, slug, title = 422, "credentials-rejected", "The vendor refused the credentials"


class InvalidOAuthState(Problem):
    status, slug, title = 400, "invalid-oauth-state", "Invalid consent callback"


_STATE_AUDIENCE = "bizosaas:connection-consent"


def oauth_state(
    settings: Settings, connection_id: uuid.UUID, tenant_id: uuid.UUID, expires_at: datetime
) -> str:
    """The signed ``state`` of one consent attempt: it names the connection and its tenant."""
    claims = {
        "aud": _STATE_AUDIENCE,
        "cid": str(connection_id),
        "tid": str(tenant_id),
        "exp": expires_at,
    }
    return jwt.encode(claims, settings.jwt_signing_key(), algorithm="HS256")


def read_oauth_state(settings: Settings, state: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The connection and tenant a ``state`` names; 400 for a forged or expired one."""
    try:
        claims = jwt.decode(
            state,
            settings.jwt_signing_key(),
            algorithms=["HS256"],
            audience=_STATE_AUDIENCE,
            options={"require": ["exp", "aud", "cid", "tid"]},
        )
        return uuid.UUID(claims["cid"]), uuid.UUID(claims["tid"])
    except (jwt.InvalidTokenError, ValueError, KeyError):
        raise InvalidOAuthState(
            "The consent callback's state is not valid or has expired."
        ) from None


class ConnectRequest(BaseModel):
    """A new connection: the connector, a label, and the connector's form (its settings and
    credentials, as ``GET /connectors`` describes them)."""

    connector_id: str = Field(max_length=64)
    label: str = Field(min_length=1, max_length=200)
    auth_kind: registry.AuthKind | None = None
    form: dict[str, Any] = Field(max_length=50)


class CredentialsRequest(BaseModel):
    """New credentials (and settings) for an existing connection: the whole form again."""

    form: dict[str, Any] = Field(max_length=50)


class ConnectionPage(BaseModel):
    items: list[ConnectionView]
    next_cursor: str | None


@router.get("/connectors", summary="The connectors a tenant can connect", tags=["connections"])
async def list_connectors(principal: CurrentPrincipal) -> list[dict[str, Any]]:
    """Every connector: kind, capabilities, auth kinds, the connection form's JSON schema per
    auth kind, and default rate limits."""
    return [spec.describe() for spec in registry.all_specs()]


@router.get("/connectors/{connector_id}", summary="One connector")
async def get_connector(connector_id: str, principal: CurrentPrincipal) -> dict[str, Any]:
    return _spec(connector_id).describe()


@router.post(
    "/connections", status_code=status.HTTP_201_CREATED, summary="Connect one of your systems"
)
async def connect(
    body: ConnectRequest,
    principal: TenantAdmin,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
) -> ConnectionView:
    """Check the credentials with the vendor and keep them: 201 with the connection, or 422
    with the vendor's reason (nothing is kept). 403 past the plan's number of connections,
    counting those being set up."""
    spec = _spec(body.connector_id)
    auth_kind = body.auth_kind or spec.auth_kind
    connection_id = uuid.uuid4()
    await hold_connection(session, settings.billing_plans, principal.tenant_id, connection_id)
    command = ConnectionCommand(
        action=ConnectionAction.CONNECT,
        connection_id=connection_id,
        tenant_id=principal.tenant_id,
        requested_by=principal.user_id,
        connector_id=spec.id,
        auth_kind=auth_kind,
        label=body.label,
        settings=await _stage(
            settings,
            spec,
            auth_kind,
            body.form,
            command_of=connection_id,
            tenant_id=principal.tenant_id,
        ),
    )
    await session.commit()
    async with workflow_calls.deadline(settings):
        handle = await _start_new(client, settings, session, command)
        outcome = await handle.result()
    return _connected(outcome)


@router.post(
    "/connections/oauth",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Connect a system through its consent screen",
)
async def connect_with_consent(
    body: ConnectRequest,
    principal: TenantAdmin,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
) -> OAuthStart:
    """Start an OAuth connection: send the browser to ``authorize_url``; the provider returns
    it to the callback, which completes the connection. The attempt expires at
    ``expires_at``; until then it counts against the plan's number of connections (403 past
    it)."""
    spec = _spec(body.connector_id)
    if "oauth2_authorization_code" not in spec.auth_kinds:
        raise Unprocessable(f"{spec.display_name} has no consent screen to connect with.")
    platform_client = oauth_client(settings, spec)
    if platform_client is None:
        raise Unprocessable(f"No OAuth application is configured for {spec.display_name}.")
    try:
        connection_settings, _ = spec.split_form(body.form, "oauth2_authorization_code")
    except ValidationError as exc:
        raise _invalid_form(exc) from None
    wait = timedelta(minutes=settings.oauth_consent_minutes)
    command = ConnectionCommand(
        action=ConnectionAction.CONNECT,
        connection_id=uuid.uuid4(),
        tenant_id=principal.tenant_id,
        requested_by=principal.user_id,
        connector_id=spec.id,
        auth_kind="oauth2_authorization_code",
        label=body.label,
        settings=connection_settings.model_dump(mode="json"),
        consent_timeout=wait,
    )
    tenant_id = principal.tenant_id
    await hold_connection(session, settings.billing_plans, tenant_id, command.connection_id, wait)
    await session.commit()
    async with workflow_calls.deadline(settings):
        await _start_new(client, settings, session, command)
    expires_at = datetime.now(UTC) + wait
    url = authorize_url(
        spec,
        connection_settings,
        platform_client,
        redirect_uri=_redirect_uri(settings),
        state=oauth_state(settings, command.connection_id, principal.tenant_id, expires_at),
        context=registry.context_from_settings(settings),
    )
    return OAuthStart(connection_id=command.connection_id, authorize_url=url, expires_at=expires_at)


@callback_router.get(
    "/connections/oauth/callback", summary="Where the provider returns after consent"
)
async def oauth_callback(
    state: Annotated[str, Query(max_length=2000)],
    client: TemporalDep,
    settings: SettingsDep,
    code: Annotated[str | None, Query(max_length=2000)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
) -> ConnectionView:
    """The signed ``state`` names the attempt (400 when forged, expired or used). The code is
    staged in the secret store, never sent to the workflow; the answer is the connection, or
    422 when the consent was denied or the vendor refused the code."""
    connection_id, tenant_id = read_oauth_state(settings, state)
    store = secret_store_from_settings(settings)
    staged = staged_path(tenant_id, connection_id)
    given = code is not None and error is None
    if given:
        if await store.get(staged) is not None:
            raise InvalidOAuthState("This consent was already received.")
        await store.put(
            staged, {"authorization_code": code, "redirect_uri": _redirect_uri(settings)}
        )
    handle = client.get_workflow_handle_for(ConnectionWorkflow.run, workflow_id(connection_id))
    try:
        async with workflow_calls.deadline(settings):
            await handle.signal(ConnectionWorkflow.consent, given)
            outcome: ConnectionOutcome = await handle.result()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        await store.delete(staged)
        raise InvalidOAuthState("This consent link was already used or has expired.") from None
    return _connected(outcome)


@router.get("/connections", summary="Your tenant's connections")
async def list_connections(
    principal: CurrentPrincipal,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ConnectionPage:
    """Oldest first, disconnected ones included; never a credential."""
    query = scoped(select(Connection), Connection, principal)
    if cursor is not None:
        query = query.where(
            tuple_(Connection.created_at, Connection.id) > tuple_(*decode_cursor(cursor))
        )
    rows = list(
        await session.scalars(query.order_by(Connection.created_at, Connection.id).limit(limit + 1))
    )
    page = rows[:limit]
    more = len(rows) > limit
    return ConnectionPage(
        items=[ConnectionView.of(row) for row in page],
        next_cursor=encode_cursor(page[-1].created_at, page[-1].id) if more else None,
    )


@router.get("/connections/{connection_id}", summary="One connection with its health")
async def get_connection(
    connection_id: uuid.UUID, principal: CurrentPrincipal, session: SessionDep
) -> ConnectionView:
    return ConnectionView.of(await owned(session, Connection, connection_id, principal))


@router.put("/connections/{connection_id}/credentials", summary="Reconnect with new credentials")
async def reconnect(
    connection_id: uuid.UUID,
    body: CredentialsRequest,
    principal: TenantAdmin,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
) -> ConnectionView:
    """Replace the credentials (and settings) once the vendor accepts them; 422 otherwise, and
    the old ones stay."""
    row = await owned(session, Connection, connection_id, principal)
    spec = _spec(row.connector_id)
    auth_kind = cast(registry.AuthKind, row.auth_kind)
    staged = await _stage(
        settings, spec, auth_kind, body.form, command_of=row.id, tenant_id=row.tenant_id
    )
    command = _command(row, principal, ConnectionAction.CONNECT)
    return _connected(await _run(client, settings, command.model_copy(update={"settings": staged})))


@router.post("/connections/{connection_id}/test", summary="Check a connection now")
async def test_connection(
    connection_id: uuid.UUID,
    principal: TenantAdmin,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
) -> ConnectionView:
    """Ask the vendor with the stored credentials; the answer sets the connection's health."""
    row = _live(await owned(session, Connection, connection_id, principal))
    outcome = await _run(client, settings, _command(row, principal, ConnectionAction.TEST))
    assert outcome.connection is not None
    return outcome.connection


@router.delete(
    "/connections/{connection_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Disconnect",
)
async def disconnect(
    connection_id: uuid.UUID,
    principal: TenantAdmin,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
) -> Response:
    """Revoke at the vendor where it can, delete the credentials, keep the record as
    ``disconnected`` (audited)."""
    row = _live(await owned(session, Connection, connection_id, principal))
    await _run(client, settings, _command(row, principal, ConnectionAction.DISCONNECT))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _invalid_form(exc: ValidationError) -> Unprocessable:
    return Unprocessable(
        "The connection form has invalid fields.",
        errors=[
            {"loc": ["body", "form", *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_input=False, include_url=False)
        ],
    )


def _spec(connector_id: str) -> registry.ConnectorSpec:
    try:
        return registry.get_spec(connector_id)
    except registry.UnknownConnector:
        raise NotFound(f"There is no connector {connector_id!r}.") from None


def _live(row: Connection) -> Connection:
    if row.status is ConnectionStatus.DISCONNECTED:
        raise Conflict("This connection is disconnected; connect again.")
    return row


def _command(row: Connection, principal: Principal, action: ConnectionAction) -> ConnectionCommand:
    return ConnectionCommand(
        action=action,
        connection_id=row.id,
        tenant_id=row.tenant_id,
        requested_by=principal.user_id,
        connector_id=row.connector_id,
        auth_kind=row.auth_kind,
        label=row.label,
        settings=row.settings,
    )


async def _stage(
    settings: Settings,
    spec: registry.ConnectorSpec,
    auth_kind: registry.AuthKind,
    form: dict[str, Any],
    *,
    command_of: uuid.UUID,
    tenant_id: uuid.UUID,
) -> dict[str, Any]:
    """Validate the form, stage its credentials for the connection's workflow to check, and
    return the non-secret settings. 422 for a form that does not fit the connector."""
    if auth_kind not in spec.auth_kinds:
        raise Unprocessable(f"{spec.display_name} does not accept {auth_kind} credentials.")
    if auth_kind == "oauth2_authorization_code":
        raise Unprocessable(
            f"{spec.display_name} connects through its consent screen: "
            "POST /api/v1/connections/oauth."
        )
    try:
        connection_settings, credentials = spec.split_form(form, auth_kind)
    except ValidationError as exc:
        raise _invalid_form(exc) from None
    assert credentials is not None
    await secret_store_from_settings(settings).put(
        staged_path(tenant_id, command_of), registry.dump_credentials(credentials)
    )
    return connection_settings.model_dump(mode="json")


async def _run(client: Client, settings: Settings, command: ConnectionCommand) -> ConnectionOutcome:
    """Run one change to the connection and wait for it (bounded); 409 while another runs."""
    try:
        async with workflow_calls.deadline(settings):
            handle = await client.start_workflow(
                ConnectionWorkflow.run, command, **start_options(command, settings)
            )
            outcome: ConnectionOutcome = await handle.result()
    except WorkflowAlreadyStartedError:
        raise Conflict("Another change to this connection is running; try again.") from None
    return outcome


async def _start_new(
    client: Client, settings: Settings, session: AsyncSession, command: ConnectionCommand
) -> WorkflowHandle[ConnectionWorkflow, ConnectionOutcome]:
    """Start a new connection's workflow, which frees the slot held for it however the
    connect ends; a start Temporal refused or never received frees it here. (A start that
    timed out may have been taken: its slot is held until it runs out.)"""
    try:
        return await client.start_workflow(
            ConnectionWorkflow.run, command, **start_options(command, settings)
        )
    except RPCError:
        await release_connection(session, command.connection_id)
        await session.commit()
        raise


def start_options(command: ConnectionCommand, settings: Settings) -> dict[str, Any]:
    """How a connection's workflow starts: one change at a time per connection (a second
    start is refused, not queued)."""
    return {
        "id": workflow_id(command.connection_id),
        "task_queue": settings.temporal_task_queue,
        "id_conflict_policy": WorkflowIDConflictPolicy.FAIL,
        "id_reuse_policy": WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        "static_summary": f"Connection {command.connector_id}: {command.action.value}",
        "search_attributes": TypedSearchAttributes(
            [
                SearchAttributePair(search.TENANT_ID, str(command.tenant_id)),
                SearchAttributePair(search.BIZ_PROCESS, PROCESS),
            ]
        ),
    }


def _redirect_uri(settings: Settings) -> str:
    return settings.public_api_url.rstrip("/") + "/api/v1/connections/oauth/callback"


def _connected(outcome: ConnectionOutcome) -> ConnectionView:
    check = outcome.check
    if outcome.connection is None or check is None or check.health is not ConnectionHealth.HEALTHY:
        reason = check.error if check is not None else None
        raise CredentialsRejected(reason or "The vendor refused the connection.")
    return outcome.connection
