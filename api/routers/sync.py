"""Connector sync over HTTP: a tenant's sync profiles, their Schedules (pause, resume, trigger,
backfill) and run statistics. Each profile runs as ``SyncWorkflow`` from its Temporal Schedule
(``sync-schedule:{profile_id}``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Response, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client, ScheduleOverlapPolicy
from temporalio.service import RPCError, RPCStatusCode

from activities.sync import (
    PAIRS,
    SyncPair,
    create_schedule,
    delete_schedule,
    pause_schedule,
    schedule_id,
)
from api import workflow_calls
from api.billing_guard import read_only_guard
from api.deps import CurrentPrincipal, SessionDep, SettingsDep, TemporalDep, require_role
from api.pagination import decode_cursor, encode_cursor
from api.tenancy import owned, scoped
from connectors import registry
from core.errors import Conflict, Unprocessable
from core.security import Principal
from core.settings import Settings
from models.connection import Connection, ConnectionStatus
from models.sync import MatchRule, SyncDirection, SyncProfile, SyncRun, SyncStatus
from models.user import Role

router = APIRouter(prefix="/api/v1/sync", tags=["sync"], dependencies=[read_only_guard])
TenantAdmin = Annotated[Principal, Depends(require_role(Role.TENANT_ADMIN))]


class ProfileRequest(BaseModel):
    """A new sync profile. ``field_mapping`` maps target fields to source fields (the pair's
    default when omitted). ``target_connection_id`` is left out for a target BizOSaaS keeps
    itself (``daily_aggregate``: the source connection's days). ``direction``: ``one_way``
    (source to target), or ``two_way`` for a pair that is its own reverse (``contacts`` to
    ``contacts``): each side's changes go to the other, the later vendor timestamp winning
    when both changed a record."""

    source_connection_id: uuid.UUID
    target_connection_id: uuid.UUID | None = None
    source_resource: str = Field(max_length=64)
    target_resource: str = Field(max_length=64)
    field_mapping: dict[str, str] | None = Field(default=None, max_length=50)
    match_rule: MatchRule = MatchRule.EXTERNAL_ID_THEN_EMAIL
    interval_minutes: int = Field(default=60, ge=5, le=7 * 24 * 60)
    direction: SyncDirection = SyncDirection.ONE_WAY


class BackfillRequest(BaseModel):
    """Read the source again from ``since`` (from the beginning when omitted)."""

    model_config = ConfigDict(extra="forbid")

    since: AwareDatetime | None = None


class RunView(BaseModel):
    """A run's statistics. ``cursor_restarts``: times the source refused the run's cursor and
    the run read its window again from the start. Two-way profiles: ``unchanged`` records were
    read but not changed since the last sync (nothing written); ``conflicts`` changed on both
    sides, and ``conflict_sample`` names up to 20 losers: the losing ``side`` and its
    ``record_id``, both sides' vendor timestamps and the ``winner`` (no values)."""

    run_id: uuid.UUID
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    read: int
    created: int
    updated: int
    skipped: int
    failed: int
    cursor_restarts: int
    failures: list[dict[str, str]]
    unchanged: int
    conflicts: int
    conflict_sample: list[dict[str, str]]

    @classmethod
    def of(cls, row: SyncRun) -> RunView:
        return cls(
            run_id=row.id,
            started_at=row.started_at,
            finished_at=row.finished_at,
            outcome=row.outcome,
            read=row.read,
            created=row.created,
            updated=row.updated,
            skipped=row.skipped,
            failed=row.failed,
            cursor_restarts=row.cursor_restarts,
            failures=row.failures,
            unchanged=row.unchanged,
            conflicts=row.conflicts,
            conflict_sample=row.conflict_sample,
        )


class ProfileView(BaseModel):
    """A sync profile. ``failed_runs``: runs that failed in a row (at the configured limit the
    profile is paused); ``backfill_pending``: a backfill waits for the next run."""

    profile_id: uuid.UUID
    source_connection_id: uuid.UUID
    target_connection_id: uuid.UUID
    source_resource: str
    target_resource: str
    field_mapping: dict[str, Any]
    match_rule: MatchRule
    direction: SyncDirection
    interval_minutes: int
    status: SyncStatus
    cursor: datetime | None
    failed_runs: int
    backfill_pending: bool
    created_at: datetime
    last_run: RunView | None = None

    @classmethod
    def of(cls, row: SyncProfile, last_run: SyncRun | None = None) -> ProfileView:
        return cls(
            profile_id=row.id,
            source_connection_id=row.source_connection_id,
            target_connection_id=row.target_connection_id,
            source_resource=row.source_resource,
            target_resource=row.target_resource,
            field_mapping=row.field_mapping,
            match_rule=row.match_rule,
            direction=row.direction,
            interval_minutes=int(row.interval.total_seconds() // 60),
            status=row.status,
            cursor=row.cursor,
            failed_runs=row.failed_runs,
            backfill_pending=row.backfill_requested_at is not None,
            created_at=row.created_at,
            last_run=RunView.of(last_run) if last_run is not None else None,
        )


class ProfilePage(BaseModel):
    items: list[ProfileView]
    next_cursor: str | None


class RunPage(BaseModel):
    items: list[RunView]
    next_cursor: str | None


@router.post("/profiles", status_code=status.HTTP_201_CREATED, summary="Create a sync profile")
async def create_profile(
    body: ProfileRequest,
    principal: TenantAdmin,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
) -> ProfileView:
    """Both connections must be your tenant's (404 otherwise); 422 when their connectors do
    not hold the resources, the mapping names fields they do not have, or ``two_way`` is asked
    of a pair that is not its own reverse (or with a mapping that does not read both ways).
    The profile's Schedule starts its first run after one interval (``trigger`` runs it
    now)."""
    source = await _live(session, body.source_connection_id, principal)
    pair = PAIRS.get((body.source_resource, body.target_resource))
    if pair is None:
        known = ", ".join(f"{s} -> {t}" for s, t in PAIRS)
        raise Unprocessable(
            f"No sync from {body.source_resource} to {body.target_resource}: {known}."
        )
    target = await _target(session, body, pair, source, principal)
    sides = [(source, pair.source_kind, "source")]
    if pair.store is None:
        sides.append((target, pair.target_kind, "target"))
    for row, kind, side in sides:
        if registry.get_spec(row.connector_id).kind != kind:
            raise Unprocessable(
                f"The {side} connection ({row.connector_id}) is not a {kind} system."
            )
    mapping = body.field_mapping if body.field_mapping is not None else pair.default_mapping
    errors = [
        {"loc": ["body", "field_mapping", name], "msg": msg, "type": "value_error"}
        for name, msg in _mapping_errors(
            mapping, pair.source_fields, pair.target_fields, pair.required_fields
        )
    ]
    if errors or not mapping:
        raise Unprocessable("The field mapping names unknown fields.", errors=errors)
    _check_direction(body, pair, source, target, mapping)
    profile = SyncProfile(
        id=uuid.uuid4(),
        tenant_id=principal.tenant_id,
        source_connection_id=source.id,
        target_connection_id=target.id,
        source_resource=body.source_resource,
        target_resource=body.target_resource,
        field_mapping=mapping,
        match_rule=body.match_rule,
        direction=body.direction,
        interval=timedelta(minutes=body.interval_minutes),
        status=SyncStatus.ACTIVE,
        failed_runs=0,
    )
    session.add(profile)
    await session.commit()
    async with workflow_calls.deadline(settings):
        await create_schedule(
            client,
            settings,
            profile_id=profile.id,
            tenant_id=profile.tenant_id,
            every=profile.interval,
        )
    return ProfileView.of(profile)


@router.get("/profiles", summary="Your tenant's sync profiles")
async def list_profiles(
    principal: CurrentPrincipal,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ProfilePage:
    """Oldest first."""
    query = scoped(select(SyncProfile), SyncProfile, principal)
    if cursor is not None:
        query = query.where(
            tuple_(SyncProfile.created_at, SyncProfile.id) > tuple_(*decode_cursor(cursor))
        )
    rows = list(
        await session.scalars(
            query.order_by(SyncProfile.created_at, SyncProfile.id).limit(limit + 1)
        )
    )
    page = rows[:limit]
    return ProfilePage(
        items=[ProfileView.of(row) for row in page],
        next_cursor=encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None,
    )


@router.get("/profiles/{profile_id}", summary="One sync profile and its latest run")
async def get_profile(
    profile_id: uuid.UUID, principal: CurrentPrincipal, session: SessionDep
) -> ProfileView:
    """The latest run's statistics are current while it runs (committed after each page)."""
    profile = await owned(session, SyncProfile, profile_id, principal)
    last = await session.scalar(
        select(SyncRun)
        .where(SyncRun.profile_id == profile.id)
        .order_by(SyncRun.started_at.desc(), SyncRun.id.desc())
        .limit(1)
    )
    return ProfileView.of(profile, last)


@router.delete(
    "/profiles/{profile_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a sync profile",
)
async def delete_profile(
    profile_id: uuid.UUID,
    principal: TenantAdmin,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
) -> Response:
    """Its Schedule, mappings and run statistics go with it; the synced records stay."""
    profile = await owned(session, SyncProfile, profile_id, principal)
    async with workflow_calls.deadline(settings):
        await delete_schedule(client, profile.id)
    await session.delete(profile)
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/profiles/{profile_id}/pause", summary="Pause a profile's Schedule")
async def pause_profile(
    profile_id: uuid.UUID,
    principal: TenantAdmin,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
) -> ProfileView:
    """No run starts until it is resumed (a run under way finishes its pages)."""
    profile = await owned(session, SyncProfile, profile_id, principal)
    profile.status = SyncStatus.PAUSED
    await session.commit()
    async with workflow_calls.deadline(settings):
        await pause_schedule(client, profile.id, f"paused by {principal.user_id}")
    return ProfileView.of(profile)


@router.post("/profiles/{profile_id}/resume", summary="Resume a profile's Schedule")
async def resume_profile(
    profile_id: uuid.UUID,
    principal: TenantAdmin,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
) -> ProfileView:
    """Runs start again at the profile's interval (also after an auth failure or failed runs
    paused it: the count of failed runs starts again)."""
    profile = await owned(session, SyncProfile, profile_id, principal)
    profile.status = SyncStatus.ACTIVE
    profile.failed_runs = 0
    await session.commit()
    async with workflow_calls.deadline(settings):
        await create_schedule(
            client,
            settings,
            profile_id=profile.id,
            tenant_id=profile.tenant_id,
            every=profile.interval,
        )
        await client.get_schedule_handle(schedule_id(profile.id)).unpause(
            note=f"resumed by {principal.user_id}"
        )
    return ProfileView.of(profile)


@router.post(
    "/profiles/{profile_id}/trigger",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Run a profile now",
)
async def trigger_profile(
    profile_id: uuid.UUID,
    principal: TenantAdmin,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
) -> ProfileView:
    """Start a run now; skipped when one is under way. 409 for a paused profile."""
    profile = await owned(session, SyncProfile, profile_id, principal)
    if profile.status is SyncStatus.PAUSED:
        raise Conflict("This sync profile is paused; resume it first.")
    await _trigger(client, settings, profile)
    return ProfileView.of(profile)


@router.post(
    "/profiles/{profile_id}/backfill",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Sync a profile again from a moment",
)
async def backfill_profile(
    profile_id: uuid.UUID,
    principal: TenantAdmin,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
    body: Annotated[BackfillRequest | None, Body()] = None,
) -> ProfileView:
    """Read the source again from ``since`` (everything when omitted) and run now: records
    already synced are updated, none duplicated. The next run's start applies it, so a run
    under way finishes first and the backfill runs right after. 409 for a paused profile;
    422 for a ``since`` in the future."""
    profile = await owned(session, SyncProfile, profile_id, principal)
    if profile.status is SyncStatus.PAUSED:
        raise Conflict("This sync profile is paused; resume it first.")
    since = body.since if body is not None else None
    now = datetime.now(UTC)
    if since is not None and since > now:
        raise Unprocessable(
            "A backfill starts in the past.",
            errors=[
                {
                    "loc": ["body", "since"],
                    "msg": "must not be in the future",
                    "type": "value_error",
                }
            ],
        )
    profile.backfill_requested_at = now
    profile.backfill_since = since
    await session.commit()
    # Buffered behind a run under way rather than skipped, as the Schedule does by itself.
    await _trigger(client, settings, profile, overlap=ScheduleOverlapPolicy.BUFFER_ONE)
    return ProfileView.of(profile)


@router.get("/profiles/{profile_id}/runs", summary="A profile's runs, newest first")
async def list_runs(
    profile_id: uuid.UUID,
    principal: CurrentPrincipal,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> RunPage:
    profile = await owned(session, SyncProfile, profile_id, principal)
    query = select(SyncRun).where(SyncRun.profile_id == profile.id)
    if cursor is not None:
        query = query.where(tuple_(SyncRun.started_at, SyncRun.id) < tuple_(*decode_cursor(cursor)))
    rows = list(
        await session.scalars(
            query.order_by(SyncRun.started_at.desc(), SyncRun.id.desc()).limit(limit + 1)
        )
    )
    page = rows[:limit]
    return RunPage(
        items=[RunView.of(row) for row in page],
        next_cursor=encode_cursor(page[-1].started_at, page[-1].id) if len(rows) > limit else None,
    )


async def _trigger(
    client: Client,
    settings: Settings,
    profile: SyncProfile,
    *,
    overlap: ScheduleOverlapPolicy | None = None,
) -> None:
    try:
        async with workflow_calls.deadline(settings):
            await client.get_schedule_handle(schedule_id(profile.id)).trigger(overlap=overlap)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        raise Conflict("This profile has no schedule; resume it to create one.") from None


async def _target(
    session: AsyncSession,
    body: ProfileRequest,
    pair: SyncPair,
    source: Connection,
    principal: Principal,
) -> Connection:
    """The target connection: the one named, or for a target BizOSaaS keeps (which takes none)
    the source's own."""
    named = body.target_connection_id
    if pair.store is not None and named in (None, source.id):
        return source
    if pair.store is not None or named is None:
        problem = "must be left out" if pair.store is not None else "is required"
        raise Unprocessable(
            f"target_connection_id {problem} for {body.target_resource}.",
            errors=[
                {
                    "loc": ["body", "target_connection_id"],
                    "msg": problem,
                    "type": "value_error",
                }
            ],
        )
    return await _live(session, named, principal)


def _check_direction(
    body: ProfileRequest,
    pair: SyncPair,
    source: Connection,
    target: Connection,
    mapping: dict[str, str],
) -> None:
    """422 for a two-way profile of a pair that is not its own reverse, or whose mapping does
    not read back (two target fields from one source field); and for a pair of one resource
    between a connection and itself, whose records would be copied onto themselves."""
    reverse = pair.source_kind == pair.target_kind and body.source_resource == body.target_resource
    if reverse and source.id == target.id:
        raise Unprocessable(
            f"A sync of {body.source_resource} needs two different connections.",
            errors=[
                {
                    "loc": ["body", "target_connection_id"],
                    "msg": "must differ from source_connection_id",
                    "type": "value_error",
                }
            ],
        )
    if body.direction is not SyncDirection.TWO_WAY:
        return
    if not pair.mirrored(body.source_resource, body.target_resource):
        known = ", ".join(f"{s} -> {t}" for (s, t), p in PAIRS.items() if p.mirrored(s, t))
        raise Unprocessable(
            f"{body.source_resource} to {body.target_resource} syncs one way only; "
            f"two ways: {known}.",
            errors=[
                {
                    "loc": ["body", "direction"],
                    "msg": "two_way needs a pair that is its own reverse",
                    "type": "value_error",
                }
            ],
        )
    if len(set(mapping.values())) != len(mapping):
        raise Unprocessable(
            "A two-way mapping reads each source field for one target field only.",
            errors=[
                {
                    "loc": ["body", "field_mapping"],
                    "msg": "two target fields read the same source field",
                    "type": "value_error",
                }
            ],
        )


async def _live(
    session: AsyncSession, connection_id: uuid.UUID, principal: Principal
) -> Connection:
    row = await owned(session, Connection, connection_id, principal)
    if row.status is ConnectionStatus.DISCONNECTED:
        raise Conflict(f"Connection {row.id} is disconnected; connect it again.")
    return row


def _mapping_errors(
    mapping: dict[str, str],
    source_fields: frozenset[str],
    target_fields: frozenset[str],
    required_fields: frozenset[str],
) -> list[tuple[str, str]]:
    errors = []
    for target, source in mapping.items():
        if target not in target_fields:
            errors.append((target, f"the target has no field {target!r}"))
        if source not in source_fields:
            errors.append((target, f"the source has no field {source!r}"))
    for target in sorted(required_fields - mapping.keys()):
        errors.append((target, f"the target needs field {target!r}"))
    return errors
