"""Connector sync: profiles (what flows from which connection to which), the id mapping between
the two systems, and run statistics. Nothing of the synced records is kept here beyond their
vendor ids: the records stay in the tenant's systems.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import (
    JSON,
    Date,
    ForeignKey,
    Index,
    Integer,
    Interval,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Timestamped, str_enum


class SyncStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"


class MatchRule(StrEnum):
    """How a source record finds its target when the mapping table does not know it yet: by
    this platform's external id marker at the target, then (``external_id_then_email``) by
    e-mail."""

    EXTERNAL_ID = "external_id"
    EXTERNAL_ID_THEN_EMAIL = "external_id_then_email"


class SyncDirection(StrEnum):
    """``one_way``: the source's changes go to the target. ``two_way``: each side's changes go
    to the other (a pair whose reverse is itself, as CRM contacts to CRM contacts); when both
    sides changed a record since the last sync, the later vendor timestamp wins."""

    ONE_WAY = "one_way"
    TWO_WAY = "two_way"


class SyncLeg(StrEnum):
    """Which way a run is reading: ``forward`` (source to target), then, for a two-way
    profile, ``backward`` (target to source)."""

    FORWARD = "forward"
    BACKWARD = "backward"


class SyncProfile(Timestamped, Base):
    __tablename__ = "sync_profiles"
    __table_args__ = (Index("ix_sync_profiles_tenant_listing", "tenant_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    source_connection_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE")
    )
    target_connection_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE")
    )
    source_resource: Mapped[str] = mapped_column(String(64))
    target_resource: Mapped[str] = mapped_column(String(64))
    # target field -> source field
    field_mapping: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    match_rule: Mapped[MatchRule] = mapped_column(str_enum(MatchRule))
    interval: Mapped[timedelta] = mapped_column(Interval())
    status: Mapped[SyncStatus] = mapped_column(str_enum(SyncStatus))
    # The last committed ``updated_since`` watermark: the next run reads from here.
    cursor: Mapped[datetime | None]
    # Within a run: the vendor's cursor of the next page and the largest ``updated_at`` read so
    # far, committed after each page's writes (None between runs).
    page_cursor: Mapped[str | None] = mapped_column(String(2000))
    pending_cursor: Mapped[datetime | None]
    # Runs that failed in a row (a completed run or a resume resets it); at
    # ``Settings.sync_failed_runs_to_pause`` the profile is paused and its admins told.
    failed_runs: Mapped[int] = mapped_column(Integer, default=0)
    # A backfill asked for through the API, applied by the next run's start (so a run under
    # way cannot overwrite it): read again from ``backfill_since`` (None: everything).
    backfill_requested_at: Mapped[datetime | None]
    backfill_since: Mapped[datetime | None]
    direction: Mapped[SyncDirection] = mapped_column(
        str_enum(SyncDirection), default=SyncDirection.ONE_WAY
    )
    # The backward leg's position (two-way profiles: target to source), as the three above are
    # the forward leg's: its watermark, and within a run its next page and largest
    # ``updated_at`` read so far.
    back_cursor: Mapped[datetime | None]
    back_page_cursor: Mapped[str | None] = mapped_column(String(2000))
    back_pending_cursor: Mapped[datetime | None]


class SyncMapping(Base):
    """One pair of linked records. Two-way profiles keep each side's vendor timestamp as of the
    last sync (``source_version``, ``target_version``): a record not changed since is not
    written again (nor is the echo of our own write), and a record changed on both sides is a
    conflict. The backward leg finds rows by ``target_id``."""

    __tablename__ = "sync_mappings"
    __table_args__ = (
        UniqueConstraint("profile_id", "source_id"),
        Index("ix_sync_mappings_profile_target", "profile_id", "target_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    profile_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sync_profiles.id", ondelete="CASCADE")
    )
    source_id: Mapped[str] = mapped_column(String(200))
    target_id: Mapped[str] = mapped_column(String(200))
    source_version: Mapped[datetime | None]
    target_version: Mapped[datetime | None]


class SyncRun(Base):
    __tablename__ = "sync_runs"
    __table_args__ = (Index("ix_sync_runs_profile_listing", "profile_id", "started_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    profile_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sync_profiles.id", ondelete="CASCADE")
    )
    workflow_run_id: Mapped[str] = mapped_column(String(64), unique=True)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(32))
    read: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[int] = mapped_column(Integer, default=0)
    updated: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    # Times the source refused the run's listing cursor and the run read again from its start.
    cursor_restarts: Mapped[int] = mapped_column(Integer, default=0)
    # At most FAILURE_SAMPLE entries of {"source_id", "reason"}: no personal data.
    failures: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    # Two-way profiles: records read but not changed since the last sync (nothing written),
    # and records changed on both sides, with at most CONFLICT_SAMPLE losers (SyncConflict:
    # ids and timestamps only).
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    conflicts: Mapped[int] = mapped_column(Integer, default=0)
    conflict_sample: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)


class AnalyticsDay(Timestamped, Base):
    """One day of a tenant's analytics property, as numbers only (sessions, users, revenue...):
    the one thing BizOSaaS keeps of a tenant's systems, for its dashboard. Written by a sync
    profile from the analytics connection (``daily_report`` -> ``daily_aggregate``); ``metrics``
    maps the profile's target names to the day's values."""

    __tablename__ = "analytics_days"
    __table_args__ = (
        UniqueConstraint("connection_id", "day"),
        Index("ix_analytics_days_tenant_day", "tenant_id", "day"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    connection_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE")
    )
    day: Mapped[date] = mapped_column(Date())
    metrics: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)


FAILURE_SAMPLE = 20
CONFLICT_SAMPLE = 20

Side = Literal["source", "target"]


class SyncFailure(BaseModel):
    source_id: str
    reason: str


class SyncConflict(BaseModel):
    """A record changed on both sides since the last sync, as kept in a run's sample: the
    losing side and its record's id, both sides' vendor timestamps and the winning side. No
    values: they may be personal data."""

    side: Side
    record_id: str
    source_updated_at: datetime
    target_updated_at: datetime
    winner: Side


class SyncCounts(BaseModel):
    read: int = 0
    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    cursor_restarts: int = 0
    failures: list[SyncFailure] = []
    unchanged: int = 0
    conflicts: int = 0
    conflict_sample: list[SyncConflict] = []

    def add(self, other: SyncCounts) -> SyncCounts:
        return SyncCounts(
            read=self.read + other.read,
            created=self.created + other.created,
            updated=self.updated + other.updated,
            skipped=self.skipped + other.skipped,
            failed=self.failed + other.failed,
            cursor_restarts=self.cursor_restarts + other.cursor_restarts,
            failures=(self.failures + other.failures)[:FAILURE_SAMPLE],
            unchanged=self.unchanged + other.unchanged,
            conflicts=self.conflicts + other.conflicts,
            conflict_sample=(self.conflict_sample + other.conflict_sample)[:CONFLICT_SAMPLE],
        )


class SyncStart(BaseModel):
    """Where a run begins: the committed watermark, or an interrupted run's page; for a
    two-way profile (``two_way``) the backward leg's too. ``tenant_id``: whose run it is (its
    usage is the tenant's), when it runs."""

    active: bool
    tenant_id: uuid.UUID | None = None
    updated_since: datetime | None = None
    page_cursor: str | None = None
    pending_cursor: datetime | None = None
    two_way: bool = False
    back_updated_since: datetime | None = None
    back_page_cursor: str | None = None
    back_pending_cursor: datetime | None = None


class PageRequest(BaseModel):
    profile_id: uuid.UUID
    updated_since: datetime | None = None
    page_cursor: str | None = None
    page_size: int = 100
    leg: SyncLeg = SyncLeg.FORWARD


class PageOutcome(BaseModel):
    """What one page did. ``auth_failed``: the vendor refused the credentials (no writes)."""

    counts: SyncCounts = SyncCounts()
    next_cursor: str | None = None
    max_updated_at: datetime | None = None
    auth_failed_connection: uuid.UUID | None = None
    auth_error: str | None = None


class SyncFinish(BaseModel):
    """What closing a run found: the failed runs in a row, and whether that many pause the
    profile (``halt``: only while it is active, so its admins are told once)."""

    failed_runs: int = 0
    halt: bool = False


class PageCommit(BaseModel):
    """The run's position after a page, kept as the leg's. ``leg_done``: the forward leg of a
    two-way run read its last page, and its watermark moves on before the backward leg."""

    profile_id: uuid.UUID
    workflow_run_id: str
    counts: SyncCounts
    page_cursor: str | None
    pending_cursor: datetime | None
    leg: SyncLeg = SyncLeg.FORWARD
    leg_done: bool = False


class SyncRunState(BaseModel):
    """What a run carries across continue-as-new (ids and numbers only)."""

    profile_id: uuid.UUID
    workflow_run_id: str | None = None
    started: bool = False
    updated_since: datetime | None = None
    page_cursor: str | None = None
    pending_cursor: datetime | None = None
    counts: SyncCounts = SyncCounts()
    pages: int = 0
    page_size: int = 100
    # Pages per workflow run before it continues as new (keeps each history short).
    pages_per_run: int = 20
    # Two-way profiles: the leg being read (the position fields above are that leg's), and
    # where the backward leg starts once the forward leg is done.
    two_way: bool = False
    leg: SyncLeg = SyncLeg.FORWARD
    back_updated_since: datetime | None = None
    back_page_cursor: str | None = None
    back_pending_cursor: datetime | None = None
