"""The hash-chained audit log, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, select, update

from core import audit
from core.db import SessionFactory, transaction
from core.settings import Settings
from models.audit import AuditEntry, ChainPosition
from tests.factories import member


async def _chain_of_three(sessions: SessionFactory, settings: Settings) -> uuid.UUID:
    tenant_id = (await member(sessions, settings)).tenant_id
    for action in ("user.login", "user.mfa_enabled", "user.logout"):
        async with transaction(sessions) as session:
            await audit.append(session, action, tenant_id=tenant_id, data={"n": action})
    return tenant_id


async def test_appended_rows_form_an_intact_chain(
    sessions: SessionFactory, settings: Settings
) -> None:
    tenant_id = await _chain_of_three(sessions, settings)
    async with sessions() as session:
        report = await audit.verify(session, tenant_id)
        seqs = (
            await session.scalars(select(AuditEntry.seq).where(AuditEntry.tenant_id == tenant_id))
        ).all()
    assert report.intact
    assert report.rows == 3
    assert sorted(seqs) == [1, 2, 3]


async def test_a_changed_row_is_detected(sessions: SessionFactory, settings: Settings) -> None:
    tenant_id = await _chain_of_three(sessions, settings)
    async with transaction(sessions) as session:
        await session.execute(
            update(AuditEntry)
            .where(AuditEntry.tenant_id == tenant_id, AuditEntry.seq == 2)
            .values(data={"n": "forged"})
        )
    async with sessions() as session:
        assert (await audit.verify(session, tenant_id)).first_broken_seq == 2


async def test_a_deleted_row_is_detected(sessions: SessionFactory, settings: Settings) -> None:
    tenant_id = await _chain_of_three(sessions, settings)
    async with transaction(sessions) as session:
        await session.execute(
            delete(AuditEntry).where(AuditEntry.tenant_id == tenant_id, AuditEntry.seq == 1)
        )
    async with sessions() as session:
        assert (await audit.verify(session, tenant_id)).first_broken_seq == 1


async def test_idempotency_key_writes_one_row(sessions: SessionFactory, settings: Settings) -> None:
    tenant_id = (await member(sessions, settings)).tenant_id
    key = f"once-{uuid.uuid4()}"
    for _ in range(2):
        async with transaction(sessions) as session:
            await audit.append(session, "x.done", tenant_id=tenant_id, idempotency_key=key)
    async with sessions() as session:
        rows = (
            await session.scalars(select(AuditEntry).where(AuditEntry.idempotency_key == key))
        ).all()
    assert len(rows) == 1


async def test_a_walk_resumes_from_its_last_heartbeat(
    sessions: SessionFactory, settings: Settings
) -> None:
    tenant_id = await _chain_of_three(sessions, settings)
    seen: list[ChainPosition] = []
    async with sessions() as session:
        whole = await audit.verify(session, tenant_id, progress=seen.append, every=1)
        resumed = await audit.verify(session, tenant_id, since=seen[1])
    assert [p.seq for p in seen] == [1, 2, 3]
    assert resumed == whole
    async with transaction(sessions) as session:
        await session.execute(
            update(AuditEntry)
            .where(AuditEntry.tenant_id == tenant_id, AuditEntry.seq == 3)
            .values(action="user.deleted")
        )
    async with sessions() as session:
        report = await audit.verify(session, tenant_id, since=seen[1])
    assert report.first_broken_seq == 3
    assert report.rows == 3
