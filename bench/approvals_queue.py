"""The approvals queue on PostgreSQL at 10,000 pending rows (and 40,000 decided ones).

Measures the API's own page query (``api.routers.approvals.queue_query``) and prints ratios
against baselines measured in the same run: offset pagination for a deep page, and the same
keyset query with the queue indexes dropped (inside a transaction that is rolled back).

Needs PostgreSQL: ``BIZ_BENCH_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/
postgres``) names a server where a scratch database may be created and dropped.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
from sqlalchemy import Select, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from api.routers.approvals import queue_query
from bench.timing import percentile, report, sample
from core import migrate
from core.db import create_engine
from core.security import Principal
from models.approval import Approval, ApprovalKind, ApprovalStatus
from models.tenant import Tenant, TenantStatus
from models.user import Role

ADMIN_URL = os.environ.get(
    "BIZ_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TENANTS = 200
PENDING = 10_000
DECIDED = 40_000
PAGE = 50
DEEP = 5_000  # rows skipped to reach a deep page
TARGET_P99 = 0.025


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A migrated database that is dropped afterwards."""
    name = f"bizosaas_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = (
        make_url(ADMIN_URL)
        .set(drivername="postgresql+asyncpg", database=name)
        .render_as_string(hide_password=False)
    )
    try:
        await migrate.upgrade(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def seed(engine: AsyncEngine) -> list[uuid.UUID]:
    """Tenants, and approvals requested over the last 30 days; returns the tenant ids."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    tenant_ids = [uuid.uuid4() for _ in range(TENANTS)]
    tenants = [
        {
            "id": tenant_id,
            "name": f"Tenant {n}",
            "slug": f"tenant-{n}",
            "status": TenantStatus.PENDING_APPROVAL,
            "created_at": now,
            "updated_at": now,
        }
        for n, tenant_id in enumerate(tenant_ids)
    ]
    approvals = []
    for n in range(PENDING + DECIDED):
        requested_at = now - timedelta(seconds=rng.randrange(30 * 24 * 3600))
        approvals.append(
            {
                "id": uuid.uuid4(),
                "workflow_id": f"approval:{n}",
                "tenant_id": rng.choice(tenant_ids),
                "kind": ApprovalKind.TENANT_ONBOARDING,
                "subject": f"New tenant: Company {n} (starter)",
                "decider_role": Role.SUPER_ADMIN,
                "status": ApprovalStatus.PENDING if n < PENDING else ApprovalStatus.APPROVED,
                "requested_at": requested_at,
                "due_at": requested_at + timedelta(days=7),
                "facts": {"plan": "starter"},
                "attachments": [],
                "history": [{"at": requested_at.isoformat(), "event": "requested"}],
            }
        )
    async with engine.begin() as connection:
        await connection.execute(insert(Tenant), tenants)
        for start in range(0, len(approvals), 5_000):
            await connection.execute(insert(Approval), approvals[start : start + 5_000])
    async with engine.connect() as connection:
        await connection.execute(text("ANALYZE"))
    return tenant_ids


def principal(role: Role, tenant_id: uuid.UUID) -> Principal:
    return Principal(user_id=uuid.uuid4(), tenant_id=tenant_id, role=role, session_id=uuid.uuid4())


def page(connection: AsyncConnection, query: Select[Approval]) -> Callable[[], Awaitable[object]]:
    async def run() -> object:
        async with AsyncSession(bind=connection) as session:
            return list(await session.scalars(query))

    return run


async def deep_key(connection: AsyncConnection, staff: Principal) -> tuple[datetime, uuid.UUID]:
    """The keyset of the row a client reaches after paging through ``DEEP`` rows."""
    query = queue_query(staff, ApprovalStatus.PENDING, None, None, DEEP)
    async with AsyncSession(bind=connection) as session:
        last = list(await session.scalars(query))[-1]
    return last.requested_at, last.id


async def measure(url: str, runs: int) -> None:
    engine = create_engine(url)
    try:
        tenant_ids = await seed(engine)
        staff = principal(Role.SUPER_ADMIN, uuid.uuid4())
        admin = principal(Role.TENANT_ADMIN, tenant_ids[0])
        pending = ApprovalStatus.PENDING
        first = queue_query(staff, pending, None, None, PAGE)
        own = queue_query(admin, pending, None, None, PAGE)
        async with engine.connect() as connection:
            deep = queue_query(staff, pending, None, await deep_key(connection, staff), PAGE)
            offset = queue_query(staff, pending, None, None, PAGE).offset(DEEP)
            indexed_first = await sample(page(connection, first), runs)
            indexed_own = await sample(page(connection, own), runs)
            keyset_deep = await sample(page(connection, deep), runs)
            offset_deep = await sample(page(connection, offset), runs)
            async with connection.begin() as unindexed:
                await connection.execute(text("DROP INDEX ix_approvals_queue"))
                await connection.execute(text("DROP INDEX ix_approvals_tenant_queue"))
                bare_first = await sample(page(connection, first), runs)
                bare_own = await sample(page(connection, own), runs)
                await unindexed.rollback()
    finally:
        await engine.dispose()

    print(f"approvals queue, PostgreSQL, {PENDING:,} pending + {DECIDED:,} decided, page {PAGE}")
    report("first page, super_admin (unindexed vs indexed)", bare_first, indexed_first)
    report("first page, tenant_admin (unindexed vs indexed)", bare_own, indexed_own)
    report(f"page after {DEEP:,} rows (offset vs keyset)", offset_deep, keyset_deep)
    worst = max(percentile(s, 99) for s in (indexed_first, indexed_own, keyset_deep))
    verdict = "within" if worst <= TARGET_P99 else "OVER"
    print(f"worst keyset p99 {worst * 1e3:.2f} ms: {verdict} the {TARGET_P99 * 1e3:.0f} ms target")


async def main(runs: int = 200) -> None:
    async with scratch_database() as url:
        await measure(url, runs)


if __name__ == "__main__":
    asyncio.run(main())
