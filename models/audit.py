"""The append-only audit log: each row carries the hash of its chain's previous row."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import JSON, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow

PLATFORM_CHAIN = "platform"
GENESIS_HASH = "0" * 64


class AuditEntry(Base):
    """One security or business event. Rows are never updated or deleted."""

    __tablename__ = "audit_log"
    __table_args__ = (UniqueConstraint("chain", "seq"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    # One hash chain per tenant, plus the platform chain for events with no tenant.
    chain: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int]
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    actor_id: Mapped[uuid.UUID | None]
    action: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(400))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # Set by activities so that a retried append never writes a second row.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)

    def compute_hash(self) -> str:
        """SHA-256 over the row's content and its predecessor's hash."""
        body = {
            "chain": self.chain,
            "seq": self.seq,
            "tenant_id": str(self.tenant_id) if self.tenant_id else None,
            "actor_id": str(self.actor_id) if self.actor_id else None,
            "action": self.action,
            "ip": self.ip,
            "user_agent": self.user_agent,
            "data": self.data,
            "created_at": self.created_at.isoformat(timespec="microseconds"),
            "prev_hash": self.prev_hash,
        }
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


def chain_of(tenant_id: uuid.UUID | None) -> str:
    return str(tenant_id) if tenant_id else PLATFORM_CHAIN


class ChainPosition(BaseModel):
    """How far a verification got: the last verified row (its seq and hash) and the count.

    A verification heartbeats it, and a retried one resumes from it."""

    seq: int = 0
    hash: str = GENESIS_HASH
    rows: int = 0


class ChainReport(BaseModel):
    """The outcome of verifying one chain: ``first_broken_seq`` is ``None`` when intact."""

    rows: int
    first_broken_seq: int | None

    @property
    def intact(self) -> bool:
        return self.first_broken_seq is None
