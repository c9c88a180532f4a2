"""Live reads (and writes) for the frontend's CMS, CRM, shop and analytics tabs.

BizOSaaS keeps no copy of a tenant's data: these routes read it from the tenant's own system
through the connection's port, within the connection's rate limit (shared by every API
process when Redis is configured), with a short in-process cache so that a tab switched back
and forth does not call the vendor each time. Writes (a new contact, company or deal) run as a
``ConnectionWriteWorkflow``: retried, created once, audited.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from contextlib import suppress
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, status
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ActivityError, WorkflowAlreadyStartedError

from api import workflow_calls
from api.billing_guard import read_only_guard
from api.deps import (
    CurrentPrincipal,
    SessionDep,
    SettingsDep,
    TemporalDep,
    require_role,
)
from api.routers.connections import start_options
from api.tenancy import owned
from api.workflow_calls import IdempotencyKey
from connectors import registry
from connectors.access import open_connection
from connectors.analytics import ReportRequest
from connectors.cms import PostQuery
from connectors.commerce import SyncQuery
from connectors.crm import ActivityQuery, CompanyDraft, ContactDraft, DealDraft
from connectors.http import (
    AuthFailed,
    ConnectorError,
    InvalidCursor,
    RateLimited,
    VendorNotFound,
    VendorUnavailable,
)
from connectors.pacing import DatabasePacer
from connectors.ports import ListQuery
from connectors.secrets import secret_store_from_settings
from core import search
from core.errors import Conflict, NotFound, Problem, TooManyRequests, Unprocessable
from core.security import Principal
from core.settings import Settings
from models.connection import (
    Connection,
    ConnectionAction,
    ConnectionCommand,
    ConnectionStatus,
    WritableResource,
    WriteCommand,
    WrittenRecord,
)
from models.user import Role
from workflows.connection import ConnectionWorkflow, ConnectionWriteWorkflow, write_workflow_id

router = APIRouter(prefix="/api/v1/connections", tags=["connections"])
Writer = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN, Role.USER))]

# What each kind of connection can list: resource -> (port method, its query model).
LISTINGS: dict[str, dict[str, tuple[str, type[ListQuery]]]] = {
    "cms": {
        "posts": ("list_posts", PostQuery),
        "pages": ("list_pages", ListQuery),
        "media": ("list_media", ListQuery),
        "categories": ("list_categories", ListQuery),
        "tags": ("list_tags", ListQuery),
    },
    "crm": {
        "contacts": ("list_contacts", ListQuery),
        "companies": ("list_companies", ListQuery),
        "deals": ("list_deals", ListQuery),
        "activities": ("list_activities", ActivityQuery),
    },
    "commerce": {
        "customers": ("list_customers", SyncQuery),
        "orders": ("list_orders", SyncQuery),
        "products": ("list_products", SyncQuery),
    },
}
_CACHE_SECONDS = 15.0
_CACHE_ENTRIES = 1000


class VendorFailed(Problem):
    status, slug, title = 502, "vendor-error", "The connected system failed"


class LivePage(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None


class _Cache:
    """Answers of the last few seconds, per connection and request (bounded, oldest out)."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[Any, ...], tuple[float, Any]] = OrderedDict()

    def get(self, key: tuple[Any, ...]) -> Any | None:
        found = self._entries.get(key)
        if found is None or found[0] < time.monotonic():
            return None
        return found[1]

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        self._entries[key] = (time.monotonic() + _CACHE_SECONDS, value)
        self._entries.move_to_end(key)
        while len(self._entries) > _CACHE_ENTRIES:
            self._entries.popitem(last=False)


async def _cache(request: Request) -> _Cache:
    app_state = request.app.state
    if not hasattr(app_state, "live_read_cache"):
        app_state.live_read_cache = _Cache()
    cache: _Cache = app_state.live_read_cache
    return cache


@router.get("/{connection_id}/{resource}", summary="Read records live from a connected system")
async def list_live(
    connection_id: uuid.UUID,
    resource: str,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    client: TemporalDep,
    cache: Annotated[_Cache, Depends(_cache)],
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
) -> LivePage:
    """One page of ``resource`` (posts, contacts, deals, orders…) as the tenant's system holds
    it now; ``next_cursor`` continues. 404 for a resource the connection's kind has not."""
    row = await _connected(session, connection_id, principal)
    spec = registry.get_spec(row.connector_id)
    method, query_model = _listing(spec.kind, resource)
    if method not in spec.supported:
        raise NotFound(f"{spec.display_name} does not offer {resource}.")
    query = query_model(cursor=cursor, limit=limit)
    key = (row.id, resource, cursor, limit)
    page = cache.get(key)
    if page is None:
        page = await _call(
            client, settings, session, row, lambda port: getattr(port, method)(query)
        )
        cache.put(key, page)
    return LivePage(
        items=[item.model_dump(mode="json") for item in page.items], next_cursor=page.next_cursor
    )


@router.post("/{connection_id}/reports", summary="Run an analytics report live")
async def run_report(
    connection_id: uuid.UUID,
    body: ReportRequest,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    client: TemporalDep,
) -> dict[str, Any]:
    """A report by date range, dimensions and metrics from a connected analytics system."""
    row = await _connected(session, connection_id, principal)
    spec = registry.get_spec(row.connector_id)
    if spec.kind != "analytics":
        raise NotFound("This connection has no reports.")
    report = await _call(client, settings, session, row, lambda port: port.run_report(body))
    dumped: dict[str, Any] = report.model_dump(mode="json")
    return dumped


async def _connected(
    session: AsyncSession, connection_id: uuid.UUID, principal: Principal
) -> Connection:
    row = await owned(session, Connection, connection_id, principal)
    if row.status is ConnectionStatus.DISCONNECTED:
        raise Conflict("This connection is disconnected; connect again.")
    return row


def _listing(kind: str, resource: str) -> tuple[str, type[ListQuery]]:
    try:
        return LISTINGS[kind][resource]
    except KeyError:
        known = ", ".join(LISTINGS.get(kind, {})) or "none"
        raise NotFound(f"A {kind} connection has no {resource!r} (it has: {known}).") from None


async def _check_health(client: Client, settings: Settings, row: Connection) -> None:
    """Credentials refused on a read: run the connection's check, which records the health and
    tells the tenant admins once. One already running answers for this one too."""
    command = _as_command(row, ConnectionAction.TEST, None)
    with suppress(WorkflowAlreadyStartedError):
        async with workflow_calls.deadline(settings):
            await client.start_workflow(
                ConnectionWorkflow.run, command, **start_options(command, settings)
            )


def _as_command(
    row: Connection, action: ConnectionAction, requested_by: uuid.UUID | None
) -> ConnectionCommand:
    return ConnectionCommand(
        action=action,
        connection_id=row.id,
        tenant_id=row.tenant_id,
        requested_by=requested_by,
        connector_id=row.connector_id,
        auth_kind=row.auth_kind,
        label=row.label,
        settings=row.settings,
    )


async def _call(
    client: Client, settings: Settings, session: AsyncSession, row: Connection, read: Any
) -> Any:
    """Open the connection's port with its stored credentials and run ``read`` on it, in the
    connection's rate limit (shared with its workflows; a 429 rather than a long wait); the
    vendor's failures become problems (never a credential in them)."""
    try:
        async with open_connection(
            settings,
            secret_store_from_settings(settings),
            tenant_id=row.tenant_id,
            connection_id=row.id,
            connector_id=row.connector_id,
            auth_kind=row.auth_kind,
            connection_settings=row.settings,
            pacer=DatabasePacer.lent(session),
            max_wait=settings.connector_live_max_wait_seconds,
        ) as port:
            return await read(port)
    except InvalidCursor:
        raise Unprocessable("The cursor is not one this connection handed out.") from None
    except AuthFailed as exc:
        await _check_health(client, settings, row)
        raise Conflict(
            f"{exc.message} Reconnect the connection with new credentials.",
            reason="auth_failed",
        ) from None
    except VendorNotFound as exc:
        raise NotFound(exc.message) from None
    except RateLimited as exc:
        seconds = str(round(exc.retry_after or 1))
        raise TooManyRequests(exc.message, headers={"Retry-After": seconds}) from None
    except (VendorUnavailable, ConnectorError) as exc:
        raise VendorFailed(exc.message) from None


_WRITE_DRAFTS: dict[str, type[BaseModel]] = {
    "contacts": ContactDraft,
    "companies": CompanyDraft,
    "deals": DealDraft,
}


@router.post(
    "/{connection_id}/{record_kind}",
    status_code=status.HTTP_201_CREATED,
    summary="Create a record in a connected CRM",
    dependencies=[read_only_guard],
)
async def write_live(
    connection_id: uuid.UUID,
    record_kind: WritableResource,
    body: dict[str, Any],
    principal: Writer,
    session: SessionDep,
    settings: SettingsDep,
    client: TemporalDep,
    key: IdempotencyKey,
) -> WrittenRecord:
    """Create a contact, company or deal in the tenant's CRM, once: a retry with the same
    ``Idempotency-Key`` answers with the record the first request created. 422 for a record
    the form or the vendor refuses."""
    row = await _connected(session, connection_id, principal)
    if registry.get_spec(row.connector_id).kind != "crm":
        raise NotFound(f"A {row.connector_id} connection has no {record_kind}.")
    try:
        record = _WRITE_DRAFTS[record_kind].model_validate(body)
    except ValidationError as exc:
        raise Unprocessable(
            "The record has invalid fields.",
            errors=[
                {"loc": ["body", *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors(include_input=False, include_url=False)
            ],
        ) from None
    write = WriteCommand(
        write_id=_write_id(principal, row, record_kind, key),
        connection=_as_command(row, ConnectionAction.WRITE, principal.user_id),
        resource=record_kind,
        record=record.model_dump(mode="json", exclude_none=True),
    )
    return await _written(client, settings, write)


def _write_id(principal: Principal, row: Connection, resource: str, key: str | None) -> uuid.UUID:
    if key is None:
        return uuid.uuid4()
    return uuid.uuid5(uuid.NAMESPACE_URL, f"{principal.user_id}/{row.id}/{resource}/{key}")


async def _written(client: Client, settings: Settings, write: WriteCommand) -> WrittenRecord:
    handle = client.get_workflow_handle_for(
        ConnectionWriteWorkflow.run, write_workflow_id(write.write_id)
    )
    try:
        async with workflow_calls.deadline(settings):
            with suppress(WorkflowAlreadyStartedError):  # a retry: its first run answers
                handle = await client.start_workflow(
                    ConnectionWriteWorkflow.run,
                    write,
                    id=write_workflow_id(write.write_id),
                    task_queue=settings.temporal_task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                    static_summary=f"Create {write.resource} in {write.connection.connector_id}",
                    search_attributes=TypedSearchAttributes(
                        [
                            SearchAttributePair(search.TENANT_ID, str(write.connection.tenant_id)),
                            SearchAttributePair(search.BIZ_PROCESS, "connection_write"),
                        ]
                    ),
                )
            written: WrittenRecord = await handle.result()
    except WorkflowFailureError as err:
        cause = err.cause.cause if isinstance(err.cause, ActivityError) else err.cause
        message = getattr(cause, "message", None) or "The connected system refused the record."
        raise Unprocessable(message) from None
    return written
