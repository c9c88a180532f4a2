"""Connections over HTTP: the connector registry, and a tenant's connections to its systems.

Every change runs as a ``ConnectionWorkflow`` (``connection:{id}``) and the route waits for it
(bounded). New credentials are the one thing the API writes itself: it stages them in the
secret store so that they never cross workflow history; the workflow keeps them only once the
vendor has accepted them.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Query, Response, status
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select, tuple_
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from api import workflow_calls
from api.billing_guard import read_only_guard
from api.deps import CurrentPrincipal, SessionDep, SettingsDep, TemporalDep, require_role
from api.pagination import decode_cursor, encode_cursor
from api.tenancy import owned, scoped
from connectors import registry
from connectors.secrets import secret_store_from_settings, staged_path
from core import search
from core.errors import Conflict, NotFound, Problem, Unprocessable
from core.plans import ensure_room_for_connection
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
)
from models.user import Role
from workflows.connection import PROCESS, ConnectionWorkflow, workflow_id

router = APIRouter(prefix="/api/v1", tags=["connections"], dependencies=[read_only_guard])
TenantAdmin = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN))]


class CredentialsRejected(Problem):
    status, slug, title = 422, "credentials-rejected", "The vendor refused the credentials"


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
    with the vendor's reason (nothing is kept). 403 past the plan's number of connections."""
    spec = _spec(body.connector_id)
    auth_kind = body.auth_kind or spec.auth_kind
    await ensure_room_for_connection(session, settings.billing_plans, principal.tenant_id)
    connection_id = uuid.uuid4()
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
    return _connected(await _run(client, settings, command))


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
        others = [kind for kind in spec.auth_kinds if kind != auth_kind]
        raise Unprocessable(
            f"Connecting {spec.display_name} through its consent screen is not available; "
            f"use one of: {', '.join(others) or 'none'}."
        )
    try:
        connection_settings, credentials = spec.split_form(form, auth_kind)
    except ValidationError as exc:
        raise Unprocessable(
            "The connection form has invalid fields.",
            errors=[
                {"loc": ["body", "form", *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors(include_input=False, include_url=False)
            ],
        ) from None
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
                ConnectionWorkflow.run,
                command,
                id=workflow_id(command.connection_id),
                task_queue=settings.temporal_task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                static_summary=f"Connection {command.connector_id}: {command.action.value}",
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(search.TENANT_ID, str(command.tenant_id)),
                        SearchAttributePair(search.BIZ_PROCESS, PROCESS),
                    ]
                ),
            )
            outcome: ConnectionOutcome = await handle.result()
    except WorkflowAlreadyStartedError:
        raise Conflict("Another change to this connection is running; try again.") from None
    return outcome


def _connected(outcome: ConnectionOutcome) -> ConnectionView:
    check = outcome.check
    if outcome.connection is None or check is None or check.health is not ConnectionHealth.HEALTHY:
        reason = check.error if check is not None else None
        raise CredentialsRejected(reason or "The vendor refused the connection.")
    return outcome.connection
