"""Connector sync activities: read one page of the source, upsert it at the target, and keep the
profile's cursor, id mappings and run statistics. Credentials are read from the secret store
here, never carried by the workflow.

A source/target pair is one :class:`SyncPair` entry in :data:`PAIRS`: how the source is listed,
which fields it has, and how the target finds, creates and updates a record.

Two-way profiles (a pair whose reverse is itself: CRM contacts to CRM contacts) read the target
back to the source after the source to the target, each leg from its own position. The id
mapping keeps both sides' vendor timestamps as of the last sync: a record not changed since
(the echo of our own write included) is counted ``unchanged`` and not written; a record changed
on both sides is a conflict, won by the later vendor timestamp (the source on a tie), its loser
kept in the run's sample (:meth:`SyncActivities._upsert_both_ways`).

Failure policy: a record the source cannot parse, or the target's rules refuse, is skipped and
counted (its id and a reason, never its values); a cursor the source no longer accepts restarts
the run's listing from its start (counted in ``cursor_restarts``); refused credentials pause the
profile (:meth:`SyncActivities.suspend_sync`); ``Settings.sync_failed_runs_to_pause`` failed runs
in a row pause it and tell the tenant's admins once (:meth:`SyncActivities.halt_failing_sync`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from typing import Any, TypeVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from temporalio import activity
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.connections import open_row, start_connection_check
from connectors.analytics import AnalyticsPort, DateRange, ReportRequest, report_day
from connectors.cms import CMSPort, SiteUserDraft, SiteUserUpdate
from connectors.commerce import CommercePort, SyncPage, SyncQuery
from connectors.crm import (
    ContactDraft,
    ContactUpdate,
    CRMPort,
    DealDraft,
    DealUpdate,
    Pipeline,
)
from connectors.http import (
    AuthFailed,
    ConnectorError,
    InvalidCursor,
    RateLimited,
    SchemaMismatch,
    Unreadable,
    VendorNotFound,
    VendorRejected,
    as_application_error,
)
from connectors.mail import Mailer
from connectors.pacing import DatabasePacer
from connectors.secrets import SecretStore
from core import search
from core.db import SessionFactory, transaction
from core.settings import Settings
from models.billing import UsageEvent, UsageMetric
from models.connection import Connection
from models.email import EmailMessage
from models.sync import (
    CONFLICT_SAMPLE,
    FAILURE_SAMPLE,
    AnalyticsDay,
    MatchRule,
    PageCommit,
    PageOutcome,
    PageRequest,
    Side,
    SyncConflict,
    SyncCounts,
    SyncDirection,
    SyncFailure,
    SyncFinish,
    SyncLeg,
    SyncMapping,
    SyncProfile,
    SyncRun,
    SyncRunState,
    SyncStart,
    SyncStatus,
)
from models.user import Membership, Role, User

#: A vendor asking to wait longer than ``Settings.sync_inline_wait_seconds`` ends the page
#: attempt with this error type; the workflow sleeps durably for the vendor's ``Retry-After``
#: instead of holding a worker slot or exhausting retries.
LONG_WAIT_ERROR = "SyncRateLimited"
_INLINE_WAITS = 30
T = TypeVar("T")
PROCESS = "sync"


class Unmappable(Exception):
    """A record's values have no counterpart at the target (an order status without a deal
    stage, say); the message is the reason recorded, without the record's values."""


def _as_is(values: dict[str, Any], context: Any) -> dict[str, Any]:
    return values


@dataclass(frozen=True)
class SyncPair:
    """How records flow from a source resource to a target resource.

    A record's mapped values (target field -> the source field's value) go through ``shape``
    into the target's draft fields; ``target_context`` is read from the target once per page
    for it (a CRM's deal stages, say)."""

    source_kind: str
    target_kind: str
    source_fields: frozenset[str]
    target_fields: frozenset[str]
    default_mapping: dict[str, str]
    list_page: Callable[[Any, SyncQuery], Awaitable[SyncPage[Any]]]
    find_by_external_id: Callable[[Any, str], Awaitable[Any | None]]
    find_by_email: Callable[[Any, str], Awaitable[Any | None]] | None
    create: Callable[[Any, dict[str, Any]], Awaitable[Any]]
    update: Callable[[Any, str, dict[str, Any]], Awaitable[Any]]
    validate: Callable[[dict[str, Any]], BaseModel]
    #: Target fields a mapping must fill (the target refuses a record without them).
    required_fields: frozenset[str] = frozenset()
    target_context: Callable[[Any], Awaitable[Any]] | None = None
    shape: Callable[[dict[str, Any], Any], dict[str, Any]] = _as_is
    #: A target kept by BizOSaaS itself (``target_kind`` ``platform``): its port, built for
    #: the profile, in place of a connection's.
    store: Callable[[SessionFactory, SyncProfile], Any] | None = None
    #: A record by its id (``VendorNotFound`` when gone): what a two-way profile reads of the
    #: other side to tell a conflict.
    get: Callable[[Any, str], Awaitable[Any]] | None = None
    #: The target's records whose external id or e-mail is one of these: a page's records
    #: looked up at once (without it, each record is looked up on its own).
    find_many: Callable[[Any, list[str], list[str]], Awaitable[list[Any]]] | None = None

    def mirrored(self, source_resource: str, target_resource: str) -> bool:
        """Whether the pair is its own reverse (same resource and kind of system on both
        sides, the same fields, each side readable by id): only such a pair syncs two ways."""
        return (
            source_resource == target_resource
            and self.source_kind == self.target_kind
            and self.source_fields == self.target_fields
            and self.store is None
            and self.get is not None
        )


async def _list_customers(port: Any, query: SyncQuery) -> SyncPage[Any]:
    return await cast(CommercePort, port).list_customers(query)


async def _find_contact_by_external_id(port: Any, external_id: str) -> Any | None:
    return await cast(CRMPort, port).find_contact_by_external_id(external_id)


async def _find_contact_by_email(port: Any, email: str) -> Any | None:
    return await cast(CRMPort, port).find_contact_by_email(email)


async def _create_contact(port: Any, record: dict[str, Any]) -> Any:
    return await cast(CRMPort, port).create_contact(ContactDraft.model_validate(record))


async def _update_contact(port: Any, target_id: str, record: dict[str, Any]) -> Any:
    fields = {k: v for k, v in record.items() if k != "external_id"}
    return await cast(CRMPort, port).update_contact(target_id, ContactUpdate.model_validate(fields))


async def _find_contacts(port: Any, external_ids: list[str], emails: list[str]) -> list[Any]:
    return await cast(CRMPort, port).find_contacts(external_ids, emails)


async def _sync_contacts(port: Any, query: SyncQuery) -> SyncPage[Any]:
    return await cast(CRMPort, port).sync_contacts(query)


async def _get_contact(port: Any, contact_id: str) -> Any:
    return await cast(CRMPort, port).get_contact(contact_id)


async def _find_user_by_external_id(port: Any, external_id: str) -> Any | None:
    return await cast(CMSPort, port).find_user_by_external_id(external_id)


async def _find_user_by_email(port: Any, email: str) -> Any | None:
    return await cast(CMSPort, port).find_user_by_email(email)


async def _create_user(port: Any, record: dict[str, Any]) -> Any:
    return await cast(CMSPort, port).create_user(SiteUserDraft.model_validate(record))


async def _update_user(port: Any, target_id: str, record: dict[str, Any]) -> Any:
    fields = {k: v for k, v in record.items() if k != "external_id"}
    return await cast(CMSPort, port).update_user(target_id, SiteUserUpdate.model_validate(fields))


async def _list_orders(port: Any, query: SyncQuery) -> SyncPage[Any]:
    return await cast(CommercePort, port).list_orders(query)


async def _find_deal_by_external_id(port: Any, external_id: str) -> Any | None:
    return await cast(CRMPort, port).find_deal_by_external_id(external_id)


async def _create_deal(port: Any, record: dict[str, Any]) -> Any:
    return await cast(CRMPort, port).create_deal(DealDraft.model_validate(record))


async def _update_deal(port: Any, target_id: str, record: dict[str, Any]) -> Any:
    fields = {k: v for k, v in record.items() if k != "external_id"}
    return await cast(CRMPort, port).update_deal(target_id, DealUpdate.model_validate(fields))


async def _deal_pipeline(port: Any) -> Pipeline | None:
    """The CRM's first deal pipeline (HubSpot's and Zoho's default one): where orders go."""
    pipelines = await cast(CRMPort, port).list_pipelines()
    return pipelines[0] if pipelines else None


#: An order's status, as the stage its deal is in: open, won or lost.
_OUTCOME_OF_STATUS = {
    "pending": "open",
    "paid": "won",
    "fulfilled": "won",
    "cancelled": "lost",
    "refunded": "lost",
    "failed": "lost",
}


def _deal_fields(values: dict[str, Any], pipeline: Pipeline | None) -> dict[str, Any]:
    """An order's mapped values as a deal's: ``name`` becomes ``Order #<value>``, ``stage``
    (the port's order status) the pipeline's first open, won or lost stage, a ``close_date``
    moment its date."""
    fields: dict[str, Any] = {}
    for name, value in values.items():
        if value is None or name == "stage":
            continue
        if name == "name":
            fields["name"] = f"Order #{str(value).lstrip('#')}"
        elif name == "close_date" and isinstance(value, datetime):
            fields["close_date"] = value.date()
        elif name == "currency":
            fields["currency"] = str(value).upper()
        else:
            fields[name] = value
    if "stage" in values:
        outcome = _OUTCOME_OF_STATUS.get(str(values["stage"]))
        if outcome is None:
            raise Unmappable("unmapped stage: not an order status")
        if pipeline is None:
            raise Unmappable("no deal pipeline at the target")
        stages = sorted(pipeline.stages, key=lambda stage: stage.order)
        chosen = next(
            (
                stage
                for stage in stages
                if (outcome == "open" and not stage.closed)
                or (outcome == "won" and stage.closed and stage.won)
                or (outcome == "lost" and stage.closed and not stage.won)
            ),
            None,
        )
        if chosen is None:
            raise Unmappable(f"no {outcome} stage in the target's pipeline")
        fields["pipeline_id"], fields["stage_id"] = pipeline.id, chosen.id
    return fields


#: The daily numbers an analytics property gives (GA4's names), under the names BizOSaaS keeps
#: them by (the ``daily_report -> daily_aggregate`` pair's default mapping).
DAILY_METRICS = {
    "users": "activeUsers",
    "sessions": "sessions",
    "page_views": "screenPageViews",
    "events": "eventCount",
    "bounce_rate": "bounceRate",
    "average_session_seconds": "averageSessionDuration",
    "revenue": "totalRevenue",
}
#: A first run reads this many days; every run reads again the days before its watermark
#: that the vendor may still be completing (GA4 processes a day's data for up to 48 hours).
FIRST_DAYS, LATE_DAYS, DAYS_PER_PAGE = 90, 2, 31


class ReportDay(BaseModel):
    """One day of an analytics report: its metrics by the vendor's names."""

    model_config = ConfigDict(extra="allow")

    id: str
    updated_at: datetime


class DayValues(BaseModel):
    """A day's numbers as kept: none negative, nothing else."""

    model_config = ConfigDict(extra="forbid")

    external_id: str
    users: float | None = Field(default=None, ge=0)
    sessions: float | None = Field(default=None, ge=0)
    page_views: float | None = Field(default=None, ge=0)
    events: float | None = Field(default=None, ge=0)
    bounce_rate: float | None = Field(default=None, ge=0)
    average_session_seconds: float | None = Field(default=None, ge=0)
    revenue: float | None = Field(default=None, ge=0)


async def _list_days(port: Any, query: SyncQuery) -> SyncPage[Any]:
    """Complete days (up to yesterday, UTC) from the cursor's day, else from ``LATE_DAYS``
    before the watermark, else the last ``FIRST_DAYS``; ``DAYS_PER_PAGE`` per page. Days
    without data are not in the report (GA4 leaves them out)."""
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    if query.cursor is not None:
        try:
            start = date.fromisoformat(query.cursor)
        except ValueError:
            raise InvalidCursor("not a day cursor", vendor="analytics") from None
    elif query.updated_since is not None:
        start = query.updated_since.date() - timedelta(days=LATE_DAYS)
    else:
        start = yesterday - timedelta(days=FIRST_DAYS - 1)
    if start > yesterday:
        return SyncPage(items=[])
    end = min(start + timedelta(days=DAYS_PER_PAGE - 1), yesterday)
    report = await cast(AnalyticsPort, port).run_report(
        ReportRequest(
            date_range=DateRange(start=start, end=end),
            dimensions=["date"],
            metrics=sorted(set(DAILY_METRICS.values())),
            limit=DAYS_PER_PAGE,
        )
    )
    names = [header.name for header in report.metric_headers]
    page: SyncPage[Any] = SyncPage(
        items=[], next_cursor=(end + timedelta(days=1)).isoformat() if end < yesterday else None
    )
    for index, row in enumerate(report.rows):
        try:
            day = report_day(row.dimensions[0], index)
        except SchemaMismatch as exc:
            page.unreadable.append(Unreadable(source_id="", reason=f"{exc.field}: not a day"))
            continue
        values = dict(zip(names, row.metrics, strict=True))
        page.items.append(
            ReportDay(id=day.isoformat(), updated_at=datetime.combine(day, time(), UTC), **values)
        )
    return page


@dataclass(frozen=True)
class _StoredDay:
    id: str


class AnalyticsDays:
    """The target of a ``daily_aggregate`` profile: the days kept for the source connection
    (``analytics_days``), by the day (the source record's id, the marker's tail)."""

    def __init__(self, sessions: SessionFactory, profile: SyncProfile) -> None:
        self._sessions = sessions
        self._tenant_id = profile.tenant_id
        self._connection_id = profile.source_connection_id

    async def find(self, marker: str) -> _StoredDay | None:
        day = date.fromisoformat(marker.rsplit(":", 1)[1])
        async with self._sessions() as session:
            found = await session.scalar(self._day(day))
        return _StoredDay(day.isoformat()) if found is not None else None

    async def save(self, day_id: str, values: dict[str, Any]) -> _StoredDay:
        day = date.fromisoformat(day_id)
        metrics = {k: float(v) for k, v in values.items() if k != "external_id"}
        async with transaction(self._sessions) as session:
            row = await session.scalar(self._day(day))
            if row is None:
                session.add(
                    AnalyticsDay(
                        tenant_id=self._tenant_id,
                        connection_id=self._connection_id,
                        day=day,
                        metrics=metrics,
                    )
                )
            else:
                row.metrics = {**row.metrics, **metrics}
        return _StoredDay(day.isoformat())

    def _day(self, day: date) -> Any:
        return select(AnalyticsDay).where(
            AnalyticsDay.connection_id == self._connection_id, AnalyticsDay.day == day
        )


async def _find_day(store: Any, marker: str) -> Any | None:
    return await cast(AnalyticsDays, store).find(marker)


async def _create_day(store: Any, record: dict[str, Any]) -> Any:
    return await cast(AnalyticsDays, store).save(record["external_id"].rsplit(":", 1)[1], record)


async def _update_day(store: Any, day_id: str, record: dict[str, Any]) -> Any:
    return await cast(AnalyticsDays, store).save(day_id, record)


PAIRS: dict[tuple[str, str], SyncPair] = {
    ("customers", "contacts"): SyncPair(
        source_kind="commerce",
        target_kind="crm",
        source_fields=frozenset({"email", "first_name", "last_name", "phone"}),
        target_fields=frozenset({"email", "first_name", "last_name", "phone", "job_title"}),
        default_mapping={
            "email": "email",
            "first_name": "first_name",
            "last_name": "last_name",
            "phone": "phone",
        },
        list_page=_list_customers,
        find_by_external_id=_find_contact_by_external_id,
        find_by_email=_find_contact_by_email,
        create=_create_contact,
        update=_update_contact,
        validate=ContactDraft.model_validate,
        find_many=_find_contacts,
    ),
    ("orders", "deals"): SyncPair(
        source_kind="commerce",
        target_kind="crm",
        source_fields=frozenset(
            {"number", "total", "subtotal", "currency", "status", "created_at", "updated_at"}
        ),
        target_fields=frozenset({"name", "amount", "currency", "stage", "close_date"}),
        default_mapping={
            "name": "number",
            "amount": "total",
            "currency": "currency",
            "stage": "status",
        },
        list_page=_list_orders,
        find_by_external_id=_find_deal_by_external_id,
        find_by_email=None,
        create=_create_deal,
        update=_update_deal,
        validate=DealDraft.model_validate,
        required_fields=frozenset({"name", "stage"}),
        target_context=_deal_pipeline,
        shape=_deal_fields,
    ),
    # CRM to CRM (HubSpot and Zoho, say): its own reverse, so it may sync two ways.
    ("contacts", "contacts"): SyncPair(
        source_kind="crm",
        target_kind="crm",
        source_fields=frozenset({"email", "first_name", "last_name", "phone", "job_title"}),
        target_fields=frozenset({"email", "first_name", "last_name", "phone", "job_title"}),
        default_mapping={
            "email": "email",
            "first_name": "first_name",
            "last_name": "last_name",
            "phone": "phone",
        },
        list_page=_sync_contacts,
        find_by_external_id=_find_contact_by_external_id,
        find_by_email=_find_contact_by_email,
        create=_create_contact,
        update=_update_contact,
        validate=ContactDraft.model_validate,
        find_many=_find_contacts,
        get=_get_contact,
    ),
    ("contacts", "users"): SyncPair(
        source_kind="crm",
        target_kind="cms",
        source_fields=frozenset({"email", "first_name", "last_name"}),
        target_fields=frozenset({"email", "first_name", "last_name"}),
        default_mapping={"email": "email", "first_name": "first_name", "last_name": "last_name"},
        list_page=_sync_contacts,
        find_by_external_id=_find_user_by_external_id,
        find_by_email=_find_user_by_email,
        create=_create_user,
        update=_update_user,
        validate=SiteUserDraft.model_validate,
        required_fields=frozenset({"email"}),
    ),
    ("daily_report", "daily_aggregate"): SyncPair(
        source_kind="analytics",
        target_kind="platform",
        source_fields=frozenset(DAILY_METRICS.values()),
        target_fields=frozenset(DAILY_METRICS),
        default_mapping=DAILY_METRICS,
        list_page=_list_days,
        find_by_external_id=_find_day,
        find_by_email=None,
        create=_create_day,
        update=_update_day,
        validate=DayValues.model_validate,
        store=AnalyticsDays,
    ),
}


def schedule_id(profile_id: uuid.UUID) -> str:
    return f"sync-schedule:{profile_id}"


def workflow_id(profile_id: uuid.UUID) -> str:
    return f"sync:{profile_id}"


def external_id(profile: SyncProfile, source_id: str) -> str:
    """The marker a target record carries: the source connection and the source record's id."""
    return f"{profile.source_connection_id}:{source_id}"


def back_external_id(profile: SyncProfile, target_id: str) -> str:
    """The marker a source record made by a two-way profile's backward leg carries: the target
    connection and the target record's id (``external_id`` of the profile turned around)."""
    return f"{profile.target_connection_id}:{target_id}"


@dataclass(frozen=True)
class _Link:
    """A mapping row as a two-way profile reads it: both ids, both versions."""

    source_id: str
    target_id: str
    source_version: datetime | None
    target_version: datetime | None

    def id_of(self, side: Side) -> str:
        return self.source_id if side == "source" else self.target_id

    def version(self, side: Side) -> datetime | None:
        return self.source_version if side == "source" else self.target_version


@dataclass
class _Targets:
    """A one-way page's dealings with the target: what its lookup found, by marker and by
    e-mail (casefolded), the markers it asked about, and the mappings to keep."""

    asked: set[str] = field(default_factory=set)
    by_marker: dict[str, Any] = field(default_factory=dict)
    by_email: dict[str, Any] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)


def _sides(leg: SyncLeg) -> tuple[Side, Side]:
    """The side a leg reads and the side it writes."""
    return ("target", "source") if leg is SyncLeg.BACKWARD else ("source", "target")


async def create_schedule(
    client: Client,
    settings: Settings,
    *,
    profile_id: uuid.UUID,
    tenant_id: uuid.UUID,
    every: timedelta,
    paused: bool = False,
) -> None:
    """The profile's Schedule (an existing one is kept): a run per interval, never two at once."""
    try:
        await client.create_schedule(
            schedule_id(profile_id),
            Schedule(
                action=ScheduleActionStartWorkflow(
                    "SyncWorkflow",
                    SyncRunState(profile_id=profile_id),
                    id=workflow_id(profile_id),
                    task_queue=settings.temporal_task_queue,
                    static_summary=f"Connector sync of profile {profile_id}",
                    typed_search_attributes=TypedSearchAttributes(
                        [
                            SearchAttributePair(search.TENANT_ID, str(tenant_id)),
                            SearchAttributePair(search.BIZ_PROCESS, PROCESS),
                        ]
                    ),
                ),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
                state=ScheduleState(paused=paused),
            ),
        )
    except ScheduleAlreadyRunningError:
        return


async def delete_schedule(client: Client, profile_id: uuid.UUID) -> None:
    """Delete the profile's Schedule (gone already is fine)."""
    try:
        await client.get_schedule_handle(schedule_id(profile_id)).delete()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise


async def pause_schedule(client: Client, profile_id: uuid.UUID, note: str) -> None:
    try:
        await client.get_schedule_handle(schedule_id(profile_id)).pause(note=note)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise


class SyncActivities:
    """Activities bound to the database, the secret store, the mail port and the connector
    registry."""

    def __init__(
        self, sessions: SessionFactory, settings: Settings, secrets: SecretStore, mailer: Mailer
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._secrets = secrets
        self._mailer = mailer
        self._pacer = DatabasePacer(sessions)

    @activity.defn
    async def begin_sync_run(self, profile_id: uuid.UUID, workflow_run_id: str) -> SyncStart:
        """Record the run's start and say where it reads from: an interrupted run's committed
        page, else the profile's watermark. A backfill asked for since the last run resets
        both first. A paused or deleted profile does not run."""
        async with transaction(self._sessions) as session:
            profile = await session.get(SyncProfile, profile_id)
            if profile is None or profile.status is SyncStatus.PAUSED:
                return SyncStart(active=False)
            two_way = profile.direction is SyncDirection.TWO_WAY
            if profile.backfill_requested_at is not None:
                profile.cursor = profile.backfill_since
                profile.page_cursor = profile.pending_cursor = None
                if two_way:  # both sides are read again
                    profile.back_cursor = profile.backfill_since
                    profile.back_page_cursor = profile.back_pending_cursor = None
                profile.backfill_requested_at = profile.backfill_since = None
            known = await session.scalar(
                select(SyncRun.id).where(SyncRun.workflow_run_id == workflow_run_id)
            )
            if known is None:  # None: an earlier attempt of this activity recorded it
                session.add(
                    SyncRun(
                        id=uuid.uuid4(),
                        profile_id=profile_id,
                        workflow_run_id=workflow_run_id,
                        started_at=datetime.now(UTC),
                        read=0,
                        created=0,
                        updated=0,
                        skipped=0,
                        failed=0,
                        failures=[],
                    )
                )
            return SyncStart(
                active=True,
                tenant_id=profile.tenant_id,
                updated_since=profile.cursor,
                page_cursor=profile.page_cursor,
                pending_cursor=profile.pending_cursor,
                two_way=two_way,
                back_updated_since=profile.back_cursor if two_way else None,
                back_page_cursor=profile.back_page_cursor if two_way else None,
                back_pending_cursor=profile.back_pending_cursor if two_way else None,
            )

    @activity.defn
    async def sync_page(self, request: PageRequest) -> PageOutcome:
        """Read one page of the source and upsert each record at the target: the mapping table
        first, then the target's external-id marker (and e-mail, by the match rule), then a
        create. The page's mappings are kept in one write as it ends (also when it fails); a
        retried page finds what it wrote by the target's marker, so it writes nothing twice.
        Records the source could not parse, or the target would refuse, are skipped and
        counted; a cursor the source refuses restarts the listing from the run's watermark
        (counted). A two-way profile's backward leg reads the target and
        writes the source the same way; both legs of a two-way profile skip records unchanged
        since the last sync and settle conflicts (:meth:`_upsert_both_ways`)."""
        async with self._sessions() as session:
            profile = await session.get(SyncProfile, request.profile_id)
            if profile is None:
                raise ApplicationError("The sync profile was deleted.", non_retryable=True)
            source = await session.get(Connection, profile.source_connection_id)
            target = await session.get(Connection, profile.target_connection_id)
        if source is None or target is None:
            raise ApplicationError("A connection of the profile is gone.", non_retryable=True)
        pair = PAIRS[(profile.source_resource, profile.target_resource)]
        two_way = profile.direction is SyncDirection.TWO_WAY
        if request.leg is SyncLeg.BACKWARD and not two_way:
            raise ApplicationError("The sync profile is not two-way.", non_retryable=True)
        reading, writing = (target, source) if request.leg is SyncLeg.BACKWARD else (source, target)
        query = SyncQuery(
            cursor=request.page_cursor,
            updated_since=request.updated_since,
            limit=request.page_size,
        )
        restarts = 0
        try:
            async with self._open(reading) as source_port:
                try:
                    page = await self._patiently(lambda: pair.list_page(source_port, query))
                except InvalidCursor:
                    # A cursor the source no longer accepts (expired, or issued by an older
                    # connector): read the run's window again from its start. Upserts are
                    # idempotent, so what was written before is found, not duplicated.
                    restarts = 1
                    fresh = query.model_copy(update={"cursor": None})
                    page = await self._patiently(lambda: pair.list_page(source_port, fresh))
        except AuthFailed as exc:
            return PageOutcome(auth_failed_connection=reading.id, auth_error=exc.message)
        except ConnectorError as exc:
            raise self._application_error(exc, reading) from None
        activity.heartbeat(request.page_cursor, 0)
        counts = SyncCounts(read=len(page.items) + len(page.unreadable), cursor_restarts=restarts)
        for unreadable in page.unreadable:
            counts = counts.add(
                _failure(unreadable.source_id, f"unreadable {unreadable.reason}", skipped=True)
            )
        stamps = [r.updated_at for r in page.items if getattr(r, "updated_at", None) is not None]
        newest: datetime | None = max(stamps, default=None)
        ids = [str(record.id) for record in page.items]
        known: dict[str, Any] = (
            await self._links(profile.id, ids, request.leg)
            if two_way
            else await self._mapped(profile.id, ids)
        )
        try:
            async with self._open_target(pair, profile, writing) as target_port:
                context = None
                if page.items and pair.target_context is not None:
                    load = pair.target_context
                    context = await self._patiently(lambda: load(target_port))
                targets = _Targets()
                if not two_way:
                    await self._look_up(profile, pair, target_port, page.items, known, targets)
                upsert = (
                    partial(
                        self._upsert_both_ways, profile, pair, request.leg, target_port, context
                    )
                    if two_way
                    else partial(self._upsert, profile, pair, target_port, context, targets)
                )
                try:
                    outcomes = await self._together(request, page.items, known, upsert)
                finally:
                    await self._keep_mappings(profile.id, targets.kept)
                for outcome in outcomes:
                    counts = counts.add(outcome)
        except AuthFailed as exc:
            return PageOutcome(auth_failed_connection=writing.id, auth_error=exc.message)
        except ConnectorError as exc:
            raise self._application_error(exc, writing) from None
        return PageOutcome(counts=counts, next_cursor=page.next_cursor, max_updated_at=newest)

    async def _together(
        self,
        request: PageRequest,
        records: list[Any],
        known: dict[str, Any],
        upsert: Callable[[Any, Any], Awaitable[SyncCounts]],
    ) -> list[SyncCounts]:
        """Upsert a page's records ``Settings.sync_record_concurrency`` at a time (each vendor
        call still takes its turn in the connection's rate limit), heartbeating the count done.
        Records sharing an e-mail go one after the other, so a record matched by e-mail is
        found, not created twice; the first failure cancels the rest and is raised."""
        lanes = asyncio.Semaphore(self._settings.sync_record_concurrency)
        turns: dict[str, asyncio.Lock] = {}
        done = 0

        async def one(record: Any) -> SyncCounts:
            nonlocal done
            source_id = str(record.id)
            email = str(getattr(record, "email", None) or "").casefold()
            async with turns.setdefault(email or f"id:{source_id}", asyncio.Lock()), lanes:
                outcome = await self._patiently(partial(upsert, record, known.get(source_id)))
            done += 1
            activity.heartbeat(request.page_cursor, done)
            return outcome

        tasks = [asyncio.ensure_future(one(record)) for record in records]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _mapped(self, profile_id: uuid.UUID, source_ids: list[str]) -> dict[str, str]:
        """The target ids the mapping table knows for these source records."""
        if not source_ids:
            return {}
        async with self._sessions() as session:
            rows = await session.execute(
                select(SyncMapping.source_id, SyncMapping.target_id).where(
                    SyncMapping.profile_id == profile_id, SyncMapping.source_id.in_(source_ids)
                )
            )
        return {row.source_id: row.target_id for row in rows}

    async def _upsert(
        self,
        profile: SyncProfile,
        pair: SyncPair,
        port: Any,
        context: Any,
        targets: _Targets,
        record: Any,
        target_id: str | None,
    ) -> SyncCounts:
        source_id = str(record.id)
        mapped = {
            target: getattr(record, source, None)
            for target, source in profile.field_mapping.items()
        }
        marker = external_id(profile, source_id)
        values = _prepared(pair, mapped, context, source_id, marker)
        if isinstance(values, SyncCounts):
            return values
        try:
            if target_id is not None:
                try:
                    await pair.update(port, target_id, values)
                    return SyncCounts(updated=1)
                except VendorNotFound:
                    target_id = None  # deleted at the target: found or made again below
            email = str(values.get("email") or "") if _by_email(profile, pair) else ""
            found = await self._find(pair, port, targets, marker, email)
            if found is not None:
                await pair.update(port, found.id, values)
                targets.kept[source_id] = found.id
                return SyncCounts(updated=1)
            created = await pair.create(port, {**values, "external_id": marker})
        except VendorRejected as exc:
            # The vendor's code, never its message: that can quote the record's values.
            return _failure(source_id, f"rejected by {exc.vendor}: {exc.code or exc.status}")
        targets.kept[source_id] = created.id
        if email:  # a later record of the page with this address finds it (they take turns)
            targets.by_email[email.casefold()] = created
        return SyncCounts(created=1)

    @staticmethod
    async def _find(
        pair: SyncPair, port: Any, targets: _Targets, marker: str, email: str
    ) -> Any | None:
        """The target record carrying ``marker``, else the one with ``email`` (when given):
        from the page's lookup when it asked, else from the target."""
        if marker in targets.asked:
            found = targets.by_marker.get(marker)
            if found is None and email:
                found = targets.by_email.get(email.casefold())
            return found
        found = await pair.find_by_external_id(port, marker)
        if found is None and email and pair.find_by_email is not None:
            found = await pair.find_by_email(port, email)
        return found

    async def _look_up(
        self,
        profile: SyncProfile,
        pair: SyncPair,
        port: Any,
        records: list[Any],
        known: dict[str, Any],
        targets: _Targets,
    ) -> None:
        """Look the page's records the mapping table does not know up at the target at once
        (by marker, and by e-mail as the match rule asks), when the pair can."""
        find_many = pair.find_many
        fresh = [record for record in records if str(record.id) not in known]
        if find_many is None or not fresh:
            return
        markers = [external_id(profile, str(record.id)) for record in fresh]
        field_name = profile.field_mapping.get("email") if _by_email(profile, pair) else None
        addresses = (getattr(record, field_name, None) for record in fresh) if field_name else ()
        emails = sorted({str(address) for address in addresses if address})
        found = await self._patiently(lambda: find_many(port, markers, emails))
        targets.asked.update(markers)
        for item in found:
            if item.external_id:
                targets.by_marker.setdefault(item.external_id, item)
            if item.email:
                targets.by_email.setdefault(str(item.email).casefold(), item)

    async def _upsert_both_ways(
        self,
        profile: SyncProfile,
        pair: SyncPair,
        leg: SyncLeg,
        port: Any,
        context: Any,
        record: Any,
        link: _Link | None,
    ) -> SyncCounts:
        """Upsert a record of a two-way profile at the other side (``port``), from either side.

        A record whose vendor timestamp is not after its side's version in the mapping has not
        changed since the last sync (or is the echo of our own write): ``unchanged``, nothing
        written. Otherwise, when the other side's record changed too since the last sync, the
        later timestamp wins (the profile's source on a tie): this side's wins by being
        written there; the other side's by writing nothing here, this side's version being
        settled in the mapping so that the other leg writes its record back without counting
        the same conflict again. The loser goes in the run's sample. After each write the
        mapping keeps both sides' timestamps, the written side's as the vendor answered it."""
        here, there = _sides(leg)
        record_id = str(record.id)
        stamp: datetime | None = getattr(record, "updated_at", None)
        if link is not None:
            seen = link.version(here)
            if stamp is not None and seen is not None and stamp <= seen:
                return SyncCounts(unchanged=1)
        # Target field -> source field; the backward leg reads it the other way round.
        fields = (
            profile.field_mapping
            if leg is SyncLeg.FORWARD
            else {source: target for target, source in profile.field_mapping.items()}
        )
        mapped = {name: getattr(record, other, None) for name, other in fields.items()}
        marker = (
            external_id(profile, record_id)
            if leg is SyncLeg.FORWARD
            else back_external_id(profile, record_id)
        )
        values = _prepared(pair, mapped, context, record_id, marker)
        if isinstance(values, SyncCounts):
            return values
        assert pair.get is not None  # a mirrored pair's (checked when the profile was made)
        try:
            other_id = link.id_of(there) if link is not None else None
            current = None
            if other_id is not None:
                try:
                    current = await pair.get(port, other_id)
                except VendorNotFound:
                    other_id = None  # deleted there: found or made again below
            if link is not None and other_id is not None and current is not None:
                theirs: datetime | None = getattr(current, "updated_at", None)
                known_theirs = link.version(there)
                conflict = None
                if (
                    stamp is not None
                    and theirs is not None
                    and (known_theirs is None or theirs > known_theirs)
                ):
                    winner: Side = (
                        here if stamp > theirs or (stamp == theirs and here == "source") else there
                    )
                    conflict = SyncConflict(
                        side=there if winner == here else here,
                        record_id=other_id if winner == here else record_id,
                        source_updated_at=stamp if here == "source" else theirs,
                        target_updated_at=theirs if here == "source" else stamp,
                        winner=winner,
                    )
                    if winner == there:
                        await self._link(profile.id, leg, record_id, other_id, stamp, known_theirs)
                        return SyncCounts(conflicts=1, conflict_sample=[conflict])
                written = await pair.update(port, other_id, values)
                await self._link(profile.id, leg, record_id, other_id, stamp, _version(written))
                if conflict is None:
                    return SyncCounts(updated=1)
                return SyncCounts(updated=1, conflicts=1, conflict_sample=[conflict])
            email = str(values.get("email") or "") if _by_email(profile, pair) else ""
            found = await self._find(pair, port, _Targets(), marker, email)
            if found is not None:
                if await self._linked_elsewhere(profile.id, there, str(found.id), record_id):
                    # Two records here match one there (Zoho allows contacts sharing an
                    # e-mail): linking both would make either side's change overwrite the other.
                    return _failure(
                        record_id, "its match is linked to another record", skipped=True
                    )
                written = await pair.update(port, found.id, values)
                await self._link(profile.id, leg, record_id, found.id, stamp, _version(written))
                return SyncCounts(updated=1)
            created = await pair.create(port, {**values, "external_id": marker})
        except VendorRejected as exc:
            return _failure(record_id, f"rejected by {exc.vendor}: {exc.code or exc.status}")
        await self._link(profile.id, leg, record_id, created.id, stamp, _version(created))
        return SyncCounts(created=1)

    async def _links(self, profile_id: uuid.UUID, ids: list[str], leg: SyncLeg) -> dict[str, _Link]:
        """The mapping rows of these records of the side ``leg`` reads (by source id, or by
        target id for the backward leg)."""
        if not ids:
            return {}
        here, _ = _sides(leg)
        column = SyncMapping.source_id if here == "source" else SyncMapping.target_id
        async with self._sessions() as session:
            rows = await session.scalars(
                select(SyncMapping).where(SyncMapping.profile_id == profile_id, column.in_(ids))
            )
            links = [
                _Link(row.source_id, row.target_id, row.source_version, row.target_version)
                for row in rows
            ]
        return {link.id_of(here): link for link in links}

    async def _linked_elsewhere(
        self, profile_id: uuid.UUID, side: Side, record_id: str, other_id: str
    ) -> bool:
        """Whether ``record_id`` (of ``side``) is linked to another record than ``other_id``."""
        mine, theirs = (
            (SyncMapping.source_id, SyncMapping.target_id)
            if side == "source"
            else (SyncMapping.target_id, SyncMapping.source_id)
        )
        async with self._sessions() as session:
            found = await session.scalar(
                select(SyncMapping.id)
                .where(SyncMapping.profile_id == profile_id, mine == record_id, theirs != other_id)
                .limit(1)
            )
        return found is not None

    async def _link(
        self,
        profile_id: uuid.UUID,
        leg: SyncLeg,
        here_id: str,
        there_id: str,
        here_version: datetime | None,
        there_version: datetime | None,
    ) -> None:
        """Keep the link of a two-way profile's record (read by ``leg``) and its counterpart,
        with both sides' versions: the row of the record read, created or pointed anew."""
        forward = leg is SyncLeg.FORWARD
        source_id, target_id = (here_id, there_id) if forward else (there_id, here_id)
        source_version, target_version = (
            (here_version, there_version) if forward else (there_version, here_version)
        )
        key = SyncMapping.source_id == source_id if forward else SyncMapping.target_id == target_id
        async with transaction(self._sessions) as session:
            mapping = await session.scalar(
                select(SyncMapping).where(SyncMapping.profile_id == profile_id, key).limit(1)
            )
            if mapping is None:
                mapping = SyncMapping(profile_id=profile_id)
                session.add(mapping)
            mapping.source_id, mapping.target_id = source_id, target_id
            mapping.source_version, mapping.target_version = source_version, target_version

    async def _keep_mappings(self, profile_id: uuid.UUID, kept: dict[str, str]) -> None:
        """Keep a page's new mappings (source id to target id) in one write, also when the
        page failed part way. Should the activity die before it, the retried page finds what
        it wrote by the target's external-id marker: found, not written twice."""
        if not kept:
            return
        # One page activity at a time per profile (the Schedule skips overlaps, the workflow id
        # is the profile's): nobody else writes this profile's mappings meanwhile.
        async with transaction(self._sessions) as session:
            rows = await session.scalars(
                select(SyncMapping).where(
                    SyncMapping.profile_id == profile_id, SyncMapping.source_id.in_(kept)
                )
            )
            existing = {row.source_id: row for row in rows}
            for source_id, target_id in kept.items():
                if source_id in existing:
                    existing[source_id].target_id = target_id
                else:
                    session.add(
                        SyncMapping(profile_id=profile_id, source_id=source_id, target_id=target_id)
                    )

    @activity.defn
    async def commit_sync_page(self, commit: PageCommit) -> None:
        """Keep the run's position (the next page and the largest ``updated_at`` read) and its
        statistics so far: a run that dies resumes from here."""
        async with transaction(self._sessions) as session:
            profile = await session.get(SyncProfile, commit.profile_id)
            if profile is None:
                return
            if commit.leg is SyncLeg.BACKWARD:
                profile.back_page_cursor = commit.page_cursor
                profile.back_pending_cursor = commit.pending_cursor
            else:
                profile.page_cursor = commit.page_cursor
                profile.pending_cursor = commit.pending_cursor
                if commit.leg_done and commit.page_cursor is None:
                    # A two-way run read the source to its end: a run ending in the backward
                    # leg does not read the source again from the old watermark.
                    if profile.pending_cursor is not None:
                        profile.cursor = profile.pending_cursor
                    profile.pending_cursor = None
            await _write_counts(session, commit.workflow_run_id, commit.counts, None)

    @activity.defn
    async def finish_sync_run(
        self, profile_id: uuid.UUID, workflow_run_id: str, counts: SyncCounts, outcome: str
    ) -> SyncFinish:
        """Close the run's statistics; a completed run makes its largest ``updated_at`` the
        profile's watermark and clears the failed runs in a row. Any other outcome keeps the
        committed page for the next run; a failed one counts, and says whether the profile has
        now failed often enough to be halted."""
        async with transaction(self._sessions) as session:
            profile = await session.get(SyncProfile, profile_id)
            run = await session.scalar(
                select(SyncRun).where(SyncRun.workflow_run_id == workflow_run_id)
            )
            # A retry of this activity finds the outcome recorded and counts nothing again.
            first_close = run is not None and run.outcome is None
            if profile is not None and outcome == "completed":
                if profile.pending_cursor is not None:
                    profile.cursor = profile.pending_cursor
                profile.page_cursor = profile.pending_cursor = None
                if profile.back_pending_cursor is not None:
                    profile.back_cursor = profile.back_pending_cursor
                profile.back_page_cursor = profile.back_pending_cursor = None
                profile.failed_runs = 0
            if profile is not None and outcome == "failed" and first_close:
                profile.failed_runs += 1
            await _write_counts(session, workflow_run_id, counts, outcome)
            if profile is None or outcome != "failed":
                return SyncFinish()
            return SyncFinish(
                failed_runs=profile.failed_runs,
                halt=profile.failed_runs >= self._settings.sync_failed_runs_to_pause
                and profile.status is SyncStatus.ACTIVE,
            )

    @activity.defn
    async def halt_failing_sync(self, profile_id: uuid.UUID, failed_runs: int) -> None:
        """Runs failed ``failed_runs`` times in a row: pause the profile and its Schedule, and
        tell the tenant's admins. The e-mails are keyed by this run, so a retry sends none
        twice; a paused profile does not run, so nobody is told again before a resume."""
        async with transaction(self._sessions) as session:
            profile = await session.get(SyncProfile, profile_id)
            if profile is None:
                return
            profile.status = SyncStatus.PAUSED
            tenant_id = profile.tenant_id
            resources = f"{profile.source_resource} to {profile.target_resource}"
            admins = (
                await session.execute(
                    select(User.id, User.email)
                    .join(Membership, Membership.user_id == User.id)
                    .where(
                        Membership.tenant_id == tenant_id,
                        Membership.role == Role.TENANT_ADMIN,
                        User.is_active,
                    )
                )
            ).all()
        await pause_schedule(
            activity.client(), profile_id, f"paused: {failed_runs} runs in a row failed"
        )
        link = f"{self._settings.public_app_url.rstrip('/')}/sync/{profile_id}"
        for user_id, address in admins:
            await self._mailer.send(
                EmailMessage(
                    idempotency_key=f"{activity.info().workflow_run_id}:sync-halted:{user_id}",
                    to=address,
                    subject=f"Sync of {resources} paused after {failed_runs} failed runs",
                    body=(
                        f"The sync of {resources} failed {failed_runs} times in a row, so its "
                        "schedule is paused: no run starts until it is resumed.\n\n"
                        f"See the runs and resume it at {link}.\n"
                    ),
                    tenant_id=tenant_id,
                )
            )

    @activity.defn
    async def suspend_sync(self, profile_id: uuid.UUID, connection_id: uuid.UUID) -> None:
        """Credentials were refused: pause the profile and its Schedule, and start the
        connection's check, which marks it ``auth_failed`` and tells the admins once."""
        async with transaction(self._sessions) as session:
            profile = await session.get(SyncProfile, profile_id)
            if profile is not None:
                profile.status = SyncStatus.PAUSED
                connection = await session.get(Connection, connection_id)
        client = activity.client()
        await pause_schedule(client, profile_id, "paused: a connection's credentials were refused")
        if connection is not None:
            await start_connection_check(client, self._settings, connection)

    async def _patiently(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call``, waiting out short vendor limits here (heartbeating) rather than failing the
        page: an upsert is safe to repeat. A long or endless limit goes up to the workflow."""
        for attempt in range(_INLINE_WAITS):
            try:
                return await call()
            except RateLimited as exc:
                wait = exc.retry_after or 1.0
                if (
                    exc.daily
                    or wait > self._settings.sync_inline_wait_seconds
                    or attempt == _INLINE_WAITS - 1
                ):
                    raise
                # Heartbeats through the wait: a killed worker's page is retried soon after.
                while wait > 0:
                    activity.heartbeat("rate limited", wait)
                    await asyncio.sleep(min(wait, 5.0))
                    wait -= 5.0
        raise AssertionError("unreachable")

    def _application_error(self, exc: ConnectorError, row: Connection) -> ApplicationError:
        """A long ``Retry-After``, or a spent daily allowance (until the vendor account's
        midnight), is handed to the workflow to sleep on; the rest as usual."""
        if isinstance(exc, RateLimited) and exc.daily and exc.retry_after is None:
            wait: float | None = daily_window_reopens(row, datetime.now(UTC))
        else:
            wait = exc.retry_after if isinstance(exc, RateLimited) else None
        if wait is not None and wait > self._settings.sync_inline_wait_seconds:
            return ApplicationError(
                exc.message, {"retry_after": wait}, type=LONG_WAIT_ERROR, non_retryable=True
            )
        return as_application_error(exc)

    def _open(self, row: Connection) -> Any:
        return open_row(self._settings, self._secrets, row, self._pacer)

    def _open_target(
        self, pair: SyncPair, profile: SyncProfile, row: Connection
    ) -> AbstractAsyncContextManager[Any]:
        if pair.store is not None:
            return nullcontext(pair.store(self._sessions, profile))
        return cast(AbstractAsyncContextManager[Any], self._open(row))


async def _write_counts(
    session: Any, workflow_run_id: str, counts: SyncCounts, outcome: str | None
) -> None:
    run = await session.scalar(select(SyncRun).where(SyncRun.workflow_run_id == workflow_run_id))
    if run is None:
        return
    written = counts.created + counts.updated
    profile = await session.get(SyncProfile, run.profile_id)
    if profile is not None and written > run.created + run.updated:
        # Records written since the last commit are usage for billing.
        session.add(
            UsageEvent(
                tenant_id=profile.tenant_id,
                metric=UsageMetric.RECORDS_SYNCED,
                quantity=written - run.created - run.updated,
                occurred_at=datetime.now(UTC),
                # The run's running total: a commit repeated after it succeeded adds nothing.
                idempotency_key=f"sync:{workflow_run_id}:{written}",
            )
        )
    run.read, run.created, run.updated = counts.read, counts.created, counts.updated
    run.skipped, run.failed = counts.skipped, counts.failed
    run.cursor_restarts = counts.cursor_restarts
    run.failures = [f.model_dump() for f in counts.failures[:FAILURE_SAMPLE]]
    run.unchanged, run.conflicts = counts.unchanged, counts.conflicts
    run.conflict_sample = [
        c.model_dump(mode="json") for c in counts.conflict_sample[:CONFLICT_SAMPLE]
    ]
    if outcome is not None:
        run.outcome, run.finished_at = outcome, datetime.now(UTC)


def daily_window_reopens(row: Connection, now: datetime) -> float:
    """Seconds from ``now`` until a vendor's daily allowance comes back: the next midnight in
    the time zone its account check recorded (UTC when none is known), and a minute more."""
    detail = (row.account or {}).get("detail") or {}
    try:
        zone = ZoneInfo(str(detail.get("time_zone") or "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    tomorrow = now.astimezone(zone).date() + timedelta(days=1)
    midnight = datetime.combine(tomorrow, time(), zone)
    return (midnight.astimezone(UTC) - now).total_seconds() + 60


def _by_email(profile: SyncProfile, pair: SyncPair) -> bool:
    """Whether a record without a marked target record is matched by its e-mail."""
    return pair.find_by_email is not None and profile.match_rule is MatchRule.EXTERNAL_ID_THEN_EMAIL


def _prepared(
    pair: SyncPair, mapped: dict[str, Any], context: Any, record_id: str, marker: str
) -> dict[str, Any] | SyncCounts:
    """A record's mapped values as the side written takes them, or, when they do not make a
    valid record there, the record skipped (the field and error type, never a value)."""
    try:
        values = pair.shape(mapped, context)
        pair.validate({**values, "external_id": marker})
    except Unmappable as exc:
        return _failure(record_id, str(exc), skipped=True)
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        return _failure(record_id, f"invalid {where}: {error['type']}", skipped=True)
    # Empty fields do not clear what the other side holds.
    return {k: v for k, v in values.items() if v not in (None, "")}


def _version(written: Any) -> datetime | None:
    """A written record's vendor timestamp, as the vendor answered the write."""
    stamp: datetime | None = getattr(written, "updated_at", None)
    return stamp


def _failure(source_id: str, reason: str, *, skipped: bool = False) -> SyncCounts:
    sample = [SyncFailure(source_id=source_id, reason=reason)]
    if skipped:
        return SyncCounts(skipped=1, failures=sample)
    return SyncCounts(failed=1, failures=sample)
