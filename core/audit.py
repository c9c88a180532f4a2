"""Append to and verify the hash-chained audit log."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from models.audit import GENESIS_HASH, AuditEntry, ChainPosition, ChainReport, chain_of
from models.base import utcnow


@dataclass(frozen=True)
class Actor:
    """Who did it, and from where (for the API; activities pass ``None`` for ip and agent)."""

    user_id: uuid.UUID | None = None
    ip: str | None = None
    user_agent: str | None = None


async def _lock_chain(session: AsyncSession, chain: str) -> None:
    # Serialises appends to one chain on PostgreSQL; SQLite serialises writers itself.
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:c))"), {"c": chain})


async def append(
    session: AsyncSession,
    action: str,
    *,
    tenant_id: uuid.UUID | None,
    actor: Actor = Actor(),
    data: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> AuditEntry:
    """Add one row at the end of the tenant's chain, inside the caller's transaction.

    With an ``idempotency_key``, a row already written under that key is returned instead.
    """
    chain = chain_of(tenant_id)
    await _lock_chain(session, chain)
    if idempotency_key is not None:
        existing = await session.scalar(
            select(AuditEntry).where(AuditEntry.idempotency_key == idempotency_key)
        )
        if existing is not None:
            return existing
    last = (
        await session.execute(
            select(AuditEntry.seq, AuditEntry.hash)
            .where(AuditEntry.chain == chain)
            .order_by(AuditEntry.seq.desc())
            .limit(1)
        )
    ).first()
    entry = AuditEntry(
        chain=chain,
        seq=(last.seq + 1) if last else 1,
        tenant_id=tenant_id,
        actor_id=actor.user_id,
        action=action,
        ip=actor.ip,
        user_agent=actor.user_agent,
        data=data or {},
        created_at=utcnow(),
        prev_hash=last.hash if last else GENESIS_HASH,
        idempotency_key=idempotency_key,
    )
    entry.hash = entry.compute_hash()
    session.add(entry)
    await session.flush()
    return entry


async def verify(
    session: AsyncSession,
    tenant_id: uuid.UUID | None,
    since: ChainPosition | None = None,
    progress: Callable[[ChainPosition], None] | None = None,
    every: int = 1000,
) -> ChainReport:
    """Walk a chain and report the first row that was changed, removed or inserted.

    ``since`` resumes after an earlier walk's last verified row; ``progress`` is told the
    position every ``every`` rows (a long walk heartbeats it).
    """
    start = since or ChainPosition()
    rows = await session.stream_scalars(
        select(AuditEntry)
        .where(AuditEntry.chain == chain_of(tenant_id), AuditEntry.seq > start.seq)
        .order_by(AuditEntry.seq)
    )
    expected_prev, expected_seq, count = start.hash, start.seq + 1, start.rows
    async for entry in rows:
        count += 1
        if (
            entry.seq != expected_seq
            or entry.prev_hash != expected_prev
            or entry.hash != entry.compute_hash()
        ):
            return ChainReport(rows=count, first_broken_seq=expected_seq)
        expected_prev, expected_seq = entry.hash, expected_seq + 1
        if progress is not None and count % every == 0:
            progress(ChainPosition(seq=entry.seq, hash=entry.hash, rows=count))
    return ChainReport(rows=count, first_broken_seq=None)
