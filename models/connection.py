"""Connections: a tenant's link to one of its own systems (CMS, CRM, shop, analytics).

The ``connections`` table keeps what the platform needs to reach the system: the connector,
the non-secret settings, the account the credentials act as, and the connection's health. The
credentials live in the secret store (``connectors/secrets``), never here and never in
workflow history. Every change goes through ``ConnectionWorkflow`` (``connection:{id}``).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import JSON, Double, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Timestamped, str_enum


class ConnectionStatus(StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


class ConnectionHealth(StrEnum):
    """How the connection's last calls went."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"  # the vendor failed or limited us; it retries
    AUTH_FAILED = "auth_failed"  # the credentials were refused: a human must reconnect
    UNREACHABLE = "unreachable"


class ConnectionAction(StrEnum):
    CONNECT = "connect"  # also a reconnect: new credentials for the same connection
    TEST = "test"
    DISCONNECT = "disconnect"
    WRITE = "write"  # the connection a ConnectionWriteWorkflow writes through


# What a write can create in a connected CRM: created once per write id (kept at the vendor as
# the record's external id, looked up before creating).
WritableResource = Literal["contacts", "companies", "deals"]


class Connection(Timestamped, Base):
    __tablename__ = "connections"
    __table_args__ = (Index("ix_connections_tenant_listing", "tenant_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    connector_id: Mapped[str] = mapped_column(String(64))
    auth_kind: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(200))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    account: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[ConnectionStatus] = mapped_column(str_enum(ConnectionStatus))
    health: Mapped[ConnectionHealth] = mapped_column(str_enum(ConnectionHealth))
    last_error: Mapped[str | None] = mapped_column(Text)
    checked_at: Mapped[datetime | None]
    # When the tenant admins were told the credentials stopped working (once per episode).
    auth_notified_at: Mapped[datetime | None]


class ConnectionHold(Base):
    """A slot of the tenant's plan held for a connection being set up: taken with the plan
    check (the tenant's row locked), it counts as a connection until the connection's workflow
    records the connection or lets the connect go, or ``held_until`` passes (a connect whose
    workflow never started or never ended)."""

    __tablename__ = "connection_holds"

    connection_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    held_until: Mapped[datetime]


class ConnectionPacing(Base):
    """A connection's place in its vendor's rate limit (``connectors/pacing.py``): the
    theoretical arrival time of its next call, in seconds since the epoch."""

    __tablename__ = "connection_pacing"

    connection_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True
    )
    arrival: Mapped[float] = mapped_column(Double)


class ConnectionCommand(BaseModel):
    """One change to a connection, run by ``connection:{connection_id}``.

    A ``connect`` finds the new credentials staged in the secret store by the API (at
    :func:`connectors.secrets.staged_path`); only their path's ids cross into history.
    """

    action: ConnectionAction
    connection_id: uuid.UUID
    tenant_id: uuid.UUID
    requested_by: uuid.UUID | None = None  # None: the platform noticed (a failed read)
    connector_id: str = Field(max_length=64)
    auth_kind: str = Field(max_length=32)
    label: str = Field(default="", max_length=200)
    settings: dict[str, Any] = {}
    # An OAuth connect waits this long for the provider's redirect (the consent) first.
    consent_timeout: timedelta | None = None


class VerifiedAccount(BaseModel):
    """Who the credentials act as at the vendor (no secret)."""

    account_id: str
    name: str
    detail: dict[str, str] = {}


class CheckOutcome(BaseModel):
    """What a credentials check found: the account, or why the vendor said no."""

    health: ConnectionHealth
    account: VerifiedAccount | None = None
    error: str | None = None


class ConnectionView(BaseModel):
    """A connection as the API shows it: never a credential."""

    connection_id: uuid.UUID
    connector_id: str
    auth_kind: str
    label: str
    settings: dict[str, Any]
    account: dict[str, Any]
    status: ConnectionStatus
    health: ConnectionHealth
    last_error: str | None
    checked_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, row: Connection) -> ConnectionView:
        return cls(
            connection_id=row.id,
            connector_id=row.connector_id,
            auth_kind=row.auth_kind,
            label=row.label,
            settings=row.settings,
            account=row.account,
            status=row.status,
            health=row.health,
            last_error=row.last_error,
            checked_at=row.checked_at,
            created_at=row.created_at,
        )


class ConnectionOutcome(BaseModel):
    """What one run of the connection workflow did (``consent_expired``: an OAuth consent did
    not come back in time)."""

    action: ConnectionAction
    check: CheckOutcome | None = None
    connection: ConnectionView | None = None
    consent_expired: bool = False


class OAuthStart(BaseModel):
    """Where the tenant admin gives consent, and until when the attempt waits for it."""

    connection_id: uuid.UUID
    authorize_url: str
    expires_at: datetime


class WriteCommand(BaseModel):
    """One record to create in a tenant's system, once: ``write_id`` is its external id there."""

    write_id: uuid.UUID
    connection: ConnectionCommand
    resource: WritableResource
    record: dict[str, Any]


class WrittenRecord(BaseModel):
    """The record as the vendor holds it; ``created`` is False when it existed already."""

    resource: WritableResource
    record_id: str
    created: bool
    record: dict[str, Any]
